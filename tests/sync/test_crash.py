"""Crash and resume with a real killed process: `apply` runs in a subprocess against the sandbox
in this process, is SIGKILLed mid-sync, and the same plan is applied again from here."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import toolkit

from .builders import AUDIENCES, make_export
from toolkit.braze.client import BrazeClient
from toolkit.mapping import Mapping
from toolkit.sandbox.server import BrazeSandbox
from toolkit.sync.apply import apply
from toolkit.sync.ledger import Ledger
from toolkit.sync.plan import plan

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import sys
from toolkit.braze.client import BrazeClient
from toolkit.sync.apply import apply
client = BrazeClient(sys.argv[1], sys.argv[2], env_file=None, interactive=False)
apply(sys.argv[3], client, sys.argv[4], progress=False)
print("FINISHED", flush=True)
"""


def _acknowledged(ledger_path: Path, plan_id: str, kind: str) -> int:
    conn = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT COUNT(*) FROM batches WHERE plan = ? AND kind = ? AND "
                            "status = 'acknowledged'", (plan_id, kind)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def _kill_mid_sync(sb, p, plan_file, ledger_path, kind, after) -> int:
    """Run apply in a child process and SIGKILL it once ``after`` ``kind`` batches are in."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen([sys.executable, "-c", CHILD, sb.url, sb.api_key, str(plan_file),
                              str(ledger_path)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if child.poll() is not None:
                pytest.fail("apply finished before it could be killed: "
                            + child.stderr.read().decode()[-2000:])
            if ledger_path.exists() and _acknowledged(ledger_path, p.id, kind) >= after:
                break
            time.sleep(0.01)
        else:
            pytest.fail("apply made no progress within 60 s")
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    time.sleep(0.3)  # requests already inside the sandbox finish (and land) after the kill
    return _acknowledged(ledger_path, p.id, kind)


def _planned_events(p) -> pd.Series:
    ev = p.operations[p.operations["op"] == "event"]
    return ev.assign(external_id=ev["uid"].str.split(":", n=1).str[1]).groupby(
        ["external_id", "name"]).size().sort_index()


def _braze_events(sb) -> pd.Series:
    return sb.events().groupby(["external_id", "name"]).size().sort_index()


def _assert_attributes_match(sb, p) -> None:
    attrs = sb.profiles().set_index("external_id")
    ops = p.operations[p.operations["op"] == "attribute"]
    for uid, name, value in zip(ops["uid"], ops["name"], ops["value"]):
        assert attrs.loc[uid.split(":", 1)[1], name] == json.loads(value), (uid, name)


@pytest.fixture
def crash_setup(tmp_path):
    export = make_export(1200, seed=11)
    mapping = Mapping.from_export(export)
    for key in AUDIENCES:
        mapping = mapping.set(key, send_as="both")
    # every request takes 30 ms inside the sandbox, so the kill lands with requests in flight
    with BrazeSandbox(seed=5, faults={"rate_slow": 1.0, "slow_seconds": 0.03,
                                      "endpoints": ("/users/track",)}) as sb:
        client = BrazeClient.for_sandbox(sb)
        ledger_path = tmp_path / "ledger.sqlite"
        with Ledger(path=ledger_path, workspace=client.workspace) as led:
            p = plan(export, mapping, led, workspace=client, create_users=True, batch_size=15)
        p.approve(by="tester")
        plan_file = p.save(tmp_path / "plan.json")
        yield sb, client, p, plan_file, ledger_path, export, mapping
        client.close()


def test_killed_during_attributes_resumes_without_resending_acknowledged(crash_setup):
    sb, client, p, plan_file, ledger_path, _export, _mapping = crash_setup
    done = _kill_mid_sync(sb, p, plan_file, ledger_path, "attributes", after=10)
    attribute_batches = sum(1 for b in p.batches() if b.kind == "attributes")
    assert 10 <= done < attribute_batches
    sb.set_faults(None)
    requests_before = int((sb.request_log()["endpoint"] == "/users/track").sum())
    with Ledger(path=ledger_path, workspace=client.workspace) as led:
        report = apply(p, client, led, progress=False)
    assert report.status == "complete" and report.counts["batches_skipped"] >= done
    resent = int((sb.request_log()["endpoint"] == "/users/track").sum()) - requests_before
    assert resent == len(p.batches()) - report.counts["batches_skipped"]
    _assert_attributes_match(sb, p)
    assert _braze_events(sb).equals(_planned_events(p)), "every event exactly once"


def test_killed_during_events_never_duplicates_an_event(crash_setup):
    sb, client, p, plan_file, ledger_path, export, mapping = crash_setup
    _kill_mid_sync(sb, p, plan_file, ledger_path, "events", after=8)
    sb.set_faults(None)
    planned = _planned_events(p)
    with Ledger(path=ledger_path, workspace=client.workspace) as led:
        report = apply(p, client, led, progress=False)
        _assert_attributes_match(sb, p)
        held = {r["batch"] for r in report.uncertain}
        # batches in flight at the kill: their fate is unknown, so they were not resent
        assert held and report.exit_code == 3       # awaiting settle
        counts = _braze_events(sb).reindex(planned.index, fill_value=0)
        assert (counts <= planned).all(), "no event was sent twice"
        # what really happened to each batch in flight, seen in the sandbox's event log
        by_id = {b.id: b for b in p.batches()}
        truth = {}
        for row in led.uncertain_events().itertuples():
            b = by_id[row.batch]
            ops = p.operations.iloc[b.start:b.stop]
            keys = list(zip(ops["uid"].str.split(":", n=1).str[1], ops["name"]))
            landed = all(counts.get(k, 0) >= 1 for k in keys)
            assert landed or not any(counts.get(k, 0) for k in keys), "a batch lands whole"
            truth[row.batch] = "landed" if landed else "not landed"
        # settle decides each from Braze's read-back (no read delay here, so no wait)
        settled = toolkit.settle(led, client, wait=0)
        assert {d["batch"]: d["decision"] for d in settled.decisions} == truth
        assert settled.exit_code == 0 and led.uncertain_events().empty
        # what did not land is planned again, once; what landed is not
        follow_up = plan(export, mapping, led, workspace=client, create_users=True)
        assert set(follow_up.operations["op"]) <= {"event"}
        apply(follow_up.approve(by="tester"), client, led, progress=False)
        assert plan(export, mapping, led, workspace=client, create_users=True).is_empty
    assert _braze_events(sb).equals(planned), "Braze holds every planned event exactly once"
