"""Braze segment filters compiled to DuckDB SQL, so the engine can evaluate them where the data lives.

`to_sql(filter, names)` turns any `toolkit.braze.filters.Filter` into one boolean SQL expression
over a row of a ``users`` relation; `evaluate_sql(filter, state)` loads a `BrazeState` into
DuckDB and runs it, with the contract of ``Filter.evaluate``. The pandas evaluator in
`toolkit.braze.filters` stays the reference: every operator below reproduces its semantics (and
through them braze-api.md §5), and tests/mapping/test_filters_sql.py checks both agree.

The relations (names configurable in `SqlNames`):

- ``users``: one row per user; ``uid`` is the user key (text). An attribute's values sit in one
  typed column per value kind a filter reads — text ``VARCHAR``, number ``DOUBLE``, boolean
  ``BOOLEAN``, time ``TIMESTAMPTZ`` or ``TIMESTAMPTZ_NS`` — NULL where the user has no value of
  that kind (``filters.VALUE_VIEWS`` says what that means for a pandas column). An attribute with
  no column of the kind is blank for everyone, as in pandas.
- ``events(uid, name, time, properties)``: ``properties`` is the event's properties as JSON text.
- ``cohorts(uid, cohort)``.

Every compiled expression is TRUE or FALSE, never NULL: blank handling is spelled out per
operator, as in the reference. Event and cohort conditions are uncorrelated ``uid IN (SELECT …)``
subqueries, which DuckDB runs as one hash semi-join each over a single pass of the relation.
Instants derived from ``as_of`` ("in the last 7 days", "more than 2 days ago") are computed in
Python with the reference's own pandas arithmetic and written as nanosecond literals.

`to_sql` raises `FilterError`, naming the filter, where SQL cannot mean what pandas means; the
caller then evaluates that filter with ``Filter.evaluate``:

- regex patterns RE2 cannot run with Python's meaning (`toolkit.braze.regex_sql` lists them:
  backreferences, lookaround, ``\\b``, ``$`` followed by more pattern, …);
- an event property value that is not a finite number below 2**63 in magnitude (JSON, which the
  properties travel as, cannot say NaN or infinity, and DuckDB reads larger integers as inexact
  doubles).
"""
from __future__ import annotations

import json
import numbers
import re
from dataclasses import dataclass, field
from functools import singledispatch
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

from toolkit import engine
from toolkit.braze.filters import (VALUE_VIEWS, AllOf, AnyOf, BooleanAttribute, CustomEventCount,
                                   CustomEventPropertyCount, CustomEventTime, DateAttribute, Filter,
                                   NumberAttribute, SegmentCohort, StringAttribute)
from toolkit.braze.regex_sql import UnsupportedPattern, to_re2
from toolkit.braze.state import BrazeState
from toolkit.errors import FilterError

__all__ = ["SqlNames", "to_sql", "evaluate_sql"]

_SQL_TYPES = {"text": "VARCHAR", "number": "DOUBLE", "boolean": "BOOLEAN", "time": "TIMESTAMPTZ"}
_FALLBACK_HINT = "evaluate this filter with pandas instead: filter.evaluate(state)"
# JSON numbers DuckDB reads exactly: larger integers become doubles and would compare inexactly.
_EXACT_INTEGER_LIMIT = 2**63


@dataclass(frozen=True)
class SqlNames:
    """What compiled filter SQL refers to: the relations, where each attribute's values are, and
    ``as_of``, the instant "in the last Y days" and "N days ago" count from (as `BrazeState`).

    ``columns`` maps an attribute name to ``{value kind: column of users}`` with kinds ``text``,
    ``number``, ``boolean`` and ``time``. Relation and column names are SQL identifiers (quoted
    by the compiler)."""

    as_of: pd.Timestamp
    columns: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    users: str = "users"
    events: str = "events"
    cohorts: str = "cohorts"

    def __post_init__(self) -> None:
        as_of = pd.Timestamp(self.as_of)
        object.__setattr__(self, "as_of", as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of)


def to_sql(filter: Filter, names: SqlNames) -> str:
    """A DuckDB boolean expression, TRUE exactly for the users ``filter.evaluate`` selects."""
    return _compile(filter, names)


def evaluate_sql(filter: Filter, state: BrazeState) -> pd.Series:
    """``filter`` evaluated by DuckDB on ``state``: a boolean Series over ``state.users``.

    Only what the filter reads is loaded, as Arrow: its attributes in the value kinds it reads
    (``filters.VALUE_VIEWS``, so both evaluators see the same values; typed columns convert
    without Python objects, a time view of a text column is parsed once by pandas as the
    reference parses it), events (properties as JSON text, written only for the properties a
    filter compares, on the events its window can count) and cohorts. Raises `FilterError`
    where `to_sql` does, before loading anything, and for event property values JSON cannot
    carry exactly (Decimal, Fraction, complex)."""
    reads = _Reads.of(filter)
    names = SqlNames(as_of=state.as_of,
                     columns={name: {kind: _column(name, kind) for kind in kinds}
                              for name, kinds in reads.attributes.items()})
    expression = to_sql(filter, names)
    with engine.connect() as db:
        db.register(names.users, _users_table(state, reads.attributes))
        if reads.events:
            try:
                events = _events_table(state, reads.properties, reads.property_days)
            except _InexactProperty as exc:
                raise _refusal(filter, str(exc)) from None
            db.register(names.events, events)
        if reads.cohorts:
            db.register(names.cohorts, pa.table({"uid": _text(state.cohorts["user"]),
                                                 "cohort": _text(state.cohorts["cohort"])}))
        positions = db.execute(f"SELECT pos FROM {engine.quote(names.users)} "
                               f"WHERE {expression}").fetchnumpy()["pos"]
    selected = np.zeros(len(state.users), dtype=bool)
    selected[positions] = True
    return pd.Series(selected, index=state.users)


# ------------------------------------------------------------------------------------------
# what a filter reads, and loading it


@dataclass
class _Reads:
    attributes: dict[str, set[str]] = field(default_factory=dict)  # name → value kinds
    properties: dict[str, set[str]] = field(default_factory=dict)  # event name → property names
    property_days: dict[str, int] = field(default_factory=dict)  # event name → widest window
    events: bool = False
    cohorts: bool = False

    @classmethod
    def of(cls, filter: Filter) -> "_Reads":
        reads = cls()
        reads._add(filter)
        return reads

    def _add(self, f: Filter) -> None:
        if isinstance(f, (AllOf, AnyOf)):
            for member in f.filters:
                self._add(member)
        elif isinstance(f, SegmentCohort):
            self.cohorts = True
        elif isinstance(f, (CustomEventCount, CustomEventPropertyCount, CustomEventTime)):
            self.events = True
            if isinstance(f, CustomEventPropertyCount):
                self.properties.setdefault(f.event, set()).add(f.property)
                self.property_days[f.event] = max(f.days, self.property_days.get(f.event, 0))
        else:
            for cls, kind in _ATTRIBUTE_KINDS.items():
                if isinstance(f, cls):
                    self.attributes.setdefault(f.name, set()).add(kind)


_ATTRIBUTE_KINDS = {StringAttribute: "text", NumberAttribute: "number",
                    BooleanAttribute: "boolean", DateAttribute: "time"}


def _column(name: str, kind: str) -> str:
    return f"{kind}:{name}"


def _text(values: pd.Series | pd.Index) -> pa.Array:
    return pa.array(pd.Series(values, copy=False).astype("string"))


def _users_table(state: BrazeState, attributes: dict[str, set[str]]) -> pa.Table:
    columns = {"uid": _text(state.users), "pos": np.arange(len(state.users), dtype=np.int64)}
    for name, kinds in attributes.items():
        for kind in kinds:
            columns[_column(name, kind)] = pa.array(VALUE_VIEWS[kind](state.attribute(name)))
    return pa.table(columns)


def _events_table(state: BrazeState, properties: dict[str, set[str]],
                  days: dict[str, int]) -> pa.Table:
    events = state.events
    columns = {"uid": _text(events["user"]), "name": _text(events["name"]),
               "time": pa.array(events["time"])}
    if properties:
        columns["properties"] = _property_texts(state, properties, days)
    return pa.table(columns)


def _property_texts(state: BrazeState, wanted: dict[str, set[str]], days: dict[str, int]) -> pa.Array:
    """JSON text of the properties filters compare, on the events of their name inside their
    widest window (NULL elsewhere: no property filter counts those events)."""
    events = state.events
    texts = np.full(len(events), None, dtype=object)
    properties = events["properties"].to_numpy(dtype=object)
    time = events["time"]
    for event, keys in wanted.items():
        counted = (events["name"] == event) & (time >= _window_start(state.as_of, days[event])) \
            & (time <= state.as_of)
        rows = np.flatnonzero(counted.fillna(False).to_numpy(dtype=bool))
        texts[rows] = [_json_properties(p, keys) for p in properties[rows]]
    return pa.array(texts, type=pa.string())


def _json_properties(properties: Any, keys: set[str]) -> str | None:
    if not isinstance(properties, dict):
        return None
    return _JSON.encode({k: properties[k] for k in keys if k in properties})


class _InexactProperty(ValueError):
    """An event property value JSON cannot carry with the meaning the reference compares it by."""


def _json_value(value: Any) -> Any:
    """JSON for property values `json` cannot write: NumPy scalars as their Python value; other
    objects as null, which equals no filter value, as in the reference — except numbers (Decimal,
    Fraction, complex) that Python compares by value, which have no faithful JSON form."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, numbers.Number):
        raise _InexactProperty(f"an event property holds {value!r} ({type(value).__name__}), a "
                               "number JSON cannot carry exactly")
    return None


_JSON = json.JSONEncoder(default=_json_value, ensure_ascii=False)


# ------------------------------------------------------------------------------------------
# SQL text


def _refusal(f: Filter, message: str) -> FilterError:
    return FilterError(message, hint=_FALLBACK_HINT, filter=str(f))


def _double(value: float) -> str:
    return f"CAST('{float(value)!r}' AS DOUBLE)"


def _instant(when: pd.Timestamp) -> str:
    """A nanosecond-exact TIMESTAMPTZ literal (microsecond type when that is exact: wider range)."""
    utc = when.tz_convert("UTC")
    text = (f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d} "
            f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond:06d}")
    if utc.nanosecond:
        return f"CAST('{text}{utc.nanosecond:03d}+00' AS TIMESTAMPTZ_NS)"
    return f"CAST('{text}+00' AS TIMESTAMPTZ)"


def _calendar_value(value: Any) -> tuple[pd.Timestamp, bool]:
    """A before/after value as the reference reads it: naive means UTC; 'YYYY-MM-DD' is a whole day."""
    when = pd.Timestamp(value)
    return (when.tz_localize("UTC") if when.tzinfo is None else when), len(str(value)) == 10


# Braze's "is blank" / "is not blank" on a number or time attribute: the value is missing or not
_BLANK = {"is_blank": "({} IS NULL)", "is_not_blank": "({} IS NOT NULL)"}


def _attribute(names: SqlNames, attribute: str, kind: str) -> str:
    column = names.columns.get(attribute, {}).get(kind)
    if column is None:
        return f"CAST(NULL AS {_SQL_TYPES[kind]})"
    return f"{engine.quote(names.users)}.{engine.quote(column)}"


def _users_in(names: SqlNames, subquery: str) -> str:
    return f"coalesce({engine.quote(names.users)}.uid IN ({subquery}), false)"


@singledispatch
def _compile(f: Filter, names: SqlNames) -> str:
    raise _refusal(f, f"no SQL form for a {type(f).__name__} filter")


@_compile.register
def _(f: StringAttribute, names: SqlNames) -> str:
    text = _attribute(names, f.name, "text")
    if f.op in ("matches_regex", "does_not_match_regex"):
        try:
            pattern = to_re2(f.value, re.IGNORECASE)  # §5.2: partial and case-insensitive
        except UnsupportedPattern as exc:
            raise _refusal(f, f"DuckDB's regex engine cannot run this pattern as Braze's "
                              f"reference does: {exc}") from None
        hit = f"coalesce(regexp_matches({text}, {engine.literal(pattern)}), false)"
        return hit if f.op == "matches_regex" else f"({text} IS NOT NULL AND NOT {hit})"
    if f.op in ("is_any_of", "is_none_of"):
        hit = f"coalesce({text} IN ({', '.join(engine.literal(v) for v in f.value)}), false)"
        return hit if f.op == "is_any_of" else f"NOT {hit}"
    if f.op in ("contains_any_of", "does_not_contain_any_of"):
        found = " OR ".join(f"contains({text}, {engine.literal(v)})" for v in f.value)
        hit = f"coalesce({found}, false)"
        return hit if f.op == "contains_any_of" else f"NOT {hit}"
    if f.op == "is_blank":
        return f"({text} IS NULL)"
    return f"coalesce({text} <> '', false)"  # is_not_blank: present and not the empty string


@_compile.register
def _(f: BooleanAttribute, names: SqlNames) -> str:
    b = _attribute(names, f.name, "boolean")
    return {
        "is_true": f"coalesce({b}, false)", "is_false": f"coalesce(NOT {b}, false)",
        "is_true_or_not_set": f"coalesce({b}, true)",
        "is_false_or_not_set": f"coalesce(NOT {b}, true)",
        "is_blank": f"({b} IS NULL)", "is_not_blank": f"({b} IS NOT NULL)",
    }[f.op]


@_compile.register
def _(f: NumberAttribute, names: SqlNames) -> str:
    x = _attribute(names, f.name, "number")
    if f.op in _BLANK:
        return _BLANK[f.op].format(x)
    v = _double(f.value)
    if f.op == "exactly":  # "'Exactly 0' and 'Less Than' filters include users with NULL fields"
        equal = f"coalesce({x} = {v}, false)"
        return f"({equal} OR {x} IS NULL)" if f.value == 0 else equal
    if f.op == "less_than":
        return f"coalesce({x} < {v}, true)"
    if f.op == "more_than":
        return f"coalesce({x} > {v}, false)"
    return f"coalesce({x} <> {v}, false)"  # does_not_equal: blanks excluded


@_compile.register
def _(f: DateAttribute, names: SqlNames) -> str:
    t = _attribute(names, f.name, "time")
    if f.op in _BLANK:
        return _BLANK[f.op].format(t)
    if f.op in ("before", "after"):
        when, whole_day = _calendar_value(f.value)
        if f.op == "before":
            condition = f"{t} < {_instant(when)}"
        elif whole_day:
            condition = f"{t} >= {_instant(when + pd.Timedelta(days=1))}"
        else:
            condition = f"{t} > {_instant(when)}"
    else:
        now = names.as_of
        delta = pd.Timedelta(days=float(f.value))  # §5.1: "1 day as 24 hours"
        condition = {
            "more_than_days_ago": lambda: f"{t} < {_instant(now - delta)}",
            "less_than_days_ago": lambda: f"{t} > {_instant(now - delta)} AND {t} <= {_instant(now)}",
            "in_more_than_days": lambda: f"{t} > {_instant(now + delta)}",
            "in_less_than_days": lambda: f"{t} > {_instant(now)} AND {t} < {_instant(now + delta)}",
        }[f.op]()
    return f"coalesce({condition}, false)"


def _event_rows(names: SqlNames, event: str, days: int | None) -> str:
    """The WHERE of one event's rows counted: its name, up to as_of, within the last ``days``
    calendar days (§5.3: today so far plus ``days`` whole UTC days before it)."""
    window = f"time <= {_instant(names.as_of)}"
    if days is not None:
        window = f"time >= {_instant(_window_start(names.as_of, days))} AND {window}"
    return f"name = {engine.literal(event)} AND {window} AND uid IS NOT NULL"


def _window_start(as_of: pd.Timestamp, days: int) -> pd.Timestamp:
    return as_of.normalize() - pd.Timedelta(days=int(days))


def _count_condition(names: SqlNames, rows: str, op: str, n: int) -> str:
    """Users whose count of ``rows`` is more than / less than / exactly ``n`` (0 if they have none)."""
    doers = f"SELECT uid FROM {engine.quote(names.events)} WHERE {rows}"
    if op == "more_than":
        return _users_in(names, f"{doers} GROUP BY uid HAVING count(*) > {n}")
    if op == "exactly":
        if n == 0:
            return f"NOT {_users_in(names, doers)}"
        return _users_in(names, f"{doers} GROUP BY uid HAVING count(*) = {n}")
    if n == 0:  # less_than 0: no count is negative
        return "false"
    return f"NOT {_users_in(names, f'{doers} GROUP BY uid HAVING count(*) >= {n}')}"


@_compile.register
def _(f: CustomEventCount, names: SqlNames) -> str:
    return _count_condition(names, _event_rows(names, f.event, f.days), f.op, int(f.count))


@_compile.register
def _(f: CustomEventPropertyCount, names: SqlNames) -> str:
    rows = f"{_event_rows(names, f.event, f.days)} AND {_property_equals(f)}"
    return _count_condition(names, rows, f.op, int(f.count))


def _property_equals(f: CustomEventPropertyCount) -> str:
    """The event's property equals the filter value as the reference compares them (as JSON sees
    it): true is not 1, 1 is 1.0, text is case sensitive, anything else equals nothing."""
    pointer = engine.literal("/" + f.property.replace("~", "~0").replace("/", "~1"))  # RFC 6901
    kind = f"json_type(properties, {pointer})"
    text = f"json_extract_string(properties, {pointer})"
    want = f.value
    if isinstance(want, bool):
        return f"({kind} = 'BOOLEAN' AND {text} = {engine.literal('true' if want else 'false')})"
    if isinstance(want, str):
        return f"({kind} = 'VARCHAR' AND {text} = {engine.literal(want)})"
    if not abs(want) < _EXACT_INTEGER_LIMIT:  # also false for NaN
        raise _refusal(f, f"the property value {want!r} is not a finite number below 2**63 in "
                          "magnitude, which event properties (JSON) compare exactly")
    # Python compares int and float exactly: an integer property equals a float value only when
    # the value is a whole number, a float property equals an integer value only when the
    # integer is exactly a double.
    same = []
    if float(want) == want:
        same.append(f"({kind} = 'DOUBLE' AND CAST({text} AS DOUBLE) = {_double(want)})")
    if float(want).is_integer():
        digits = engine.literal(str(int(want)))
        same.append(f"({kind} IN ('BIGINT', 'UBIGINT') AND {text} = {digits})")
    return "(" + " OR ".join(same) + ")"


@_compile.register
def _(f: CustomEventTime, names: SqlNames) -> str:
    stamp = "min(time)" if f.op.startswith("first") else "max(time)"
    if f.op.endswith("days_ago"):
        cutoff = _instant(names.as_of - pd.Timedelta(days=float(f.value)))
        condition = f"{stamp} < {cutoff}" if "more_than" in f.op else f"{stamp} > {cutoff}"
    else:
        when, whole_day = _calendar_value(f.value)
        if f.op.endswith("before"):
            condition = f"{stamp} < {_instant(when)}"
        elif whole_day:
            condition = f"{stamp} >= {_instant(when + pd.Timedelta(days=1))}"
        else:
            condition = f"{stamp} > {_instant(when)}"
    # Users who never did the event have no first/last time and are never selected.
    return _users_in(names, f"SELECT uid FROM {engine.quote(names.events)} WHERE "
                            f"{_event_rows(names, f.event, None)} GROUP BY uid HAVING {condition}")


@_compile.register
def _(f: SegmentCohort, names: SqlNames) -> str:
    inside = _users_in(names, f"SELECT uid FROM {engine.quote(names.cohorts)} "
                              f"WHERE cohort = {engine.literal(f.name)}")
    return inside if f.includes else f"NOT {inside}"


@_compile.register
def _(f: AllOf, names: SqlNames) -> str:
    return "(" + " AND ".join(_compile(member, names) for member in f.filters) + ")"


@_compile.register
def _(f: AnyOf, names: SqlNames) -> str:
    return "(" + " OR ".join(_compile(member, names) for member in f.filters) + ")"
