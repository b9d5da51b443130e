"""The client against the real local sandbox (toolkit.sandbox): round trips, partial errors,
cohorts, the sandbox's rate limit and injected faults, and what an unknown outcome means."""
from __future__ import annotations

import time

import pytest

from toolkit.braze.client import BrazeClient
from toolkit.errors import BrazeAPIError, BrazeAuthError, BrazeConnectionError

sandbox = pytest.importorskip("toolkit.sandbox.server")

FAST = dict(backoff=(0.01, 0.05), seed=3, timeout=5)


@pytest.fixture
def sb():
    with sandbox.BrazeSandbox(seed=11) as server:
        yield server


@pytest.fixture
def client(sb):
    with BrazeClient.for_sandbox(sb, **FAST) as c:
        yield c


def attrs(i, **values):
    return {"external_id": f"user-{i}", "_update_existing_only": False, **values}


def test_round_trip_with_a_partial_error(sb, client):
    result = client.track(
        attributes=[attrs(1, vip_customer=True), {"vip_customer": True}, attrs(2, score=4.5)],
        events=[{"external_id": "user-1", "name": "Audience Entered",
                 "time": "2026-11-01T10:00:00Z", "properties": {"audience_key": "vip_customer"}}])
    assert result.status == 201
    assert list(result.rejected) == [("attributes", 1)]
    assert "required" in result.rejected[("attributes", 1)]
    out = client.export_ids(["user-1", "user-2", "ghost"],
                            fields_to_export=["external_id", "custom_attributes", "custom_events"])
    users = {u["external_id"]: u for u in out["users"]}
    assert users["user-1"]["custom_attributes"]["vip_customer"] is True
    assert users["user-2"]["custom_attributes"]["score"] == 4.5
    assert [e["count"] for e in users["user-1"]["custom_events"]] == [1]
    assert out["invalid_user_ids"] == ["ghost"]
    assert {a["name"] for a in client.custom_attributes()} >= {"vip_customer", "score"}
    assert client.events_list() == ["Audience Entered"]


def test_export_ids_chunks_against_the_sandbox_limit(sb, client):
    client.track(attributes=[attrs(i, n=i) for i in range(60)])
    out = client.export_ids([f"user-{i}" for i in range(60)], fields_to_export=["external_id"])
    assert out["requests"] == 2 and len(out["users"]) == 60


def test_cohorts_through_the_sandbox(sb, client):
    client.track(attributes=[attrs(i) for i in range(3)])
    cohorts = client.cohort()
    cohorts.create("c-vip", "vip_customer")
    cohorts.update_users("c-vip", add=["user-0", "user-1", "user-2"])
    cohorts.update_users("c-vip", remove=["user-1"])
    row = sb.cohorts().set_index("cohort_id").loc["c-vip"]
    assert row["name"] == "vip_customer" and row["size"] == 2


def test_wrong_key_is_an_auth_error(sb):
    with BrazeClient(sb.url, "not-the-key", env_file=None, **FAST) as c:
        with pytest.raises(BrazeAuthError) as info:
            c.track(attributes=[attrs(1)])
    assert info.value.status == 401 and "another Braze instance" in str(info.value)


def test_the_sandbox_rate_limit_is_respected(sb, client):
    sb.set_rate_limit("/users/track", 10, 1.0)
    started = time.monotonic()
    results = dict(client.track_batches([{"attributes": [attrs(i)]} for i in range(25)]))
    elapsed = time.monotonic() - started
    assert all(not isinstance(r, BrazeAPIError) for r in results.values())
    assert elapsed >= 1.0                       # 25 requests need at least three 10-request windows
    assert len(sb.profiles()) == 25
    assert client.stats.rate_limited <= 2 * client.max_workers


def test_injected_5xx_are_retried_to_completion(sb, client):
    sb.set_faults(rate_500=0.15, rate_502=0.05, rate_503=0.1)
    results = dict(client.track_batches([{"attributes": [attrs(i, n=i)]} for i in range(40)]))
    assert all(r.status == 201 for r in results.values())
    assert client.stats.server_errors > 0 and client.stats.retries >= client.stats.server_errors
    assert len(sb.profiles()) == 40


def test_injected_429s_pause_and_complete(sb, client):
    sb.set_rate_limit("/users/track", 1000, 0.5)     # short windows keep the reset near
    sb.set_faults(rate_429=0.15)
    results = dict(client.track_batches([{"attributes": [attrs(i, n=i)]} for i in range(16)]))
    assert all(r.status == 201 for r in results.values())
    assert client.stats.rate_limited > 0
    assert len(sb.profiles()) == 16


def test_dropped_event_batches_are_unknown_and_not_duplicated(sb, client):
    sb.set_faults(rate_drop_after=0.3)
    batches = [{"events": [{"external_id": f"user-{i}", "name": "Audience Entered",
                            "time": "2026-11-01T10:00:00Z"}]} for i in range(30)]
    results = dict(client.track_batches(batches))
    unknown = [i for i, r in results.items() if isinstance(r, BrazeConnectionError)]
    assert unknown and all(results[i].outcome == "unknown" for i in unknown)
    events = sb.events()
    # drop_after applies the batch and then hangs up: exactly one copy of every event, none resent
    assert len(events) == 30
    assert len(sb.request_log()) == 30
