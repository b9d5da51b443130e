"""`read_document` / `write_document`: the one way a plan, a sync report or a mapping file is
read from disk, and a report or mapping written.

Every failure — missing, a directory, unreadable, not UTF-8, malformed JSON/YAML (with its line),
nested too deeply — becomes the caller's `ToolkitError` subclass naming the file and how to fix
it; the caller then checks the fields of the parsed document.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from toolkit.errors import ToolkitError

__all__ = ["read_document", "write_document"]

# format -> (parse text, the parser's error types, line of an error or None)
_FORMATS: dict[str, tuple[Callable[[str], Any], tuple[type[Exception], ...],
                          Callable[[Exception], int | None]]] = {
    "JSON": (json.loads, (json.JSONDecodeError,), lambda exc: getattr(exc, "lineno", None)),
    "YAML": (yaml.safe_load, (yaml.YAMLError,),
             lambda exc: (exc.problem_mark.line + 1)
             if getattr(exc, "problem_mark", None) else None),
}


def read_document(path: str | Path, *, error: type[ToolkitError], what: str, missing_hint: str,
                  damaged_hint: str, format: str = "JSON",
                  too_deep: Callable[[str], bool] | None = None) -> Any:
    """The parsed content of the ``format`` ("JSON" or "YAML") file at ``path``, or ``error``
    saying what is wrong with it. ``what`` names the document ("plan"); ``too_deep(text)``
    refuses text nested beyond what the parser can follow before parsing it."""
    path = Path(path)
    parse, parse_errors, line_of = _FORMATS[format]
    try:
        text = path.read_text(encoding="utf-8")
        if too_deep is not None and too_deep(text):
            raise RecursionError
        return parse(text)
    except FileNotFoundError:
        raise error(f"{what} file not found", file=str(path), hint=missing_hint) from None
    except IsADirectoryError:
        raise error(f"expected a {what} file, found a directory", file=str(path),
                    hint=f"pass the {what} file itself") from None
    except UnicodeDecodeError:
        raise error(f"cannot read the {what}: it is not UTF-8 text", file=str(path),
                    hint=damaged_hint) from None
    except OSError as exc:
        raise error(f"cannot read the {what}: {exc.strerror or type(exc).__name__}",
                    file=str(path), hint=damaged_hint) from None
    except RecursionError:
        # both parsers follow nested lists and mappings recursively
        raise error(f"not valid {format}: the {what} is nested too deeply to read (lists or "
                    f"mappings inside each other, thousands of levels deep)", file=str(path),
                    hint=damaged_hint) from None
    except parse_errors as exc:
        reason = getattr(exc, "msg", None) or getattr(exc, "problem", None) or exc
        raise error(f"not valid {format}: {reason}", file=str(path), line=line_of(exc),
                    hint=damaged_hint) from None


def write_document(path: str | Path, text: str, *, error: type[ToolkitError], what: str) -> Path:
    """Write ``text`` (UTF-8) to ``path``; a failure is ``error`` naming the file."""
    path = Path(path)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot write the {what}: {exc.strerror or type(exc).__name__}",
                    file=str(path), hint="choose a writable path") from None
    return path
