"""Retry matrix and outcome classification: what is resent, what is not, and what Braze may
have applied when a request fails."""
from __future__ import annotations

import logging
import re
import time

import pytest

from .scripted import Step
from toolkit.errors import BrazeAuthError, BrazeBadRequest, BrazeServerError, BrazeConnectionError, BrazeRateLimited

ATTRS = [{"external_id": "u1", "vip": True}]
EVENTS = [{"external_id": "u1", "name": "Audience Entered", "time": "2026-01-01T00:00:00Z"}]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_retried_then_succeed(fake, make_client, status):
    fake.script("/users/track", Step(status, {"message": "oops"}), Step(status, None),
                Step(201, {"message": "success", "attributes_processed": 1}))
    client = make_client()
    result = client.track(attributes=ATTRS, events=EVENTS)
    assert result.status == 201 and result.attempts == 3 and result.outcome == "acknowledged"
    assert len(fake.requests_to("/users/track")) == 3
    assert client.stats.server_errors == 2 and client.stats.retries == 2


def test_exhausted_server_errors_are_known_not_applied(fake, make_client):
    fake.script("/users/track", *[Step(503, {"message": "busy"})] * 3)
    client = make_client(max_retries=2)
    with pytest.raises(BrazeServerError) as info:
        client.track(events=EVENTS)
    err = info.value
    assert err.status == 503 and err.outcome == "not_applied" and err.attempts == 3
    assert err.body == {"message": "busy"} and err.response.status == 503
    assert "busy" in str(err)


@pytest.mark.parametrize("status,cls", [(400, BrazeBadRequest), (401, BrazeAuthError),
                                        (403, BrazeAuthError), (404, BrazeBadRequest),
                                        (413, BrazeBadRequest)])
def test_client_errors_are_never_retried(fake, make_client, status, cls):
    fake.script("/users/track", Step(status, {"message": "nope"}))
    client = make_client()
    with pytest.raises(cls) as info:
        client.track(attributes=ATTRS)
    assert len(fake.requests_to("/users/track")) == 1
    assert info.value.outcome == "rejected" and info.value.status == status
    assert client.stats.retries == 0


def test_429_waits_for_the_reset_header_then_succeeds(fake, make_client):
    fake.script("/users/track", Step(429, {"message": "Rate Limited"},
                                     {"X-RateLimit-Reset": f"{time.time() + 0.6:.3f}",
                                      "X-RateLimit-Remaining": "0"}))
    client = make_client()
    started = time.monotonic()
    result = client.track(events=EVENTS)
    waited = time.monotonic() - started
    assert result.status == 201 and result.attempts == 2
    assert 0.55 <= waited < 2.5
    first, second = fake.requests_to("/users/track")
    assert second.at - first.at >= 0.55
    assert client.stats.rate_limited == 1 and client.stats.retries == 1


def test_429_without_headers_backs_off_and_exhausts_as_not_applied(fake, make_client):
    fake.script("/users/track", *[Step(429, {"message": "Rate Limited"})] * 4)
    client = make_client(max_retries=3)
    with pytest.raises(BrazeRateLimited) as info:
        client.track(events=EVENTS)
    assert info.value.outcome == "not_applied" and info.value.attempts == 4
    assert client.stats.rate_limited == 4


def test_a_429_pauses_every_worker(fake, make_client):
    reset_in = 0.6
    marks = {}

    def answer(seen):
        if "t429" not in marks:
            marks["t429"] = time.monotonic()
            return Step(429, {"message": "Rate Limited"},
                        {"x-ratelimit-reset": f"{time.time() + reset_in:.3f}",
                         "x-ratelimit-remaining": "0"})
        return Step(201, {"message": "success"}, delay=0.02)

    fake.default("/users/track", answer)
    client = make_client(max_workers=4)
    payloads = [{"attributes": [{"external_id": f"u{i}", "n": i}]} for i in range(12)]
    results = dict(client.track_batches(payloads))
    assert sorted(results) == list(range(12))
    assert all(r.status == 201 for r in results.values())
    t429 = marks["t429"]
    # requests already on the wire when the 429 came back may land just after it; none later
    quiet = [s.at - t429 for s in fake.seen if 0.1 < s.at - t429 < reset_in - 0.05]
    assert quiet == []


def test_connection_drop_after_sending_is_unknown_and_not_resent_for_events(fake, make_client):
    fake.script("/users/track", Step(drop=True))
    client = make_client()
    with pytest.raises(BrazeConnectionError) as info:
        client.track(attributes=ATTRS, events=EVENTS)
    err = info.value
    assert err.outcome == "unknown" and err.attempts == 1
    assert "not resent automatically" in str(err) and "before resending" in err.hint
    assert len(fake.requests_to("/users/track")) == 1
    assert client.stats.unknown_outcomes == 1


def test_connection_drop_is_resent_for_attribute_only_batches(fake, make_client):
    fake.script("/users/track", Step(drop=True))
    client = make_client()
    result = client.track(attributes=ATTRS)
    assert result.status == 201 and result.attempts == 2 and result.unknown_attempts == 1
    assert len(fake.requests_to("/users/track")) == 2


def test_retry_unknown_can_be_forced_either_way(fake, make_client):
    client = make_client()
    fake.script("/users/track", Step(drop=True))
    with pytest.raises(BrazeConnectionError):
        client.track(attributes=ATTRS, retry_unknown=False)
    fake.script("/users/track", Step(drop=True))
    assert client.track(events=EVENTS, retry_unknown=True).unknown_attempts == 1


def test_read_timeout_is_unknown(fake, make_client):
    fake.script("/users/track", Step(delay=0.5))
    client = make_client(timeout=(2, 0.15))
    with pytest.raises(BrazeConnectionError) as info:
        client.track(events=EVENTS)
    assert info.value.outcome == "unknown" and client.stats.timeouts == 1


def test_read_timeout_retried_for_attributes(fake, make_client):
    fake.script("/users/track", Step(delay=0.5))
    client = make_client(timeout=(2, 0.15))
    result = client.track(attributes=ATTRS)
    assert result.attempts == 2 and result.unknown_attempts == 1


def test_connection_refused_is_not_applied_and_retried(fake, make_client):
    fake.default("/users/track", lambda seen: Step(refuse=True))
    client = make_client(max_retries=2)
    with pytest.raises(BrazeConnectionError) as info:
        client.track(events=EVENTS, retry_unknown=False)
    err = info.value
    assert err.outcome == "not_applied" and err.attempts == 3
    assert client.stats.connection_errors == 3 and client.stats.retries == 2
    assert "reachable" in err.hint


def test_unknown_then_not_applied_stays_unknown(fake, make_client):
    fake.script("/users/track", Step(drop=True), *[Step(503)] * 2)
    client = make_client(max_retries=2)
    with pytest.raises(BrazeServerError) as info:
        client.track(attributes=ATTRS)
    assert info.value.outcome == "unknown"


def test_202_queued_is_success(fake, make_client):
    fake.script("/users/track", Step(202, {"message": "queued"}))
    result = make_client().track(attributes=ATTRS)
    assert result.status == 202 and result.queued and result.ok


def test_jitter_is_reproducible_with_a_seed(fake, make_client, caplog):
    def delays(seed):
        fake.script("/users/track", *[Step(500)] * 3)
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="toolkit.braze"):
            make_client(seed=seed, backoff=(0.02, 0.1)).track(attributes=ATTRS)
        return re.findall(r"retrying in ([\d.]+)s", caplog.text)

    first, again, other = delays(3), delays(3), delays(4)
    assert len(first) == 3 and first == again and first != other
