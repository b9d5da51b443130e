"""Could Braze compute an Engage audience by itself? Translate a definition into Braze segment
filters, part by part, say what Braze needs for it, and check the translation.

Braze's side (braze-api.md §5.1, §5.3; braze-docs ``segmentation_filters.md``,
``custom_events.md``): custom event counts more than / less than / exactly N (N ≤ 50), all time
or in the last 1–30 calendar days; X Custom Event Property In Y Days (one property value, the
property enabled for segmentation, 1–30 days); First / Last Did Custom Event (dates, or "last did
less / more than X days ago", decimals allowed); custom attribute filters; AND / OR groups.
Braze has no sums, averages, min/max/first/last/most-frequent of a property, no "between" windows,
no funnels, no source filters and no account-level ANY/ALL.

A part's verdict is ``exact`` (the same profiles, e.g. ``within(7 days).count() >= 1`` is
"Last Did … less than 7 days ago"), ``calendar_days`` (expressible, but Braze's "last N calendar
days" starts at midnight N days ago — up to 24 h more than Segment's rolling N×24 h, UNCONFIRMED
which Engage uses), ``case_insensitive`` (Braze regexes ignore case) or ``not_expressible``.
A definition is native when every part is expressible; otherwise the answer is "sync membership
instead" with the recommended mapping. `NativeSegment.check(export)` evaluates the translated
filter with `toolkit.braze.filters` on the Braze state the export's history projects to and
compares it with `toolkit.evaluate_definition` on the same events.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from html import escape
from typing import Any

import numpy as np
import pandas as pd

from toolkit.braze.filters import (
    AllOf,
    AnyOf,
    BooleanAttribute,
    CustomEventCount,
    CustomEventPropertyCount,
    CustomEventTime,
    DateAttribute,
    Filter,
    NumberAttribute,
    StringAttribute,
)
from toolkit.engage.query import (
    And,
    Between,
    Compare,
    Context,
    Definition,
    Duration,
    Literal,
    Node,
    Not,
    Or,
    Property,
    Quantified,
    Reduce,
    Sources,
    Stream,
    Trait,
    Where,
    Within,
    parse,
)
from toolkit.braze.limits import LIMITS
from toolkit.braze.state import BrazeState, braze_user_keys
from toolkit.engage.definitions import AudienceDefinition
from toolkit.engage.evaluate import evaluate_definition, history_of
from toolkit.errors import DefinitionError, FilterError

__all__ = ["braze_segment_for", "NativeSegment", "NativeCheck", "Part", "VERDICTS",
           "ECOMMERCE_EVENTS", "DEFAULT_COUNT_DAYS", "check_filter"]

VERDICTS = {
    "exact": "Braze selects exactly the same profiles",
    "calendar_days": "expressible; Braze counts calendar days, so its window starts at midnight "
                     "N days ago — up to 24 h more than Segment's rolling window",
    "case_insensitive": "expressible; Braze's regex filters ignore case, Segment's text "
                        "comparisons do not",
    "empty_text": "expressible; Braze's 'is not blank' also leaves out empty strings, which "
                  "Segment counts as values",
    "not_expressible": "no Braze filter computes this",
}
# Segment's Braze (Actions) destination sends these to its ecommerce / purchase mappings, not as
# custom events, unless a Track Calls mapping is added (segment-engage.md §4.2 "Default presets").
ECOMMERCE_EVENTS = ("Order Completed", "Checkout Started", "Order Refunded", "Order Cancelled",
                    "Product Viewed", "Product Added", "Product Removed")
# custom_events.md's dropdown offers "in the past Y Days (Y = 1,3,7,14,21,30)" for event counts;
# the segmentation glossary says "between 1 and 30" (UNCONFIRMED which holds: pass count_days).
DEFAULT_COUNT_DAYS = (1, 3, 7, 14, 21, 30)
# segment_extension.md: "windowed aggregations of custom event and purchase event properties in
# the past 2 years (730 days)", regenerated at most daily, 25 per workspace by default.
EXTENSION_DAYS = 730
_EXTENSION = (" (a Braze Segment Extension — up to 730 days, regenerated at most daily — may "
              "compute it; not modelled here)")
_FLIP = {"equals": "equals", "differs": "differs", "greater_than": "less_than",
         "less_than": "greater_than", "at_least": "at_most", "at_most": "at_least"}
_SIGN = {"equals": "==", "differs": "!=", "greater_than": ">", "at_least": ">=",
         "less_than": "<", "at_most": "<="}


@dataclass(frozen=True)
class Part:
    """One condition of the definition, its verdict and the Braze filter that expresses it."""

    text: str
    verdict: str
    filter: Filter | None
    why: str

    @property
    def expressible(self) -> bool:
        return self.verdict != "not_expressible"


@dataclass
class _Needs:
    events: dict[str, str] = field(default_factory=dict)
    properties: dict[tuple[str, str], str] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)


class _NotExpressible(Exception):
    def __init__(self, why: str) -> None:
        self.why = why


class _Translator:
    def __init__(self, definition: Definition, types: dict[str, str],
                 computations: set[str], count_days: tuple[int, ...]) -> None:
        self.d = definition
        self.count_days = count_days
        self.types = types
        self.computations = computations
        self.parts: list[Part] = []
        self.needs = _Needs()

    def node(self, node: Node, neg: bool = False) -> Filter | None:
        if isinstance(node, Not):
            return self.node(node.item, not neg)
        if isinstance(node, (And, Or)):
            group = AllOf if isinstance(node, And) != neg else AnyOf
            filters = [self.node(item, neg) for item in node.items]
            if any(f is None for f in filters):
                return None
            return group(*filters)  # type: ignore[arg-type]
        text = ("NOT " if neg else "") + self.d.source(node)
        if isinstance(node, Quantified):
            self.parts.append(Part(text, "not_expressible", None,
                                   f"{node.quantifier} aggregates the users of an account; Braze "
                                   "segments are per user"))
            return None
        assert isinstance(node, Compare)
        try:
            f, verdict, why = self.compare(node, neg)
        except _NotExpressible as exc:
            self.parts.append(Part(text, "not_expressible", None, exc.why))
            return None
        except FilterError as exc:  # Braze's own limits, as the filter classes enforce them
            why = exc.message + (f" ({exc.hint})" if exc.hint else "")
            self.parts.append(Part(text, "not_expressible", None, why))
            return None
        self.parts.append(Part(text, verdict, f, why))
        return f

    # -- leaves -------------------------------------------------------------------------------
    def compare(self, node: Compare, neg: bool) -> tuple[Filter, str, str]:
        left, fn, args = node.left, node.function, node.args
        if isinstance(left, Literal) and len(args) == 1 and not isinstance(args[0], Literal) \
                and fn in _FLIP:
            left, fn, args = args[0], _FLIP[fn], (left,)
        if isinstance(left, Reduce):
            if left.function != "count":
                windows = left.stream.windows()
                bounded = len(windows) == 1 and isinstance(windows[0], Within) and \
                    not windows[0].parent and windows[0].duration.hours <= EXTENSION_DAYS * 24
                note = _EXTENSION if bounded and left.function in ("sum", "avg") else ""
                raise _NotExpressible({
                    "sum": "Braze has no sum of an event property",
                    "avg": "Braze has no average of an event property",
                    "max": "Braze has no maximum of an event property",
                    "min": "Braze has no minimum of an event property",
                    "mode": "Braze has no most-frequent value of an event property",
                    "first": "Braze keeps no first value of an event property",
                    "last": "Braze keeps no last value of an event property",
                    "count_unique": "Braze does not count distinct property values",
                }.get(left.function, f"Braze has no {left.function}()") + note)
            return self.count(left.stream, fn, args, neg)
        if isinstance(left, Trait):
            return self.trait(left.name, fn, args, neg)
        raise _NotExpressible("Braze filters compare an attribute or an event count with a "
                              "fixed value")

    def count(self, stream: Stream, fn: str, args: tuple[Node, ...], neg: bool
              ) -> tuple[Filter, str, str]:
        if fn not in _SIGN or not isinstance(args[0], Literal):
            raise _NotExpressible("Braze compares an event count with a fixed number")
        n = args[0].value
        if isinstance(n, bool) or not isinstance(n, (int, float)) or n != int(n):
            raise _NotExpressible("Braze compares an event count with a whole number")
        op, k = _canonical(fn, int(n), neg)
        if op == ">=" and k <= 0:
            raise _NotExpressible("always true (every profile has at least 0 events): drop it")
        if op == "<=" and k < 0:
            raise _NotExpressible("never true: no profile has fewer than 0 events")
        windows = stream.windows()
        wheres = stream.wheres()
        if any(isinstance(s, Sources) for s in stream.steps):
            raise _NotExpressible("Braze does not know which Segment source sent an event "
                                  "(forward only the other sources' events instead)")
        if any(isinstance(w, Between) for w in windows):
            raise _NotExpressible("Braze counts events up to now only; it has no 'between' "
                                  "window")
        if any(getattr(w, "parent", False) for w in windows):
            raise _NotExpressible("a window after another event (a funnel) has no Braze filter")
        if len(windows) > 1:
            raise _NotExpressible("several windows on one stream have no Braze filter")
        if len(wheres) > 1:
            raise _NotExpressible("Braze filters events on one property value only")
        window: Duration | None = windows[0].duration if windows else None  # type: ignore[union-attr]
        event = stream.event
        self._need_event(event)
        if wheres:
            prop, value = self._property_equality(wheres[0])
            if window is None:
                raise _NotExpressible(f"Braze's property filters look back at most "
                                      f"{LIMITS.event_days} days; this counts over all time")
            days = self._days(window, "property count", range(1, LIMITS.event_days + 1))
            self.needs.properties[(event, prop)] = (
                f"enable property {prop!r} of {event!r} for segmentation in Braze (Data "
                "Settings > Custom Events > Manage properties; 20 per workspace by default): "
                "Braze keeps it only from the day it is enabled, and each one logs extra data "
                "points")
            f = _count_filter(lambda o, c: CustomEventPropertyCount(event, prop, value, o, c,
                                                                    days), op, k)
            return f, "calendar_days", (f"the {window} window becomes the last {days} calendar "
                                        "days")
        if window is None:
            return (_count_filter(lambda o, c: CustomEventCount(event, o, c), op, k), "exact",
                    "Braze's all-time event count")
        if (op, k) == (">=", 1):
            return (CustomEventTime(event, "last_did_less_than_days_ago", _days_of(window)),
                    "exact", f"'did it in the last {window}' is Last Did less than "
                             f"{_days_of(window):g} days ago, a rolling window like Segment's")
        if (op, k) in (("<=", 0), ("==", 0)):
            return (AnyOf(CustomEventTime(event, "last_did_more_than_days_ago",
                                          _days_of(window)),
                          CustomEventCount(event, "exactly", 0)), "exact",
                    f"'not in the last {window}' is Last Did more than {_days_of(window):g} days "
                    "ago, or never")
        days = self._days(window, "count", self.count_days)
        return (_count_filter(lambda o, c: CustomEventCount(event, o, c, days), op, k),
                "calendar_days", f"the {window} window becomes the last {days} calendar days")

    def _days(self, window: Duration, what: str, allowed) -> int:
        if window.hours % 24:
            raise _NotExpressible(f"Braze's event {what} filters count whole calendar days; "
                                  f"{window} is not")
        days = window.hours // 24
        if not 1 <= days <= LIMITS.event_days:
            note = _EXTENSION if days <= EXTENSION_DAYS else ""
            raise _NotExpressible(f"Braze's event {what} filters look back 1–{LIMITS.event_days} "
                                  f"days; this counts over {window}{note}")
        if days not in allowed:
            raise _NotExpressible(
                f"Braze's event count filter offers the last "
                f"{', '.join(map(str, allowed))} days (custom_events.md), not {days}; pass "
                "count_days=range(1, 31) if your dashboard takes any 1–30 (the glossary's "
                "wording)")
        return days

    def _property_equality(self, where: Where) -> tuple[str, Any]:
        cond = where.condition
        if isinstance(cond, Compare) and isinstance(cond.left, Property) and \
                not cond.left.parent and len(cond.args) == 1 and \
                isinstance(cond.args[0], Literal) and (
                cond.function == "equals" or cond.function == "one_of"):
            return cond.left.name, cond.args[0].value
        if any(isinstance(n, Stream) for n in cond.walk()):
            raise _NotExpressible("an event inside another event's where() (a funnel) has no "
                                  "Braze filter")
        if any(isinstance(n, Context) for n in cond.walk()):
            raise _NotExpressible("Braze does not keep an event's Segment context; forward it "
                                  "as a property first")
        raise _NotExpressible("Braze's event property filter matches one property value "
                              "(equality) only")

    def _need_event(self, event: str) -> None:
        note = f"forward {event!r} to Braze as a custom event (Segment's Track Calls mapping)"
        if event in ECOMMERCE_EVENTS:
            note += (f"; Segment's Braze destination sends {event!r} to its ecommerce/purchase "
                     "mapping by default, so add it to a Track Calls (custom event) mapping")
        self.needs.events[event] = note

    def trait(self, name: str, fn: str, args: tuple[Node, ...], neg: bool
              ) -> tuple[Filter, str, str]:
        if any(not isinstance(a, (Literal, Duration)) for a in args):
            raise _NotExpressible("Braze compares an attribute with fixed values, not with "
                                  "another attribute or count")
        values = [a.value for a in args if isinstance(a, Literal)]
        kind = self.types.get(name) or _kind_of(fn, values)
        self.needs.attributes[name] = (
            f"custom attribute {name!r}: synced by this toolkit (send {name!r} as an attribute)"
            if name in self.computations else
            f"custom attribute {name!r}: Segment forwards identify traits as custom attributes")
        build = {"boolean": _boolean, "number": _number, "string": _string,
                 "time": _time}.get(kind, _string)
        return build(name, fn, args, values, neg)


def _canonical(fn: str, n: int, neg: bool) -> tuple[str, int]:
    op, k = {"equals": ("==", n), "differs": ("!=", n), "greater_than": (">=", n + 1),
             "at_least": (">=", n), "less_than": ("<=", n - 1), "at_most": ("<=", n)}[fn]
    if neg:
        op, k = {">=": ("<=", k - 1), "<=": (">=", k + 1), "==": ("!=", k),
                 "!=": ("==", k)}[op]
    return op, k


def _count_filter(make, op: str, k: int) -> Filter:
    """A count condition (>= k, <= k, == k, != k) with Braze's more/less/exactly."""
    if op == ">=":
        return make("more_than", k - 1)
    if op == "<=":
        return make("less_than", k + 1)
    if op == "==":
        return make("exactly", k)
    return make("less_than", k) | make("more_than", k) if k > 0 else make("more_than", 0)


def _days_of(window: Duration) -> float:
    return window.hours / 24


def _kind_of(fn: str, values: list) -> str:
    if fn in ("before_date", "after_date", "within_last", "within_next", "before_last",
              "after_next"):
        return "time"
    if values and all(isinstance(v, bool) for v in values):
        return "boolean"
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return "number"
    return "string"


def _boolean(name, fn, args, values, neg):
    if fn in ("exists", "absent"):
        op = "is_not_blank" if (fn == "exists") != neg else "is_blank"
        return BooleanAttribute(name, op), "exact", "Braze's boolean blank / not blank"
    if fn not in ("equals", "differs") or not isinstance(values[0], bool):
        raise _NotExpressible("a boolean attribute is compared with true or false only")
    want = values[0] if fn == "equals" else not values[0]
    # differs needs a value (reference); NOT (…) also selects profiles without one
    op = {(True, False): "is_true", (False, False): "is_false",
          (True, True): "is_false_or_not_set", (False, True): "is_true_or_not_set"}[(want, neg)]
    return BooleanAttribute(name, op), "exact", "Braze's boolean attribute filter"


def _number(name, fn, args, values, neg):
    def n(op, v=None):
        return NumberAttribute(name, op, v)
    blank, set_ = n("is_blank"), n("is_not_blank")
    if fn in ("exists", "absent"):
        return (set_ if (fn == "exists") != neg else blank), "exact", "blank / not blank"
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise _NotExpressible(f"{name!r} is a number attribute; compare it with numbers")
    if fn == "one_of":
        hit = AnyOf(*[n("exactly", v) for v in values])
        f = AnyOf(n("does_not_equal", values[0]), blank) if neg and len(values) == 1 else \
            (AllOf(hit, set_) if not neg else None)
        if f is None:
            raise _NotExpressible("NOT one_of(…) of numbers has no Braze filter")
        return f, "exact", "Braze's number attribute filters"
    if fn not in _SIGN:
        raise _NotExpressible(f"{fn}() does not apply to a number attribute in Braze")
    v = values[0]
    # Braze: "'Exactly 0' and 'Less Than' filters include users with NULL fields" (§5.1);
    # Segment's comparisons need a value, NOT (…) selects the blanks too
    table = {
        ("equals", False): AllOf(n("exactly", v), set_),
        ("equals", True): AnyOf(n("does_not_equal", v), blank),
        ("differs", False): n("does_not_equal", v),
        ("differs", True): AnyOf(n("exactly", v), blank),
        ("greater_than", False): n("more_than", v),
        ("greater_than", True): AnyOf(n("less_than", v), n("exactly", v)),
        ("at_least", False): AllOf(AnyOf(n("more_than", v), n("exactly", v)), set_),
        ("at_least", True): n("less_than", v),
        ("less_than", False): AllOf(n("less_than", v), set_),
        ("less_than", True): AnyOf(n("more_than", v), n("exactly", v), blank),
        ("at_most", False): AllOf(AnyOf(n("less_than", v), n("exactly", v)), set_),
        ("at_most", True): AnyOf(n("more_than", v), blank),
    }
    return table[(fn, neg)], "exact", "Braze's number attribute filters (blanks handled)"


def _string(name, fn, args, values, neg):
    def s(op, v=None):
        return StringAttribute(name, op, v)
    texts = [str(v) for v in values]
    if fn in ("exists", "absent"):
        if (fn == "exists") != neg:
            return s("is_not_blank"), "empty_text", "is not blank (not empty strings)"
        return s("is_blank"), "exact", "is blank: the attribute is not set"
    if len(texts) > LIMITS.filter_values:
        raise _NotExpressible(f"Braze's multi-value filters take at most {LIMITS.filter_values} values")
    if fn in ("equals", "one_of"):
        return (s("is_none_of", texts) if neg else s("is_any_of", texts)), "exact", \
            "Braze's is any of / is none of (case-sensitive, like Segment's)"
    if fn == "differs":
        if neg:
            return AnyOf(s("is_any_of", texts), s("is_blank")), "exact", \
                "is any of, or not set"
        return AllOf(s("is_none_of", texts), s("is_not_blank")), "empty_text", \
            "is none of, with a value (differs needs one)"
    if fn in ("contains", "omits"):
        positive = (fn == "contains") != neg
        return (s("contains_any_of" if positive else "does_not_contain_any_of", texts),
                "exact", "Braze's contains any of (case-sensitive)")
    if fn in ("starts_with", "ends_with") and not neg:
        pattern = ("^" + re.escape(texts[0])) if fn == "starts_with" else re.escape(texts[0]) + "$"
        return s("matches_regex", pattern), "case_insensitive", \
            f"matches regex {pattern} (Braze's regex ignores case)"
    raise _NotExpressible(f"{'NOT ' if neg else ''}{fn}() on a text attribute has no Braze filter")


def _time(name, fn, args, values, neg):
    def t(op, v=None):
        return DateAttribute(name, op, v)
    if fn in ("exists", "absent"):
        return (t("is_not_blank") if (fn == "exists") != neg else t("is_blank")), "exact", \
            "blank / not blank"
    if neg:
        raise _NotExpressible("NOT of a date comparison has no single Braze filter")
    if fn in ("before_date", "after_date"):
        return t("before" if fn == "before_date" else "after", values[0]), "exact", \
            "Braze's date attribute before / after"
    dur = args[0]
    if not isinstance(dur, Duration):
        raise _NotExpressible(f"{fn}() on a date attribute has no Braze filter")
    days = dur.hours / 24
    op = {"within_last": "less_than_days_ago", "before_last": "more_than_days_ago",
          "within_next": "in_less_than_days", "after_next": "in_more_than_days"}[fn]
    verdict = "exact" if dur.unit == "hours" else "calendar_days"
    return t(op, days), verdict, (f"{op.replace('_', ' ')} {days:g} (Braze counts 24-hour "
                                  "days; Segment counts calendar dates)" if dur.unit == "days"
                                  else f"{op.replace('_', ' ')} {days:g}")


# ------------------------------------------------------------------------------------------
# the result


class NativeSegment:
    """Braze's answer for one definition: ``native``, the ``filter`` when it is, the ``parts``
    with their verdicts, what Braze ``needs``, and otherwise the ``recommendation``."""

    def __init__(self, definition: Definition, key: str | None, filter: Filter | None,
                 parts: list[Part], needs: _Needs) -> None:
        self.definition = definition
        self.key = key
        self.parts = parts
        self.native = filter is not None and all(p.expressible for p in parts)
        self.filter = filter if self.native else None
        self.exact = self.native and all(p.verdict == "exact" for p in parts)
        self.needs_events = dict(needs.events)
        self.needs_properties = dict(needs.properties)
        self.needs_attributes = dict(needs.attributes)
        name = key or "<audience_key>"
        self.recommended_filter: Filter = self.filter if self.native else \
            BooleanAttribute(name if key else "audience_key", "is_true")
        self.recommended_mapping = {"key": name, "send_as": "attribute"} if not self.native \
            else None

    @property
    def query(self) -> str:
        return self.definition.text

    @property
    def verdict(self) -> str:
        """"native", "native (approximate)", "partly native" or "not native"."""
        if self.native:
            return "native" if self.exact else "native (approximate)"
        return "partly native" if any(p.expressible for p in self.parts) else "not native"

    @property
    def recommendation(self) -> str:
        if self.native:
            return ("build this Braze segment from the filter; no sync is needed while Segment "
                    "forwards the events and traits listed (Braze counts only what it received "
                    "since forwarding began)")
        name = self.key or "the audience"
        return (f"sync membership instead: send {name} as an attribute and build Braze's "
                f"segment on {self.recommended_filter}")

    @property
    def needs(self) -> list[str]:
        return (list(self.needs_events.values()) + list(self.needs_properties.values())
                + list(self.needs_attributes.values()))

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"part": p.text, "verdict": p.verdict,
                              "Braze filter": str(p.filter) if p.filter else "",
                              "why": p.why} for p in self.parts],
                            columns=["part", "verdict", "Braze filter", "why"])

    def check(self, export, *, as_of: Any = None) -> "NativeCheck":
        """Evaluate the translated filter on the Braze state the export's history projects to,
        beside `evaluate_definition` on the same events (only for a native translation)."""
        if not self.native:
            raise DefinitionError("there is no Braze filter to check: the definition is not "
                                  "native", field="definition",
                                  hint="check the expressible parts one by one with "
                                       "toolkit.native.check_filter, or sync membership")
        caveats = [VERDICTS[v] for v in dict.fromkeys(p.verdict for p in self.parts)
                   if v != "exact"]
        return check_filter(self.filter, self.definition, export, as_of=as_of,
                            approximate="; ".join(caveats))

    def __repr__(self) -> str:
        lines = [f"<NativeSegment {self.verdict}: {self.query}>"]
        if self.native:
            lines.append(f"  Braze filter: {self.filter}")
        for p in self.parts:
            lines.append(f"  [{p.verdict}] {p.text}" + (f" → {p.filter}" if p.filter else "")
                         + f" — {p.why}")
        lines += [f"  needs: {n}" for n in self.needs]
        lines.append(f"  {self.recommendation}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        color = {"native": "#1e8449", "native (approximate)": "#1e8449",
                 "partly native": "#b9770e", "not native": "#c0392b"}[self.verdict]
        rows = "".join(
            f"<tr><td><code>{escape(p.text)}</code></td><td>{escape(p.verdict.replace('_', ' '))}"
            f"</td><td>{escape(str(p.filter)) if p.filter else '—'}</td><td>{escape(p.why)}</td>"
            "</tr>" for p in self.parts)
        needs = "".join(f"<li>{escape(n)}</li>" for n in self.needs)
        head = (f"<div class='native-segment'><p><b style='color:{color}'>"
                f"{escape(self.verdict)} in Braze</b>: <code>{escape(self.query)}</code></p>")
        filt = (f"<p>Braze filter: <b>{escape(str(self.filter))}</b></p>" if self.native else "")
        return (head + filt + "<table><thead><tr><th>part</th><th>verdict</th>"
                "<th>Braze filter</th><th>why</th></tr></thead><tbody>" + rows +
                "</tbody></table>" + (f"<p>Braze needs:</p><ul>{needs}</ul>" if needs else "")
                + f"<p><b>→</b> {escape(self.recommendation)}</p></div>")


def braze_segment_for(query: Any, *, key: str | None = None, export=None,
                      count_days=DEFAULT_COUNT_DAYS) -> NativeSegment:
    """Translate an audience definition (text, `Definition` or `AudienceDefinition`) into Braze
    segment filters, part by part. With ``export``, traits get their value types from it and
    Engage computations are named as needing a sync. ``count_days``: the "in the last Y days"
    values Braze's event count filter offers (default 1, 3, 7, 14, 21, 30)."""
    if isinstance(query, AudienceDefinition):
        key = key or query.key
        definition = query.definition
    elif isinstance(query, Definition):
        definition = query
    else:
        definition = parse(query)
    if definition.kind != "audience":
        raise DefinitionError("only audience definitions (true/false) become Braze segments",
                              field="definition", hint="pass an audience definition")
    types: dict[str, str] = {}
    computations: set[str] = set()
    if export is not None:
        computations = set(export.computations["key"])
        for name in definition.traits:
            if name in export.profiles.columns:
                types[name] = _column_kind(export.profiles[name])
    days = tuple(int(d) for d in count_days)
    if not days or any(not 1 <= d <= LIMITS.event_days for d in days):
        raise DefinitionError(f"count_days must be whole days from 1 to {LIMITS.event_days}",
                              field="count_days", hint="e.g. count_days=(1, 3, 7, 14, 21, 30)")
    t = _Translator(definition, types, computations, days)
    if definition.level == "ACCOUNTS":
        t.parts.append(Part(definition.text, "not_expressible", None,
                            "an account-level audience: Braze segments are per user"))
        return NativeSegment(definition, key, None, t.parts, t.needs)
    f = t.node(definition.root)
    return NativeSegment(definition, key, f, t.parts, t.needs)


def _column_kind(col: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(col.dtype):
        return "boolean"
    if pd.api.types.is_numeric_dtype(col.dtype):
        return "number"
    if isinstance(col.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(col.dtype):
        return "time"
    return "string"


# ------------------------------------------------------------------------------------------
# the check


class NativeCheck:
    """The translated Braze filter on the projected Braze state beside local evaluation."""

    def __init__(self, frame: pd.DataFrame, filter: Filter, definition: Definition,
                 as_of: pd.Timestamp, not_holdable: int, approximate: str) -> None:
        self.frame = frame
        self.filter = filter
        self.definition = definition
        self.as_of = as_of
        self.not_holdable = not_holdable
        self.approximate = approximate

    @property
    def agrees(self) -> bool:
        return bool((self.frame["local"] == self.frame["braze"]).all())

    def differences(self) -> pd.DataFrame:
        d = self.frame[self.frame["local"] != self.frame["braze"]].copy()
        d["why"] = (self.approximate or "unexplained: the translation should be exact")
        return d.reset_index(drop=True)

    def summary(self) -> dict[str, int]:
        f = self.frame
        return {"braze_users": len(f), "local": int(f["local"].sum()),
                "braze": int(f["braze"].sum()), "both": int((f["local"] & f["braze"]).sum()),
                "only_local": int((f["local"] & ~f["braze"]).sum()),
                "only_braze": int((~f["local"] & f["braze"]).sum()),
                "members_braze_cannot_hold": self.not_holdable}

    def __repr__(self) -> str:
        s = self.summary()
        return (f"<NativeCheck {'agrees' if self.agrees else 'differs'}: local {s['local']:,}, "
                f"Braze filter {s['braze']:,}, both {s['both']:,} of {s['braze_users']:,} Braze "
                f"users; {s['members_braze_cannot_hold']:,} members Braze cannot hold>")

    def _repr_html_(self) -> str:
        s = self.summary()
        verdict = ("<b style='color:#1e8449'>agrees</b>" if self.agrees else
                   "<b style='color:#b9770e'>differs</b>")
        rows = "".join(f"<tr><th style='text-align:left'>{escape(k.replace('_', ' '))}</th>"
                       f"<td>{v:,}</td></tr>" for k, v in s.items())
        extra = ""
        if not self.agrees:
            extra = f"<p>Why: {escape(self.differences()['why'].iloc[0])}</p>"
        return (f"<div class='native-check'><p>Braze filter <code>{escape(str(self.filter))}"
                f"</code> on the projected Braze state vs local evaluation: {verdict}</p>"
                f"<table>{rows}</table>{extra}</div>")


def check_filter(filter: Filter, definition: Definition, export, *, as_of: Any = None,
                 approximate: str = "") -> NativeCheck:
    """Evaluate ``filter`` on the Braze state the export's history and traits project to and
    compare, per Braze user, with the definition evaluated locally on the same events."""
    local = evaluate_definition(export, definition, as_of=as_of)
    p = export.profiles
    keys, _ = braze_user_keys(p)
    sids = p["segment_id"].astype("string")
    key_of = {s: k for s, k in zip(sids.tolist(), keys.tolist()) if isinstance(k, str)}
    # the last profile holding a Braze key is the one Braze keeps (the plan's rule)
    held = pd.DataFrame({"sid": sids, "key": keys}).dropna()
    owner = held.drop_duplicates("key", keep="last")
    users = pd.Index(owner["key"].astype("string"), name="user")
    attrs = {}
    for name in definition.traits:
        if name in p.columns:
            attrs[name] = pd.Series(p.loc[owner.index, name].to_numpy(), index=users)
    h = history_of(export)
    h = h[h["event"].isin(definition.events)]
    user = h["segment_id"].astype(object).map(key_of)
    h = h[user.notna().to_numpy()]
    events = pd.DataFrame({"user": user.dropna().astype("string").to_numpy(),
                           "name": h["event"].astype("string").to_numpy(),
                           "time": h["timestamp"].to_numpy(),
                           "properties": h["properties"].to_numpy()})
    state = BrazeState(pd.DataFrame(attrs, index=users), events, as_of=local.as_of)
    braze = filter.evaluate(state).to_numpy(dtype=bool)
    members = set(local.segment_ids)
    member_keys = {key_of.get(s) for s in members if key_of.get(s)}
    owners = dict(zip(owner["key"], owner["sid"]))
    frame = pd.DataFrame({"user": users, "segment_id": [owners[u] for u in users],
                          "local": np.array([u in member_keys for u in users], dtype=bool),
                          "braze": braze})
    not_holdable = sum(1 for s in members if not key_of.get(s))
    return NativeCheck(frame, filter, definition, local.as_of, not_holdable, approximate)
