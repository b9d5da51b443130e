"""Reading endpoints and partner cohorts: chunking to Braze's per-request limits, Link-cursor and
page pagination, and cohort requests carrying their keys in the body."""
from __future__ import annotations

import pytest

from .scripted import API_KEY, Step
from toolkit.braze.transport import SandboxTransport
from toolkit.sandbox import BrazeSandbox
from toolkit.braze.client import BrazeClient
from toolkit.errors import BrazeAuthError, ConfigError


def test_export_ids_chunks_to_50_identifiers_and_merges(fake, make_client):
    def answer(seen):
        ids = seen.body.get("external_ids", [])
        return Step(201, {"message": "success",
                          "users": [{"external_id": i} for i in ids if not i.endswith("9")],
                          "invalid_user_ids": [i for i in ids if i.endswith("9")]})

    fake.default("/users/export/ids", answer)
    ids = [f"u{i}" for i in range(110)]
    aliases = [{"alias_name": f"a{i}", "alias_label": "email"} for i in range(5)]
    out = make_client().export_ids(ids, aliases, fields_to_export=["external_id"])
    bodies = [s.body for s in fake.requests_to("/users/export/ids")]
    assert out["requests"] == len(bodies) == 3
    assert [len(b.get("external_ids", [])) + len(b.get("user_aliases", [])) for b in bodies] \
        == [50, 50, 15]
    assert bodies[2]["user_aliases"] == aliases
    assert all(b["fields_to_export"] == ["external_id"] for b in bodies)
    assert len(out["users"]) == 99 and len(out["invalid_user_ids"]) == 11


def test_export_ids_needs_identifiers(make_client):
    with pytest.raises(ConfigError):
        make_client().export_ids([])


def test_custom_attributes_follow_the_link_cursor(fake, make_client):
    pages = {
        None: (["a", "b"], '<https://rest.iad-01.braze.com/custom_attributes?cursor=c2>; rel="next"'),
        "c2": (["c", "d"], '<https://evil.example.com/custom_attributes?cursor=c3>; rel="next", '
                           '<https://x/custom_attributes?cursor=c1>; rel="prev"'),
        "c3": (["e"], None),
    }

    def answer(seen):
        names, link = pages[seen.query.get("cursor", [None])[0]]
        headers = {"Link": link} if link else {}
        return Step(200, {"message": "success",
                          "attributes": [{"name": n, "data_type": "Boolean"} for n in names]},
                    headers)

    fake.default("/custom_attributes", answer)
    items = make_client().custom_attributes()
    assert [i["name"] for i in items] == ["a", "b", "c", "d", "e"]
    # the cursor is reused on our own endpoint; the foreign host in the Link is never called
    assert all(s.headers["Authorization"] == f"Bearer {API_KEY}" for s in fake.seen)
    assert [s.query.get("cursor") for s in fake.seen] == [None, ["c2"], ["c3"]]


def test_events_list_pages_until_a_short_page(fake, make_client):
    names = [f"event {i}" for i in range(520)]

    def answer(seen):
        page = int(seen.query["page"][0])
        return Step(200, {"message": "success", "events": names[page * 250:(page + 1) * 250]})

    fake.default("/events/list", answer)
    assert make_client().events_list() == names
    assert [s.query["page"] for s in fake.seen] == [["0"], ["1"], ["2"]]


def test_events_list_stops_when_the_server_ignores_the_page(fake, make_client):
    fake.default("/events/list", lambda seen: Step(200, {"events": ["same"]}))
    assert make_client().events_list() == ["same"]


def test_cohort_endpoints_put_keys_in_the_body_and_chunk_to_1000(fake, make_client):
    client = make_client()
    cohorts = client.cohort("partner-key-123", "client-secret-456")
    cohorts.create("c1", "vip_customer", created_at="2026-01-01T00:00:00+00:00")
    add = [f"u{i}" for i in range(1500)] + [{"alias_name": "x@y.z", "alias_label": "email"}]
    remove = [f"r{i}" for i in range(600)]
    summary = cohorts.update_users("c1", add=add, remove=remove)
    create, *updates = fake.seen
    assert create.path == "/partners/segment/cohorts" and "Authorization" not in create.headers
    assert create.body == {"partner_api_key": "partner-key-123", "client_secret": "client-secret-456",
                           "cohort_id": "c1", "name": "vip_customer",
                           "created_at": "2026-01-01T00:00:00+00:00"}
    assert [u.path for u in updates] == ["/partners/segment/cohorts/users"] * 3
    sizes = [sum(len(c.get("user_ids", [])) + len(c.get("aliases", []))
                 for c in u.body["cohort_changes"]) for u in updates]
    assert sizes == [1000, 1000, 101]
    last = updates[-1].body["cohort_changes"]
    assert last[-1]["should_remove"] is True and all("should_remove" not in c for c in last[:-1])
    assert summary == {"cohort_id": "c1", "added": 1501, "removed": 600, "requests": 3}


def test_cohort_401_never_echoes_the_client_secret(fake, make_client):
    secret = "client-secret-ABCDEF"
    fake.script("/partners/segment/cohorts/users",
                Step(401, {"message": f"Partner not enabled for client with client secret: {secret}"}))
    client = make_client()
    with pytest.raises(BrazeAuthError) as info:
        client.cohort("partner-key-XYZ", secret).update_users("c1", add=["u1"])
    err = info.value
    for text in (str(err), repr(err.body), repr(err.request), repr(err.response),
                 repr(client.cohort("partner-key-XYZ", secret))):
        assert secret not in text and "partner-key-XYZ" not in text
    assert "Data Import Key" in err.hint


def test_cohort_keys_from_the_environment(fake, make_client, monkeypatch):
    monkeypatch.setenv("BRAZE_PARTNER_API_KEY", "pk-env")
    monkeypatch.setenv("BRAZE_DATA_IMPORT_KEY", "cs-env")
    make_client().cohort().create("c9", "name")
    assert fake.seen[0].body["partner_api_key"] == "pk-env"
    assert fake.seen[0].body["client_secret"] == "cs-env"


def test_cohort_rejects_unusable_members(make_client):
    with pytest.raises(ConfigError):
        make_client().cohort("p", "s").update_users("c", add=[42])


def test_for_sandbox_takes_url_key_and_partner_keys():
    with BrazeSandbox(partner_api_key="pk-sb", client_secret="cs-sb") as sb:
        with BrazeClient.for_sandbox(sb, max_workers=2) as client:
            assert client.endpoint == sb.url and client.max_workers == 2
            assert isinstance(client.transport, SandboxTransport)
            client.cohort().create("c", "n")       # refused (401) unless both keys were taken
        assert list(sb.cohorts()["cohort_id"]) == ["c"]
