"""The retry policy on its own, no server: what each status means, when a failure is resent,
how long the client waits (exponential, capped, jittered, reproducible)."""
from __future__ import annotations

import pytest

from toolkit.braze.retries import RetryPolicy, retry_after, status_outcome
from toolkit.errors import ConfigError, Outcome, TransportError


@pytest.mark.parametrize("status,outcome,retry", [
    (200, Outcome.ACKNOWLEDGED, False), (201, Outcome.ACKNOWLEDGED, False),
    (202, Outcome.ACKNOWLEDGED, False), (429, Outcome.NOT_APPLIED, True),
    (423, Outcome.NOT_APPLIED, True), (500, Outcome.NOT_APPLIED, True),
    (503, Outcome.NOT_APPLIED, True), (302, Outcome.REJECTED, False),
    (400, Outcome.REJECTED, False), (401, Outcome.REJECTED, False),
    (404, Outcome.REJECTED, False), (413, Outcome.REJECTED, False)])
def test_each_status_has_an_outcome(status, outcome, retry):
    assert status_outcome(status) == (outcome, retry)


def test_a_failure_is_resent_unless_fatal_or_unknown_for_events():
    policy = RetryPolicy(2)
    unknown = TransportError("dropped", outcome="unknown", kind="connection")
    refused = TransportError("refused", outcome="not_applied", kind="connection")
    fatal = TransportError("TLS", outcome="not_applied", kind="fatal")
    assert policy.may_resend(refused, retry_unknown=False)
    assert policy.may_resend(unknown, retry_unknown=True)
    assert not policy.may_resend(unknown, retry_unknown=False)
    assert not policy.may_resend(fatal, retry_unknown=True)
    assert [policy.allows(n) for n in (1, 2, 3)] == [True, True, False]


def test_backoff_doubles_up_to_the_cap_with_reproducible_jitter():
    first = RetryPolicy(8, (1.0, 8.0), seed=5)
    delays = [first.delay(n) for n in range(1, 7)]
    for n, delay in enumerate(delays, start=1):
        full = min(8.0, 2 ** (n - 1))
        assert full / 2 <= delay <= full
    again = RetryPolicy(8, (1.0, 8.0), seed=5)
    assert [again.delay(n) for n in range(1, 7)] == delays


def test_a_429_waits_for_the_reset_then_retry_after_then_backoff():
    policy = RetryPolicy(3, (0.5, 30.0), seed=1)
    assert 2.0 <= policy.pause_after_429({"X-RateLimit-Reset": "2"}, 1) <= 3.0
    assert 4.0 <= policy.pause_after_429({"Retry-After": "4"}, 1) <= 5.0
    assert 7.0 <= policy.pause_after_429({"x-ratelimit-reset": "1000"}, 1,
                                         until_reset=lambda reset: 7.0) <= 8.0
    assert 0.25 <= policy.pause_after_429({}, 1) <= 1.5
    assert retry_after({"retry-after": "soon"}) is None


def test_negative_retries_are_a_config_error():
    with pytest.raises(ConfigError):
        RetryPolicy(-1)
