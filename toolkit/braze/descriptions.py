"""Read Braze's human-readable description of a segment's filters and compare it with a filter.

``GET /segments/details`` gives a segment's ``description``, "a human-readable description of
filters"; Braze does not document its wording (UNCONFIRMED, docs/reference-segments.md). The
reader is therefore lenient: it splits the text into clauses at AND / OR, and recognises in each
the dashboard's phrases — *Custom Attribute `x` is true*, *Custom Event `E` more than 0 times in
the last 7 calendar days*, *Segment Cohorts includes `c`* … — with names in backticks, quotes or
bare. A clause it cannot read is kept as text and never counted as a difference.

`clauses_of(filter)` describes a `toolkit.braze.filters.Filter` in the same terms, and `compare`
lists what differs: another attribute or event, another operator, value or event window, a filter
missing or extra.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from toolkit.errors import SegmentCheckError

__all__ = ["Clause", "Difference", "parse_description", "clauses_of", "compare", "ASPECTS"]

# What a difference is about → how it reads (placeholders: name, expected, actual).
ASPECTS = {
    "attribute": "Braze's segment filters on attribute {actual}; this computation is sent as "
                 "attribute {expected}",
    "event": "Braze's segment counts event {actual}; this computation is sent as event "
             "{expected}",
    "cohort": "Braze's segment uses cohort {actual}; this computation is imported as cohort "
              "{expected}",
    "operator": "{name}: Braze's segment uses {actual} where the recommended filter uses "
                "{expected}",
    "fewer_operators": "{name}: Braze's segment uses only {actual} of the recommended "
                       "{expected} (the cases left out, such as members who re-entered, are "
                       "missed)",
    "value": "{name}: Braze's segment compares with {actual} where the recommended filter "
             "compares with {expected}",
    "window": "{name}: Braze's segment counts events {actual}; the recommended filter counts "
              "them {expected}",
    "missing": "Braze's segment has no filter on {name} (recommended: {expected})",
    "extra": "Braze's segment also filters on {name} ({actual})",
}

# Operator phrases of attribute filters as the dashboard words them, longest first, mapped to
# one canonical name: Braze consolidated "equals" into "is any of" and "does not equal" into
# "is none of" (braze-api.md §5.1), and a number's "exactly" is the same comparison.
_ATTRIBUTE_OPS = {
    "does not match regex": "does_not_match_regex", "doesn't match regex": "does_not_match_regex",
    "matches regex": "matches_regex", "does not contain any of": "does_not_contain_any_of",
    "doesn't contain any of": "does_not_contain_any_of", "contains any of": "contains_any_of",
    "is true or not set": "is_true_or_not_set", "is false or not set": "is_false_or_not_set",
    "is not blank": "is_not_blank", "is blank": "is_blank", "is true": "is_true",
    "is false": "is_false", "is none of": "not_equals", "does not equal": "not_equals",
    "doesn't equal": "not_equals", "is any of": "equals", "equals": "equals",
    "is exactly": "equals", "exactly": "equals", "is more than": "more_than",
    "more than": "more_than", "is less than": "less_than", "less than": "less_than",
    "is before": "before", "before": "before", "is after": "after", "after": "after",
    "is in more than": "in_more_than_days", "is in less than": "in_less_than_days",
    "is": "equals",
}
_OP_WORDS = {
    "equals": "is any of", "not_equals": "is none of", "matches_regex": "matches regex",
    "does_not_match_regex": "does not match regex", "contains_any_of": "contains any of",
    "does_not_contain_any_of": "doesn't contain any of", "is_true": "is true",
    "is_false": "is false", "is_true_or_not_set": "is true or not set",
    "is_false_or_not_set": "is false or not set", "is_blank": "is blank",
    "is_not_blank": "is not blank", "more_than": "more than", "less_than": "less than",
    "exactly": "exactly", "before": "before", "after": "after",
    "more_than_days_ago": "more than … days ago", "less_than_days_ago": "less than … days ago",
    "in_more_than_days": "in more than … days", "in_less_than_days": "in less than … days",
    "includes": "includes", "excludes": "excludes",
    "first_did_before": "first did before", "first_did_after": "first did after",
    "last_did_before": "last did before", "last_did_after": "last did after",
    "last_did_more_than_days_ago": "last did more than … days ago",
    "last_did_less_than_days_ago": "last did less than … days ago",
}
_NAME = r"(?P<name>`[^`]+`|\"[^\"]+\"|'[^']+'|.+?)"
_WINDOW = r"(?:\s+(?:in|within|over)\s+the\s+(?:last|past)\s+(?P<days>\d+)\s+(?:calendar\s+)?days?)?"
_PATTERNS = (
    ("event_property", re.compile(
        r"(?:X\s+)?Custom\s+Event\s+Property\s+(?P<property>`[^`]+`|\"[^\"]+\"|.+?)\s+(?:of|for)\s+"
        r"(?P<name>`[^`]+`|\"[^\"]+\"|.+?)\s+(?:is|=|equals)\s+(?P<value>`[^`]*`|\"[^\"]*\"|.+?)"
        r"\s+(?:count\s+)?(?:is\s+)?(?P<op>more than|less than|exactly)\s+(?P<count>\d+)"
        r"(?:\s+times?)?" + _WINDOW + r"\.?$", re.IGNORECASE)),
    ("event_time", re.compile(
        r"(?P<which>First|Last)\s+Did\s+Custom\s+Event\s+" + _NAME + r"\s+(?:is\s+)?"
        r"(?P<op>before|after|more than|less than)\s+(?P<value>.+?)(?P<ago>\s+days?\s+ago)?\.?$",
        re.IGNORECASE)),
    ("event", re.compile(
        r"(?:X\s+)?Custom\s+Event\s+" + _NAME + r"\s+(?:count\s+)?(?:is\s+)?"
        r"(?P<op>more than|less than|exactly)\s+(?P<count>\d+)(?:\s+times?)?" + _WINDOW
        + r"\.?$", re.IGNORECASE)),
    ("cohort", re.compile(r"Segment\s+Cohorts?\s+(?P<op>includes|excludes)\s+" + _NAME + r"\.?$",
                          re.IGNORECASE)),
    ("attribute", re.compile(
        r"(?:Custom\s+Attribute|Profile\s+field|Attribute)\s+" + _NAME + r"\s+(?P<op>"
        + "|".join(re.escape(p) for p in sorted(_ATTRIBUTE_OPS, key=len, reverse=True))
        + r")(?:\s+(?P<value>.*?))?\.?$", re.IGNORECASE)),
)
_DAYS_AGO = re.compile(r"^(?:in\s+)?(?P<n>\d+(?:\.\d+)?)\s+days?(?:\s+ago)?$", re.IGNORECASE)


@dataclass(frozen=True)
class Clause:
    """One filter as a comparable fact: what it tests (``subject``: attribute, event,
    event_property, event_time, cohort, or unknown), on which ``name``, with which canonical
    ``operator``, ``value``, event window (``days``) and ``event_property``."""

    subject: str
    name: str | None
    operator: str | None = None
    value: str | None = None
    days: int | None = None
    event_property: str | None = None
    text: str = ""

    @property
    def group(self) -> str:
        """attribute, event (counts, properties and first/last did alike) or cohort."""
        return "event" if self.subject.startswith("event") else self.subject

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Difference:
    """One way Braze's segment differs from the recommended filter."""

    aspect: str
    name: str
    expected: str
    actual: str
    narrows: bool = False     # an event window shorter than the recommended one

    @property
    def words(self) -> str:
        return ASPECTS[self.aspect].format(name=_tick(self.name), expected=self.expected,
                                           actual=self.actual)

    def __str__(self) -> str:
        return self.words


def _tick(name: str) -> str:
    return f"`{name}`"


def _unquote(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "`\"'":
        return text[1:-1]
    return text


def _values(text: str | None) -> str | None:
    """A value list as one comparable text: `a`, `b` → a, b."""
    if text is None or not text.strip():
        return None
    parts = re.findall(r"`([^`]*)`", text)
    if parts:
        return ", ".join(parts)
    return _unquote(text)


def _split(text: str) -> list[str]:
    """Clauses at AND / OR (and line breaks or semicolons), outside backticks and quotes."""
    masked, saved = [], []

    def keep(m: re.Match) -> str:
        saved.append(m.group(0))
        return f"\x00{len(saved) - 1}\x00"

    plain = re.sub(r"`[^`]*`|\"[^\"]*\"", keep, text)
    for part in re.split(r"\s+(?:AND|OR)\s+|\s*[;\n]\s*", plain):
        part = part.strip().strip("()").strip()
        if part:
            masked.append(re.sub(r"\x00(\d+)\x00", lambda m: saved[int(m.group(1))], part))
    return masked


def _clause(text: str) -> Clause:
    for subject, pattern in _PATTERNS:
        m = pattern.match(text)
        if m is None:
            continue
        g = m.groupdict()
        name = _unquote(g.get("name"))
        days = int(g["days"]) if g.get("days") else None
        if subject in ("event", "event_property"):
            return Clause(subject, name, g["op"].lower().replace(" ", "_"),
                          g["count"] if subject == "event" else
                          f"{_unquote(g['value'])} {g['op'].lower()} {g['count']}",
                          days, _unquote(g.get("property")), text)
        if subject == "event_time":
            op = g["op"].lower().replace(" ", "_")
            if g.get("ago"):
                op += "_days_ago"
            return Clause(subject, name, f"{g['which'].lower()}_did_{op}",
                          _values(g["value"]), None, None, text)
        if subject == "cohort":
            return Clause(subject, name, g["op"].lower(), None, None, None, text)
        op = _ATTRIBUTE_OPS[g["op"].lower()]
        value = g.get("value")
        if op in ("more_than", "less_than") and value:
            ago = _DAYS_AGO.match(value.strip())
            if ago and value.strip().lower().endswith("ago"):
                op, value = f"{op}_days_ago", ago.group("n")
        if op in ("in_more_than_days", "in_less_than_days") and value:
            ago = _DAYS_AGO.match(value.strip())
            value = ago.group("n") if ago else value
        return Clause("attribute", name, op, _values(value), None, None, text)
    return Clause("unknown", None, text=text)


def parse_description(text: Any, *, segment: str | None = None) -> list[Clause]:
    """Braze's description of a segment as clauses; `SegmentCheckError` when it is empty or
    none of it reads as a filter."""
    where = {"field": "description", "segment": segment}
    if not isinstance(text, str) or not text.strip():
        raise SegmentCheckError(
            "Braze gave no description of this segment's filters, so they cannot be compared "
            "with the recommended filter", **where,
            hint="open the segment in Braze and check that it has filters (a segment of all "
                 "users has none); or compare sizes only with check_filters=False "
                 "(--sizes-only)")
    clauses = [_clause(part) for part in _split(text)]
    if not clauses or all(c.subject == "unknown" for c in clauses):
        shown = text if len(text) <= 120 else text[:117] + "…"
        raise SegmentCheckError(
            f"Braze's description of this segment's filters reads as no filter the toolkit "
            f"knows: {shown!r}", **where,
            hint="check the segment in Braze; if its filters are right, compare sizes only with "
                 "check_filters=False (--sizes-only)")
    return clauses


def clauses_of(f: Any) -> list[Clause]:
    """A `toolkit.braze.filters.Filter` (groups flattened) as clauses."""
    from toolkit.braze import filters as F

    if isinstance(f, (F.AllOf, F.AnyOf)):
        return [c for item in f.filters for c in clauses_of(item)]
    text = str(f)
    if isinstance(f, F.CustomEventCount):
        return [Clause("event", f.event, f.op, str(f.count), f.days, None, text)]
    if isinstance(f, F.CustomEventPropertyCount):
        shown = str(f.value).lower() if isinstance(f.value, bool) else str(f.value)
        return [Clause("event_property", f.event, f.op,
                       f"{shown} {f.op.replace('_', ' ')} {f.count}", f.days, f.property, text)]
    if isinstance(f, F.CustomEventTime):
        value = f"{f.value:g}" if isinstance(f.value, (int, float)) else str(f.value)
        return [Clause("event_time", f.event, f.op, value, None, None, text)]
    if isinstance(f, F.SegmentCohort):
        return [Clause("cohort", f.name, "includes" if f.includes else "excludes", None, None,
                       None, text)]
    op = {"is_any_of": "equals", "exactly": "equals", "is_none_of": "not_equals",
          "does_not_equal": "not_equals"}.get(f.op, f.op)
    value = getattr(f, "value", None)
    if isinstance(value, tuple):
        value = ", ".join(value)
    elif isinstance(value, float) or isinstance(value, int) and not isinstance(value, bool):
        value = f"{value:g}"
    return [Clause("attribute", f.name, op, None if value is None else str(value), None, None,
                   text)]


def _ops(clauses: list[Clause]) -> str:
    """The operators of clauses, in words; an event count's with its number of times."""
    words = {_OP_WORDS.get(c.operator or "", c.operator or "?")
             + (f" {c.value} times" if c.subject == "event" else "") for c in clauses}
    return " / ".join(sorted(words))


def _windows(days: set) -> str:
    return " / ".join("over all time" if d is None else f"in the last {d} days"
                      for d in sorted(days, key=lambda d: -1 if d is None else d))


def _same_values(a: set, b: set, regex: bool) -> bool:
    if regex:
        return {v.lower() for v in a if v} == {v.lower() for v in b if v}
    return a == b


def _number_text(value: str | None) -> str | None:
    try:
        return f"{float(value):g}" if value is not None else None
    except ValueError:
        return value


def compare(expected: list[Clause], actual: list[Clause]) -> list[Difference]:
    """What Braze's clauses (`actual`) do differently from the recommended ones (`expected`).
    Names are compared exactly (Braze's attribute and event names are case sensitive);
    unreadable clauses are not differences."""
    def groups(clauses: list[Clause]) -> dict[tuple[str, str], list[Clause]]:
        out: dict[tuple[str, str], list[Clause]] = {}
        for c in clauses:
            if c.subject != "unknown":
                out.setdefault((c.group, str(c.name)), []).append(c)
        return out

    want, have = groups(expected), groups(actual)
    spare = [k for k in have if k not in want]
    diffs: list[Difference] = []
    for key, exp in want.items():
        group, name = key
        act = have.get(key)
        if act is None:
            other = next((k for k in spare if k[0] == group), None)
            if other is not None:
                spare.remove(other)
                diffs.append(Difference(group, name, _tick(name), _tick(other[1])))
                act = have[other]
            else:
                diffs.append(Difference("missing", name, "; ".join(c.text for c in exp), ""))
                continue
        if _ops(exp) != _ops(act):
            fewer = set(_ops(act).split(" / ")) < set(_ops(exp).split(" / "))
            diffs.append(Difference("fewer_operators" if fewer else "operator", name,
                                    _ops(exp), _ops(act)))
        exp_days, act_days = {c.days for c in exp}, {c.days for c in act}
        if group == "event" and exp_days != act_days:
            longest = None if None in exp_days else max(exp_days)
            narrows = None not in act_days and (longest is None or max(act_days) < longest)
            diffs.append(Difference("window", name, _windows(exp_days), _windows(act_days),
                                    narrows))
        regex = any((c.operator or "").endswith("regex") for c in exp)
        exp_values = {_number_text(c.value) if c.subject == "attribute" else c.value
                      for c in exp if c.subject != "event"}
        act_values = {_number_text(c.value) if c.subject == "attribute" else c.value
                      for c in act if c.subject != "event"}
        if _ops(exp) == _ops(act) and not _same_values(exp_values, act_values, regex):
            shown = " / ".join(sorted(f"`{v}`" for v in act_values if v)) or "nothing"
            diffs.append(Difference("value", name,
                                    " / ".join(sorted(f"`{v}`" for v in exp_values if v))
                                    or "nothing", shown))
    for key in spare:
        diffs.append(Difference("extra", key[1], "", "; ".join(c.text for c in have[key])))
    return diffs
