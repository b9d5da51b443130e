"""Braze segment filters as objects, evaluated locally (vectorised) with Braze's documented semantics.

Each filter renders the way the Braze dashboard words it (``str(f)``), has an HTML repr,
serialises to/from a plain dict, and evaluates on a `toolkit.braze.state.BrazeState` to a
boolean Series over its users. Semantics follow /work/shared/reference/braze-api.md §5 (cited
per operator below); where Braze's docs are silent the choice is marked UNCONFIRMED.
Invalid filters (the ones Braze's dashboard would refuse) raise `FilterError`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from functools import reduce
from html import escape
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from toolkit.braze.limits import LIMITS
from toolkit.braze.payload_rules import PROFILE_FIELDS, name_violations
from toolkit.braze.state import BrazeState
from toolkit.errors import FilterError

__all__ = [
    "Filter", "StringAttribute", "BooleanAttribute", "NumberAttribute", "DateAttribute",
    "CustomEventCount", "CustomEventPropertyCount", "CustomEventTime", "SegmentCohort",
    "AllOf", "AnyOf",
]

# Python-only regex syntax a PCRE/JavaScript engine (§5.2: the server engine is PCRE-like, the
# dashboard debugger is JavaScript) would refuse; Braze would not save such a filter.
_FOREIGN_REGEX = (
    (re.compile(r"\(\?P[<=>]"), "Python named-group syntax (?P<…>)", "use (?<name>…) or a plain group"),
    (re.compile(r"\(\?#"), "Python comment groups (?#…)", "remove the comment"),
    (re.compile(r"(?<!\\)\\[AZ]"), r"Python anchors \A / \Z", "use ^ and $"),
)

_REGISTRY: dict[str, type["Filter"]] = {}


def _code(text: object) -> str:
    return f"`{text}`"


def _subject(name: str) -> str:
    """How the dashboard names what an attribute filter tests: Braze's own profile fields
    (first_name, dob, …) have standard filters; everything else is a Custom Attribute."""
    return f"Profile field {_code(name)}" if name in PROFILE_FIELDS else f"Custom Attribute {_code(name)}"


def _require(condition: bool, message: str, hint: str, **context: Any) -> None:
    if not condition:
        raise FilterError(message, hint=hint, **context)


class Filter:
    """A Braze segment filter: ``evaluate(state)`` → boolean Series over ``state.users``."""

    type: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.type:
            _REGISTRY[cls.type] = cls

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self, state: BrazeState) -> pd.Series:
        raise NotImplementedError

    def count(self, state: BrazeState) -> int:
        """How many users Braze would put in a segment made of this filter alone."""
        return int(self.evaluate(state).sum())

    # -- composition ------------------------------------------------------------------------
    def __and__(self, other: "Filter") -> "AllOf":
        return AllOf(*_flatten(AllOf, self, other))

    def __or__(self, other: "Filter") -> "AnyOf":
        return AnyOf(*_flatten(AnyOf, self, other))

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "Filter":
        """Rebuild a filter from `to_dict` output; FilterError names what is wrong."""
        _require(isinstance(data, dict), f"a filter must be a mapping, not {type(data).__name__}",
                 "pass the dict produced by Filter.to_dict()")
        kind = data.get("type")
        cls = _REGISTRY.get(kind)  # type: ignore[arg-type]
        _require(cls is not None, f"unknown filter type {kind!r}",
                 f"use one of: {', '.join(sorted(_REGISTRY))}", field="type")
        return cls._from_fields({k: v for k, v in data.items() if k != "type"})

    @classmethod
    def _from_fields(cls, data: dict[str, Any]) -> "Filter":
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise FilterError(f"unknown field {unknown[0]!r} for a {cls.type} filter",
                              hint=f"allowed fields: {', '.join(sorted(names))}", field=unknown[0])
        try:
            return cls(**data)
        except TypeError:
            missing = sorted(f.name for f in fields(cls) if f.name not in data)  # type: ignore[arg-type]
            raise FilterError(f"a {cls.type} filter needs {', '.join(missing)}",
                              hint="pass the dict produced by Filter.to_dict()",
                              field=missing[0] if missing else None) from None

    # -- display ----------------------------------------------------------------------------
    def _repr_html_(self) -> str:
        return (f"<div class='braze-filter' style='font-family:monospace'>"
                f"{escape(str(self))}</div>")


def _flatten(group: type, *items: Filter) -> list[Filter]:
    out: list[Filter] = []
    for item in items:
        out.extend(item.filters if isinstance(item, group) else [item])  # type: ignore[attr-defined]
    return out


# ------------------------------------------------------------------------------------------
# custom attributes


def _check_name(name: object) -> None:
    problems = name_violations(name, what="custom attribute")
    _require(not problems, problems[0].message if problems else "", problems[0].fix if problems else "",
             field="name")


def _as_text(col: pd.Series) -> pd.Series:
    """The string values of an attribute; values of another type are not strings (no string ops)."""
    if isinstance(col.dtype, pd.StringDtype) or pd.api.types.is_string_dtype(col.dtype) and col.dtype != object:
        return col.astype("string")
    if col.dtype == object:
        return col.where(col.map(lambda v: isinstance(v, str), na_action="ignore").fillna(False)
                         .astype(bool)).astype("string")
    return pd.Series(pd.NA, index=col.index, dtype="string")


def _as_number(col: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(col.dtype):
        return pd.Series(pd.NA, index=col.index, dtype="Float64")
    if pd.api.types.is_numeric_dtype(col.dtype):
        return col.astype("Float64")
    if col.dtype == object:
        keep = col.map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                       na_action="ignore").fillna(False).astype(bool)
        return pd.to_numeric(col.where(keep), errors="coerce").astype("Float64")
    return pd.Series(pd.NA, index=col.index, dtype="Float64")


def _as_bool(col: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(col.dtype):
        return col.astype("boolean")
    if col.dtype == object:
        keep = col.map(lambda v: isinstance(v, (bool, np.bool_)), na_action="ignore").fillna(False).astype(bool)
        return col.where(keep).astype("boolean")
    return pd.Series(pd.NA, index=col.index, dtype="boolean")


def _as_time(col: pd.Series) -> pd.Series:
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        return col.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_dtype(col.dtype):
        return col.dt.tz_localize("UTC")
    if col.dtype == object or pd.api.types.is_string_dtype(col.dtype):
        return pd.to_datetime(col, errors="coerce", utc=True, format="mixed")
    return pd.Series(pd.NaT, index=col.index, dtype="datetime64[ns, UTC]")


# How the attribute filters of each value kind see a column (values of another type are blank).
# `toolkit.braze.filters_sql` loads these same views into SQL, so both evaluators read one value.
VALUE_VIEWS = {"text": _as_text, "number": _as_number, "boolean": _as_bool, "time": _as_time}


def _mask(values: pd.Series) -> pd.Series:
    """A nullable boolean result with NA (blank) counted as not selected."""
    return values.fillna(False).astype(bool)


@dataclass(frozen=True)
class StringAttribute(Filter):
    """Custom attribute filter on a string attribute (§5.1 strings, §5.2 regex)."""

    name: str
    op: str
    value: Any = None

    type: ClassVar[str] = "string_attribute"
    OPS: ClassVar[dict[str, str]] = {
        "matches_regex": "matches regex", "does_not_match_regex": "does not match regex",
        "is_any_of": "is any of", "is_none_of": "is none of",
        "contains_any_of": "contains any of", "does_not_contain_any_of": "doesn't contain any of",
        "is_blank": "is blank", "is_not_blank": "is not blank",
    }
    # §5.1 "Consolidated operators": equals → is any of, does not equal → is none of.
    ALIASES: ClassVar[dict[str, str]] = {"equals": "is_any_of", "does_not_equal": "is_none_of"}

    def __post_init__(self) -> None:
        _check_name(self.name)
        op = self.ALIASES.get(self.op, self.op)
        _require(op in self.OPS, f"{self.op!r} is not a string attribute operator",
                 f"use one of: {', '.join(self.OPS)}", field="op")
        object.__setattr__(self, "op", op)
        if op in ("matches_regex", "does_not_match_regex"):
            _validate_regex(self.value)
        elif op in ("is_blank", "is_not_blank"):
            _require(self.value is None, f"{self.OPS[op]!r} takes no value",
                     "drop the value", field="value")
        else:
            if isinstance(self.value, str):
                values: tuple = (self.value,)
            elif isinstance(self.value, (list, tuple)):
                values = tuple(self.value)
            else:
                values = ()
            _require(0 < len(values) <= LIMITS.filter_values,
                     f"{self.OPS[op]!r} needs 1 to {LIMITS.filter_values} values, got {len(values)}",
                     "pass one string or a list of at most 256 strings", field="value")
            for v in values:
                _require(isinstance(v, str), f"{self.OPS[op]!r} compares text, got {v!r}",
                         "quote the value", field="value")
                _require(len(v) <= LIMITS.string_length,
                         f"a value has {len(v)} characters; Braze filters take up to "
                         f"{LIMITS.string_length}", "shorten the value", field="value")
            object.__setattr__(self, "value", values)

    def evaluate(self, state: BrazeState) -> pd.Series:
        text = _as_text(state.attribute(self.name))
        present = text.notna()
        op = self.op
        if op in ("matches_regex", "does_not_match_regex"):
            # §5.2: Braze adds /gi — unanchored (partial) and case-insensitive.
            hit = _regex_search(text, self.value)
            if op == "matches_regex":
                return hit
            # §5.1/§5.2 FAQ: "If the value is blank, the user will not be included".
            return present & ~hit
        if op == "is_any_of":
            # §5.1: exact match, case sensitive, spaces significant.
            return _mask(text.isin(list(self.value)))
        if op == "is_none_of":
            # §5.1: case sensitive. Whether users without the attribute match is UNCONFIRMED;
            # we follow the plain reading ("not equal to any") and include them.
            return ~_mask(text.isin(list(self.value)))
        if op in ("contains_any_of", "does_not_contain_any_of"):
            # §5.1: substring match, case sensitive.
            hit = reduce(lambda a, b: a | b,
                         (_mask(text.str.contains(v, regex=False)) for v in self.value))
            # blank users are included by the negative form, as for is_none_of (UNCONFIRMED).
            return hit if op == "contains_any_of" else ~hit
        if op == "is_blank":
            # §5.1: BLANK "does not exist on a user's profile".
            return ~present
        # §5.1: IS NOT BLANK "exists on a user's profile and is not an empty string".
        return present & _mask(text.str.len() > 0)

    def __str__(self) -> str:
        label = self.OPS[self.op]
        if self.value is None:
            return f"{_subject(self.name)} {label}"
        if isinstance(self.value, tuple):
            shown = ", ".join(_code(v) for v in self.value)
        else:
            shown = _code(self.value)
        return f"{_subject(self.name)} {label} {shown}"


def _validate_regex(pattern: object) -> None:
    _require(isinstance(pattern, str) and pattern != "",
             "a regex filter needs a non-empty pattern", "type the pattern to match", field="value")
    assert isinstance(pattern, str)
    _require(len(pattern) <= LIMITS.regex_length,
             f"the pattern has {len(pattern):,} characters; Braze accepts at most {LIMITS.regex_length:,}",
             "shorten the pattern", field="value")
    for probe, what, fix in _FOREIGN_REGEX:
        _require(not probe.search(pattern), f"Braze's regex engine does not accept {what}: {pattern!r}",
                 fix, field="value")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise FilterError(f"invalid regular expression {pattern!r}: {exc}",
                          hint="fix the pattern (test it on https://regex101.com with the PCRE flavour)",
                          field="value") from None


def _regex_search(text: pd.Series, pattern: str) -> pd.Series:
    """Case-insensitive partial match, run once per distinct value (fast on large, repetitive columns)."""
    codes, uniques = pd.factorize(text, use_na_sentinel=True)
    rx = re.compile(pattern, re.IGNORECASE)
    hits = np.fromiter((rx.search(u) is not None for u in uniques), dtype=bool, count=len(uniques))
    hits = np.append(hits, False)  # code -1 (blank) indexes the trailing False
    return pd.Series(hits[codes], index=text.index)


@dataclass(frozen=True)
class BooleanAttribute(Filter):
    """Custom attribute filter on a boolean attribute (§5.1 booleans)."""

    name: str
    op: str

    type: ClassVar[str] = "boolean_attribute"
    OPS: ClassVar[dict[str, str]] = {
        "is_true": "is true", "is_false": "is false",
        "is_true_or_not_set": "is true or not set", "is_false_or_not_set": "is false or not set",
        "is_blank": "is blank", "is_not_blank": "is not blank",
    }

    def __post_init__(self) -> None:
        _check_name(self.name)
        _require(self.op in self.OPS, f"{self.op!r} is not a boolean attribute operator",
                 f"use one of: {', '.join(self.OPS)}", field="op")

    def evaluate(self, state: BrazeState) -> pd.Series:
        b = _as_bool(state.attribute(self.name))
        unset = b.isna()  # §5.1: IS BLANK "missing or null"
        true = _mask(b == True)  # noqa: E712 - nullable boolean comparison
        false = _mask(b == False)  # noqa: E712
        return {
            "is_true": true, "is_false": false,
            "is_true_or_not_set": true | unset, "is_false_or_not_set": false | unset,
            "is_blank": unset, "is_not_blank": ~unset,
        }[self.op]

    def __str__(self) -> str:
        return f"{_subject(self.name)} {self.OPS[self.op]}"


@dataclass(frozen=True)
class NumberAttribute(Filter):
    """Custom attribute filter on a number attribute (§5.1 numbers)."""

    name: str
    op: str
    value: float | int | None = None

    type: ClassVar[str] = "number_attribute"
    OPS: ClassVar[dict[str, str]] = {
        "exactly": "is exactly", "does_not_equal": "does not equal", "more_than": "is more than",
        "less_than": "is less than", "is_blank": "is blank", "is_not_blank": "is not blank",
    }
    ALIASES: ClassVar[dict[str, str]] = {"equals": "exactly"}

    def __post_init__(self) -> None:
        _check_name(self.name)
        op = self.ALIASES.get(self.op, self.op)
        _require(op in self.OPS, f"{self.op!r} is not a number attribute operator",
                 f"use one of: {', '.join(self.OPS)}", field="op")
        object.__setattr__(self, "op", op)
        if op in ("is_blank", "is_not_blank"):
            _require(self.value is None, f"{self.OPS[op]!r} takes no value", "drop the value",
                     field="value")
        else:
            ok = isinstance(self.value, (int, float)) and not isinstance(self.value, bool) \
                and np.isfinite(self.value)
            _require(ok, f"{self.OPS[op]!r} needs a finite number, got {self.value!r}",
                     "pass a number", field="value")

    def evaluate(self, state: BrazeState) -> pd.Series:
        x = _as_number(state.attribute(self.name))
        blank = x.isna()
        v = self.value
        if self.op == "exactly":
            # §5.1: "'Exactly 0' and 'Less Than' filters include users with NULL fields".
            return _mask(x == v) | (blank if v == 0 else False)
        if self.op == "less_than":
            return _mask(x < v) | blank
        if self.op == "more_than":
            return _mask(x > v)
        if self.op == "does_not_equal":
            # Blank handling is undocumented (UNCONFIRMED); blanks are excluded, as a value-less
            # user does not "not equal" anything in Braze's number model.
            return _mask(x != v)
        return blank if self.op == "is_blank" else ~blank

    def __str__(self) -> str:
        label = self.OPS[self.op]
        if self.value is None:
            return f"{_subject(self.name)} {label}"
        return f"{_subject(self.name)} {label} {self.value:g}"


@dataclass(frozen=True)
class DateAttribute(Filter):
    """Custom attribute filter on a time attribute (§5.1 time); days are 24 hours."""

    name: str
    op: str
    value: Any = None

    type: ClassVar[str] = "date_attribute"
    OPS: ClassVar[dict[str, str]] = {
        "before": "before", "after": "after",
        "more_than_days_ago": "more than {} days ago", "less_than_days_ago": "less than {} days ago",
        "in_more_than_days": "in more than {} days", "in_less_than_days": "in less than {} days",
        "is_blank": "is blank", "is_not_blank": "is not blank",
    }

    def __post_init__(self) -> None:
        _check_name(self.name)
        _require(self.op in self.OPS, f"{self.op!r} is not a date attribute operator",
                 f"use one of: {', '.join(self.OPS)}", field="op")
        if self.op in ("before", "after"):
            try:
                when = pd.Timestamp(self.value)
            except (TypeError, ValueError):
                when = pd.NaT
            _require(self.value is not None and not pd.isna(when),
                     f"{self.op!r} needs a date, got {self.value!r}", "pass 'YYYY-MM-DD'",
                     field="value")
            object.__setattr__(self, "value", when.date().isoformat()
                               if when == when.normalize() and when.tzinfo is None
                               else when.isoformat())
        elif self.op in ("is_blank", "is_not_blank"):
            _require(self.value is None, f"{self.op!r} takes no value", "drop the value",
                     field="value")
        else:
            ok = isinstance(self.value, (int, float)) and not isinstance(self.value, bool) \
                and self.value >= 0
            _require(ok, f"{self.op!r} needs a number of days ≥ 0, got {self.value!r}",
                     "pass a number of days", field="value")

    def _bound(self) -> tuple[pd.Timestamp, bool]:
        when = pd.Timestamp(self.value)
        date_only = len(str(self.value)) == 10
        if when.tzinfo is None:
            when = when.tz_localize("UTC")
        return when, date_only

    def evaluate(self, state: BrazeState) -> pd.Series:
        t = _as_time(state.attribute(self.name))
        blank = t.isna()
        if self.op == "is_blank":
            return blank
        if self.op == "is_not_blank":
            return ~blank
        # Every comparison below excludes blanks (a missing time is neither before nor after).
        if self.op in ("before", "after"):
            when, date_only = self._bound()
            if self.op == "before":
                return _mask(t < when)
            # A calendar date means the whole day (UTC; Braze uses the company time zone).
            return _mask(t >= when + pd.Timedelta(days=1)) if date_only else _mask(t > when)
        delta = pd.Timedelta(days=float(self.value))  # §5.1: "1 day as 24 hours"
        now = state.as_of
        return {
            "more_than_days_ago": lambda: _mask(t < now - delta),
            "less_than_days_ago": lambda: _mask((t > now - delta) & (t <= now)),
            "in_more_than_days": lambda: _mask(t > now + delta),
            "in_less_than_days": lambda: _mask((t > now) & (t < now + delta)),
        }[self.op]()

    def __str__(self) -> str:
        label = self.OPS[self.op]
        if self.op in ("before", "after"):
            return f"{_subject(self.name)} is {label} {self.value}"
        if "{}" in label:
            return f"{_subject(self.name)} is {label.format(f'{self.value:g}')}"
        return f"{_subject(self.name)} {label}"


# ------------------------------------------------------------------------------------------
# custom events

_COUNT_OPS = {"more_than": "more than", "less_than": "less than", "exactly": "exactly"}


def _check_count(op: str, count: object, days: object, *, days_required: bool = False) -> None:
    _require(op in _COUNT_OPS, f"{op!r} is not an event count operator",
             f"use one of: {', '.join(_COUNT_OPS)}", field="op")
    _require(isinstance(count, (int, np.integer)) and not isinstance(count, bool),
             f"the count must be a whole number, got {count!r}", "pass an integer 0–50",
             field="count")
    _require(0 <= int(count) <= LIMITS.event_count,  # type: ignore[arg-type]
             f"the count must be between 0 and {LIMITS.event_count}, got {count}",
             f"Braze event-count filters accept at most {LIMITS.event_count} (§5.3); use a custom "
             "attribute for larger thresholds", field="count")
    if days is None:
        _require(not days_required, "an event property filter needs a number of days (1–30)",
                 "pass days=30 (Braze keeps event property history for 30 days)", field="days")
        return
    _require(isinstance(days, (int, np.integer)) and not isinstance(days, bool)
             and 1 <= int(days) <= LIMITS.event_days,  # type: ignore[arg-type]
             f"days must be a whole number of calendar days from 1 to {LIMITS.event_days}, got {days!r}",
             "Braze counts events over the last 1–30 calendar days (§5.3)", field="days")


def _count_compare(counts: pd.Series, op: str, n: int) -> pd.Series:
    if op == "more_than":
        return counts > n
    if op == "less_than":
        return counts < n  # users who never did the event have count 0 and are included
    return counts == n


def _window(state: BrazeState, days: int | None) -> pd.Series:
    ev = state.events
    t = ev["time"]
    if days is None:
        return _mask(t <= state.as_of)
    # §5.3: "1 calendar day looks at 24-48 hours of user history, depending on the time the
    # segment is evaluated" — today so far plus the `days` previous whole (UTC) days.
    start = state.as_of.normalize() - pd.Timedelta(days=int(days))
    return _mask((t >= start) & (t <= state.as_of))


def _per_user_counts(state: BrazeState, selected: pd.Series) -> pd.Series:
    users = state.events.loc[selected.to_numpy(dtype=bool), "user"]
    counts = users.value_counts()
    return counts.reindex(state.users, fill_value=0)


@dataclass(frozen=True)
class CustomEventCount(Filter):
    """Custom Event count filter: more than / less than / exactly N, optionally in the last Y days (§5.3)."""

    event: str
    op: str
    count: int
    days: int | None = None

    type: ClassVar[str] = "custom_event_count"

    def __post_init__(self) -> None:
        problems = name_violations(self.event, what="custom event")
        _require(not problems, problems[0].message if problems else "",
                 problems[0].fix if problems else "", field="event")
        _check_count(self.op, self.count, self.days)

    def evaluate(self, state: BrazeState) -> pd.Series:
        # Event names match exactly (they are case sensitive in the Braze payload).
        sel = _mask(state.events["name"] == self.event) & _window(state, self.days)
        counts = _per_user_counts(state, sel)
        return pd.Series(_count_compare(counts, self.op, int(self.count)).to_numpy(),
                         index=state.users)

    def __str__(self) -> str:
        text = f"Custom Event {_code(self.event)} {_COUNT_OPS[self.op]} {self.count} times"
        return text + (f" in the last {self.days} calendar days" if self.days else "")


@dataclass(frozen=True)
class CustomEventPropertyCount(Filter):
    """X Custom Event Property In Y Days: events whose property equals a value (§5.3, ≤30 days)."""

    event: str
    property: str
    value: Any
    op: str
    count: int
    days: int = LIMITS.event_days

    type: ClassVar[str] = "custom_event_property_count"

    def __post_init__(self) -> None:
        for label, name in (("event", self.event), ("property", self.property)):
            problems = name_violations(name, what=f"custom event {label}" if label == "property"
                                       else "custom event")
            _require(not problems, problems[0].message if problems else "",
                     problems[0].fix if problems else "", field=label)
        _require(isinstance(self.value, (str, int, float, bool)),
                 f"the property value must be text, a number or a boolean, got {self.value!r}",
                 "pass a scalar value", field="value")
        _check_count(self.op, self.count, self.days, days_required=True)

    def evaluate(self, state: BrazeState) -> pd.Series:
        ev = state.events
        sel = _mask(ev["name"] == self.event) & _window(state, self.days)
        props = ev.loc[sel.to_numpy(dtype=bool), "properties"]
        want, prop = self.value, self.property
        same = np.fromiter((isinstance(p, dict) and prop in p and _same_value(p[prop], want)
                            for p in props), dtype=bool, count=len(props))
        keep = pd.Series(False, index=ev.index)
        keep.loc[props.index[same]] = True
        counts = _per_user_counts(state, keep)
        return pd.Series(_count_compare(counts, self.op, int(self.count)).to_numpy(),
                         index=state.users)

    def __str__(self) -> str:
        shown = str(self.value).lower() if isinstance(self.value, bool) else self.value
        return (f"Custom Event Property {_code(self.property)} of {_code(self.event)} is "
                f"{_code(shown)} {_COUNT_OPS[self.op]} {self.count} times in the last "
                f"{self.days} calendar days")


def _same_value(a: Any, b: Any) -> bool:
    """Property equality as JSON sees it: true is not 1, 1 is 1.0, text is case sensitive."""
    if isinstance(a, (bool, np.bool_)) or isinstance(b, (bool, np.bool_)):
        return isinstance(a, (bool, np.bool_)) and isinstance(b, (bool, np.bool_)) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class CustomEventTime(Filter):
    """First Did / Last Did Custom Event before/after a date, or last did more/less than X days ago (§5.3)."""

    event: str
    op: str
    value: Any

    type: ClassVar[str] = "custom_event_time"
    OPS: ClassVar[dict[str, str]] = {
        "first_did_before": "First Did Custom Event {e} before {v}",
        "first_did_after": "First Did Custom Event {e} after {v}",
        "last_did_before": "Last Did Custom Event {e} before {v}",
        "last_did_after": "Last Did Custom Event {e} after {v}",
        "last_did_more_than_days_ago": "Last Did Custom Event {e} more than {v} days ago",
        "last_did_less_than_days_ago": "Last Did Custom Event {e} less than {v} days ago",
    }

    def __post_init__(self) -> None:
        problems = name_violations(self.event, what="custom event")
        _require(not problems, problems[0].message if problems else "",
                 problems[0].fix if problems else "", field="event")
        _require(self.op in self.OPS, f"{self.op!r} is not a first/last did operator",
                 f"use one of: {', '.join(self.OPS)}", field="op")
        if self.op.endswith("days_ago"):
            # §5.3: Last Did "supports decimals, such as 0.25 hours".
            ok = isinstance(self.value, (int, float)) and not isinstance(self.value, bool) \
                and self.value >= 0
            _require(ok, f"{self.op!r} needs a number of days ≥ 0, got {self.value!r}",
                     "pass a number of days", field="value")
        else:
            try:
                when = pd.Timestamp(self.value)
            except (TypeError, ValueError):
                when = pd.NaT
            _require(self.value is not None and not pd.isna(when),
                     f"{self.op!r} needs a date, got {self.value!r}", "pass 'YYYY-MM-DD'",
                     field="value")
            object.__setattr__(self, "value", str(self.value) if isinstance(self.value, str)
                               else when.isoformat())

    def evaluate(self, state: BrazeState) -> pd.Series:
        ev = state.events
        sel = _mask(ev["name"] == self.event) & _mask(ev["time"] <= state.as_of)
        times = ev.loc[sel.to_numpy(dtype=bool)].groupby("user", observed=True)["time"]
        stamp = (times.min() if self.op.startswith("first") else times.max())
        t = stamp.reindex(state.users)
        # Users who never did the event have no first/last time and are never selected.
        if self.op.endswith("days_ago"):
            cutoff = state.as_of - pd.Timedelta(days=float(self.value))
            hit = t < cutoff if "more_than" in self.op else t > cutoff
        else:
            when = pd.Timestamp(self.value)
            when = when.tz_localize("UTC") if when.tzinfo is None else when
            date_only = len(str(self.value)) == 10
            if self.op.endswith("before"):
                hit = t < when
            else:
                hit = t >= when + pd.Timedelta(days=1) if date_only else t > when
        return pd.Series(_mask(hit).to_numpy(), index=state.users)

    def __str__(self) -> str:
        v = f"{self.value:g}" if isinstance(self.value, (int, float)) else self.value
        return self.OPS[self.op].format(e=_code(self.event), v=v)


# ------------------------------------------------------------------------------------------
# cohorts and groups


@dataclass(frozen=True)
class SegmentCohort(Filter):
    """Segment Cohorts includes / excludes <cohort name> (§5.4)."""

    name: str
    includes: bool = True

    type: ClassVar[str] = "segment_cohort"

    def __post_init__(self) -> None:
        _require(isinstance(self.name, str) and self.name.strip() != "",
                 "a Segment Cohorts filter needs a cohort name", "pass the cohort's name",
                 field="name")
        _require(isinstance(self.includes, bool), "includes must be true or false",
                 "pass includes=True or includes=False", field="includes")

    def evaluate(self, state: BrazeState) -> pd.Series:
        c = state.cohorts
        members = c.loc[_mask(c["cohort"] == self.name).to_numpy(dtype=bool), "user"]
        inside = pd.Series(state.users.isin(members.unique()), index=state.users)
        return inside if self.includes else ~inside

    def __str__(self) -> str:
        return f"Segment Cohorts {'includes' if self.includes else 'excludes'} {_code(self.name)}"


class _Group(Filter):
    joiner: ClassVar[str] = ""

    def __init__(self, *filters: Filter) -> None:
        if len(filters) == 1 and isinstance(filters[0], (list, tuple)):
            filters = tuple(filters[0])
        _require(len(filters) > 0, f"an {self.joiner} group needs at least one filter",
                 "add a filter to the group", field="filters")
        for f in filters:
            _require(isinstance(f, Filter), f"{f!r} is not a Braze filter",
                     "build groups from filter objects", field="filters")
        self.filters: tuple[Filter, ...] = tuple(filters)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.filters == self.filters  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.filters))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(repr(f) for f in self.filters)})"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "filters": [f.to_dict() for f in self.filters]}

    @classmethod
    def _from_fields(cls, data: dict[str, Any]) -> "Filter":
        unknown = sorted(set(data) - {"filters"})
        _require(not unknown, f"unknown field {unknown[0] if unknown else ''!r} for an "
                 f"{cls.joiner} group", "a group has only 'filters'", field="filters")
        items = data.get("filters")
        _require(isinstance(items, list), "'filters' must be a list of filters",
                 "pass a list of filter dicts", field="filters")
        return cls(*[Filter.from_dict(d) for d in items])

    def __str__(self) -> str:
        if len(self.filters) == 1:
            return str(self.filters[0])
        parts = [f"({f})" if isinstance(f, _Group) and len(f.filters) > 1 else str(f)
                 for f in self.filters]
        return f" {self.joiner} ".join(parts)

    def _repr_html_(self) -> str:
        items = "".join(f"<li>{f._repr_html_()}</li>" for f in self.filters)
        return (f"<div class='braze-filter-group'><b>{self.joiner}</b> of:"
                f"<ul style='margin:0'>{items}</ul></div>")


class AllOf(_Group):
    """Filters joined with AND: a user must match every one."""

    type: ClassVar[str] = "all_of"
    joiner: ClassVar[str] = "AND"

    def evaluate(self, state: BrazeState) -> pd.Series:
        return reduce(lambda a, b: a & b, (f.evaluate(state) for f in self.filters))


class AnyOf(_Group):
    """Filters joined with OR: a user must match at least one."""

    type: ClassVar[str] = "any_of"
    joiner: ClassVar[str] = "OR"

    def evaluate(self, state: BrazeState) -> pd.Series:
        return reduce(lambda a, b: a | b, (f.evaluate(state) for f in self.filters))
