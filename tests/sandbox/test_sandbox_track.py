"""POST /users/track in the sandbox: auth, responses, partial and fatal errors, limits, identifiers,
attribute operations, the type lock, update-only mode and data-point billing (reference §1, §2, §7)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.sandbox.store import INVALID_PROPERTIES, NO_IDENTIFIER, NO_VALID_DATA

T = "2024-03-01T12:00:00Z"


def ev(uid, name="Audience Entered", **kw):
    return {"external_id": uid, "name": name, "time": T, **kw}


# ---------------------------------------------------------------- auth and basic shapes
def test_success_response_counts_each_array(api):
    status, body, _ = api.track(
        attributes=[{"external_id": "u1", "vip": True}, {"external_id": "u2", "vip": False}],
        events=[ev("u1")],
        purchases=[{"external_id": "u1", "product_id": "sku", "currency": "USD", "price": 9.5,
                    "time": T}],
    )
    assert status == 201
    assert body == {"message": "success", "attributes_processed": 2, "events_processed": 1,
                    "purchases_processed": 1}


def test_only_the_arrays_sent_are_counted(api):
    status, body, _ = api.track(events=[ev("u1")])
    assert (status, body) == (201, {"message": "success", "events_processed": 1})


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Bearer \"{key}\"", "{key}"])
def test_missing_wrong_or_quoted_key_is_401(sb, api, header):
    headers = {} if header is None else {"Authorization": header.format(key=sb.api_key)}
    api.session.headers.pop("Authorization")
    status, body, h = api.post("/users/track", {"attributes": [{"external_id": "u", "a": 1}]},
                               headers=headers)
    assert status == 401
    assert body == {"message": "Invalid API key"}
    assert "x-ratelimit-limit" in h
    assert sb.profiles().empty


def test_bearer_scheme_is_case_insensitive(sb, api):
    api.session.headers["Authorization"] = f"bearer {sb.api_key}"
    assert api.track(attributes=[{"external_id": "u"}])[0] == 201


def test_unknown_path_is_404_invalid_url(api):
    status, body, _ = api.post("/users/trak", {"attributes": []})
    assert status == 404 and body["message"].startswith("Invalid URL")


def test_bad_json_and_wrong_content_type_are_400(sb, api):
    r = api.session.post(sb.url + "/users/track", data=b"{not json",
                         headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["message"].startswith("Bad syntax")
    r = api.session.post(sb.url + "/users/track", data=b'{"attributes": []}',
                         headers={"Content-Type": "text/plain"})
    assert r.status_code == 400 and "application/json" in r.json()["message"]


def test_fatal_shapes(api):
    assert api.post("/users/track", {})[:2] == (400, {"message": NO_VALID_DATA})
    assert api.post("/users/track", [1, 2])[0] == 400
    status, body, _ = api.post("/users/track", {"attributes": {"external_id": "u"}})
    assert status == 400 and "'attributes' must be an array" in body["message"]
    status, body, _ = api.post("/users/track", {"attributes": [], "api_key": "x"})
    assert status == 400 and "api_key" in body["message"] and "strict" in body["message"]


# ---------------------------------------------------------------- partial and fatal errors
def test_partial_errors_index_within_their_own_array(sb, api):
    status, body, _ = api.track(
        attributes=[{"external_id": "u1", "a": 1}, {"a": 2}, {"external_id": "u3", "a": 3}],
        events=[{"external_id": "u1", "name": "E", "time": "yesterday"}, ev("u1")],
    )
    assert status == 201
    assert body["message"] == "success"
    assert body["attributes_processed"] == 2 and body["events_processed"] == 1
    assert [(e["input_array"], e["index"]) for e in body["errors"]] == [("attributes", 1),
                                                                        ("events", 0)]
    assert body["errors"][0]["type"] == NO_IDENTIFIER
    assert "ISO-8601" in body["errors"][1]["type"]
    assert sorted(sb.profiles()["external_id"]) == ["u1", "u3"]


def test_all_objects_invalid_is_a_fatal_400_with_errors(api):
    status, body, _ = api.track(attributes=[{"a": 1}])
    assert status == 400
    assert body == {"message": NO_VALID_DATA,
                    "errors": [{"type": NO_IDENTIFIER, "input_array": "attributes", "index": 0}]}


@pytest.mark.parametrize("array,objects", [
    ("attributes", lambda n: [{"external_id": f"u{i}", "a": i} for i in range(n)]),
    ("events", lambda n: [ev(f"u{i}") for i in range(n)]),
])
def test_more_than_75_objects_in_an_array_is_max_input_length_exceeded(sb, api, array, objects):
    assert api.post("/users/track", {array: objects(75)})[0] == 201
    status, body, _ = api.post("/users/track", {array: objects(76)})
    assert status == 400 and body["message"] == "Max Input Length Exceeded"
    assert body["errors"] == [{"type": body["errors"][0]["type"], "input_array": array,
                               "index": 75}]   # the first object over the limit
    assert sb.profiles()["external_id"].tolist() == [f"u{i}" for i in range(75)]  # none of the 76
    assert sb.request_log()["status"].tolist() == [201, 400]


def test_per_array_limit_is_per_array_not_combined(api):
    attrs = [{"external_id": f"u{i}", "a": i} for i in range(75)]
    events = [ev(f"u{i}") for i in range(75)]
    assert api.track(attributes=attrs, events=events)[0] == 201


def test_combined_limit_mode(make_api):
    api = make_api(combined_limit=50)
    attrs = [{"external_id": f"u{i}", "a": i} for i in range(30)]
    assert api.track(attributes=attrs, events=[ev("u1")] * 20)[0] == 201
    status, body, _ = api.track(attributes=attrs, events=[ev("u1")] * 21)
    assert status == 400 and body["message"] == "Max Input Length Exceeded"
    assert "50 objects combined" in body["errors"][0]["type"]
    assert (body["errors"][0]["input_array"], body["errors"][0]["index"]) == ("events", 20)


def test_configurable_array_limit(make_api):
    api = make_api(max_objects_per_array=10)
    assert api.track(attributes=[{"external_id": f"u{i}"} for i in range(11)])[0] == 400


# ---------------------------------------------------------------- key and value validation
@pytest.mark.parametrize("attrs,fragment", [
    ({"k" * 256: 1}, "longer than 255"),
    ({"$price": 1}, "cannot begin with '$'"),
    ({"s": "x" * 256}, "longer than 255"),
    ({"arr": ["ok", "x" * 256]}, "longer than 255"),
    ({"arr": [1, 2]}, "array items must be strings"),
    ({"n": {"inc": 1.5}}, "'inc' takes an integer"),
    ({"obj": {"bad key": 1}}, "invalid nested key"),
    ({"alias_name": "x"}, "cannot be set"),
    ({"gender": "X"}, "'gender'"),
    ({"email_subscribe": "yes"}, "'email_subscribe'"),
])
def test_invalid_attribute_keys_and_values_reject_the_object(sb, api, attrs, fragment):
    status, body, _ = api.track(attributes=[{"external_id": "ok", "a": 1},
                                            {"external_id": "bad", "a": 1, **attrs}])
    assert status == 201
    assert body["errors"][0]["index"] == 1 and fragment in body["errors"][0]["type"]
    # the rejected object changed nothing, not even its valid keys or its user
    assert sb.profiles()["external_id"].tolist() == ["ok"]


def test_key_of_exactly_255_characters_is_accepted(api):
    assert "errors" not in api.track(attributes=[{"external_id": "u", "k" * 255: "v" * 255}])[1]


@pytest.mark.parametrize("event,fragment", [
    ({"external_id": "u", "time": T}, "'name' is required"),
    ({"external_id": "u", "name": "$E", "time": T}, "cannot begin with '$'"),
    ({"external_id": "u", "name": "E"}, "'time' is required"),
    ({"external_id": "u", "name": "E", "time": "03/01/2024"}, "ISO-8601"),
    ({"external_id": "u", "name": "E", "time": T, "properties": {"time": 1}}, INVALID_PROPERTIES),
    ({"external_id": "u", "name": "E", "time": T, "properties": {"event_name": 1}},
     INVALID_PROPERTIES),
    ({"external_id": "u", "name": "E", "time": T, "properties": {"$k": 1}}, INVALID_PROPERTIES),
    ({"external_id": "u", "name": "E", "time": T, "properties": {"k": "x" * 256}},
     INVALID_PROPERTIES),
    ({"external_id": "u", "name": "E", "time": T, "colour": "red"}, "unknown event field"),
    ({"external_id": "u", "email": "a@b.c", "name": "E", "time": T}, "one identifier"),
])
def test_invalid_events(api, event, fragment):
    status, body, _ = api.track(events=[ev("ok"), event])
    assert status == 201 and body["events_processed"] == 1
    assert body["errors"] == [{"type": body["errors"][0]["type"], "input_array": "events",
                               "index": 1}]
    assert fragment in body["errors"][0]["type"]


@pytest.mark.parametrize("when", ["2024-03-01T12:00:00+01:00", "2024-03-01T12:00:00:123+0000",
                                  "2024-03-01 12:00:00", "2024-03-01T12:00:00.123456Z",
                                  "2024-03-01"])
def test_documented_time_formats_are_accepted(api, when):
    status, body, _ = api.track(events=[ev("u", time=when)])
    assert status == 201 and "errors" not in body


def test_future_event_time_defaults_to_now(sb, api):
    future = (datetime.now(timezone.utc) + timedelta(days=30)).isoformat()
    api.track(events=[ev("u", time=future)])
    stored = sb.events()["time"].iloc[0]
    assert stored <= datetime.now(timezone.utc)


def test_purchase_reserved_keys_and_quantity(api):
    base = {"external_id": "u", "product_id": "p", "currency": "USD", "price": 1.0, "time": T}
    status, body, _ = api.track(purchases=[base, {**base, "quantity": 101},
                                           {**base, "properties": {"price": 2}},
                                           {**base, "currency": "usd"}])
    assert body["purchases_processed"] == 1
    assert [e["index"] for e in body["errors"]] == [1, 2, 3]
    assert "'quantity'" in body["errors"][0]["type"]
    assert body["errors"][1]["type"].startswith(INVALID_PROPERTIES)


# ---------------------------------------------------------------- attribute operations
def test_set_null_inc_and_array_operations(sb, api):
    api.track(attributes=[{"external_id": "u", "score": 5, "tags": ["a", "b", "a"],
                           "gone": "x", "visits": {"inc": 2}, "first_name": "Ada"}])
    api.track(attributes=[{"external_id": "u", "score": {"inc": -2}, "gone": None,
                           "tags": {"add": ["c", "a"]}, "visits": {"inc": 3}}])
    api.track(attributes=[{"external_id": "u", "tags": {"remove": ["b", "zzz"]}}])
    row = sb.profiles().iloc[0]
    assert row["score"] == 3 and row["visits"] == 5
    assert row["tags"] == ["c", "a"]      # re-added "a" moved to the end, "b" removed
    assert row["first_name"] == "Ada"     # a profile field, not a custom attribute
    assert "gone" not in sb.profiles().columns or row.isna()["gone"]
    status, body, _ = api.post("/users/export/ids", {"external_ids": ["u"],
                                                     "fields_to_export": ["custom_attributes"]})
    assert body["users"][0]["custom_attributes"] == {"score": 3, "tags": ["c", "a"], "visits": 5}


def test_nested_object_overwritten_or_merged(sb, api):
    api.track(attributes=[{"external_id": "u", "pet": {"kind": "cat", "age": 3}}])
    api.track(attributes=[{"external_id": "u", "pet": {"age": 4}, "_merge_objects": True}])
    assert sb.profiles().iloc[0]["pet"] == {"kind": "cat", "age": 4}
    assert sb.data_points == 3     # §7: every key sent in an object is a data point
    api.track(attributes=[{"external_id": "u", "pet": {"age": 5}}])
    assert sb.profiles().iloc[0]["pet"] == {"age": 5}


# ---------------------------------------------------------------- the type lock
def test_attribute_type_is_locked_on_its_first_value(sb, api):
    assert "errors" not in api.track(attributes=[{"external_id": "u1", "ltv": 10}])[1]
    status, body, _ = api.track(attributes=[{"external_id": "u2", "ltv": 20},
                                            {"external_id": "u3", "ltv": "20"},
                                            {"external_id": "u4", "ltv": 1.5}])
    assert status == 201 and body["attributes_processed"] == 2
    assert body["errors"][0]["index"] == 1
    assert "data type Number" in body["errors"][0]["type"] and "String" in body["errors"][0]["type"]
    assert "u3" not in sb.profiles()["external_id"].tolist()


def test_type_lock_applies_within_one_request_and_to_operations(api):
    status, body, _ = api.track(attributes=[{"external_id": "u1", "flag": True},
                                            {"external_id": "u2", "flag": "true"},
                                            {"external_id": "u3", "flag": {"inc": 1}},
                                            {"external_id": "u4", "flag": None}])
    assert [e["index"] for e in body["errors"]] == [1, 2]
    assert body["attributes_processed"] == 2   # null removes without a type


def test_iso_strings_lock_a_time_attribute(api):
    api.track(attributes=[{"external_id": "u1", "last_order_at": "2024-05-01T10:00:00Z"}])
    status, body, _ = api.track(attributes=[{"external_id": "u2", "last_order_at": "soon"}])
    assert status == 400 and "data type Date" in body["errors"][0]["type"]
    _, listing, _ = api.get("/custom_attributes")
    assert listing["attributes"][0]["data_type"] == "Date"


# ---------------------------------------------------------------- identifiers and update-only
def test_update_existing_only_skips_unknown_users_but_counts_them(sb, api):
    status, body, _ = api.track(attributes=[{"external_id": "ghost", "_update_existing_only": True,
                                             "a": 1}])
    assert (status, body) == (201, {"message": "success", "attributes_processed": 1})
    assert sb.profiles().empty and sb.data_points == 0
    log = sb.request_log().iloc[-1]
    assert log["skipped"] == 1 and "skipped" in log["note"]
    api.track(attributes=[{"external_id": "ghost", "_update_existing_only": False, "a": 1}])
    api.track(attributes=[{"external_id": "ghost", "_update_existing_only": True, "a": 2}])
    assert sb.profiles()["a"].tolist() == [2]


def test_external_id_creates_by_default_and_events_create_users(sb, api):
    api.track(attributes=[{"external_id": "a1", "x": 1}], events=[ev("e1")],
              purchases=[{"external_id": "p1", "product_id": "p", "currency": "EUR", "price": 1,
                          "time": T}])
    assert sorted(sb.profiles()["external_id"]) == ["a1", "e1", "p1"]


def test_event_update_only_skips_unknown_user(sb, api):
    api.track(events=[ev("ghost", _update_existing_only=True)])
    assert sb.events().empty and sb.profiles().empty


def test_alias_only_users_need_update_existing_only_false(sb, api):
    alias = {"alias_name": "ada@example.com", "alias_label": "email"}
    api.track(attributes=[{"user_alias": alias, "vip": True}])
    assert sb.profiles().empty            # update-only is the alias default (§1.2)
    api.track(events=[{"user_alias": alias, "name": "E", "time": T,
                       "_update_existing_only": False}])
    assert sb.profiles().empty            # ... and always true for events
    api.track(attributes=[{"user_alias": alias, "vip": True, "_update_existing_only": False}])
    api.track(events=[{"user_alias": alias, "name": "E", "time": T}])
    row = sb.profiles().iloc[0]
    assert (row["alias_name"], row["alias_label"], row["vip"]) == ("ada@example.com", "email", True)
    assert row.isna()["external_id"]
    assert sb.events()["alias_name"].tolist() == ["ada@example.com"]


def test_malformed_alias_and_conflicting_identifiers(api):
    _, body, _ = api.track(attributes=[
        {"user_alias": {"alias_name": "x"}, "a": 1},
        {"external_id": "u", "braze_id": "b", "a": 1},
        {"external_id": "", "a": 1},
        {"external_id": "ok", "a": 1},
    ])
    assert [e["index"] for e in body["errors"]] == [0, 1, 2]
    assert "alias_label" in body["errors"][0]["type"]
    assert "only one of" in body["errors"][1]["type"]


def test_braze_id_email_and_phone_identifiers(sb, api):
    api.track(attributes=[{"external_id": "u1", "email": "ada@example.com", "phone": "+15550001"}])
    braze_id = sb.profiles()["braze_id"].iloc[0]
    api.track(attributes=[{"braze_id": braze_id, "a": "by braze id"}])
    api.track(events=[{"email": "ada@example.com", "phone": "+1999", "name": "E", "time": T}])
    api.track(events=[{"phone": "+15550001", "name": "P", "time": T}])
    api.track(attributes=[{"braze_id": "000000000000000000000000", "a": "unknown"}])
    frame = sb.profiles()
    assert len(frame) == 1 and frame["a"].iloc[0] == "by braze id"
    assert sb.events()["external_id"].tolist() == ["u1", "u1"]
    # an unknown email creates an email-only user (§1.1 FAQ)
    api.track(attributes=[{"email": "new@example.com", "a": "email only"}])
    assert pd.isna(sb.profiles().set_index("email").loc["new@example.com", "external_id"])


def test_email_prefers_most_recent_identified_profile(sb, api):
    api.track(attributes=[{"email": "s@x.io", "n": "email-only"}])
    api.track(attributes=[{"external_id": "a", "email": "s@x.io"}])
    api.track(attributes=[{"external_id": "b", "email": "s@x.io"}])
    api.track(attributes=[{"external_id": "a", "n": "touch a"}])
    api.track(attributes=[{"email": "s@x.io", "n": "via email"}])
    frame = sb.profiles().set_index("external_id", drop=False)
    assert frame.loc["a", "n"] == "via email"


# ---------------------------------------------------------------- data points (§7)
def test_data_points_bill_every_write_but_not_identifiers(sb, api):
    api.track(attributes=[{"external_id": "u", "_update_existing_only": False, "a": 1, "b": "x",
                           "email_subscribe": "opted_in"}])
    assert sb.data_points == 2                 # identifiers, flags and subscriptions not billed
    api.track(attributes=[{"external_id": "u", "a": 1, "b": "x"}])
    assert sb.data_points == 4                 # unchanged values are billed again
    api.track(attributes=[{"external_id": "u", "a": None, "tags": {"add": ["p", "q"]}}])
    assert sb.data_points == 7                 # null = 1, array add = 1 per value
    api.track(attributes=[{"external_id": "u", "tags": {"remove": ["nope"]}}])
    assert sb.data_points == 8                 # a no-op remove still costs one
    api.track(events=[ev("u"), ev("u")],
              purchases=[{"external_id": "u", "product_id": "p", "currency": "USD", "price": 1,
                          "time": T}])
    assert sb.data_points == 11                # duplicate events are separate events
    assert sb.request_log()["data_points"].sum() == 11


# ---------------------------------------------------------------- property: error indexes
_VALID = {"attributes": {"external_id": "p", "a": 1},
          "events": {"external_id": "p", "name": "E", "time": T},
          "purchases": {"external_id": "p", "product_id": "x", "currency": "USD", "price": 1,
                        "time": T}}
_INVALID = {"attributes": {"a": 1},
            "events": {"external_id": "p", "name": "E"},
            "purchases": {"external_id": "p", "product_id": "x", "currency": "USD", "time": T}}


@settings(max_examples=60, deadline=None)
@given(st.fixed_dictionaries({name: st.lists(st.booleans(), max_size=8)
                              for name in ("attributes", "events", "purchases")}))
def test_errors_name_exactly_the_invalid_objects_by_array_and_index(layout):
    from toolkit.sandbox.store import Store

    body = {name: [_VALID[name] if ok else _INVALID[name] for ok in flags]
            for name, flags in layout.items() if flags}
    status, response, _ = Store().track(body)
    # errors come in Braze's processing order: attributes, events, purchases (§1.1)
    wrong = [(name, i) for name in ("attributes", "events", "purchases")
             for i, ok in enumerate(layout[name]) if not ok]
    right = sum(ok for flags in layout.values() for ok in flags)
    if not body:
        assert status == 400
        return
    assert status == (201 if right else 400)
    assert [(e["input_array"], e["index"]) for e in response.get("errors", [])] == wrong
    if right:
        for name, flags in layout.items():
            if flags:
                assert response[f"{name}_processed"] == sum(flags)
