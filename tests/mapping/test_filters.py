"""Braze segment filters: every operator, blank/NULL and case rules, wording, serialisation, errors.

Expected results are written from Braze's documentation as summarised in
/work/shared/reference/braze-api.md §5 (section cited per case), not from the implementation.
"""
from __future__ import annotations

import pandas as pd
import pytest

from toolkit.braze.filters import (AllOf, AnyOf, BooleanAttribute, CustomEventCount,
                                   CustomEventPropertyCount, CustomEventTime, DateAttribute,
                                   Filter, NumberAttribute, SegmentCohort, StringAttribute)
from toolkit.braze.state import BrazeState
from toolkit.errors import FilterError

AS_OF = pd.Timestamp("2026-11-20T06:00:00Z")

# One user per awkward case; a missing value means the attribute was never set (blank).
USERS = ["shoes_title", "shoes_lower", "shoes_store", "empty", "unset", "space_shoes", "hats"]
TEXT = ["Shoes", "shoes", "SHOES store", "", None, " Shoes", "Hats"]


def _state(**columns) -> BrazeState:
    return BrazeState(pd.DataFrame(columns, index=pd.Index(USERS, dtype="string", name="user")),
                      as_of=AS_OF)


def _selected(f: Filter, state: BrazeState) -> set[str]:
    result = f.evaluate(state)
    assert result.dtype == bool and result.index.equals(state.users)
    return set(result.index[result.to_numpy()])


STRING_STATE = _state(fav=pd.array(TEXT, dtype="string"))
# pandas' default `str` dtype (NaN for missing) and plain Python objects must give the same answer
STRING_STATES = [STRING_STATE] + [_state(fav=pd.Series(TEXT, dtype=dtype, index=USERS))
                                  for dtype in ("str", object)]

STRING_CASES = [
    # §5.2: regex is partial (unanchored) and case-insensitive (/gi).
    ("matches_regex", "shoes", {"shoes_title", "shoes_lower", "shoes_store", "space_shoes"}),
    ("matches_regex", "^shoes$", {"shoes_title", "shoes_lower"}),
    ("matches_regex", "^h", {"hats"}),
    # §5.1 / regex FAQ: "If the value is blank, the user will not be included".
    ("does_not_match_regex", "shoes", {"empty", "hats"}),
    # §5.1: is any of (equals) is exact and case sensitive; spaces are significant.
    ("is_any_of", "Shoes", {"shoes_title"}),
    ("equals", "Shoes", {"shoes_title"}),
    ("is_any_of", ["Shoes", "Hats"], {"shoes_title", "hats"}),
    # §5.1: is none of is case sensitive (blank users: UNCONFIRMED, included).
    ("is_none_of", "Shoes", set(USERS) - {"shoes_title"}),
    ("does_not_equal", ["Shoes", "shoes"], set(USERS) - {"shoes_title", "shoes_lower"}),
    # §5.1: contains any of is a case-sensitive substring match.
    ("contains_any_of", "hoes", {"shoes_title", "shoes_lower", "space_shoes"}),
    ("contains_any_of", ["Shoes", "at"], {"shoes_title", "space_shoes", "hats"}),
    ("does_not_contain_any_of", "Shoes", set(USERS) - {"shoes_title", "space_shoes"}),
    # §5.1: BLANK "does not exist"; IS NOT BLANK "exists … and is not an empty string".
    ("is_blank", None, {"unset"}),
    ("is_not_blank", None, set(USERS) - {"unset", "empty"}),
]


@pytest.mark.parametrize("op,value,expected", STRING_CASES)
def test_string_attribute_operators(op, value, expected):
    f = StringAttribute("fav", op, value)
    for state in STRING_STATES:
        assert _selected(f, state) == expected


BOOL_STATE = BrazeState(pd.DataFrame({"vip": pd.array([True, False, None], dtype="boolean")},
                                     index=pd.Index(["t", "f", "n"], name="user")), as_of=AS_OF)

BOOL_CASES = [  # §5.1 booleans: TRUE, FALSE, TRUE OR NOT SET, FALSE OR NOT SET, blank/not blank
    ("is_true", {"t"}), ("is_false", {"f"}),
    ("is_true_or_not_set", {"t", "n"}), ("is_false_or_not_set", {"f", "n"}),
    ("is_blank", {"n"}), ("is_not_blank", {"t", "f"}),
]


@pytest.mark.parametrize("op,expected", BOOL_CASES)
def test_boolean_attribute_operators(op, expected):
    assert _selected(BooleanAttribute("vip", op), BOOL_STATE) == expected


NO_COLUMN_STATE = BrazeState(pd.DataFrame(index=pd.Index(["a", "b"], name="user")), as_of=AS_OF)
NO_COLUMN_CASES = [(BooleanAttribute("vip", "is_true"), set()),
                   (BooleanAttribute("vip", "is_false_or_not_set"), {"a", "b"})]


@pytest.mark.parametrize("f,expected", NO_COLUMN_CASES, ids=str)
def test_boolean_filter_on_a_user_without_the_attribute_column_at_all(f, expected):
    assert _selected(f, NO_COLUMN_STATE) == expected


NUM_STATE = BrazeState(pd.DataFrame(
    {"revenue": pd.array([5, 0, -2, None, 100], dtype="Float64")},
    index=pd.Index(["p", "z", "neg", "n", "big"], name="user")), as_of=AS_OF)

NUM_CASES = [
    ("exactly", 5, {"p"}),
    # §5.1 caveat: "'Exactly 0' and 'Less Than' filters include users with NULL fields".
    ("exactly", 0, {"z", "n"}),
    ("less_than", 5, {"z", "neg", "n"}),
    ("less_than", 0, {"neg", "n"}),
    ("more_than", 0, {"p", "big"}),
    ("more_than", -5, {"p", "z", "neg", "big"}),
    ("does_not_equal", 5, {"z", "neg", "big"}),
    ("is_blank", None, {"n"}),
    ("is_not_blank", None, {"p", "z", "neg", "big"}),
]


@pytest.mark.parametrize("op,value,expected", NUM_CASES)
def test_number_attribute_operators(op, value, expected):
    assert _selected(NumberAttribute("revenue", op, value), NUM_STATE) == expected


DATE_STATE = BrazeState(pd.DataFrame(
    {"last_order_at": pd.to_datetime(pd.Series(
        ["2026-11-19T12:00:00Z", "2026-11-10T00:00:00Z", "2026-12-01T00:00:00Z",
         "2026-11-05T00:00:00Z", None]), utc=True).to_numpy()},
    index=pd.Index(["d18h", "d10", "future11", "d15", "n"], name="user")), as_of=AS_OF)

DATE_CASES = [
    # §5.1 time: before/after a date; more/less than X days ago; in more/less than X days;
    # "1 day as 24 hours". Blanks match none of these.
    ("before", "2026-11-10", {"d15"}),
    ("after", "2026-11-10", {"d18h", "future11"}),
    ("more_than_days_ago", 5, {"d10", "d15"}),
    ("less_than_days_ago", 5, {"d18h"}),
    ("less_than_days_ago", 0.5, set()),
    ("more_than_days_ago", 15, {"d15"}),
    ("in_more_than_days", 5, {"future11"}),
    ("in_less_than_days", 5, set()),
    ("in_less_than_days", 12, {"future11"}),
    ("is_blank", None, {"n"}),
    ("is_not_blank", None, {"d18h", "d10", "future11", "d15"}),
]


@pytest.mark.parametrize("op,value,expected", DATE_CASES)
def test_date_attribute_operators(op, value, expected):
    assert _selected(DateAttribute("last_order_at", op, value), DATE_STATE) == expected


def _event(user, name, time, **props):
    return {"user": user, "name": name, "time": pd.Timestamp(time), "properties": props}


EVENT_STATE = BrazeState(
    pd.DataFrame(index=pd.Index(["e1", "e2", "e3", "e4", "e5"], name="user")),
    pd.DataFrame([
        _event("e1", "Audience Entered", "2026-11-20T01:00:00Z", audience_key="vip", flag=True,
               score=True),
        _event("e1", "Audience Entered", "2026-11-19T10:00:00Z", audience_key="dormant"),
        _event("e2", "Audience Entered", "2026-11-18T12:00:00Z", audience_key="vip", score=1.0,
               flag=1),
        _event("e3", "Audience Entered", "2026-10-01T00:00:00Z", audience_key="vip"),
        _event("e5", "Audience Entered", "2026-11-19T00:00:00Z", audience_key="dormant"),
        _event("e5", "Audience Exited", "2026-11-19T08:00:00Z", audience_key="dormant"),
        _event("e4", "audience entered", "2026-11-19T08:00:00Z", audience_key="vip"),
    ]),
    as_of=AS_OF,
)

EVENT_CASES = [
    # §5.3 count MORE THAN / LESS THAN / EXACTLY X; users who never did it have count 0.
    (CustomEventCount("Audience Entered", "more_than", 0), {"e1", "e2", "e3", "e5"}),
    (CustomEventCount("Audience Entered", "exactly", 0), {"e4"}),  # names are case sensitive
    (CustomEventCount("Audience Entered", "less_than", 2), {"e2", "e3", "e4", "e5"}),
    (CustomEventCount("Audience Entered", "more_than", 1), {"e1"}),
    (CustomEventCount("Audience Entered", "exactly", 2), {"e1"}),
    # §5.3 "1 calendar day looks at 24-48 hours": as of 11-20 06:00 that is 11-19 00:00 onward.
    (CustomEventCount("Audience Entered", "more_than", 0, days=1), {"e1", "e5"}),
    (CustomEventCount("Audience Entered", "more_than", 0, days=2), {"e1", "e2", "e5"}),
    # e3 entered on 10-01, outside the last 30 calendar days.
    (CustomEventCount("Audience Entered", "exactly", 0, days=30), {"e3", "e4"}),
    (CustomEventCount("Audience Entered", "more_than", 0, days=30), {"e1", "e2", "e5"}),
    (CustomEventCount("Audience Exited", "exactly", 0), {"e1", "e2", "e3", "e4"}),
    # §5.3 X Custom Event Property In Y Days.
    (CustomEventPropertyCount("Audience Entered", "audience_key", "vip", "more_than", 0),
     {"e1", "e2"}),
    (CustomEventPropertyCount("Audience Entered", "audience_key", "dormant", "more_than", 0, 1),
     {"e1", "e5"}),
    (CustomEventPropertyCount("Audience Entered", "audience_key", "vip", "exactly", 0),
     {"e3", "e4", "e5"}),
    (CustomEventPropertyCount("Audience Entered", "audience_key", "VIP", "more_than", 0), set()),
    (CustomEventPropertyCount("Audience Entered", "score", 1, "more_than", 0), {"e2"}),
    (CustomEventPropertyCount("Audience Entered", "flag", True, "more_than", 0), {"e1"}),
    # §5.3 First Did / Last Did; users who never did the event are not selected.
    (CustomEventTime("Audience Entered", "last_did_after", "2026-11-18"), {"e1", "e5"}),
    (CustomEventTime("Audience Entered", "first_did_before", "2026-11-01"), {"e3"}),
    (CustomEventTime("Audience Entered", "first_did_after", "2026-11-18"), {"e1", "e5"}),
    (CustomEventTime("Audience Entered", "last_did_before", "2026-11-19"), {"e2", "e3"}),
    (CustomEventTime("Audience Entered", "last_did_more_than_days_ago", 30), {"e3"}),
    (CustomEventTime("Audience Entered", "last_did_less_than_days_ago", 1), {"e1"}),
    (CustomEventTime("Audience Entered", "last_did_less_than_days_ago", 1.3), {"e1", "e5"}),
]


@pytest.mark.parametrize("f,expected", EVENT_CASES, ids=str)
def test_custom_event_filters(f, expected):
    assert _selected(f, EVENT_STATE) == expected


COHORT_STATE = BrazeState(pd.DataFrame(index=pd.Index(["a", "b", "c"], name="user")),
                          cohorts=pd.DataFrame({"user": ["a", "b"], "cohort": ["vip", "dormant"]}),
                          as_of=AS_OF)


COHORT_CASES = [(SegmentCohort("vip"), {"a"}),  # §5.4
                (SegmentCohort("vip", includes=False), {"b", "c"})]


@pytest.mark.parametrize("f,expected", COHORT_CASES, ids=str)
def test_segment_cohort_includes_and_excludes(f, expected):
    assert _selected(f, COHORT_STATE) == expected


_SHOES = StringAttribute("fav", "matches_regex", "shoes")
_LOWER = StringAttribute("fav", "is_any_of", "shoes")
_HATS = StringAttribute("fav", "is_any_of", "Hats")
GROUP_CASES = [(_SHOES & _LOWER, {"shoes_lower"}), (_LOWER | _HATS, {"shoes_lower", "hats"}),
               ((_SHOES & _LOWER) | _HATS, {"shoes_lower", "hats"})]


def test_and_or_groups():
    vip, lower, hats = _SHOES, _LOWER, _HATS
    for f, expected in GROUP_CASES:
        assert _selected(f, STRING_STATE) == expected
    group = (vip & lower) | hats
    assert isinstance(vip & lower & hats, AllOf) and len((vip & lower & hats).filters) == 3
    assert str(group) == ("(Custom Attribute `fav` matches regex `shoes` AND Custom Attribute "
                          "`fav` is any of `shoes`) OR Custom Attribute `fav` is any of `Hats`")


WORDING = [
    (BooleanAttribute("dormant_shopper", "is_true"), "Custom Attribute `dormant_shopper` is true"),
    (BooleanAttribute("vip", "is_false_or_not_set"), "Custom Attribute `vip` is false or not set"),
    (StringAttribute("fav", "matches_regex", "^sho"), "Custom Attribute `fav` matches regex `^sho`"),
    (StringAttribute("fav", "equals", ["a", "b"]), "Custom Attribute `fav` is any of `a`, `b`"),
    (StringAttribute("fav", "is_not_blank"), "Custom Attribute `fav` is not blank"),
    (NumberAttribute("rev", "less_than", 10), "Custom Attribute `rev` is less than 10"),
    (NumberAttribute("rev", "exactly", 0), "Custom Attribute `rev` is exactly 0"),
    (DateAttribute("at", "more_than_days_ago", 7), "Custom Attribute `at` is more than 7 days ago"),
    (DateAttribute("at", "before", "2026-01-02"), "Custom Attribute `at` is before 2026-01-02"),
    (CustomEventCount("Audience Entered", "more_than", 0),
     "Custom Event `Audience Entered` more than 0 times"),
    (CustomEventCount("Trait Computed", "exactly", 3, days=7),
     "Custom Event `Trait Computed` exactly 3 times in the last 7 calendar days"),
    (CustomEventPropertyCount("Audience Entered", "audience_key", "vip", "more_than", 0),
     "Custom Event Property `audience_key` of `Audience Entered` is `vip` more than 0 times in "
     "the last 30 calendar days"),
    (CustomEventTime("Audience Entered", "last_did_more_than_days_ago", 2),
     "Last Did Custom Event `Audience Entered` more than 2 days ago"),
    (SegmentCohort("vip_customer"), "Segment Cohorts includes `vip_customer`"),
]


@pytest.mark.parametrize("f,text", WORDING, ids=lambda x: x if isinstance(x, str) else "")
def test_dashboard_wording_and_html(f, text):
    assert str(f) == text
    assert "Custom" in f._repr_html_() or "Cohorts" in f._repr_html_()


ALL_FILTERS = ([StringAttribute("fav", op, v) for op, v, _ in STRING_CASES]
               + [BooleanAttribute("vip", op) for op, _ in BOOL_CASES]
               + [NumberAttribute("revenue", op, v) for op, v, _ in NUM_CASES]
               + [DateAttribute("last_order_at", op, v) for op, v, _ in DATE_CASES]
               + [f for f, _ in EVENT_CASES] + [SegmentCohort("vip", includes=False)]
               + [AnyOf(AllOf(BooleanAttribute("vip", "is_true"), SegmentCohort("x")),
                        NumberAttribute("revenue", "more_than", 1.5))])


@pytest.mark.parametrize("f", ALL_FILTERS, ids=str)
def test_dict_round_trip(f):
    data = f.to_dict()
    again = Filter.from_dict(data)
    assert again == f and str(again) == str(f)
    assert again.to_dict() == data


INVALID = [
    (lambda: CustomEventCount("E", "more_than", 51), "between 0 and 50"),
    (lambda: CustomEventCount("E", "more_than", -1), "between 0 and 50"),
    (lambda: CustomEventCount("E", "more_than", 1.5), "whole number"),
    (lambda: CustomEventCount("E", "more_than", 1, days=31), "1 to 30"),
    (lambda: CustomEventCount("E", "more_than", 1, days=0), "1 to 30"),
    (lambda: CustomEventCount("E", "at_least", 1), "not an event count operator"),
    (lambda: CustomEventCount("$E", "more_than", 1), "cannot begin with '$'"),
    (lambda: CustomEventPropertyCount("E", "k", "v", "more_than", 0, None), "needs a number of days"),
    (lambda: CustomEventPropertyCount("E", "k", "v", "more_than", 0, 45), "1 to 30"),
    (lambda: StringAttribute("fav", "matches_regex", "(unclosed"), "invalid regular expression"),
    (lambda: StringAttribute("fav", "matches_regex", "(?P<n>a)"), "does not accept"),
    (lambda: StringAttribute("fav", "matches_regex", r"\Ashoes"), "does not accept"),
    (lambda: StringAttribute("fav", "matches_regex", ""), "non-empty pattern"),
    (lambda: StringAttribute("fav", "matches_regex", "a" * 32_765), "at most 32,764"),
    (lambda: StringAttribute("fav", "is_any_of", [str(i) for i in range(257)]), "1 to 256"),
    (lambda: StringAttribute("fav", "is_any_of", []), "1 to 256"),
    (lambda: StringAttribute("fav", "is_any_of", "x" * 256), "up to 255"),
    (lambda: StringAttribute("fav", "is_any_of", 3), "1 to 256"),
    (lambda: StringAttribute("fav", "sounds_like", "x"), "not a string attribute operator"),
    (lambda: StringAttribute("$fav", "is_blank"), "cannot begin with '$'"),
    (lambda: StringAttribute("f" * 256, "is_blank"), "at most 255"),
    (lambda: NumberAttribute("rev", "more_than", "ten"), "finite number"),
    (lambda: NumberAttribute("rev", "more_than", float("nan")), "finite number"),
    (lambda: BooleanAttribute("vip", "is_maybe"), "not a boolean attribute operator"),
    (lambda: DateAttribute("at", "before", "not a date"), "needs a date"),
    (lambda: DateAttribute("at", "more_than_days_ago", -1), "days ≥ 0"),
    (lambda: CustomEventTime("E", "last_did_after", None), "needs a date"),
    (lambda: SegmentCohort(""), "cohort name"),
    (lambda: AllOf(), "at least one filter"),
    (lambda: Filter.from_dict({"type": "magic"}), "unknown filter type"),
    (lambda: Filter.from_dict({"type": "boolean_attribute", "name": "v", "op": "is_true",
                               "colour": "red"}), "unknown field 'colour'"),
    (lambda: Filter.from_dict(["not", "a", "dict"]), "must be a mapping"),
]


@pytest.mark.parametrize("build,message", INVALID, ids=[m for _, m in INVALID])
def test_invalid_filters_raise_filter_error(build, message):
    with pytest.raises(FilterError) as info:
        build()
    assert message in str(info.value)
    assert info.value.hint  # every refusal says how to fix it


# Braze only offers the operators of the attribute's data type; a number filter on a text
# attribute therefore selects as if the attribute were blank.
OTHER_TYPE_CASES = [(NumberAttribute("fav", "more_than", 0), set()),
                    (NumberAttribute("fav", "is_blank"), set(USERS))]


@pytest.mark.parametrize("f,expected", OTHER_TYPE_CASES, ids=str)
def test_filters_of_another_type_see_no_values(f, expected):
    assert _selected(f, STRING_STATE) == expected


def many_rows_state() -> BrazeState:
    values = pd.array(["Shoes", "Hats", None, "shoe box"] * 50_000, dtype="string")
    return BrazeState(pd.DataFrame({"fav": values}, index=pd.RangeIndex(200_000).astype(str)),
                      as_of=AS_OF)


MANY_ROWS_COUNTS = [(StringAttribute("fav", "matches_regex", "SHOE"), 100_000),
                    (StringAttribute("fav", "does_not_match_regex", "SHOE"), 50_000)]


def test_regex_on_many_rows_is_evaluated_per_distinct_value():
    state = many_rows_state()
    for f, count in MANY_ROWS_COUNTS:
        assert f.count(state) == count


# Every (filter, state, selected users) checked above, so other evaluators (filters_sql) are
# held to the same expectations.
EVALUATION_CASES = (
    [(StringAttribute("fav", op, value), state, expected)
     for op, value, expected in STRING_CASES for state in STRING_STATES]
    + [(BooleanAttribute("vip", op), BOOL_STATE, expected) for op, expected in BOOL_CASES]
    + [(f, NO_COLUMN_STATE, expected) for f, expected in NO_COLUMN_CASES]
    + [(NumberAttribute("revenue", op, value), NUM_STATE, expected)
       for op, value, expected in NUM_CASES]
    + [(DateAttribute("last_order_at", op, value), DATE_STATE, expected)
       for op, value, expected in DATE_CASES]
    + [(f, EVENT_STATE, expected) for f, expected in EVENT_CASES]
    + [(f, COHORT_STATE, expected) for f, expected in COHORT_CASES]
    + [(f, STRING_STATE, expected) for f, expected in GROUP_CASES + OTHER_TYPE_CASES]
)
