"""The sync commands: plan → approve → apply → verify from the command line, exit codes, demo."""
from __future__ import annotations

import json

import pytest

from toolkit.cli import main
from toolkit.sync.plan import PLAN_FORMAT_VERSION
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
                                                  "format_version": PLAN_FORMAT_VERSION}))
    assert main(["approve", "bad.json", "--by", "Ana"]) == 2
    assert "ledger_version" in capsys.readouterr().err


def test_demo_runs_the_whole_flow(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Demo finished" in out and "nothing to send" in out
    assert "VerifyReport" in out and "OK" in out


def test_the_readme_cli_example_runs_as_written(cli_env, sandbox, client, sample, capsys):
    """README's scheduled-run block, line by line, against the sandbox (plus --sandbox), which
    already knows the shop's users as a real workspace would (the plan updates users only)."""
    from pathlib import Path

    from toolkit.engage.readers import load
    from toolkit.mapping import Mapping

    users = load(sample).profiles["user_id"].dropna().unique().tolist()
    for start in range(0, len(users), 75):
        client.track(attributes=[{"external_id": u, "known_to_braze": True}
                                 for u in users[start:start + 75]])

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = readme.split("The CLI does the same for scheduled runs:", 1)[1].split("```")[1]
    lines = [line.split("#", 1)[0].split() for line in block.strip().splitlines()]
    assert [words[3] for words in lines] == ["plan", "approve", "apply", "verify", "settle"]
    Mapping.from_export(load(sample)).set("vip_customer", send_as="both").save("mapping.yml")
    for words in lines:
        assert words[:3] == ["python", "-m", "toolkit"]
        argv = [sample if w == "EXPORT" else "Ana" if w == "NAME" else w for w in words[3:]]
        if argv[0] != "approve":
            argv.append("--sandbox")
        code = main(argv)
        out = capsys.readouterr().out
        assert code == 0, (argv, out)
    assert "Nothing to settle" in out
    table = readme.split("Exit codes:", 1)[1].split("\n\n", 2)[1]
    assert [row.split("|")[1].strip() for row in table.splitlines()[2:]] == ["0", "1", "2", "3"]


def test_apply_writes_its_report_next_to_the_plan(cli_env, sandbox, sample, capsys):
    assert main(["plan", sample, "--sandbox", "--create-users", "--out", "daily.json"]) == 0
    assert main(["approve", "daily.json", "--by", "Ana"]) == 0
    assert main(["apply", "daily.json", "--sandbox", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert (cli_env / "daily.report.json").exists()
    assert "python -m toolkit verify daily.report.json" in out
    assert main(["verify", "daily.report.json", "--sandbox"]) == 0
