"""Token buckets: burst and sustained rate, corrections from x-ratelimit-* headers, pauses shared
by every thread, and end-to-end accuracy against a server enforcing a fixed window."""
from __future__ import annotations

import threading
import time

import pytest

from toolkit.braze.ratelimit import RateLimiter, TokenBucket, parse_rate_headers
from toolkit.errors import ConfigError


class FakeClock:
    """Monotonic time that only moves when a waiter sleeps (Condition.wait is patched)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def drain(bucket: TokenBucket, clock: FakeClock, n: int) -> float:
    """Take n tokens on a fake clock; returns fake seconds spent."""
    start = clock.now
    cond = bucket._cond
    original = cond.wait

    def fake_wait(timeout=None):
        clock.now += timeout
        return False

    cond.wait = fake_wait
    try:
        for _ in range(n):
            bucket.acquire()
    finally:
        cond.wait = original
    return clock.now - start


def test_burst_then_sustained_rate():
    clock = FakeClock()
    bucket = TokenBucket(10, 2.0, clock=clock)
    assert drain(bucket, clock, 10) == 0          # a full bucket bursts
    spent = drain(bucket, clock, 20)               # then 5 per second
    assert spent == pytest.approx(4.0, rel=0.01)


def test_remaining_header_caps_tokens_and_zero_pauses_until_reset():
    clock = FakeClock()
    bucket = TokenBucket(100, 1.0, clock=clock)
    bucket.observe(limit=None, remaining=3, reset_in=None)
    assert drain(bucket, clock, 3) == 0
    bucket.observe(limit=100, remaining=0, reset_in=2.5)
    assert bucket.paused_for() == pytest.approx(2.5)
    spent = drain(bucket, clock, 1)
    assert spent >= 2.5


def test_a_lower_limit_header_lowers_the_burst_but_a_higher_one_does_not_raise_it():
    clock = FakeClock()
    bucket = TokenBucket(100, 1.0, clock=clock)
    bucket.observe(limit=500, remaining=None, reset_in=None)
    assert bucket.limit == 100
    bucket.observe(limit=10, remaining=None, reset_in=None)
    assert bucket.limit == 10
    assert drain(bucket, clock, 10) == 0
    clock.now += 60
    assert drain(bucket, clock, 10) == 0 and bucket._tokens < 1   # never more than 10 at once


def test_requests_in_flight_count_against_what_remains():
    clock = FakeClock()
    bucket = TokenBucket(100, 1.0, clock=clock)
    for _ in range(3):
        bucket.acquire()
    bucket.release()          # one answer came back: remaining 2, but 2 more are on the wire
    bucket.observe(limit=100, remaining=2, reset_in=0.7)
    assert bucket.paused_for() == pytest.approx(0.7)


def test_pause_blocks_every_thread():
    bucket = TokenBucket(1000, 1.0)
    bucket.pause_for(0.3)
    started = time.monotonic()
    finished = []

    def worker():
        bucket.acquire()
        finished.append(time.monotonic() - started)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(finished) == 4 and min(finished) >= 0.29


def test_threads_share_one_budget():
    bucket = TokenBucket(20, 0.5)   # 20 burst, then 40/s
    started = time.monotonic()

    def worker():
        for _ in range(15):
            bucket.acquire()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    # 60 tokens: 20 at once, 40 more at 40/s
    assert time.monotonic() - started >= 0.95


def test_headers_are_read_case_insensitively():
    assert parse_rate_headers({"X-RateLimit-Limit": "3000", "x-ratelimit-remaining": "12",
                               "X-RATELIMIT-RESET": "1700000000"}) == (3000, 12, 1700000000.0)
    assert parse_rate_headers({"x-ratelimit-limit": "lots"}) == (None, None, None)


def test_reset_is_epoch_seconds_or_a_small_delta():
    bucket = TokenBucket(1, 1.0, wall=lambda: 1_700_000_000.0)
    assert bucket.seconds_until_reset(1_700_000_004.5) == pytest.approx(4.5)
    assert bucket.seconds_until_reset(1_699_999_990) == 0
    assert bucket.seconds_until_reset(7) == 7


def test_endpoint_budgets_and_sharing():
    limiter = RateLimiter({"/users/track": (50, 1.0), "/users/export/ids": None})
    assert limiter.limit_for("/users/track") == (50, 1.0)
    assert limiter.limit_for("/users/export/ids") is None
    assert limiter.bucket("/events/list") is limiter.bucket("/custom_attributes")
    assert limiter.limit_for("/events/list") == (1000, 3600.0)
    assert limiter.limit_for("/partners/segment/cohorts/users") == (250_000, 3600.0)
    assert limiter.limit_for("/users/delete") == (250_000, 3600.0)


@pytest.mark.parametrize("bad", [(0, 1), (10, 0), ("x", 1), 5])
def test_bad_limits_are_config_errors(bad):
    with pytest.raises(ConfigError):
        RateLimiter({"/users/track": bad})


def test_client_keeps_to_the_configured_rate(fake, make_client):
    client = make_client(rate_limit=(10, 0.5), max_workers=4)
    payloads = [{"attributes": [{"external_id": f"u{i}"}]} for i in range(30)]
    started = time.monotonic()
    assert len(list(client.track_batches(payloads))) == 30
    # 10 burst, then 20 more at 20/s
    assert time.monotonic() - started >= 0.95
    times = sorted(s.at for s in fake.seen)
    # never more than 10 + 20*window requests in any window after the burst
    for i, t in enumerate(times):
        in_window = sum(1 for u in times[i:] if u - t < 0.25)
        assert in_window <= 10 + 0.25 * 20 + 1


def test_server_headers_pace_concurrent_workers_with_few_429s(fake, make_client):
    fake.window = (6, 0.3)
    client = make_client(rate_limit=(1000, 1.0), max_workers=3)
    started = time.monotonic()
    results = list(client.track_batches(
        {"attributes": [{"external_id": f"u{i}"}]} for i in range(24)))
    assert all(r.status == 201 for _, r in results)
    assert time.monotonic() - started >= 3 * 0.3 - 0.05
    # only requests already on the wire when the window ran out can meet a 429
    assert fake.answered_429 <= 4 * 2


def test_server_headers_slow_the_client_down_without_429s(fake, make_client):
    fake.window = (5, 0.4)         # server: 5 requests per 0.4 s fixed window
    client = make_client(rate_limit=(1000, 1.0), max_workers=1)
    started = time.monotonic()
    results = [client.track(attributes=[{"external_id": f"u{i}"}]) for i in range(16)]
    elapsed = time.monotonic() - started
    assert all(r.status == 201 for r in results)
    assert fake.answered_429 == 0 and client.stats.rate_limited == 0
    assert elapsed >= 3 * 0.4 - 0.05          # 16 requests need at least 4 windows
    assert client.rate_limit_for("/users/track")[0] == 5


def test_the_sandbox_counts_with_the_same_limiter_in_fixed_windows():
    from toolkit.braze.ratelimit import FixedWindow

    wall = [1000.2]
    limiter = RateLimiter({"/users/track": (2, 1.0), "/custom_attributes": None},
                          meter=FixedWindow, wall=lambda: wall[0])
    window = limiter.bucket("/users/track")
    assert [window.take()[0] for _ in range(3)] == [True, True, False]
    allowed, headers = window.take(consume=False)
    assert dict(headers) == {"x-ratelimit-limit": "2", "x-ratelimit-remaining": "0",
                             "x-ratelimit-reset": "1001"}      # the window opened on the second
    wall[0] = 1001.0
    assert window.take()[0]
    assert limiter.bucket("/custom_attributes") is None
    assert limiter.bucket("/events/list") is limiter.bucket("/custom_attributes")
    limiter.set("/users/track", 5, 3.0)
    assert limiter.limit_for("/users/track") == (5, 3.0)
