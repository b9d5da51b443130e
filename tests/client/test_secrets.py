"""API key sources (argument, environment, .env, getpass) and the Secret wrapper."""
from __future__ import annotations

import hashlib
import pickle

import pytest

from toolkit.braze.client import BrazeClient, key_fingerprint
from toolkit.errors import ConfigError
from toolkit.secrets import Secret, read_env_file, redact, resolve_secret

KEY = "9d1c0e6a-3b2f-4c5d-8e7f-0a1b2c3d4e5f"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("BRAZE_API_KEY", raising=False)
    monkeypatch.delenv("BRAZE_REST_ENDPOINT", raising=False)
    monkeypatch.delenv("BRAZE_WORKSPACE", raising=False)


def test_fingerprint_is_a_short_sha256_prefix():
    assert key_fingerprint(KEY) == hashlib.sha256(KEY.encode()).hexdigest()[:8]
    assert key_fingerprint(Secret(KEY)) == key_fingerprint(KEY)
    assert key_fingerprint("a") != key_fingerprint("b")


def test_env_file_syntax(tmp_path):
    env = tmp_path / ".env"
    env.write_text(
        "\ufeff# a comment\n"
        "\n"
        "PLAIN=value\n"
        "export EXPORTED=yes\n"
        "SPACED = around  \n"
        "INLINE=abc # trailing comment\n"
        "HASH=abc#def\n"
        "SINGLE='single # kept'\n"
        'DOUBLE="line\\nbreak \\"q\\" # kept" # comment\n'
        "EMPTY=\n"
        "EQUALS=a=b=c\n")
    assert read_env_file(env) == {
        "PLAIN": "value", "EXPORTED": "yes", "SPACED": "around", "INLINE": "abc",
        "HASH": "abc#def", "SINGLE": "single # kept", "DOUBLE": 'line\nbreak "q" # kept',
        "EMPTY": "", "EQUALS": "a=b=c"}


def test_missing_env_file_reads_as_empty(tmp_path):
    assert read_env_file(tmp_path / "nope.env") == {}


@pytest.mark.parametrize("line,problem", [
    (KEY, "not a KEY=VALUE line"),
    ("BRAZE_API_KEY=\"" + KEY, "unterminated"),
    ("BRAZE_API_KEY='" + KEY + "' extra", "unexpected text"),
])
def test_bad_env_lines_name_the_line_but_never_echo_it(tmp_path, line, problem):
    env = tmp_path / ".env"
    env.write_text("OK=1\n" + line + "\n")
    with pytest.raises(ConfigError, match=problem) as info:
        read_env_file(env)
    assert info.value.line == 2 and info.value.file == str(env)
    assert KEY not in str(info.value)


def test_key_sources_in_priority_order(tmp_path, monkeypatch):
    env = tmp_path / ".env"
    env.write_text(f'BRAZE_API_KEY="from-file-{KEY}"\n')
    prompt = lambda text: "from-prompt"  # noqa: E731
    common = dict(name="key", env_var="BRAZE_API_KEY", env_file=env, getpass=prompt,
                  interactive=True)
    assert resolve_secret("from-arg", **common).reveal() == "from-arg"
    assert resolve_secret(None, **common).reveal() == f"from-file-{KEY}"
    assert resolve_secret(None, **common).source == str(env)
    monkeypatch.setenv("BRAZE_API_KEY", "from-env")
    assert resolve_secret(None, **common).reveal() == "from-env"
    monkeypatch.delenv("BRAZE_API_KEY")
    env.unlink()
    assert resolve_secret(None, **common).reveal() == "from-prompt"


def test_getpass_is_used_only_when_interactive(tmp_path):
    asked = []

    def prompt(text):
        asked.append(text)
        return KEY

    with pytest.raises(ConfigError, match="no key given") as info:
        resolve_secret(None, name="key", env_var="BRAZE_API_KEY", env_file=tmp_path / "x",
                       interactive=False, getpass=prompt)
    assert asked == [] and "BRAZE_API_KEY" in info.value.hint
    secret = resolve_secret(None, name="key", env_var="BRAZE_API_KEY", env_file=None,
                            interactive=True, getpass=prompt)
    assert secret.reveal() == KEY and secret.source == "prompt" and len(asked) == 1
    assert KEY not in asked[0]


def test_non_tty_stdin_means_no_prompt(monkeypatch):
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    called = []
    with pytest.raises(ConfigError):
        resolve_secret(None, name="key", env_var="BRAZE_API_KEY", env_file=None,
                       getpass=lambda t: called.append(t) or KEY)
    assert called == []


def test_client_reads_key_from_env_file(tmp_path):
    env = tmp_path / ".env"
    env.write_text(f"BRAZE_REST_ENDPOINT=US-05\nBRAZE_API_KEY='{KEY}'  # workspace A\n"
                   "BRAZE_WORKSPACE=workspace-a\n")
    with BrazeClient(env_file=str(env)) as client:
        assert client.key_fingerprint == key_fingerprint(KEY)
        assert client.workspace == "workspace-a@https://rest.iad-05.braze.com"


@pytest.mark.parametrize("bad", ["", "   ", "two words", "tab\there", 42])
def test_unusable_keys_are_config_errors(bad):
    with pytest.raises(ConfigError):
        BrazeClient("US-01", bad, env_file=None)


def test_surrounding_whitespace_is_stripped():
    with BrazeClient("US-01", f"  {KEY}\n", env_file=None) as client:
        assert client.key_fingerprint == key_fingerprint(KEY)


def test_secret_never_shows_itself():
    secret = Secret(KEY, name="Braze REST API key", source="$BRAZE_API_KEY")
    for text in (repr(secret), str(secret), f"{secret}", repr([secret]), repr({"k": secret})):
        assert KEY not in text
        assert key_fingerprint(KEY) in text
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_redact_replaces_secrets_anywhere_in_a_body():
    secret = Secret(KEY)
    body = {"message": f"Partner not enabled for client with client secret: {KEY}",
            "errors": [KEY, {"nested": (KEY, 1)}], KEY: None}
    clean = redact(body, [secret, None])
    assert KEY not in repr(clean)
    assert f"<redacted sha256:{key_fingerprint(KEY)}>" in clean["message"]
    assert clean["errors"][1]["nested"][1] == 1
