"""Python regular expressions rewritten for RE2, DuckDB's regex engine, so both match the same texts.

The pandas evaluator runs Braze regex filters with Python's ``re`` (``rx.search(text)`` compiled
with ``re.IGNORECASE``: partial and case-insensitive, braze-api.md §5.2). DuckDB's
``regexp_matches`` runs RE2, whose dialect gives other answers on the same pattern: ``\\d``,
``\\w`` and ``\\s`` are ASCII-only in RE2 and Unicode in Python, the two fold case with different
tables (``K`` KELVIN SIGN, ``ſ`` LONG S, ``ß``…), and Python's ``$`` also matches just before a
final newline. `to_re2` therefore reads the pattern with Python's own parser (``re._parser``, so
escapes, ``(?x)`` and ``{`` literals mean exactly what ``re.compile`` reads) and writes an RE2
pattern that needs no flags:

- every character set (a literal letter under IGNORECASE, ``[…]``, ``\\d``, ``\\w``, ``\\s`` and
  their negations) becomes the explicit list of the code points Python's ``re`` matches with it,
  found by running ``re`` itself over all of Unicode (cached per set);
- ``.`` becomes ``[^\\n]`` (``(?s:.)`` under DOTALL); ``^`` becomes ``\\A``; ``$`` at the end of
  the pattern becomes ``\\n?\\z``; under MULTILINE both keep RE2's ``(?m:…)`` line meaning, which is
  Python's.

Patterns RE2 cannot run with Python's meaning raise `UnsupportedPattern` (callers evaluate those
with Python): backreferences, lookahead and lookbehind, conditional groups, atomic groups and
possessive repeats (RE2 has none of them), ``\\b``/``\\B`` (ASCII word boundaries in RE2), the
ASCII flag, ``$`` followed by more pattern outside MULTILINE (RE2 has no lookahead to express
"before a final newline" there), and whatever RE2 itself refuses, such as a repeat count above
1,000 or a program over its memory budget (checked by compiling the rewritten pattern in DuckDB).
"""
from __future__ import annotations

import re
from functools import lru_cache
from re import _constants as sre  # the opcodes of Python's pattern parser
from re import _parser

import duckdb

from toolkit import engine

__all__ = ["UnsupportedPattern", "to_re2"]

# Flags the rewrite carries over (VERBOSE only changes parsing, UNICODE is implied for text).
_TRANSLATED_FLAGS = re.IGNORECASE | re.MULTILINE | re.DOTALL | re.VERBOSE | re.UNICODE

_UNSUPPORTED = {
    sre.GROUPREF: r"backreferences (\1, (?P=name))",
    sre.GROUPREF_EXISTS: "conditional groups (?(1)…|…)",
    sre.ASSERT: "lookahead and lookbehind (?=…), (?<=…)",
    sre.ASSERT_NOT: "negative lookahead and lookbehind (?!…), (?<!…)",
    sre.ATOMIC_GROUP: "atomic groups (?>…)",
    sre.POSSESSIVE_REPEAT: "possessive repeats (*+, ++, ?+)",
}

_CATEGORIES = {
    sre.CATEGORY_DIGIT: r"\d", sre.CATEGORY_NOT_DIGIT: r"\D",
    sre.CATEGORY_SPACE: r"\s", sre.CATEGORY_NOT_SPACE: r"\S",
    sre.CATEGORY_WORD: r"\w", sre.CATEGORY_NOT_WORD: r"\W",
}

_SURROGATES = range(0xD800, 0xE000)  # not characters: never in a Python str bound for UTF-8


class UnsupportedPattern(ValueError):
    """A pattern RE2 cannot run with the meaning Python's ``re`` gives it; the message says why."""


def to_re2(pattern: str, flags: int = 0) -> str:
    """An RE2 pattern (no flags needed) that matches exactly the texts ``re.compile(pattern, flags)``
    finds a match in with ``search``. Raises `UnsupportedPattern` when there is none."""
    try:
        parsed = _parser.parse(pattern, flags)
    except re.error as exc:
        raise UnsupportedPattern(f"invalid regular expression: {exc}") from None
    _check_flags(parsed.state.flags)
    rewritten = _sequence(list(parsed), parsed.state.flags, at_end=True)
    _check_re2(rewritten)
    return rewritten


def _check_flags(flags: int) -> None:
    if flags & ~_TRANSLATED_FLAGS:
        raise UnsupportedPattern("the ASCII flag (?a) changes \\d, \\w, \\s and case folding in ways "
                                 "the rewrite does not reproduce")


def _sequence(items: list, flags: int, *, at_end: bool) -> str:
    """``at_end``: nothing in the pattern can match after this sequence (where ``$`` may go)."""
    last = len(items) - 1
    return "".join(_item(op, av, flags, at_end=at_end and i == last)
                   for i, (op, av) in enumerate(items))


def _item(op, av, flags: int, *, at_end: bool) -> str:
    ignore_case = bool(flags & re.IGNORECASE)
    if op is sre.LITERAL:
        char = chr(av)
        if ignore_case and (char.lower() != char or char.upper() != char):
            return _character_set(f"[{_python_char(av)}]", ignore_case)
        return _re2_char(av)
    if op is sre.NOT_LITERAL:
        return _character_set(f"[^{_python_char(av)}]", ignore_case)
    if op is sre.IN:
        return _character_set(_python_class(av), ignore_case)
    if op is sre.ANY:
        return "(?s:.)" if flags & re.DOTALL else r"[^\n]"
    if op is sre.BRANCH:
        return "(?:" + "|".join(_sequence(list(alt), flags, at_end=at_end) for alt in av[1]) + ")"
    if op is sre.SUBPATTERN:
        _group, add, delete, body = av
        inner = (flags | add) & ~delete
        _check_flags(inner)
        return "(?:" + _sequence(list(body), inner, at_end=at_end) + ")"
    if op is sre.MAX_REPEAT or op is sre.MIN_REPEAT:
        low, high, body = av
        inner = _sequence(list(body), flags, at_end=at_end and high <= 1)
        lazy = "?" if op is sre.MIN_REPEAT else ""
        return f"(?:{inner}){_quantifier(low, high)}{lazy}"
    if op is sre.AT:
        return _anchor(av, flags, at_end=at_end)
    raise UnsupportedPattern(f"RE2 has no {_UNSUPPORTED.get(op, str(op).lower())}")


def _quantifier(low: int, high: int) -> str:
    if high == sre.MAXREPEAT:
        return {0: "*", 1: "+"}.get(low, f"{{{low},}}")
    if (low, high) == (0, 1):
        return "?"
    return f"{{{low}}}" if low == high else f"{{{low},{high}}}"


def _anchor(at, flags: int, *, at_end: bool) -> str:
    multiline = bool(flags & re.MULTILINE)
    if at is sre.AT_BEGINNING:
        return "(?m:^)" if multiline else r"\A"
    if at is sre.AT_BEGINNING_STRING:
        return r"\A"
    if at is sre.AT_END_STRING:
        return r"\z"
    if at is sre.AT_END:
        if multiline:
            return "(?m:$)"
        if at_end:
            return r"(?:\n?\z)"  # Python's $: the end, or just before a final newline
        raise UnsupportedPattern("'$' followed by more pattern: Python's $ also matches before a "
                                 "final newline, which RE2 can only express at the end of a pattern")
    raise UnsupportedPattern(r"word boundaries \b and \B are ASCII-only in RE2 and Unicode in Python")


def _python_char(code: int) -> str:
    return f"\\U{code:08x}"


def _re2_char(code: int) -> str:
    char = chr(code)
    return char if char.isascii() and char.isalnum() else f"\\x{{{code:x}}}"


def _python_class(items: list) -> str:
    parts = []
    for op, av in items:
        if op is sre.NEGATE:
            parts.append("^")
        elif op is sre.LITERAL:
            parts.append(_python_char(av))
        elif op is sre.RANGE:
            parts.append(f"{_python_char(av[0])}-{_python_char(av[1])}")
        else:  # sre.CATEGORY: the only other item Python's parser puts in a set
            parts.append(_CATEGORIES[av])
    return "[" + "".join(parts) + "]"


@lru_cache(maxsize=1)
def _every_character() -> str:
    """All of Unicode but the surrogates, in code point order (index = code point below U+D800)."""
    return "".join(chr(c) for c in range(0x110000) if c not in _SURROGATES)


def _code_point(index: int) -> int:
    return index if index < _SURROGATES.start else index + len(_SURROGATES)


@lru_cache(maxsize=4096)
def _character_set(python_class: str, ignore_case: bool) -> str:
    """The RE2 class of every character Python's ``re`` matches with ``python_class``."""
    matcher = re.compile(python_class + "+", re.IGNORECASE if ignore_case else 0)
    ranges = []
    for run in matcher.finditer(_every_character()):
        start, stop = run.span()
        if start < _SURROGATES.start < stop:  # a run across the surrogate gap is two ranges
            ranges += [(start, _SURROGATES.start - 1), (_SURROGATES.start, stop - 1)]
        else:
            ranges.append((start, stop - 1))
    if not ranges:
        return r"[^\x{0}-\x{10ffff}]"  # a set nothing is in (e.g. [^\s\S])
    return "[" + "".join(_re2_range(_code_point(lo), _code_point(hi)) for lo, hi in ranges) + "]"


def _re2_range(low: int, high: int) -> str:
    return f"\\x{{{low:x}}}" if low == high else f"\\x{{{low:x}}}-\\x{{{high:x}}}"


@lru_cache(maxsize=1024)
def _check_re2(pattern: str) -> None:
    """RE2 compiles the rewritten pattern (it refuses repeats over 1,000 and oversized programs)."""
    with engine.connect() as db:
        try:
            db.execute(f"SELECT regexp_matches('', {engine.literal(pattern)})").fetchall()
        except duckdb.Error as exc:
            raise UnsupportedPattern(f"RE2 refuses the rewritten pattern: {exc}") from None
