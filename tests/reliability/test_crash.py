"""Crash campaign: a real `python -m toolkit apply` process is SIGKILLed at random points of a
sync (after a seeded number of batches, watched in the ledger, or after a seeded delay), resumed,
killed again…; then the operator settles uncertain event batches by checking the sandbox. The
sandbox must end with exactly the planned state, every event once, and the ledger agreeing.
A corrupt or locked ledger stops apply with a `LedgerError` naming the file, before anything is
sent.
"""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from reliability_harness import (REPO, Settlement, check_state, decide_uncertain,
                                 duplicated_events, fresh_ledger_url, make_plan, sample_export,
                                 sample_mapping)
from toolkit.braze.client import BrazeClient
from toolkit.errors import LedgerError
from toolkit.sandbox.server import BrazeSandbox
from toolkit.sync.apply import apply
from toolkit.sync.journal import _split_url, is_ledger_url
from toolkit.sync.ledger import Ledger
from toolkit.sync.plan import Plan

PYTHON = sys.executable
SLOW_S = 0.02          # every /users/track answer takes this long, so kills land mid-sync
BATCH_SIZE = 25


def _env(sb: BrazeSandbox) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRAZE_", "SANDBOX_"))}
    env.update(SANDBOX_API_KEY=sb.api_key, PYTHONPATH=str(REPO))
    return env


def _apply_cmd(plan: Path, sb: BrazeSandbox, ledger: Path) -> list[str]:
    return [PYTHON, "-m", "toolkit", "apply", str(plan), "--sandbox", sb.url, "--ledger",
            str(ledger), "--no-progress", "--workers", "2", "--env-file", os.devnull]


def _progress(ledger: "Path | str", plan_id: str) -> int:
    """Batches of the plan that left (sent or answered), read without disturbing the writer."""
    if is_ledger_url(ledger):
        url, schema = _split_url(str(ledger), None)
        try:
            with psycopg.connect(url, connect_timeout=5, autocommit=True) as con:
                return con.execute(f'SELECT COUNT(*) FROM "{schema}".batches WHERE plan = %s '
                                   "AND status != 'pending'", (plan_id,)).fetchone()[0]
        except psycopg.Error:
            return 0
    try:
        con = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=0.05)
        try:
            return con.execute("SELECT COUNT(*) FROM batches WHERE plan = ? AND status != "
                               "'pending'", (plan_id,)).fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _run_and_kill(cmd, env, cwd, *, ledger: Path, plan_id: str, after_batches: int | None,
                  after_seconds: float | None) -> tuple[bool, int]:
    """Start apply; SIGKILL it once the ledger shows ``after_batches`` batches gone (or after
    ``after_seconds``). Returns (killed, batches gone at the kill)."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    started = time.monotonic()
    try:
        while proc.poll() is None:
            gone = _progress(ledger, plan_id)
            if (after_batches is not None and gone >= after_batches) or (
                    after_seconds is not None and time.monotonic() - started >= after_seconds):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True, gone
            if time.monotonic() - started > 60:
                raise AssertionError("apply did not finish within 60 s")
            time.sleep(0.002)
        err = proc.stderr.read().decode()
        assert proc.returncode in (0, 1, 3), f"apply failed ({proc.returncode}): {err}"
        return False, _progress(ledger, plan_id)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def _settle(sb, client, ledger, export, mapping, first: Plan) -> Settlement:
    """The operator after the crashes: decide uncertain event batches by looking in the
    sandbox, then plan + apply until nothing is left."""
    out = Settlement()
    plans = {first.id: first}
    for _ in range(8):
        out.rounds += 1
        time.sleep(SLOW_S * 3)             # requests a killed process left in flight land
        decide_uncertain(sb, ledger, plans, out)
        p = make_plan(export, mapping, ledger, client, batch_size=BATCH_SIZE)
        if p.is_empty and not len(ledger.uncertain_events()):
            return out
        p.approve(by="operator", expires_in="1h")
        plans[p.id] = p
        out.reports.append(apply(p, client, ledger, progress=False))
    raise AssertionError("did not settle")


@pytest.mark.slow
@pytest.mark.parametrize("seed,where", [(1, "sqlite"), (2, "sqlite"), (3, "postgresql")])
def test_sigkill_at_random_points_then_resume(seed, where, tmp_path, request):
    """The ``postgresql`` run keeps the ledger on the test server: each killed apply's advisory
    lock goes with its session, so the next one starts at once and resumes."""
    rng = random.Random(seed)
    export = sample_export()
    mapping = sample_mapping(export)
    with BrazeSandbox(seed=seed, faults={"rate_slow": 1.0, "slow_seconds": SLOW_S,
                                         "endpoints": ("/users/track",)}) as sb:
        client = BrazeClient.for_sandbox(sb)
        ledger_path = (fresh_ledger_url(request.getfixturevalue("postgres_url"))
                       if where == "postgresql" else tmp_path / "ledger.sqlite")
        with Ledger(path=ledger_path, workspace=client.workspace) as ledger:
            first = make_plan(export, mapping, ledger, client, batch_size=BATCH_SIZE)
        first.approve(by="tester", expires_in="1h")
        plan_path = first.save(tmp_path / "plan.json")
        total = len(first.batches())
        # kill points: seeded batch counts spread over the sync, plus seeded early delays
        # (which land while the process starts, loads the plan or opens the ledger)
        targets = sorted(rng.sample(range(1, total), 10))
        plan_of_kills = [("batches", t) for t in targets]
        plan_of_kills.insert(rng.randrange(len(plan_of_kills)), ("seconds", rng.uniform(0.1, 0.6)))
        cmd, env = _apply_cmd(plan_path, sb, ledger_path), _env(sb)
        kills = []
        for how, at in plan_of_kills:
            killed, gone = _run_and_kill(
                cmd, env, tmp_path, ledger=ledger_path, plan_id=first.id,
                after_batches=at if how == "batches" else None,
                after_seconds=at if how == "seconds" else None)
            if killed:
                kills.append((how, at, gone))
        finished, _ = _run_and_kill(cmd, env, tmp_path, ledger=ledger_path, plan_id=first.id,
                                    after_batches=None, after_seconds=None)
        assert not finished
        assert len(kills) >= 10, kills
        assert duplicated_events(sb) == 0
        with Ledger(path=ledger_path, workspace=client.workspace) as ledger:
            statuses = ledger.batches(first.id)["status"].value_counts().to_dict()
            settlement = _settle(sb, client, ledger, export, mapping, first)
            check = check_state(sb, ledger, first)
        client.close()
    assert check.mismatches == 0, check.examples
    assert check.duplicated_events == 0
    assert statuses.get("pending", 0) == 0, statuses
    print(f"seed {seed}: {len(kills)} kills {kills}; final statuses {statuses}; "
          f"uncertain decided: {settlement.resolved_landed} landed, "
          f"{settlement.resolved_not_landed} not")


# ---------------------------------------------------------------------------------------------
# a damaged or busy ledger


@pytest.fixture
def approved(tmp_path):
    export = sample_export()
    mapping = sample_mapping(export)
    with BrazeSandbox(seed=3) as sb:
        client = BrazeClient.for_sandbox(sb)
        path = tmp_path / "ledger.sqlite"
        with Ledger(path=path, workspace=client.workspace) as ledger:
            p = make_plan(export, mapping, ledger, client)
        p.approve(by="tester", expires_in="1h")
        plan_path = p.save(tmp_path / "plan.json")
        yield sb, client, p, plan_path, path
        client.close()


def _corrupt_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:100] = os.urandom(100)
    path.write_bytes(bytes(data))


def _corrupt_pages(path: Path) -> None:
    with sqlite3.connect(path) as con:       # fold the WAL in, so the pages are in the file
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    assert len(data) >= 4096 * 3
    data[4096 * 1 + 8: 4096 * 3] = b"\xff" * (4096 * 2 - 8)
    path.write_bytes(bytes(data))


def _not_sqlite(path: Path) -> None:
    path.write_text("this is not a database\n" * 50)


@pytest.mark.parametrize("damage", [_corrupt_header, _corrupt_pages, _not_sqlite],
                         ids=["header", "pages", "text"])
def test_corrupt_ledger_is_refused_naming_the_file(approved, damage, tmp_path):
    sb, client, p, plan_path, ledger_path = approved
    damage(ledger_path)
    with pytest.raises(LedgerError) as info:
        apply(p, client, str(ledger_path), progress=False)
    assert info.value.file == str(ledger_path)
    assert "ledger" in info.value.message and info.value.hint
    # the command line says the same, on one line, with exit code 2
    out = subprocess.run(_apply_cmd(plan_path, sb, ledger_path), env=_env(sb), cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    assert str(ledger_path) in out.stderr and "Traceback" not in out.stderr
    assert len(sb.request_log()) == 0


def test_locked_ledger_is_refused_before_sending(approved):
    sb, client, p, _, ledger_path = approved
    holder = sqlite3.connect(ledger_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with Ledger(path=ledger_path, workspace=client.workspace, timeout=0.3) as ledger:
            t0 = time.monotonic()
            with pytest.raises(LedgerError) as info:
                apply(p, client, ledger, progress=False)
            assert time.monotonic() - t0 < 5
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert info.value.file == str(ledger_path) and "locked" in info.value.message
    assert len(sb.request_log()) == 0


def test_ledger_locked_mid_apply_stops_clearly_and_resumes_without_duplicates(approved):
    """Another writer grabs the ledger after a few batches: apply stops with a LedgerError;
    the batch whose answer could not be recorded stays 'sent' (uncertain); after the lock is
    gone, resuming and settling leaves exactly the planned state."""
    sb, client, p, _, ledger_path = approved
    export = sample_export()
    mapping = sample_mapping(export)
    holder = sqlite3.connect(ledger_path, isolation_level=None, check_same_thread=False)
    locked, stop = threading.Event(), threading.Event()

    def grab_after_five_requests():
        while not stop.is_set():
            if len(sb.request_log()) >= 5:
                holder.execute("BEGIN EXCLUSIVE")
                locked.set()
                return
            time.sleep(0.001)

    sb.set_faults(rate_slow=1.0, slow_seconds=SLOW_S, endpoints=("/users/track",))
    grabber = threading.Thread(target=grab_after_five_requests)
    with Ledger(path=ledger_path, workspace=client.workspace, timeout=0.3) as ledger:
        grabber.start()
        try:
            with pytest.raises(LedgerError) as info:
                apply(p, client, ledger, progress=False)
        finally:
            stop.set()
            grabber.join()
        assert locked.is_set()
        assert info.value.file == str(ledger_path) and "locked" in info.value.message
        holder.execute("ROLLBACK")
        holder.close()
        sb.set_faults(None)
        statuses = ledger.batch_statuses(p.id)
        assert "sent" in statuses.values()
        second = apply(p, client, ledger, progress=False)
        assert second.status in ("complete", "partial")
        _settle(sb, client, ledger, export, mapping, p)
        check = check_state(sb, ledger, p)
    assert check.mismatches == 0, check.examples
    assert check.duplicated_events == 0


def test_ledger_of_another_workspace_is_refused(approved, tmp_path):
    sb, client, p, _, ledger_path = approved
    other = tmp_path / "other.sqlite"
    Ledger(path=other, workspace="https://rest.iad-03.braze.com#0badc0de").close()
    with pytest.raises(LedgerError) as info:
        apply(p, client, str(other), progress=False)
    assert info.value.file == str(other)
    assert len(sb.request_log()) == 0


def test_a_closed_ledger_still_describes_itself(tmp_path):
    """A notebook that displays a ledger after closing it gets a description, not an error."""
    ledger = Ledger(path=tmp_path / "l.sqlite", workspace="http://127.0.0.1:1#00000000")
    ledger.close()
    assert "l.sqlite" in repr(ledger)
    assert "l.sqlite" in ledger._repr_html_()


def test_two_applies_of_one_plan_at_once_never_double_send(tmp_path):
    """A scheduled run and a manual run overlap: both start `apply` on the same plan and
    ledger. At most one may send; the other must stop with a clear ledger error (exit 2) —
    otherwise every event is sent twice."""
    export = sample_export()
    mapping = sample_mapping(export)
    with BrazeSandbox(seed=5, faults={"rate_slow": 1.0, "slow_seconds": SLOW_S,
                                      "endpoints": ("/users/track",)}) as sb:
        client = BrazeClient.for_sandbox(sb)
        ledger_path = tmp_path / "ledger.sqlite"
        with Ledger(path=ledger_path, workspace=client.workspace) as ledger:
            p = make_plan(export, mapping, ledger, client, batch_size=BATCH_SIZE)
        p.approve(by="tester", expires_in="1h")
        plan_path = p.save(tmp_path / "plan.json")
        cmd, env = _apply_cmd(plan_path, sb, ledger_path), _env(sb)
        procs = [subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(pr.wait(timeout=120), pr.stderr.read()) for pr in procs]
        for pr in procs:
            pr.stdout.close()
            pr.stderr.close()
        duplicated = duplicated_events(sb)
        client.close()
    assert duplicated == 0, f"{duplicated} events recorded twice by two concurrent applies"
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] in (0, 2), results
    refused = [err for code, err in results if code == 2]
    assert all(str(ledger_path) in err for err in refused), refused
