"""Braze's accepted datetime strings for the sandbox: ISO-8601 and the documented variants.

Reference: braze-api.md §1.4 (EVO): event ``time`` is "ISO 8601 or ``yyyy-MM-dd'T'HH:mm:ss:SSSZ``";
"Time attributes without a time zone will default to midnight UTC"; "Events with timestamps in the
future will default to the current time." One precompiled regex keeps this off the hot path's budget.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

__all__ = ["parse_time", "format_time"]

# Date, optional time (":SSS" millisecond separator is Braze's yyyy-MM-dd'T'HH:mm:ss:SSSZ), optional
# zone as Z, ±HH, ±HHMM or ±HH:MM. A space instead of T is Braze's "yyyy-MM-dd HH:mm:ss" variant.
_ISO = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.:](\d{1,9}))?)?)?"
    r" ?(Z|z|[+-]\d{2}(?::?\d{2})?)?"
)


def parse_time(value: object) -> datetime | None:
    """Return an aware UTC datetime for a Braze-accepted time string, or None if it is not one."""
    if type(value) is not str or len(value) > 40:
        return None
    m = _ISO.fullmatch(value)
    if m is None:
        return None
    year, month, day, hh, mm, ss, frac, zone = m.groups()
    if hh is None and zone is not None:
        return None  # a zone without a time of day is not ISO-8601
    try:
        micro = int((frac or "0")[:6].ljust(6, "0"))
        dt = datetime(int(year), int(month), int(day), int(hh or 0), int(mm or 0), int(ss or 0),
                      micro, tzinfo=timezone.utc)
    except ValueError:
        return None
    if zone and zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
        if offset >= timedelta(hours=24):
            return None
        dt = dt - sign * offset
    return dt


def format_time(dt: datetime) -> str:
    """Braze's export style: UTC with milliseconds and a trailing Z."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
