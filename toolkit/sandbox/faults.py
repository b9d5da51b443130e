"""Deterministic fault injection and per-endpoint rate limiting for the sandbox.

A request's fate is drawn from ``hash(seed, endpoint, n)`` where ``n`` counts that endpoint's
requests, never from the clock, so a seed replays the same sequence of faults. Rate limits use
fixed windows with Braze's ``x-ratelimit-*`` headers (braze-api.md §1.7).
"""
from __future__ import annotations

import hashlib
import math
import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from toolkit.errors import SandboxError

__all__ = ["Faults", "FaultPlan", "RateLimiter", "DEFAULT_RATE_LIMITS", "ENDPOINT_BUCKETS"]

# Order matters: a request's uniform draw falls into the first band whose cumulative rate covers it.
FAULT_KINDS = ("429", "500", "502", "503", "slow", "drop_before", "drop_after")


@dataclass(frozen=True)
class Faults:
    """Fractions of requests (0..1 each, at most 1 in total) answered with a fault.

    ``rate_drop_before`` closes the connection before the request is applied, ``rate_drop_after``
    after it was applied; ``rate_slow`` delays the answer by ``slow_seconds``. ``endpoints`` limits
    injection to those paths (None: every endpoint).
    """

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_502: float = 0.0
    rate_503: float = 0.0
    rate_slow: float = 0.0
    slow_seconds: float = 2.0
    rate_drop_before: float = 0.0
    rate_drop_after: float = 0.0
    endpoints: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        rates = [getattr(self, f"rate_{k}") for k in FAULT_KINDS]
        for kind, rate in zip(FAULT_KINDS, rates):
            if not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
                raise SandboxError(f"fault rate_{kind} must be a number from 0 to 1, got {rate!r}",
                                   hint="pass fractions such as 0.05 for 5% of requests")
        if sum(rates) > 1 + 1e-9:
            raise SandboxError(f"fault rates add up to {sum(rates):.3f}, more than 1",
                               hint="lower some rates so that their sum is at most 1")
        if not isinstance(self.slow_seconds, (int, float)) or self.slow_seconds < 0:
            raise SandboxError(f"slow_seconds must be a non-negative number, got "
                               f"{self.slow_seconds!r}")
        if self.endpoints is not None:
            only = (self.endpoints,) if isinstance(self.endpoints, str) else tuple(self.endpoints)
            object.__setattr__(self, "endpoints", only)

    @classmethod
    def coerce(cls, value: "Faults | Mapping[str, Any] | None") -> "Faults":
        if value is None:
            return cls()
        if isinstance(value, Faults):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise SandboxError(f"unknown fault setting(s) {unknown}",
                                   hint=f"use {sorted(known)}")
            return cls(**value)
        raise SandboxError(f"faults must be a Faults or a dict, got {type(value).__name__}")

    def as_dict(self) -> dict:
        return asdict(self)


class FaultPlan:
    """Draws each request's fate from the seed and a per-endpoint counter."""

    def __init__(self, seed: int, faults: Faults) -> None:
        self.seed = seed
        self._lock = threading.Lock()
        self._counters: dict[str, int] = {}
        self.set(faults)

    def set(self, faults: Faults) -> None:
        bands, total = [], 0.0
        for kind in FAULT_KINDS:
            total += getattr(faults, f"rate_{kind}")
            bands.append((total, kind))
        self.faults = faults
        self._bands = bands if total > 0 else []

    def reset(self) -> None:
        with self._lock:
            self._counters.clear()

    def draw(self, endpoint: str) -> str | None:
        """The fault for this endpoint's next request, or None."""
        if not self._bands:
            return None
        only = self.faults.endpoints
        if only is not None and endpoint not in only:
            return None
        with self._lock:
            n = self._counters.get(endpoint, 0)
            self._counters[endpoint] = n + 1
        return fate(self.seed, endpoint, n, self._bands)


def fate(seed: int, endpoint: str, n: int, bands: list[tuple[float, str]]) -> str | None:
    digest = hashlib.blake2b(f"{seed}|{endpoint}|{n}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2.0**64
    for bound, kind in bands:
        if u < bound:
            return kind
    return None


# Braze's documented defaults (§1.7, §4.1, §6): limit, period in seconds.
DEFAULT_RATE_LIMITS: dict[str, tuple[int, float]] = {
    "/users/track": (3000, 3.0),                 # "3,000 requests per three seconds"
    "/users/export/ids": (250, 60.0),            # workspaces onboarded on/after 2024-08-22
    "/custom_attributes": (1000, 3600.0),        # 1,000/h shared with /events/list (RL-INC)
    "/events/list": (1000, 3600.0),
    "/partners/segment/cohorts": (250_000, 3600.0),
    "/partners/segment/cohorts/users": (250_000, 3600.0),
    "*": (250_000, 3600.0),                      # default for unlisted endpoints (LIMITS)
}
# Endpoints sharing one budget (Braze counts them together).
ENDPOINT_BUCKETS = {
    "/custom_attributes": "listing",
    "/events/list": "listing",
    "/partners/segment/cohorts": "cohorts",
    "/partners/segment/cohorts/users": "cohorts",
}


class _Window:
    __slots__ = ("limit", "period", "start", "used")

    def __init__(self, limit: int | None, period: float) -> None:
        self.limit, self.period, self.start, self.used = limit, period, 0.0, 0


class RateLimiter:
    """Fixed-window request budgets per endpoint (or shared bucket)."""

    def __init__(self, limits: Mapping[str, Any] | None = None) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        for endpoint, (limit, period) in DEFAULT_RATE_LIMITS.items():
            self.set(endpoint, limit, period)
        for endpoint, value in (limits or {}).items():
            if value is None:
                self.set(endpoint, None, 1.0)
            else:
                self.set(endpoint, *value)

    @staticmethod
    def bucket(endpoint: str) -> str:
        return ENDPOINT_BUCKETS.get(endpoint, endpoint)

    def set(self, endpoint: str, limit: int | None, period_s: float) -> None:
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise SandboxError(f"rate limit for {endpoint} must be a positive integer or None, "
                               f"got {limit!r}")
        if not isinstance(period_s, (int, float)) or period_s <= 0:
            raise SandboxError(f"rate-limit period for {endpoint} must be positive seconds, got "
                               f"{period_s!r}")
        with self._lock:
            self._windows[self.bucket(endpoint)] = _Window(limit, float(period_s))

    def take(self, endpoint: str, *, consume: bool = True) -> tuple[bool, list[tuple[str, str]]]:
        """Spend one request; (allowed, x-ratelimit-* headers)."""
        key = self.bucket(endpoint)
        now = time.time()
        with self._lock:
            w = self._windows.get(key) or self._windows["*"]
            if w.limit is None:
                return True, []
            if now >= w.start + w.period:
                # A window opens on a whole second (or on a multiple of a sub-second period), so
                # it ends exactly at the whole UTC second x-ratelimit-reset names (braze-api.md
                # §1.7); a window opened mid-second would make clients that honour the header
                # wait up to 1 s longer than needed.
                grain = min(1.0, w.period)
                w.start, w.used = now - (now % grain), 0
            allowed = w.used < w.limit
            if allowed and consume:
                w.used += 1
            remaining = w.limit - w.used
            reset = math.ceil(w.start + w.period)
        return allowed, [("x-ratelimit-limit", str(w.limit)),
                         ("x-ratelimit-remaining", str(max(remaining, 0))),
                         ("x-ratelimit-reset", str(reset))]

    def exhausted_headers(self, endpoint: str) -> list[tuple[str, str]]:
        """Headers for an injected 429: the window looks spent."""
        _, headers = self.take(endpoint, consume=False)
        return [(k, "0" if k == "x-ratelimit-remaining" else v) for k, v in headers]
