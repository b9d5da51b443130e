"""The CLI on a team's shared ledger (issue 11): `--ledger postgresql://…` or BRAZE_LEDGER_URL (in
the environment or .env) in plan, apply and settle; two working directories are two analysts'
machines; the ledger's password never reaches stdout, stderr or a saved file."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from tests.pgserver import PASSWORD
from toolkit.cli import main
from toolkit.sync.cli import sample_export_path
from toolkit.sync.ledger import Ledger

ENV = ("BRAZE_API_KEY", "BRAZE_REST_ENDPOINT", "BRAZE_PARTNER_API_KEY", "BRAZE_DATA_IMPORT_KEY",
       "BRAZE_LEDGER_URL", "BRAZE_LEDGER_SCHEMA", "BRAZE_WORKSPACE")


@pytest.fixture
def team(sandbox, monkeypatch, tmp_path, postgres_url):
    """Two analysts' working directories and the URL of a fresh shared ledger schema."""
    monkeypatch.setenv("SANDBOX_URL", sandbox.url)
    monkeypatch.setenv("SANDBOX_API_KEY", sandbox.api_key)
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    folders = {name: tmp_path / name for name in ("ana", "ben")}
    for folder in folders.values():
        folder.mkdir()
    url = f"{postgres_url}?schema=cli_{uuid.uuid4().hex[:8]}"
    return folders, url


def _files_text(folder: Path) -> str:
    """Every file an analyst's run left behind, as text (the .env the analyst wrote excepted)."""
    return "".join(p.read_bytes().decode("latin-1") for p in folder.rglob("*")
                   if p.is_file() and p.name != ".env")


def test_two_working_directories_share_one_ledger_url(team, sandbox, monkeypatch, capsys):
    folders, url = team
    sample = str(sample_export_path())
    monkeypatch.chdir(folders["ana"])
    assert main(["plan", sample, "--sandbox", "--create-users", "--ledger", url,
                 "--out", "plan.json"]) == 0
    first = capsys.readouterr()
    shown = Ledger(url, workspace=f"sandbox@{sandbox.url}", directory=folders["ana"]).location
    assert f"ledger: {shown}" in first.out and "postgresql://toolkit:***@" in first.out
    manifest = json.loads((folders["ana"] / "plan.json").read_text())
    assert manifest["ledger_path"] == shown
    assert main(["approve", "plan.json", "--by", "Ana"]) == 0
    # apply finds the shared ledger's password in .env, as BRAZE_LEDGER_URL
    (folders["ana"] / ".env").write_text(f"BRAZE_LEDGER_URL={url}\n")
    assert main(["apply", "plan.json", "--sandbox", "--no-progress"]) == 0
    applied = capsys.readouterr()
    assert "complete" in applied.out
    sent = len(sandbox.request_log())
    assert sent > 0 and not (folders["ana"] / ".toolkit" / "ledger-sandbox.sqlite").exists()
    assert "BRAZE_LEDGER_URL" not in os.environ        # .env's value lasted only for the command

    # Ben, on another machine, plans the same export against the same URL: nothing to send
    monkeypatch.chdir(folders["ben"])
    assert main(["plan", sample, "--sandbox", "--create-users", "--ledger", url,
                 "--out", "plan.json"]) == 0
    second = capsys.readouterr()
    assert "nothing to send" in second.out and "0 operations" in second.out, second.out
    assert "diff ran on this machine" in second.out     # where the diff ran, and why
    assert len(sandbox.request_log()) == sent
    assert (folders["ben"] / ".toolkit" / "ledger-cache").is_dir()   # his own local cache

    for out in (first, applied, second):
        assert PASSWORD not in out.out and PASSWORD not in out.err
    for folder in folders.values():
        assert PASSWORD not in _files_text(folder)


def test_a_second_apply_is_refused_while_the_ledger_is_held(team, sandbox, monkeypatch, capsys):
    folders, url = team
    monkeypatch.chdir(folders["ana"])
    monkeypatch.setenv("BRAZE_LEDGER_URL", url)          # the default ledger of every command
    assert main(["plan", str(sample_export_path()), "--sandbox", "--create-users",
                 "--out", "plan.json"]) == 0
    assert main(["approve", "plan.json", "--by", "Ana"]) == 0
    capsys.readouterr()
    with Ledger(url, workspace=f"sandbox@{sandbox.url}", directory=folders["ben"]) as ben, \
            ben.exclusive("apply"):
        assert main(["apply", "plan.json", "--sandbox", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "in use by toolkit apply pid" in err and "nothing was sent" in err
    assert "How to fix" in err or "fix" in err.lower()
    assert PASSWORD not in err
    assert len(sandbox.request_log()) == 0
    # once it is free, the same plan goes through
    assert main(["apply", "plan.json", "--sandbox", "--no-progress"]) == 0
    assert main(["settle", "--sandbox"]) == 0
    assert PASSWORD not in "".join(capsys.readouterr())


def test_a_saved_plan_of_a_shared_ledger_needs_its_url_to_apply(team, monkeypatch, capsys):
    folders, url = team
    monkeypatch.chdir(folders["ana"])
    assert main(["plan", str(sample_export_path()), "--sandbox", "--create-users",
                 "--ledger", url, "--out", "plan.json"]) == 0
    assert main(["approve", "plan.json", "--by", "Ana"]) == 0
    capsys.readouterr()
    assert main(["apply", "plan.json", "--sandbox", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "BRAZE_LEDGER_URL" in err and "nothing was sent" in err and PASSWORD not in err


@pytest.mark.parametrize("setting, expected", [
    (("--ledger", "mysql://ana:pw@db/engage"), "must be a ledger file or a postgresql:// URL"),
    (("env", "ledger.sqlite"), "BRAZE_LEDGER_URL must be a postgresql:// URL"),
    (("env", "duckdb:///x.duckdb"), "not a duckdb:// URL"),
])
def test_a_ledger_setting_that_is_no_ledger_is_refused_with_the_fix(team, monkeypatch, capsys,
                                                                     setting, expected):
    folders, _url = team
    monkeypatch.chdir(folders["ana"])
    argv = ["plan", str(sample_export_path()), "--sandbox", "--out", "plan.json"]
    if setting[0] == "env":
        (folders["ana"] / ".env").write_text(f"BRAZE_LEDGER_URL={setting[1]}\n")
    else:
        argv += list(setting)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "postgresql://user:password@host:5432/database" in err
    assert not (folders["ana"] / "plan.json").exists()


def test_a_wrong_password_names_the_server_and_hides_the_password(team, monkeypatch, capsys):
    folders, url = team
    monkeypatch.chdir(folders["ana"])
    wrong = url.replace(PASSWORD, "Not-The-Password-99")
    assert main(["plan", str(sample_export_path()), "--sandbox", "--ledger", wrong,
                 "--out", "plan.json"]) == 2
    err = capsys.readouterr().err
    assert "refused the login" in err and "toolkit:***@127.0.0.1" in err
    assert "Not-The-Password-99" not in err and not (folders["ana"] / "plan.json").exists()


def test_help_names_both_kinds_of_ledger(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "postgresql://" in text and "BRAZE_LEDGER_URL" in text and "FILE|URL" in text
