"""The sync commands: plan → approve → apply → verify from the command line, exit codes, demo."""
from __future__ import annotations

import json

import pytest

from toolkit.cli import main
from toolkit.sync.cli import sample_export_path


@pytest.fixture
def sample():
    return str(sample_export_path())


@pytest.fixture
def cli_env(sandbox, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SANDBOX_URL", sandbox.url)
    monkeypatch.setenv("SANDBOX_API_KEY", sandbox.api_key)
    for name in ("BRAZE_API_KEY", "BRAZE_REST_ENDPOINT", "BRAZE_PARTNER_API_KEY",
                 "BRAZE_DATA_IMPORT_KEY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_plan_approve_apply_verify(cli_env, sandbox, sample, capsys):
    assert main(["plan", sample, "--sandbox", "--create-users", "--out", "plan.json"]) == 0
    out = capsys.readouterr().out
    assert sandbox.api_key not in out
    assert "data points" in out and "approve it with" in out
    assert main(["apply", "plan.json", "--sandbox", "--no-progress"]) == 2
    assert "not approved" in capsys.readouterr().err
    assert len(sandbox.request_log()) == 0, "a refused plan sends nothing"
    assert main(["approve", "plan.json", "--by", "Ana", "--expires", "2h"]) == 0
    assert json.loads((cli_env / "plan.json").read_text())["approval"]["by"] == "Ana"
    assert main(["apply", "plan.json", "--sandbox", "--report", "report.json",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "complete" in out
    assert main(["verify", "report.json", "--sandbox", "--sample", "20"]) == 0
    assert "OK" in capsys.readouterr().out
    # the same plan again: every batch is already acknowledged, nothing is resent
    requests = len(sandbox.request_log())
    assert main(["apply", "plan.json", "--sandbox", "--no-progress"]) == 0
    assert len(sandbox.request_log()) == requests
    # and a new plan is empty
    assert main(["plan", sample, "--sandbox", "--create-users", "--out", "again.json"]) == 0
    out = capsys.readouterr().out
    assert "nothing to send" in out
    saved = "".join((cli_env / f).read_text() for f in ("plan.json", "again.json",
                                                        "report.json"))
    assert sandbox.api_key not in saved


def test_partial_rejects_exit_1(cli_env, sandbox, client, sample, capsys):
    client.track(attributes=[{"external_id": "someone-else", "vip_customer": "text"}])
    assert main(["plan", sample, "--sandbox", "--create-users", "--out", "p.json"]) == 0
    assert main(["approve", "p.json", "--by", "Ana"]) == 0
    assert main(["apply", "p.json", "--sandbox", "--no-progress"]) == 1
    assert "rejected" in capsys.readouterr().out


def test_a_damaged_plan_file_exits_2_naming_the_field(cli_env, capsys):
    (cli_env / "bad.json").write_text(json.dumps({"format": "engage-braze-plan",
                                                  "format_version": 2}))
    assert main(["approve", "bad.json", "--by", "Ana"]) == 2
    assert "ledger_version" in capsys.readouterr().err


def test_demo_runs_the_whole_flow(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Demo finished" in out and "nothing to send" in out
    assert "VerifyReport" in out and "OK" in out
