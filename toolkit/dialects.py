"""SQL written once and generated per database dialect (SQLGlot): Profiles Sync reads, the ledger's state table and the diff's comparison.

Every statement the toolkit runs in a database other than its own DuckDB is built here, in one
formulation (DuckDB's SQL, the engine every statement is also executed on), and rendered for the
engine that runs it by SQLGlot's transpiler, so no statement has hand-written variants per
database. `ENGINES` says, as data, which engines are *executed* — DuckDB and PostgreSQL, both run
in the test suite against real engines — and which are *generated only*: Snowflake, BigQuery,
Redshift and Databricks, compiled in a test and compared with reviewed snapshots
(``tests/sql/snapshots``), never run here.

What stays outside: how rows cross each driver's wire (PostgreSQL's ``COPY`` text, DuckDB's
Arrow batches) is the driver's business (`toolkit.engage.warehouse`), applied around the
generated statement.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

__all__ = ["ENGINES", "Engine", "render", "latest_traits_sql", "trait_names_sql",
           "identifier_mapping_sql", "snapshot_time_sql", "state_table_sql", "changed_users_sql"]

# The formulation every statement is written in (and parsed from).
SOURCE = "duckdb"


@dataclass(frozen=True)
class Engine:
    """A database the toolkit generates SQL for: its SQLGlot dialect, and whether the test
    suite executes the generated SQL on a real instance or only compares it with snapshots."""

    name: str
    sqlglot: str
    executed: bool


ENGINES: dict[str, Engine] = {e.name: e for e in (
    Engine("duckdb", "duckdb", executed=True),
    Engine("postgresql", "postgres", executed=True),
    Engine("snowflake", "snowflake", executed=False),
    Engine("bigquery", "bigquery", executed=False),
    Engine("redshift", "redshift", executed=False),
    Engine("databricks", "databricks", executed=False),
)}


class UnknownEngine(ValueError):
    """An engine name that is not in `ENGINES`."""


@lru_cache(maxsize=256)
def render(sql: str, engine: str, *, pretty: bool = False) -> str:
    """``sql`` (written in DuckDB's SQL) as ``engine`` runs it."""
    try:
        target = ENGINES[engine]
    except KeyError:
        raise UnknownEngine(f"no SQL dialect {engine!r}; known: {', '.join(ENGINES)}") from None
    import sqlglot  # lazy: the transpiler only when a statement leaves DuckDB
    if target.sqlglot == SOURCE and not pretty:
        return sql
    return sqlglot.transpile(sql, read=SOURCE, write=target.sqlglot, pretty=pretty)[0]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _table(schema: str | None, name: str) -> str:
    return f"{_q(schema)}.{_q(name)}" if schema else _q(name)


# -- Profiles Sync, as Segment writes it ------------------------------------------------------

def _merged_to(graph: str, segment_id: str, canonical: str) -> str:
    """Each merged-away profile and the profile it was merged into (``id_graph``)."""
    return (f"SELECT {_q(segment_id)} AS segment_id, max({_q(canonical)}) AS canonical FROM "
            f"{graph} WHERE {_q(segment_id)} <> {_q(canonical)} GROUP BY {_q(segment_id)}")


def latest_traits_sql(schema: str, *, table: str, segment_id: str, name: str, value: str,
                      traits: list[str], order: list[str], graph: dict | None = None) -> str:
    """One row per profile: the latest value of each trait in ``traits`` (a column each, as
    text), newest by the ``order`` columns (descending, missing last), and ``merged_to`` from
    the id graph (``graph``: table, segment_id and canonical column names) when there is one."""
    ordering = ", ".join(f"{_q(c)} DESC NULLS LAST" for c in order) or "1"
    latest = (f"SELECT {_q(segment_id)} AS sid, {_q(name)} AS name, CAST({_q(value)} AS VARCHAR) "
              f"AS value, row_number() OVER (PARTITION BY {_q(segment_id)}, {_q(name)} ORDER BY "
              f"{ordering}) AS rn FROM {_table(schema, table)} WHERE {_q(value)} IS NOT NULL")
    pivot = "".join(f", max(CASE WHEN t.name = {_lit(n)} THEN t.value END) AS {_q(n)}"
                    for n in traits)
    join, merged = "", "CAST(NULL AS VARCHAR)"
    if graph:
        join = (f" LEFT JOIN ({_merged_to(_table(schema, graph['table']), graph['segment_id'], graph['canonical'])}) "
                "AS g ON g.segment_id = t.sid")
        merged = "max(g.canonical)"
    return (f"SELECT t.sid AS canonical_segment_id{pivot}, {merged} AS merged_to FROM ({latest}) "
            f"AS t{join} WHERE t.rn = 1 GROUP BY t.sid ORDER BY t.sid")


def trait_names_sql(schema: str, *, table: str, name: str) -> str:
    """The distinct trait names of ``user_traits``, sorted."""
    return (f"SELECT DISTINCT {_q(name)} FROM {_table(schema, table)} WHERE {_q(name)} IS NOT "
            "NULL ORDER BY 1")


def identifier_mapping_sql(schema: str, *, table: str, segment_id: str, type_: str, value: str,
                           timestamp: str | None, order: list[str],
                           graph: dict | None = None) -> str:
    """One row per identifier: its owner (the surviving profile when the id graph merged it
    away), type, value and time, oldest first by the ``order`` columns."""
    owner = f"i.{_q(segment_id)}"
    join = ""
    if graph:   # an identifier of a merged profile belongs to its survivor
        join = (f" LEFT JOIN ({_merged_to(_table(schema, graph['table']), graph['segment_id'], graph['canonical'])}) "
                f"AS g ON g.segment_id = i.{_q(segment_id)}")
        owner = f"coalesce(g.canonical, i.{_q(segment_id)})"
    ts = f"i.{_q(timestamp)}" if timestamp else "CAST(NULL AS VARCHAR)"
    # the order columns come out as o0, o1…: a driver that wraps the statement to convert a
    # column for its wire orders the outer query by them
    keys = "".join(f", i.{_q(c)} AS o{k}" for k, c in enumerate(order))
    ordering = (" ORDER BY " + ", ".join(f"i.{_q(c)}" for c in order)) if order else ""
    return (f"SELECT CAST({owner} AS VARCHAR) AS canonical_segment_id, CAST(i.{_q(type_)} AS "
            f"VARCHAR) AS external_id_type, CAST(i.{_q(value)} AS VARCHAR) AS external_id_value, "
            f"{ts} AS {_q('timestamp')}{keys} FROM {_table(schema, table)} AS i{join}{ordering}")


def snapshot_time_sql(schema: str, *, table: str, column: str) -> str:
    """The newest time in a table: when the export was taken."""
    return f"SELECT max({_q(column)}) FROM {_table(schema, table)}"


# -- the ledger's state and the diff ---------------------------------------------------------

def state_table_sql(schema: str | None, table: str, columns: int) -> str:
    """The table a ledger keeps its acknowledged state in: a user's key, the checksum of their
    fields (a signed 64-bit integer), and one text column per field (``c0``, ``c1``…; which
    field each holds is recorded beside it). No key or index is declared: the table is written
    once, from a snapshot whose keys are unique, and only ever read whole by the comparison (a
    hash join), which an index would not speed up."""
    cols = "".join(f", c{i} VARCHAR" for i in range(columns))
    return f"CREATE TABLE {_table(schema, table)} (uid VARCHAR NOT NULL, checksum BIGINT{cols})"


def changed_users_sql(desired: str, state: str | None, columns: list[str | None]) -> str:
    """The users whose desired checksum differs from the one the state holds (or who are not in
    it), with the state's value of each field: ``s0``, ``s1``… in the order of ``columns``, each
    the state's column holding that field or None when the state has none. ``desired`` and
    ``state`` are (qualified, quoted) table names; ``desired`` has ``uid`` and ``checksum``."""
    if state is None:
        values = "".join(f", CAST(NULL AS VARCHAR) AS s{k}" for k in range(len(columns)))
        return f"SELECT d.uid{values} FROM {desired} AS d"
    values = "".join(f", s.{_q(c)} AS s{k}" if c is not None else
                     f", CAST(NULL AS VARCHAR) AS s{k}" for k, c in enumerate(columns))
    # not IS DISTINCT FROM: Redshift lacks it. A missing checksum on either side counts as a
    # change (the field-by-field comparison that follows then finds what, if anything, differs)
    return (f"SELECT d.uid{values} FROM {desired} AS d LEFT JOIN {state} AS s ON s.uid = d.uid "
            "WHERE s.uid IS NULL OR s.checksum IS NULL OR d.checksum IS NULL "
            "OR s.checksum <> d.checksum")
