"""The sync ledger on a real PostgreSQL server: a team's shared ledger (issue 11, part 1).

Each test uses a schema of its own on the session's throwaway server (tests/pgserver.py); two
"analysts" are two `Ledger` objects (or processes) with local caches of their own, as two machines
would have.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from tests.pgserver import PASSWORD
from toolkit.braze.client import BrazeClient
from toolkit.errors import LedgerError
from toolkit.mapping import Mapping
from toolkit.sandbox.server import BrazeSandbox
from toolkit.sync.apply import apply
from toolkit.sync.journal import ledger_location
from toolkit.sync.ledger import SCHEMA_VERSION, Ledger
from toolkit.sync.plan import plan

from .builders import acknowledge_all_rows, make_export

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def schema() -> str:
    return f"t_{uuid.uuid4().hex[:10]}"


def _machine(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    return folder


def test_a_ledger_url_creates_its_schema_and_never_shows_the_password(postgres_url, schema,
                                                                      tmp_path):
    with Ledger(postgres_url, workspace="ws#1", schema=schema, directory=tmp_path) as led:
        assert led.shared and led.path is None
        assert PASSWORD not in led.location and f"schema={schema}" in led.location
        assert PASSWORD not in repr(led) and PASSWORD not in led._repr_html_()
        assert led.version == 0
    with psycopg.connect(postgres_url) as con:
        tables = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,))}
    assert {"meta", "batches", "changes", "plans", "event_times", "files",
            "file_index"} <= tables
    # ?schema= in the URL works the same way, and the workspace is the schema's
    with pytest.raises(LedgerError) as err:
        Ledger(f"{postgres_url}?schema={schema}", workspace="other#2", directory=tmp_path)
    assert "ws#1" in str(err.value) and PASSWORD not in str(err.value)


def test_a_second_analyst_plans_nothing_after_the_first_synced(postgres_url, schema, tmp_path):
    export = make_export(120, anonymous=3)
    mapping = Mapping.from_export(export).set("vip_customer", send_as="both")
    with BrazeSandbox(seed=2) as sandbox, BrazeClient.for_sandbox(sandbox) as client:
        url = f"{postgres_url}?schema={schema}"
        with Ledger(url, workspace=client, directory=_machine(tmp_path, "alice")) as alice:
            first = plan(export, mapping, alice, workspace=client, create_users=True)
            assert first.cost()["events"] > 0
            report = apply(first.approve(by="alice"), client, alice, progress=False)
            assert report.ok, report
            sent = len(sandbox.request_log())
            events = len(sandbox.events())
        with Ledger(url, workspace=client, directory=_machine(tmp_path, "bob")) as bob:
            assert bob.version > 0
            again = plan(export, mapping, bob, workspace=client, create_users=True)
            assert again.is_empty, again.summary()
            assert again.cost()["events"] == 0 and again.cost()["data_points"] == 0
            # bob reads alice's acknowledged values from the server, not from a file of his
            member = next(f for f in bob.fields() if f.startswith("member:"))
            assert len(bob.state(member)) > 0
            changed = make_export(120, anonymous=3)
            changed.profiles.loc[4, "total_revenue_180_days"] = 4321.5
            delta = plan(changed, mapping, bob, workspace=client, create_users=True)
            assert delta.manifest["changed_users"] == 1
            assert list(delta.operations["value"]) == ["4321.5"]
        # bob's plans sent nothing: the request log and the events are as alice left them
        assert len(sandbox.request_log()) == sent and len(sandbox.events()) == events


def test_a_concurrent_apply_is_refused_and_a_killed_holder_frees_the_ledger(postgres_url,
                                                                           schema, tmp_path):
    url = f"{postgres_url}?schema={schema}"
    Ledger(url, workspace="ws#1", directory=tmp_path).close()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from toolkit.sync.ledger import Ledger\n"
        "l = Ledger(sys.argv[1], workspace='ws#1', directory=sys.argv[2])\n"
        "with l.exclusive('apply'):\n    print('held', flush=True); time.sleep(120)"),
        url, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with Ledger(url, workspace="ws#1", directory=tmp_path) as other:
            with pytest.raises(LedgerError) as err:
                with other.exclusive("apply"):
                    pass
            text = str(err.value)
            assert "in use by toolkit apply pid" in text and str(holder.pid) in text
            assert "nothing was sent" in text and PASSWORD not in text
            holder.send_signal(signal.SIGKILL)
            holder.wait()
            deadline = time.monotonic() + 10
            while True:   # the server notices the dead session's socket at once, or nearly
                try:
                    with other.exclusive("apply"):
                        break
                except LedgerError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_an_apply_refused_by_the_lock_sends_nothing(postgres_url, schema, tmp_path):
    export = make_export(40)
    mapping = Mapping.from_export(export)
    with BrazeSandbox(seed=3) as sandbox, BrazeClient.for_sandbox(sandbox) as client:
        url = f"{postgres_url}?schema={schema}"
        with Ledger(url, workspace=client, directory=_machine(tmp_path, "a")) as a, \
                Ledger(url, workspace=client, directory=_machine(tmp_path, "b")) as b:
            p = plan(export, mapping, b, workspace=client, create_users=True).approve(by="b")
            with a.exclusive("apply"):
                with pytest.raises(LedgerError) as err:
                    apply(p, client, b, progress=False)
            assert "in use by" in str(err.value)
            assert len(sandbox.request_log()) == 0 and len(sandbox.profiles()) == 0
            assert b.batches().empty
            report = apply(p, client, b, progress=False)   # free again: it goes through
            assert report.ok


def test_state_folds_consistently_when_two_machines_fold_at_once(postgres_url, schema,
                                                                 tmp_path):
    export = make_export(60)
    mapping = Mapping.from_export(export)
    url = f"{postgres_url}?schema={schema}"
    with Ledger(url, workspace="ws#1", directory=_machine(tmp_path, "a")) as a, \
            Ledger(url, workspace="ws#1", directory=_machine(tmp_path, "b")) as b:
        first = plan(export, mapping, a)
        acknowledge_all_rows(first, a)      # acknowledged, not yet folded
        # b folds from the journal while a's own view is stale: both end on one snapshot
        assert b.materialize() > 0
        assert a.materialize() == 0
        assert a.snapshot().users == b.snapshot().users == len(export.profiles)
        again = plan(export, mapping, a)
        assert again.is_empty


def test_a_damaged_stored_file_is_refused_with_the_fix(postgres_url, schema, tmp_path):
    export = make_export(30)
    mapping = Mapping.from_export(export)
    url = f"{postgres_url}?schema={schema}"
    with Ledger(url, workspace="ws#1", directory=_machine(tmp_path, "a")) as a:
        acknowledge_all_rows(plan(export, mapping, a), a)
        a.materialize()
        name = a._meta("state_file")
    with psycopg.connect(postgres_url, autocommit=True) as con:
        con.execute(f"UPDATE {schema}.files SET data = 'garbage'::bytea WHERE name = %s", (name,))
    with Ledger(url, workspace="ws#1", directory=_machine(tmp_path, "b")) as b:
        with pytest.raises(LedgerError) as err:
            b.snapshot()
    assert "damaged" in str(err.value) and name in str(err.value)
    assert "backup" in str(err.value)


@pytest.mark.parametrize("case", ["password", "port", "database"])
def test_a_wrong_url_is_a_clear_error_without_the_password(postgres_server, tmp_path, case):
    if case == "password":
        url = postgres_server.url_for(password="not-the-" + PASSWORD)
        expect = "refused the login"
    elif case == "port":
        url = postgres_server.url.replace(f":{postgres_server.port}/", ":1/")
        expect = "cannot reach"
    else:
        url = postgres_server.url_for(database="nosuchdb")
        expect = "does not exist"
    with pytest.raises(LedgerError) as err:
        Ledger(url, workspace="ws#1", directory=tmp_path, timeout=3)
    text = str(err.value)
    assert expect in text and "nothing was read or sent" in text
    assert PASSWORD not in text and "not-the-" not in text


def test_a_ledger_from_a_newer_toolkit_is_refused(postgres_url, schema, tmp_path):
    url = f"{postgres_url}?schema={schema}"
    Ledger(url, workspace="ws#1", directory=tmp_path).close()
    with psycopg.connect(postgres_url, autocommit=True) as con:
        con.execute(f"UPDATE {schema}.meta SET value = %s WHERE key = 'schema'",
                    (str(SCHEMA_VERSION + 1),))
    with pytest.raises(LedgerError) as err:
        Ledger(url, workspace="ws#1", directory=tmp_path)
    assert "newer toolkit" in str(err.value) and "upgrade" in str(err.value)


def test_a_user_without_rights_on_the_schema_gets_the_grant_to_ask_for(postgres_server,
                                                                       postgres_url, tmp_path):
    role, secret = f"r_{uuid.uuid4().hex[:8]}", "Role-Secret-1b9e"
    with psycopg.connect(postgres_url, autocommit=True) as con:
        con.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{secret}'")
        # (PUBLIC has no CREATE on a database by default; made explicit for older servers)
        con.execute(f"REVOKE CREATE ON DATABASE {postgres_server.url.rsplit('/', 1)[1]} "
                    "FROM PUBLIC")
    url = postgres_server.url_for(user=role, password=secret)
    with pytest.raises(LedgerError) as err:
        Ledger(url, workspace="ws#1", schema=f"s_{role}", directory=tmp_path)
    text = str(err.value)
    assert f"s_{role}" in text and "CREATE SCHEMA" in text and secret not in text


def test_a_saved_plan_keeps_no_password_and_applies_through_braze_ledger_url(
        postgres_url, schema, tmp_path, monkeypatch):
    export = make_export(30)
    mapping = Mapping.from_export(export)
    url = f"{postgres_url}?schema={schema}"
    monkeypatch.delenv("BRAZE_LEDGER_URL", raising=False)
    with BrazeSandbox(seed=4) as sandbox, BrazeClient.for_sandbox(sandbox) as client:
        with Ledger(url, workspace=client, directory=tmp_path) as led:
            saved = plan(export, mapping, led, workspace=client,
                         create_users=True).approve(by="a").save(tmp_path / "plan.json")
        texts = "".join(f.read_text(errors="replace") for f in tmp_path.glob("plan*")
                        if f.is_file())
        assert PASSWORD not in texts and schema in texts
        with pytest.raises(LedgerError) as err:
            apply(saved, client, progress=False)
        assert "BRAZE_LEDGER_URL" in str(err.value) and PASSWORD not in str(err.value)
        assert len(sandbox.request_log()) == 0
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("BRAZE_LEDGER_URL", url)
        report = apply(saved, client, progress=False)
        assert report.ok, report
        with Ledger(client) as again:    # BRAZE_LEDGER_URL is the default ledger now
            assert again.shared and again.location == ledger_location(url)
            assert again.version > 0 and plan(export, mapping, again).is_empty


def test_a_user_who_may_not_connect_is_told_which_grant_is_missing(postgres_server, postgres_url,
                                                                   tmp_path):
    role, secret = f"n_{uuid.uuid4().hex[:8]}", "NoConnect-Secret-4c1d"
    database = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_url, autocommit=True) as con:
        con.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{secret}'")
        con.execute(f"REVOKE CONNECT ON DATABASE {database} FROM PUBLIC")
    try:
        with pytest.raises(LedgerError) as err:
            Ledger(postgres_server.url_for(user=role, password=secret), workspace="ws#1",
                   directory=tmp_path)
        text = str(err.value)
        assert "may not connect" in text and f"GRANT CONNECT ON DATABASE {database}" in text
        assert secret not in text
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as con:
            con.execute(f"GRANT CONNECT ON DATABASE {database} TO PUBLIC")


def test_a_released_ledger_is_free_at_once(postgres_url, schema, tmp_path):
    url = f"{postgres_url}?schema={schema}"
    with Ledger(url, workspace="ws#1", directory=tmp_path) as a, \
            Ledger(url, workspace="ws#1", directory=tmp_path) as b:
        for _ in range(20):
            with a.exclusive("apply"):
                pass
            with b.exclusive("apply"):   # no wait: a's lock was released, not just dropped
                pass


@pytest.mark.parametrize("where", ["sqlite", "postgresql"])
def test_a_ledger_says_who_holds_it(postgres_url, schema, tmp_path, where):
    target = f"{postgres_url}?schema={schema}" if where == "postgresql" else tmp_path / "l.sqlite"
    with Ledger(target, workspace="ws#1", directory=tmp_path) as a, \
            Ledger(target, workspace="ws#1", directory=tmp_path) as b:
        assert a.in_use_by is None and "In use by" not in b._repr_html_()
        with a.exclusive("settle"):
            holder = b.in_use_by
            assert holder is not None and f"settle pid {os.getpid()}" in holder
            assert "In use by" in b._repr_html_() and PASSWORD not in b._repr_html_()
        assert b.in_use_by is None
        where_shown = "shared ledger" if where == "postgresql" else "ledger on this machine"
        assert where_shown in a._repr_html_()


def test_braze_ledger_url_in_the_clients_env_file_is_the_default_ledger(postgres_url, schema,
                                                                        tmp_path, monkeypatch):
    monkeypatch.delenv("BRAZE_LEDGER_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    env = tmp_path / "team.env"
    env.write_text(f"BRAZE_LEDGER_URL={postgres_url}?schema={schema}\n")
    with BrazeSandbox(seed=5) as sandbox, \
            BrazeClient.for_sandbox(sandbox, env_file=str(env)) as client:
        with Ledger(client) as led:
            assert led.shared and led.location == ledger_location(f"{postgres_url}?schema={schema}")
        env.write_text("BRAZE_LEDGER_URL=ledgers/team.sqlite\n")
        with pytest.raises(LedgerError) as err:
            Ledger(client)
        assert "must be a postgresql:// URL" in str(err.value)
        assert not (tmp_path / "ledgers").exists()


def test_another_machines_cache_keeps_only_the_files_the_ledger_still_has(postgres_url, schema,
                                                                         tmp_path):
    url = f"{postgres_url}?schema={schema}"
    mapping = Mapping.from_export(make_export(20))
    with Ledger(url, workspace="ws#1", directory=_machine(tmp_path, "a")) as a, \
            Ledger(url, workspace="ws#1", directory=_machine(tmp_path, "b")) as b:
        cache = tmp_path / "b" / ".toolkit" / "ledger-cache"
        for n in (20, 30, 40):   # a syncs three times; b plans after each
            acknowledge_all_rows(plan(make_export(n), mapping, a), a)
            a.materialize()
            # diff_at="local": b reads the state out, so its cache has something to prune
            assert plan(make_export(n), mapping, b, diff_at="local").is_empty
            cached = sorted(p.name for p in cache.rglob("*.parquet"))
            # the current snapshot and b's own convergence record (its plan had nothing to send)
            record = json.loads(b._meta("converged"))
            assert cached == sorted([b._meta("state_file"), record["left_out"]]), cached
