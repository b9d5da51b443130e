"""Sandbox rate limits (x-ratelimit-* headers, 429) and deterministic fault injection: 429/5xx,
slow answers, and connections dropped before or after the request was applied (reference §1.7, §1.9)."""
from __future__ import annotations

import http.client
import threading
import time

import pytest
import requests

from toolkit.errors import SandboxError
from toolkit.sandbox import BrazeSandbox, Faults

T = "2024-03-01T12:00:00Z"


def _outcomes(api, n, path="/users/track"):
    out = []
    for i in range(n):
        try:
            r = api.session.post(api.sb.url + path, timeout=10, json={
                "attributes": [{"external_id": f"u{i}", "a": i}]})
            out.append(r.status_code)
        except requests.ConnectionError:
            out.append("dropped")
    return out


MIXED = Faults(rate_429=0.1, rate_500=0.1, rate_502=0.05, rate_503=0.05, rate_drop_before=0.05,
               rate_drop_after=0.05)


# ---------------------------------------------------------------- determinism
def test_fault_sequence_is_deterministic_for_a_seed(make_api):
    first = _outcomes(make_api(seed=3, faults=MIXED), 60)
    again = _outcomes(make_api(seed=3, faults=MIXED.as_dict()), 60)
    other = _outcomes(make_api(seed=4, faults=MIXED), 60)
    assert first == again
    assert first != other
    kinds = set(first)
    assert {201, 429, 500, "dropped"} <= kinds


def test_fault_counters_are_per_endpoint_and_reset_restarts_them(make_api):
    api = make_api(seed=11, faults=MIXED)
    track_only = _outcomes(api, 30)
    api.sb.reset()
    for _ in range(5):
        api.get("/events/list")      # other endpoints do not shift /users/track's sequence
    assert _outcomes(api, 30) == track_only
    log = api.sb.request_log()
    assert set(log["fault"].dropna()) <= {"429", "500", "502", "503", "drop_before", "drop_after"}


def test_faults_limited_to_endpoints(make_api):
    api = make_api(faults=Faults(rate_500=1.0, endpoints="/users/export/ids"))
    assert _outcomes(api, 3) == [201, 201, 201]
    assert api.post("/users/export/ids", {"external_ids": ["u1"],
                                          "fields_to_export": ["external_id"]})[0] == 500


# ---------------------------------------------------------------- each fault kind
@pytest.mark.parametrize("kind,status", [("429", 429), ("500", 500), ("502", 502), ("503", 503)])
def test_error_faults_apply_nothing(make_api, kind, status):
    api = make_api(faults={f"rate_{kind}": 1.0})
    code, body, headers = api.track(attributes=[{"external_id": "u", "a": 1}])
    assert code == status and "message" in body
    assert api.sb.profiles().empty and api.sb.data_points == 0
    assert api.sb.request_log()["fault"].tolist() == [kind]
    if kind == "429":
        assert headers["x-ratelimit-remaining"] == "0"


def test_drop_before_applies_nothing(make_api):
    api = make_api(faults=Faults(rate_drop_before=1.0))
    with pytest.raises(requests.ConnectionError):
        api.session.post(api.sb.url + "/users/track", timeout=10, json={
            "events": [{"external_id": "u", "name": "E", "time": T}]})
    assert api.sb.events().empty
    log = api.sb.request_log().iloc[0]
    assert log["fault"] == "drop_before" and log["note"].startswith("dropped before")


def test_drop_after_applies_then_closes_without_an_answer(make_api):
    api = make_api(faults=Faults(rate_drop_after=1.0))
    for _ in range(2):   # a blind retry of an event batch duplicates the events (§1.1 FAQ)
        with pytest.raises(requests.ConnectionError):
            api.session.post(api.sb.url + "/users/track", timeout=10, json={
                "events": [{"external_id": "u", "name": "E", "time": T}]})
    assert len(api.sb.events()) == 2
    assert api.sb.request_log()["status"].isna().all()


def test_slow_answers_are_delayed_then_applied(make_api):
    api = make_api(faults=Faults(rate_slow=1.0, slow_seconds=0.3))
    started = time.perf_counter()
    status, _, _ = api.track(attributes=[{"external_id": "u", "a": 1}])
    assert status == 201 and time.perf_counter() - started >= 0.3
    assert len(api.sb.profiles()) == 1


def test_set_faults_at_runtime(api):
    api.sb.set_faults(rate_503=1.0)
    assert api.track(attributes=[{"external_id": "u"}])[0] == 503
    api.sb.set_faults(None)
    assert api.track(attributes=[{"external_id": "u"}])[0] == 201
    assert api.sb.faults == Faults()


@pytest.mark.parametrize("bad", [{"rate_500": 1.5}, {"rate_500": 0.6, "rate_503": 0.6},
                                 {"rate_teapot": 0.1}, {"slow_seconds": -1}])
def test_invalid_fault_settings_raise_sandbox_error(bad):
    with pytest.raises(SandboxError):
        Faults.coerce(bad)


# ---------------------------------------------------------------- rate limits
def test_rate_limit_headers_and_429(make_api):
    api = make_api(rate_limits={"/users/track": (3, 30.0)})
    seen = []
    for _ in range(4):
        status, body, headers = api.track(attributes=[{"external_id": "u", "a": 1}])
        seen.append((status, headers["x-ratelimit-limit"], headers["x-ratelimit-remaining"]))
    assert seen == [(201, "3", "2"), (201, "3", "1"), (201, "3", "0"), (429, "3", "0")]
    assert body == {"message": "Rate Limited"}
    reset = int(headers["x-ratelimit-reset"])     # epoch seconds when the window ends
    assert time.time() + 25 <= reset <= time.time() + 32
    assert reset - 30 <= time.time()                # the window opened on the whole second before
    assert api.sb.request_log()["status"].tolist() == [201, 201, 201, 429]
    assert len(api.sb.profiles()) == 1 and api.sb.data_points == 3   # the 429 applied nothing


def test_rate_limit_window_rolls_over(api):
    api.sb.set_rate_limit("/users/track", 1, 1.0)
    # windows open on whole seconds: start just after one so both requests share a window
    time.sleep(1.02 - time.time() % 1.0)
    assert api.track(attributes=[{"external_id": "u"}])[0] == 201
    assert api.track(attributes=[{"external_id": "u"}])[0] == 429
    time.sleep(1.05)
    assert api.track(attributes=[{"external_id": "u"}])[0] == 201


def test_headers_are_lower_case_on_every_response(sb):
    conn = http.client.HTTPConnection("127.0.0.1", sb.port, timeout=10)
    for method, path, auth in (("POST", "/users/track", True), ("GET", "/events/list", True),
                               ("POST", "/users/track", False)):
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {sb.api_key}"
        conn.request(method, path, body=b'{"attributes": [{"external_id": "u"}]}'
                     if method == "POST" else None, headers=headers)
        resp = conn.getresponse()
        resp.read()
        names = [k for k, _ in resp.getheaders()]
        assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= set(names)
    conn.close()


def test_listing_endpoints_share_one_budget(sb, api):
    sb.set_rate_limit("/custom_attributes", 2, 60)
    assert api.get("/custom_attributes")[0] == 200
    assert api.get("/events/list")[0] == 200
    assert api.get("/custom_attributes")[0] == 429
    assert api.track(attributes=[{"external_id": "u"}])[0] == 201


def test_default_limits_are_brazes(api):
    assert api.track(attributes=[{"external_id": "u"}])[2]["x-ratelimit-limit"] == "3000"
    assert api.get("/events/list")[2]["x-ratelimit-limit"] == "1000"
    assert api.post("/users/export/ids", {"external_ids": ["u"], "fields_to_export": [
        "external_id"]})[2]["x-ratelimit-limit"] == "250"


# ---------------------------------------------------------------- HTTP behaviour
def test_keep_alive_serves_many_requests_on_one_connection(sb):
    conn = http.client.HTTPConnection("127.0.0.1", sb.port, timeout=10)
    headers = {"Authorization": f"Bearer {sb.api_key}", "Content-Type": "application/json"}
    conn.request("POST", "/users/track", body=b'{"attributes":[{"external_id":"a"}]}',
                 headers=headers)
    first = conn.getresponse()
    first.read()
    sock = conn.sock
    for i in range(5):
        conn.request("POST", "/users/track", body=b'{"attributes":[{"external_id":"a"}]}',
                     headers=headers)
        resp = conn.getresponse()
        assert resp.status == 201 and resp.getheader("Content-Length") == str(len(resp.read()))
    assert conn.sock is sock   # never reconnected
    conn.close()


def test_concurrent_clients_lose_nothing(sb):
    def worker(k):
        session = requests.Session()
        for j in range(10):
            session.post(sb.url + "/users/track", timeout=10,
                         headers={"Authorization": f"Bearer {sb.api_key}"},
                         json={"attributes": [{"external_id": f"w{k}-{j}-{i}", "n": {"inc": 1}}
                                              for i in range(75)],
                               "events": [{"external_id": "shared", "name": "E", "time": T}]})

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sb.profiles()) == 6 * 10 * 75 + 1
    assert len(sb.events()) == 60
    assert sb.data_points == 6 * 10 * 76


def test_close_is_idempotent_and_frees_the_port():
    sb = BrazeSandbox()
    port = sb.port
    sb.close()
    sb.close()
    again = BrazeSandbox(port=port)
    again.close()


def test_port_in_use_is_a_sandbox_error(sb):
    with pytest.raises(SandboxError, match="cannot listen"):
        BrazeSandbox(port=sb.port)
