"""The SQL diff: desired state against the ledger's acknowledged state, written as a plan's operations.

Runs on the engine (DuckDB). Users whose checksum (a hash of their normalised desired fields)
equals the one the ledger holds cost one comparison and are skipped; only the others are diffed
field by field. The operations come out as one Parquet file in send order — attributes, then
events, then cohort changes; by profile within each, so one user's objects are adjacent — with
the request (``batch``) each operation belongs to already assigned:

* attributes: at most ``limit`` users per request (one object per user);
* events: at most ``limit`` events per request, never splitting one user's events;
* cohort changes: at most 1,000 users per request, one cohort and direction each.

The engine decides, per user and field, which change (if any) the field needs, as a small
outcome number; the operations are then assembled column-wise with Arrow from those numbers
(texts taken from the users' desired values, the few constant columns as dictionary indices),
so no text is built per operation by SQL. A first sync (no snapshot, nothing held) reads the
projection as it is: no checksums, joins or copies. The file is encoded and compressed on a
thread of its own, and its bytes are hashed as they are written (the plan's fingerprint).
"""
from __future__ import annotations

import hashlib
import io
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from toolkit.braze.limits import LIMITS
from toolkit.engine import literal, quote
from toolkit.sync.projection import FieldSpec, Projection

__all__ = ["DiffResult", "diff", "OPERATION_COLUMNS", "checksum_sql", "name_batches"]

# The operations table, in canonical column order (the order of the file's columns).
OPERATION_COLUMNS = ("uid", "segment_id", "op", "rule", "change", "name", "value", "field",
                     "after", "batch")
OPERATIONS_SCHEMA = pa.schema([(c, pa.int64() if c == "batch" else pa.string())
                               for c in OPERATION_COLUMNS])
ROW_GROUP = 122_880
_WRITE_BUFFER = 8 << 20
# few distinct values each: written from their dictionaries
DISTINCT_COLUMNS = ("op", "rule", "change", "name", "field")


@dataclass
class DiffResult:
    rows: int
    changed_users: int
    held: int                      # operations held back: their event batch's fate is unknown
    conflicts: pd.DataFrame        # (segment_id, uid, rule) of values whose type Braze locked
    batches: pd.DataFrame          # batch, kind, start, stop, objects, name, change
    ops_digest: str                # sha256 of the operations file's bytes, taken as written
    # counted while writing, so the plan's cost needs no second read of the file:
    tally: list = field(default_factory=list)   # [rule, op, change, name, operations], sorted
    users: int = 0                 # users with at least one operation
    attribute_users: int = 0       # users with at least one attribute operation
    transfer: tuple = (0, 0)       # bytes sent to and received from the ledger's server


def _kind(expr: str) -> str:
    """JSON kind of a JSON text from its first character (b, s, a, o, n; NULL for null)."""
    return (f"(CASE WHEN {expr} IS NULL OR {expr} = 'null' THEN NULL "
            f"ELSE CASE left({expr}, 1) WHEN 't' THEN 'b' WHEN 'f' THEN 'b' WHEN '\"' THEN 's' "
            f"WHEN '[' THEN 'a' WHEN '{{' THEN 'o' ELSE 'n' END END)")


def checksum_sql(fields: list[tuple[str, str]], value_of, digest: str) -> str:
    """A per-user hash over the normalised ``(field, kind)`` values; ``value_of(field)`` is the
    SQL of a field's text. Membership counts only as member / not member; a value as its text."""
    parts = [literal(digest)]
    for name, kind in sorted(fields):
        v = value_of(name)
        parts.append(f"coalesce({v} = 'true', false)" if kind == "membership" else v)
    return f"hash({', '.join(parts)})"


def _desired_checksum(spec: FieldSpec) -> str:
    if spec.kind == "membership":
        return spec.column
    return f"CASE WHEN coalesce({spec.refused}, false) THEN NULL ELSE {spec.column} END"


def diff(db, projection: Projection, snapshot, held: pa.Table | None, *, limit: int,
         out: Path, on_rows=None) -> DiffResult:
    """Diff ``projection`` against the ledger ``snapshot`` and write the operations to ``out``."""
    specs = projection.fields
    digest = projection.spec_digest()
    if isinstance(projection.table, pa.Table):
        db.register("desired_raw", projection.table)
    else:   # an export kept on disk was projected into a Parquet file
        db.execute(f"CREATE OR REPLACE TEMP VIEW desired_raw AS SELECT * FROM "
                   f"read_parquet({literal(str(projection.table))})")
    kinds = [(s.field, s.kind) for s in specs]
    by_field = {s.field: s for s in specs}
    desired_ck = checksum_sql(kinds, lambda f: _desired_checksum(by_field[f]), digest)
    # a view: the projection is read once, by the comparison below, not copied first
    db.execute(f"CREATE TEMP VIEW desired AS SELECT *, {desired_ck} AS checksum FROM desired_raw")

    have = snapshot.columns if snapshot is not None else set()
    held_cols = ""
    if held is not None and held.num_rows:
        db.register("held_raw", held)
        flags = ", ".join(f"bool_or(field = {literal(sp.field)}) AS h{k}"
                          for k, sp in enumerate(specs))
        db.execute(f"CREATE TEMP TABLE held AS SELECT uid, {flags} FROM held_raw GROUP BY uid")
        db.unregister("held_raw")
        held_cols = "".join(f", coalesce(h.h{k}, false) AS h{k}" for k in range(len(specs)))
    state_cols = "".join(f", s.{quote(sp.field)} AS s{k}" if sp.field in have else
                         f", NULL::VARCHAR AS s{k}" for k, sp in enumerate(specs))
    transfer = (0, 0)
    remote = getattr(snapshot, "remote", False)
    first_sync = snapshot is None and not held_cols
    subset = snapshot is not None and projection.projected is not None
    if first_sync:
        # nothing acknowledged, nothing held: every user is changed and every state empty, so
        # j is the projection itself (no checksum, no join, no copy; it is in export order)
        db.execute(f"CREATE TEMP VIEW j AS SELECT c.*{state_cols} FROM desired_raw c")
        changed_users = db.execute("SELECT count(*) FROM desired_raw").fetchall()[0][0]
    elif remote:
        changed_users, transfer = _diff_in_server(db, snapshot, specs, held_cols)
    elif subset:
        changed_users = _diff_changed_rows(db, snapshot, kinds, digest, have, state_cols,
                                           held_cols)
    else:
        if snapshot is not None:
            src = f"read_parquet({literal(str(snapshot.path))})"
            if snapshot.checksum_spec == digest:
                ledger_ck = "checksum"
            else:  # checksums were made for another set of fields: compute them for this one
                ledger_ck = checksum_sql(kinds, lambda f: quote(f) if f in have else "NULL",
                                         digest)
            db.execute(f"CREATE TEMP VIEW ledger_ck AS SELECT uid, {ledger_ck} AS checksum "
                       f"FROM {src}")
            db.execute("CREATE TEMP TABLE changed AS SELECT d.* FROM desired d "
                       "LEFT JOIN ledger_ck l ON d.uid = l.uid "
                       "WHERE l.checksum IS DISTINCT FROM d.checksum")
            db.execute("DROP VIEW ledger_ck")
            joins = f"LEFT JOIN {src} s ON c.uid = s.uid"
        else:
            db.execute("CREATE TEMP TABLE changed AS SELECT * FROM desired")
            joins = "LEFT JOIN (SELECT NULL::VARCHAR AS uid WHERE false) s ON c.uid = s.uid"
        if held_cols:
            joins += " LEFT JOIN held h ON c.uid = h.uid"
        # j keeps the export's row order: the operations are produced in it, with no sort
        db.execute(f"CREATE TEMP TABLE j AS SELECT c.*{state_cols}{held_cols} FROM changed c "
                   f"{joins} ORDER BY c.pos")
        changed_users = db.execute("SELECT count(*) FROM changed").fetchall()[0][0]
        db.execute("DROP TABLE changed")
    db.execute("DROP VIEW desired")

    # with no state there is no type Braze holds to conflict with
    conflicts = _conflicts(db, specs) if snapshot is not None else _no_conflicts()
    ops = [_operation(sp, k) for k, sp in enumerate(specs)]
    held_count = 0
    if held_cols:
        held_count = db.execute("SELECT coalesce(sum(" + " + ".join(
            f"(({change}) IS NOT NULL AND h{k})::BIGINT" for k, (_, change, _) in enumerate(ops))
            + "), 0) FROM j").fetchall()[0][0]
    try:
        rows, batches, ops_digest, tally = _write_ordered(
            db, limit, out, specs, ops, bool(held_cols), projection.profiles, on_rows)
    finally:   # the connection can diff again
        db.execute("DROP VIEW j" if first_sync else "DROP TABLE j")
        if held_cols:
            db.execute("DROP TABLE held")
        db.unregister("desired_raw")
    return DiffResult(int(rows), int(changed_users), int(held_count), conflicts, batches,
                      ops_digest, tally.rows(), tally.users(), tally.attribute_users,
                      tuple(transfer))


def _diff_changed_rows(db, snapshot, kinds, digest: str, have, state_cols: str,
                       held_cols: str) -> int:
    """``j`` for a projection of the changed rows alone (`project(previous=…)`: few users):
    compared with the snapshot and given their state and held flags in one pass over it, in
    the export's row order. Returns how many users differ."""
    src = f"read_parquet({literal(str(snapshot.path))})"
    ledger_ck = ("s.checksum" if snapshot.checksum_spec == digest else checksum_sql(
        kinds, lambda f: f"s.{quote(f)}" if f in have else "NULL", digest))
    held = " LEFT JOIN held h ON c.uid = h.uid" if held_cols else ""
    db.execute(f"CREATE TEMP TABLE j AS SELECT c.*{state_cols}{held_cols} FROM desired c "
               f"LEFT JOIN {src} s "
               f"ON c.uid = s.uid{held} WHERE {ledger_ck} IS DISTINCT FROM c.checksum "
               "ORDER BY c.pos")
    return db.execute("SELECT count(*) FROM j").fetchall()[0][0]


def _diff_in_server(db, snapshot, specs: list[FieldSpec], held_cols: str) -> tuple[int, tuple]:
    """``j`` from a comparison run in the ledger's server: every user's key and checksum go
    in, the changed users come back with their previous values (``s0``, ``s1``…), and ``j`` is
    those users' desired rows beside them, in the export's row order. Returns how many users
    differ and the bytes (sent, received)."""
    prev, sent, received = snapshot.changed(
        db.sql("SELECT uid, checksum FROM desired").to_arrow_reader(ROW_GROUP),
        [sp.field for sp in specs])
    db.register("prev_raw", prev)
    held = " LEFT JOIN held h ON c.uid = h.uid" if held_cols else ""
    db.execute("CREATE TEMP TABLE j AS SELECT c.*"
               + "".join(f", p.s{k}" for k in range(len(specs)))
               + f"{held_cols} FROM desired c JOIN prev_raw p ON c.uid = p.uid{held} "
               "ORDER BY c.pos")
    db.unregister("prev_raw")
    return prev.num_rows, (sent, received)


def _no_conflicts() -> pd.DataFrame:
    return pd.DataFrame({"segment_id": [], "uid": [], "rule": [], "pos": [], "k": []},
                        dtype=object).astype({"pos": np.int64, "k": np.int64})


def _conflicts(db, specs: list[FieldSpec]) -> pd.DataFrame:
    """Values whose JSON type differs from the type Braze already holds for the attribute:
    (segment_id, uid, rule, pos, k), k being the field's number."""
    parts = []
    for i, s in enumerate(specs):
        if s.kind == "value" and s.op == "attribute":
            parts.append(f"SELECT segment_id, uid, {literal(s.rule)} AS rule, pos, {i} AS k "
                         f"FROM j WHERE NOT coalesce({s.refused}, false) AND "
                         f"{_kind(s.column)} <> {_kind(f's{i}')}")
    if not parts:
        return _no_conflicts()
    # by field, then by profile: the same order whichever users were diffed
    return db.execute("SELECT * FROM (" + "\nUNION ALL\n".join(parts) + ") ORDER BY k, pos").df()


# An operation's value and after texts: a constant (None: null), the field's desired text, or
# the desired text inside the trait event's properties.
_DESIRED, _PROPS = ("desired",), ("props",)


@dataclass(frozen=True)
class _Outcome:
    """One change a field's operation can make, and what that operation holds."""
    op: str
    rule: str
    change: str
    name: str | None
    field: str
    value: str | None | tuple
    after: str | None | tuple


def _operation(s: FieldSpec, k: int) -> tuple[int, str, list[_Outcome]]:
    """(section, SQL of the change one field needs for the user in a row of ``j`` — NULL when
    the field needs nothing —, the outcomes that change can name, in code order)."""
    d, prev = s.column, f"s{k}"
    lit = literal

    def outcome(op, change, name, value, after):
        return _Outcome(op, s.rule, change, name, s.field, value, after)

    if s.kind == "membership":
        enter = f"({d} = 'true' AND {prev} IS DISTINCT FROM 'true')"
        # Exit only users Braze holds as members: writing the exit value to every non-member
        # would bill a data point per profile for nothing ("FALSE OR NOT SET" selects them).
        leave = f"({d} = 'false' AND {prev} = 'true')"
        enter_exit = ("add", "remove") if s.op == "cohort" else ("enter", "exit")
        change = (f"CASE WHEN {enter} THEN {lit(enter_exit[0])} WHEN {leave} THEN "
                  f"{lit(enter_exit[1])} END")
        if s.op == "attribute":
            return 0, change, [outcome("attribute", "enter", s.name, "true", "true"),
                               outcome("attribute", "exit", s.name, s.exit_text, s.exit_after)]
        if s.op == "event":
            return 1, change, [outcome("event", "enter", s.enter_event, s.props_true, "true"),
                               outcome("event", "exit", s.exit_event, s.props_false, None)]
        return 2, change, [outcome("cohort", "add", s.name, "true", "true"),
                           outcome("cohort", "remove", s.name, "false", None)]
    ok = f"NOT coalesce({s.refused}, false)"
    if s.op == "attribute":
        fine = f"{ok} AND NOT coalesce({_kind(d)} <> {_kind(prev)}, false)"
        prev_set = f"({prev} IS NOT NULL AND {prev} <> 'null')"
        # A trait that lost its value: remove the attribute (braze-api.md §1.3, set it to null).
        change = (f"CASE WHEN {fine} AND {d} IS NOT NULL AND {d} IS DISTINCT FROM {prev} THEN "
                  f"(CASE WHEN {prev_set} THEN 'change' ELSE 'set' END) "
                  f"WHEN {fine} AND {d} IS NULL AND {prev_set} THEN 'unset' END")
        return 0, change, [outcome("attribute", "change", s.name, _DESIRED, _DESIRED),
                           outcome("attribute", "set", s.name, _DESIRED, _DESIRED),
                           outcome("attribute", "unset", s.name, "null", None)]
    change = f"CASE WHEN {ok} AND {d} IS NOT NULL AND {d} IS DISTINCT FROM {prev} THEN 'change' END"
    return 1, change, [outcome("event", "change", s.name, _PROPS, _DESIRED)]


def _code(change: str, outcomes: list[_Outcome], held: str | None) -> str:
    """SQL of the outcome's number (NULL: no operation, or one held back)."""
    whens = " ".join(f"WHEN {literal(o.change)} THEN {i}" for i, o in enumerate(outcomes))
    code = f"CASE {change} {whens} END"
    return f"(CASE WHEN {held} THEN NULL ELSE {code} END)::TINYINT" if held else f"({code})::TINYINT"


def _changes(arr) -> np.ndarray:
    """``True`` where a value differs from the one before it (the first compares to nothing)."""
    n = len(arr)
    out = np.ones(n, dtype=bool)
    if isinstance(arr, np.ndarray):
        out[1:] = arr[1:] != arr[:-1]
    elif n > 1:
        out[1:] = pc.fill_null(pc.not_equal(arr.slice(1), arr.slice(0, n - 1)),
                               True).to_numpy(zero_copy_only=False)
    return out


class _Cutter:
    """Assigns request numbers to the ordered operations of one section at a time (the
    attributes, the events, or one cohort and direction), chunk by chunk: state carries across
    chunks, so the result does not depend on how the stream is cut."""

    def __init__(self, limit: int, events_per_request_user: int) -> None:
        self.limit = limit
        self.per_user = max(1, events_per_request_user)
        self.base = 0           # request number of the current section's first request
        self.units = 0          # objects (cohort ids) or users (attributes, events) so far
        self.last_uid = None
        self.next_base = 0

    def start(self) -> None:
        self.base, self.units, self.last_uid = self.next_base, 0, None

    def cut(self, uid: pa.Array, order: int) -> tuple[np.ndarray, np.ndarray]:
        """(request numbers, where a new user starts) of one chunk of the section."""
        n = len(uid)
        new_uid = _changes(uid)
        if self.last_uid is not None:
            new_uid[0] = uid[0].as_py() != self.last_uid
        self.last_uid = uid[n - 1].as_py()
        if order == 2:
            local = (self.units + np.arange(n)) // LIMITS.cohort_ids_per_request
            self.units += n
        else:
            users = self.units + np.cumsum(new_uid) - 1
            local = users // (self.limit if order == 0 else self.per_user)
            self.units = int(users[-1]) + 1
        out = (self.base + local).astype(np.int64)
        self.next_base = int(out[-1]) + 1
        return out, new_uid


class _Kinds:
    """Every (field, outcome) pair a plan can hold, numbered: the operations are made from
    per-user outcome codes, so the low-cardinality columns come out as dictionary indices
    (no text per operation) and the tally is a count of numbers."""

    def __init__(self, outcomes: list[list[_Outcome]]) -> None:
        self.base = np.cumsum([0] + [len(o) for o in outcomes])[:-1].astype(np.int64)
        self.all = [o for group in outcomes for o in group]
        self.spec = np.repeat(np.arange(len(outcomes)), [len(o) for o in outcomes])
        self.dictionaries, self.indices = {}, {}
        for col in DISTINCT_COLUMNS:
            values = list(dict.fromkeys(getattr(o, col) for o in self.all if
                                        getattr(o, col) is not None))
            where = {v: i for i, v in enumerate(values)}
            self.dictionaries[col] = pa.array(values, pa.string())
            self.indices[col] = np.array([where.get(getattr(o, col), -1) for o in self.all],
                                         dtype=np.int32)
        consts = [t for o in self.all for t in (o.value, o.after) if not isinstance(t, tuple)]
        consts = list(dict.fromkeys(consts))
        self.consts = pa.array(consts, pa.string())
        self.const_index = {t: i for i, t in enumerate(consts)}

    def column(self, col: str, kind: np.ndarray) -> pa.Array:
        idx = self.indices[col][kind]
        mask = idx < 0
        return pa.DictionaryArray.from_arrays(
            pa.array(idx, pa.int32(), mask=mask if mask.any() else None), self.dictionaries[col],
            safe=False)   # the indices come from the dictionary itself

    def key(self, i: int) -> tuple:
        o = self.all[i]
        return (o.rule, o.op, o.change, o.name)


def _texts(kinds: _Kinds, kind: np.ndarray, user: np.ndarray, chunk: pa.RecordBatch,
           specs: list[FieldSpec]) -> tuple[pa.Array, pa.Array]:
    """The ``value`` and ``after`` texts of each operation: a constant, or taken from its
    user's desired text (``user``: the operation's row in ``chunk``)."""
    m = chunk.num_rows
    pool = [kinds.consts]
    slots: dict[tuple, int] = {}
    present = np.flatnonzero(np.bincount(kind, minlength=len(kinds.all))).tolist()
    out = []
    for what in ("value", "after"):
        where = np.zeros(len(kinds.all), dtype=np.int32)  # per kind: constant index or slot base
        const = np.zeros(len(kinds.all), dtype=bool)
        for i in present:
            text = getattr(kinds.all[i], what)
            if not isinstance(text, tuple):
                const[i], where[i] = True, kinds.const_index[text]
                continue
            spec = specs[int(kinds.spec[i])]
            key = (spec.column, text)
            if key not in slots:
                arr = chunk.column(spec.column)
                if text is _PROPS:
                    arr = pc.binary_join_element_wise(
                        pa.scalar(spec.props_prefix, pa.string()), arr,
                        pa.scalar(spec.props_suffix, pa.string()), pa.scalar("", pa.string()))
                slots[key] = len(kinds.consts) + m * (len(pool) - 1)
                pool.append(arr.cast(pa.string()))
            where[i] = slots[key]
        out.append(np.where(const[kind], where[kind], where[kind] + user.astype(np.int32)))
    values = pa.concat_arrays(pool) if len(pool) > 1 else pool[0]
    return values.take(pa.array(out[0])), values.take(pa.array(out[1]))


class _HashedFile(io.RawIOBase):
    """A file that hashes what is written to it: the Parquet writer's sink, so the plan's
    fingerprint (a digest of the operations file's bytes) costs no second read."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "wb")
        self._sha = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._sha.update(data)
        return self._file.write(data)

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:   # the Parquet writer closes its sink when it closes
        if not self.closed:
            self._file.close()
        super().close()

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


class _BackgroundWriter:
    """Writes tables to a Parquet writer on a thread of its own, so encoding, compressing and
    hashing one piece (all release the GIL) overlap with the engine producing the next."""

    def __init__(self, sink: pq.ParquetWriter) -> None:
        self.sink = sink
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plan-writer")
        self.pending: list = []

    def write_table(self, table: pa.Table, **options) -> None:
        # bounded: at most two pieces wait in memory; a failed write raises here
        while self.pending and (self.pending[0].done() or len(self.pending) >= 2):
            self.pending.pop(0).result()
        self.pending.append(self.writer.submit(self.sink.write_table, table, **options))

    def __enter__(self) -> "_BackgroundWriter":
        return self

    def __exit__(self, *exc) -> None:
        try:
            for future in self.pending:
                future.result()
        finally:
            self.writer.shutdown(wait=True)


class _Tally:
    """Operations per (rule, op, change, name) and users with operations, counted chunk by
    chunk as the plan is written (a user is marked by its profile position)."""

    def __init__(self, profiles: int, kinds: _Kinds) -> None:
        self.kinds = kinds
        self.per_kind = np.zeros(len(kinds.all), dtype=np.int64)
        self.seen = np.zeros(max(int(profiles), 1), dtype=bool)
        self.attribute_users = 0

    def add(self, kind: np.ndarray, pos: np.ndarray, new_uid: np.ndarray, order: int) -> None:
        self.per_kind += np.bincount(kind, minlength=len(self.per_kind))
        self.seen[pos] = True
        if order == 0:   # a user's attribute operations are consecutive: count the changes
            self.attribute_users += int(new_uid.sum())

    def rows(self) -> list:
        counts: dict[tuple, int] = {}
        for i in np.flatnonzero(self.per_kind).tolist():
            key = self.kinds.key(i)
            counts[key] = counts.get(key, 0) + int(self.per_kind[i])

        def key(item):
            return tuple("" if v is None else str(v) for v in item[0])
        return [[*k, v] for k, v in sorted(counts.items(), key=key)]

    def users(self) -> int:
        return int(self.seen.sum())


def _passes(specs: list[FieldSpec], ops: list[tuple[int, str, list[_Outcome]]]
            ) -> list[tuple[int, list[tuple[int, int | None]]]]:
    """The reads of ``j`` that yield the operations in send order: the attributes, the events,
    then each cohort and direction; each a section and its fields (with the one outcome a
    cohort read keeps)."""
    out = []
    for order in (0, 1):
        ks = [(k, None) for k, (o, _, _) in enumerate(ops) if o == order]
        if ks:
            out.append((order, ks))
    cohorts = [k for k, (o, _, _) in enumerate(ops) if o == 2]
    for name in sorted({str(specs[k].name) for k in cohorts}):
        for change, code in (("add", 0), ("remove", 1)):
            out.append((2, [(k, code) for k in cohorts if str(specs[k].name) == name]))
    return out


def _write_ordered(db, limit: int, out: Path, specs: list[FieldSpec],
                   ops: list[tuple[int, str, list[_Outcome]]], held: bool, profiles: int,
                   on_rows=None) -> tuple[int, pd.DataFrame, str, _Tally]:
    """Stream the operations in send order into ``out`` with their request numbers; returns
    the row count, one row per request (batch name, kind, start, stop, objects), the file's
    digest and the tally."""
    kinds = _Kinds([o for _, _, o in ops])
    codes = {k: _code(change, outcomes, f"h{k}" if held else None)
             for k, (_, change, outcomes) in enumerate(ops)}
    events = [k for k, (o, _, _) in enumerate(ops) if o == 1]
    per_user = 1
    if events:
        per_user = db.execute("SELECT coalesce(max(" + " + ".join(
            f"({codes[k]} IS NOT NULL)::BIGINT" for k in events) + "), 1) FROM j").fetchall()[0][0]
    cutter = _Cutter(limit, limit // max(1, int(per_user)))
    tally = _Tally(profiles, kinds)
    schema = pa.schema([(c, pa.dictionary(pa.int32(), pa.string())) if c in DISTINCT_COLUMNS
                        else OPERATIONS_SCHEMA.field(c) for c in OPERATION_COLUMNS])
    rows = 0
    parts = []
    group = ROW_GROUP
    # low-cardinality columns only, written from their dictionaries (no hashing of texts);
    # user ids and values would cost time and save nothing. No Arrow schema in the file: it
    # reads back as plain text columns. Statistics only where a reader can use them.
    # the writer's many small writes gather in a native buffer: the hashing file (Python,
    # needing the GIL the producing thread mostly holds) sees one write per 8 MB
    with _HashedFile(out) as hashed, \
            pa.BufferedOutputStream(pa.PythonFile(hashed, mode="w"), _WRITE_BUFFER) as stream, \
            pq.ParquetWriter(stream, schema, compression="zstd",
                             use_dictionary=list(DISTINCT_COLUMNS), store_schema=False,
                             write_statistics=["batch"]) as sink, \
            _BackgroundWriter(sink) as writer:
        buffered: list[pa.Table] = []
        waiting = 0

        def flush(final: bool) -> None:
            nonlocal buffered, waiting
            if not buffered or (waiting < group and not final):
                return
            table = pa.concat_tables(buffered) if len(buffered) > 1 else buffered[0]
            at = 0
            while table.num_rows - at >= group or (final and at < table.num_rows):
                writer.write_table(table.slice(at, group), row_group_size=group)
                at += group
            buffered = [table.slice(at)] if at < table.num_rows else []
            waiting = table.num_rows - at

        for order, fields in _passes(specs, ops):
            columns = list(dict.fromkeys(specs[k].column for k, _ in fields))
            query = (f"SELECT pos, uid, segment_id, {', '.join(columns)}, "
                     + ", ".join(f"{codes[k]} AS c{k}" for k, _ in fields) + " FROM j")
            width = len(fields)
            started = False
            for chunk in db.sql(query).to_arrow_reader(max(2048, group // width)):
                m = chunk.num_rows
                if not m:
                    continue
                grid = np.empty((m, width), dtype=np.int64)
                for i, (k, keep) in enumerate(fields):
                    code = chunk.column(f"c{k}").fill_null(-1).to_numpy(zero_copy_only=False)
                    if keep is not None:
                        code = np.where(code == keep, code, -1)
                    grid[:, i] = np.where(code >= 0, kinds.base[k] + code, -1)
                flat = grid.ravel()
                at = np.flatnonzero(flat >= 0)
                if not len(at):
                    continue
                kind = flat[at]
                user = at // width
                take = pa.array(user.astype(np.int32))
                uid = chunk.column("uid").take(take).cast(pa.string())
                if not started:
                    cutter.start()
                    started = True
                batch, new_uid = cutter.cut(uid, order)
                pos = chunk.column("pos").to_numpy(zero_copy_only=False)[user]
                tally.add(kind, pos, new_uid, order)
                value, after = _texts(kinds, kind, user, chunk, specs)
                table = pa.table({
                    "uid": uid,
                    "segment_id": chunk.column("segment_id").take(take).cast(pa.string()),
                    **{c: kinds.column(c, kind) for c in ("op", "rule", "change", "name")},
                    "value": value,
                    "field": kinds.column("field", kind),
                    "after": after,
                    "batch": pa.array(batch)}, schema=schema)
                buffered.append(table)
                waiting += table.num_rows
                flush(False)
                n = table.num_rows
                local_new = new_uid.copy()
                local_new[0] = True
                starts = np.flatnonzero(_changes(batch))
                stops = np.append(starts[1:], n)
                parts.append({
                    "index": batch[starts], "start": rows + starts, "stop": rows + stops - 1,
                    "rows": stops - starts, "users": np.add.reduceat(local_new, starts),
                    "kind": kind[starts],
                    "first_uid": uid.take(pa.array(starts)).to_numpy(zero_copy_only=False),
                    "last_uid": uid.take(pa.array(stops - 1)).to_numpy(zero_copy_only=False)})
                rows += n
                if on_rows is not None:
                    on_rows(n)
            flush(True)   # a section ends its row group, as the requests never span sections
    frame = []
    if parts:   # one frame for all chunks: the kinds name each part's op, name and change
        joined = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
        kind = joined.pop("kind")
        frame = [pd.DataFrame({**joined, **{
            c: np.array([getattr(o, c) for o in kinds.all], dtype=object)[kind]
            for c in ("op", "name", "change")}}).set_index("index")]
    return rows, _batch_frame(frame), hashed.hexdigest(), tally


def empty_result(out: Path) -> DiffResult:
    """The result of a diff that found nothing to send, its (empty) operations file written."""
    with _HashedFile(out) as hashed:
        pq.write_table(OPERATIONS_SCHEMA.empty_table(), hashed, compression="zstd")
    return DiffResult(0, 0, 0, pd.DataFrame({k: pd.Series(dtype=object)
                                             for k in ("segment_id", "uid", "rule")}),
                      _batch_frame([]), hashed.hexdigest())


def _batch_frame(parts: list[pd.DataFrame]) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame({"batch": [], "kind": [], "start": [], "stop": [], "objects": []})
    frame = pd.concat(parts)
    # a request cut across two chunks: its second part's first user may continue the first's
    cont = frame["first_uid"].eq(frame.groupby(level=0)["last_uid"].shift())
    frame = frame.assign(users=frame["users"] - (cont & frame["users"].gt(0)).astype(int))
    agg = frame.groupby(level=0).agg(op=("op", "first"), name=("name", "first"),
                                     change=("change", "first"), start=("start", "min"),
                                     stop=("stop", "max"), rows=("rows", "sum"),
                                     users=("users", "sum"))
    agg = agg.assign(stop=agg["stop"] + 1,
                     objects=np.where(agg["op"] == "attribute", agg["users"], agg["rows"]))
    return name_batches(agg.reset_index(drop=True))


def name_batches(frame: pd.DataFrame) -> pd.DataFrame:
    """Stable request names: attributes-00001, events-00001, cohort-<id>-<change>-00001."""
    kinds = frame["op"].map({"attribute": "attributes", "event": "events", "cohort": "cohort"})
    names = []
    counters: dict[tuple, int] = {}
    for kind, name, change in zip(kinds, frame["name"], frame["change"]):
        if kind == "cohort":
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))
            key = ("cohort", safe, change)
            counters[key] = counters.get(key, 0) + 1
            names.append(f"cohort-{safe}-{change}-{counters[key]:05d}")
        else:
            counters[kind] = counters.get(kind, 0) + 1
            names.append(f"{kind}-{counters[kind]:05d}")
    return pd.DataFrame({"batch": names, "kind": kinds.to_numpy(), "start": frame["start"],
                         "stop": frame["stop"], "objects": frame["objects"]})
