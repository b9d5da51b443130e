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

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from toolkit.engine import literal, quote
from toolkit.sync.projection import FieldSpec, Projection

__all__ = ["DiffResult", "diff", "OPERATION_COLUMNS", "MAX_COHORT_IDS", "checksum_sql"]

# The operations table, in canonical column order (the fingerprint hashes these columns).
OPERATION_COLUMNS = ("uid", "segment_id", "op", "rule", "change", "name", "value", "field",
                     "after", "batch")
MAX_COHORT_IDS = 1000             # braze-api.md §4.1: user ids per cohort request
ROW_GROUP = 122_880


@dataclass
class DiffResult:
    rows: int
    changed_users: int
    held: int                      # operations held back: their event batch's fate is unknown
    conflicts: pd.DataFrame        # (segment_id, uid, rule) of values whose type Braze locked
    batches: pd.DataFrame          # batch, kind, start, stop, objects, name, change


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
         out: Path) -> DiffResult:
    """Diff ``projection`` against the ledger ``snapshot`` and write the operations to ``out``."""
    specs = projection.fields
    digest = projection.spec_digest()
    db.register("desired_raw", projection.table)
    kinds = [(s.field, s.kind) for s in specs]
    by_field = {s.field: s for s in specs}
    desired_ck = checksum_sql(kinds, lambda f: _desired_checksum(by_field[f]), digest)
    db.execute(f"CREATE TEMP TABLE desired AS SELECT *, {desired_ck} AS checksum FROM desired_raw")
    db.unregister("desired_raw")

    have = snapshot.columns if snapshot is not None else set()
    if snapshot is not None:
        src = f"read_parquet({literal(str(snapshot.path))})"
        if snapshot.checksum_spec == digest:
            ledger_ck = "checksum"
        else:  # checksums were made for another set of fields: compute them for this one
            ledger_ck = checksum_sql(kinds, lambda f: quote(f) if f in have else "NULL", digest)
        db.execute(f"CREATE TEMP VIEW ledger_ck AS SELECT uid, {ledger_ck} AS checksum FROM {src}")
        db.execute("CREATE TEMP TABLE changed AS SELECT d.* FROM desired d "
                   "LEFT JOIN ledger_ck l ON d.uid = l.uid "
                   "WHERE l.checksum IS DISTINCT FROM d.checksum")
        state_cols = ", ".join(f"s.{quote(s.field)} AS s{i}" if s.field in have else
                               f"NULL::VARCHAR AS s{i}" for i, s in enumerate(specs))
        db.execute(f"CREATE TEMP TABLE j AS SELECT c.*{', ' + state_cols if specs else ''} "
                   f"FROM changed c LEFT JOIN {src} s ON c.uid = s.uid")
    else:
        db.execute("CREATE TEMP TABLE changed AS SELECT * FROM desired")
        state_cols = ", ".join(f"NULL::VARCHAR AS s{i}" for i in range(len(specs)))
        db.execute(f"CREATE TEMP TABLE j AS SELECT *{', ' + state_cols if specs else ''} "
                   "FROM changed")
    changed_users = db.execute("SELECT count(*) FROM changed").fetchone()[0]
    db.execute("DROP TABLE changed")

    conflicts = _conflicts(db, specs)
    selects = [sql for i, s in enumerate(specs) for sql in _operations(s, i)]
    if not selects:
        selects = ["SELECT NULL::VARCHAR uid, NULL::VARCHAR segment_id, NULL::VARCHAR op, "
                   "NULL::VARCHAR rule, NULL::VARCHAR change, NULL::VARCHAR name, "
                   "NULL::VARCHAR value, NULL::VARCHAR field, NULL::VARCHAR after, "
                   "0::BIGINT pos, 0 op_order, 0 seq WHERE false"]
    db.execute("CREATE TEMP TABLE ops0 AS " + "\nUNION ALL\n".join(selects))
    db.execute("DROP TABLE j")
    held_count = 0
    if held is not None and held.num_rows:
        db.register("held_raw", held)
        held_count = db.execute("SELECT count(*) FROM ops0 o JOIN held_raw h "
                                "ON o.field = h.field AND o.uid = h.uid").fetchone()[0]
        db.execute("DELETE FROM ops0 USING held_raw h WHERE ops0.field = h.field "
                   "AND ops0.uid = h.uid")
        db.unregister("held_raw")
    _assign_batches(db, limit)
    db.execute(f"COPY (SELECT {', '.join(OPERATION_COLUMNS)} FROM ops ORDER BY rn) TO "
               f"{literal(str(out))} (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP})")
    rows = db.execute("SELECT count(*) FROM ops").fetchone()[0]
    batches = db.execute(
        "SELECT batch, any_value(op) AS op, min(rn) - 1 AS start, max(rn) AS stop, "
        "CASE WHEN any_value(op) = 'attribute' THEN count(DISTINCT uid) ELSE count(*) END "
        "AS objects, any_value(name) AS name, any_value(change) AS change "
        "FROM ops GROUP BY batch ORDER BY batch").df()
    return DiffResult(int(rows), int(changed_users), int(held_count), conflicts,
                      _name_batches(batches))


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


def _select(spec: FieldSpec, *, order: int, op: str, change: str, name: str, value: str,
            after: str, where: str) -> str:
    return (f"SELECT uid, segment_id, {literal(op)} AS op, {literal(spec.rule)} AS rule, "
            f"{change} AS change, {name} AS name, {value} AS value, {literal(spec.field)} AS field,"
            f" {after} AS after, pos, {order} AS op_order, {spec.seq} AS seq FROM j WHERE {where}")


def _operations(s: FieldSpec, i: int) -> list[str]:
    """The SELECTs producing one field's operations from the joined table ``j``."""
    d, prev = s.column, f"s{i}"
    lit = literal
    if s.kind == "membership":
        enter = f"{d} = 'true' AND {prev} IS DISTINCT FROM 'true'"
        leave = f"{d} = 'false' AND {prev} = 'true'"
        if s.op == "attribute":
            # Exit only users Braze holds as members: writing the exit value to every non-member
            # would bill a data point per profile for nothing ("FALSE OR NOT SET" selects them).
            return [_select(s, order=0, op="attribute", change="'enter'", name=lit(s.name),
                            value="'true'", after="'true'", where=enter),
                    _select(s, order=0, op="attribute", change="'exit'", name=lit(s.name),
                            value=lit(s.exit_text), after=lit(s.exit_after), where=leave)]
        if s.op == "event":
            return [_select(s, order=1, op="event", change="'enter'", name=lit(s.enter_event),
                            value=lit(s.props_true), after="'true'", where=enter),
                    _select(s, order=1, op="event", change="'exit'", name=lit(s.exit_event),
                            value=lit(s.props_false), after="NULL", where=leave)]
        return [_select(s, order=2, op="cohort", change="'add'", name=lit(s.name),
                        value="'true'", after="'true'", where=enter),
                _select(s, order=2, op="cohort", change="'remove'", name=lit(s.name),
                        value="'false'", after="NULL", where=leave)]
    ok = f"NOT coalesce({s.refused}, false)"
    if s.op == "attribute":
        fine = f"{ok} AND NOT coalesce({_kind(d)} <> {_kind(prev)}, false)"
        prev_set = f"({prev} IS NOT NULL AND {prev} <> 'null')"
        # A trait that lost its value: remove the attribute (braze-api.md §1.3, set it to null).
        return [_select(s, order=0, op="attribute",
                        change=f"CASE WHEN {prev_set} THEN 'change' ELSE 'set' END",
                        name=lit(s.name), value=d, after=d,
                        where=f"{fine} AND {d} IS NOT NULL AND {d} IS DISTINCT FROM {prev}"),
                _select(s, order=0, op="attribute", change="'unset'", name=lit(s.name),
                        value="'null'", after="NULL",
                        where=f"{fine} AND {d} IS NULL AND {prev_set}")]
    return [_select(s, order=1, op="event", change="'change'", name=lit(s.name),
                    value=f"{lit(s.props_prefix)} || {d} || {lit(s.props_suffix)}", after=d,
                    where=f"{ok} AND {d} IS NOT NULL AND {d} IS DISTINCT FROM {prev}")]


def _assign_batches(db, limit: int) -> None:
    """Order the operations and give each its request number (see the module docstring)."""
    db.execute("""
        CREATE TEMP TABLE ordered AS
        SELECT *, row_number() OVER (ORDER BY op_order,
                 CASE WHEN op_order = 2 THEN name END, CASE WHEN op_order = 2 THEN change END,
                 pos, seq) AS rn
        FROM ops0""")
    db.execute("DROP TABLE ops0")
    # events per user decide how many users share an events request
    most = db.execute("SELECT coalesce(max(n), 1) FROM (SELECT count(*) n FROM ordered "
                      "WHERE op_order = 1 GROUP BY uid)").fetchone()[0]
    per_request = max(1, limit // max(1, int(most)))
    db.execute(f"""
        CREATE TEMP TABLE ops AS
        WITH ranked AS (
            SELECT *, dense_rank() OVER (PARTITION BY op_order ORDER BY pos) - 1 AS user_rank,
                   row_number() OVER (PARTITION BY op_order, name, change ORDER BY rn) - 1
                       AS in_group,
                   dense_rank() OVER (PARTITION BY op_order ORDER BY name, change) AS grp
            FROM ordered),
        local AS (
            SELECT *, CASE op_order WHEN 0 THEN user_rank // {int(limit)}
                                    WHEN 1 THEN user_rank // {per_request}
                                    ELSE grp * 1000000000 + in_group // {MAX_COHORT_IDS} END
                      AS local_batch
            FROM ranked)
        SELECT *, (dense_rank() OVER (ORDER BY op_order, local_batch) - 1)::BIGINT AS batch
        FROM local""")
    db.execute("DROP TABLE ordered")


def _name_batches(frame: pd.DataFrame) -> pd.DataFrame:
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
