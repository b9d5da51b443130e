"""When `BrazeClient` resends a request, and how long it waits first: the retry policy as data.

What each answer means (braze-api.md §1.8, §1.9): 2xx is acknowledged; 429, 423 and 5xx applied
nothing ("no messages will be sent") and are worth retrying; any other status is a refusal that
resending unchanged cannot fix. A transport failure is retried unless it is fatal, or its outcome
is unknown and the request must not be sent twice (events and purchases are not idempotent).
"""
from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping

from toolkit.braze.ratelimit import parse_rate_headers
from toolkit.errors import ConfigError, Outcome, TransportError

__all__ = ["RetryPolicy", "status_outcome", "retry_after"]

# status -> (outcome, worth retrying); anything not listed by range below is a refusal
_RETRYABLE_STATUSES = {423, 429}


def status_outcome(status: int) -> tuple[Outcome, bool]:
    """(what Braze did with the request, whether resending may help) for an HTTP status."""
    if 200 <= status < 300:
        return Outcome.ACKNOWLEDGED, False
    if status in _RETRYABLE_STATUSES or status >= 500:
        return Outcome.NOT_APPLIED, True
    return Outcome.REJECTED, False


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The ``Retry-After`` header in seconds (None when absent or not a number)."""
    for key, value in headers.items():
        if str(key).lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


class RetryPolicy:
    """``max_retries`` resends with exponential backoff between ``backoff`` = (first, longest)
    seconds and full jitter on the upper half; ``seed`` makes the jitter reproducible."""

    def __init__(self, max_retries: int = 6, backoff: tuple[float, float] = (0.5, 30.0),
                 seed: int | None = None) -> None:
        if int(max_retries) < 0:
            raise ConfigError("max_retries cannot be negative", field="max_retries")
        self.max_retries = int(max_retries)
        self.backoff = (float(backoff[0]), float(backoff[1]))
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RetryPolicy(max_retries={self.max_retries}, backoff={self.backoff})"

    def allows(self, attempts: int) -> bool:
        """Whether another attempt may follow ``attempts`` made so far."""
        return attempts <= self.max_retries

    def may_resend(self, failure: TransportError, retry_unknown: bool) -> bool:
        """Whether a transport failure is worth another attempt at all (budget aside)."""
        return failure.kind != "fatal" and (failure.outcome != Outcome.UNKNOWN or retry_unknown)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base, cap = self.backoff
        delay = min(cap, base * (2 ** (attempt - 1)))
        return delay / 2 + self.jitter(delay / 2)

    def jitter(self, upto: float) -> float:
        with self._lock:
            return self._rng.uniform(0.0, max(0.0, upto))

    def pause_after_429(self, headers: Mapping[str, str], attempt: int,
                        until_reset: Callable[[float], float] | None = None) -> float:
        """Seconds until sending may resume after a 429: the reset header (read by
        ``until_reset``, a bucket's `seconds_until_reset`), else ``Retry-After``, else backoff;
        plus a little jitter so waiting workers do not all resume at once."""
        _, _, reset = parse_rate_headers(headers)
        after = retry_after(headers)
        if reset is not None and until_reset is not None:
            wait_s = until_reset(reset)
        elif reset is not None:
            wait_s = reset if reset < 1e9 else max(0.0, reset - time.time())
        elif after is not None:
            wait_s = after
        else:
            wait_s = self.delay(attempt)
        return wait_s + self.jitter(min(1.0, 0.05 + 0.1 * wait_s))
