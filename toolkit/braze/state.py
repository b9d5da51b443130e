"""The Braze state segment filters are evaluated on: users, their attributes, events and cohorts.

A `BrazeState` is what a Braze workspace would hold after a sync (projected by the preview) or
what a sandbox holds; `toolkit.braze.filters` evaluate against it, vectorised. Users are keyed by
the identifier Braze matches them on, rendered as ``"external_id:u123"``, ``"braze_id:…"``,
``"alias:<label>:<name>"`` or ``"email:…"`` so keys of different kinds never collide.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["BrazeState", "EVENT_COLUMNS", "COHORT_COLUMNS", "braze_user_keys"]

EVENT_COLUMNS = ("user", "name", "time", "properties")
COHORT_COLUMNS = ("user", "cohort")


def _empty_events() -> pd.DataFrame:
    return pd.DataFrame({"user": pd.Series(dtype="string"), "name": pd.Series(dtype="string"),
                         "time": pd.Series(dtype="datetime64[ns, UTC]"),
                         "properties": pd.Series(dtype=object)})


def _empty_cohorts() -> pd.DataFrame:
    return pd.DataFrame({"user": pd.Series(dtype="string"), "cohort": pd.Series(dtype="string")})


@dataclass
class BrazeState:
    """Users Braze holds: ``attributes`` (typed columns, index = user key), ``events`` (long:
    user, name, time, properties dict), ``cohorts`` (long: user, cohort name) and ``as_of``, the
    moment "in the last Y days" and "N days ago" are measured from."""

    attributes: pd.DataFrame
    events: pd.DataFrame = field(default_factory=_empty_events)
    cohorts: pd.DataFrame = field(default_factory=_empty_cohorts)
    as_of: pd.Timestamp = field(default_factory=lambda: pd.Timestamp.now(tz="UTC"))

    def __post_init__(self) -> None:
        self.as_of = pd.Timestamp(self.as_of)
        if self.as_of.tzinfo is None:
            self.as_of = self.as_of.tz_localize("UTC")
        missing = [c for c in EVENT_COLUMNS if c not in self.events.columns]
        if missing:
            raise ValueError(f"BrazeState.events lacks columns {missing}")
        if "time" in self.events and not isinstance(self.events["time"].dtype, pd.DatetimeTZDtype):
            self.events = self.events.assign(time=pd.to_datetime(self.events["time"], utc=True))
        if [c for c in COHORT_COLUMNS if c not in self.cohorts.columns]:
            raise ValueError(f"BrazeState.cohorts needs columns {COHORT_COLUMNS}")

    @property
    def users(self) -> pd.Index:
        return self.attributes.index

    def attribute(self, name: str) -> pd.Series:
        """One attribute over every user; all-missing when no user has it (Braze: blank)."""
        if name in self.attributes.columns:
            return self.attributes[name]
        return pd.Series(pd.NA, index=self.users, dtype=object)

    def __repr__(self) -> str:
        return (f"<BrazeState {len(self.users):,} users, {self.attributes.shape[1]} attributes, "
                f"{len(self.events):,} events, {self.cohorts['cohort'].nunique()} cohorts, "
                f"as of {self.as_of.isoformat()}>")

    def _repr_html_(self) -> str:
        names = self.events["name"].value_counts().to_dict() if len(self.events) else {}
        ev = ", ".join(f"{escape(str(k))} ({v:,})" for k, v in names.items()) or "none"
        attrs = ", ".join(escape(str(c)) for c in self.attributes.columns) or "none"
        return (f"<div class='braze-state'><b>Projected Braze state</b> as of "
                f"{escape(self.as_of.isoformat())}: {len(self.users):,} users"
                f"<br>Attributes: {attrs}<br>Events: {ev}</div>")


def braze_user_keys(profiles: pd.DataFrame, *, email_opt_in: bool = False,
                    alias_label: str | None = None) -> tuple[pd.Series, pd.Series]:
    """The Braze user key of every profile and the identifier kind used, NA when Braze cannot hold it.

    Order follows DESIGN.md stage 4: external_id = user_id, else braze_id, else a user alias
    ``{alias_name: segment_id, alias_label}`` when ``alias_label`` is given, else email when
    ``email_opt_in``. Returns (keys, kinds) as ``string`` Series on ``profiles.index``.
    """
    idx = profiles.index

    def col(name: str) -> pa.Array | None:
        if name not in profiles.columns:
            return None
        a = pa.array(profiles[name].astype("string"))
        return pc.if_else(pc.greater(pc.utf8_length(a), 0), a, pa.scalar(None, a.type))

    candidates = [("external_id", col("user_id")), ("braze_id", col("braze_id"))]
    if alias_label:
        candidates.append((f"alias:{alias_label}", col("segment_id")))
    if email_opt_in:
        candidates.append(("email", col("email")))
    candidates = [(kind, a) for kind, a in candidates if a is not None]
    if not candidates:
        empty = pd.Series(pd.NA, index=idx, dtype="string")
        return empty, empty.copy()
    # Arrow, column-wise: the first candidate a profile has wins
    keys = pc.coalesce(*[pc.binary_join_element_wise(pa.scalar(kind + ":", a.type), a,
                                                     pa.scalar("", a.type))
                         for kind, a in candidates])
    kinds = pc.coalesce(*[pc.if_else(pc.is_valid(a), pa.scalar(kind.split(":")[0], pa.string()),
                                     pa.scalar(None, pa.string())) for kind, a in candidates])
    return (pd.Series(pd.array(keys, dtype="string"), index=idx),
            pd.Series(pd.array(kinds, dtype="string"), index=idx))
