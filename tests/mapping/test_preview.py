"""Preview: recommended Braze filters, projected state, side-by-side counts and drop reasons.

Expected counts are worked out by hand from the synthetic profiles in conftest.py and Braze's
documented semantics (/work/shared/reference/braze-api.md §5; identifiers per DESIGN.md stage 4
and segment-engage.md §4.2: a profile needs user_id → external_id or a braze_id).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from .conftest import SNAPSHOT, make_export
from toolkit.braze.filters import AnyOf, BooleanAttribute, SegmentCohort
from toolkit.mapping import Mapping
from toolkit.preview import REASONS

ROOT = Path(__file__).resolve().parents[2]


def _row(preview, key, check=None):
    f = preview.to_frame()
    rows = f[(f["key"] == key) & (f["check"] == check if check else f["recommended"])]
    return rows.iloc[0]


def _reasons(row) -> dict[str, int]:
    return {r: int(row[r]) for r in REASONS if row[r]}


def test_attribute_preview_counts_and_reasons(shop):
    p = Mapping.from_export(shop).preview(shop)
    vip = _row(p, "vip")
    assert vip["braze_filter"] == "Custom Attribute `vip` is true"
    assert (vip.engage_members, vip.braze_can_hold, vip.filter_selects, vip.dropped, vip.extra) == (
        6, 4, 4, 2, 0)
    assert _reasons(vip) == {"anonymous_only": 1, "no_external_id": 1}
    fav = _row(p, "fav", "has value")
    assert fav["braze_filter"] == "Custom Attribute `fav` is not blank"
    assert (fav.engage_members, fav.braze_can_hold, fav.filter_selects) == (8, 6, 4)
    # 300 characters (§2.2 ≤255), "" (§5.1 not blank excludes empty strings), email-only, anonymous
    assert _reasons(fav) == {"invalid_value": 1, "empty_string": 1, "no_external_id": 1,
                             "anonymous_only": 1}
    # Traits sent with identify are selected with "matches regex" (§5.3, Braze's Segment page);
    # the regex is anchored and case-insensitive (§5.2), so "shoes" counts as "Shoes" on both sides.
    shoes = _row(p, "fav", "value = 'Shoes'")
    assert shoes["braze_filter"] == "Custom Attribute `fav` matches regex `^Shoes$`"
    assert (shoes.engage_members, shoes.braze_can_hold, shoes.filter_selects) == (4, 3, 3)
    revenue = _row(p, "revenue", "has value")
    assert (revenue.engage_members, revenue.filter_selects) == (8, 5)
    f = p.to_frame()
    assert (f["dropped"] == f[list(REASONS)].sum(axis=1)).all()
    assert f["other"].sum() == 0


def test_dropped_lists_profiles_with_their_reason(shop):
    p = Mapping.from_export(shop).preview(shop)
    d = p.dropped("vip")
    assert d["segment_id"].tolist() == ["use_3", "use_4"]
    assert d["reason"].tolist() == ["no_external_id", "anonymous_only"]
    assert d["explanation"].notna().all()


def test_identifier_options_widen_who_braze_can_hold(shop):
    by_email = Mapping.from_export(shop).preview(shop, email_opt_in=True)
    assert _row(by_email, "vip").filter_selects == 5
    assert _reasons(_row(by_email, "vip")) == {"anonymous_only": 1}
    by_alias = Mapping.from_export(shop).preview(shop, alias_label="segment_id")
    assert _row(by_alias, "vip").filter_selects == 6 and _row(by_alias, "vip").dropped == 0
    assert "alias:segment_id:use_4" in set(by_alias.state.users)


def test_cohort_preview_needs_external_id_or_alias(shop):
    p = Mapping.from_export(shop).set("vip", send_as="cohort", cohort_name="VIP").preview(shop)
    row = _row(p, "vip")
    assert row["braze_filter"] == "Segment Cohorts includes `VIP`"
    assert isinstance(p.filter_for("vip"), SegmentCohort)
    # braze-api §4 / segment-engage §4.3: cohort import matches external_id or alias, not braze_id
    assert (row.engage_members, row.braze_can_hold, row.filter_selects) == (6, 3, 3)
    assert _reasons(row) == {"anonymous_only": 1, "no_external_id": 1, "no_cohort_identifier": 1}


def test_shared_event_names_warn_and_use_a_property_filter(shop):
    m = Mapping.from_export(shop).set("vip", send_as="event").set("dormant", send_as="event")
    p = m.preview(shop)
    assert any("'Audience Entered' is sent by 2 computations" in w for w in p.warnings)
    rec = _row(p, "vip")
    assert "Custom Event Property `audience_key` of `Audience Entered` is `vip`" in rec.braze_filter
    assert rec.filter_selects == rec.braze_can_hold == 4
    bare = _row(p, "vip", "members: bare event count")
    assert not bare.recommended
    # the bare count also selects dormant-only users (u1 is in both; u2, u6 dormant only)
    assert bare.filter_selects == 6 and bare.extra == 2
    renamed = m.set("vip", enter_event="VIP Entered", exit_event="VIP Exited") \
        .set("dormant", enter_event="Dormant Entered", exit_event="Dormant Exited")
    p2 = renamed.preview(shop)
    assert p2.warnings == []
    assert str(p2.filter_for("vip")) == ("Custom Event `VIP Entered` more than 0 times AND "
                                         "Custom Event `VIP Exited` exactly 0 times")
    assert _row(p2, "vip").filter_selects == 4 and _row(p2, "dormant").filter_selects == 3
    assert len(p2.to_frame()) == len(p2.to_frame()["key"].unique()) + 3  # 3 trait value rows


def _history_export():
    ts = pd.Timestamp

    def ev(sid, when, value, name):
        return {"segment_id": sid, "timestamp": ts(when), "type": "track", "event": name,
                "computation_key": "vip", "computation_kind": "audience", "value": value,
                "message_id": f"personas_{sid}_{when}"}

    events = [
        ev("use_a", "2026-09-01T00:00Z", True, "Audience Entered"),
        ev("use_a", "2026-10-01T00:00Z", False, "Audience Exited"),
        ev("use_a", "2026-11-10T00:00Z", True, "Audience Entered"),
        ev("use_b", "2026-11-01T00:00Z", True, "Audience Entered"),
        ev("use_b", "2026-11-05T00:00Z", False, "Audience Exited"),
        ev("use_c", "2026-11-12T00:00Z", True, "Audience Entered"),
        ev("use_c", "2026-11-15T00:00Z", True, "Audience Entered"),  # re-sent: new identifier
        ev("use_c", "2026-11-16T00:00Z", "true", "Audience Entered"),  # not a boolean: ignored
        ev("use_f", "2026-09-15T00:00Z", True, "Audience Entered"),
    ]
    return make_export(
        {"segment_id": ["use_a", "use_b", "use_c", "use_d", "use_e", "use_f"],
         "user_id": ["a", "b", "c", "d", "e", "f"],
         "vip": [True, False, True, True, False, True],
         "other": [True, False, False, False, True, False]},
        [("vip", "audience", "boolean"), ("other", "audience", "boolean")],
        events=events, snapshot_at=pd.Timestamp("2026-11-19T00:00Z"))


def test_event_history_gives_real_counts_and_times():
    export = _history_export()
    m = Mapping.from_export(export).set("vip", send_as="event")
    p = m.preview(export)
    assert p.freshness.startswith("event replay: as fresh as its last event (2026-11-16")
    ev = p.state.events
    entered = ev[ev["name"] == "Audience Entered"].groupby("user").size().to_dict()
    assert entered == {"external_id:a": 2, "external_id:b": 1, "external_id:c": 1,
                       "external_id:d": 1, "external_id:f": 1}
    assert ev[ev["name"] == "Audience Exited"]["user"].tolist() == ["external_id:a", "external_id:b"]
    # use_d has no history: its snapshot membership becomes one event at the snapshot time
    d_time = ev.loc[ev["user"] == "external_id:d", "time"].iloc[0]
    assert d_time == SNAPSHOT.replace(day=19, hour=0)
    a_times = ev.loc[ev["user"] == "external_id:a", "time"].dt.strftime("%Y-%m-%d").tolist()
    assert a_times == ["2026-09-01", "2026-10-01", "2026-11-10"]
    # a re-entered: one more entry than exits → the OR of (entered k AND exited k-1)
    f = p.filter_for("vip")
    assert isinstance(f, AnyOf) and len(f.filters) == 2
    row = _row(p, "vip")
    assert (row.engage_members, row.filter_selects, row.dropped, row.extra) == (4, 4, 0, 0)
    selected = f.evaluate(p.state)
    assert set(selected.index[selected.to_numpy()]) == {"external_id:a", "external_id:c",
                                                        "external_id:d", "external_id:f"}


def test_property_filters_look_back_thirty_days():
    export = _history_export()
    m = Mapping.from_export(export).set("vip", send_as="event").set("other", send_as="event")
    p = m.preview(export)
    row = _row(p, "vip")
    # Evaluated as of the snapshot (11-19), property filters see events from 10-20 on: use_f
    # entered on 09-15 and is lost; use_a's exit and first entry are both out of sight, and its
    # re-entry on 11-10 alone still makes it a member.
    assert p.as_of == pd.Timestamp("2026-11-19T00:00Z")
    assert row.filter_selects == 3 and _reasons(row) == {"outside_lookback": 1}
    assert p.dropped("vip")["segment_id"].tolist() == ["use_f"]
    assert "30 days" in row.note


def test_type_conflicts_and_shared_identifiers():
    export = make_export(
        {"segment_id": ["use_1", "use_2", "use_3", "use_4"], "user_id": ["u1", "u2", "u3", "u3"],
         "code": ["A1", 7, "B2", None], "vip": [True, True, True, False]},
        [("code", "trait", "string"), ("vip", "audience", "boolean")])
    # A reader that meets mixed JSON types keeps the column as Python objects.
    export.profiles["code"] = pd.Series(["A1", 7, "B2", None], dtype=object)
    p = Mapping.from_export(export).preview(export)
    code = _row(p, "code")
    # locked to string by the first value (§2.2); use_3's "B2" is overwritten by use_4 (same u3)
    assert _reasons(code) == {"type_conflict": 1, "shared_identifier": 1}
    vip = _row(p, "vip")
    # use_3 and use_4 are one Braze user (external_id u3); the later profile's false wins
    assert (vip.engage_members, vip.braze_can_hold, vip.filter_selects) == (3, 3, 2)
    assert _reasons(vip) == {"shared_identifier": 1}
    assert len(p.state.users) == 3


def test_exit_value_null_removes_the_attribute(shop):
    p = Mapping.from_export(shop).set("dormant", exit_value=None).preview(shop)
    dormant = p.state.attributes["dormant"]
    assert dormant["external_id:u0"] is pd.NA and bool(dormant["external_id:u1"]) is True
    assert _row(p, "dormant").filter_selects == 3
    assert BooleanAttribute("dormant", "is_false").count(p.state) == 0


def test_both_sends_attribute_and_events(shop):
    m = Mapping.from_export(shop).set("vip", send_as="both", enter_event="VIP In",
                                      exit_event="VIP Out")
    p = m.preview(shop)
    checks = p.to_frame().query("key == 'vip'")["check"].tolist()
    assert checks == ["members", "members (events)"]
    assert p.to_frame().query("key == 'vip'")["filter_selects"].tolist() == [4, 4]


def test_preview_display(shop):
    p = Mapping.from_export(shop).preview(shop)
    html = p._repr_html_()
    assert "<table>" in html and "Custom Attribute `vip` is true" in html
    assert "snapshot: as fresh as Engage&#x27;s last compute (2026-11-20T06:00:00+00:00)" in html
    assert "vip [members]: Engage 6 · Braze can hold 4 · filter selects 4" in repr(p)
    assert p.as_of == SNAPSHOT
    assert "<b>Projected Braze state</b>" in p.state._repr_html_()


def test_preview_of_a_large_export_stays_fast():
    n = 200_000
    rng = np.random.default_rng(1)
    ids = np.char.add("u", np.arange(n).astype(str)).astype(object)
    ids[rng.random(n) < 0.1] = None
    export = make_export(
        {"segment_id": np.char.add("use_", np.arange(n).astype(str)).tolist(), "user_id": list(ids),
         "aud": list(rng.random(n) < 0.4),
         "item": list(rng.choice(["Shoe", "Hat", "Bag", None], n))},
        [("aud", "audience", "boolean"), ("item", "trait", "string")])
    import time
    start = time.perf_counter()
    p = Mapping.from_export(export).preview(export)
    assert time.perf_counter() - start < 10
    row = _row(p, "aud")
    members = export.profiles["aud"].to_numpy(dtype=bool)
    assert row.filter_selects == int((members & (ids != None)).sum())  # noqa: E711


# -- the bundled sample shop (data/samples, written by the loaders' generator) ------------------

SAMPLES = [ROOT / "data/samples/events/engage_events.ndjson.gz", ROOT / "data/samples/profiles_sync"]


def _load(path):
    toolkit = pytest.importorskip("toolkit")
    if not path.exists():
        pytest.skip(f"{path} not generated yet")
    try:
        return toolkit.load(path)
    except (ImportError, AttributeError):
        pytest.skip("toolkit.load is not available yet")


def _event_mapping(export):
    m = Mapping.from_export(export)
    for key in export.audiences:
        m = m.set(key, send_as="event", enter_event=f"{key} entered", exit_event=f"{key} exited")
    return m


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
@pytest.mark.parametrize("how", ["attribute", "event"])
def test_sample_shop_filters_select_exactly_the_members_braze_can_hold(path, how):
    export = _load(path)
    mapping = Mapping.from_export(export) if how == "attribute" else _event_mapping(export)
    p = mapping.preview(export)
    assert export.audiences, "the sample shop has audiences"
    keys = p.to_frame()
    for key in export.audiences:
        f = p.filter_for(key)
        selected = f.evaluate(p.state)
        selected_users = set(selected.index[selected.to_numpy()])
        member = export.profiles[key].fillna(False).astype(bool)
        has_id = export.profiles["user_id"].notna() | export.profiles["braze_id"].notna()
        expected = {f"external_id:{u}" for u in export.profiles.loc[member & has_id, "user_id"]
                    .dropna()}
        expected |= {f"braze_id:{b}" for b in export.profiles.loc[
            member & export.profiles["user_id"].isna(), "braze_id"].dropna()}
        assert selected_users == expected, key
        row = keys[(keys["key"] == key) & keys["recommended"]].iloc[0]
        assert row.filter_selects == row.braze_can_hold == len(expected)
        # every dropped member is explained: anonymous only or no external id
        assert row.dropped == row.anonymous_only + row.no_external_id
        assert row.other == 0 and row.extra == 0
        dropped = p.dropped(key)
        assert len(dropped) == row.dropped
        assert dropped["user_id"].isna().all()


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample_shop_with_shared_event_names_explains_every_difference(path):
    export = _load(path)
    m = Mapping.from_export(export)
    for key in export.audiences:
        m = m.set(key, send_as="event")
    p = m.preview(export)
    assert any("Audience Entered" in w for w in p.warnings)
    f = p.to_frame()
    rec = f[f["recommended"] & (f["kind"] == "audience")]
    assert rec["braze_filter"].str.contains("Custom Event Property `audience_key`").all()
    assert (rec["dropped"] == rec[list(REASONS)].sum(axis=1)).all()
    assert (rec["other"] == 0).all() and (rec["extra"] == 0).all()
    bare = f[~f["recommended"]]
    assert len(bare) == len(export.audiences) and (bare["filter_selects"] >= 0).all()
