"""The query-language parser: every function of Segment's reference parses into a typed tree,
the reference's own examples parse, and everything else is refused at the right character."""
from __future__ import annotations

import pytest

from toolkit.engage import query as q
from toolkit.engage.query import parse
from toolkit.errors import DefinitionError

# one definition per function of the reference (src/api/public-api/query-language.md)
EVERY_FUNCTION = {
    # extractors
    "event": ("event('Shoes Bought').count() >= 1", "audience", "USERS"),
    "trait": ("trait('total_spend') > 200", "audience", "USERS"),
    "property": ("event('Shoes Bought').where(property('price') >= 100).count() >= 1",
                 "audience", "USERS"),
    "context": ("event('Page Viewed').where(context('page.url').contains('/sale')).count() >= 1",
                "audience", "USERS"),
    "literal": ("trait('total_spend') > literal(100)", "audience", "USERS"),
    # filters
    "where": ("event('Shoes Bought').where(property('price_usd') > 100).count() >= 1",
              "audience", "USERS"),
    "sources": ("event('Shoes Bought').sources(exclude: 'QgRHeujRJBM9j18yChyC').count() >= 1",
                "audience", "USERS"),
    "within": ("event('Shoes Bought').within(7 days).count() >= 1", "audience", "USERS"),
    "between": ("event('Shoes Bought').between(7 days, 10 days).count() >= 1", "audience",
                "USERS"),
    # reducers
    "count": ("event('Shoes Bought').count()", "trait", "USERS"),
    "sum": ("event('Shoes Bought').sum(property('spend'))", "trait", "USERS"),
    "avg": ("event('Shoes Bought').avg(property('spend'))", "trait", "USERS"),
    "max": ("event('Shoes Bought').max(property('spend') as string)", "trait", "USERS"),
    "min": ("event('Shoes Bought').min(property('spend'))", "trait", "USERS"),
    "mode": ("event('Shoes Bought').mode(property('spend') as array, 2)", "trait", "USERS"),
    "first": ("event('Shoes Bought').first(property('spend'))", "trait", "USERS"),
    "last": ("event('Shoes Bought').last(property('spend'))", "trait", "USERS"),
    "unique": ("event('Shoes Bought').unique(property('spend')).count() > 2", "audience",
               "USERS"),
    # comparators, method form
    "equals": ("trait('plan').equals('pro')", "audience", "USERS"),
    "differs": ("trait('plan').differs('pro')", "audience", "USERS"),
    "absent": ("trait('plan').absent()", "audience", "USERS"),
    "exists": ("trait('plan').exists()", "audience", "USERS"),
    "greater_than": ("trait('spend').greater_than(500)", "audience", "USERS"),
    "at_least": ("trait('spend').at_least(500)", "audience", "USERS"),
    "less_than": ("trait('spend').less_than(500)", "audience", "USERS"),
    "at_most": ("trait('spend').at_most(500)", "audience", "USERS"),
    "contains": ("trait('fav').contains('shoes','shirts')", "audience", "USERS"),
    "omits": ("trait('fav').omits('shoes')", "audience", "USERS"),
    "starts_with": ("trait('fav').starts_with('total')", "audience", "USERS"),
    "ends_with": ("trait('fav').ends_with('total')", "audience", "USERS"),
    "one_of": ("trait('fav').one_of('shoes','shirts')", "audience", "USERS"),
    "before_date": ("trait('signup_at').before_date('2023-12-07T18:50:00Z')", "audience",
                    "USERS"),
    "after_date": ("trait('signup_at').after_date('2023-12-07T18:50:00Z')", "audience", "USERS"),
    "within_last": ("trait('signup_at').within_last(7 days)", "audience", "USERS"),
    "within_next": ("trait('renews_at').within_next(7 days)", "audience", "USERS"),
    "before_last": ("trait('signup_at').before_last(7 days)", "audience", "USERS"),
    "after_next": ("trait('renews_at').after_next(7 days)", "audience", "USERS"),
    # junctions
    "AND": ("trait('a') = 1 AND trait('b') = 2", "audience", "USERS"),
    "OR": ("trait('a') = 1 OR trait('b') = 2", "audience", "USERS"),
    "NOT": ("NOT (trait('a') = 1)", "audience", "USERS"),
    "ANY": ("ANY event('Shoes Bought').count() >= 1", "audience", "ACCOUNTS"),
    "ALL": ("ALL ( event('Shoes Bought').count() >= 1 AND trait('total_spend') > 200 )",
            "audience", "ACCOUNTS"),
}


def test_the_table_covers_every_function_of_the_reference():
    assert set(EVERY_FUNCTION) == set(q.EXTRACTORS + q.FILTERS + q.REDUCERS + q.COMPARATORS
                                      + q.JUNCTIONS)


@pytest.mark.parametrize("function", sorted(EVERY_FUNCTION))
def test_every_function_parses(function):
    text, kind, level = EVERY_FUNCTION[function]
    definition = parse(text, kind=kind, level=level)
    assert function in definition.functions
    assert definition.root.type == ("boolean" if kind == "audience" else "scalar")


@pytest.mark.parametrize("symbol, function", sorted(q.SYMBOLS.items()))
def test_comparison_symbols_are_the_comparators(symbol, function):
    d = parse(f"event('Order Completed').count() {symbol} 3")
    assert isinstance(d.root, q.Compare) and d.root.function == function
    assert d.root.args == (q.Literal(3, span=(0, 0)),)


REFERENCE_EXAMPLES = [
    ("event('Shoes Bought').where( property('price') >= 100 ).within(7 days).count() >= 1",
     "audience", "USERS"),
    ("event('Shoes Bought').where( \nproperty('price') >= trait('avg_spend')\nAND \n"
     "event('Shoes Returned').within(parent: 5 days).count() >= 1 \n).within(30 days).count() >= 1",
     "audience", "USERS"),
    ("NOT ( event('Shoes Bought').count() >= 1 AND trait('total_spend') > 200 )", "audience",
     "USERS"),
    ("ALL ( event('Shoes Bought').count() >= 1 AND trait('total_spend') > 200 )", "audience",
     "ACCOUNTS"),
    ("ALL NOT event('Shoes Bought').count() >= 1", "audience", "ACCOUNTS"),
    ("ANY event('Shoes Bought').count() >= 1", "audience", "ACCOUNTS"),
    ("event('Shoes Bought').within(30 days).avg(property('spend'))", "trait", "USERS"),
    ("event('Shoes Bought').where( property('price') > 100 AND property('brand') = 'My Brand' )"
     ".min(property('spend'))", "trait", "USERS"),
    ("event('Shoes Bought').within(30 days).first(property('spend'))", "trait", "USERS"),
    ("event('Shoes Bought').within(30 days).mode(property('spend'), 2)", "trait", "USERS"),
    # the function tables' own examples, braces included
    ("event('a').where({property('price_usd') > 100}).count() >= 1", "audience", "USERS"),
    ("event('a').sources({exclude: 'QgRHeujRJBM9j18yChyC', '/;hSBZDqGDPvXCKHbikPm'})"
     ".count() >= 1", "audience", "USERS"),
    ("trait('x') == 500", "audience", "USERS"),
    ("event('a').max(property('spend') as string) = 'z'", "audience", "USERS"),
    ("event('Purchased').count() >= 1", "audience", "USERS"),  # the Public API's example
]


@pytest.mark.parametrize("text, kind, level", REFERENCE_EXAMPLES)
def test_the_references_examples_parse(text, kind, level):
    parse(text, kind=kind, level=level)


def test_the_tree_is_typed_and_keeps_the_source_of_each_part():
    d = parse("event('Order Completed').where(property('revenue') > 100).within(30 days)"
              ".count() >= 2 OR trait('plan') = 'pro' AND trait('beta') = true")
    assert isinstance(d.root, q.Or)                 # AND binds tighter than OR
    left, right = d.root.items
    assert isinstance(right, q.And)
    assert isinstance(left.left, q.Reduce) and left.left.function == "count"
    stream = left.left.stream
    assert stream.event == "Order Completed"
    assert isinstance(stream.steps[0], q.Where) and isinstance(stream.steps[1], q.Within)
    assert stream.steps[1].duration == q.Duration(30, "days", span=(0, 0))
    assert d.source(right.items[1]) == "trait('beta') = true"
    assert right.items[1].args[0].value is True
    assert d.events == ["Order Completed"] and d.traits == ["plan", "beta"]


def test_funnel_parent_prefixes_parse():
    d = parse("event('Shoes Bought').where(event('Shoes Returned').where(property(parent: "
              "'sku') = 'x').within(parent: 5 days).count() >= 1).count() >= 1")
    inner = d.root.left.stream.steps[0].condition.left.stream
    assert inner.steps[1] == q.Within(q.Duration(5, "days", span=(0, 0)), True, span=(0, 0))
    assert inner.steps[0].condition.left.parent is True


def test_unique_count_is_one_reducer():
    d = parse("event('a').unique(property('sku')).count() >= 3")
    assert d.root.left.function == "count_unique" and d.root.left.prop.name == "sku"


REFUSED = [
    # (definition, column, words in the message, words in the hint)
    ("event('a').cout() >= 1", 12, "unknown function 'cout'", "did you mean 'count'?"),
    ("evnt('a').count() >= 1", 1, "unknown function 'evnt'", "did you mean 'event'?"),
    ("event('a').count() >=", 22, "needs a value on its right", "expected a number"),
    ("event('a').within(7 weeks).count() >= 1", 21, "expected a time unit", "convert to days"),
    ("event('a) >= 1", 7, "never closed", "closing ' quote"),
    ("trait('x').within(7 days) = 1", 12, ".within() cannot follow trait('x')", "equals"),
    ("event('a') >= 1", 12, "left side is a stream of events", ".count() >="),
    ("event('a').count()", 1, "must be a true/false condition", "comparison"),
    ("count() > 1", 1, "count() cannot start an expression", "extractor"),
    ("property('x') > 1", 1, "only valid inside where", "where("),
    ("(event('a').count() >= 1", 25, "expected ')'", "add ')'"),
    ("event('a').count() >= 1)", 24, "closes nothing", "remove it"),
    ("event('a').count() >= 1 AND", 28, "ends too early", "condition"),
    ("ANY event('a').count() >= 1", 1, "only for account-level", "ACCOUNTS"),
    ("event('a').within(parent: 5 days).count() >= 1", 19, "there is none here", "funnel"),
    ("trait('x') > 1 OR event('a').count()", 19, "OR joins conditions", "compare"),
    ("trait('x') $ 3", 12, "unexpected character '$'", "comparison"),
    ("trait('x').equals()", 19, "unexpected ')'", "function call"),
    ("event('a').sum(trait('x')) > 1", 16, "takes an event property", "property('revenue')"),
    ("event('a').avg(property('x') as string) > 1", 30, "takes no 'as' type", "max, min"),
    ("event('a').mode(property('x')) = 'z'", 30, "minimum frequency", "mode(property"),
    ("event('a').between(10 days, 7 days).count() >= 1", 20, "ends before it starts",
     "nearer time first"),
    ("trait('d').before_date('yesterday')", 24, "ISO 8601", "2023-12-07"),
    ("trait('x').one_of() ", 19, "takes quoted strings", "one_of('shoes'"),
    ("event('a').count() >= 1 trait('b') = 1", 25, "after a complete expression", "AND, OR"),
    ("event('').count() >= 1", 7, "non-empty name", "type the name"),
    ("event('a').count() >= 1 AND {trait('x') = 1}", 29, "only allowed around", "parentheses"),
    ("event('a').count().equals(1).exists()", 29, "nothing can follow the comparison", "AND"),
    ("event('a').unique(property('x')).sum(property('x')) > 1", 34,
     ".sum() cannot follow", "count"),
    ("   ", None, "is empty", "write a condition"),
]


@pytest.mark.parametrize("text, column, message, hint", REFUSED)
def test_bad_definitions_are_refused_at_the_character(text, column, message, hint):
    with pytest.raises(DefinitionError) as info:
        parse(text)
    err = info.value
    assert message in err.message
    assert hint in (err.hint or "")
    assert err.column == column
    if column is not None:       # the caret sits under that character
        lines = err.message.splitlines()
        assert lines[-1].index("^") - 4 == column - 1


def test_errors_in_multi_line_definitions_name_the_line():
    with pytest.raises(DefinitionError) as info:
        parse("event('a').count() >= 1\nAND trait('x').frobnicate()")
    assert (info.value.line, info.value.column) == (2, 16)
    assert "line 2, column 16" in str(info.value)


def test_at_most_fifty_primary_expressions():
    fifty = " OR ".join(f"trait('t{i}') = {i}" for i in range(50))
    parse(fifty)
    with pytest.raises(DefinitionError) as info:
        parse(fifty + " OR trait('t50') = 50")
    assert "51 primary expressions" in info.value.message and "at most 50" in info.value.message
    assert info.value.column == len(fifty) + 5


def test_bad_arguments_to_parse_are_errors_not_crashes():
    with pytest.raises(DefinitionError, match="is text"):
        parse(42)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="kind must be"):
        parse("trait('a') = 1", kind="segment")
    with pytest.raises(DefinitionError, match="USERS or ACCOUNTS"):
        parse("trait('a') = 1", level="GROUPS")
    with pytest.raises(DefinitionError, match="must give a value"):
        parse("trait('a') = 1", kind="trait")


def test_junction_keywords_any_case_and_true_false_literals():
    d = parse("trait('vip') = true and not trait('churned') = false or trait('x').exists()")
    assert isinstance(d.root, q.Or) and isinstance(d.root.items[0], q.And)
    assert isinstance(d.root.items[0].items[1], q.Not)


# -- nothing crashes ------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_VALID = [text for text, _, _ in EVERY_FUNCTION.values()] + [t for t, _, _ in REFERENCE_EXAMPLES]
_ALPHABET = st.sampled_from(list("()'{}.,:=!<>- \n\"\\") + ["event", "trait", "count", "within",
                                                            "AND", "OR", "NOT", "7", "days",
                                                            "property", "where", "x"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_ALPHABET, max_size=40).map("".join) | st.text(max_size=60))
def test_any_text_parses_or_is_a_located_definition_error(text):
    try:
        parse(text, level="ACCOUNTS")
    except DefinitionError as err:
        assert err.message and (err.column is None or 1 <= err.column <= len(text) + 1)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_VALID), st.integers(0, 400), st.integers(0, 5),
       st.sampled_from(["", "(", ")", "'", ".", "x", " AND ", "{", ">=", "7 days"]))
def test_damaged_reference_definitions_never_crash(text, at, cut, insert):
    at = at % (len(text) + 1)
    damaged = text[:at] + insert + text[at + cut:]
    for kind in ("audience", "trait"):
        try:
            parse(damaged, kind=kind, level="ACCOUNTS")
        except DefinitionError as err:
            assert err.hint
