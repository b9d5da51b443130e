"""Drive the sandbox with plain `requests` calls written exactly as Braze's docs show them
(the curl examples of TRACK, UAO, /users/export/ids, /custom_attributes, /events/list, COHORT)."""
from __future__ import annotations

import json

import requests


def test_braze_doc_examples_work_verbatim(sb):
    url = sb.url  # in Braze's docs: https://rest.iad-01.braze.com
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {sb.api_key}"}

    # TRACK "Example request" (attributes, events incl. an alias, purchases)
    payload = json.dumps({
        "attributes": [{
            "external_id": "user_id",
            "string_attribute": "fruit",
            "boolean_attribute_1": True,
            "integer_attribute": 25,
            "array_attribute": ["banana", "apple"],
        }],
        "events": [
            {
                "external_id": "user_id",
                "app_id": "your_app_identifier",
                "name": "rented_movie",
                "time": "2022-12-06T19:20:45+01:00",
                "properties": {
                    "release": {"studio": "FilmStudio", "year": "2022"},
                    "cast": [{"name": "Actor1"}, {"name": "Actor2"}],
                },
            },
            {
                "user_alias": {"alias_name": "device123", "alias_label": "my_device_identifier"},
                "app_id": "your_app_identifier",
                "name": "rented_movie",
                "time": "2013-07-16T19:20:50+01:00",
            },
        ],
        "purchases": [{
            "external_id": "user_id",
            "app_id": "your_app_identifier",
            "product_id": "product_name",
            "currency": "USD",
            "price": 12.12,
            "quantity": 6,
            "time": "2017-05-12T18:47:12Z",
            "properties": {"color": "red", "monogram": "ABC", "checkout_duration": 180,
                           "size": "Large", "brand": "Backpack Locker"},
        }],
    })
    response = requests.request("POST", url + "/users/track", headers=headers, data=payload)
    assert response.status_code == 201
    assert response.json() == {"message": "success", "attributes_processed": 1,
                               "events_processed": 2, "purchases_processed": 1}
    # the alias event is processed but, update-only being always true for aliases, creates no one
    assert sb.profiles()["external_id"].tolist() == ["user_id"]
    event = sb.events().iloc[0]
    assert str(event["time"]) == "2022-12-06 18:20:45+00:00"
    assert event["properties"]["release"] == {"studio": "FilmStudio", "year": "2022"}

    # TRACK/UAO "create an alias-only user"
    payload = json.dumps({"attributes": [{
        "_update_existing_only": False,
        "user_alias": {"alias_name": "example_name", "alias_label": "example_label"},
        "email": "email@example.com",
        "email_subscribe": "subscribed",
    }]})
    response = requests.request("POST", url + "/users/track", headers=headers, data=payload)
    assert response.status_code == 201 and response.json()["attributes_processed"] == 1
    alias_row = sb.profiles().set_index("alias_name").loc["example_name"]
    assert alias_row["email"] == "email@example.com" and alias_row["email_subscribe"] == "subscribed"

    # /users/export/ids "Example request"
    payload = json.dumps({
        "external_ids": ["user_identifier1", "user_identifier2", "user_id"],
        "user_aliases": [{"alias_name": "example_name", "alias_label": "example_label"}],
        "device_id": "1234567",
        "braze_id": "braze_identifier",
        "email_address": "example@braze.com",
        "phone": "+11112223333",
        "fields_to_export": ["first_name", "email", "purchases", "external_id"],
    })
    response = requests.request("POST", url + "/users/export/ids", headers=headers, data=payload)
    body = response.json()
    assert response.status_code == 201 and body["message"] == "success"
    assert body["users"][0]["purchases"][0]["name"] == "product_name"
    assert body["users"][0]["purchases"][0]["count"] == 1
    assert body["users"][1] == {"email": "email@example.com", "purchases": []}
    assert body["invalid_user_ids"] == ["user_identifier1", "user_identifier2", "braze_identifier",
                                        "example@braze.com", "+11112223333", "1234567"]

    # GET /custom_attributes and GET /events/list
    response = requests.request("GET", url + "/custom_attributes", headers=headers, data="")
    names = [a["name"] for a in response.json()["attributes"]]
    assert names == ["array_attribute", "boolean_attribute_1", "integer_attribute",
                     "string_attribute"]
    response = requests.request("GET", url + "/events/list?page=0", headers=headers, data="")
    assert response.json() == {"message": "success", "events": ["rented_movie"]}

    # COHORT: both partner endpoints, keys in the body, no Authorization header
    cohort_headers = {"Content-Type": "application/json"}
    payload = json.dumps({"partner_api_key": sb.partner_api_key, "client_secret": sb.client_secret,
                          "cohort_id": "cohort_1", "name": "vip_customer",
                          "created_at": "2024-03-01T00:00:00Z"})
    response = requests.post(url + "/partners/segment/cohorts", headers=cohort_headers,
                             data=payload)
    assert response.status_code == 201
    payload = json.dumps({"partner_api_key": sb.partner_api_key, "client_secret": sb.client_secret,
                          "cohort_id": "cohort_1",
                          "cohort_changes": [{"user_ids": ["user_id", "test_user_2"]}]})
    response = requests.post(url + "/partners/segment/cohorts/users", headers=cohort_headers,
                             data=payload)
    assert response.status_code == 201
    assert sb.cohorts()["members"].tolist() == [["user_id"]]


def test_braze_segment_doc_examples_work_verbatim(sb):
    """The curl examples of /segments/list, /segments/details, /segments/data_series and
    /users/export/segment (docs/reference-segments.md), with a real segment id."""
    from toolkit.braze.filters import BooleanAttribute

    url = sb.url
    headers = {"Authorization": f"Bearer {sb.api_key}"}
    segment_identifier = sb.create_segment("vip", BooleanAttribute("vip", "is_true"))
    sb.estimate_segments(at="2018-06-27T12:00:00Z")

    r = requests.get(url + "/segments/list?page=1&sort_direction=desc", headers=headers)
    assert r.status_code == 200 and r.json() == {"message": "success", "segments": []}
    r = requests.get(url + f"/segments/details?segment_id={segment_identifier}", headers=headers)
    assert r.status_code == 200 and r.json()["name"] == "vip"
    r = requests.get(url + f"/segments/data_series?segment_id={segment_identifier}&length=14"
                           "&ending_at=2018-06-27T23:59:59-5:00", headers=headers)
    assert r.status_code == 200
    assert [p["time"] for p in r.json()["data"]] == ["2018-06-27T12:00:00.000Z"]
    r = requests.post(url + "/users/export/segment",
                      headers={**headers, "Content-Type": "application/json"},
                      data=json.dumps({"segment_id": segment_identifier,
                                       "fields_to_export": ["first_name", "email", "purchases"],
                                       "output_format": "zip"}))
    assert r.status_code == 201 and r.json()["url"].startswith(url + "/sandbox/exports/")
