"""The `EngageExport` model: what every Engage reader produces and every later stage consumes.

Data contract (shared by readers, mapping, preview and plan):

``profiles`` — pandas DataFrame, one row per Segment profile, default RangeIndex.
    Identifier columns, always present, dtype ``string`` (pd.NA when missing):
        ``segment_id``    Segment profile key (``use_…``); unique per row.
        ``user_id``       Segment userId → Braze external_id.
        ``email``         primary (first) email, lower-cased.
        ``anonymous_id``  primary anonymousId.
        ``braze_id``      Braze's own id when Segment knows it (usually missing).
    ``emails`` / ``anonymous_ids`` — pyarrow list columns, dtype
    ``pd.ArrowDtype(pa.list_(pa.string()))`` (``frames.ID_LIST_DTYPE``), never Python tuples:
    every value of the identifier when a profile has several (the per-identifier fan-out,
    collapsed), distinct, in source order, primary value first; an empty list when it has none.
    One cell reads back as a Python ``list`` (compare ``list(cell)``); whole-column work stays
    in Arrow (``.list.len()``, ``pa.array(col.array)`` with ``pyarrow.compute.list_flatten``).
    A reader may build them on first use of ``profiles`` (`EngageExport._defer`): stages read
    their columns with ``chunks``/``take``, which build no column they do not ask for.
    Then one column per computation key, typed by the computation's ``value_type``:
        audience → pandas ``boolean`` (True member, False exited/non-member, NA unknown)
        trait    → ``string`` | ``Float64`` | ``boolean`` | ``datetime64[ns, UTC]`` | object
                   (lists/dicts).
``computations`` — DataFrame with columns ``key``, ``kind`` ("audience" | "trait"),
    ``computation_id`` (``aud_…``/``tra_…`` or NA), ``value_type`` ("boolean", "string",
    "number", "datetime", "list", "object"), ``name`` (display name, defaults to key).
``events`` — DataFrame (possibly empty) of the Engage event history, one row per collapsed
    Engage message: ``segment_id``, ``timestamp`` (datetime64[ns, UTC]), ``type``
    ("identify" | "track"), ``event`` (track event name or NA), ``computation_key``,
    ``computation_kind``, ``value`` (object: the value at traits|properties[key]),
    ``message_id``. Used for event-count previews.
    Source events attached with ``with_history`` are further rows with an empty
    ``computation_key`` and the extra columns ``properties``, ``context``, ``source_id`` and
    ``identity`` (see `toolkit.engage.evaluate`).
``snapshot_at`` — pandas Timestamp (UTC) of the Engage compute the export reflects: the CSV
    snapshot time when known, else the latest event timestamp, else the file's mtime.
``source`` — human-readable description of where the data came from (file path, format).
``findings`` — `Findings`, the validation issues found while reading.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from html import escape
from typing import Callable, Iterable, Iterator

import pandas as pd

from toolkit.errors import ExportValidationError

__all__ = ["EngageExport", "Finding", "Findings", "IDENTIFIER_COLUMNS", "EVENT_COLUMNS",
           "COMPUTATION_COLUMNS"]

IDENTIFIER_COLUMNS = ("segment_id", "user_id", "email", "anonymous_id", "braze_id")
COMPUTATION_COLUMNS = ("key", "kind", "computation_id", "value_type", "name")
EVENT_COLUMNS = ("segment_id", "timestamp", "type", "event", "computation_key",
                 "computation_kind", "value", "message_id")

SEVERITIES = ("error", "warning", "info")
# toolkit.engage.evaluate registers "attach" (EngageExport.with_history's reader) on import
HISTORY: dict = {}


@dataclass(frozen=True)
class Finding:
    """One validation issue: where it is, what is wrong, and how to fix it."""

    severity: str          # "error" (cannot be synced as is), "warning", "info"
    code: str              # stable machine name, e.g. "anonymous_only", "type_drift"
    message: str
    row: int | None = None         # 1-based data row in the source file, when known
    column: str | None = None      # column / field / computation key concerned
    fix: str | None = None         # how to fix it, in one sentence
    segment_id: str | None = None  # profile concerned, when one

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")

    def __str__(self) -> str:
        where = ", ".join(p for p in (
            f"row {self.row}" if self.row is not None else "",
            f"column {self.column}" if self.column else "",
        ) if p)
        text = f"[{self.severity}] {where + ': ' if where else ''}{self.message}"
        return text + (f" (fix: {self.fix})" if self.fix else "")


class Findings:
    """An ordered collection of `Finding`s with counts, filtering and a DataFrame view."""

    def __init__(self, items: Iterable[Finding] = ()) -> None:
        self._items: list[Finding] = list(items)

    def add(self, severity: str, code: str, message: str, **where) -> Finding:
        finding = Finding(severity, code, message, **where)
        self._items.append(finding)
        return finding

    def extend(self, items: Iterable[Finding]) -> None:
        self._items.extend(items)

    def __iter__(self) -> Iterator[Finding]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):
        return self._items[i]

    def of(self, code: str | None = None, severity: str | None = None) -> "Findings":
        return Findings(f for f in self._items
                        if (code is None or f.code == code)
                        and (severity is None or f.severity == severity))

    @property
    def errors(self) -> "Findings":
        return self.of(severity="error")

    @property
    def warnings(self) -> "Findings":
        return self.of(severity="warning")

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self._items:
            out[f.code] = out.get(f.code, 0) + 1
        return out

    def to_frame(self) -> pd.DataFrame:
        cols = ["severity", "code", "row", "column", "segment_id", "message", "fix"]
        return pd.DataFrame([{c: getattr(f, c) for c in cols} for f in self._items], columns=cols)

    def __repr__(self) -> str:
        if not self._items:
            return "Findings(none)"
        lines = [f"Findings({len(self._items)}):"] + [f"  {f}" for f in self._items[:20]]
        if len(self._items) > 20:
            lines.append(f"  … {len(self._items) - 20} more")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        if not self._items:
            return "<p>No findings.</p>"
        return self.to_frame().head(50).to_html(index=False, na_rep="")


def export_html(export: "EngageExport", source: str, counts: str) -> str:
    """The notebook display of an export, in memory or on disk: ``counts`` (HTML) and the
    snapshot, the per-computation summary, identifier coverage and findings."""
    snap = export.snapshot_at.isoformat() if export.snapshot_at is not None else "unknown"
    found = export.findings.counts()
    findings = ", ".join(f"{escape(k)}: {v:,}" for k, v in sorted(found.items())) or "none"
    cov = ", ".join(f"{escape(k)} {v:,}" for k, v in export.identifier_coverage().items())
    return (f"<div class='engage-export'><h4>Engage export — {escape(source)}</h4>"
            f"<p>{counts} · snapshot {escape(snap)}</p>"
            f"{export.summary().to_html(index=False, na_rep='')}"
            f"<p><b>Identifiers:</b> {cov}</p><p><b>Findings:</b> {findings}</p></div>")


@dataclass
class EngageExport:
    """Profiles, computations, event history and findings read from one Engage export."""

    profiles: pd.DataFrame
    computations: pd.DataFrame
    events: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(EVENT_COLUMNS)))
    snapshot_at: pd.Timestamp | None = None
    source: str = ""
    findings: Findings = field(default_factory=Findings)

    # -- columns built on first use ------------------------------------------------------
    def _defer(self, names: tuple[str, ...], order: list[str],
               build: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
        """Columns ``names`` that ``build(frame)`` adds to the profiles (giving them the column
        ``order``) on first use of `profiles`: a reader's work that no stage may need. Stages
        read the columns they need through `chunks` and `take`, which build none they do not
        ask for."""
        self.__dict__["_pending"] = (tuple(names), list(order), build)

    def _built(self) -> pd.DataFrame:
        """The profiles as built so far (the deferred columns left out until built)."""
        frame = self.__dict__.get("_frame")
        return self.profiles if frame is None else frame

    def _frame_of(self, columns: list[str] | None) -> pd.DataFrame:
        """The profiles' ``columns`` (all: None), building deferred ones only when asked for."""
        if columns is None:
            return self.profiles
        pending = self.__dict__.get("_pending")
        if pending is not None and set(columns) & set(pending[0]):
            return self.profiles[columns]
        return self._built()[columns]

    # -- convenience views -------------------------------------------------------------
    @property
    def profile_count(self) -> int:
        """How many profiles (without reading them when they are kept on disk)."""
        return len(self._built())

    @property
    def columns(self) -> list[str]:
        """The profile columns."""
        pending = self.__dict__.get("_pending")
        return list(pending[1]) if pending is not None else list(self._built().columns)

    def chunks(self, columns: list[str] | None = None,
               rows: int | None = None) -> Iterator[pd.DataFrame]:
        """The profiles a chunk at a time, indexed by position (in memory: one chunk; an
        engine-backed export reads ``rows`` at a time from disk)."""
        yield self._frame_of(columns)

    def take(self, positions, columns: list[str] | None = None) -> pd.DataFrame:
        """The profiles at ``positions`` (indexed by position)."""
        return self._frame_of(columns).iloc[sorted(set(int(p) for p in positions))]

    @property
    def audiences(self) -> list[str]:
        return self.computations.loc[self.computations["kind"] == "audience", "key"].tolist()

    @property
    def traits(self) -> list[str]:
        return self.computations.loc[self.computations["kind"] == "trait", "key"].tolist()

    def computation(self, key: str) -> dict:
        rows = self.computations[self.computations["key"] == key]
        if rows.empty:
            raise ExportValidationError(
                f"no computation named {key!r} in this export",
                field=key, hint=f"use one of: {', '.join(self.computations['key'])}")
        return rows.iloc[0].to_dict()

    def members(self, audience: str) -> pd.DataFrame:
        """Profiles currently in `audience` (its column is True)."""
        self.computation(audience)
        return self.profiles[self.profiles[audience].fillna(False).astype(bool)]

    def with_history(self, source, *, progress: bool | None = None) -> "EngageExport":
        """This export plus its sources' track events (a file or a table), each resolved to a
        profile: what `toolkit.evaluate_definition` evaluates audience definitions on."""
        # the reader lives above the model (it reads and resolves events): it registers itself
        # in HISTORY when `toolkit.engage` is imported, so the model imports nothing of it
        return HISTORY["attach"](self, source, progress=progress)

    def sample(self, n: int = 1000, *, seed: int = 0) -> pd.DataFrame:
        """``n`` profiles drawn at random (reproducibly, by ``seed``): a look at a large export
        without displaying all of it."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ExportValidationError(f"n must be a non-negative integer, not {n!r}",
                                        field="n", hint="export.sample(1000)")
        return self.profiles.sample(min(n, len(self.profiles)), random_state=seed)

    def sql(self, query: str) -> pd.DataFrame:
        """Run a SQL query on the data engine, where ``profiles``, ``computations`` and
        ``events`` are this export's tables: counts and overlaps of a large export without
        Python loops, e.g. ``export.sql("SELECT count(*) FROM profiles WHERE vip_customer")``."""
        import duckdb  # lazy: DuckDB loads only when an export is queried

        from toolkit import engine  # lazy: DuckDB loads only when an export is queried

        if not isinstance(query, str) or not query.strip():
            raise ExportValidationError("the query is empty", field="query",
                                        hint='export.sql("SELECT count(*) FROM profiles")')
        # list columns (emails, anonymous_ids) and object traits go in as Arrow: no copies
        with engine.connect() as db:
            db.register("profiles", self.profiles)
            db.register("computations", self.computations)
            db.register("events", self.events)
            try:
                return db.execute(query).df()
            except duckdb.Error as exc:
                raise ExportValidationError(f"the query failed: {str(exc).splitlines()[0]}",
                                            field="query",
                                            hint="tables: profiles, computations, events; "
                                                 "quote column names with \"…\"") from None

    def summary(self) -> pd.DataFrame:
        """One row per computation: kind, value type, profiles with a value, members or distinct values."""
        rows = []
        profiles = self._built()   # the computations' columns: no identifier list is read
        for comp in self.computations.to_dict("records"):
            col = profiles[comp["key"]] if comp["key"] in profiles else pd.Series(dtype=object)
            with_value = int(col.notna().sum())
            if comp["kind"] == "audience":
                members = int(col.fillna(False).astype(bool).sum())
                detail = f"{members:,} members"
            else:
                members = None
                try:
                    detail = f"{col.nunique(dropna=True):,} distinct values"
                except TypeError:  # lists / dicts are unhashable
                    detail = "structured values"
            rows.append({"key": comp["key"], "kind": comp["kind"], "value_type": comp["value_type"],
                         "profiles_with_value": with_value, "members": members, "detail": detail})
        return pd.DataFrame(rows, columns=["key", "kind", "value_type", "profiles_with_value",
                                           "members", "detail"])

    def identifier_coverage(self) -> dict[str, int]:
        """How many profiles carry each identifier, and how many carry none Braze can use."""
        p = self._built()   # the identifier columns: no identifier list is read
        out = {c: int(p[c].notna().sum()) for c in IDENTIFIER_COLUMNS if c in p}
        usable = p["user_id"].notna() | p.get("braze_id", pd.Series(pd.NA, index=p.index)).notna()
        out["braze_usable"] = int(usable.sum())
        out["anonymous_only"] = int((~usable & p["email"].isna() & p["anonymous_id"].notna()).sum())
        out["profiles"] = len(p)
        return out

    def __repr__(self) -> str:
        snap = self.snapshot_at.isoformat() if self.snapshot_at is not None else "unknown"
        return (f"<EngageExport {self.source or '(in memory)'}: {self.profile_count:,} profiles, "
                f"{len(self.audiences)} audiences, {len(self.traits)} traits, "
                f"{len(self.events):,} events, {len(self.findings)} findings, snapshot {snap}>")

    def _repr_html_(self) -> str:
        return export_html(self, self.source or "in memory",
                           f"{self.profile_count:,} profiles · {len(self.audiences)} audiences · "
                           f"{len(self.traits)} traits · {len(self.events):,} events")


# `EngageExport.profiles`: the frame, completed on first use with the columns a reader deferred
# (`EngageExport._defer`); assigning it replaces the frame and drops anything deferred.
_BUILDING = threading.Lock()


def _get_profiles(self: EngageExport) -> pd.DataFrame:
    if self.__dict__.get("_pending") is not None:
        with _BUILDING:   # two threads asking at once build the columns once
            pending = self.__dict__.get("_pending")
            if pending is not None:
                self.__dict__["_frame"] = pending[2](self.__dict__["_frame"])
                self.__dict__["_pending"] = None
    return self.__dict__["_frame"]


def _set_profiles(self: EngageExport, value: pd.DataFrame) -> None:
    self.__dict__["_frame"] = value
    self.__dict__["_pending"] = None


EngageExport.profiles = property(  # type: ignore[assignment]
    _get_profiles, _set_profiles,
    doc="The profiles (see the data contract above); columns a reader deferred are built on "
        "first use.")
