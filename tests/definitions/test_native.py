"""Translation to native Braze segments: the verdict per part, what Braze needs, and agreement of
every translated filter (evaluated by toolkit.braze.filters on the projected Braze state) with
local evaluation of the definition on the same events."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

import toolkit
from toolkit.braze.filters import CustomEventCount, CustomEventTime
from toolkit.native import braze_segment_for
from toolkit.engage.definitions import load_definitions
from toolkit.engage.model import EngageExport
from toolkit.errors import DefinitionError

from .conftest import SAMPLES, SNAPSHOT

OC = "event('Order Completed')"


@pytest.fixture(scope="module")
def dense() -> EngageExport:
    """300 profiles with random events over 120 days and random traits (blanks included)."""
    rng = np.random.default_rng(7)
    n = 300
    uids = [f"u{i}" for i in range(n)]
    profiles = pd.DataFrame({
        "segment_id": pd.array([f"p{i}" for i in range(n)], dtype="string"),
        "user_id": pd.array(uids, dtype="string"),
        "email": pd.array([None] * n, dtype="string"),
        "anonymous_id": pd.array([None] * n, dtype="string"),
        "braze_id": pd.array([None] * n, dtype="string"),
        "emails": [[] for _ in range(n)], "anonymous_ids": [[] for _ in range(n)],
        "score": pd.array([None if r < 0.2 else float(v) for r, v in
                           zip(rng.random(n), rng.integers(-2, 5, n))], dtype="Float64"),
        "plan": pd.array([None if r < 0.2 else v for r, v in
                          zip(rng.random(n), rng.choice(["pro", "Pro", "free", ""], n))],
                         dtype="string"),
        "beta": pd.array([None if r < 0.3 else bool(v) for r, v in
                          zip(rng.random(n), rng.integers(0, 2, n))], dtype="boolean"),
        "renews_at": pd.to_datetime(pd.Series([None if r < 0.2 else SNAPSHOT + pd.Timedelta(
            hours=float(h)) for r, h in zip(rng.random(n), rng.uniform(-24 * 60, 24 * 60, n))]),
            utc=True),
    })
    export = EngageExport(profiles=profiles, computations=pd.DataFrame(
        columns=["key", "kind", "computation_id", "value_type", "name"]), snapshot_at=SNAPSHOT,
        source="dense")
    m = 4000
    who = rng.integers(0, n, m)
    hours = rng.exponential(24 * 20, m)
    events = pd.DataFrame({
        "user_id": [uids[i] for i in who],
        "event": rng.choice(["Order Completed", "Product Viewed"], m, p=[0.3, 0.7]),
        "timestamp": [SNAPSHOT - pd.Timedelta(hours=float(h)) for h in hours],
        "properties": [{"brand": b, "revenue": float(r)} for b, r in
                       zip(rng.choice(["Acme", "Zed"], m), rng.integers(5, 300, m))],
    })
    return export.with_history(events)


COUNT_OPS = ["=", "!=", ">", ">=", "<", "<="]
WINDOWS = ["", ".within(1 days)", ".within(7 days)", ".within(36 hours)", ".within(30 days)",
           ".within(90 days)", ".where(property('brand') = 'Acme').within(14 days)"]
GRID = [f"{neg}event('{e}'){w}.count() {op} {k}" for neg, e, w, op, k in itertools.product(
    ["", "NOT "], ["Order Completed", "Product Viewed"], WINDOWS, COUNT_OPS, [0, 1, 3, 50])]


def _slack_users(check, export, definition) -> set[str]:
    """Braze users with an event between Braze's calendar-day window start and Segment's."""
    from toolkit.engage.evaluate import history_of
    from toolkit.engage.query import Stream, Within

    users: set[str] = set()
    h = history_of(export)
    for node in definition.root.walk():
        if isinstance(node, Stream):
            for w in node.windows():
                if isinstance(w, Within):
                    days = w.duration.hours // 24
                    lo = check.as_of.normalize() - pd.Timedelta(days=days)
                    hi = check.as_of - pd.Timedelta(hours=w.duration.hours)
                    hit = h[(h["event"] == node.event) & (h["timestamp"] >= lo)
                            & (h["timestamp"] <= hi)]
                    users |= set(hit["segment_id"])
    return users


@pytest.mark.parametrize("text", GRID)
def test_translated_count_filters_agree_with_local_evaluation(dense, text):
    seg = braze_segment_for(text, export=dense)
    if not seg.native:
        assert all(p.why for p in seg.parts if not p.expressible)
        return
    check = seg.check(dense)
    if seg.exact:
        assert check.agrees, check.differences()
    else:
        # approximate only at the window's edge: every difference had an event in the slack
        differ = set(check.differences()["segment_id"])
        assert differ <= _slack_users(check, dense, seg.definition)


TRAIT_GRID = [f"{neg}trait('{t}'){c}" for neg, (t, c) in itertools.product(["", "NOT "], [
    ("score", " = 0"), ("score", " = 2"), ("score", " != 2"), ("score", " > 1"),
    ("score", " >= 0"), ("score", " >= 1"), ("score", " < 1"), ("score", " <= 0"),
    ("score", ".exists()"), ("score", ".absent()"), ("score", ".one_of(1, 3)"),
    ("plan", " = 'pro'"), ("plan", " != 'pro'"), ("plan", ".one_of('pro', 'free')"),
    ("plan", ".contains('r')"), ("plan", ".omits('r')"), ("plan", ".starts_with('p')"),
    ("plan", ".exists()"), ("plan", ".absent()"),
    ("beta", " = true"), ("beta", " = false"), ("beta", " != true"), ("beta", ".exists()"),
    ("renews_at", ".before_date('2026-12-01T00:00:00Z')"),
    ("renews_at", ".after_date('2026-11-01T12:00:00Z')"), ("renews_at", ".within_last(36 hours)"),
    ("renews_at", ".within_next(12 hours)"), ("renews_at", ".before_last(48 hours)"),
    ("renews_at", ".after_next(24 hours)"), ("renews_at", ".within_last(10 days)"),
])]


@pytest.mark.parametrize("text", TRAIT_GRID)
def test_translated_attribute_filters_agree_with_local_evaluation(dense, text):
    seg = braze_segment_for(text, export=dense)
    if not seg.native:
        assert seg.parts[0].why
        return
    check = seg.check(dense)
    if seg.parts[0].verdict == "exact":
        assert check.agrees, check.differences()
    elif seg.parts[0].verdict == "empty_text":
        d = check.differences()
        plans = dense.profiles.set_index("segment_id")["plan"]
        assert all(plans[s] == "" for s in d["segment_id"])
    elif seg.parts[0].verdict == "case_insensitive":
        d = check.differences()
        plans = dense.profiles.set_index("segment_id")["plan"]
        assert all(plans[s].lower().startswith("p") for s in d["segment_id"])
    else:  # calendar dates vs 24-hour days: only profiles within a day of the edge differ
        assert seg.parts[0].verdict == "calendar_days"


def test_the_three_notebook_definitions():
    native = braze_segment_for(f"{OC}.within(7 days).count() >= 1")
    assert native.native and native.exact and native.verdict == "native"
    assert native.filter == CustomEventTime("Order Completed", "last_did_less_than_days_ago", 7.0)
    assert list(native.needs_events) == ["Order Completed"]
    assert "ecommerce" in native.needs_events["Order Completed"]   # Segment's default preset

    partly = braze_segment_for(f"event('Product Viewed').within(14 days).count() >= 3 AND "
                               f"{OC}.within(90 days).count() >= 2", key="engaged_buyer")
    assert not partly.native and partly.filter is None and partly.verdict == "partly native"
    assert [p.verdict for p in partly.parts] == ["calendar_days", "not_expressible"]
    assert partly.parts[0].filter == CustomEventCount("Product Viewed", "more_than", 2, 14)
    assert "look back 1–30 days" in partly.parts[1].why and "90 days" in partly.parts[1].why
    assert partly.recommended_mapping == {"key": "engaged_buyer", "send_as": "attribute"}
    assert str(partly.recommended_filter) == "Custom Attribute `engaged_buyer` is true"
    assert "sync membership instead" in partly.recommendation

    summed = braze_segment_for(f"{OC}.within(30 days).sum(property('revenue')) >= 500")
    assert summed.verdict == "not native"
    assert summed.parts[0].why.startswith("Braze has no sum of an event property")
    assert "Segment Extension" in summed.parts[0].why          # windowed: an extension could


@pytest.mark.parametrize("text, why", [
    (f"{OC}.between(7 days, 30 days).count() >= 1", "no 'between' window"),
    (f"{OC}.avg(property('revenue')) > 10", "no average"),
    (f"{OC}.max(property('revenue')) > 10", "no maximum"),
    (f"{OC}.min(property('revenue')) > 10", "no minimum"),
    (f"{OC}.mode(property('brand'), 2) = 'Acme'", "most-frequent"),
    (f"{OC}.first(property('brand')) = 'Acme'", "no first value"),
    (f"{OC}.last(property('brand')) = 'Acme'", "no last value"),
    (f"{OC}.unique(property('brand')).count() > 1", "distinct"),
    (f"{OC}.count() >= 52", "at most 50"),
    (f"{OC}.within(45 days).count() >= 2", "1–30 days"),
    (f"{OC}.within(30 hours).count() >= 2", "whole calendar days"),
    (f"{OC}.where(property('brand') = 'Acme').count() >= 1", "at most 30 days"),
    (f"{OC}.where(property('revenue') > 100).within(7 days).count() >= 1", "equality"),
    (f"{OC}.where(property('a') = 1).where(property('b') = 2).within(7 days).count() >= 1",
     "one property value"),
    (f"{OC}.sources(exclude: 'abc').count() >= 1", "which Segment source"),
    (f"{OC}.where(event('Order Returned').within(parent: 2 days).count() >= 1).count() >= 1",
     "funnel"),
    (f"{OC}.where(context('page.url') = 'x').within(7 days).count() >= 1", "context"),
    (f"{OC}.count() >= 0", "always true"),
    ("trait('a') > trait('b')", "fixed values"),
    ("trait('plan') > 'm'", "on a text attribute has no Braze filter"),
    ("NOT trait('signup').before_date('2026-01-01')", "NOT of a date"),
])
def test_not_expressible_parts_say_why(text, why):
    assert braze_segment_for(f"{OC}.count() > 50").native    # more than 50 is Braze's limit
    seg = braze_segment_for(text)
    assert not seg.native and seg.filter is None
    assert why in seg.parts[0].why
    assert seg.recommendation.startswith("sync membership instead")


def test_count_windows_follow_the_dashboards_choices_unless_told_otherwise():
    ten = f"{OC}.within(10 days).count() >= 2"
    seg = braze_segment_for(ten)
    assert not seg.native and "1, 3, 7, 14, 21, 30 days" in seg.parts[0].why
    assert "count_days=range(1, 31)" in seg.parts[0].why
    wide = braze_segment_for(ten, count_days=range(1, 31))
    assert wide.native and wide.filter == CustomEventCount("Order Completed", "more_than", 1, 10)
    # property filters take any 1–30 days ("Adds the ability to segment within 1 to 30 days")
    assert braze_segment_for(f"{OC}.where(property('brand') = 'Acme').within(10 days)"
                             ".count() >= 1").native
    with pytest.raises(DefinitionError, match="count_days"):
        braze_segment_for(ten, count_days=[0, 45])
    assert "Segment Extension" not in braze_segment_for(
        f"{OC}.sum(property('revenue')) > 1").parts[0].why           # all time: no extension


def test_account_level_definitions_are_not_native():
    seg = braze_segment_for(toolkit.parse_definition(f"ANY {OC}.count() >= 1", level="ACCOUNTS"))
    assert not seg.native and "account-level" in seg.parts[0].why


def test_braze_needs_events_properties_and_attributes(dense):
    seg = braze_segment_for("event('Product Viewed').where(property('brand') = 'Acme')"
                            ".within(7 days).count() >= 1 AND trait('plan') = 'pro'",
                            export=dense)
    assert seg.native and seg.verdict == "native (approximate)"
    assert ("Product Viewed", "brand") in seg.needs_properties
    assert "enable property 'brand'" in seg.needs_properties[("Product Viewed", "brand")]
    assert "identify traits" in seg.needs_attributes["plan"]
    shop_defs = load_definitions(SAMPLES / "definitions" / "audiences.json")
    sample = toolkit.load(SAMPLES / "events" / "engage_events.ndjson.gz")
    vip = braze_segment_for("trait('vip_customer') = true", export=sample)
    assert "synced by this toolkit" in vip.needs_attributes["vip_customer"]
    assert braze_segment_for(shop_defs["dormant_shopper"]).native
    assert braze_segment_for(shop_defs["first_time_shopper"]).verdict == "native"
    assert braze_segment_for(shop_defs["vip_customer"]).verdict == "partly native"


def test_native_sample_audiences_agree_on_the_sample_history(sample_export):
    shop_defs = load_definitions(SAMPLES / "definitions" / "audiences.json")
    for key in ("dormant_shopper", "first_time_shopper"):
        seg = braze_segment_for(shop_defs[key], export=sample_export)
        check = seg.check(sample_export)
        assert check.agrees and check.summary()["local"] > 200
    seg = braze_segment_for(f"{OC}.within(7 days).count() >= 1")
    check = seg.check(sample_export)
    assert check.agrees and check.summary()["members_braze_cannot_hold"] > 0


def test_checking_a_non_native_translation_is_refused(dense):
    with pytest.raises(DefinitionError, match="not native"):
        braze_segment_for(f"{OC}.sum(property('revenue')) > 1").check(dense)


def test_displays(dense):
    seg = braze_segment_for(f"{OC}.within(7 days).count() >= 1 AND "
                            f"{OC}.within(90 days).count() >= 3", key="k")
    html = seg._repr_html_()
    assert "partly native in Braze" in html and "not expressible" in html
    assert "sync membership instead" in repr(seg)
    assert list(seg.to_frame().columns) == ["part", "verdict", "Braze filter", "why"]
    check = braze_segment_for(f"{OC}.within(7 days).count() >= 2").check(dense)
    assert "Braze filter" in check._repr_html_() and repr(check).startswith("<NativeCheck")
