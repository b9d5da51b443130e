"""`toolkit.check_segments` on the sandbox: matching, within estimate error, differing (and why),
the exact path, and bad inputs (unknown id, missing permissions, empty or unreadable
descriptions, no estimate yet)."""
from __future__ import annotations

import pytest

import toolkit
from toolkit.braze.filters import BooleanAttribute, CustomEventCount, StringAttribute
from toolkit.errors import BrazeAuthError, SegmentCheckError
from toolkit.segment_check import check_segments


def _row(result, key):
    return next(r for r in result.rows if r["key"] == key)


# -- matching -------------------------------------------------------------------------------
def test_segments_built_with_the_recommended_filters_match(synced):
    s = synced(estimate_error=0.0)
    for key in ("vip_customer", "dormant_shopper", "last_order_at"):
        s.build(key)
    s.sandbox.estimate_segments()
    result = check_segments(s.client, s.export, s.mapping, preview=s.preview,
                            synced_at=s.report)
    for key in ("vip_customer", "dormant_shopper", "last_order_at"):
        row = _row(result, key)
        assert row["verdict"] == "matches", row
        assert row["braze_estimate"] == row["expected_size"] > 0
        assert row["filter_differences"] == []
        assert row["braze_description"] == row["recommended_filter"]
    # computations nobody built a segment for say so, with the name to use
    row = _row(result, "first_time_shopper")
    assert row["verdict"] == "no_segment" and "'first_time_shopper'" in row["note"]
    assert result.ok
    frame = result.to_frame()
    assert list(frame["key"]) == [r.key for r in s.mapping]
    assert frame.set_index("key").loc["vip_customer", "verdict"] == "matches"
    html = result._repr_html_()
    assert "matches" in html and "Custom Attribute `vip_customer` is true" in html
    assert "vip_customer: matches" in repr(result)


def test_pairing_by_name_convention_and_by_explicit_id(synced):
    s = synced()
    s.mapping = s.mapping.name_segments("Engage · {key}")
    s.build("vip_customer")
    other = s.sandbox.create_segment("VIPs (hand named)", s.preview.filter_for("first_time_shopper"))
    s.mapping = s.mapping.pair_segment("first_time_shopper", other)
    s.sandbox.estimate_segments()
    result = check_segments(s.client, s.export, s.mapping, preview=s.preview,
                            keys=["vip_customer", "first_time_shopper"])
    assert _row(result, "vip_customer")["segment_name"] == "Engage · vip_customer"
    assert _row(result, "first_time_shopper")["segment_id"] == other
    assert result.summary() == {"matches": 2}


def test_names_are_matched_without_regard_to_case_or_spaces(synced):
    s = synced()
    s.sandbox.create_segment("  VIP_Customer ", s.preview.filter_for("vip_customer"))
    s.sandbox.estimate_segments()
    result = check_segments(s.client, s.export, s.mapping, preview=s.preview,
                            keys="vip_customer")
    assert _row(result, "vip_customer")["verdict"] == "matches"


# -- within Braze's estimate error -----------------------------------------------------------
def test_an_estimate_off_by_less_than_its_error_is_within_estimate_error(synced):
    s = synced(estimate_error=0.1, seed=2)
    s.build("last_order_at")
    sizes = s.sandbox.estimate_segments()
    result = check_segments(s.client, s.export, s.mapping, preview=s.preview,
                            estimate_error=0.1, keys=["last_order_at"])
    row = _row(result, "last_order_at")
    assert sizes and row["braze_estimate"] != row["expected_size"]      # the seed moves it
    assert abs(row["braze_estimate"] - row["expected_size"]) <= row["estimate_error"]
    assert row["estimate_error"] == 4                                   # ceil(10% of 32 users)
    assert row["verdict"] == "within_error" and "may be off by about 4 users (10% of" in row["reason"]
    assert result.ok
    # allowing no error, the same difference is a real one
    strict = check_segments(s.client, s.export, s.mapping, preview=s.preview,
                            estimate_error=0, keys=["last_order_at"])
    assert _row(strict, "last_order_at")["verdict"] == "differs" and not strict.ok


# -- differs, and why -----------------------------------------------------------------------
def test_a_segment_on_another_attribute_differs_and_says_so(synced):
    s = synced()
    s.build("vip_customer", BooleanAttribute("vip", "is_true"))
    s.sandbox.estimate_segments()
    row = _row(check_segments(s.client, s.export, s.mapping, preview=s.preview,
                              keys=["vip_customer"]), "vip_customer")
    assert row["verdict"] == "differs"
    assert row["reason"].startswith("filter on a different attribute")
    assert "`vip`" in row["reason"] and "`vip_customer`" in row["reason"]
    assert row["braze_estimate"] == 0 and row["expected_size"] == 8


def test_a_seven_day_event_window_expires_and_the_check_explains_it(synced):
    s = synced()
    s.build("dormant_shopper", CustomEventCount("Audience Entered", "more_than", 0, days=7)
            & CustomEventCount("Audience Exited", "exactly", 0))
    s.sandbox.estimate_segments()
    row = _row(check_segments(s.client, s.export, s.mapping, preview=s.preview,
                              keys=["dormant_shopper"]), "dormant_shopper")
    assert row["verdict"] == "differs" and row["braze_estimate"] == 0
    assert row["reason"].startswith("event window expired")
    assert "in the last 7 days" in row["reason"] and "snapshot time" in row["reason"]
    assert any("in the last 7 days" in d for d in row["filter_differences"])


def test_regex_instead_of_equals_is_a_different_operator(synced):
    s = synced()
    s.build("last_product_viewed_item",
            StringAttribute("last_product_viewed_item", "matches_regex", "h"))
    s.sandbox.estimate_segments()
    row = _row(check_segments(s.client, s.export, s.mapping, preview=s.preview,
                              keys=["last_product_viewed_item"]), "last_product_viewed_item")
    assert row["verdict"] == "differs"
    assert row["reason"].startswith("a different operator")
    assert "matches regex" in row["reason"] and "is not blank" in row["reason"]


def test_an_estimate_made_before_the_sync_is_not_refreshed(synced):
    s = synced()
    # the daily estimate ran, then the data changed: every VIP left after it
    s.build("vip_customer")
    s.sandbox.estimate_segments()
    s.client.track(attributes=[{"external_id": f"u{i:04d}", "vip_customer": False}
                               for i in range(40) if i % 5])
    row = _row(check_segments(s.client, s.export, s.mapping, preview=s.preview,
                              synced_at="2999-01-01T00:00:00Z", keys=["vip_customer"]),
               "vip_customer")
    assert row["verdict"] == "matches"                       # Braze's stale estimate agrees…
    s.sandbox.estimate_segments()                             # …until it is estimated again
    row = _row(check_segments(s.client, s.export, s.mapping, preview=s.preview,
                              synced_at="2999-01-01T00:00:00Z", keys=["vip_customer"]),
               "vip_customer")
    assert row["verdict"] == "differs"
    assert row["reason"].startswith("segment not refreshed since the sync")


def test_users_braze_could_not_receive(synced):
    # update-only sync: Braze knows only 4 of the 8 VIPs, so it skips the other 4
    known = [f"u{i:04d}" for i in range(40) if i % 8 == 4 and i % 5]
    s = synced(create_users=False, known=known)
    s.build("vip_customer")
    s.sandbox.estimate_segments()
    row = _row(check_segments(s.client, s.export, s.mapping, preview=s.preview,
                              synced_at=s.report, keys=["vip_customer"]), "vip_customer")
    assert row["verdict"] == "differs"
    assert row["braze_estimate"] == 4 and row["expected_size"] == 8
    assert row["reason"].startswith("users Braze could not receive")
    assert "update-only" in row["reason"]


def test_more_users_in_braze_than_the_export_selects(synced):
    s = synced()
    s.client.track(attributes=[{"external_id": f"other-{i}", "_update_existing_only": False,
                                "vip_customer": True} for i in range(5)])
    s.build("vip_customer")
    s.sandbox.estimate_segments()
    row = _row(check_segments(s.client, s.export, s.mapping, preview=s.preview,
                              keys=["vip_customer"]), "vip_customer")
    assert row["verdict"] == "differs" and row["braze_estimate"] == row["expected_size"] + 5
    assert row["reason"].startswith("Braze's segment has 5 more users")


# -- the exact path -----------------------------------------------------------------------
def test_exact_check_exports_the_segment_and_lists_differing_users(synced):
    s = synced(estimate_error=0.05)
    s.build("vip_customer")
    s.build("first_time_shopper", BooleanAttribute("first_time_shopper", "is_true_or_not_set"))
    s.client.track(attributes=[{"external_id": "stranger", "_update_existing_only": False,
                                "vip_customer": True}])
    result = check_segments(s.client, s.export, s.mapping, preview=s.preview, exact=True,
                            keys=["vip_customer", "first_time_shopper"])
    assert result.exact
    vip = _row(result, "vip_customer")
    assert vip["braze_exact"] == vip["expected_size"] + 1 and vip["differing_users"] == 1
    assert vip["braze_estimate"] is None                  # no estimate was needed
    users = result.differing("vip_customer")
    assert list(users["user"]) == ["external_id:stranger"]
    assert users["in_braze"].all() and not users["expected"].any()
    first = _row(result, "first_time_shopper")
    assert first["verdict"] == "differs" and first["reason"].startswith("a different operator")
    extra = result.differing("first_time_shopper")
    assert len(extra) == first["braze_exact"] - first["expected_size"] > 0
    with pytest.raises(SegmentCheckError, match="no exact comparison"):
        check_segments(s.client, s.export, s.mapping, preview=s.preview,
                       keys=["vip_customer"], errors="report").differing("vip_customer")


def test_exact_check_matches_when_braze_holds_exactly_the_expected_users(synced):
    s = synced()
    s.build("dormant_shopper")
    result = check_segments(s.client, s.export, s.mapping, preview=s.preview, exact=True,
                            keys=["dormant_shopper"])
    row = _row(result, "dormant_shopper")
    assert row["verdict"] == "matches" and row["differing_users"] == 0
    assert row["braze_exact"] == row["expected_size"] == 11
    assert result.differing("dormant_shopper").empty


def test_the_download_url_never_receives_the_api_key(synced):
    # the sandbox's download URL, like a presigned storage URL, refuses an Authorization header
    s = synced()
    sid = s.build("vip_customer")
    users = s.client.export_segment(sid)
    assert len(users) == 8 and all(u["external_id"] for u in users)
    log = s.sandbox.request_log()
    assert (log["endpoint"] == "/sandbox/exports/").any()
    assert set(log.loc[log["endpoint"] == "/sandbox/exports/", "status"]) <= {200, 404}


# -- bad inputs -----------------------------------------------------------------------------
def test_unknown_segment_id_names_it_and_how_to_pair_again(synced):
    s = synced()
    mapping = s.mapping.pair_segment("vip_customer", "not-a-segment")
    with pytest.raises(SegmentCheckError) as info:
        check_segments(s.client, s.export, mapping, preview=s.preview, keys=["vip_customer"])
    text = str(info.value)
    assert "not-a-segment" in text and "pair_segment('vip_customer'" in text
    assert info.value.rule == "vip_customer"


@pytest.mark.parametrize("exact, allowed, missing", [
    (False, [], "segments.list"),
    (False, ["segments.list"], "segments.details"),
    (False, ["segments.list", "segments.details"], "segments.data_series"),
    (True, ["segments.list", "segments.details", "segments.data_series"],
     "users.export.segment"),
])
def test_a_key_without_segment_permissions_names_the_permission(synced, exact, allowed, missing):
    s = synced()
    s.build("vip_customer")
    s.sandbox.estimate_segments()
    s.sandbox.set_permissions(["users.track", "users.export.ids", *allowed])
    with pytest.raises(BrazeAuthError) as info:
        check_segments(s.client, s.export, s.mapping, preview=s.preview, exact=exact,
                       keys=["vip_customer"])
    assert info.value.status == 403
    assert f"the key needs the '{missing}' permission" in str(info.value)
    assert "create a new REST API key" in str(info.value)
    assert s.sandbox.api_key not in str(info.value)


@pytest.mark.parametrize("description, words", [
    ("", "no description"),
    ("   ", "no description"),
    ("Users who like hats!", "reads as no filter"),
])
def test_empty_or_unreadable_descriptions_are_clear_errors(synced, description, words):
    s = synced()
    s.build("vip_customer", description=description)
    s.sandbox.estimate_segments()
    with pytest.raises(SegmentCheckError, match=words) as info:
        check_segments(s.client, s.export, s.mapping, preview=s.preview, keys=["vip_customer"])
    assert info.value.rule == "vip_customer" and "sizes-only" in str(info.value)
    # the sizes can still be compared
    result = check_segments(s.client, s.export, s.mapping, preview=s.preview,
                            keys=["vip_customer"], check_filters=False)
    assert _row(result, "vip_customer")["verdict"] == "matches"


def test_a_description_partly_unreadable_is_noted_not_counted(synced):
    s = synced()
    s.build("vip_customer", description="Custom Attribute `vip_customer` is true AND "
                                        "Random Bucket # less than 5000")
    s.sandbox.estimate_segments()
    row = _row(check_segments(s.client, s.export, s.mapping, preview=s.preview,
                              keys=["vip_customer"]), "vip_customer")
    assert row["verdict"] == "matches" and "Random Bucket" in row["note"]


def test_a_segment_without_estimates_yet_is_a_clear_error(synced):
    s = synced()
    s.build("vip_customer")                                   # the daily estimate did not run
    with pytest.raises(SegmentCheckError, match="no size estimate") as info:
        check_segments(s.client, s.export, s.mapping, preview=s.preview, keys=["vip_customer"])
    assert "once a day" in str(info.value) and "exact" in str(info.value)
    # reported as a row instead, the other segments are still checked
    s.build("first_time_shopper", analytics_tracking=False)
    result = check_segments(s.client, s.export, s.mapping, preview=s.preview,
                            keys=["vip_customer", "first_time_shopper"], errors="report")
    assert {r["verdict"] for r in result.rows} == {"cannot_check"}
    assert not result.ok
    # the exact check needs no estimate
    exact = check_segments(s.client, s.export, s.mapping, preview=s.preview, exact=True,
                           keys=["vip_customer"])
    assert _row(exact, "vip_customer")["verdict"] == "matches"


def test_two_segments_with_the_conventional_name_are_ambiguous(synced):
    s = synced()
    s.build("vip_customer")
    s.build("vip_customer")
    s.sandbox.estimate_segments()
    with pytest.raises(SegmentCheckError, match="2 Braze segments are named") as info:
        check_segments(s.client, s.export, s.mapping, preview=s.preview, keys=["vip_customer"])
    assert "pair_segment" in str(info.value)


def test_bad_arguments_are_refused(synced):
    s = synced()
    with pytest.raises(SegmentCheckError, match="errors must be"):
        check_segments(s.client, s.export, s.mapping, preview=s.preview, errors="ignore")
    with pytest.raises(SegmentCheckError, match="estimate_error"):
        check_segments(s.client, s.export, s.mapping, preview=s.preview, estimate_error=2)
    with pytest.raises(SegmentCheckError, match="synced_at"):
        check_segments(s.client, s.export, s.mapping, preview=s.preview, synced_at=42)
    with pytest.raises(toolkit.MappingError, match="no rule"):
        check_segments(s.client, s.export, s.mapping, preview=s.preview, keys=["nope"])


def test_the_check_is_public():
    assert toolkit.check_segments is check_segments
    assert toolkit.SegmentCheckError is SegmentCheckError


def test_a_failing_braze_is_not_mistaken_for_an_unknown_segment(synced):
    from toolkit.errors import BrazeAPIError

    s = synced()
    s.build("vip_customer")
    s.sandbox.estimate_segments()
    s.sandbox.set_faults(rate_500=1.0, endpoints=("/segments/details",))
    with pytest.raises(BrazeAPIError) as info:
        check_segments(s.client, s.export, s.mapping, preview=s.preview, keys=["vip_customer"])
    assert info.value.status == 500 and not isinstance(info.value, SegmentCheckError)


def test_the_estimate_error_is_a_share_of_the_population_given(synced):
    s = synced()
    s.client.track(attributes=[{"external_id": f"other-{i}", "_update_existing_only": False,
                                "vip_customer": True} for i in range(5)])
    s.build("vip_customer")
    s.sandbox.estimate_segments()
    row = _row(check_segments(s.client, s.export, s.mapping, preview=s.preview,
                              population=1000, keys=["vip_customer"]), "vip_customer")
    assert row["estimate_error"] == 10 and row["verdict"] == "within_error"
    with pytest.raises(SegmentCheckError, match="population"):
        check_segments(s.client, s.export, s.mapping, preview=s.preview, population="many")


def test_an_export_kept_on_disk_is_checked_by_size(synced, tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("TOOLKIT_CHUNK_ROWS", "37")
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "cache"))
    path = (Path(__file__).resolve().parents[2] / "data" / "samples" / "audience_csv"
            / "formatted" / "vip_customer.csv")
    stored = toolkit.load(path, store=True)
    s = synced(export=stored)
    assert len(s.preview.state.users) == 0 and s.preview.user_count > 0
    s.build("vip_customer")
    s.sandbox.estimate_segments()
    row = _row(check_segments(s.client, s.export, s.mapping, preview=s.preview,
                              keys=["vip_customer"]), "vip_customer")
    assert row["verdict"] == "matches" and row["expected_size"] > 0
    # Braze's error is a share of the users the preview counted chunk by chunk
    assert row["estimate_error"] == -(-s.preview.user_count // 100) > 0
    exact = check_segments(s.client, s.export, s.mapping, preview=s.preview, exact=True,
                           keys=["vip_customer"])
    row = _row(exact, "vip_customer")
    assert row["verdict"] == "matches" and row["braze_exact"] == row["expected_size"]
    assert row["differing_users"] is None and "kept on disk" in row["note"]
