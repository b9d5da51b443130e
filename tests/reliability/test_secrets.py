"""Secrets never leak: recognisable fake keys (``…LEAKCANARY…``) are set as the REST API key and
the partner keys, then the demo, the CLI (plan/approve/apply/verify, with failures), the API with
every log record captured, a hostile server that echoes keys back, the guided-sync wizard run
headless and every notebook (executed copies) are searched: no stdout/stderr, log record,
exception text, repr, saved plan, report, ledger byte or notebook file may hold a key. Plain
http:// is refused for any host that is not loopback.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import toolkit
from reliability_harness import REPO, SAMPLE, sample_export
from toolkit.braze.client import BrazeClient
from toolkit.errors import BrazeAPIError, ConfigError, ToolkitError
from toolkit.mapping import Mapping
from toolkit.sandbox.server import BrazeSandbox
from toolkit.sync.ledger import Ledger

API_KEY = "sk-LEAKCANARY-5f0c2a9e-7b3d-4c18-a6e2-93d1b7a0c4f1"
PARTNER_KEY = "pk-LEAKCANARY-partner-91d2c0ffee"
CLIENT_SECRET = "cs-LEAKCANARY-secret-7e44beef"
WRONG_KEY = "sk-LEAKCANARY-wrong-0000-1111-2222"
NEEDLE = b"leakcanary"          # matched case-insensitively, in text and in bytes


def leaks(*items) -> list[str]:
    """Which of ``items`` (text, bytes or any object via repr) contain a canary."""
    found = []
    for item in items:
        if isinstance(item, bytes):
            data = item
        else:
            data = (item if isinstance(item, str) else repr(item)).encode("utf-8", "replace")
        if NEEDLE in data.lower():
            at = data.lower().index(NEEDLE)
            found.append(data[max(0, at - 80): at + 40].decode("utf-8", "replace"))
    return found


def files_with_canary(root: Path) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and NEEDLE in path.read_bytes().lower():
            hits.append(str(path.relative_to(root)))
    return hits


def error_text(err: BaseException) -> list:
    parts = [str(err), repr(err), "".join(traceback.format_exception(err)), repr(err.__dict__)]
    for name in ("request", "response", "body", "hint"):
        parts.append(repr(getattr(err, name, None)))
    if hasattr(err, "_repr_html_"):
        parts.append(err._repr_html_())
    try:
        parts.append(pickle.dumps(err))
    except Exception as exc:  # noqa: BLE001 - unpicklable is fine, the reason must not leak
        parts.append(repr(exc))
    return parts


@pytest.fixture
def canary_env(monkeypatch):
    monkeypatch.setenv("BRAZE_API_KEY", API_KEY)
    monkeypatch.setenv("BRAZE_PARTNER_API_KEY", PARTNER_KEY)
    monkeypatch.setenv("BRAZE_DATA_IMPORT_KEY", CLIENT_SECRET)
    return dict(os.environ)


@pytest.fixture
def all_logs():
    """Every log record of every logger, formatted with its traceback."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))
            records.append(repr(record.args))

    handler = Keep(level=logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield records
    root.removeHandler(handler)
    root.setLevel(old)


@pytest.fixture
def canary_sandbox():
    with BrazeSandbox(API_KEY, seed=8, partner_api_key=PARTNER_KEY,
                      client_secret=CLIENT_SECRET) as sb:
        yield sb


MAPPING_RULES = {"vip_customer": {"send_as": "cohort"}, "dormant_shopper": {"send_as": "both"}}


def canary_mapping(export) -> Mapping:
    m = Mapping.from_export(export)
    for key, changes in MAPPING_RULES.items():
        m = m.set(key, **changes)
    return m


def _cli(args, env, cwd, *, ok=(0, 1)):
    out = subprocess.run([sys.executable, "-m", "toolkit", *args], env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode in ok, (args, out.returncode, out.stderr[-2000:])
    return out


def test_demo_does_not_print_any_key(canary_env, tmp_path):
    env = {**canary_env, "PYTHONPATH": str(REPO)}
    out = _cli(["demo", "--no-progress"], env, tmp_path, ok=(0,))
    assert "Demo finished" in out.stdout
    assert not leaks(out.stdout, out.stderr)
    assert not files_with_canary(tmp_path)


def test_cli_plan_approve_apply_verify_never_shows_a_key(canary_env, canary_sandbox, tmp_path):
    sb = canary_sandbox
    env = {**canary_env, "PYTHONPATH": str(REPO), "SANDBOX_API_KEY": API_KEY,
           "SANDBOX_PARTNER_API_KEY": PARTNER_KEY, "SANDBOX_CLIENT_SECRET": CLIENT_SECRET}
    canary_mapping(sample_export()).save(tmp_path / "mapping.yml")
    target = ["--sandbox", sb.url, "--ledger", "ledger.sqlite", "--env-file", os.devnull]
    outputs = [
        _cli(["plan", str(SAMPLE), "--mapping", "mapping.yml", "--out", "plan.json",
              "--create-users", *target], env, tmp_path),
        _cli(["approve", "plan.json", "--by", "tester"], env, tmp_path),
        _cli(["apply", "plan.json", "--report", "report.json", "--no-progress", *target], env,
             tmp_path, ok=(0,)),
        _cli(["verify", "report.json", *target], env, tmp_path, ok=(0,)),
    ]
    assert len(sb.cohorts()) == 1 and len(sb.events()) > 0     # the keys were really used
    # failures: a wrong REST key (verify refuses it), a wrong partner secret (401 on the cohort)
    wrong = {**env, "SANDBOX_API_KEY": WRONG_KEY}
    outputs.append(_cli(["verify", "report.json", *target], wrong, tmp_path, ok=(2,)))
    sb.reset()
    bad_partner = {**env, "SANDBOX_CLIENT_SECRET": "cs-LEAKCANARY-wrong-secret"}
    outputs += [
        _cli(["plan", str(SAMPLE), "--mapping", "mapping.yml", "--out", "plan2.json",
              "--create-users", "--ledger", "ledger2.sqlite", "--sandbox", sb.url,
              "--env-file", os.devnull], bad_partner, tmp_path),
        _cli(["approve", "plan2.json", "--by", "tester"], bad_partner, tmp_path),
        _cli(["apply", "plan2.json", "--report", "report2.json", "--no-progress", "--ledger",
              "ledger2.sqlite", "--sandbox", sb.url, "--env-file", os.devnull], bad_partner,
             tmp_path, ok=(1, 2)),
    ]
    # the workspace is the same (its identity does not depend on the key): Braze refuses the key
    assert "refused the API key" in outputs[4].stderr
    assert "Invalid client secret" in (tmp_path / "report2.json").read_text()
    for out in outputs:
        assert not leaks(out.stdout, out.stderr), out.args
    assert not files_with_canary(tmp_path)
    assert (tmp_path / "ledger.sqlite").exists() and (tmp_path / "plan.json").exists()


def test_api_objects_logs_and_files_hold_no_key(canary_env, canary_sandbox, all_logs, tmp_path):
    sb = canary_sandbox
    export = sample_export()
    client = BrazeClient(sb.url, API_KEY, env_file=None, backoff=(0.01, 0.02))
    seen = [repr(client), str(client), client._repr_html_(), repr(client.stats), client.workspace,
            repr(client.__dict__)]
    sb.set_faults(rate_500=0.2, rate_drop_after=0.1, endpoints=("/users/track",))
    with Ledger(client, directory=tmp_path) as ledger:
        p = toolkit.plan(export, canary_mapping(export), ledger, workspace=client,
                         create_users=True)
        p.approve(by="tester", expires_in="1h")
        report = toolkit.apply(p, client, ledger, progress=False)
        sb.set_faults(None)
        check = toolkit.verify(report, client, sample=20)
        cohort = client.cohort()
        seen += [repr(o) for o in (p, p.manifest, report, report.summary(), report.__dict__,
                                    check, check.__dict__, ledger, cohort, sb)]
        seen += [p._repr_html_(), report._repr_html_(), check._repr_html_(), ledger._repr_html_(),
                 sb._repr_html_()]
        p.save(tmp_path / "plan.json")
        report.save(tmp_path / "report.json")
    assert len(sb.cohorts()) == 1
    client.close()
    assert not leaks(*seen)
    assert not leaks(*all_logs)
    assert not files_with_canary(tmp_path)


# ---------------------------------------------------------------------------------------------
# a hostile server that echoes every secret it receives


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    script: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        status = self.script.pop(0) if self.script else 400
        echo = f"you sent {self.headers.get('Authorization')} and {body}"
        payload = json.dumps({"message": echo, "errors": [
            {"type": echo, "input_array": "attributes", "index": 0}]}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Echo", str(self.headers.get("Authorization")))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST


@pytest.fixture
def echo_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status", [400, 401, 403, 404, 500, 502])
def test_keys_echoed_back_by_a_server_are_redacted(echo_server, all_logs, status, tmp_path):
    url = f"http://127.0.0.1:{echo_server.server_address[1]}"
    client = BrazeClient(url, API_KEY, env_file=None, backoff=(0.001, 0.002), max_retries=1)
    _Echo.script = [status] * 10
    errors = []
    for call in (lambda: client.track(attributes=[{"external_id": "u1", "a": API_KEY}]),
                 lambda: client.export_ids(["u1"]),
                 lambda: client.cohort(PARTNER_KEY, CLIENT_SECRET).update_users("c", add=["u1"])):
        with pytest.raises(BrazeAPIError) as info:
            call()
        errors.append(info.value)
    texts = [t for e in errors for t in error_text(e)]
    assert any("redacted" in str(t).lower() or "REDACTED" in str(t) for t in texts)
    # API_KEY was also sent as an attribute *value* above: a value is data, and the echo of
    # the Authorization header and of the partner keys must still be redacted
    assert not leaks(*[t for t in texts]), leaks(*texts)[:2]
    assert not leaks(*all_logs)
    client.close()


def test_apply_against_an_echoing_server_reports_without_keys(echo_server, tmp_path, all_logs):
    url = f"http://127.0.0.1:{echo_server.server_address[1]}"
    client = BrazeClient(url, API_KEY, env_file=None, backoff=(0.001, 0.002), max_retries=1)
    export = sample_export()
    with Ledger(client, directory=tmp_path) as ledger:
        p = toolkit.plan(export, Mapping.from_export(export), ledger, workspace=client,
                         create_users=True)
        p.approve(by="tester", expires_in="1h")
        _Echo.script = [400] * 3 + [500] * 6
        report = toolkit.apply(p, client, ledger, progress=False)
        report.save(tmp_path / "report.json")
    client.close()
    assert report.rejected or report.counts["batches_failed"]
    assert not leaks(report, report._repr_html_(), report.summary(), *all_logs)
    assert not files_with_canary(tmp_path)


# ---------------------------------------------------------------------------------------------
# the wizard and the notebooks


def test_guided_sync_headless_shows_no_key(canary_env, canary_sandbox, monkeypatch, tmp_path,
                                           all_logs, capsys):
    from toolkit.notebook.wizard import GuidedSync

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BRAZE_REST_ENDPOINT", canary_sandbox.url)
    shown = []
    for target in ("sandbox", "workspace"):
        wizard = GuidedSync(target=target, background=False, plots=False,
                            output_dir=tmp_path / f"reports-{target}")
        state = wizard.state
        if target == "workspace":
            state.connect()
        state_after = wizard.run_all(rules=MAPPING_RULES, confirm=state.confirm_phrase or "")
        assert state_after.error is None, state_after.error
        assert state_after.verification is not None
        shown += [state_after.summary(), repr(state_after), state_after.__dict__,
                  wizard._repr_html_() if hasattr(wizard, "_repr_html_") else ""]
        wizard.close()
    assert len(canary_sandbox.cohorts()) == 1       # the workspace run used the partner keys
    captured = capsys.readouterr()
    assert not leaks(*shown, captured.out, captured.err, *all_logs)
    assert not files_with_canary(tmp_path)


@pytest.mark.slow
def test_every_notebook_runs_without_showing_a_key(canary_env, canary_sandbox, monkeypatch,
                                                   tmp_path):
    import papermill

    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert notebooks
    work = tmp_path / "notebooks"
    shutil.copytree(REPO / "notebooks", work)
    monkeypatch.chdir(work)
    monkeypatch.setenv("BRAZE_REST_ENDPOINT", canary_sandbox.url)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    for nb in notebooks:
        params = {}
        if nb.name.startswith("04"):
            # the scheduled run against "the workspace": the canary-keyed sandbox
            params = {"target": "workspace", "report_dir": str(tmp_path / "reports"),
                      "create_users": True}
        out = work / f"executed-{nb.name}"
        papermill.execute_notebook(str(work / nb.name), str(out), parameters=params,
                                   cwd=str(work), progress_bar=False, kernel_name="python3")
        assert not leaks(out.read_bytes()), nb.name
    assert len(canary_sandbox.events()) > 0            # notebook 04 really used the key
    assert not files_with_canary(tmp_path)


# ---------------------------------------------------------------------------------------------
# transport


@pytest.mark.parametrize("endpoint", [
    "http://rest.iad-03.braze.com", "http://rest.fra-01.braze.eu/", "http://10.0.0.5:8080",
    "http://192.168.1.20", "http://127.0.0.1.nip.io", "http://localhost.evil.example",
    "http://[2001:db8::1]:80", "HTTP://REST.IAD-01.BRAZE.COM"])
def test_plain_http_is_refused_for_remote_hosts(endpoint):
    with pytest.raises(ConfigError) as info:
        BrazeClient(endpoint, API_KEY, env_file=None)
    assert "http" in info.value.message and not leaks(*error_text(info.value))


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9", "http://localhost:9",
                                      "http://[::1]:9"])
def test_plain_http_is_allowed_for_loopback_only(endpoint):
    BrazeClient(endpoint, API_KEY, env_file=None).close()


def test_swapped_endpoint_and_key_are_refused_without_showing_the_key():
    """``BrazeClient(api_key, endpoint)`` — arguments swapped — must not turn the key into a
    host name (it would travel to DNS and into the workspace name, plans and ledger paths)."""
    with pytest.raises(ToolkitError) as info:
        BrazeClient(API_KEY, "https://rest.iad-03.braze.com", env_file=None)
    assert not leaks(*error_text(info.value))


def test_key_from_env_file_is_not_echoed_on_a_bad_line(tmp_path):
    env = tmp_path / ".env"
    env.write_text(f"BRAZE_REST_ENDPOINT=US-03\n{API_KEY}\n")
    with pytest.raises(ConfigError) as info:
        BrazeClient(env_file=str(env))
    assert info.value.line == 2 and not leaks(*error_text(info.value))
