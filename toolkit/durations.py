"""Durations as people write them (``"90s"``, ``"30m"``, ``"24h"``, ``"7d"``, ``"2w"``, seconds,
or a ``timedelta``): one reader for an approval's length and settle's wait."""
from __future__ import annotations

import re
from datetime import timedelta

from toolkit.errors import ToolkitError

__all__ = ["read_duration", "checked_duration"]

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def read_duration(value: timedelta | int | float | str) -> timedelta | None:
    """``timedelta``, seconds, or text like ``"90s"``, ``"30m"``, ``"24h"``, ``"7d"``, ``"2w"``;
    None when ``value`` is none of these."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return timedelta(seconds=float(value))
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", value.lower())
        if m:
            return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    return None


def checked_duration(value: timedelta | int | float | str, *, error: type[ToolkitError],
                     field: str, what: str, examples: str, allow_zero: bool) -> timedelta:
    """`read_duration`, or ``error`` naming ``field`` when ``value`` is not a duration or is
    negative (or zero, unless ``allow_zero``); ``examples`` shows how to write one."""
    out = read_duration(value)
    if out is None:
        if isinstance(value, str):
            raise error(f"cannot read the {what} {value!r}", field=field,
                        hint=f"write a number with a unit: {examples}")
        raise error(f"{field} must be a timedelta, seconds or text like "
                    f"{examples.split(', ')[0]!r}, not {type(value).__name__}", field=field)
    if out < timedelta(0) or (out == timedelta(0) and not allow_zero):
        raise error(f"the {what} must be {'zero or more' if allow_zero else 'longer than zero'}",
                    field=field, hint=f"pass a duration such as {examples.split(', ')[-1]!r}")
    return out
