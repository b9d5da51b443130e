"""/users/track requests and responses: body shape, bearer auth, partial-error mapping, fatal
errors carrying a redacted copy of the request, and the notebook displays."""
from __future__ import annotations

import pytest

from .scripted import API_KEY, Step
from toolkit.braze.client import TrackResult, key_fingerprint
from toolkit.errors import BrazeBadRequest
from toolkit.errors import ConfigError


def test_request_shape_and_auth(fake, make_client):
    client = make_client()
    attrs = [{"external_id": f"u{i}", "n": i} for i in range(5)]
    result = client.track(attributes=attrs, events=[])
    (seen,) = fake.seen
    assert seen.method == "POST" and seen.path == "/users/track"
    assert seen.headers["Authorization"] == f"Bearer {API_KEY}"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["User-Agent"].startswith("engage-braze-toolkit/")
    assert seen.body == {"attributes": attrs}          # empty arrays are not sent; order kept
    assert result.status == 201 and result.ok and result.rejected == {} and result.attempts == 1


def test_partial_errors_map_to_the_index_within_each_array(fake, make_client):
    errors = [
        {"type": "'external_id', 'braze_id', 'user_alias', 'email' or 'phone' is required",
         "input_array": "attributes", "index": 2},
        {"type": "Invalid 'properties' field", "input_array": "events", "index": 0},
        {"type": "second problem", "input_array": "events", "index": 0},
        {"type": "not about one object"},
    ]
    fake.script("/users/track", Step(201, {"message": "success", "errors": errors}))
    result = make_client().track(attributes=[{"external_id": "a"}] * 3,
                                 events=[{"external_id": "a", "name": "x", "time": "t"}])
    assert not result.ok and result.outcome == "acknowledged"
    assert result.errors == errors
    assert result.rejected == {
        ("attributes", 2): errors[0]["type"],
        ("events", 0): "Invalid 'properties' field; second problem",
    }
    assert "attributes[2]" in result._repr_html_()


def test_fatal_400_keeps_status_body_request_and_response(fake, make_client):
    body = {"message": "Valid data must be provided in the 'attributes', 'events', or "
                       "'purchases' fields.",
            "errors": [{"type": "identifier required", "input_array": "attributes", "index": 0}]}
    fake.script("/users/track", Step(400, body, {"x-request-id": "r1"}))
    client = make_client()
    with pytest.raises(BrazeBadRequest) as info:
        client.track(attributes=[{"vip": True}])
    err = info.value
    assert err.status == 400 and err.body == body and err.outcome == "rejected"
    assert err.rejected == {("attributes", 0): "identifier required"}
    assert err.request.method == "POST" and err.request.url == fake.url + "/users/track"
    assert err.request.payload == {"attributes": [{"vip": True}]}
    assert err.request.headers["Authorization"].startswith("Bearer REDACTED")
    assert err.response.status == 400 and err.response.headers["x-request-id"] == "r1"
    assert "Valid data must be provided" in str(err) and err.hint


def test_401_names_the_wrong_instance_and_quotes(fake, make_client):
    fake.script("/users/track", Step(401, {"message": "Invalid API key"}))
    client = make_client(api_key=f'"{API_KEY}"')
    with pytest.raises(Exception) as info:
        client.track(attributes=[{"external_id": "a"}])
    text = str(info.value)
    assert type(info.value).__name__ == "BrazeAuthError"
    assert "another Braze instance" in text and "quotes" in text
    assert "remove the quotes" in info.value.hint and "rest.fra-01.braze.eu" in info.value.hint
    assert key_fingerprint(f'"{API_KEY}"') in text


def test_403_names_the_permission(fake, make_client):
    fake.script("/users/export/ids", Step(403, {"message": "Access Denied"}))
    with pytest.raises(Exception) as info:
        make_client().export_ids(["a"])
    assert "users.export.ids" in info.value.hint


@pytest.mark.parametrize("payload,problem", [
    ({}, "nothing to send"),
    ({"attributes": [], "events": None}, "nothing to send"),
    ({"attribute": [{"external_id": "a"}]}, "unexpected /users/track keys"),
])
def test_bad_payloads_are_refused_before_sending(fake, make_client, payload, problem):
    client = make_client()
    with pytest.raises(ConfigError, match=problem):
        list(client.track_batches([payload]))
    assert fake.seen == []


def test_results_and_client_render_in_a_notebook(fake, make_client):
    client = make_client()
    result = client.track(attributes=[{"external_id": "a"}])
    assert isinstance(result, TrackResult) and "201" in result._repr_html_()
    html = client._repr_html_()
    assert key_fingerprint(API_KEY) in html and API_KEY not in html
    assert "3,000 requests / 3 s" in html
    assert "<table>" in client.stats._repr_html_()


def test_a_closed_client_refuses_to_send(make_client):
    client = make_client()
    with client:
        pass
    with pytest.raises(ConfigError, match="closed"):
        client.track(attributes=[{"external_id": "a"}])


@pytest.mark.parametrize("value", [float("nan"), object()])
def test_values_json_cannot_carry_are_refused_before_sending(fake, make_client, value):
    client = make_client()
    with pytest.raises(ConfigError, match="not valid JSON") as info:
        client.track(attributes=[{"external_id": "a", "x": value}])
    assert "ISO-8601" in info.value.hint and fake.seen == []


def test_a_netrc_entry_cannot_replace_the_bearer_header(fake, make_client, tmp_path, monkeypatch):
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login someone password other-secret\n")
    (tmp_path / ".netrc").chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    make_client().track(attributes=[{"external_id": "a"}])
    assert fake.seen[0].headers["Authorization"] == f"Bearer {API_KEY}"


def test_redirects_are_not_followed(fake, make_client):
    fake.script("/users/track", Step(301, None, {"Location": "https://elsewhere.example/users/track"}))
    with pytest.raises(BrazeBadRequest, match="redirect to https://elsewhere.example") as info:
        make_client().track(attributes=[{"external_id": "a"}])
    assert info.value.outcome == "rejected" and len(fake.seen) == 1
    assert info.value.response.headers["location"] == "https://elsewhere.example/users/track"
