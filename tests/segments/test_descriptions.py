"""Reading Braze's description of a segment's filters and comparing it with a filter."""
from __future__ import annotations

import pytest

from toolkit.braze.descriptions import clauses_of, compare, parse_description
from toolkit.braze.filters import (AllOf, AnyOf, BooleanAttribute, CustomEventCount,
                                   CustomEventPropertyCount, CustomEventTime, DateAttribute,
                                   NumberAttribute, SegmentCohort, StringAttribute)
from toolkit.errors import SegmentCheckError

EVERY_KIND = [
    StringAttribute("product", "matches_regex", "^Camp Mug$"),
    StringAttribute("product", "does_not_match_regex", "mug"),
    StringAttribute("product", "is_any_of", ["Hat", "Sock"]),
    StringAttribute("product", "is_none_of", "Hat"),
    StringAttribute("product", "contains_any_of", ["at"]),
    StringAttribute("product", "is_not_blank"),
    BooleanAttribute("vip_customer", "is_true"),
    BooleanAttribute("vip_customer", "is_false_or_not_set"),
    NumberAttribute("revenue", "more_than", 199.5),
    NumberAttribute("revenue", "exactly", 0),
    NumberAttribute("revenue", "is_blank"),
    DateAttribute("last_order_at", "after", "2025-01-12"),
    DateAttribute("last_order_at", "less_than_days_ago", 30),
    DateAttribute("last_order_at", "in_more_than_days", 2),
    BooleanAttribute("first_name", "is_not_blank"),
    CustomEventCount("Audience Entered", "more_than", 0),
    CustomEventCount("Audience Entered", "exactly", 2, days=14),
    CustomEventPropertyCount("Audience Entered", "audience_key", "vip", "more_than", 0),
    CustomEventTime("Audience Entered", "last_did_more_than_days_ago", 3),
    CustomEventTime("Audience Entered", "first_did_after", "2025-02-01"),
    SegmentCohort("VIP customers"),
    SegmentCohort("VIP customers", includes=False),
]


@pytest.mark.parametrize("f", EVERY_KIND, ids=str)
def test_the_dashboard_wording_of_every_filter_reads_back_the_same(f):
    assert parse_description(str(f)) == clauses_of(f)
    assert compare(clauses_of(f), parse_description(str(f))) == []


def test_groups_are_read_clause_by_clause():
    f = AnyOf(AllOf(CustomEventCount("In", "exactly", 1), CustomEventCount("Out", "exactly", 0)),
              AllOf(CustomEventCount("In", "exactly", 2), CustomEventCount("Out", "exactly", 1)))
    assert len(parse_description(str(f))) == 4
    assert compare(clauses_of(f), parse_description(str(f))) == []


@pytest.mark.parametrize("text", [
    "Custom Attribute vip_customer is true",
    'Custom Attribute "vip_customer" is true.',
    "custom attribute `vip_customer` IS TRUE",
    "(Custom Attribute `vip_customer` is true)",
])
def test_names_may_be_bare_quoted_or_backticked_and_case_is_free(text):
    assert compare(clauses_of(BooleanAttribute("vip_customer", "is_true")),
                   parse_description(text)) == []


def test_bare_event_names_with_spaces_and_braze_style_windows():
    text = ("Custom Event Dormant Shopper Entered more than 0 times in the past 7 days AND "
            "Custom Event Dormant Shopper Exited exactly 0 times")
    clauses = parse_description(text)
    assert [(c.name, c.operator, c.days) for c in clauses] == [
        ("Dormant Shopper Entered", "more_than", 7), ("Dormant Shopper Exited", "exactly", None)]


def test_equals_and_is_any_of_are_the_same_operator():
    # Braze consolidated "equals" into "is any of" (braze-api.md §5.1)
    assert compare(clauses_of(StringAttribute("product", "is_any_of", "Hat")),
                   parse_description("Custom Attribute `product` equals `Hat`")) == []


@pytest.mark.parametrize("recommended, described, aspect, words", [
    (BooleanAttribute("vip_customer", "is_true"), "Custom Attribute `vip` is true",
     "attribute", "filters on attribute `vip`"),
    (CustomEventCount("Audience Entered", "more_than", 0),
     "Custom Event `Audience Enter` more than 0 times", "event", "counts event `Audience Enter`"),
    (CustomEventCount("Audience Entered", "more_than", 0),
     "Custom Event `Audience Entered` more than 0 times in the last 7 calendar days", "window",
     "in the last 7 days; the recommended filter counts them over all time"),
    (CustomEventCount("Audience Entered", "more_than", 0),
     "Custom Event `Audience Entered` more than 1 times", "operator", "more than 1 times"),
    (StringAttribute("product", "is_any_of", "Camp Mug"),
     "Custom Attribute `product` matches regex `mug`", "operator", "matches regex"),
    (StringAttribute("product", "is_any_of", "Camp Mug"),
     "Custom Attribute `product` is any of `camp mug`", "value", "`camp mug`"),
    (NumberAttribute("revenue", "more_than", 200),
     "Custom Attribute `revenue` is more than 100", "value", "`100`"),
    (SegmentCohort("VIP"), "Segment Cohorts includes `VIPs`", "cohort", "cohort `VIPs`"),
])
def test_differences_are_named_in_words(recommended, described, aspect, words):
    diffs = compare(clauses_of(recommended), parse_description(described))
    assert [d.aspect for d in diffs] == [aspect]
    assert words in str(diffs[0])


def test_regex_values_compare_without_case_but_names_with_case():
    assert compare(clauses_of(StringAttribute("p", "matches_regex", "^Hat$")),
                   parse_description("Custom Attribute `p` matches regex `^hat$`")) == []
    diffs = compare(clauses_of(BooleanAttribute("VIP", "is_true")),
                    parse_description("Custom Attribute `vip` is true"))
    assert [d.aspect for d in diffs] == ["attribute"]


def test_missing_and_extra_filters():
    both = BooleanAttribute("a", "is_true") & NumberAttribute("n", "more_than", 1)
    diffs = compare(clauses_of(both), parse_description("Custom Attribute `a` is true"))
    assert [d.aspect for d in diffs] == ["missing"] and "no filter on `n`" in str(diffs[0])
    diffs = compare(clauses_of(BooleanAttribute("a", "is_true")),
                    parse_description(str(both) + " AND Segment Cohorts includes `c`"))
    assert sorted(d.aspect for d in diffs) == ["extra", "extra"]


def test_unreadable_clauses_are_kept_but_never_differences():
    clauses = parse_description("Custom Attribute `a` is true AND Random Bucket # < 5000")
    assert [c.subject for c in clauses] == ["attribute", "unknown"]
    assert compare(clauses_of(BooleanAttribute("a", "is_true")), clauses) == []


@pytest.mark.parametrize("text", [None, "", "  \n ", 42])
def test_an_empty_description_is_refused(text):
    with pytest.raises(SegmentCheckError, match="no description") as info:
        parse_description(text, segment="'vip' (s1)")
    assert info.value.segment == "'vip' (s1)" and info.value.field == "description"


def test_a_description_with_no_known_filter_is_refused():
    with pytest.raises(SegmentCheckError, match="reads as no filter"):
        parse_description("everyone who bought a hat last summer")


def test_a_filter_that_covers_only_some_of_the_recommended_cases_says_so():
    recommended = AnyOf(AllOf(CustomEventCount("In", "exactly", 1),
                              CustomEventCount("Out", "exactly", 0)),
                        AllOf(CustomEventCount("In", "exactly", 2),
                              CustomEventCount("Out", "exactly", 1)))
    built = CustomEventCount("In", "exactly", 1) & CustomEventCount("Out", "exactly", 0)
    diffs = compare(clauses_of(recommended), parse_description(str(built)))
    assert [d.aspect for d in diffs] == ["fewer_operators", "fewer_operators"]
    assert "uses only exactly 1 times of the recommended" in str(diffs[0])
    assert "re-entered" in str(diffs[0])
