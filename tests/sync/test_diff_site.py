"""Where the diff runs (issue 11, part 3): in the ledger's PostgreSQL server or on this machine,
the smaller side moving — and the same operations either way.

A real PostgreSQL server (tests/pgserver.py), one schema per test; "machines" are ledgers with
caches of their own.
"""
from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import psycopg
import pytest

from toolkit.engage.model import EngageExport
from toolkit.errors import PlanError
from toolkit.mapping import Mapping
from toolkit.sync.diffsite import RULES
from toolkit.sync.ledger import Ledger
from toolkit.sync.plan import plan

from .builders import AUDIENCES, acknowledge_all_rows, make_export


@pytest.fixture
def url(postgres_url) -> str:
    return f"{postgres_url}?schema=d_{uuid.uuid4().hex[:10]}"


def _ledger(url: str, tmp_path, machine: str) -> Ledger:
    folder = tmp_path / machine
    folder.mkdir(exist_ok=True)
    return Ledger(url, workspace="ws#1", directory=folder)


def _changed(export: EngageExport, seed: int = 3) -> EngageExport:
    """A day later: memberships flipped, values changed and lost, profiles gone and new."""
    rng = np.random.default_rng(seed)
    p = export.profiles.copy()
    n = len(p)
    for key in AUDIENCES:
        flip = rng.random(n) < 0.15
        p.loc[flip, key] = ~p.loc[flip, key].astype(bool)
    p.loc[rng.random(n) < 0.1, "total_revenue_180_days"] = 999.5
    p.loc[rng.random(n) < 0.05, "last_product_viewed_item"] = pd.NA
    p = p.iloc[5:].copy()                                    # five profiles left the space
    extra = p.iloc[:3].copy()
    extra["segment_id"] = ["use_new_1", "use_new_2", "use_new_3"]
    extra["user_id"] = ["u_new_1", "u_new_2", "u_new_3"]
    extra["email"] = ["n1@example.com", "n2@example.com", "n3@example.com"]
    p = pd.concat([p, extra], ignore_index=True)
    return EngageExport(profiles=p, computations=export.computations,
                        snapshot_at=export.snapshot_at, source="test export, a day later")


def _ops(p) -> pd.DataFrame:
    return p.operations.reset_index(drop=True)


@pytest.mark.parametrize("events", [False, True], ids=["attributes", "events"])
def test_the_server_and_this_machine_plan_the_same_operations(url, tmp_path, events):
    export = make_export(300, anonymous=4, email_only=2)
    mapping = Mapping.from_export(export)
    if events:
        for key in AUDIENCES[:2]:
            mapping = mapping.set(key, send_as="both")
    with _ledger(url, tmp_path, "a") as a, _ledger(url, tmp_path, "b") as b:
        acknowledge_all_rows(plan(export, mapping, a), a)
        a.materialize()
        later = _changed(export)
        server = plan(later, mapping, b, diff_at="server")
        local = plan(later, mapping, b, diff_at="local")
        assert server.manifest["diff"]["where"] == "server"
        assert local.manifest["diff"]["where"] == "local"
        assert server.rows > 0
        pd.testing.assert_frame_equal(_ops(server), _ops(local))
        assert [x.id for x in server.batches()] == [x.id for x in local.batches()]
        if events:   # each plan's events get a second of their own; nothing else differs
            assert server.options["event_time"] != local.options["event_time"]
        else:
            assert server.fingerprint == local.fingerprint
        assert server.summary().equals(local.summary())
        pd.testing.assert_frame_equal(server.left_out, local.left_out)
        # only the changed users came back; every user's key and checksum went in
        site = server.manifest["diff"]
        assert server.manifest["changed_users"] == local.manifest["changed_users"]
        assert 0 < server.manifest["changed_users"] < server.manifest["users"]
        assert site["received_bytes"] > 0 and site["sent_bytes"] > 0
        assert local.manifest["diff"]["sent_bytes"] == 0
        assert "in the ledger's server" in server.diff_site
        assert "diff ran in the ledger&#x27;s server" in server._repr_html_()


def test_auto_moves_the_smaller_side_and_says_why(url, tmp_path):
    export = make_export(400)
    mapping = Mapping.from_export(export)
    with _ledger(url, tmp_path, "a") as a, _ledger(url, tmp_path, "b") as b:
        first = plan(export, mapping, a)
        assert first.manifest["diff"]["reason"].startswith("the ledger holds no acknowledged")
        acknowledge_all_rows(first, a)
        a.materialize()
        later = _changed(export)
        # a folded the state itself: its cache holds it, nothing needs to move
        mine = plan(later, mapping, a)
        assert mine.manifest["diff"]["where"] == "local"
        assert mine.manifest["diff"]["moves"] == "nothing"
        # b has no copy: the sizes decide, and the plan names both sizes
        theirs = plan(later, mapping, b).manifest["diff"]
        smaller_desired = theirs["desired_bytes"] < theirs["state_bytes"]
        assert theirs["where"] == ("server" if smaller_desired else "local")
        assert "B, desired keys" in theirs["text"] and theirs["ledger"] == a.location
        pd.testing.assert_frame_equal(_ops(plan(later, mapping, b)), _ops(mine))


def test_an_export_from_the_ledgers_own_database_is_diffed_there(url, tmp_path):
    export = make_export(100)
    mapping = Mapping.from_export(export)
    with _ledger(url, tmp_path, "a") as a:
        acknowledge_all_rows(plan(export, mapping, a), a)
        a.materialize()
        later = _changed(export)
        host = a.location.split("?", 1)[0]
        warehouse = EngageExport(profiles=later.profiles, computations=later.computations,
                                 snapshot_at=later.snapshot_at,
                                 source=f"{host} schema engage (profiles_sync)")
        site = plan(warehouse, mapping, a).manifest["diff"]
        assert site["where"] == "server" and "ledger's own database" in site["reason"]
        elsewhere = EngageExport(profiles=later.profiles, computations=later.computations,
                                 snapshot_at=later.snapshot_at,
                                 source="postgresql://x:***@warehouse.example:5432/engage schema s")
        assert "own database" not in plan(elsewhere, mapping, a).manifest["diff"]["reason"]


def test_a_changed_mapping_or_a_snapshot_without_table_diffs_here(url, tmp_path):
    export = make_export(120)
    mapping = Mapping.from_export(export)
    with _ledger(url, tmp_path, "a") as a, _ledger(url, tmp_path, "b") as b:
        acknowledge_all_rows(plan(export, mapping, a), a)
        a.materialize()
        other = mapping.set(AUDIENCES[0], send_as="event")
        site = plan(export, other, b, diff_at="server").manifest["diff"]
        assert site["where"] == "local" and "other fields" in site["reason"]
        with psycopg.connect(url.split("?")[0], options=f"-c search_path={url.split('=')[-1]}") as con:
            con.execute("DELETE FROM state_tables")
        site = plan(_changed(export), mapping, b, diff_at="server").manifest["diff"]
        assert site["where"] == "local" and "no table in the server" in site["reason"]


def test_each_snapshot_keeps_one_table_and_old_ones_are_dropped(url, tmp_path):
    mapping = Mapping.from_export(make_export(50))
    schema = url.split("=")[-1]
    with _ledger(url, tmp_path, "a") as a:
        for n in (50, 60, 70):
            acknowledge_all_rows(plan(make_export(n), mapping, a), a)
            a.materialize()
        with psycopg.connect(url.split("?")[0]) as con:
            tables = [r[0] for r in con.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename LIKE "
                "'state\\_%%' AND tablename <> 'state_tables'", (schema,))]
            recorded = con.execute(f'SELECT name, tbl, rows FROM "{schema}".state_tables').fetchall()
        assert len(tables) == 1 and [r[1] for r in recorded] == tables
        assert recorded[0][0] == a._meta("state_file") and recorded[0][2] == 70


def test_diff_at_is_checked_before_any_work():
    with pytest.raises(PlanError) as err:
        plan(make_export(5), Mapping.from_export(make_export(5)), diff_at="warehouse")
    assert err.value.field == "diff_at"


def test_the_rules_are_data_and_end_with_a_default():
    assert RULES[-1][0](None) is True
    assert {r[1] for r in RULES} == {"local", "server"}
    assert all(isinstance(r[3], str) and r[3] for r in RULES)


def test_a_file_ledger_always_diffs_here(tmp_path):
    export = make_export(40)
    mapping = Mapping.from_export(export)
    with Ledger(tmp_path / "l.sqlite", workspace="ws#1") as led:
        acknowledge_all_rows(plan(export, mapping, led), led)
        led.materialize()
        site = plan(_changed(export), mapping, led, diff_at="server").manifest["diff"]
        assert site["where"] == "local" and site["reason"] == "the ledger is a file on this machine"


def test_profiles_sync_in_the_ledgers_database_is_diffed_in_that_server(postgres_url, url, tmp_path):
    """End to end: Profiles Sync tables and the ledger in one PostgreSQL database."""
    import dataclasses
    import importlib.util
    import sys
    from pathlib import Path

    import toolkit

    generate = Path(__file__).resolve().parents[2] / "data" / "samples" / "generate.py"
    spec = importlib.util.spec_from_file_location("sample_generate_site", generate)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sample_generate_site"] = module
    spec.loader.exec_module(module)
    schema = f"ps_{uuid.uuid4().hex[:8]}"
    assert module.main(["--database", postgres_url, "--schema", schema, "--tables", "segment"]) == 0
    export = toolkit.load(postgres_url, schema=schema)
    mapping = Mapping.from_export(export)
    with _ledger(url, tmp_path, "a") as a:
        first = plan(export, mapping, a)
        acknowledge_all_rows(first, a)
        a.materialize()
        profiles = export.profiles.copy()
        trait = next(t for t in export.traits if pd.api.types.is_numeric_dtype(profiles[t]))
        profiles.loc[profiles.index[:25], trait] = 4321.0
        later = dataclasses.replace(export, profiles=profiles)
        server = plan(later, mapping, a)
        site = server.manifest["diff"]
        assert site["where"] == "server" and "ledger's own database" in site["reason"]
        local = plan(later, mapping, a, diff_at="local")
        pd.testing.assert_frame_equal(_ops(server), _ops(local))
        assert 0 < server.rows <= 25
