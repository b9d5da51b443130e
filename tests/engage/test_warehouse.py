"""Profiles Sync read from a database URL: a real PostgreSQL (tests/pgserver.py) and a DuckDB
file give the same export as the CSV dumps; bad URLs and schemas get a WarehouseError; the
password in a URL is never shown."""
from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys

import pandas as pd
import pytest

import toolkit
from tests.pgserver import PASSWORD
from toolkit.engage.warehouse import redact, write_tables

from .conftest import SAMPLES

GENERATE = SAMPLES / "generate.py"


def _generate(url: str, schema: str, tables: str = "all") -> None:
    """generate.py --database, in this process (the CLI itself is run once, in `pg`)."""
    spec = importlib.util.spec_from_file_location("sample_generate", GENERATE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sample_generate"] = module   # its dataclasses look their module up
    spec.loader.exec_module(module)
    assert module.main(["--database", url, "--schema", schema, "--tables", tables]) == 0


@pytest.fixture(scope="module")
def dumps():
    return toolkit.load(SAMPLES / "profiles_sync")


@pytest.fixture(scope="module")
def pg(postgres_url):
    """The sample written into PostgreSQL: every table in one schema, Segment's alone in another."""
    done = subprocess.run([sys.executable, str(GENERATE), "--database", postgres_url,
                           "--schema", "northwind_profiles"], check=True, capture_output=True,
                          text=True)
    _generate(postgres_url, "segment_only", "segment")
    return postgres_url, done.stderr


@pytest.fixture(scope="module")
def duck(tmp_path_factory):
    url = f"duckdb:///{tmp_path_factory.mktemp('duck') / 'engage.duckdb'}"
    _generate(url, "northwind_profiles")
    _generate(url, "segment_only", "segment")
    return url


def assert_same(a, b):
    """Identical profiles, identifiers, audience membership and trait values (order aside)."""
    assert sorted(a.audiences) == sorted(b.audiences)
    assert sorted(a.traits) == sorted(b.traits)
    pa_, pb = (e.profiles.set_index("segment_id").sort_index() for e in (a, b))
    assert pa_.index.equals(pb.index) and len(pa_) == 2000
    for col in ("user_id", "email", "anonymous_id"):
        assert pa_[col].fillna("").equals(pb[col].fillna("")), col
    assert [tuple(v) for v in pa_["emails"]] == [tuple(v) for v in pb["emails"]]
    for key in a.audiences:
        assert set(a.members(key)["segment_id"]) == set(b.members(key)["segment_id"]), key
        assert len(a.members(key)) > 0
    for key in a.traits:
        x, y = pa_[key], pb[key]
        assert x.dtype == y.dtype, key
        assert (x.isna() == y.isna()).all(), key
        assert (x[x.notna()] == y[y.notna()]).all(), key
    assert a.findings.counts().get("merged_profile") == b.findings.counts().get("merged_profile")


def test_postgresql_materialised_tables_give_the_dumps_export(pg, dumps):
    url, message = pg
    export = toolkit.load(url, schema="northwind_profiles")
    assert_same(dumps, export)
    assert export.snapshot_at == pd.Timestamp("2024-12-16 21:44:00", tz="UTC")
    assert "wrote profile_traits, external_id_mapping, user_traits" in message
    assert "toolkit:***@127.0.0.1" in message and PASSWORD not in message


def test_postgresql_segment_tables_are_materialised_like_the_dumps(pg, dumps):
    export = toolkit.load(pg[0], schema="segment_only")
    assert_same(dumps, export)
    assert export.snapshot_at == pd.Timestamp("2025-03-14 08:00", tz="UTC")


def test_duckdb_file_gives_the_same_export(duck, dumps):
    assert_same(dumps, toolkit.load(duck, schema="northwind_profiles"))
    assert_same(dumps, toolkit.load(duck, schema="segment_only"))


def test_rows_arrive_in_many_small_batches_and_still_agree(pg, duck, dumps, monkeypatch):
    from toolkit.engage import warehouse

    monkeypatch.setattr(warehouse, "_COPY_BLOCK", 4096)   # ~40 rows a batch
    monkeypatch.setattr(warehouse, "_BATCH_ROWS", 97)
    seen = []
    real = warehouse._read
    monkeypatch.setattr(warehouse, "_read", lambda db, sql, *a: seen.append(
        real(db, sql, *a)) or seen[-1])
    assert_same(dumps, toolkit.load(pg[0], schema="northwind_profiles"))
    assert_same(dumps, toolkit.load(duck, schema="segment_only"))
    assert all(t.num_rows > 40 and len(t.to_batches()) > 10 for t in seen)


def test_audiences_argument_and_parquet_agree_with_the_database(pg):
    export = toolkit.load(pg[0], schema="northwind_profiles", audiences=["vip_customer"])
    assert export.audiences == ["vip_customer"] and "dormant_shopper" in export.traits
    assert_same(toolkit.load(SAMPLES / "profiles_sync" / "parquet"),
                toolkit.load(pg[0], schema="northwind_profiles"))


def test_postgresql_types_nulls_and_empty_strings_survive(postgres_url):
    import pyarrow as pa

    traits = pa.table({
        "canonical_segment_id": ["use_a", "use_b", "use_c"],
        "nickname": ["", None, "Al, \"the\"\nsecond"],
        "vip": [True, False, None],
        "score": pa.array([1.5, None, float("nan")], pa.float64()),
        "joined_at": pa.array([pd.Timestamp("2024-05-01 10:00:00.123456", tz="UTC"), None,
                               pd.Timestamp("2020-01-01", tz="UTC")],
                              pa.timestamp("us", tz="UTC")),
        "merged_to": pa.array([None, None, None], pa.string())})
    mapping = pa.table({"canonical_segment_id": ["use_a"], "external_id_type": ["user_id"],
                        "external_id_value": ["u1"],
                        "timestamp": pa.array([pd.Timestamp("2024-01-01")], pa.timestamp("s"))})
    write_tables(postgres_url, "typed", {"profile_traits": traits, "external_id_mapping": mapping})
    p = toolkit.load(postgres_url, schema="typed").profiles.set_index("segment_id")
    assert p.loc["use_c", "nickname"] == 'Al, "the"\nsecond' and pd.isna(p.loc["use_b",
                                                                               "nickname"])
    assert p["vip"].tolist() == [True, False, False]
    assert p.loc["use_a", "score"] == 1.5 and p.loc["use_a", "user_id"] == "u1"
    assert p.loc["use_a", "joined_at"] == pd.Timestamp("2024-05-01 10:00:00.123456", tz="UTC")


# -- bad input and secrets ---------------------------------------------------------------------

def _error(url, **kw) -> toolkit.WarehouseError:
    with pytest.raises(toolkit.WarehouseError) as info:
        toolkit.load(url, **kw)
    return info.value


def _shown(err: BaseException) -> str:
    """Everything an analyst could see of an error: message, context, HTML, the chain."""
    parts = [str(err), repr(err), err._repr_html_(), repr(err.__cause__), repr(err.__context__)]
    return "\n".join(parts)


def test_bad_urls_and_schemas_get_a_clear_error_without_the_password(pg, postgres_server,
                                                                     caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    url = pg[0]
    cases = {
        "unknown scheme": (_error(f"mysql://u:{PASSWORD}@localhost/db"), "unknown database URL"),
        "wrong password": (_error(postgres_server.url_for(password=PASSWORD + "x")),
                           "refused the login"),
        "no such database": (_error(postgres_server.url_for(database="nope")), "does not exist"),
        "unreachable": (_error(f"postgresql://toolkit:{PASSWORD}@127.0.0.1:1/engage"),
                        "cannot reach"),
        "missing schema": (_error(url, schema="no_such_space"), "schema 'no_such_space'"),
        "no duckdb file": (_error(f"duckdb:///{tmp_path}/missing.duckdb"), "no DuckDB"),
    }
    for what, (err, text) in cases.items():
        assert text in err.message, what
        assert err.hint, what
        assert PASSWORD not in _shown(err), what
        assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    assert "nope" in cases["no such database"][0].message
    assert "northwind_profiles" in cases["missing schema"][0].hint
    assert PASSWORD not in caplog.text
    export = toolkit.load(url, schema="northwind_profiles")
    assert PASSWORD not in export.source and ":***@" in export.source
    assert PASSWORD not in repr(export) and PASSWORD not in export._repr_html_()
    assert all(PASSWORD not in str(f) for f in export.findings)


def test_missing_table_or_column_names_it_and_the_fix(postgres_url):
    import pyarrow as pa

    write_tables(postgres_url, "half", {"profile_traits": pa.table({"canonical_segment_id": ["a"]})})
    err = _error(postgres_url, schema="half")
    assert err.table == "half.external_id_mapping" and "profiles-sync-dbt" in err.hint
    write_tables(postgres_url, "nocol", {
        "profile_traits": pa.table({"canonical_segment_id": ["a"]}),
        "external_id_mapping": pa.table({"canonical_segment_id": ["a"],
                                         "external_id_type": ["user_id"]})})
    err = _error(postgres_url, schema="nocol")
    assert err.table == "nocol.external_id_mapping" and err.column == "external_id_value"
    assert "external_id_value" in str(err)


def test_schema_argument_needs_a_database_url(samples):
    with pytest.raises(toolkit.ExportFormatError, match="only for a database URL"):
        toolkit.load(samples / "profiles_sync", schema="x")


def test_redact_hides_passwords_and_keeps_the_rest():
    assert redact("postgresql://ann:s%40cret@db.example:5432/engage") == \
        "postgresql://ann:***@db.example:5432/engage"
    assert redact("postgresql://db/engage?user=ann&password=hunter2") == \
        "postgresql://db/engage?user=ann&password=***"
    assert redact("duckdb:////tmp/x.duckdb") == "duckdb:////tmp/x.duckdb"


def test_server_helper_says_how_to_install_postgresql_when_missing():
    from tests.pgserver import PostgresServer

    server = PostgresServer()
    server.initdb = None
    assert "apt-get install -y postgresql" in server.unavailable()


def test_upper_case_tables_and_columns_are_found(postgres_url):
    import pyarrow as pa

    write_tables(postgres_url, "Shouting", {
        "PROFILE_TRAITS": pa.table({"CANONICAL_SEGMENT_ID": ["use_a", "use_b"],
                                    "VIP": [True, False], "MERGED_TO": pa.array([None, None],
                                                                                pa.string())}),
        "EXTERNAL_ID_MAPPING": pa.table({"CANONICAL_SEGMENT_ID": ["use_a"],
                                         "EXTERNAL_ID_TYPE": ["email"],
                                         "EXTERNAL_ID_VALUE": ["A@x.com"]})})
    export = toolkit.load(postgres_url, schema="Shouting")
    assert export.audiences == ["VIP"] and export.profiles["email"].tolist()[0] == "a@x.com"


def test_a_value_arrow_cannot_read_is_a_warehouse_error_naming_the_table(postgres_url):
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as con:
        con.execute("CREATE SCHEMA odd; CREATE TABLE odd.profile_traits "
                    "(canonical_segment_id text, signed_up date); "
                    "INSERT INTO odd.profile_traits VALUES ('use_a', 'infinity'); "
                    "CREATE TABLE odd.external_id_mapping (canonical_segment_id text, "
                    "external_id_type text, external_id_value text)")
    err = _error(postgres_url, schema="odd")
    assert err.table == "odd.profile_traits" and "reading" in err.message
    assert PASSWORD not in _shown(err)
