"""Deterministic fault injection for the sandbox.

A request's fate is drawn from ``hash(seed, endpoint, n)`` where ``n`` counts that endpoint's
requests, never from the clock, so a seed replays the same sequence of faults. Rate limits are
`toolkit.braze.ratelimit.RateLimiter` with `FixedWindow` meters, as Braze counts them.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from toolkit.errors import SandboxError

__all__ = ["Faults", "FaultPlan"]

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
