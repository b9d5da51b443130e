"""Secrets (Braze API keys, partner keys): where they come from and how they stay out of sight.

A key is resolved from, in order: the explicit argument, the environment, a ``.env`` file, and —
only in an interactive session — a ``getpass`` prompt. Once resolved it lives in a `Secret`, whose
repr/str show only `key_fingerprint` (a short sha256 prefix), so printing a client, logging an
error or saving a notebook output never reveals it.
"""
from __future__ import annotations

import hashlib
import os
import sys
from getpass import getpass as ask_hidden
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from toolkit.errors import ConfigError

__all__ = ["Secret", "key_fingerprint", "read_env_file", "resolve_secret", "redact"]

FINGERPRINT_CHARS = 8


def key_fingerprint(key: "str | Secret") -> str:
    """A short, stable, non-reversible name for a key: the first 8 hex digits of its sha256."""
    value = key.reveal() if isinstance(key, Secret) else str(key)
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:FINGERPRINT_CHARS]


class Secret:
    """A string that never prints itself; call `reveal()` at the one place it must be sent."""

    __slots__ = ("_value", "name", "source")

    def __init__(self, value: str, *, name: str = "secret", source: str = "argument") -> None:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, not {type(value).__name__}")
        self._value = value
        self.name = name
        self.source = source

    def reveal(self) -> str:
        return self._value

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(self._value)

    def __repr__(self) -> str:
        return f"Secret({self.name}, sha256:{self.fingerprint}, from {self.source})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self):  # refusing to pickle keeps keys out of saved state and worker payloads
        raise TypeError("a Secret cannot be pickled; pass the key by environment variable instead")


def read_env_file(path: "str | os.PathLike[str]") -> dict[str, str]:
    """Parse a ``.env`` file without python-dotenv: ``KEY=VALUE`` lines, optional ``export``,
    single/double quotes (double quotes understand ``\\n``, ``\\t``, ``\\"``, ``\\\\``), full-line
    comments and `` #`` comments after unquoted values. A missing file reads as empty."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the env file: {exc.__class__.__name__}", file=str(file),
                          hint="make it a readable UTF-8 text file of KEY=VALUE lines") from None
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, rest = line.partition("=")
        key = key.strip()
        if not sep or not key or not key.replace("_", "").replace(".", "").isalnum():
            # The line is not echoed: it may be a key pasted without its NAME= prefix.
            raise ConfigError("not a KEY=VALUE line", file=str(file), line=number,
                              hint="write one setting per line, e.g. BRAZE_API_KEY=…")
        values[key] = _env_value(rest.strip(), file, number)
    return values


def _env_value(rest: str, file: Path, number: int) -> str:
    if rest[:1] in ("'", '"'):
        quote = rest[0]
        out: list[str] = []
        i = 1
        while i < len(rest):
            ch = rest[i]
            if quote == '"' and ch == "\\" and i + 1 < len(rest):
                nxt = rest[i + 1]
                out.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
                i += 2
                continue
            if ch == quote:
                tail = rest[i + 1:].strip()
                if tail and not tail.startswith("#"):
                    raise ConfigError("unexpected text after a quoted value", file=str(file),
                                      line=number, hint="put a comment after ' #' or nothing")
                return "".join(out)
            out.append(ch)
            i += 1
        raise ConfigError("unterminated quoted value", file=str(file), line=number,
                          hint=f"close the value with {quote}")
    cut = rest.find(" #")
    if cut < 0:
        cut = rest.find("\t#")
    return (rest[:cut] if cut >= 0 else rest).strip()


def resolve_secret(value: "str | Secret | None", *, name: str, env_var: str,
                   env_file: "str | os.PathLike[str] | None" = ".env",
                   interactive: bool | None = None, prompt: str | None = None,
                   getpass: Callable[[str], str] | None = None) -> Secret:
    """Find a secret: argument → environment → env file → getpass (interactive only).

    ``interactive=None`` prompts only when stdin is a terminal; notebooks pass ``True``."""
    if isinstance(value, Secret):
        return value
    if value is not None:
        return _checked(value, name=name, source="argument")
    if os.environ.get(env_var):
        return _checked(os.environ[env_var], name=name, source=f"${env_var}")
    if env_file is not None:
        from_file = read_env_file(env_file).get(env_var)
        if from_file:
            return _checked(from_file, name=name, source=str(env_file))
    if interactive is None:
        interactive = bool(getattr(sys.stdin, "isatty", lambda: False)())
    if interactive:
        if getpass is None:
            getpass = ask_hidden
        try:
            typed = getpass(prompt or f"{name} (input hidden): ")
        except (EOFError, KeyboardInterrupt):
            typed = ""
        if typed.strip():
            return _checked(typed, name=name, source="prompt")
    raise ConfigError(
        f"no {name} given", field=env_var,
        hint=f"pass it as an argument, set {env_var} in the environment or in "
             f"{env_file or 'a .env file'}, or use interactive=True to be prompted")


def _checked(value: str, *, name: str, source: str) -> Secret:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, not {type(value).__name__}", field=name)
    stripped = value.strip()
    if not stripped:
        raise ConfigError(f"{name} is empty", field=name, hint=f"check where it comes from ({source})")
    if any(ch.isspace() for ch in stripped) or not stripped.isprintable():
        raise ConfigError(f"{name} contains spaces or control characters", field=name,
                          hint=f"copy the key again without extra text (it came from {source})")
    return Secret(stripped, name=name, source=source)


def redact(value: Any, secrets: Iterable["Secret | None"]) -> Any:
    """A copy of ``value`` (str / dict / list, nested) with every secret's text replaced by
    ``<redacted sha256:…>`` — for response bodies that echo a key back (Braze's partner 401
    "Partner not enabled for client with client secret: …")."""
    known = [(s.reveal(), f"<redacted sha256:{s.fingerprint}>") for s in secrets
             if s is not None and s.reveal()]
    if not known:
        return value
    return _redact(value, known)


def _redact(value: Any, known: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        for text, mark in known:
            if text in value:
                value = value.replace(text, mark)
        return value
    if isinstance(value, Mapping):
        return {_redact(k, known): _redact(v, known) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(v, known) for v in value)
    return value
