"""SQL per dialect (issue 11, part 4): every statement is written once and generated for each
engine by SQLGlot. Executed engines (DuckDB, PostgreSQL) run it here against real engines;
generated-only engines (Snowflake, BigQuery, Redshift, Databricks) are compared with reviewed
snapshots in ``tests/sql/snapshots/<engine>/<statement>.sql``.

After a deliberate change, regenerate the snapshots with
``TOOLKIT_UPDATE_SQL_SNAPSHOTS=1 pytest tests/sql`` and review the diff before committing.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import duckdb
import psycopg
import pytest
import sqlglot

from toolkit import dialects
from toolkit.dialects import ENGINES, render

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("TOOLKIT_UPDATE_SQL_SNAPSHOTS") == "1"
GRAPH = {"table": "id_graph", "segment_id": "segment_id", "canonical": "canonical_segment_id"}

# one representative call of each statement builder
STATEMENTS = {
    "trait_names": lambda: dialects.trait_names_sql("engage", table="user_traits", name="name"),
    "latest_traits": lambda: dialects.latest_traits_sql(
        "engage", table="user_traits", segment_id="canonical_segment_id", name="name",
        value="value", traits=["plan", "it's \"quoted\""], order=["seq", "timestamp"],
        graph=GRAPH),
    "identifier_mapping": lambda: dialects.identifier_mapping_sql(
        "engage", table="user_identifiers", segment_id="canonical_segment_id", type_="type",
        value="value", timestamp="timestamp", order=["timestamp", "seq"], graph=GRAPH),
    "snapshot_time": lambda: dialects.snapshot_time_sql("engage", table="user_traits",
                                                        column="timestamp"),
    "state_table": lambda: dialects.state_table_sql("braze_sync", "state_0123abcd", 3),
    "changed_users": lambda: dialects.changed_users_sql(
        "desired_in", '"braze_sync"."state_0123abcd"', ["c0", None, "c2"]),
}


def _snapshot(engine: str, statement: str) -> Path:
    return SNAPSHOTS / engine / f"{statement}.sql"


@pytest.mark.parametrize("statement", sorted(STATEMENTS))
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_generated_sql_matches_its_reviewed_snapshot(engine, statement):
    sql = render(STATEMENTS[statement](), engine, pretty=True) + "\n"
    path = _snapshot(engine, statement)
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(sql)
    assert path.exists(), f"no snapshot {path}: run with TOOLKIT_UPDATE_SQL_SNAPSHOTS=1 and review"
    assert sql == path.read_text(), (
        f"the {engine} SQL of {statement} changed; if on purpose, regenerate the snapshots "
        "(TOOLKIT_UPDATE_SQL_SNAPSHOTS=1) and review them")


@pytest.mark.parametrize("statement", sorted(STATEMENTS))
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_generated_sql_parses_in_its_own_dialect(engine, statement):
    sql = render(STATEMENTS[statement](), engine)
    parsed = sqlglot.parse_one(sql, read=ENGINES[engine].sqlglot)
    assert parsed is not None and parsed.sql(dialect=ENGINES[engine].sqlglot)


def test_generated_sql_quotes_names_for_each_engine():
    latest = STATEMENTS["latest_traits"]()
    assert "`it's \"quoted\"`" in render(latest, "bigquery")
    assert "`it's \"quoted\"`" in render(latest, "databricks")
    assert '"it\'s ""quoted"""' in render(latest, "snowflake")
    assert "VARCHAR(MAX)" in render(latest, "redshift")
    assert "STRING" in render(latest, "bigquery")


def test_unknown_engine_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="snowflake"):
        render("SELECT 1", "oracle")


def test_the_engines_table_says_what_is_executed():
    assert {n for n, e in ENGINES.items() if e.executed} == {"duckdb", "postgresql"}
    assert {n for n, e in ENGINES.items() if not e.executed} == {
        "snowflake", "bigquery", "redshift", "databricks"}
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for name in ("Snowflake", "BigQuery", "Redshift", "Databricks"):
        assert name in readme
    assert "generated only" in readme.lower() and "executed in tests" in readme.lower()


# -- executed engines: the same generated statements give the same rows ----------------------

STATE = [("u1", 11, "\"a\"", None, "true"), ("u2", -5, "\"b\"", "1", None),
         ("u3", 7, None, None, "false")]
DESIRED = [("u1", 11), ("u2", 6), ("u4", 9)]


def _run_duckdb() -> list[tuple]:
    con = duckdb.connect()
    con.execute(render(dialects.state_table_sql(None, "state_x", 3), "duckdb"))
    con.executemany("INSERT INTO state_x VALUES (?, ?, ?, ?, ?)", STATE)
    con.execute("CREATE TABLE desired_in (uid VARCHAR, checksum BIGINT)")
    con.executemany("INSERT INTO desired_in VALUES (?, ?)", DESIRED)
    sql = render(dialects.changed_users_sql("desired_in", '"state_x"', ["c0", None, "c2"]),
                 "duckdb")
    return sorted(con.execute(sql).fetchall())


def _run_postgres(url: str) -> list[tuple]:
    schema = f"q_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(f'CREATE SCHEMA "{schema}"')
        con.execute(render(dialects.state_table_sql(schema, "state_x", 3), "postgresql"))
        with con.cursor() as cur:
            cur.executemany(f'INSERT INTO "{schema}"."state_x" VALUES (%s, %s, %s, %s, %s)', STATE)
            cur.execute("CREATE TEMP TABLE desired_in (uid TEXT, checksum BIGINT)")
            cur.executemany("INSERT INTO desired_in VALUES (%s, %s)", DESIRED)
            sql = render(dialects.changed_users_sql("desired_in", f'"{schema}"."state_x"',
                                                    ["c0", None, "c2"]), "postgresql")
            rows = sorted(cur.execute(sql).fetchall())
        con.execute(f'DROP SCHEMA "{schema}" CASCADE')
    return rows


def test_duckdb_and_postgresql_run_the_same_comparison_with_the_same_result(postgres_url):
    expected = [("u2", '"b"', None, None), ("u4", None, None, None)]
    assert _run_duckdb() == expected
    assert _run_postgres(postgres_url) == expected
