"""Preview how each Engage audience and trait lands in Braze: filters to build, projected counts, drops.

`Mapping.preview(export)` projects the Braze state a sync would produce (attributes, events,
cohort membership per Braze user), evaluates the recommended Braze segment filter(s) on it with
Braze's semantics (`toolkit.braze.filters`), and sets side by side: Engage members, profiles
Braze can hold, users the filter selects, and why the others are dropped.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from toolkit import engine
from toolkit.braze.limits import LIMITS
from toolkit.braze import payload_rules
from toolkit.braze.filters import (VALUE_VIEWS, AllOf, AnyOf, BooleanAttribute,
                                   CustomEventCount, CustomEventPropertyCount, DateAttribute,
                                   Filter, NumberAttribute, SegmentCohort, StringAttribute)
from toolkit.braze.filters_sql import _JSON, SqlNames, _Reads, to_sql
from toolkit.braze.filters_sql import _column as _sql_column
from toolkit.braze.state import BrazeState, braze_user_keys
from toolkit.engage.assemble import ID_LIST_COLUMNS
from toolkit.engage.frames import has_duplicates
from toolkit.engage.model import EngageExport
from toolkit.engage.store import StoredExport
from toolkit.errors import FilterError, MappingError
from toolkit.sync.projection import IDENTITY_COLUMNS, export_keys, shared_keys

if TYPE_CHECKING:
    from toolkit.mapping import Mapping, Rule

__all__ = ["Preview", "recommended_filters", "REASONS"]

# Why an Engage member is not selected by the Braze filter, checked in this order.
REASONS = {
    "anonymous_only": "only an anonymous_id: Braze cannot identify the profile",
    "no_external_id": "no user_id / braze_id (email or alias not enabled for this preview)",
    "no_cohort_identifier": "cohort import matches external_id or alias only, not braze_id/email",
    "invalid_value": "value Braze refuses (string > 255 chars, bad dob/country/gender)",
    "type_conflict": "value of another type than the attribute is locked to",
    "empty_string": "empty string: Braze treats it as blank",
    "outside_lookback": "events older than the filter's look-back window (30 days for properties)",
    "reentered_after_exit": "re-entered more often than Braze's 50-count filter can express",
    "shared_identifier": "another profile with the same Braze identifier overwrites it",
    "shared_event_name": "the event name also counts other computations' events",
    "other": "not explained by the rules above",
}

PROGRESS_FROM = 200_000   # profiles from which the preview shows a progress bar

_FRAME_COLUMNS = ["key", "kind", "send_as", "check", "recommended", "braze_filter",
                  "engage_members", "braze_can_hold", "filter_selects", "matched", "dropped",
                  "extra", *REASONS, "note"]


def recommended_filters(rule: "Rule", value_type: str | None, shared: dict[str, list[str]],
                        max_entries: int = 1) -> list[tuple[str, bool, Filter]]:
    """(check, recommended, filter) for the rule's membership: what an analyst builds in Braze.

    Audiences: attribute → "is true" (Braze's Segment page: "equals" for audiences); events →
    entered more than 0 times AND exited exactly 0 times, or, when profiles re-entered (up to
    ``max_entries`` times, at most 50 — Braze's count limit), entered exactly k AND exited
    exactly k−1 for each k, joined with OR: enter/exit events alternate, so a current member has
    one more entry than exits; cohort → Segment Cohorts includes.
    Traits: attribute → "is not blank" (has a value); events → Trait Computed count. When the
    event name is shared with other computations the bare count would count all of them, so
    the recommendation filters on the audience_key / trait_key property instead (≤30 days) and
    the bare count is listed as not recommended.
    """
    out: list[tuple[str, bool, Filter]] = []
    check = "members" if rule.kind == "audience" else "has value"
    if rule.sends_attribute:
        attr = str(rule.attribute)
        if rule.kind == "audience":
            out.append((check, True, BooleanAttribute(attr, "is_true")))
        else:
            cls = {"boolean": BooleanAttribute, "number": NumberAttribute,
                   "datetime": DateAttribute}.get(value_type or "", StringAttribute)
            out.append((check, True, cls(attr, "is_not_blank")))
    if rule.sends_event:
        tag = "audience_key" if rule.kind == "audience" else "trait_key"
        is_shared = any(name in shared for name in rule.event_names)
        if rule.kind == "audience":
            bare = _membership(lambda name, op, n: CustomEventCount(name, op, n), rule, max_entries)
            keyed = _membership(lambda name, op, n: CustomEventPropertyCount(
                name, tag, rule.key, op, n), rule, max_entries)
        else:
            bare = CustomEventCount(rule.trait_event, "more_than", 0)
            keyed = CustomEventPropertyCount(rule.trait_event, tag, rule.key, "more_than", 0)
        label = f"{check} (events)" if rule.sends_attribute else check
        if is_shared:
            out.append((label, True, keyed))
            out.append((f"{label}: bare event count", False, bare))
        else:
            out.append((label, True, bare))
    if rule.send_as == "cohort":
        out.append((check, True, SegmentCohort(str(rule.cohort_name))))
    return out


_REGEX_METACHARACTERS = frozenset(".^$*+?()[]{}|\\/")


def _anchored_literal(value: str) -> str:
    """`^value$` with only regex metacharacters escaped: the safe subset of Braze's dialect (§5.2)."""
    return "^" + "".join("\\" + c if c in _REGEX_METACHARACTERS else c for c in value) + "$"


def _membership(count, rule: "Rule", max_entries: int) -> Filter:
    """Current members from enter/exit counts: one more entry than exits (see recommended_filters)."""
    k_max = max(1, min(int(max_entries), LIMITS.event_count))
    if k_max == 1:
        return AllOf(count(rule.enter_event, "more_than", 0), count(rule.exit_event, "exactly", 0))
    return AnyOf(*[AllOf(count(rule.enter_event, "exactly", k), count(rule.exit_event, "exactly", k - 1))
                   for k in range(1, k_max + 1)])


@dataclass
class _Check:
    key: str
    check: str
    recommended: bool
    filter: Filter
    engage: np.ndarray           # bool per profile: Engage members for this check
    note: str = ""


class Preview:
    """Side-by-side Engage vs Braze counts per audience/trait, the filters, and the projected state."""

    def __init__(self, *, mapping: "Mapping", export: EngageExport,
                 state: "BrazeState | Callable[[], BrazeState]",
                 frame: pd.DataFrame, filters: dict[str, list[Filter]], warnings: list[str],
                 freshness: str, reasons: dict[str, pd.Series],
                 user_count: int | None = None, as_of: pd.Timestamp | None = None) -> None:
        self.mapping = mapping
        self._user_count = user_count
        self.export = export
        # the engine's preview projects the state only when it is looked at (`state`)
        self._state = state
        self._as_of = state.as_of if isinstance(state, BrazeState) else as_of
        self.filters = filters
        self.warnings = warnings
        self.freshness = freshness
        self._frame = frame
        self._reasons = reasons

    @property
    def state(self) -> BrazeState:
        """The Braze state a sync would produce (users, attributes, events, cohorts)."""
        if not isinstance(self._state, BrazeState):
            self._state = self._state()
        return self._state

    @property
    def as_of(self) -> pd.Timestamp:
        return self._as_of

    @property
    def user_count(self) -> int:
        """Braze users the preview evaluated (``state`` holds them all, except for an export
        kept on disk, previewed a chunk at a time: its ``state`` is then empty)."""
        return len(self.state.users) if self._user_count is None else self._user_count

    def to_frame(self) -> pd.DataFrame:
        """One row per (computation, check): filter, counts, and dropped profiles per reason."""
        return self._frame.copy()

    def filter_for(self, key: str) -> Filter:
        """The recommended Braze filter selecting the members of `key`."""
        if key not in self.filters:
            raise MappingError(f"no preview for {key!r}", rule=key,
                               hint="preview keys: " + ", ".join(self.filters))
        return self.filters[key][0]

    def dropped(self, key: str) -> pd.DataFrame:
        """Engage members of `key` the recommended filter does not select, with the reason."""
        self.filter_for(key)
        reason = self._reasons[key]
        reason = reason[reason.notna().to_numpy(dtype=bool)]
        cols = [c for c in ("segment_id", "user_id", "email", "anonymous_id", "braze_id", key)
                if c in self.export.columns]
        out = self.export.take(reason.index.to_numpy(), cols).copy()
        out["reason"] = reason.astype("string")
        out["explanation"] = out["reason"].map(REASONS)
        return out

    def __repr__(self) -> str:
        f = self._frame[self._frame["recommended"]]
        lines = [f"<Preview as of {self.as_of.isoformat()} ({self.freshness})>"]
        for row in f.itertuples():
            lines.append(f"  {row.key} [{row.check}]: Engage {row.engage_members:,} · Braze can "
                         f"hold {row.braze_can_hold:,} · filter selects {row.filter_selects:,} "
                         f"— {row.braze_filter}")
        lines += [f"  ⚠ {w}" for w in self.warnings]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        f = self._frame
        head = ["computation", "check", "Braze filter to build", "Engage members",
                "Braze can hold", "filter selects", "dropped (why)", "extra"]
        native = "native_in_braze" in f.columns
        head += ["native in Braze?"] if native else []
        body = []
        for row in f.to_dict("records"):
            why = ", ".join(f"{escape(r.replace('_', ' '))} {row[r]:,}" for r in REASONS if row[r])
            style = "" if row["recommended"] else " style='color:#888'"
            body.append(
                f"<tr{style}><td><code>{escape(row['key'])}</code><br><small>{row['kind']}, "
                f"{row['send_as']}</small></td><td>{escape(row['check'])}"
                f"{'' if row['recommended'] else ' (not recommended)'}</td>"
                f"<td>{escape(row['braze_filter'])}</td><td>{row['engage_members']:,}</td>"
                f"<td>{row['braze_can_hold']:,}</td><td><b>{row['filter_selects']:,}</b></td>"
                f"<td>{row['dropped']:,}{(' — ' + why) if why else ''}</td>"
                f"<td>{row['extra']:,}</td>"
                + (f"<td>{escape(str(row['native_in_braze']))}</td>" if native else "")
                + "</tr>")
        warn = "".join(f"<li>{escape(w)}</li>" for w in self.warnings)
        return (f"<div class='braze-preview'><h4>Braze preview</h4>"
                f"<p>{escape(self.freshness)}; evaluated as of {escape(self.as_of.isoformat())}. "
                f"Braze users: {self.user_count:,}.</p>"
                + (f"<ul style='color:#b9770e'>{warn}</ul>" if warn else "")
                + "<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head)
                + f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>")

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def build(cls, mapping: "Mapping", export: EngageExport, *, email_opt_in: bool = False,
              alias_label: str | None = None, as_of: Any = None,
              evaluator: str = "engine") -> "Preview":
        """The preview of ``mapping`` on ``export``. ``evaluator``: ``"engine"`` (DuckDB and
        NumPy over Arrow data, the default) or ``"pandas"``, the reference it equals."""
        if evaluator not in EVALUATORS:
            raise MappingError(f"no preview evaluator {evaluator!r}", field="evaluator",
                               hint="use one of: " + ", ".join(EVALUATORS))
        mapping.validate(export)
        builder = EVALUATORS[evaluator]
        if isinstance(export, StoredExport):
            return _build_in_chunks(mapping, export, email_opt_in, alias_label, as_of, builder)
        return builder(mapping, export, email_opt_in, alias_label, as_of).run()


def _text_array(col: pd.Series) -> pa.Array:
    arr = pa.array(col.astype("string").array)
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _text_counts(col: pd.Series, into: dict | None = None) -> dict:
    """Profiles per distinct text of 1–255 characters, in order of first appearance (added to
    ``into``, so the chunks of a column kept on disk count as the whole column does). On the
    distinct values, not every profile: counted once by Arrow, then only they are measured."""
    into = {} if into is None else into
    distinct = pc.value_counts(_text_array(col))
    values = distinct.field("values")
    length = pc.utf8_length(values)
    usable = pc.fill_null(pc.and_(pc.greater_equal(length, 1), pc.less_equal(length, LIMITS.string_length)),
                          False)
    for value, n in zip(pc.filter(values, usable).to_pylist(),
                        pc.filter(distinct.field("counts"), usable).to_pylist()):
        into[value] = into.get(value, 0) + n
    return into


def _most_common(counts: dict) -> str | None:
    ranked = pd.Series(list(counts.values()), index=list(counts), dtype="int64").sort_values(
        ascending=False)   # as value_counts ranks them
    return None if ranked.empty else str(ranked.index[0])


def value_parameter(rule: "Rule", conv: payload_rules.Conversion, col: pd.Series):
    """The value a trait's value check compares with, from its whole column: the most common
    text (1–255 characters), the median number, the UTC day of the median time; True for a
    boolean; None when there is none (no check then)."""
    if conv.json_type == "string":
        return _most_common(_text_counts(col))
    if conv.json_type == "number":
        x = pd.to_numeric(col, errors="coerce").astype("Float64")
        return None if x.notna().sum() == 0 else float(x.median())
    if conv.json_type == "time" and rule.attribute != "dob":
        t = conv.values
        return None if t.notna().sum() == 0 else t.dropna().median().tz_convert("UTC").normalize()
    if conv.json_type == "boolean":
        return True
    return None


class _Builder:
    """Projects the Braze state for a mapping and evaluates every check on it."""

    def __init__(self, mapping: "Mapping", export: EngageExport, email_opt_in: bool,
                 alias_label: str | None, as_of: Any, *, profiles: pd.DataFrame | None = None,
                 counted: np.ndarray | None = None, params: dict | None = None) -> None:
        self.mapping = mapping
        self.export = export
        # one chunk of an export kept on disk: its profiles, plus the later rows that win a
        # shared identifier from them (``counted`` False: they count in their own chunk)
        # every column but the identifier lists, which a preview never reads (an export may
        # build them on first use of its profiles)
        self.p = next(export.chunks([c for c in export.columns if c not in ID_LIST_COLUMNS])) \
            if profiles is None else profiles
        self.n = len(self.p)
        self.counted = np.ones(self.n, dtype=bool) if counted is None else counted
        self._all_counted = bool(self.counted.all())
        self.params = params or {}
        self.email_opt_in, self.alias_label, self.as_of_given = email_opt_in, alias_label, as_of
        self._idents: dict[str, np.ndarray] = {}
        self._masks: dict[tuple[str, str], np.ndarray] = {}
        self._identify()
        events = export.events if export.events is not None else pd.DataFrame()
        self.history = events if len(events) else None
        snap = export.snapshot_at
        last_event = (pd.to_datetime(events["timestamp"], utc=True).max()
                      if self.history is not None else None)
        self.snapshot = pd.Timestamp(snap) if snap is not None else last_event
        if self.snapshot is not None and self.snapshot.tzinfo is None:
            self.snapshot = self.snapshot.tz_localize("UTC")
        if as_of is not None:
            self.as_of = pd.Timestamp(as_of)
            self.as_of = self.as_of.tz_localize("UTC") if self.as_of.tzinfo is None else self.as_of
        else:
            candidates = [t for t in (self.snapshot, last_event) if t is not None]
            self.as_of = max(candidates) if candidates else pd.Timestamp.now(tz="UTC")
        self.last_event = last_event
        self.conversions: dict[str, payload_rules.Conversion] = {}   # of attributes sent
        self._converts: dict[str, payload_rules.Conversion] = {}
        self.exits: dict[str, np.ndarray] = {}
        self.entries: dict[str, np.ndarray] = {}
        self.max_entries: dict[str, int] = {}
        self.first_event: dict[str, np.ndarray] = {}
        self._value_types: dict[str, str] = {}

    def _value_type(self, key: str) -> str:
        """The computation's value type (looked up in the export once per key)."""
        if key not in self._value_types:
            self._value_types[key] = self.mapping.value_type(self.export, key)
        return self._value_types[key]

    # -- identifiers ---------------------------------------------------------------------------
    def _identify(self) -> None:
        """Every profile's Braze user, with the plan's rule for profiles sharing an identifier
        (the last row wins), so the preview shows exactly the users and values a sync sends; a
        user is numbered by its winning row, and the rows that lose take their winner's number."""
        self.keys, self.kinds = braze_user_keys(self.p, email_opt_in=self.email_opt_in,
                                                alias_label=self.alias_label)
        self.has_key = self.keys.notna().to_numpy(dtype=bool)
        lose, winner = shared_keys(self.keys)
        self._own(lose, winner)
        codes = np.full(self.n, -1, dtype=np.int64)
        codes[self.owner] = np.arange(len(self.owner))
        codes[lose] = codes[winner]
        self.codes = codes
        self.users = pd.Index(self.keys.array.take(self.owner), name="user", dtype="string")

    def _own(self, lose: np.ndarray, winner: np.ndarray) -> None:
        """Owners (``sent``: the rows whose values Braze receives) from the rows that lose."""
        self.lose, self.winner = lose, winner
        owner = self.has_key.copy()
        owner[lose] = False
        self.shadowed = np.zeros(self.n, dtype=bool)
        self.shadowed[lose] = True
        self.sent = owner
        self.owner = np.flatnonzero(owner)

    def _cohort_ok(self) -> np.ndarray:
        """Profiles whose identifier a cohort import can match (external_id or alias)."""
        if ("", "cohort_ok") not in self._masks:
            kinds = self.kinds.to_numpy(dtype=object, na_value=None)
            self._masks[("", "cohort_ok")] = np.isin(kinds, ["external_id", "alias"])
        return self._masks[("", "cohort_ok")]

    def _ident(self, name: str) -> np.ndarray:
        if name not in self._idents:
            if name not in self.p.columns:
                self._idents[name] = np.zeros(self.n, dtype=bool)
            else:
                s = self.p[name].astype("string")
                self._idents[name] = (s.notna() & (s.str.len() > 0)).to_numpy(dtype=bool,
                                                                               na_value=False)
        return self._idents[name]

    def _per_user(self, values: pd.Series) -> pd.Series:
        # ExtensionArray.take keeps the dtype without boxing (tz-aware times stay vectorised).
        return pd.Series(values.array.take(self.owner), index=self.users)

    # -- projection ----------------------------------------------------------------------------
    def _attributes(self) -> pd.DataFrame:
        cols: dict[str, pd.Series] = {}
        for rule in self.mapping:
            if not rule.sends_attribute:
                continue
            conv = self.mapping.convert(rule, self.p[rule.key],
                                        self._value_type(rule.key))
            self.conversions[rule.key] = conv
            cols[str(rule.attribute)] = self._per_user(conv.values)
        return pd.DataFrame(cols, index=self.users)

    def _rule_events(self, rule: "Rule") -> pd.DataFrame:
        """Braze events one event-sent rule produces: history transitions, else the snapshot."""
        key = rule.key
        pos, stamps, values, entered = self._event_arrays(rule, values=True)
        times = pd.to_datetime(stamps, utc=True)
        if rule.kind == "audience":
            names = np.where(entered, rule.enter_event, rule.exit_event)
            props = [{"audience_key": key, key: bool(v)} for v in values]
        else:
            names = np.full(len(values), rule.trait_event, dtype=object)
            props = [{"trait_key": key, key: v} for v in values]
        held = self.sent[pos]  # a profile that loses to a later one sends nothing
        return pd.DataFrame({
            "user": pd.array(self.keys.to_numpy()[pos[held]], dtype="string"),
            "name": pd.array(np.asarray(names, dtype=object)[held], dtype="string"),
            "time": times[held],
            "properties": pd.Series(props, dtype=object)[held].to_numpy(),
        })

    def _event_arrays(self, rule: "Rule", *, values: bool):
        """The events of one event-sent rule as arrays — (profile position, UTC time as naive
        datetime64[ns], value (objects; None unless ``values``), entered (audiences: enter or
        exit event)) — history transitions, else the snapshot; for audiences, also the
        entries, exits and earliest event per profile the checks and reasons read."""
        key = rule.key
        audience = rule.kind == "audience"
        pos_parts, time_parts, value_parts, entered_parts = [], [], [], []
        covered = np.zeros(self.n, dtype=bool)
        if self.history is not None:
            h = self.history[self.history["computation_key"] == key]
            if len(h):
                where = pd.Series(np.arange(self.n), index=self.p["segment_id"].astype("string"))
                where = where[~where.index.duplicated(keep="last")]
                pos = where.reindex(h["segment_id"].astype("string")).to_numpy()
                ok = ~pd.isna(pos)
                h = h.loc[ok]
                stamps = pd.to_datetime(h["timestamp"], utc=True).dt.tz_localize(None)
                frame = pd.DataFrame({"pos": pos[ok].astype(np.int64),
                                      "time": stamps.to_numpy(dtype="datetime64[ns]"),
                                      "value": h["value"].to_numpy(dtype=object)})
                if audience:  # segment-engage §1.5: only a real boolean is a membership change
                    frame = frame[frame["value"].map(lambda v: isinstance(v, (bool, np.bool_)))]
                else:  # §1.4: property strings over 255 characters are refused with the event
                    frame = frame[frame["value"].map(
                        lambda v: not (isinstance(v, str) and len(v) > LIMITS.string_length))]
                frame = frame.sort_values(["pos", "time"], kind="stable")
                # Engage re-sends unchanged values (new identifier, re-sync); the planner sends
                # changes only, so only transitions become Braze events.
                same = (frame["pos"] == frame["pos"].shift()) & \
                    (frame["value"].astype(str) == frame["value"].astype(str).shift())
                frame = frame[~same]
                covered[frame["pos"].unique()] = True
                pos_parts.append(frame["pos"].to_numpy())
                time_parts.append(frame["time"].to_numpy())
                value_parts.append(frame["value"].to_numpy(dtype=object))
                if audience:
                    entered_parts.append(np.array([bool(v) for v in value_parts[-1]], dtype=bool))
        column = self.p[key]
        if audience:
            snap = column.astype("boolean").to_numpy(dtype=bool, na_value=False) & ~covered
            snap_values = np.full(int(snap.sum()), True, dtype=object) if values else None
            entered_parts.append(np.ones(int(snap.sum()), dtype=bool))
        else:
            conv = self._converted(rule)
            if values:
                json = payload_rules.to_json_values(conv)
                snap = ~pd.isna(json) & ~covered
                snap_values = json[snap]
            else:   # to_json_values sends exactly the values that are not missing
                snap = conv.values.notna().to_numpy(dtype=bool) & ~covered
                snap_values = None
        when = self.snapshot if self.snapshot is not None else self.as_of
        pos_parts.append(np.flatnonzero(snap))
        time_parts.append(np.full(int(snap.sum()), when.tz_convert("UTC").tz_localize(None)
                                  .to_datetime64(), dtype="datetime64[ns]"))
        if values:
            value_parts.append(snap_values)
        pos = np.concatenate(pos_parts).astype(np.int64)
        stamps = np.concatenate([np.asarray(t, dtype="datetime64[ns]") for t in time_parts])
        out_values = np.concatenate(value_parts) if values else None
        entered = np.concatenate(entered_parts) if audience else None
        if audience:
            exits = np.bincount(pos[~entered], minlength=self.n)
            self.exits[key] = exits
            entries = np.bincount(pos[entered & self.sent[pos]], minlength=self.n)
            self.max_entries[key] = int(entries.max()) if len(entries) else 0
            self.entries[key] = entries
            # The earliest event per profile: property filters only see the last 30 days, so
            # a history that starts earlier cannot be counted by them.
            fe = np.full(self.n, np.iinfo(np.int64).max, dtype=np.int64)
            timed = ~np.isnat(stamps)
            np.minimum.at(fe, pos[timed], stamps[timed].view(np.int64))
            fe = fe.view("datetime64[ns]")
            fe[fe == np.datetime64(np.iinfo(np.int64).max, "ns")] = np.datetime64("NaT")
            self.first_event[key] = fe
        return pos, stamps, out_values, entered

    def _cohorts(self) -> pd.DataFrame:
        parts = []
        for rule in self.mapping:
            if rule.send_as != "cohort":
                continue
            ok = self._cohort_ok()
            member = self.p[rule.key].astype("boolean").to_numpy(dtype=bool, na_value=False)
            rows = member & ok
            parts.append(pd.DataFrame({"user": pd.array(self.keys.to_numpy()[rows], dtype="string"),
                                       "cohort": pd.array(np.full(int(rows.sum()),
                                                                  rule.cohort_name, dtype=object),
                                                          dtype="string")}))
        if not parts:
            return BrazeState(pd.DataFrame(index=self.users)).cohorts
        return pd.concat(parts, ignore_index=True)

    # -- checks --------------------------------------------------------------------------------
    def _checks(self, rule: "Rule", value_type: str, shared: dict[str, list[str]]) -> list[_Check]:
        col = self.p[rule.key]
        if rule.kind == "audience":
            engage = col.astype("boolean").to_numpy(dtype=bool, na_value=False)
        else:
            engage = col.notna().to_numpy(dtype=bool)
        out = [_Check(rule.key, check, rec, f, engage)
               for check, rec, f in recommended_filters(rule, value_type, shared,
                                                        self.max_entries.get(rule.key, 1))]
        if rule.kind == "trait" and rule.sends_attribute:
            example = self._value_check(rule, value_type, col)
            if example is not None:
                out.append(example)
        return out

    def _value_check(self, rule: "Rule", value_type: str, col: pd.Series) -> _Check | None:
        """A value filter for a trait (equals / more than / after / is true), checked against
        Engage. Its value (the most common text, the median) comes from the whole column:
        given in ``params`` when this builder sees one chunk of an export kept on disk."""
        attr = str(rule.attribute)
        conv = self.conversions[rule.key]
        value = (self.params[rule.key] if rule.key in self.params
                 else self._most_common_text(col) if conv.json_type == "string"
                 else self._median_number(col) if conv.json_type == "number"
                 else self._median_day(rule, conv, col) if conv.json_type == "time"
                 else value_parameter(rule, conv, col))
        if value is None:
            return None
        if conv.json_type == "string":
            top = value
            # Braze's Segment page recommends "matches regex" for traits sent with identify
            # (braze-api.md §5.3). Segment regexes are partial and case-insensitive (§5.2), so the
            # value is anchored and its metacharacters escaped; Engage's side is compared the
            # same case-insensitive way, or the two counts would disagree on case variants.
            f: Filter = StringAttribute(attr, "matches_regex", _anchored_literal(top))
            engage = self._same_text(col, top)
            return _Check(rule.key, f"value = {top!r}", True, f, engage,
                          "regex filters are case-insensitive in Braze")
        if conv.json_type == "number":
            median = value
            x = self._numbers(col)
            f = NumberAttribute(attr, "more_than", median)
            return _Check(rule.key, f"value > {median:g}", True, f,
                          (x > median).to_numpy(dtype=bool, na_value=False))
        if conv.json_type == "time":
            day = value
            f = DateAttribute(attr, "after", day.date().isoformat())
            raw = pd.to_datetime(col, errors="coerce", utc=True, format="mixed") \
                if not isinstance(col.dtype, pd.DatetimeTZDtype) else col
            return _Check(rule.key, f"value after {day.date()}", True, f,
                          (raw >= day + pd.Timedelta(days=1)).to_numpy(dtype=bool, na_value=False),
                          "a date means the whole UTC day")
        if conv.json_type == "boolean":
            f = BooleanAttribute(attr, "is_true")
            return _Check(rule.key, "value is true", True, f,
                          col.astype("boolean").to_numpy(dtype=bool, na_value=False))
        return None

    # -- texts (the engine's builder reads them once per distinct text) ---------------------
    def _most_common_text(self, col: pd.Series) -> str | None:
        return _most_common(_text_counts(col))

    def _same_text(self, col: pd.Series, top: str) -> np.ndarray:
        """Profiles whose text is ``top`` compared case-insensitively."""
        arr = _text_array(col)
        distinct = pc.unique(arr)
        same = pc.filter(distinct, pc.fill_null(
            pc.equal(pc.utf8_lower(distinct), top.lower()), False))
        return pc.fill_null(pc.is_in(arr, value_set=same), False).to_numpy(zero_copy_only=False)

    def _empty_text(self, col: pd.Series) -> np.ndarray:
        return (col.astype("string") == "").to_numpy(dtype=bool, na_value=False)

    def _numbers(self, col: pd.Series) -> pd.Series:
        """The column's numbers as the value check compares them (and value_parameter)."""
        return pd.to_numeric(col, errors="coerce").astype("Float64")

    def _median_number(self, col: pd.Series) -> float | None:
        x = self._numbers(col)   # value_parameter's median of a number column
        return None if x.notna().sum() == 0 else float(x.median())

    def _median_day(self, rule: Rule, conv: payload_rules.Conversion, col: pd.Series) -> Any:
        return value_parameter(rule, conv, col)

    def _reasons(self, rule: "Rule", check: _Check, missing: np.ndarray) -> np.ndarray:
        """Reason code index (into REASONS) per missing profile; -1 elsewhere."""
        names = list(REASONS)
        code = np.full(self.n, -1, dtype=np.int8)
        at = np.flatnonzero(missing)   # a reason is looked up for the missing profiles only
        left = np.ones(len(at), dtype=bool)

        def assign(reason: str, mask: np.ndarray | None) -> None:
            hit = left if mask is None else left & mask[at]
            code[at[hit]] = names.index(reason)
            left[hit] = False

        if ("", "anonymous_only") not in self._masks:
            self._masks[("", "anonymous_only")] = ~self.has_key & self._ident("anonymous_id") \
                & ~self._ident("email") & ~self._ident("user_id")
        assign("anonymous_only", self._masks[("", "anonymous_only")])
        assign("no_external_id", ~self.has_key)
        if isinstance(check.filter, SegmentCohort):
            assign("no_cohort_identifier", self.has_key & ~self._cohort_ok())
        conv = self.conversions.get(rule.key)
        if conv is None and rule.kind == "trait":
            conv = self._converted(rule)
        if conv is not None and not isinstance(check.filter, SegmentCohort):
            assign("invalid_value", self._mask(rule.key, "invalid", conv.invalid))
            assign("type_conflict", self._mask(rule.key, "conflict", conv.conflict))
            if conv.json_type == "string":
                if (rule.key, "empty") not in self._masks:
                    self._masks[(rule.key, "empty")] = self._empty_text(self.p[rule.key])
                assign("empty_string", self._masks[(rule.key, "empty")])
        if _is_event_filter(check.filter) and rule.key in self.first_event:
            days = _lookback_days(check.filter)
            if days is not None:
                start = (self.as_of.normalize() - pd.Timedelta(days=days)).tz_localize(None)
                fe = self.first_event[rule.key]
                assign("outside_lookback", ~np.isnat(fe) & (fe < start.to_datetime64()))
            assign("reentered_after_exit", self.entries[rule.key] > LIMITS.event_count)
        assign("shared_identifier", self.shadowed)
        if not check.recommended:  # only the bare count on a shared event name is not recommended
            assign("shared_event_name", None)
        assign("other", None)
        return code

    def _converted(self, rule: "Rule") -> payload_rules.Conversion:
        """The rule's column of these profiles converted to Braze values (kept: one per rule)."""
        if rule.key not in self._converts:
            self._converts[rule.key] = self.conversions.get(rule.key) or self.mapping.convert(
                rule, self.p[rule.key], self._value_type(rule.key))
        return self._converts[rule.key]

    def _mask(self, key: str, what: str, values: pd.Series) -> np.ndarray:
        if (key, what) not in self._masks:
            self._masks[(key, what)] = values.to_numpy(dtype=bool)
        return self._masks[(key, what)]

    def projected_state(self) -> BrazeState:
        """The Braze state a sync produces: attributes, events and cohorts per Braze user."""
        attributes = self._attributes()
        event_frames = [self._rule_events(r) for r in self.mapping if r.sends_event]
        events = (pd.concat(event_frames, ignore_index=True) if event_frames
                  else BrazeState(attributes).events)
        return BrazeState(attributes, events, self._cohorts(), self.as_of)

    def run(self) -> Preview:
        mapping = self.mapping
        shared = mapping.shared_events()
        state = self.projected_state()

        rows, filters, reasons = [], {}, {}
        positions = np.flatnonzero(self.has_key)
        from tqdm.auto import tqdm  # lazy: tqdm.auto imports IPython when it is installed

        # evaluating the filters is the long part at scale: a bar from 200,000 profiles on
        for rule in tqdm(list(mapping), desc="preview: Braze filters", unit="rule",
                         disable=self.n < PROGRESS_FROM or not self.counted.all(), leave=False):
            value_type = self._value_type(rule.key)
            checks = self._checks(rule, value_type, shared)
            filters[rule.key] = [c.filter for c in checks if c.recommended]
            for i, check in enumerate(checks):
                sel_users = check.filter.evaluate(state).to_numpy(dtype=bool)
                sel = np.zeros(self.n, dtype=bool)
                sel[positions] = sel_users[self.codes[positions]]
                engage = check.engage
                engaged_users = np.zeros(len(self.users), dtype=bool)
                engaged_users[self.codes[engage & self.has_key]] = True
                users_counted = self.counted[self.owner]
                extra = int((sel_users & ~engaged_users & users_counted).sum())
                code, row = self._row(rule, check, sel, int((sel_users & users_counted).sum()),
                                      extra)
                rows.append(row)
                if i == 0:
                    reasons[rule.key] = self._reason_series(code)
        return self._preview(state, rows, filters, reasons, shared)

    def _row(self, rule: "Rule", check: _Check, sel: np.ndarray, selects: int,
             extra: int) -> tuple[np.ndarray, dict]:
        """(reason codes per profile, the frame row) of one check, from the profiles its
        filter selects (``sel``, a profile counting as its Braze user) and the users it selects."""
        engage, counted = check.engage, self.counted
        holdable = engage & self.has_key
        if isinstance(check.filter, SegmentCohort):
            holdable &= self._cohort_ok()
        missing = engage & ~sel
        code = self._reasons(rule, check, missing)
        if self._all_counted:   # a missing profile always gets a reason: count only those
            counts = np.bincount(code[np.flatnonzero(missing)], minlength=len(REASONS))
        else:
            kept = code[counted]
            counts = np.bincount(kept[kept >= 0], minlength=len(REASONS))
        note = check.note
        if not check.recommended:
            note = ("counts every computation sending this event name — use the "
                    "recommended property filter or rename the event")
        elif isinstance(check.filter, (CustomEventPropertyCount, AllOf, AnyOf)) and \
                _lookback_days(check.filter):
            note = "Braze event property filters look back at most 30 days"

        def total(mask: np.ndarray) -> int:
            return int(np.count_nonzero(mask if self._all_counted else mask & counted))

        return code, {
            "key": rule.key, "kind": rule.kind, "send_as": rule.send_as,
            "check": check.check, "recommended": check.recommended,
            "braze_filter": str(check.filter),
            "engage_members": total(engage), "braze_can_hold": total(holdable),
            "filter_selects": selects, "matched": total(engage & sel),
            "dropped": total(missing), "extra": extra,
            **{name: int(counts[j]) for j, name in enumerate(REASONS)}, "note": note,
        }

    def _reason_series(self, code: np.ndarray) -> pd.Series:
        kept = code if self._all_counted else code[self.counted]
        index = self.p.index if self._all_counted else self.p.index[self.counted]
        return pd.Series(pd.Categorical.from_codes(kept, categories=list(REASONS)), index=index)

    def _preview(self, state, rows: list[dict], filters: dict, reasons: dict,
                 shared: dict) -> Preview:
        mapping = self.mapping
        frame = pd.DataFrame(rows, columns=_FRAME_COLUMNS)
        if getattr(mapping, "_definitions", None) is not None:
            # could Braze compute the audience itself (toolkit.native)?
            frame["native_in_braze"] = frame["key"].map(mapping.native_in_braze)
        warnings = shared_event_warnings(shared)
        counted_users = None if self._all_counted and isinstance(state, BrazeState) else int(
            np.count_nonzero(self.counted[self.owner]))
        return Preview(mapping=mapping, export=self.export, state=state, frame=frame,
                       filters=filters, warnings=warnings, freshness=self._freshness(),
                       reasons=reasons, user_count=counted_users, as_of=self.as_of)

    def _freshness(self) -> str:
        if self.history is not None and self.last_event is not None:
            return (f"event replay: as fresh as its last event "
                    f"({self.last_event.isoformat()})")
        if self.export.snapshot_at is not None:
            return (f"snapshot: as fresh as Engage's last compute "
                    f"({pd.Timestamp(self.export.snapshot_at).isoformat()})")
        return "freshness unknown: the export carries no snapshot time"


class _Unsupported(Exception):
    """Something the engine's preview does not evaluate: the reference builder does it."""


# Identifier kinds as the engine numbers them (0: Braze cannot hold the profile).
_KINDS = {"external_id": 1, "braze_id": 2, "alias": 3, "email": 4}


class _EngineBuilder(_Builder):
    """The preview on the engine, with the reference's results (tests/mapping/test_preview_engine.py).

    The reference projects a Braze state per user (string keys, a dict of properties per
    event) and evaluates each filter on it. This builder never builds that state (the
    ``Preview.state`` is projected on first use): identities and the one rule for shared
    identifiers are one pass of SQL over the identifier columns; an attribute filter is the
    reference evaluator run on the profiles' own converted values (a profile's user holds its
    winning row's values: a losing row takes its winner's answer); event and cohort filters are
    compiled to SQL (`toolkit.braze.filters_sql`) over Arrow arrays keyed by the winning row's
    position; the checks' counts and reasons are NumPy masks, looked up for missing profiles
    only. Where a filter has no SQL form, the reference builder does the whole preview."""

    def __init__(self, mapping: "Mapping", export: EngageExport, email_opt_in: bool,
                 alias_label: str | None, as_of: Any, **chunk: Any) -> None:
        # one chunk of an export kept on disk: the export's pass found the shared keys
        self._shared = chunk.pop("shared", None)
        self._find: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None
        self._finding: Future | None = None
        self._chunk = chunk
        self._encodings: dict[tuple, Any] = {}   # per column: its texts, its numbers
        self._early: dict[tuple, Future] = {}
        # attribute → (its column, invalid mask) when its values are the column's own texts
        self._plain: dict[str, tuple[pd.Series, np.ndarray]] = {}
        super().__init__(mapping, export, email_opt_in, alias_label, as_of, **chunk)

    def _reference(self) -> _Builder:
        return _Builder(self.mapping, self.export, self.email_opt_in, self.alias_label,
                        self.as_of_given, **self._chunk)

    # -- identifiers ---------------------------------------------------------------------------
    def _identify(self) -> None:
        """`braze_user_keys` and `shared_keys` without a key text per profile: the kind of
        identifier each profile is held by (the first present of user_id, braze_id, alias,
        email), the anonymous-only profiles, and — one engine pass, unless the export's pass
        gave them — the rows a later row with the same key wins from."""
        columns = self.p.columns
        candidates = _candidates(columns, self.email_opt_in, self.alias_label)
        present: dict[str, np.ndarray] = {}

        def has(name: str) -> np.ndarray:   # a non-empty text
            if name not in present:
                if name not in columns:
                    present[name] = np.zeros(self.n, dtype=bool)
                else:
                    present[name] = _non_empty(self.p[name])
            return present[name]

        kind = np.zeros(self.n, dtype=np.uint8)
        for k, name in reversed(candidates):   # the first present one wins
            kind[has(name)] = _KINDS[k]
        self.kind = kind
        self.has_key = kind > 0
        self._masks[("", "anonymous_only")] = ~self.has_key & has("anonymous_id") \
            & ~has("email") & ~has("user_id")
        self._masks[("", "cohort_ok")] = (kind == _KINDS["external_id"]) | \
            (kind == _KINDS["alias"])
        if self._shared is not None:
            self._own(*self._shared)
            return
        columns = {name: pa.array(self.p[name].astype("string")) for _, name in candidates}

        def find() -> tuple[np.ndarray, np.ndarray]:
            # a Braze key is (kind, a candidate column's value): no column repeating a value
            # (the usual export: checked on 64-bit fingerprints, far cheaper than the engine's
            # grouping) means no key is shared
            if not any(has_duplicates(values) for values in columns.values()):
                empty = np.zeros(0, dtype=np.int64)
                return empty, empty
            table = pa.table({"p": np.arange(self.n, dtype=np.int64), **columns})
            with engine.connect() as db:
                # one engine thread beside this one: the work overlaps, the cores are not
                # oversubscribed
                db.execute("SET threads = 1")
                db.register("ids", table)
                return _shared_rows(db, "ids", candidates)

        # the engine looks for shared keys while the values are converted (`run`, `_owned`)
        self._find = find

    def _owned(self) -> None:
        """Wait for the rows that lose a shared key (the owners are known then)."""
        if self._find is not None:
            self._finding, self._find = _background().submit(self._find), None
        if self._finding is not None:
            found, self._finding = self._finding, None
            self._own(*found.result())

    # -- texts, once per distinct text ---------------------------------------------------------
    def _texts(self, col: pd.Series, name: Any = None) -> tuple[pa.Array, np.ndarray]:
        """(distinct texts in order of first appearance, each profile's index into them; blank
        profiles get the index one past the end) of a column, encoded once per column (``name``:
        what it is kept as, the column's name unless given)."""
        name = ("column", col.name) if name is None else name
        if name not in self._encodings:
            early = self._early.pop(name, None)
            self._encodings[name] = early.result() if early is not None else _encode(col)
        return self._encodings[name]

    def _encode_early(self) -> None:
        """Start encoding the text columns of the trait rules (Arrow, without the GIL) in the
        worker while this thread converts values."""
        for rule in self.mapping:
            if rule.kind == "trait" and rule.key in self.p.columns and \
                    isinstance(self.p[rule.key].dtype, pd.StringDtype) and \
                    ("column", rule.key) not in self._encodings:
                self._early[("column", rule.key)] = _background().submit(
                    _encode, self.p[rule.key])

    def _most_common_text(self, col: pd.Series) -> str | None:
        distinct, codes = self._texts(col)
        counts = np.bincount(codes, minlength=len(distinct) + 1)[:len(distinct)]
        length = pc.utf8_length(distinct)
        usable = pc.fill_null(pc.and_(pc.greater_equal(length, 1),
                                      pc.less_equal(length, LIMITS.string_length)),
                              False).to_numpy(zero_copy_only=False)
        return _most_common_of(pc.filter(distinct, usable), counts[usable])

    def _same_text(self, col: pd.Series, top: str) -> np.ndarray:
        distinct, codes = self._texts(col)
        same = pc.fill_null(pc.equal(pc.utf8_lower(distinct), top.lower()), False)
        return np.append(same.to_numpy(zero_copy_only=False), False)[codes]

    def _numbers(self, col: pd.Series) -> pd.Series:
        if isinstance(col.dtype, pd.Float64Dtype):
            return col   # to_numeric and astype keep a Float64 column's values as they are
        if ("numbers", col.name) not in self._encodings:
            self._encodings[("numbers", col.name)] = super()._numbers(col)
        return self._encodings[("numbers", col.name)]

    def _median_number(self, col: pd.Series) -> float | None:
        # the reference's median (pandas takes np.nanmedian of the present values) without
        # pandas' copies of the column
        x = self._numbers(col).to_numpy(dtype="float64", na_value=np.nan)
        present = x[~np.isnan(x)]
        return float(np.median(present)) if len(present) else None

    def _median_day(self, rule: Rule, conv: payload_rules.Conversion,
                    col: pd.Series) -> Any:
        """`value_parameter` of a time attribute: the UTC day of its median time, computed as
        pandas computes a median time (np.median of the nanoseconds as float64, truncated back
        to whole nanoseconds) without pandas' copies of the column."""
        t = conv.values
        if rule.attribute == "dob" or not isinstance(t.dtype, pd.DatetimeTZDtype) \
                or t.dtype.unit != "ns":
            return value_parameter(rule, conv, col)
        ns = t.array.asi8
        present = ns[ns != np.iinfo(np.int64).min]   # NaT
        if not len(present):
            return None
        median = np.int64(np.median(present.astype("f8"))).view("M8[ns]")
        return pd.Timestamp(median, tz="UTC").tz_convert("UTC").normalize()

    def _empty_text(self, col: pd.Series) -> np.ndarray:
        distinct, codes = self._texts(col)
        empty = pc.fill_null(pc.equal(distinct, ""), False)
        return np.append(empty.to_numpy(zero_copy_only=False), False)[codes]

    # -- evaluation ----------------------------------------------------------------------------
    def run(self) -> Preview:
        mapping = self.mapping
        shared = mapping.shared_events()
        self._encode_early()   # the texts are needed first (value checks), the owners last
        if self._find is not None:
            self._finding, self._find = _background().submit(self._find), None
        values: dict[str, pd.Series] = {}
        for rule in mapping:
            if rule.sends_attribute:
                value_type = self._value_type(rule.key)
                column = self.p[rule.key]
                conv = mapping.convert(rule, column, value_type)
                self.conversions[rule.key] = conv
                values[str(rule.attribute)] = conv.values
                self._plain.pop(str(rule.attribute), None)
                if _plain_text(rule, value_type, column, conv):
                    self._plain[str(rule.attribute)] = (
                        column, self._mask(rule.key, "invalid", conv.invalid))
        if any(rule.sends_event for rule in mapping):
            self._owned()   # a losing row sends no events
        events = [(rule, *self._event_arrays(rule, values=False))
                  for rule in mapping if rule.sends_event]
        from tqdm.auto import tqdm  # lazy: tqdm.auto imports IPython when it is installed

        bar = tqdm(total=2 * len(mapping), desc="preview: Braze filters", unit="step",
                   disable=self.n < PROGRESS_FROM or self._chunk.get("profiles") is not None,
                   leave=False)   # a chunk's progress is the export's bar
        try:
            checks, filters = [], {}
            for rule in mapping:
                found = self._checks(rule, self._value_type(rule.key), shared)
                filters[rule.key] = [c.filter for c in found if c.recommended]
                checks += [(rule, i, c) for i, c in enumerate(found)]
                bar.update()
            try:
                selected = self._select([c.filter for _, _, c in checks], values, events)
            except (FilterError, _Unsupported):
                bar.close()
                self._owned()
                return self._reference().run()
            self._owned()
            rows, reasons = [], {}
            counted_owner = self.sent if self._all_counted else self.sent & self.counted
            done = set()
            for (rule, i, check), s in zip(checks, selected):
                sel = s & self.sent             # a profile counts as its Braze user: its
                sel[self.lose] = s[self.winner]   # winning row's answer
                engaged = check.engage & self.sent
                engaged[self.winner[check.engage[self.lose]]] = True
                code, row = self._row(rule, check, sel, int(np.count_nonzero(s & counted_owner)),
                                      int(np.count_nonzero(s & counted_owner & ~engaged)))
                rows.append(row)
                if i == 0:
                    reasons[rule.key] = self._reason_series(code)
                if rule.key not in done:
                    done.add(rule.key)
                    bar.update()
        finally:
            bar.close()
        # the state, when looked at, is the reference's: only what it is built from is kept
        args = (self.mapping, self.export, self.email_opt_in, self.alias_label, self.as_of)
        chunk = self._chunk
        return self._preview(lambda: _Builder(*args, **chunk).projected_state(), rows, filters,
                             reasons, shared)

    def _select(self, filters: list[Filter], values: dict[str, pd.Series],
                events: list) -> list[np.ndarray]:
        """Per filter, the profiles it selects when each profile is a Braze user of its own."""
        out: list[np.ndarray | None] = [None] * len(filters)
        on_engine = []
        view = None
        for i, f in enumerate(filters):
            reads = _Reads.of(f)
            if reads.events or reads.cohorts:
                on_engine.append(i)
                continue
            if len(reads.attributes) == 1:
                name = next(iter(reads.attributes))
                out[i] = self._on_distinct(f, name, values.get(name))
                continue
            if view is None:   # the reference evaluator, on the profiles' converted values
                view = BrazeState(pd.DataFrame({a: v.array for a, v in values.items()},
                                               index=pd.RangeIndex(self.n)), as_of=self.as_of)
            out[i] = f.evaluate(view).to_numpy(dtype=bool)
        if on_engine:
            for i, s in zip(on_engine, self._select_sql([filters[i] for i in on_engine],
                                                        values, events)):
                out[i] = s
        return out

    def _on_distinct(self, f: Filter, name: str, values: pd.Series | None) -> np.ndarray:
        """An attribute filter reading one attribute, per profile: the reference evaluator run
        once per distinct text (a filter on one attribute answers from the user's value alone),
        then spread to the profiles; columns of other types are evaluated whole."""
        if values is None:
            values = pd.Series(pd.NA, index=pd.RangeIndex(self.n), dtype=object)
        if not (isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow"):
            state = BrazeState(pd.DataFrame({name: values.array}, index=pd.RangeIndex(self.n)),
                               as_of=self.as_of)
            return f.evaluate(state).to_numpy(dtype=bool)
        plain = self._plain.get(name)
        # a plain text attribute holds the column's own texts, blank where Braze refuses
        # them: its distinct texts are the column's, read once for the value checks too
        distinct, codes = self._texts(plain[0]) if plain else \
            self._texts(values, ("attribute", name))
        # the distinct texts, then blank (the profiles without a value)
        texts = pd.array(pa.concat_arrays([distinct, pa.nulls(1, distinct.type)]),
                         dtype=values.dtype)
        state = BrazeState(pd.DataFrame({name: texts}, index=pd.RangeIndex(len(texts))),
                           as_of=self.as_of)
        answer = f.evaluate(state).to_numpy(dtype=bool)
        selected = answer[codes]
        if plain is not None:
            selected[plain[1]] = answer[-1]
        return selected

    def _select_sql(self, filters: list[Filter], values: dict[str, pd.Series],
                    events: list) -> list[np.ndarray]:
        self._owned()
        reads = _Reads()
        for f in filters:
            reads._add(f)
        names = SqlNames(as_of=self.as_of, columns={
            name: {kind: _sql_column(name, kind) for kind in kinds}
            for name, kinds in reads.attributes.items() if name in values})
        expressions = [to_sql(f, names) for f in filters]   # FilterError: the reference
        users = {"uid": np.arange(self.n, dtype=np.int64)}
        for name, kinds in names.columns.items():
            for kind, column in kinds.items():
                users[column] = pa.array(VALUE_VIEWS[kind](values[name]))
        with engine.connect() as db:
            db.register(names.users, pa.table(users))
            if reads.events:
                db.register(names.events, self._events_table(events, reads.properties))
            if reads.cohorts:
                db.register(names.cohorts, self._cohorts_table())
            found = db.execute("SELECT uid, " + ", ".join(
                f"{e} AS s{i}" for i, e in enumerate(expressions))
                + f" FROM {engine.quote(names.users)}").fetchnumpy()
        uid = np.asarray(found["uid"])
        in_order = np.array_equal(uid, users["uid"])
        out = []
        for i in range(len(filters)):
            s = np.asarray(found[f"s{i}"], dtype=bool)
            if not in_order:
                s = _scatter(uid, s, self.n)
            out.append(s)
        return out

    def _events_table(self, events: list, properties: dict[str, set[str]]) -> pa.Table:
        """The events the rules send, by the sending profile's position (only winning rows
        send): name, time and, for property filters, the compared properties as JSON text."""
        uids, names, times, texts = [], [], [], []
        for rule, pos, stamps, _, entered in events:
            held = self.sent[pos]
            pos, stamps = pos[held], stamps[held]
            if rule.kind == "audience":
                tag, which = "audience_key", entered[held]
                sent = [rule.enter_event, rule.exit_event]
            else:
                tag, which = "trait_key", np.ones(len(pos), dtype=bool)
                sent = [rule.trait_event, rule.trait_event]
            idx = np.where(which, 0, 1).astype(np.int32)
            uids.append(pos)
            times.append(stamps)
            names.append(pc.take(pa.array(sent, type=pa.string()), pa.array(idx)))
            if properties:
                text = []
                for name in sent:
                    wanted = properties.get(name)
                    if wanted and rule.key in wanted:   # a value, not the constant tag
                        raise _Unsupported(f"a filter compares the {rule.key!r} property")
                    text.append(None if not wanted else _JSON.encode(
                        {tag: rule.key} if tag in wanted else {}))
                texts.append(pc.take(pa.array(text, type=pa.string()), pa.array(idx)))
        table = {"uid": np.concatenate(uids) if uids else np.zeros(0, dtype=np.int64),
                 "name": pa.concat_arrays(names) if names else pa.array([], type=pa.string()),
                 "time": pa.array(np.concatenate(times) if times
                                  else np.zeros(0, dtype="datetime64[ns]"),
                                  type=pa.timestamp("ns", tz="UTC"))}
        if properties:
            table["properties"] = pa.concat_arrays(texts) if texts else pa.array(
                [], type=pa.string())
        return pa.table(table)

    def _cohorts_table(self) -> pa.Table:
        """Cohort membership by the user's winning row (a losing row's membership counts for
        its winner, as in the reference, where both have the same key)."""
        user_of = np.arange(self.n, dtype=np.int64)
        user_of[self.lose] = self.winner
        uids, cohorts = [], []
        for rule in self.mapping:
            if rule.send_as != "cohort":
                continue
            member = self.p[rule.key].astype("boolean").to_numpy(dtype=bool, na_value=False)
            rows = member & self._cohort_ok()
            uids.append(user_of[rows])
            cohorts.append(pa.array([str(rule.cohort_name)] * 1, type=pa.string()).take(
                pa.array(np.zeros(int(rows.sum()), dtype=np.int32))))
        return pa.table({"uid": np.concatenate(uids) if uids else np.zeros(0, dtype=np.int64),
                         "cohort": pa.concat_arrays(cohorts) if cohorts
                         else pa.array([], type=pa.string())})


_EXECUTOR: list[ThreadPoolExecutor] = []


def _background() -> ThreadPoolExecutor:
    """One worker thread for engine queries and Arrow kernels that overlap the pandas work."""
    if not _EXECUTOR:
        _EXECUTOR.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="preview"))
    return _EXECUTOR[0]


def _non_empty(col: pd.Series) -> np.ndarray:
    """Per profile, whether its text is present and not empty: from each Arrow chunk's validity
    and offsets, without comparing a value."""
    data = pa.array(col.astype("string").array)
    parts = []
    for arr in data.chunks if isinstance(data, pa.ChunkedArray) else [data]:
        if not len(arr):
            continue
        width = np.int64 if arr.type == pa.large_string() else np.int32
        offsets = np.frombuffer(arr.buffers()[1], dtype=width)[arr.offset:arr.offset + len(arr) + 1]
        filled = offsets[1:] > offsets[:-1]
        if arr.null_count:
            filled &= arr.is_valid().to_numpy(zero_copy_only=False)
        parts.append(filled)
    return np.concatenate(parts) if parts else np.zeros(len(col), dtype=bool)


def _encode(col: pd.Series) -> tuple[pa.Array, np.ndarray]:
    """`_EngineBuilder._texts` of a column."""
    encoded = pc.dictionary_encode(_text_array(col))
    return encoded.dictionary, pc.fill_null(encoded.indices, len(encoded.dictionary)).to_numpy(
        zero_copy_only=False)


# Profile fields whose conversion rewrites the text (payload_rules.convert)
_REWRITTEN_FIELDS = frozenset({"dob", "gender", "country", "language"})


def _plain_text(rule: "Rule", value_type: str, column: pd.Series,
                conv: payload_rules.Conversion) -> bool:
    """Whether the conversion of a text column kept its texts, blanking only the values Braze
    refuses (``conv.invalid``): `payload_rules.convert`'s plain text path, checked."""
    if conv.json_type != "string" or value_type in ("boolean", "number", "datetime", "list",
                                                    "object") \
            or str(rule.attribute) in _REWRITTEN_FIELDS \
            or not isinstance(column.dtype, pd.StringDtype):
        return False
    blank = conv.values.isna().to_numpy(dtype=bool)
    return bool(np.array_equal(blank, column.isna().to_numpy(dtype=bool)
                               | conv.invalid.to_numpy(dtype=bool)))


def _candidates(columns, email_opt_in: bool, alias_label: str | None) -> list[tuple[str, str]]:
    """(identifier kind, profile column) in the order `braze_user_keys` tries them."""
    found = [("external_id", "user_id"), ("braze_id", "braze_id")]
    if alias_label:
        found.append(("alias", "segment_id"))
    if email_opt_in:
        found.append(("email", "email"))
    return [(kind, name) for kind, name in found if name in columns]


def _shared_rows(db, relation: str, candidates: list[tuple[str, str]]) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """`shared_keys` on the engine over ``relation`` (``p``, the profile's position, and the
    candidate columns): the rows a later row with the same Braze key wins from, and each one's
    winner. Keys are grouped by a 64-bit hash first (an integer aggregate); only the rows whose
    hash repeats are grouped by their real key, so a collision is never taken for a shared
    identifier. No key text is built: (kind, identifier) is the key."""
    empty = np.zeros(0, dtype=np.int64)
    if not candidates:
        return empty, empty

    def present(name: str) -> str:
        return f"coalesce({engine.quote(name)} <> '', false)"

    kind = ("(CASE " + " ".join(f"WHEN {present(name)} THEN {_KINDS[k]}" for k, name in candidates)
            + " ELSE 0 END)::UTINYINT")
    value = "CASE " + " ".join(f"WHEN {present(name)} THEN {engine.quote(name)}"
                               for _, name in candidates) + " END"
    found = db.execute(
        f"WITH d AS (SELECT hash({kind}, {value}) AS h FROM {relation} WHERE {kind} > 0 "
        "GROUP BY 1 HAVING count(*) > 1), "
        f"k AS (SELECT p, {kind} AS kind, {value} AS v FROM {relation} WHERE {kind} > 0 "
        f"AND hash({kind}, {value}) IN (SELECT h FROM d)), "
        "s AS (SELECT kind, v, max(p) AS last FROM k GROUP BY kind, v HAVING count(*) > 1) "
        "SELECT k.p, s.last FROM k JOIN s USING (kind, v) WHERE k.p <> s.last ORDER BY k.p"
    ).fetchnumpy()
    return (np.asarray(found["p"], dtype=np.int64), np.asarray(found["last"], dtype=np.int64))


def _scatter(positions: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[positions] = values
    return out


# The evaluators of `Preview.build`: the engine's, and the reference it is tested against.
EVALUATORS = {"engine": _EngineBuilder, "pandas": _Builder}


_COUNT_COLUMNS = ["engage_members", "braze_can_hold", "filter_selects", "matched", "dropped",
                  "extra", *REASONS]


def _build_in_chunks(mapping: "Mapping", export, email_opt_in: bool, alias_label: str | None,
                     as_of: Any, builder: type = _Builder) -> "Preview":
    """The preview of an export kept on disk, a chunk of profiles at a time: the counts of
    each chunk add up to the export's, because every chunk sees the same checks (their values
    taken from whole columns first) and the one rule for shared identifiers over the whole
    export (a chunk borrows the later rows that win its profiles' identifiers)."""
    from tqdm.auto import tqdm  # lazy: tqdm.auto imports IPython when it is installed

    ident = [c for c in IDENTITY_COLUMNS if c in export.columns]
    needed = list(dict.fromkeys(ident + [r.key for r in mapping if r.key in export.columns]))
    on_engine = builder is _EngineBuilder
    if on_engine:   # one engine pass over the file, no key text per profile
        lose, winner = _stored_shared_rows(export, email_opt_in, alias_label)
    else:
        found = export_keys(export, email_opt_in=email_opt_in, alias_label=alias_label)
        lose, winner = found.lose, found.winner
        del found
    params = {}
    for rule in mapping:
        if rule.kind == "trait" and rule.sends_attribute and rule.key in export.columns:
            vt = mapping.value_type(export, rule.key)
            head = next(export.chunks([rule.key], rows=1_000))[rule.key]
            if mapping.convert(rule, head, vt).json_type == "string":
                if on_engine and _stored_text(export, rule.key):
                    params[rule.key] = _stored_most_common(export, rule.key)
                    continue
                # counted chunk by chunk: a whole text column is the largest thing to hold
                counts: dict = {}
                for part in export.chunks([rule.key]):
                    _text_counts(part[rule.key], counts)
                params[rule.key] = _most_common(counts)
                continue
            column = next(export.chunks([rule.key], rows=export.profile_count))[rule.key]
            params[rule.key] = value_parameter(rule, mapping.convert(rule, column, vt), column)
            del column
    first: Preview | None = None
    frame = None
    codes: dict[str, list[np.ndarray]] = {}
    users = 0
    bar = tqdm(total=export.profile_count, unit="profile", desc="preview: Braze filters",
               disable=export.profile_count < PROGRESS_FROM, leave=False)
    try:
        for chunk in export.chunks(needed):
            lo, hi = int(chunk.index[0]), int(chunk.index[-1]) + 1
            inside = (lose >= lo) & (lose < hi) & (winner >= hi)
            borrowed = np.unique(winner[inside])
            rows, counted = chunk, None
            if len(borrowed):
                rows = pd.concat([chunk, export.take(borrowed, needed)])
                counted = np.arange(len(rows)) < len(chunk)
            options = {}
            if on_engine:   # the export's shared keys, as positions in these rows
                mine = (lose >= lo) & (lose < hi)
                won = winner[mine]
                local = np.where(won < hi, won - lo,
                                 len(chunk) + np.searchsorted(borrowed, won))
                options["shared"] = (lose[mine] - lo, local.astype(np.int64))
            part = builder(mapping, export, email_opt_in, alias_label, as_of, profiles=rows,
                           counted=counted, params=params, **options).run()
            # only the counts and reasons are kept: a chunk's projected state goes with it
            if frame is None:
                first, frame = part, part.to_frame()
            else:
                other = part.to_frame()
                frame[_COUNT_COLUMNS] = (frame[_COUNT_COLUMNS].to_numpy()
                                         + other[_COUNT_COLUMNS].to_numpy())
            for key, reason in part._reasons.items():
                codes.setdefault(key, []).append(reason.cat.codes.to_numpy())
            users += part.user_count
            del part, rows, chunk
            engine.release_memory()
            bar.update(hi - lo)
    finally:
        bar.close()
    reasons = {k: pd.Series(pd.Categorical.from_codes(np.concatenate(v), categories=list(REASONS)),
                            index=pd.RangeIndex(export.profile_count)) for k, v in codes.items()}
    return Preview(mapping=mapping, export=export,
                   state=BrazeState(pd.DataFrame(index=pd.Index([], name="user", dtype="string")),
                                    as_of=first.as_of),
                   frame=frame, filters=first.filters, warnings=first.warnings,
                   freshness=first.freshness, reasons=reasons, user_count=users)


def _stored_shared_rows(export: StoredExport, email_opt_in: bool,
                        alias_label: str | None) -> tuple[np.ndarray, np.ndarray]:
    """`export_keys`' losing rows and their winners, in one engine pass over the export's file
    (the engine streams it with bounded memory)."""
    candidates = _candidates(export.columns, email_opt_in, alias_label)
    if not candidates:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    columns = ", ".join(engine.quote(name) for _, name in candidates)
    relation = (f"(SELECT file_row_number AS p, {columns} FROM read_parquet("
                f"{engine.literal(str(export.path))}, file_row_number = true))")
    with engine.connect() as db:
        return _shared_rows(db, relation, candidates)


def _stored_text(export: StoredExport, key: str) -> bool:
    """Whether the export's file keeps ``key`` as text (its values are the texts then)."""
    kind = pq.read_schema(export.path).field(key).type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _stored_most_common(export: StoredExport, key: str) -> str | None:
    """`_most_common` of a text column kept on disk, counted by the engine: the profiles per
    distinct text of 1–255 characters, in order of first appearance, as `_text_counts` counts
    them chunk by chunk."""
    col = engine.quote(key)
    with engine.connect() as db:
        found = db.sql(
            f"SELECT {col} AS v, count(*) AS n, min(file_row_number) AS first FROM read_parquet("
            f"{engine.literal(str(export.path))}, file_row_number = true) WHERE length({col}) "
            f"BETWEEN 1 AND {int(LIMITS.string_length)} GROUP BY {col} ORDER BY first"
        ).to_arrow_table()
    return _most_common_of(found.column("v"), found.column("n").to_numpy())


def _most_common_of(values: "pa.Array | pa.ChunkedArray", counts: np.ndarray) -> str | None:
    """`_most_common` of texts and their counts (in order of first appearance) given as
    arrays: ranked by the same sort, so ties go the same way."""
    ranked = pd.Series(counts, dtype="int64").sort_values(ascending=False)
    return None if ranked.empty else str(values[int(ranked.index[0])].as_py())


def _is_event_filter(f: Filter) -> bool:
    if isinstance(f, (AllOf, AnyOf)):
        return all(_is_event_filter(x) for x in f.filters)
    return isinstance(f, (CustomEventCount, CustomEventPropertyCount))


def _lookback_days(f: Filter) -> int | None:
    if isinstance(f, (AllOf, AnyOf)):
        days = [d for d in (_lookback_days(x) for x in f.filters) if d]
        return max(days) if days else None
    if isinstance(f, CustomEventPropertyCount):
        return f.days
    if isinstance(f, CustomEventCount) and f.days and f.op == "more_than":
        return f.days
    return None


def shared_event_warnings(shared: dict[str, list[str]]) -> list[str]:
    """One warning per event name that several computations send (``{event: [keys]}``)."""
    return [f"event {name!r} is sent by {len(keys)} computations ({', '.join(keys)}): a bare "
            f"event-count filter on it counts all of them. Rename the event per computation "
            f"(mapping.set(key, enter_event=…)) or filter on the event property "
            f"audience_key/trait_key (property filters look back at most 30 days)."
            for name, keys in shared.items()]
