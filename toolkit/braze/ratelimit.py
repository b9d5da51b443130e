"""Rate limiting for Braze, both sides: which budget each endpoint draws from, and a meter per budget.

One `RateLimiter` maps endpoints to budgets (limits below, shared budgets) and keeps one meter per
budget: a `TokenBucket` on the client, which paces sending, or a `FixedWindow` in the sandbox,
which counts requests the way Braze does and writes the ``x-ratelimit-*`` headers.

Braze limits are per workspace and per endpoint group (reference/braze-api.md §1.7, §6):
``/users/track`` 3,000 requests / 3 s; ``/users/export/ids`` 250 / min; ``/custom_attributes``,
``/events``, ``/events/list`` and ``/purchases/product_list`` share 1,000 / h; the partner cohort
endpoints 250,000 / h outside the workspace budget; anything else 250,000 / h.

A bucket refills continuously at ``limit / period`` and holds at most ``limit`` tokens. Braze's
``x-ratelimit-*`` headers correct it: the server's *remaining* count, less the requests this
client still has in flight, caps the local tokens (other jobs may share the workspace); a lower
*limit* lowers the burst; and when nothing remains — or on a 429 — every thread using the bucket
pauses until the reset time. Braze does not say how long its window is, so a header never changes
the refill rate: remaining/reset already pace the sender window by window.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable, Mapping

from toolkit.braze.limits import LIMITS
from toolkit.errors import ConfigError

__all__ = ["TokenBucket", "FixedWindow", "RateLimiter", "DEFAULT_LIMITS", "parse_rate_headers"]

# Braze's budgets (braze-api.md §1.7, §6), as `BrazeLimits` holds them
DEFAULT_LIMITS: Mapping[str, tuple[int, float]] = LIMITS.rate_limits

# endpoints that draw from another endpoint's budget
_SHARED_WITH: dict[str, str] = {
    "/events": "/custom_attributes",
    "/events/list": "/custom_attributes",
    "/purchases/product_list": "/custom_attributes",
    "/partners/segment/cohorts/users": "/partners/segment/cohorts",
}


class TokenBucket:
    """``limit`` requests per ``period`` seconds, shared by every thread that calls `acquire`."""

    def __init__(self, limit: int, period: float, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        if int(limit) < 1 or float(period) <= 0:
            raise ConfigError(f"a rate limit needs limit >= 1 and period > 0, got {limit}/{period}")
        self.limit = int(limit)
        self.period = float(period)
        self.configured = (self.limit, self.period)
        self._clock = clock
        self._wall = wall
        self._cond = threading.Condition()
        self._tokens = float(self.limit)
        self._stamp = clock()
        self._paused_until = 0.0
        self._in_flight = 0

    @property
    def rate(self) -> float:
        """Tokens per second: the configured rate (a lower header limit only shrinks the burst)."""
        return self.configured[0] / self.period

    def _refill(self, now: float) -> None:
        start = max(self._stamp, self._paused_until)
        if now > start:
            self._tokens = min(float(self.limit), self._tokens + (now - start) * self.rate)
        self._stamp = max(self._stamp, now)

    def acquire(self) -> float:
        """Take one token, sleeping as long as needed; returns the seconds waited."""
        start = self._clock()
        with self._cond:
            while True:
                now = self._clock()
                self._refill(now)
                if now < self._paused_until:
                    delay = self._paused_until - now
                elif self._tokens >= 1.0:
                    self._tokens -= 1.0
                    self._in_flight += 1
                    return self._clock() - start
                else:
                    delay = (1.0 - self._tokens) / self.rate
                # Condition.wait releases the lock so other threads can observe headers meanwhile.
                self._cond.wait(timeout=max(delay, 0.0005))

    def release(self) -> None:
        """The request of an `acquire` got its answer (or failed): it is no longer in flight."""
        with self._cond:
            self._in_flight = max(0, self._in_flight - 1)

    def pause_until(self, deadline: float) -> None:
        """Stop every caller until the monotonic ``deadline``; tokens restart from empty."""
        with self._cond:
            self._refill(self._clock())
            if deadline > self._paused_until:
                self._paused_until = deadline
                self._tokens = 0.0
            self._cond.notify_all()

    def paused_for(self) -> float:
        """Seconds left in the current pause (0 when not paused)."""
        with self._cond:
            return max(0.0, self._paused_until - self._clock())

    def pause_for(self, seconds: float) -> None:
        self.pause_until(self._clock() + max(0.0, seconds))

    def observe(self, limit: int | None, remaining: int | None, reset_in: float | None) -> None:
        """Correct the bucket from a response's ``x-ratelimit-*`` values (reset as seconds from
        now). Only ever slows down: the configured limit is a ceiling the server cannot raise.
        Call `release` for that request first, so it is not counted as in flight."""
        with self._cond:
            now = self._clock()
            self._refill(now)
            if limit is not None and 0 < limit < self.limit:
                self.limit = int(limit)
                self._tokens = min(self._tokens, float(self.limit))
            if remaining is not None:
                # requests still in flight will spend some of what the server says remains
                left = remaining - self._in_flight
                self._tokens = min(self._tokens, float(max(left, 0)))
                if left <= 0 and reset_in is not None and reset_in > 0:
                    deadline = now + reset_in
                    if deadline > self._paused_until:
                        self._paused_until = deadline
                        self._tokens = 0.0
            self._cond.notify_all()

    def seconds_until_reset(self, reset_header: float) -> float:
        """Braze's reset is UTC epoch seconds; small values are read as seconds from now."""
        if reset_header < 1e9:
            return max(0.0, reset_header)
        return max(0.0, reset_header - self._wall())

    def __repr__(self) -> str:
        return f"TokenBucket({self.limit}/{self.period:g}s)"


def parse_rate_headers(headers: Mapping[str, str]) -> tuple[int | None, int | None, float | None]:
    """(limit, remaining, reset) from ``x-ratelimit-*`` headers, matched case-insensitively;
    missing or malformed values are None."""
    lowered = {str(k).lower(): v for k, v in headers.items()}

    def number(name: str, kind):
        raw = lowered.get(name)
        if raw is None:
            return None
        try:
            return kind(float(str(raw).strip()))
        except ValueError:
            return None

    return (number("x-ratelimit-limit", int), number("x-ratelimit-remaining", int),
            number("x-ratelimit-reset", float))


class FixedWindow:
    """Braze's own count of one budget (what the sandbox enforces): at most ``limit`` requests per
    fixed window of ``period`` seconds, answered with ``x-ratelimit-*`` headers (braze-api.md §1.7)."""

    def __init__(self, limit: int, period: float, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        if int(limit) < 1 or float(period) <= 0:
            raise ConfigError(f"a rate limit needs limit >= 1 and period > 0, got {limit}/{period}")
        self.limit, self.period = int(limit), float(period)
        self._wall = wall
        self._lock = threading.Lock()
        self._start, self._used = 0.0, 0

    def take(self, *, consume: bool = True) -> tuple[bool, list[tuple[str, str]]]:
        """Spend one request (unless ``consume`` is False): (allowed, x-ratelimit-* headers)."""
        now = self._wall()
        with self._lock:
            if now >= self._start + self.period:
                # A window opens on a whole second (or on a multiple of a sub-second period), so
                # it ends exactly at the whole UTC second x-ratelimit-reset names (braze-api.md
                # §1.7); a window opened mid-second would make clients that honour the header
                # wait up to 1 s longer than needed.
                grain = min(1.0, self.period)
                self._start, self._used = now - (now % grain), 0
            allowed = self._used < self.limit
            if allowed and consume:
                self._used += 1
            remaining = self.limit - self._used
            reset = math.ceil(self._start + self.period)
        return allowed, [("x-ratelimit-limit", str(self.limit)),
                         ("x-ratelimit-remaining", str(max(remaining, 0))),
                         ("x-ratelimit-reset", str(reset))]

    def exhausted_headers(self) -> list[tuple[str, str]]:
        """Headers for an injected 429: the window looks spent."""
        _, headers = self.take(consume=False)
        return [(k, "0" if k == "x-ratelimit-remaining" else v) for k, v in headers]

    def __repr__(self) -> str:
        return f"FixedWindow({self.limit}/{self.period:g}s)"


class RateLimiter:
    """The budgets of one workspace: one meter per endpoint budget, created on first use.

    ``limits`` maps an endpoint path (or ``"*"`` for the rest) to ``(limit, period_s)``, or to
    None to not limit it at all. ``meter`` is `TokenBucket` (a client pacing itself) or
    `FixedWindow` (the sandbox counting like Braze)."""

    def __init__(self, limits: "Mapping[str, tuple[int, float] | None] | None" = None, *,
                 meter: type = TokenBucket, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        merged: dict[str, tuple[int, float] | None] = dict(DEFAULT_LIMITS)
        for path, value in (limits or {}).items():
            merged[_budget(path) if path != "*" else "*"] = _checked(path, value)
        self._limits = merged
        self._meter = meter
        self._clock = clock
        self._wall = wall
        self._buckets: dict[str, Any] = {}
        self._lock = threading.Lock()

    def bucket(self, path: str) -> Any:
        """The meter an endpoint draws from (None when that endpoint is unlimited)."""
        budget = _budget(path)
        with self._lock:
            if budget not in self._buckets:
                limit = self._limits.get(budget, self._limits["*"])
                self._buckets[budget] = (self._meter(*limit, clock=self._clock, wall=self._wall)
                                         if limit else None)
            return self._buckets[budget]

    def set(self, path: str, limit: int | None, period_s: float = 1.0) -> None:
        """Replace the budget an endpoint draws from (``limit`` None: unlimited); it restarts."""
        budget = _budget(path) if path != "*" else "*"
        value = _checked(path, None if limit is None else (limit, period_s))
        with self._lock:
            self._limits[budget] = value
            self._buckets.pop(budget, None)

    def limit_for(self, path: str) -> tuple[int, float] | None:
        bucket = self.bucket(path)
        return (bucket.limit, bucket.period) if bucket else None


def _budget(path: str) -> str:
    path = "/" + path.strip("/")
    return _SHARED_WITH.get(path, path)


def _checked(path: str, value):
    if value is None:
        return None
    try:
        limit, period = value
        limit, period = int(limit), float(period)
    except (TypeError, ValueError):
        raise ConfigError(f"rate limit for {path} must be (requests, seconds), got {value!r}",
                          field="rate_limit") from None
    if limit < 1 or period <= 0:
        raise ConfigError(f"rate limit for {path} must be positive, got {value!r}", field="rate_limit")
    return (limit, period)
