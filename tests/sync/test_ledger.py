"""The sync ledger: per-workspace file, state and versions, batch records, corrupt/locked files."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

import toolkit
from toolkit.errors import LedgerError
from toolkit.mapping import Mapping
from toolkit.sync.ledger import Ledger, default_ledger_path
from toolkit.sync.plan import plan

from .builders import acknowledge_all_rows, make_export


def test_default_path_is_per_workspace_under_dot_toolkit(tmp_path):
    with Ledger("http://127.0.0.1:9#abcd1234", directory=tmp_path) as led:
        assert led.path == default_ledger_path("http://127.0.0.1:9#abcd1234", tmp_path)
        assert led.path.parent == tmp_path / ".toolkit"
        assert led.path.name == "ledger-http_127.0.0.1_9_abcd1234.sqlite"
        mode = sqlite3.connect(led.path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


def test_a_ledger_refuses_another_workspace(tmp_path):
    path = tmp_path / "l.sqlite"
    Ledger(path=path, workspace="ws-a#1").close()
    with pytest.raises(LedgerError) as err:
        Ledger(path=path, workspace="ws-b#2")
    assert str(path) in str(err.value) and "ws-a#1" in str(err.value)


def test_finish_records_state_and_bumps_version_once_per_batch(tmp_path):
    with Ledger(path=tmp_path / "l.sqlite", workspace="ws#1") as led:
        assert led.version == 0
        led.record_batches("p1", [("attributes-00001", "attributes", 2, None)])
        led.mark_sent("p1", "attributes-00001")
        assert led.batch_statuses("p1") == {"attributes-00001": "sent"}
        v = led.finish("p1", "attributes-00001", "acknowledged",
                       state=[("attr:vip", "external_id:u1", "true"),
                              ("attr:vip", "external_id:u2", "false")])
        assert v == led.version == 1
        assert led.state("attr:vip").to_dict() == {"external_id:u1": "true",
                                                   "external_id:u2": "false"}
        led.finish("p2", "x", "acknowledged", state=[("attr:vip", "external_id:u1", None)])
        assert led.version == 2
        assert led.user("external_id:u1") == {}
        assert led.changes_since(0, excluding_plan="p1") == 1
        assert led.changes_since(1, excluding_plan="p2") == 0
        # a batch already recorded keeps its status when recorded again (resume)
        led.record_batches("p1", [("attributes-00001", "attributes", 2, None)])
        assert led.batch_statuses("p1")["attributes-00001"] == "acknowledged"


def test_uncertain_event_batches_are_listed_and_settled_by_hand(tmp_path):
    with Ledger(path=tmp_path / "l.sqlite", workspace="ws#1") as led:
        items = '[["member:vip", "external_id:u1", "true"]]'
        led.record_batches("p1", [("events-00001", "events", 1, items),
                                  ("events-00002", "events", 1, items)])
        led.mark_sent("p1", "events-00001")
        led.mark_sent("p1", "events-00002")
        assert list(led.uncertain_events()["batch"]) == ["events-00001", "events-00002"]
        assert led.uncertain_items() == {("member:vip", "external_id:u1")}
        led.resolve("p1", "events-00001", landed=True)
        assert led.state("member:vip").to_dict() == {"external_id:u1": "true"}
        led.resolve("p1", "events-00002", landed=False)
        assert led.uncertain_events().empty
        with pytest.raises(LedgerError):
            led.resolve("p1", "events-00002", landed=True)


def test_a_corrupt_ledger_names_the_file_and_how_to_fix(tmp_path):
    path = tmp_path / "broken.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerError) as err:
        Ledger(path=path, workspace="ws#1")
    assert str(path) in str(err.value)
    assert "restore it from a backup" in err.value.hint and "Audience Entered" in err.value.hint


def test_a_locked_ledger_says_so(tmp_path):
    path = tmp_path / "l.sqlite"
    Ledger(path=path, workspace="ws#1").close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(LedgerError) as err:
            led = Ledger(path=path, workspace="ws#1", timeout=0.1)
            led.finish("p", "b", "acknowledged", state=[("attr:a", "external_id:u", "1")])
        assert "locked" in str(err.value) and str(path) in str(err.value)
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_one_writer_at_a_time_and_a_killed_holder_frees_it(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "l.sqlite"
    with Ledger(path=path, workspace="ws#1") as led:
        with led.exclusive():
            with pytest.raises(LedgerError) as err:
                with Ledger(path=path, workspace="ws#1").exclusive():
                    pass
            assert str(path) in str(err.value) and "in use by apply pid" in str(err.value)
        with led.exclusive():   # released on exit
            pass
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from toolkit.sync.ledger import Ledger\n"
        "l = Ledger(path=sys.argv[1], workspace='ws#1')\n"
        "with l.exclusive():\n    print('held', flush=True); time.sleep(60)"), str(path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LedgerError):
            with Ledger(path=path, workspace="ws#1").exclusive():
                pass
    finally:
        holder.kill()
        holder.wait()
    with Ledger(path=path, workspace="ws#1").exclusive():
        pass


def test_a_closed_ledger_still_describes_itself(tmp_path):
    led = Ledger(path=tmp_path / "l.sqlite", workspace="ws#1")
    led.close()
    assert "closed" in repr(led) and "l.sqlite" in led._repr_html_()


V1_FIXTURE = Path(__file__).parent / "data" / "ledger-v1.sqlite"
SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"


def _v1_mapping(export):
    # the mapping the fixture was synced with (see the fixture's maker in the test below)
    return (Mapping.from_export(export).set("vip_customer", send_as="both")
            .set("dormant_shopper", send_as="event"))


def test_a_schema_1_ledger_migrates_on_open_and_an_unchanged_export_plans_nothing(tmp_path):
    """The fixture was written by the toolkit before the snapshot ledger (commit 991795d): the
    formatted sample synced in two steps (half the profiles, then all), vip_customer as
    attribute and events, dormant_shopper as events; the first sync folded into state rows,
    the second still pending in its batch records."""
    path = tmp_path / "ledger.sqlite"
    shutil.copy(V1_FIXTURE, path)
    old = sqlite3.connect(path)
    v1_rows = old.execute("SELECT COUNT(*) FROM state").fetchone()[0]
    v1_pending = old.execute("SELECT COUNT(*) FROM batches WHERE pending IS NOT NULL").fetchone()[0]
    old.close()
    assert v1_rows and v1_pending
    export = toolkit.load(SAMPLES / "audience_csv" / "formatted")
    with Ledger(path=path) as led:
        schema = dict(led._query("SELECT key, value FROM meta"))["schema"]
        assert schema == "2" and led._query("SELECT COUNT(*) FROM state")[0][0] == 0
        assert led.version == 25
        members = led.state("member:dormant_shopper")
        assert len(members) and set(members) == {"true"}
        p = plan(export, _v1_mapping(export), led, create_users=True)
        assert p.is_empty and p.cost()["events"] == 0, p.summary()
        # migrated state has no stored checksums yet: they are computed from the values, and
        # every user compares equal
        assert p.manifest["changed_users"] == 0


def test_checksums_skip_unchanged_users_and_a_changed_user_is_diffed_field_by_field(tmp_path):
    export = make_export(50)
    mapping = Mapping.from_export(export).set("vip_customer", send_as="both")
    with Ledger(path=tmp_path / "l.sqlite", workspace="ws#1") as led:
        first = plan(export, mapping, led)
        acknowledge_all_rows(first, led)
        again = plan(export, mapping, led)
        assert again.is_empty and again.manifest["changed_users"] == 0
        changed = make_export(50)
        changed.profiles.loc[3, "total_revenue_180_days"] = 12345.5
        p = plan(changed, mapping, led)
        assert p.manifest["changed_users"] == 1
        assert list(p.operations["value"]) == ["12345.5"]


@pytest.mark.parametrize("where", ["sqlite", "postgresql"])
def test_a_fold_overtaken_by_another_process_is_made_again_on_top(tmp_path, where, request):
    """Two processes fold the same acknowledged batches: the one that switches second sees the
    snapshot moved under it, drops its own file and folds again (here: nothing left)."""
    if where == "postgresql":
        url = request.getfixturevalue("postgres_url") + "?schema=overtaken_" + tmp_path.name[-8:]
        open_a = lambda: Ledger(url, workspace="ws#1", directory=tmp_path / "a")  # noqa: E731
        open_b = lambda: Ledger(url, workspace="ws#1", directory=tmp_path / "b")  # noqa: E731
    else:
        open_a = open_b = lambda: Ledger(path=tmp_path / "l.sqlite", workspace="ws#1")  # noqa: E731
    export = make_export(40)
    mapping = Mapping.from_export(export)
    with open_a() as a, open_b() as b:
        acknowledge_all_rows(plan(export, mapping, a), a)
        fold, folds = a._fold, []

        def overtaken(rows, current, bar):
            out = fold(rows, current, bar)
            folds.append(out[1])
            if len(folds) == 1:
                assert b.materialize() > 0      # b switches first
            return out

        a._fold = overtaken
        assert a.materialize() == 0
        assert len(folds) == 1 and a._meta("state_file") != folds[0]
        assert not a._journal.has(folds[0])      # the overtaken fold's file is gone
        assert a.snapshot().users == 40 and plan(export, mapping, a).is_empty


@pytest.mark.parametrize("where", ["sqlite", "postgresql"])
def test_after_a_complete_sync_the_ledger_keeps_only_what_it_still_needs(tmp_path, where,
                                                                         request):
    """The current snapshot and the convergence record's left-out and inputs files: the plan
    copy and the snapshots folded over are removed (the 1M ledger's size target depends on
    it)."""
    export = make_export(60)
    mapping = Mapping.from_export(export)
    if where == "postgresql":
        url = request.getfixturevalue("postgres_url") + "?schema=tidy_" + tmp_path.name[-8:]
        led = Ledger(url, workspace="ws#1", directory=tmp_path)
    else:
        led = Ledger(path=tmp_path / "l.sqlite", workspace="ws#1")
    with led:
        for n in (30, 60):   # two syncs: the first one's snapshot is folded over
            p = plan(make_export(n), mapping, led)
            led.record_plan(p)
            acknowledge_all_rows(p, led)
            led.materialize()
        assert led.record_converged(p)
        kept = sorted(name for prefix in (led._journal.prefix,) for kind in ("state-", "plans/",
                      "converged") for name, _ in led._journal.names(prefix + kind))
        record = json.loads(led._meta("converged"))
        assert kept == sorted([led._meta("state_file"), record["left_out"], record["inputs"]])
        assert plan(export, mapping, led).is_empty


def test_a_large_fold_shows_a_bar_and_a_quick_one_stays_silent(tmp_path, monkeypatch, capsys):
    """The fold after an apply reports its progress (the engine's own estimate of the pivot
    and the write) once it runs longer than FOLD_PROGRESS_DELAY; a sample-sized fold prints
    nothing, so notebooks and the wizard stay quiet."""
    import toolkit.sync.ledger as ledger_module

    export = make_export(40)
    mapping = Mapping.from_export(export)
    for delay, shown in ((ledger_module.FOLD_PROGRESS_DELAY, False), (0.0, True)):
        monkeypatch.setattr(ledger_module, "FOLD_PROGRESS_DELAY", delay)
        with Ledger(path=tmp_path / f"l{delay}.sqlite", workspace="ws#1") as led:
            p = plan(export, mapping, led)
            acknowledge_all_rows(p, led)
            capsys.readouterr()
            assert led.materialize(progress=True) == p.cost()["users"]
            err = capsys.readouterr().err
            assert ("ledger: fold acknowledged state: 100%" in err) is shown
            assert led.snapshot().users == p.cost()["users"]
