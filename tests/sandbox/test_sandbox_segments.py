"""The sandbox's segment endpoints as Braze documents them (docs/reference-segments.md):
/segments/list, /segments/details, /segments/data_series, /users/export/segment and its
download, the sandbox-only /sandbox/segments, and 403 for a key without the permission."""
from __future__ import annotations

import io
import json
import time
import zipfile

import pytest
import requests

from toolkit.braze.filters import BooleanAttribute, CustomEventCount, Filter
from toolkit.errors import FilterError, SandboxError
from toolkit.sandbox import BrazeSandbox


def _users(api, n=30):
    status, _, _ = api.track(attributes=[{"external_id": f"u{i}", "vip": i % 3 == 0}
                                         for i in range(n)])
    assert status == 201


def test_list_pages_by_100_in_creation_order(sb, api):
    ids = [sb.create_segment(f"s{i}", BooleanAttribute("vip", "is_true"), tags=["t"])
           for i in range(130)]
    status, body, _ = api.get("/segments/list")
    assert status == 200 and body["message"] == "success"
    assert [s["id"] for s in body["segments"]] == ids[:100]
    assert body["segments"][0] == {"id": ids[0], "name": "s0",
                                   "analytics_tracking_enabled": True, "tags": ["t"]}
    _, page1, _ = api.get("/segments/list", params={"page": 1})
    assert [s["id"] for s in page1["segments"]] == ids[100:]
    _, newest, _ = api.get("/segments/list", params={"sort_direction": "desc"})
    assert newest["segments"][0]["id"] == ids[-1]
    _, empty, _ = api.get("/segments/list", params={"page": 2})
    assert empty["segments"] == []
    assert api.get("/segments/list", params={"page": "-1"})[0] == 400
    assert api.get("/segments/list", params={"sort_direction": "up"})[0] == 400


def test_details_describe_the_filters(sb, api):
    f = BooleanAttribute("vip", "is_true") & CustomEventCount("Bought", "more_than", 1, days=7)
    sid = sb.create_segment("VIP buyers", f, tags=["engage"], text_description="for the test")
    status, body, _ = api.get("/segments/details", params={"segment_id": sid})
    assert status == 200
    assert body["name"] == "VIP buyers" and body["description"] == str(f)
    assert body["text_description"] == "for the test" and body["tags"] == ["engage"]
    assert body["created_at"].endswith("Z") and body["teams"] == []
    assert set(body) == {"message", "created_at", "updated_at", "name", "description",
                         "text_description", "tags", "teams"}
    assert api.get("/segments/details")[0] == 400
    status, body, _ = api.get("/segments/details", params={"segment_id": "nope"})
    assert status == 400 and "nope" in body["message"]


def test_data_series_holds_daily_estimates_only_after_the_daily_job(sb, api):
    _users(api)
    sid = sb.create_segment("vip", BooleanAttribute("vip", "is_true"))
    _, body, _ = api.get("/segments/data_series", params={"segment_id": sid, "length": 7})
    assert body == {"message": "success", "data": []}
    assert sb.estimate_segments() == {sid: 10}                  # estimate_error 1% of 30 → 0
    _, body, _ = api.get("/segments/data_series", params={"segment_id": sid, "length": 7})
    assert [p["size"] for p in body["data"]] == [10]
    assert body["data"][0]["time"].endswith("Z")
    # a point per day: the same day's second run replaces it; an earlier day adds one
    sb.estimate_segments()
    sb.estimate_segments(at="2026-01-01T04:00:00Z")
    _, body, _ = api.get("/segments/data_series",
                         params={"segment_id": sid, "length": 100,
                                 "ending_at": "2026-01-02T00:00:00Z"})
    assert [p["time"] for p in body["data"]] == ["2026-01-01T04:00:00.000Z"]
    for bad in ({"segment_id": sid}, {"segment_id": sid, "length": 0},
                {"segment_id": sid, "length": 101}, {"segment_id": sid, "length": "x"},
                {"segment_id": sid, "length": 3, "ending_at": "yesterday"}):
        assert api.get("/segments/data_series", params=bad)[0] == 400


def test_estimates_are_off_by_at_most_the_configured_share_of_all_users(make_api):
    api = make_api(seed=4, estimate_error=0.1)
    _users(api, 50)
    sb = api.sb
    sid = sb.create_segment("vip", BooleanAttribute("vip", "is_true"))
    sizes = [sb.estimate_segments()[sid] for _ in range(40)]
    assert all(abs(s - 17) <= 5 for s in sizes) and len(set(sizes)) > 1
    again = make_api(seed=4, estimate_error=0.1)
    _users(again, 50)
    sid2 = again.sb.create_segment("vip", BooleanAttribute("vip", "is_true"))
    assert sid2 == sid and [again.sb.estimate_segments()[sid2] for _ in range(40)] == sizes
    off = sb.create_segment("untracked", BooleanAttribute("vip", "is_true"),
                            analytics_tracking=False)
    assert off not in sb.estimate_segments()


def test_export_is_asynchronous_and_one_at_a_time(make_api):
    api = make_api(seed=2, export_delay=0.3)
    _users(api)
    sb = api.sb
    sid = sb.create_segment("vip", BooleanAttribute("vip", "is_true"))
    fields = ["external_id", "braze_id", "custom_attributes"]
    status, body, _ = api.post("/users/export/segment",
                               {"segment_id": sid, "fields_to_export": fields})
    assert status == 201 and body["message"] == "success"
    prefix, url = body["object_prefix"], body["url"]
    assert url.endswith(f"/sandbox/exports/{prefix}.zip")
    # "Attempting to export a segment a second time while the first export job is still
    # running will result in a 429 error."
    assert api.post("/users/export/segment",
                    {"segment_id": sid, "fields_to_export": fields})[0] == 429
    assert requests.get(url, timeout=5).status_code == 404       # not ready yet
    time.sleep(0.35)
    # a presigned URL is its own credential: an API key sent along is refused
    keyed = requests.get(url, timeout=5, headers={"Authorization": f"Bearer {sb.api_key}"})
    assert keyed.status_code == 400 and "Only one auth mechanism" in keyed.json()["message"]
    got = requests.get(url, timeout=5)                            # no API key: presigned-like
    assert got.status_code == 200 and got.headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(got.content)) as archive:
        lines = [json.loads(line) for name in archive.namelist()
                 for line in archive.read(name).decode().splitlines()]
    assert sorted(u["external_id"] for u in lines) == sorted(f"u{i}" for i in range(0, 30, 3))
    assert all(u["custom_attributes"] == {"vip": True} and u["braze_id"] for u in lines)
    assert sb.segment_members(sid) == sorted(f"external_id:u{i}" for i in range(0, 30, 3))
    # a finished export frees the segment for the next one
    assert api.post("/users/export/segment",
                    {"segment_id": sid, "fields_to_export": ["external_id"]})[0] == 201


@pytest.mark.parametrize("body, words", [
    ({"fields_to_export": ["external_id"]}, "segment_id"),
    ({"segment_id": "nope", "fields_to_export": ["external_id"]}, "nope"),
    ({"segment_id": "SID"}, "fields_to_export"),
    ({"segment_id": "SID", "fields_to_export": []}, "fields_to_export"),
    ({"segment_id": "SID", "fields_to_export": ["devices"]}, "unsupported"),
    ({"segment_id": "SID", "fields_to_export": ["email"], "callback_endpoint": "http://x"},
     "callback_endpoint"),
    ({"segment_id": "SID", "fields_to_export": ["email"], "output_format": "tar"},
     "output_format"),
    ({"segment_id": "SID", "fields_to_export": ["email"], "colour": "red"}, "unknown field"),
])
def test_export_refuses_bad_requests(sb, api, body, words):
    sid = sb.create_segment("vip", BooleanAttribute("vip", "is_true"))
    body = {k: (sid if v == "SID" else v) for k, v in body.items()}
    status, answer, _ = api.post("/users/export/segment", body)
    assert status == 400 and words in answer["message"]


def test_a_key_without_the_permission_gets_403(make_api):
    api = make_api(permissions=["users.track"])
    assert api.track(attributes=[{"external_id": "a", "x": 1}])[0] == 201
    for path in ("/segments/list", "/segments/details", "/segments/data_series",
                 "/events/list"):
        status, body, _ = api.get(path)
        assert status == 403 and body == {"message": "Access Denied"}
    assert api.post("/users/export/segment", {})[0] == 403
    api.sb.set_permissions(None)
    assert api.get("/segments/list")[0] == 200
    with pytest.raises(SandboxError):
        BrazeSandbox(permissions="segments.list")


def test_segments_are_built_through_the_sandbox_only_endpoint(sb, api):
    f = BooleanAttribute("vip", "is_true")
    status, body, _ = api.post("/sandbox/segments", {"name": "vip", "filters": [f.to_dict()],
                                                     "tags": ["a"]})
    assert status == 201
    sid = body["segment_id"]
    assert sb.segments().set_index("segment_id").loc[sid, "filter"] == str(f)
    status, body, _ = api.post("/sandbox/segments", {"name": "bad",
                                                     "filters": {"type": "nope"}})
    assert status == 400 and "unknown filter type" in body["message"]
    assert api.post("/sandbox/segments", {"filters": [f.to_dict()]})[0] == 400
    assert api.post("/sandbox/segments", {"name": "x", "filters": [], "extra": 1})[0] == 400


def test_create_and_update_segment_take_filters_dicts_and_lists(sb):
    f = BooleanAttribute("vip", "is_true")
    g = CustomEventCount("Bought", "more_than", 0)
    sid = sb.create_segment("both", [f, g.to_dict()])
    assert sb.segments().iloc[0]["description"] == str(f & g)
    sb.update_segment(sid, g)
    assert sb.segments().iloc[0]["description"] == str(g)
    assert Filter.from_dict(g.to_dict()) == g
    with pytest.raises(FilterError):
        sb.create_segment("none", [])
    with pytest.raises(SandboxError):
        sb.create_segment(" ", f)
    with pytest.raises(SandboxError):
        sb.update_segment("nope", f)
    with pytest.raises(SandboxError):
        sb.segment_members("nope")
    with pytest.raises(SandboxError):
        BrazeSandbox(estimate_error=2)


def test_reset_forgets_segments(sb):
    sb.create_segment("vip", BooleanAttribute("vip", "is_true"))
    sb.reset()
    assert sb.segments().empty


def test_the_daily_estimate_can_be_run_over_http(sb, api):
    _users(api)
    status, body, _ = api.post("/sandbox/segments",
                               {"name": "vip", "filters": BooleanAttribute("vip", "is_true")
                                .to_dict()})
    sid = body["segment_id"]
    status, body, _ = api.post("/sandbox/segments/estimate", {"at": "2026-02-01T04:00:00Z"})
    assert status == 200 and body["estimates"] == {sid: 10}
    _, series, _ = api.get("/segments/data_series", params={
        "segment_id": sid, "length": 1, "ending_at": "2026-02-01T05:00:00+00:00"})
    assert series["data"] == [{"time": "2026-02-01T04:00:00.000Z", "size": 10}]
    assert api.post("/sandbox/segments/estimate", {"at": "soon"})[0] == 400
