"""Local evaluation of definitions: every function on a small known history, Engage's membership
beside it with the differences explained, and the shop's sample audiences."""
from __future__ import annotations

import pandas as pd
import pytest

import toolkit
from toolkit.engage.definitions import load_definitions
from toolkit.engage.evaluate import attach_history, evaluate_definition, history_of
from toolkit.errors import DefinitionError, ExportFormatError

from .conftest import DEFAULT_EVENTS, SAMPLES, SNAPSHOT, _ev, ago, make_shop

SNAPSHOT_LATER = SNAPSHOT + pd.Timedelta(days=40)

OC = "event('Order Completed')"
PV = "event('Product Viewed')"
U9 = "user_id:u9"

CASES = [
    # streams, windows, filters
    (f"{OC}.count() >= 1", {"p0", "p1", "p2", "p4", U9}),
    (f"{OC}.within(7 days).count() >= 1", {"p0", "p4", U9}),
    (f"{OC}.within(9 days).count() >= 1", {"p0", "p2", "p4", U9}),
    (f"{OC}.within(24 hours).count() >= 1", {"p4"}),          # 24 h ago exactly is outside
    (f"{OC}.within(25 hours).count() >= 1", {"p0", "p4"}),
    (f"{OC}.between(2 days, 10 days).count() >= 1", {"p0", "p2", U9}),
    (f"{OC}.where(property('brand') = 'Acme').count() >= 2", {"p0"}),
    (f"{OC}.sources(exclude: 'ios').within(2 days).count() >= 1", {"p4"}),
    (f"{PV}.count() = 0", {"p0", "p2", "p4", "p5", U9}),
    (f"{PV}.where(context('page.url').ends_with('/product-viewed')).count() >= 1", {"p1", "p3"}),
    # reducers
    (f"{OC}.sum(property('revenue')) >= 200", {"p0", "p1", U9}),
    (f"{OC}.avg(property('revenue')) > 70", {"p1", "p2", U9}),
    (f"{OC}.max(property('revenue')) >= 120", {"p0", "p1", U9}),
    (f"{OC}.min(property('revenue')) < 40", {"p0", "p4"}),
    (f"{OC}.max(property('brand') as string) = 'Zed'", {"p0", "p2"}),
    (f"{OC}.min(property('brand') as string) = 'Acme'", {"p0", "p1", "p4", U9}),
    (f"{OC}.mode(property('brand'), 2) = 'Acme'", {"p0"}),
    (f"{OC}.mode(property('tags') as string, 1) = 'a'", {"p0"}),
    (f"{OC}.first(property('revenue')) = 50", {"p0"}),
    (f"{OC}.last(property('brand')) = 'Zed'", {"p0", "p2"}),
    (f"{PV}.unique(property('name')).count() >= 2", {"p1"}),
    (f"{OC}.sum(property('revenue')) < 100", {"p2", "p4"}),   # no events: no sum, not selected
    # funnels
    (f"{OC}.where(event('Order Returned').within(parent: 2 days).count() >= 1).count() >= 1",
     {"p0"}),
    (f"{OC}.where(event('Order Returned').between(parent: 2 days, 3 days).count() >= 1)"
     ".count() >= 1", set()),
    (f"{OC}.where(event('Order Returned').where(property(parent: 'brand') = 'Zed')"
     ".count() >= 1).count() >= 1", {"p0"}),
    # traits and comparators
    ("trait('plan') = 'pro'", {"p0", "p4"}),                  # case-sensitive: not 'Pro'
    ("trait('plan').differs('pro')", {"p1", "p3", "p5"}),      # needs a value
    ("NOT trait('plan') = 'pro'", {"p1", "p2", "p3", "p5", U9}),
    ("trait('plan').absent()", {"p2", U9}),
    ("trait('plan').exists()", {"p0", "p1", "p3", "p4", "p5"}),
    ("trait('plan').one_of('free', 'enterprise')", {"p1", "p5"}),
    ("trait('plan').contains('ro', 'ise')", {"p0", "p3", "p4", "p5"}),
    ("trait('plan').omits('ro')", {"p1", "p2", "p5", U9}),    # NOT contains: blanks included
    ("trait('plan').starts_with('P')", {"p3"}),
    ("trait('plan').ends_with('se')", {"p5"}),
    ("trait('spend') > 99.5", {"p0", "p5"}),
    ("trait('spend') >= 99.5", {"p0", "p3", "p5"}),
    ("trait('spend').less_than(10)", {"p1"}),
    ("trait('spend').at_most(10)", {"p1", "p4"}),
    ("trait('spend') = 0", {"p1"}),
    ("trait('spend') > literal(100)", {"p0", "p5"}),
    ("trait('beta') = true", {"p0", "p3"}),
    ("trait('beta') = false", {"p1", "p5"}),
    ("trait('buyer') = true", {"p0", "p1", "p5"}),             # an audience key as a trait
    ("trait('signup_at').within_last(7 days)", {"p0", "p4"}),
    ("trait('signup_at').within_next(7 days)", {"p4", "p5"}),  # today counts (calendar dates)
    ("trait('signup_at').before_last(30 days)", {"p1", "p3"}),
    ("trait('signup_at').after_next(3 days)", {"p5"}),
    ("trait('signup_at').within_last(4 hours)", {"p4"}),
    ("trait('signup_at').before_date('2026-01-01T00:00:00Z')", {"p3"}),
    ("trait('signup_at').after_date('2026-11-19T00:00:00Z')", {"p4", "p5"}),
    # junctions and scalar comparisons
    (f"trait('plan') = 'pro' AND {OC}.within(2 days).count() >= 1", {"p0", "p4"}),
    (f"trait('plan') = 'free' OR {OC}.within(2 days).count() >= 1 AND trait('spend') > 100",
     {"p0", "p1"}),
    (f"trait('spend') > {OC}.sum(property('revenue'))", {"p0"}),
    (f"NOT ({OC}.count() >= 1 OR {PV}.count() >= 1)", {"p5"}),
]


@pytest.mark.parametrize("text, expected", CASES)
def test_every_function_evaluates_on_the_history(shop, text, expected):
    assert evaluate_definition(shop, text).segment_ids == expected


def test_cases_cover_every_function_the_parser_accepts_at_user_level():
    from toolkit.engage import query as q

    used = set()
    for text, _ in CASES:
        used |= set(q.parse(text).functions)
    assert set(q.EXTRACTORS + q.FILTERS + q.REDUCERS + q.COMPARATORS + ("AND", "OR", "NOT")) \
        <= used


def test_history_rows_resolve_to_profiles(shop):
    h = history_of(shop)
    assert len(h) == len(DEFAULT_EVENTS)
    assert set(h["identity"]) == {"matched", "not_in_export"}
    assert h.loc[h["identity"] == "not_in_export", "segment_id"].tolist() == [U9]
    assert h["computation_key"].isna().all() and "properties" in h
    assert shop.findings.of("history_attached")[0].message.startswith("12 source events")


def test_linked_and_merged_identities():
    extra = [
        # a guest order on a new device, tied to p2 by the sign-in after it
        _ev("anonymous_id:dev9", "Order Completed", ago(4), revenue=10.0),
        {**_ev("user_id:u2", "Signed In", ago(4)), "anonymous_id": "dev9"},
        # a shared device: u0's userId with p1's anonymous id
        {**_ev("user_id:u0", "Product Viewed", ago(1), name="Camp Mug"), "anonymous_id": "an1"},
    ]
    export = make_shop(DEFAULT_EVENTS + extra)
    h = history_of(export)
    guest = h[h["timestamp"] == ago(4)]
    assert set(guest["segment_id"]) == {"p2"}
    assert set(guest["identity"]) == {"linked", "matched"}
    # p1's events all land on p0 once their identifiers are one person's
    assert set(h.loc[h["identity"] == "merged", "segment_id"]) == {"p0"}
    merged = export.findings.of("merged_identity")
    assert {f.segment_id for f in merged} == {"p0", "p1"}
    ev = evaluate_definition(export, f"{OC}.within(30 days).count() >= 1", audience="buyer")
    reasons = dict(zip(ev.differences()["segment_id"], ev.differences()["reason"]))
    assert reasons["p1"] == "merged_identity"


def test_engage_membership_beside_local_with_reasons(shop):
    ev = evaluate_definition(shop, f"{OC}.within(30 days).count() >= 1", audience="buyer")
    assert ev.segment_ids == {"p0", "p2", "p4", U9}
    d = ev.differences().set_index("segment_id")
    assert dict(d["reason"]) == {"p1": "unexplained", "p2": "unexplained",
                                 "p4": "anonymous_profile", "p5": "unexplained",
                                 U9: "not_in_export"}
    s = ev.summary()
    assert (s["engage_members"], s["both"], s["only_local"], s["only_engage"]) == (3, 1, 3, 2)
    assert "only Engage" in ev._repr_html_() and "anonymous profile" in ev._repr_html_()
    members = ev.members
    assert members.loc[members["segment_id"] == U9, "in_export"].item() is False or \
        not members.loc[members["segment_id"] == U9, "in_export"].item()


def test_a_lookback_beyond_the_history_is_named(shop):
    # all time, and the history starts 200 days before the snapshot
    ev = evaluate_definition(shop, f"{OC}.count() >= 1", audience="buyer")
    d = ev.differences()
    assert set(d.loc[d["segment_id"].isin(["p2", "p5"]), "reason"]) == \
        {"history_shorter_than_window"}
    assert "reads from all time; the history starts" in d["explanation"].iloc[0]
    ev = evaluate_definition(shop, f"{OC}.within(365 days).count() >= 1", audience="buyer")
    assert ev.history_too_short()
    assert not evaluate_definition(shop, f"{OC}.within(30 days).count() >= 1").history_too_short()


def test_unseen_events_and_unknown_traits_are_located_errors(shop):
    with pytest.raises(DefinitionError) as info:
        evaluate_definition(shop, "trait('plan') = 'pro' AND event('Order Complete').count() >= 1")
    assert info.value.column == 27
    assert "never saw the event 'Order Complete'" in info.value.message
    assert "did you mean 'Order Completed'?" in info.value.hint
    with pytest.raises(DefinitionError) as info:
        evaluate_definition(shop, "trait('plna') = 'pro'")
    assert info.value.column == 1 and "did you mean 'plan'?" in info.value.hint
    relaxed = evaluate_definition(shop, "event('Order Complete').count() = 0", strict=False)
    assert len(relaxed) == 7
    assert evaluate_definition(shop, "trait('plna').absent()", strict=False).segment_ids == \
        {f"p{i}" for i in range(6)} | {U9}


def test_no_history_and_account_level_are_clear_errors(shop):
    bare = toolkit.load(SAMPLES / "audience_csv" / "formatted" / "vip_customer.csv")
    with pytest.raises(DefinitionError, match="holds no event history") as info:
        evaluate_definition(bare, f"{OC}.count() >= 1")
    assert "with_history" in info.value.hint
    with pytest.raises(DefinitionError, match="account"):
        evaluate_definition(shop, toolkit.parse_definition(f"ANY {OC}.count() >= 1",
                                                           level="ACCOUNTS"))
    with pytest.raises(toolkit.ExportValidationError, match="no computation named"):
        evaluate_definition(shop, f"{OC}.count() >= 1", audience="nope")
    with pytest.raises(DefinitionError, match="no Engage audience"):
        evaluate_definition(shop, f"{OC}.count() >= 1").differences()


def test_bad_history_input_is_refused(shop, tmp_path):
    with pytest.raises(ExportFormatError, match="needs columns event, timestamp"):
        attach_history(shop, pd.DataFrame({"event": ["x"]}))
    bad = tmp_path / "h.ndjson"
    bad.write_text('{"type":"track","event":"A","userId":"u0","timestamp":"soon"}\n')
    with pytest.raises(ExportFormatError, match="no valid ISO-8601 timestamp") as info:
        shop.with_history(bad)
    assert info.value.line == 1
    bad.write_text('{"type":"page","userId":"u0","timestamp":"2026-01-01T00:00:00Z"}\n')
    with pytest.raises(ExportFormatError, match="no track events"):
        shop.with_history(bad)


def test_as_of_moves_the_windows(shop):
    text = f"{OC}.within(7 days).count() >= 1"
    assert evaluate_definition(shop, text, as_of=ago(4)).segment_ids == {"p0", "p2"}


# -- the bundled shop ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop_definitions():
    return load_definitions(SAMPLES / "definitions" / "audiences.json")


def test_sample_history_attaches_with_every_identity_kind(sample_export):
    h = history_of(sample_export)
    assert len(h) == 7574
    assert set(h["identity"]) == {"matched", "linked", "merged"}
    assert set(h["event"]) == {"Order Completed", "Product Viewed", "Signed In"}


def test_first_time_shopper_definition_reproduces_engage(sample_export, shop_definitions):
    ev = evaluate_definition(sample_export, shop_definitions["first_time_shopper"])
    assert ev.audience == "first_time_shopper"
    s = ev.summary()
    assert s["only_local"] == s["only_engage"] == 0 and s["both"] == s["engage_members"] > 300


@pytest.mark.parametrize("key", ["dormant_shopper", "vip_customer"])
def test_all_time_audiences_differ_only_where_the_history_is_short(sample_export,
                                                                   shop_definitions, key):
    ev = evaluate_definition(sample_export, shop_definitions[key])
    d = ev.differences()
    assert len(d) and set(d["reason"]) == {"history_shorter_than_window"}
    # only Engage members are missed: their older orders predate the history
    assert d["engage"].all() and not d["local"].any()


def test_every_reference_definition_evaluates_or_is_refused_clearly(shop):
    from .test_query import EVERY_FUNCTION, REFERENCE_EXAMPLES

    cases = [(t, k, lv) for t, k, lv in EVERY_FUNCTION.values()] + REFERENCE_EXAMPLES
    for text, kind, level in cases:
        if kind != "audience":
            continue
        definition = toolkit.parse_definition(text, level=level)
        if level == "ACCOUNTS":
            with pytest.raises(DefinitionError, match="account"):
                evaluate_definition(shop, definition, strict=False)
            continue
        result = evaluate_definition(shop, definition, strict=False)
        assert 0 <= len(result) <= 7


def test_an_evaluation_time_long_after_the_history_is_pointed_out(shop):
    late = evaluate_definition(shop, f"{OC}.within(7 days).count() >= 1",
                               as_of=SNAPSHOT_LATER)
    assert late.notes and "days after the last event" in late.notes[0]
    assert "pass as_of=" in late._repr_html_()
    assert not evaluate_definition(shop, f"{OC}.within(7 days).count() >= 1").notes


def test_an_audience_without_anonymous_users_leaves_them_out(shop):
    from toolkit.engage.definitions import load_definitions

    doc = {"data": {"audiences": [{"key": "buyer", "name": "Buyers", "definition": {
        "query": f"{OC}.within(30 days).count() >= 1", "type": "USERS"},
        "options": {"includeAnonymousUsers": False}}]}}
    strict = load_definitions(doc)["buyer"]
    assert strict.include_anonymous is False
    ev = evaluate_definition(shop, strict)
    assert ev.segment_ids == {"p0", "p2", U9}          # p4 is anonymous-only
    assert "anonymous-only profiles match but are left out" in ev.notes[0]
    assert "p4" in evaluate_definition(shop, strict.definition).segment_ids


def test_attaching_a_large_history_shows_a_progress_bar(capsys):
    import pandas as pd

    from .conftest import DEFAULT_EVENTS

    capsys.readouterr()
    again = make_shop().with_history(pd.DataFrame(DEFAULT_EVENTS), progress=True)
    assert "history" in capsys.readouterr().err
    assert len(history_of(again)) == 2 * len(DEFAULT_EVENTS)
    make_shop()                                                  # small: no bar
    assert "history" not in capsys.readouterr().err
