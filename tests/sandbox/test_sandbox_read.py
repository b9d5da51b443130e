"""Sandbox read endpoints and partner cohorts: /users/export/ids, GET /custom_attributes with its
Link cursor, GET /events/list pages, and /partners/segment/cohorts[/users] (reference §4, §6)."""
from __future__ import annotations

import re

import pytest
import requests

T = "2024-03-01T12:00:00Z"
EXPORT = "/users/export/ids"


# ---------------------------------------------------------------- /users/export/ids
def test_export_ids_returns_requested_fields_and_invalid_ids(api):
    api.track(attributes=[{"external_id": "u1", "vip": True, "first_name": "Ada",
                           "email": "ada@example.com"}],
              events=[{"external_id": "u1", "name": "Audience Entered", "time": T},
                      {"external_id": "u1", "name": "Audience Entered",
                       "time": "2024-03-05T08:00:00Z"}])
    status, body, _ = api.post(EXPORT, {"external_ids": ["u1", "nobody"],
                                        "fields_to_export": ["external_id", "first_name", "email",
                                                             "custom_attributes",
                                                             "custom_events"]})
    assert status == 201
    assert body["message"] == "success"
    assert body["invalid_user_ids"] == ["nobody"]
    assert body["users"] == [{
        "external_id": "u1", "first_name": "Ada", "email": "ada@example.com",
        "custom_attributes": {"vip": True},
        "custom_events": [{"name": "Audience Entered", "first": "2024-03-01T12:00:00.000Z",
                           "last": "2024-03-05T08:00:00.000Z", "count": 2}],
    }]


def test_export_by_alias_and_braze_id(sb, api):
    alias = {"alias_name": "a1", "alias_label": "crm"}
    api.track(attributes=[{"user_alias": alias, "_update_existing_only": False, "x": 1}])
    status, body, _ = api.post(EXPORT, {"user_aliases": [alias],
                                        "fields_to_export": ["user_aliases", "braze_id",
                                                             "custom_attributes"]})
    user = body["users"][0]
    assert user["user_aliases"] == [alias] and user["custom_attributes"] == {"x": 1}
    assert "invalid_user_ids" not in body
    status, body, _ = api.post(EXPORT, {"braze_id": user["braze_id"],
                                        "fields_to_export": ["user_aliases"]})
    assert body["users"] == [{"user_aliases": [alias]}]


def test_export_limits_and_required_fields(api):
    ids = [f"u{i}" for i in range(51)]
    status, body, _ = api.post(EXPORT, {"external_ids": ids, "fields_to_export": ["external_id"]})
    assert (status, body["message"]) == (
        400, "The max number of external_ids and aliases per request was exceeded")
    status, _, _ = api.post(EXPORT, {"external_ids": ids[:50], "fields_to_export": ["external_id"]})
    assert status == 201
    status, body, _ = api.post(EXPORT, {"external_ids": ["u1"]})
    assert status == 400 and "'fields_to_export' is required" in body["message"]
    status, body, _ = api.post(EXPORT, {"external_ids": ["u1"], "fields_to_export": ["shoe_size"]})
    assert status == 400 and "shoe_size" in body["message"]


# ---------------------------------------------------------------- listings
def test_custom_attributes_pages_of_50_with_link_cursor(api):
    names = [f"attr_{i:03d}" for i in range(120)]
    for start in range(0, 120, 40):
        api.track(attributes=[{"external_id": "u", **{n: i for i, n in
                                                      enumerate(names[start:start + 40])}}])
    seen, url, pages = [], api.sb.url + "/custom_attributes", 0
    while url:
        r = api.session.get(url, timeout=10)
        assert r.status_code == 200
        body = r.json()
        pages += 1
        assert len(body["attributes"]) == (50 if pages < 3 else 20)
        seen += [a["name"] for a in body["attributes"]]
        link = r.headers.get("Link")
        url = re.match(r'<([^>]+)>; rel="next"', link).group(1) if link else None
    assert pages == 3 and seen == names
    first = body["attributes"][0]
    assert set(first) == {"array_length", "data_type", "description", "name", "status",
                          "tag_names"}
    assert first["data_type"] == "Number"
    assert api.get("/custom_attributes?cursor=%%%")[0] == 400


def test_events_list_pages_of_250(api):
    names = [f"event {i:03d}" for i in range(260)]
    for start in range(0, 260, 65):
        api.track(events=[{"external_id": "u", "name": n, "time": T}
                          for n in names[start:start + 65]])
    status, first, _ = api.get("/events/list")
    assert status == 200 and first["events"] == names[:250]
    assert api.get("/events/list?page=1")[1]["events"] == names[250:]
    assert api.get("/events/list?page=2")[1]["events"] == []
    assert api.get("/events/list?page=-1")[0] == 400


# ---------------------------------------------------------------- partner cohorts (§4)
@pytest.fixture
def cohort(sb):
    session = requests.Session()

    def post(path, **body):
        body = {"partner_api_key": sb.partner_api_key, "client_secret": sb.client_secret, **body}
        r = session.post(sb.url + "/partners/segment" + path, json=body, timeout=10)
        return r.status_code, r.json()

    yield post
    session.close()


def test_cohort_create_add_remove(sb, api, cohort):
    api.track(attributes=[{"external_id": f"u{i}", "a": 1} for i in range(3)] +
              [{"user_alias": {"alias_name": "x", "alias_label": "crm"},
                "_update_existing_only": False}])
    assert cohort("/cohorts", cohort_id="c1", name="vip_customer",
                  created_at="2024-03-01T00:00:00Z") == (201, {"message": "success"})
    status, _ = cohort("/cohorts/users", cohort_id="c1", cohort_changes=[
        {"user_ids": ["u0", "u1", "ghost"], "aliases": [{"alias_name": "x", "alias_label": "crm"}],
         "device_ids": ["d-1"]}])
    assert status == 201
    cohort("/cohorts/users", cohort_id="c1", cohort_changes=[
        {"user_ids": ["u1"], "should_remove": True}, {"user_ids": ["u2"]}])
    row = sb.cohorts().iloc[0]
    assert (row["cohort_id"], row["name"], row["size"]) == ("c1", "vip_customer", 3)
    assert row["members"] == ["u0", "u2", "x:crm"]      # unknown ids are ignored, not created
    assert len(sb.profiles()) == 4
    assert cohort("/cohorts", cohort_id="c1", name="renamed", created_at=T)[0] == 201
    assert sb.cohorts()["name"].tolist() == ["renamed"]


def test_cohort_errors(sb, cohort):
    assert cohort("/cohorts", cohort_id="", name="n", created_at=T) == (
        400, {"message": "`cohort_id` must be a valid string"})
    assert cohort("/cohorts", cohort_id="c", name=" ", created_at=T)[1]["message"] == \
        "`name` must be a non-empty string"
    assert cohort("/cohorts", cohort_id="c", name="n", created_at="today")[1]["message"] == \
        "`created_at` must be a valid time as an ISO-8601 string"
    assert cohort("/cohorts", cohort_id="c", name="n", created_at=T,
                  partner_api_key="nope") == (401, {"message": "Invalid Partner API key"})
    assert cohort("/cohorts", cohort_id="c", name="n", created_at=T,
                  client_secret="nope") == (401, {"message": "Invalid client secret"})
    status, body = cohort("/cohorts/users", cohort_id="c", cohort_changes={"user_ids": ["a"]})
    assert status == 400 and body["message"].startswith("`cohort_changes` must be an array")
    cohort("/cohorts", cohort_id="c", name="n", created_at=T)
    status, body = cohort("/cohorts/users", cohort_id="c",
                          cohort_changes=[{"user_ids": [f"u{i}" for i in range(600)]},
                                          {"device_ids": [f"d{i}" for i in range(401)]}])
    assert status == 400 and body["message"].startswith("Only 1,000")
    assert cohort("/cohorts/users", cohort_id="c",
                  cohort_changes=[{"user_ids": [f"u{i}" for i in range(1000)]}])[0] == 201


def test_cohort_auth_test_call_and_unknown_cohort(cohort):
    # Segment's testAuthentication posts empty changes for a cohort Braze has never seen (§4.2).
    assert cohort("/cohorts/users", cohort_id="will_add_in_constant", cohort_changes=[])[0] == 201
    status, body = cohort("/cohorts/users", cohort_id="never-created",
                          cohort_changes=[{"user_ids": ["u1"]}])
    assert status == 400 and "strict" in body["message"]


def test_cohort_endpoints_ignore_the_bearer_key(sb):
    r = requests.post(sb.url + "/partners/segment/cohorts", timeout=10,
                      json={"partner_api_key": sb.partner_api_key, "client_secret": sb.client_secret,
                            "cohort_id": "c", "name": "n", "created_at": T})
    assert r.status_code == 201
