"""The wizard's Ledger field (issue 11): a team's shared ledger on PostgreSQL, typed into a password
input (emptied once used) or taken from BRAZE_LEDGER_URL, shown only as the ledger's location;
two wizards on two "machines" share what Braze acknowledged; a wrong URL is shown with its fix."""
from __future__ import annotations

import re
import uuid
from pathlib import Path

import ipywidgets as widgets
import pytest

from tests.pgserver import PASSWORD
from toolkit.notebook.wizard import bundled_samples
from toolkit.sandbox import BrazeSandbox

SAMPLE = next(iter(bundled_samples()))
ROOT = Path(__file__).resolve().parents[2]
_SHOWN = ("value", "description", "placeholder", "tooltip", "tooltips", "options")


def _all_widgets(root) -> list:
    seen, todo = [], [root]
    while todo:
        w = todo.pop()
        if isinstance(w, widgets.Widget) and w not in seen:
            seen.append(w)
            todo.extend(getattr(w, "children", ()) or ())
    return seen


def _assert_hidden(w, *secrets: str) -> None:
    """No secret in any widget's displayed text, the wizard's reprs or its state's HTML."""
    texts = [repr(w), repr(w.state), w.state._repr_html_(), str(w.state.summary()),
             str(w._repr_mimebundle_())]
    for widget in _all_widgets(w.widget) + [w.ledger_field, w.ledger_html, w.error_html]:
        for name in _SHOWN:
            value = getattr(widget, name, None)
            texts.append(value.decode("latin-1") if isinstance(value, bytes) else str(value))
    for secret in secrets:
        for text in texts:
            assert secret not in text


def _at_plan_step(w) -> None:
    w.sample_dropdown.value = SAMPLE
    while w.state.step < 4:
        before = w.state.step
        w.next_button.click()
        assert w.state.step == before + 1, w.state.error


@pytest.fixture
def url(postgres_url) -> str:
    return f"{postgres_url}?schema=wiz_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def no_ledger_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in ("BRAZE_LEDGER_URL", "BRAZE_LEDGER_SCHEMA", "BRAZE_REST_ENDPOINT",
                 "BRAZE_API_KEY", "BRAZE_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)


def test_two_wizards_share_a_typed_ledger_url(wizard, url, no_ledger_env):
    with BrazeSandbox(seed=5) as sb:
        ana = wizard(sandbox=sb)
        _at_plan_step(ana)
        assert "this machine's ledger" in ana.ledger_html.value
        assert not ana.state.ledger.shared
        first_local = ana.state.plan.cost()["operations"]

        ana.ledger_field.value = url                       # Ana types the team's ledger URL
        ana.ledger_button.click()
        assert ana.ledger_field.value == "", "the password must not stay in the widget"
        assert ana.state.error is None, ana.state.error
        assert ana.state.ledger.shared and ana.state.plan is not None
        assert ana.state.plan.ledger_path == ana.state.ledger.location
        assert "the team's shared ledger" in ana.ledger_html.value
        assert "toolkit:***@127.0.0.1" in ana.ledger_html.value
        assert ana.state.plan.cost()["operations"] == first_local   # an empty shared ledger
        ana.next_button.click()
        ana.approver_text.value = "Ana"
        ana.confirm_box.value = True
        ana.approve_button.click()
        ana.next_button.click()
        ana.push_button.click()
        assert ana.state.report.status == "complete"
        acknowledged = ana.state.report.summary()["acknowledged"]
        assert acknowledged > 0
        sent = len(sb.request_log())
        _assert_hidden(ana, PASSWORD, url)

        ben = wizard(sandbox=sb)                           # Ben, another machine, same ledger
        _at_plan_step(ben)
        ben.ledger_field.value = url
        ben.ledger_button.click()
        assert ben.state.error is None, ben.state.error
        assert ben.state.plan.is_empty, ben.state.plan.summary()
        assert ben.state.plan.cost()["operations"] == 0
        assert ben.state.plan.cost()["data_points"] == 0
        assert len(sb.request_log()) == sent
        assert ben.state.ledger.path is None and ana.state.ledger.location == \
            ben.state.ledger.location
        _assert_hidden(ben, PASSWORD, url)

        ben.ledger_button.click()                          # empty: back to the default ledger
        assert ben.state.ledger_url is None and not ben.state.ledger.shared
        assert ben.state.plan.cost()["operations"] == first_local
        assert "this machine's ledger" in ben.ledger_html.value


def test_a_wrong_ledger_url_is_shown_with_its_fix_and_no_password(wizard, url, no_ledger_env):
    w = wizard()
    _at_plan_step(w)
    wrong = url.replace(PASSWORD, "Wrong-Pass-4242")
    w.ledger_field.value = wrong
    w.ledger_button.click()
    assert w.state.plan is None and w.state.ledger is None and w.state.client is None
    shown = w.error_html.value
    assert "refused the login" in shown and "How to fix" in shown
    assert "check the user name and password" in shown
    assert "toolkit:***@127.0.0.1" in shown
    _assert_hidden(w, "Wrong-Pass-4242", PASSWORD)
    assert w.next_button.disabled

    w.ledger_field.value = "Wrong-Pass-4242"               # a password pasted on its own
    w.ledger_button.click()
    assert "takes a postgresql:// URL, not a file path" in w.error_html.value
    assert "postgresql://user:password@host:5432/database" in w.error_html.value
    _assert_hidden(w, "Wrong-Pass-4242")

    w.ledger_field.value = "mysql://ana:Wrong-Pass-4242@db/x"
    w.ledger_button.click()
    assert "not mysql://" in w.error_html.value
    _assert_hidden(w, "Wrong-Pass-4242")

    w.ledger_field.value = url                             # the right one: planned
    w.ledger_button.click()
    assert w.state.error is None and w.state.plan is not None and w.state.ledger.shared
    assert not w.next_button.disabled
    _assert_hidden(w, PASSWORD)


def test_a_workspace_takes_the_shared_ledger_from_env_file(wizard, url, no_ledger_env,
                                                           monkeypatch, tmp_path):
    (tmp_path / ".env").write_text(f"BRAZE_LEDGER_URL={url}\n")
    with BrazeSandbox() as sb:                             # a "real" workspace on loopback
        monkeypatch.setenv("BRAZE_REST_ENDPOINT", sb.url)
        monkeypatch.setenv("BRAZE_API_KEY", sb.api_key)
        w = wizard(target="workspace")
        _at_plan_step(w)
        assert w.state.error is None, w.state.error
        assert w.state.ledger.shared
        assert "from BRAZE_LEDGER_URL in .env" in w.ledger_html.value
        assert "toolkit:***@127.0.0.1" in w.ledger_html.value
        assert not (tmp_path / ".toolkit" / "ledger-sandbox.sqlite").exists()
        assert any("BRAZE_LEDGER_URL" in text for _title, text in w.state.next_actions())
        _assert_hidden(w, PASSWORD, url)
        w.state.close()


def test_a_bad_braze_ledger_url_is_an_error_with_the_fix(wizard, no_ledger_env, monkeypatch):
    with BrazeSandbox() as sb:
        monkeypatch.setenv("BRAZE_REST_ENDPOINT", sb.url)
        monkeypatch.setenv("BRAZE_API_KEY", sb.api_key)
        monkeypatch.setenv("BRAZE_LEDGER_URL", "ledger.sqlite")
        w = wizard(target="workspace")
        w.sample_dropdown.value = SAMPLE
        for _ in range(4):
            w.next_button.click()
        assert w.state.step == 3 and w.state.plan is None
        assert "BRAZE_LEDGER_URL takes a postgresql:// URL" in w.error_html.value
        assert "How to fix" in w.error_html.value
        w.state.close()


def test_no_notebook_output_holds_a_database_password():
    """Committed notebooks show ledgers by their location only (postgresql://user:***@…)."""
    # a password in a URL: anything but *** (hidden) or the placeholder "password" of an example
    leaked = re.compile(r"postgres(?:ql)?://[^:/@\s\"']+:(?!\*\*\*@|password@)[^@\s\"']+@")
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        text = path.read_text(encoding="utf-8")
        assert not leaked.search(text), path.name
        assert PASSWORD not in text
