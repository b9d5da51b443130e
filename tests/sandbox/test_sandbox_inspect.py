"""Sandbox inspection (profiles, events, cohorts, request log, data points, reset, displays) and the
`python -m toolkit sandbox` command run as a subprocess."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import requests

from toolkit.errors import SandboxError
from toolkit.sandbox import BrazeSandbox, cli

ROOT = Path(__file__).resolve().parents[2]
T = "2024-03-01T12:00:00Z"


def test_profiles_columns_identifiers_then_fields_then_attributes(sb, api):
    api.track(attributes=[{"external_id": "u1", "zeta": 1, "alpha": "a", "first_name": "Ada",
                           "email": "ada@example.com"},
                          {"user_alias": {"alias_name": "n", "alias_label": "l"},
                           "_update_existing_only": False, "alpha": "b"}])
    frame = sb.profiles()
    assert list(frame.columns) == ["external_id", "braze_id", "alias_name", "alias_label", "email",
                                   "phone", "first_name", "alpha", "zeta"]
    assert frame["alpha"].tolist() == ["a", "b"]
    assert frame["braze_id"].str.len().tolist() == [24, 24]


def test_events_request_log_and_empty_frames(sb, api):
    assert list(sb.events().columns) == ["external_id", "braze_id", "alias_name", "alias_label",
                                         "email", "phone", "name", "time", "properties", "app_id"]
    assert sb.cohorts().empty and sb.request_log().empty and sb.profiles().empty
    api.track(events=[{"external_id": "u1", "name": "Trait Computed", "time": T,
                       "properties": {"trait_key": "ltv", "ltv": 12.5}}])
    events = sb.events()
    assert events.loc[0, "name"] == "Trait Computed"
    assert events.loc[0, "properties"] == {"trait_key": "ltv", "ltv": 12.5}
    assert isinstance(events.loc[0, "time"], pd.Timestamp) and str(events["time"].dt.tz) == "UTC"
    log = sb.request_log()
    assert list(log.columns) == ["time", "endpoint", "status", "objects", "data_points", "fault",
                                 "skipped", "note"]
    assert log.iloc[0][["endpoint", "status", "objects", "data_points"]].tolist() == [
        "/users/track", 201, 1, 1]


def test_reset_forgets_state_and_type_locks(sb, api):
    api.track(attributes=[{"external_id": "u1", "n": 1}])
    sb.reset()
    assert sb.profiles().empty and sb.data_points == 0 and sb.request_log().empty
    status, body, _ = api.track(attributes=[{"external_id": "u1", "n": "now a string"}])
    assert status == 201 and "errors" not in body


def test_displays_show_fingerprint_not_key(sb):
    assert sb.api_key not in repr(sb) and sb.key_fingerprint in repr(sb)
    html = sb._repr_html_()
    assert sb.url in html and sb.api_key not in html


def test_constructor_validation():
    with pytest.raises(SandboxError):
        BrazeSandbox(max_objects_per_array=0)
    with pytest.raises(SandboxError):
        BrazeSandbox(combined_limit=-1)
    with BrazeSandbox("given-key") as sb:
        assert sb.api_key == "given-key"
        with pytest.raises(SandboxError, match="unknown endpoint"):
            sb.set_rate_limit("/users/trak", 5, 1)
        with pytest.raises(SandboxError, match="unknown endpoint"):
            sb.set_faults(rate_500=0.5, endpoints=["/user/track"])
    with pytest.raises(SandboxError, match="unknown endpoint"):
        BrazeSandbox(rate_limits={"/users/trak": (5, 1)})


def test_toolkit_exports_the_sandbox():
    import toolkit

    assert toolkit.BrazeSandbox is BrazeSandbox


# ---------------------------------------------------------------- CLI
def _parse(*argv):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_parses_rate_limits_and_faults():
    args = _parse("--rate-limit", "10/2", "--rate-limit", "/users/export/ids=5/60",
                  "--fault-429", "0.1", "--fault", "drop-after=0.2", "--slow-seconds", "1")
    assert cli._rate_limits(args.rate_limit) == {"/users/track": (10, 2.0),
                                                 "/users/export/ids": (5, 60.0)}
    faults = cli._faults(args)
    assert faults["rate_429"] == 0.1 and faults["rate_drop_after"] == 0.2
    with pytest.raises(SandboxError, match="N/SECONDS"):
        cli._rate_limits(["ten per second"])
    with pytest.raises(SandboxError, match="unknown kind"):
        cli._faults(_parse("--fault", "teapot=1"))


def test_cli_subprocess_prints_url_first_serves_and_stops_on_sigterm():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "sandbox", "--port", "0",
                             "--api-key", "cli-key", "--rate-limit", "7/60", "--seed", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=env)
    try:
        first = proc.stdout.readline().strip()
        assert first.startswith("SANDBOX_URL=http://127.0.0.1:")
        url = first.split("=", 1)[1]
        assert proc.stdout.readline().strip() == "SANDBOX_API_KEY=cli-key"
        r = requests.post(url + "/users/track", timeout=10,
                          headers={"Authorization": "Bearer cli-key"},
                          json={"attributes": [{"external_id": "u", "a": 1}]})
        assert r.status_code == 201 and r.headers["x-ratelimit-limit"] == "7"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert "1 requests" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
