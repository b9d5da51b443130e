"""Retries are summarised, not narrated: no line on stderr per retry. Each retry's details are
logged at DEBUG, one line per request that needed retries at INFO, and the counts are in
`client.stats` (which the sync report prints)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from .scripted import Step

ROOT = Path(__file__).resolve().parents[2]
ATTRS = [{"external_id": "u1", "vip": True}]


def _records(caplog, level):
    return [r for r in caplog.records if r.name.startswith("toolkit.braze") and r.levelno == level]


def test_each_retry_at_debug_one_info_line_per_retried_request(fake, make_client, caplog):
    # request 1: two 503s then success; request 2: no retry; request 3: a 429 then success
    fake.script("/users/track", Step(503, {"message": "busy"}), Step(503, None), Step(201),
                Step(201), Step(429, {"message": "Rate Limited"}, {"Retry-After": "0"}),
                Step(201))
    client = make_client()
    with caplog.at_level(logging.DEBUG, logger="toolkit.braze"):
        for _ in range(3):
            client.track(attributes=ATTRS)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    retries = [r for r in _records(caplog, logging.DEBUG) if "retrying in" in r.getMessage()]
    assert len(retries) == 3 == client.stats.retries
    summaries = [r.getMessage() for r in _records(caplog, logging.INFO)]
    assert len(summaries) == 2 == client.stats.retried_requests, summaries
    assert "3 attempts" in summaries[0] and "HTTP 503 ×2" in summaries[0]
    assert "2 attempts" in summaries[1] and "HTTP 429" in summaries[1]


def test_a_request_that_fails_after_its_retries_gets_one_info_line(fake, make_client, caplog):
    fake.script("/users/track", *[Step(500, {"message": "boom"})] * 3)
    client = make_client(max_retries=2)
    with caplog.at_level(logging.DEBUG, logger="toolkit.braze"):
        try:
            client.track(attributes=ATTRS)
        except Exception:  # noqa: BLE001 - the error itself is tested elsewhere
            pass
    (summary,) = [r.getMessage() for r in _records(caplog, logging.INFO)]
    assert "failed after 3 attempts" in summary and "HTTP 500 ×3" in summary
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_faulty_run_prints_no_line_per_retry_on_stderr(tmp_path):
    """As a user runs it: no logging set up, a sandbox answering 30% of requests with faults.
    Python's last-resort handler prints WARNING and above on stderr: no retry line may reach it."""
    script = textwrap.dedent("""
        import sys
        from toolkit.braze.client import BrazeClient
        from toolkit.sandbox.server import BrazeSandbox

        with BrazeSandbox(seed=4, faults={"rate_500": 0.1, "rate_503": 0.1,
                                          "rate_drop_before": 0.1}) as sb:
            client = BrazeClient.for_sandbox(sb, backoff=(0.001, 0.005), seed=1)
            for i in range(60):
                client.track(attributes=[{"external_id": f"u{i}", "n": i}])
            stats = client.stats
            client.close()
        print(stats.retries, stats.retried_requests)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    retries, retried = map(int, out.stdout.split())
    assert retries >= 10 and retried >= 10, "the faults should have caused retries"
    assert out.stderr.splitlines() == [], out.stderr[-2000:]
