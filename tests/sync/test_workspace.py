"""Workspace identity: the ledger belongs to the Braze instance and a workspace name, not to the
API key — a rotated key keeps it, another instance or name is refused with the fix, and a ledger
labelled the old way (endpoint + key fingerprint) is re-labelled when opened with its key."""
from __future__ import annotations

import pytest

from .builders import acknowledge_all_rows, make_export
from toolkit.braze.client import BrazeClient
from toolkit.cli import main
from toolkit.errors import BrazeAuthError, ConfigError, LedgerError
from toolkit.mapping import Mapping
from toolkit.sandbox.server import BrazeSandbox
from toolkit.sync.apply import apply
from toolkit.sync.cli import sample_export_path
from toolkit.sync.ledger import Ledger, default_ledger_path
from toolkit.sync.plan import plan

REST = "https://rest.iad-03.braze.com"


def _events_mapping(export):
    return Mapping.from_export(export).set("vip_customer", send_as="both")


@pytest.fixture
def no_workspace_env(monkeypatch):
    for name in ("BRAZE_WORKSPACE", "BRAZE_REST_ENDPOINT", "BRAZE_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_the_workspace_is_the_instance_and_a_name(no_workspace_env, monkeypatch):
    client = BrazeClient("US-03", "key-one", env_file=None, workspace="marketing-prod")
    assert client.workspace == f"marketing-prod@{REST}"
    assert BrazeClient("US-03", "key-two", env_file=None,
                       workspace="marketing-prod").workspace == client.workspace
    assert "key-one" not in repr(client) and "marketing-prod" in repr(client)
    # a Braze endpoint nobody named: asked for, with the fix, before anything is planned
    unnamed = BrazeClient("US-03", "key-one", env_file=None)
    with pytest.raises(ConfigError) as err:
        unnamed.workspace
    assert "BRAZE_WORKSPACE" in err.value.hint and "--workspace" in err.value.hint
    assert unnamed.stats.workspace == REST             # counters never fail on it
    monkeypatch.setenv("BRAZE_WORKSPACE", "eu shop")
    assert BrazeClient("US-03", "k", env_file=None).workspace == f"eu shop@{REST}"
    with pytest.raises(ConfigError):
        BrazeClient("US-03", "k", env_file=None, workspace="prod/../../etc")
    # the sandbox (a loopback endpoint) has a stable default name
    monkeypatch.delenv("BRAZE_WORKSPACE")
    assert BrazeClient("http://127.0.0.1:9", "k", env_file=None).workspace == \
        "sandbox@http://127.0.0.1:9"


def test_a_rotated_key_keeps_the_ledger(tmp_path):
    export = make_export(60)
    mapping = _events_mapping(export)
    with BrazeSandbox(seed=3) as sb:
        old = BrazeClient.for_sandbox(sb, backoff=(0.01, 0.02))
        with Ledger(old, directory=tmp_path) as ledger:
            p = plan(export, mapping, ledger, workspace=old, create_users=True)
            assert apply(p.approve(by="ana"), old, ledger, progress=False).exit_code == 0
            path = ledger.path
        sb.rotate_api_key()
        with pytest.raises(BrazeAuthError):
            old.export_ids(["u00001"])                      # the old key is revoked
        new = BrazeClient.for_sandbox(sb, backoff=(0.01, 0.02))
        assert new.key_fingerprint != old.key_fingerprint
        assert new.workspace == old.workspace
        with Ledger(new, directory=tmp_path) as ledger:
            assert ledger.path == path
            again = plan(export, mapping, ledger, workspace=new, create_users=True)
        assert again.is_empty and again.cost()["operations"] == 0
        changed = again.findings.of("api_key_changed")
        assert changed and old.key_fingerprint in changed[0].message
        assert sb.api_key not in str(changed[0]) and "sandbox-" not in str(changed[0])
        old.close()
        new.close()


def test_rotating_the_key_between_two_command_line_syncs_plans_nothing(tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.chdir(tmp_path)
    sample = str(sample_export_path())
    from toolkit.engage.readers import load

    _events_mapping(load(sample)).save(tmp_path / "mapping.yml")   # audiences also as events
    plan_args = ["--mapping", "mapping.yml", "--sandbox", "--create-users"]
    with BrazeSandbox(seed=4) as sb:
        monkeypatch.setenv("SANDBOX_URL", sb.url)
        monkeypatch.setenv("SANDBOX_API_KEY", sb.api_key)
        assert main(["plan", sample, *plan_args, "--out", "plan.json"]) == 0
        assert main(["approve", "plan.json", "--by", "ana"]) == 0
        assert main(["apply", "plan.json", "--sandbox", "--no-progress"]) == 0
        events = len(sb.events())
        capsys.readouterr()
        monkeypatch.setenv("SANDBOX_API_KEY", sb.rotate_api_key())
        assert main(["plan", sample, *plan_args, "--out", "again.json"]) == 0
        out = capsys.readouterr().out
        assert "nothing to send" in out and "0 operations" in out
        assert "the API key changed" in out and sb.api_key not in out
        assert len(list((tmp_path / ".toolkit").glob("*.sqlite"))) == 1
        assert events > 0 and len(sb.events()) == events


def test_a_ledger_of_another_instance_or_name_is_refused_with_the_fix(tmp_path, no_workspace_env):
    prod = BrazeClient("US-03", "k", env_file=None, workspace="prod")
    path = tmp_path / "l.sqlite"
    Ledger(path=path, workspace=prod).close()
    staging = BrazeClient("US-03", "k", env_file=None, workspace="staging")
    with pytest.raises(LedgerError) as err:
        Ledger(path=path, workspace=staging)
    assert "'prod'" in str(err.value) and "'staging'" in str(err.value)
    assert "BRAZE_WORKSPACE=prod" in err.value.hint and err.value.file == str(path)
    elsewhere = BrazeClient("EU-01", "k", env_file=None, workspace="prod")
    with pytest.raises(LedgerError) as err:
        Ledger(path=path, workspace=elsewhere)
    assert "rest.fra-01.braze.eu" in str(err.value) and "BRAZE_REST_ENDPOINT" in err.value.hint
    # and a plan or an apply through that ledger sends nothing
    export = make_export(5)
    with pytest.raises(LedgerError):
        plan(export, Mapping.from_export(export), str(path), workspace=staging)


def test_a_ledger_labelled_by_its_key_is_relabelled_and_moved_when_opened_with_it(tmp_path):
    export = make_export(40)
    mapping = _events_mapping(export)
    with BrazeSandbox(seed=6) as sb:
        client = BrazeClient.for_sandbox(sb)
        legacy = client.legacy_workspace                     # "<endpoint>#<fingerprint>"
        assert legacy == f"{sb.url}#{client.key_fingerprint}"
        # a ledger as earlier versions made it: named and labelled by the key, one sync in it
        old_path = default_ledger_path(legacy, tmp_path)
        with Ledger(legacy, directory=tmp_path) as old:
            assert old.path == old_path
            p = plan(export, mapping, old, create_users=True)
            acknowledge_all_rows(p, old)
            version = old.version
        with Ledger(client, directory=tmp_path) as ledger:
            assert ledger.path == default_ledger_path(client.workspace, tmp_path)
            assert ledger.workspace == client.workspace and ledger.relabelled_from == legacy
            assert ledger.version == version and not old_path.exists()
            assert plan(export, mapping, ledger, workspace=client, create_users=True).is_empty
        # from now on any key of the workspace opens it
        sb.rotate_api_key()
        rotated = BrazeClient.for_sandbox(sb)
        with Ledger(rotated, directory=tmp_path) as ledger:
            assert ledger.version == version
            assert plan(export, mapping, ledger, workspace=rotated, create_users=True).is_empty
        client.close()
        rotated.close()


def test_a_ledger_labelled_by_another_key_explains_how_to_relabel_it(tmp_path):
    with BrazeSandbox(seed=7) as sb:
        client = BrazeClient.for_sandbox(sb)
        # a given file labelled by this client's own key is re-labelled where it is
        mine = tmp_path / "mine.sqlite"
        Ledger(path=mine, workspace=client.legacy_workspace).close()
        with Ledger(path=mine, workspace=client) as ledger:
            assert ledger.path == mine and ledger.workspace == client.workspace
        with Ledger(path=mine) as ledger:
            assert ledger.workspace == client.workspace
        path = tmp_path / "ledger.sqlite"
        Ledger(path=path, workspace=f"{sb.url}#0badc0de").close()
        with pytest.raises(LedgerError) as err:
            Ledger(path=path, workspace=client)
        assert "sha256:0badc0de" in str(err.value)
        assert "old key" in err.value.hint and "BRAZE_WORKSPACE=sandbox" in err.value.hint
        client.close()
