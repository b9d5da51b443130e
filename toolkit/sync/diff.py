"""The SQL diff: desired state against the ledger's acknowledged state, written as a plan's operations.

Runs on the engine (DuckDB). Users whose checksum (a hash of their normalised desired fields)
equals the one the ledger holds cost one comparison and are skipped; only the others are diffed
field by field. The operations come out as one Parquet file in send order — attributes, then
events, then cohort changes; by profile within each, so one user's objects are adjacent — with
the request (``batch``) each operation belongs to already assigned:

* attributes: at most ``limit`` users per request (one object per user);
* events: at most ``limit`` events per request, never splitting one user's events;
* cohort changes: at most 1,000 users per request, one cohort and direction each.
"""
from __future__ import annotations

import hashlib
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

# The operations table, in canonical column order (the fingerprint hashes these columns).
OPERATION_COLUMNS = ("uid", "segment_id", "op", "rule", "change", "name", "value", "field",
                     "after", "batch")
OPERATIONS_SCHEMA = pa.schema([(c, pa.int64() if c == "batch" else pa.string())
                               for c in OPERATION_COLUMNS])
ROW_GROUP = 122_880


@dataclass
class DiffResult:
    rows: int
    changed_users: int
    held: int                      # operations held back: their event batch's fate is unknown
    conflicts: pd.DataFrame        # (segment_id, uid, rule) of values whose type Braze locked
    batches: pd.DataFrame          # batch, kind, start, stop, objects, name, change
    digests: dict                  # column -> ColumnDigest bytes of the file as written
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
    if remote:
        # the comparison runs in the ledger's server: keys and checksums go in, the changed
        # users come back with their previous values (s0, s1…), and j is built from those
        prev, sent, received = snapshot.changed(
            db.sql("SELECT uid, checksum FROM desired").to_arrow_reader(ROW_GROUP),
            [sp.field for sp in specs])
        db.register("prev_raw", prev)
        db.execute("CREATE TEMP TABLE changed AS SELECT d.*"
                   + "".join(f", p.s{k}" for k in range(len(specs)))
                   + " FROM desired d JOIN prev_raw p ON d.uid = p.uid")
        state_cols, joins, transfer = "", "", (sent, received)
    elif snapshot is not None:
        src = f"read_parquet({literal(str(snapshot.path))})"
        if snapshot.checksum_spec == digest:
            ledger_ck = "checksum"
        else:  # checksums were made for another set of fields: compute them for this one
            ledger_ck = checksum_sql(kinds, lambda f: quote(f) if f in have else "NULL", digest)
        db.execute(f"CREATE TEMP VIEW ledger_ck AS SELECT uid, {ledger_ck} AS checksum FROM {src}")
        db.execute("CREATE TEMP TABLE changed AS SELECT d.* FROM desired d "
                   "LEFT JOIN ledger_ck l ON d.uid = l.uid "
                   "WHERE l.checksum IS DISTINCT FROM d.checksum")
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
    db.unregister("desired_raw")
    if remote:
        db.unregister("prev_raw")

    conflicts = _conflicts(db, specs)
    sections = {0: [], 1: [], 2: []}
    for k, sp in enumerate(specs):
        order, struct = _operation(sp, k, bool(held_cols))
        sections[order].append(struct)
    held_count = 0
    if held_cols:
        everything = [x for part in sections.values() for x in part]
        held_count = db.execute(
            "SELECT count(*) FROM (SELECT unnest(list_filter([" + ", ".join(everything)
            + "], lambda x: x.change IS NOT NULL AND x.held)) FROM j)").fetchall()[0][0]
    tally = _Tally(projection.profiles)
    rows, batches, digests = _write_ordered(db, limit, out, sections, on_rows, tally)
    return DiffResult(int(rows), int(changed_users), int(held_count), conflicts, batches,
                      digests, tally.rows(), tally.users(), tally.attribute_users,
                      tuple(transfer))


def _conflicts(db, specs: list[FieldSpec]) -> pd.DataFrame:
    """Values whose JSON type differs from the type Braze already holds for the attribute."""
    parts = []
    for i, s in enumerate(specs):
        if s.kind == "value" and s.op == "attribute":
            parts.append(f"SELECT segment_id, uid, {literal(s.rule)} AS rule FROM j WHERE "
                         f"NOT coalesce({s.refused}, false) AND {_kind(s.column)} <> {_kind(f's{i}')}")
    if not parts:
        return pd.DataFrame({"segment_id": [], "uid": [], "rule": []}, dtype=object)
    return db.execute("\nUNION ALL\n".join(parts)).df()


def _struct(spec: FieldSpec, k: int, held: bool, *, op: str, change: str, name: str,
            value: str, after: str) -> str:
    return (f"{{'op': {literal(op)}, 'rule': {literal(spec.rule)}, 'change': {change}, "
            f"'name': {name}, 'value': {value}, 'field': {literal(spec.field)}, "
            f"'after': {after}, 'held': {f'h{k}' if held else 'false'}}}")


def _operation(s: FieldSpec, k: int, held: bool) -> tuple[int, str]:
    """(section, SQL struct) of the operation one field needs for the user in a row of ``j``;
    its ``change`` is NULL when the field needs nothing."""
    d, prev = s.column, f"s{k}"
    lit = literal
    if s.kind == "membership":
        enter = f"({d} = 'true' AND {prev} IS DISTINCT FROM 'true')"
        # Exit only users Braze holds as members: writing the exit value to every non-member
        # would bill a data point per profile for nothing ("FALSE OR NOT SET" selects them).
        leave = f"({d} = 'false' AND {prev} = 'true')"
        enter_exit = ("add", "remove") if s.op == "cohort" else ("enter", "exit")
        change = (f"CASE WHEN {enter} THEN {lit(enter_exit[0])} WHEN {leave} THEN "
                  f"{lit(enter_exit[1])} END")
        if s.op == "attribute":
            return 0, _struct(s, k, held, op="attribute", change=change, name=lit(s.name),
                              value=f"CASE WHEN {enter} THEN 'true' ELSE {lit(s.exit_text)} END",
                              after=f"CASE WHEN {enter} THEN 'true' ELSE {lit(s.exit_after)} END")
        if s.op == "event":
            return 1, _struct(s, k, held, op="event", change=change,
                              name=f"CASE WHEN {enter} THEN {lit(s.enter_event)} ELSE "
                                   f"{lit(s.exit_event)} END",
                              value=f"CASE WHEN {enter} THEN {lit(s.props_true)} ELSE "
                                    f"{lit(s.props_false)} END",
                              after=f"CASE WHEN {enter} THEN 'true' END")
        return 2, _struct(s, k, held, op="cohort", change=change, name=lit(s.name),
                          value=f"CASE WHEN {enter} THEN 'true' ELSE 'false' END",
                          after=f"CASE WHEN {enter} THEN 'true' END")
    ok = f"NOT coalesce({s.refused}, false)"
    if s.op == "attribute":
        fine = f"{ok} AND NOT coalesce({_kind(d)} <> {_kind(prev)}, false)"
        prev_set = f"({prev} IS NOT NULL AND {prev} <> 'null')"
        # A trait that lost its value: remove the attribute (braze-api.md §1.3, set it to null).
        change = (f"CASE WHEN {fine} AND {d} IS NOT NULL AND {d} IS DISTINCT FROM {prev} THEN "
                  f"(CASE WHEN {prev_set} THEN 'change' ELSE 'set' END) "
                  f"WHEN {fine} AND {d} IS NULL AND {prev_set} THEN 'unset' END")
        return 0, _struct(s, k, held, op="attribute", change=change, name=lit(s.name),
                          value=f"coalesce({d}, 'null')", after=d)
    change = f"CASE WHEN {ok} AND {d} IS NOT NULL AND {d} IS DISTINCT FROM {prev} THEN 'change' END"
    return 1, _struct(s, k, held, op="event", change=change, name=lit(s.name),
                      value=f"{lit(s.props_prefix)} || {d} || {lit(s.props_suffix)}", after=d)


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
    """Assigns request numbers to the ordered operations, chunk by chunk (state carries across
    chunks, so the result does not depend on how the stream is cut)."""

    def __init__(self, limit: int, events_per_request_user: int) -> None:
        self.limit = limit
        self.per_user = max(1, events_per_request_user)
        self.section: tuple | None = None
        self.base = -1          # request number of the current section's first request
        self.units = 0          # objects (attributes, cohort ids) or users (events) so far
        self.last_uid = None
        self.next_base = 0

    @staticmethod
    def _key(chunk: pa.RecordBatch, i: int, order: np.ndarray) -> tuple:
        if order[i] != 2:
            return (int(order[i]), None, None)
        return (2, chunk.column("name")[i].as_py(), chunk.column("change")[i].as_py())

    def cut(self, chunk: pa.RecordBatch) -> np.ndarray:
        n = chunk.num_rows
        order = chunk.column("op_order").to_numpy()
        uid = chunk.column("uid")
        new_uid = _changes(uid)
        if self.last_uid is not None:
            new_uid[0] = uid[0].as_py() != self.last_uid
        # a section is the attributes, the events, or one cohort and direction
        boundary = _changes(order)
        cohort = order == 2
        if cohort.any():
            boundary |= cohort & (_changes(chunk.column("name")) | _changes(chunk.column("change")))
        boundary[0] = self._key(chunk, 0, order) != self.section
        cuts = np.append(np.flatnonzero(boundary), n)
        if cuts[0] != 0:  # the chunk goes on with the section the last one ended in
            cuts = np.insert(cuts, 0, 0)
        out = np.empty(n, dtype=np.int64)
        for a, z in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
            if boundary[a]:
                self.section = self._key(chunk, a, order)
                self.base, self.units = self.next_base, 0
                new_uid[a] = True
            if order[a] == 2:
                local = (self.units + np.arange(z - a)) // LIMITS.cohort_ids_per_request
                self.units += z - a
            else:
                users = self.units + np.cumsum(new_uid[a:z]) - 1
                local = users // (self.limit if order[a] == 0 else self.per_user)
                self.units = int(users[-1]) + 1
            out[a:z] = self.base + local
            self.next_base = int(out[z - 1]) + 1
        self.last_uid = uid[n - 1].as_py()
        return out


def _section_query(structs: list[str], order: int) -> str:
    cols = ", ".join(f"o.{c}" for c in OPERATION_COLUMNS if c not in ("uid", "segment_id", "batch"))
    query = (f"SELECT uid, segment_id, {cols}, {order} AS op_order, pos FROM (SELECT uid, "
             f"segment_id, pos, unnest(list_filter([{', '.join(structs)}], "
             "lambda x: x.change IS NOT NULL AND NOT x.held)) AS o FROM j)")
    # cohort changes go one cohort and direction at a time
    return f"SELECT * FROM ({query}) ORDER BY name, change, pos" if order == 2 else query


class ColumnDigest:
    """sha256 of one column of a plan's operations: its value lengths (-1 for null) and its
    bytes, hashed apart so the digest does not depend on how the column is cut into chunks."""

    def __init__(self) -> None:
        self.lengths = hashlib.sha256()
        self.data = hashlib.sha256()

    def update(self, arr) -> None:
        if isinstance(arr, pa.ChunkedArray):
            for chunk in arr.chunks:
                self.update(chunk)
            return
        if pa.types.is_integer(arr.type):
            self.data.update(np.asarray(arr.fill_null(-1).to_numpy(zero_copy_only=False),
                                        dtype="<i8").tobytes())
            return
        arr = arr.cast(pa.large_binary())
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[
            arr.offset:arr.offset + len(arr) + 1]
        lengths = np.diff(offsets)
        if arr.null_count:
            lengths = np.where(arr.is_null().to_numpy(zero_copy_only=False), -1, lengths)
        self.lengths.update(lengths.astype("<i8").tobytes())
        data = arr.buffers()[2]
        if data is not None and offsets[-1] > offsets[0]:
            self.data.update(memoryview(data)[int(offsets[0]):int(offsets[-1])])

    def digest(self) -> bytes:
        return hashlib.sha256(self.lengths.digest() + self.data.digest()).digest()


class _BackgroundWriter:
    """Writes tables to a Parquet writer on another thread, so compressing one chunk overlaps
    with the engine producing the next (both release the GIL)."""

    def __init__(self, sink: pq.ParquetWriter) -> None:
        self.sink = sink
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plan-writer")
        self.pending: list = []
        self.digests = {c: ColumnDigest() for c in OPERATION_COLUMNS}

    def _write(self, table: pa.Table, options: dict) -> None:
        self.sink.write_table(table, **options)
        for c, digest in self.digests.items():  # in write order: one thread
            digest.update(table.column(c))

    def write_table(self, table: pa.Table, **options) -> None:
        # bounded: at most two chunks wait in memory; a failed write raises here
        while self.pending and (self.pending[0].done() or len(self.pending) >= 2):
            self.pending.pop(0).result()
        self.pending.append(self.pool.submit(self._write, table, options))

    def __enter__(self) -> "_BackgroundWriter":
        return self

    def __exit__(self, *exc) -> None:
        try:
            for future in self.pending:
                future.result()
        finally:
            self.pool.shutdown(wait=True)


class _Tally:
    """Operations per (rule, op, change, name) and users with operations, counted chunk by
    chunk as the plan is written (a user is marked by its profile position)."""

    def __init__(self, profiles: int) -> None:
        self.counts: dict[tuple, int] = {}
        self.seen = np.zeros(max(int(profiles), 1), dtype=bool)
        self.attribute_users = 0
        self._last_attribute_uid = None

    def add(self, chunk: pa.RecordBatch, order: int) -> None:
        # (field, change) decides rule, op and name: count its pairs with two dictionary codes
        field_codes = pc.dictionary_encode(chunk.column("field"))
        change_codes = pc.dictionary_encode(chunk.column("change"))
        width = max(len(change_codes.dictionary), 1)
        pair = (field_codes.indices.to_numpy(zero_copy_only=False).astype(np.int64) * width
                + change_codes.indices.to_numpy(zero_copy_only=False))
        counts = np.bincount(pair)
        for code in np.flatnonzero(counts):
            i = int(np.argmax(pair == code))
            key = tuple(chunk.column(c)[i].as_py() for c in ("rule", "op", "change", "name"))
            self.counts[key] = self.counts.get(key, 0) + int(counts[code])
        self.seen[chunk.column("pos").to_numpy(zero_copy_only=False)] = True
        if order == 0:   # a user's attribute operations are consecutive: count the changes
            uid = chunk.column("uid")
            new = _changes(uid)
            if self._last_attribute_uid is not None:
                new[0] = uid[0].as_py() != self._last_attribute_uid
            self.attribute_users += int(new.sum())
            self._last_attribute_uid = uid[len(uid) - 1].as_py()

    def rows(self) -> list:
        def key(item):
            return tuple("" if v is None else str(v) for v in item[0])
        return [[*k, v] for k, v in sorted(self.counts.items(), key=key)]

    def users(self) -> int:
        return int(self.seen.sum())


def _write_ordered(db, limit: int, out: Path, sections: dict[int, list[str]], on_rows=None,
                   tally: "_Tally | None" = None) -> tuple[int, pd.DataFrame, dict[str, bytes]]:
    """Stream the operations in send order into ``out`` with their request numbers; returns
    the row count and one row per request (batch name, kind, start, stop, objects)."""
    per_user = 1
    if sections[1]:
        per_user = db.execute("SELECT coalesce(max(len(list_filter([" + ", ".join(sections[1])
                              + "], lambda x: x.change IS NOT NULL AND NOT x.held))), 1) FROM j"
                              ).fetchall()[0][0]
    cutter = _Cutter(limit, limit // max(1, int(per_user)))
    schema = OPERATIONS_SCHEMA
    rows = 0
    parts = []
    # low-cardinality columns only: dictionaries of user ids and values cost time, save nothing
    with pq.ParquetWriter(out, schema, compression="zstd",
                          use_dictionary=["op", "rule", "change", "name", "field"]) as sink, \
            _BackgroundWriter(sink) as writer:
        for order in (0, 1, 2):
            if not sections[order]:
                continue
            reader = db.sql(_section_query(sections[order], order)).to_arrow_reader(ROW_GROUP)
            for chunk in reader:
                if not chunk.num_rows:
                    continue
                batch = cutter.cut(chunk)
                if tally is not None:
                    tally.add(chunk, order)
                new_uid = _changes(chunk.column("uid"))
                writer.write_table(pa.table(
                    {c: (pa.array(batch) if c == "batch" else chunk.column(c).cast(pa.string()))
                     for c in OPERATION_COLUMNS}, schema=schema), row_group_size=ROW_GROUP)
                starts = np.flatnonzero(_changes(batch))
                stops = np.append(starts[1:], chunk.num_rows)
                take = pa.array(starts)
                parts.append(pd.DataFrame({
                    "index": batch[starts], "start": rows + starts, "stop": rows + stops - 1,
                    "rows": stops - starts, "users": np.add.reduceat(new_uid, starts),
                    **{c: chunk.column(c).take(take).to_numpy(zero_copy_only=False)
                       for c in ("op", "name", "change")},
                    "first_uid": chunk.column("uid").take(take).to_numpy(zero_copy_only=False),
                    "last_uid": chunk.column("uid").take(pa.array(stops - 1)).to_numpy(
                        zero_copy_only=False)}).set_index("index"))
                rows += chunk.num_rows
                if on_rows is not None:
                    on_rows(chunk.num_rows)
    return rows, _batch_frame(parts), {c: d.digest() for c, d in writer.digests.items()}


def empty_result(out: Path) -> DiffResult:
    """The result of a diff that found nothing to send, its (empty) operations file written."""
    pq.write_table(OPERATIONS_SCHEMA.empty_table(), out, compression="zstd")
    digests = {c: ColumnDigest() for c in OPERATION_COLUMNS}
    return DiffResult(0, 0, 0, pd.DataFrame({k: pd.Series(dtype=object)
                                             for k in ("segment_id", "uid", "rule")}),
                      _batch_frame([]), {c: d.digest() for c, d in digests.items()})


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
