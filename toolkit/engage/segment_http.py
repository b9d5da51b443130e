"""One GET with retries for Segment's HTTP APIs (the Public API and the Profile API): network
errors, 429 and 5xx are retried with exponential backoff (``Retry-After`` honoured, at most a
minute); the caller reads the final answer, whatever its status."""
from __future__ import annotations

import time
from typing import Any, Callable

import requests

__all__ = ["get_with_retries"]


def _delay(resp: requests.Response, fallback: float) -> float:
    wait = resp.headers.get("Retry-After")
    try:
        delay = float(wait) if wait else fallback
    except ValueError:
        delay = fallback
    return min(delay, 60.0)


def get_with_retries(session: requests.Session, url: str, *, params: dict, timeout: float,
                     max_retries: int, backoff: float, stats: dict[str, int],
                     unreachable: Callable[[requests.RequestException], Exception],
                     headers: dict[str, str] | None = None) -> requests.Response:
    """The answer to ``GET url`` after at most ``max_retries`` retries, counted in ``stats``
    (``requests``, ``retries``, ``429s``); ``unreachable(exc)`` is raised when the last try
    could not reach the server."""
    options: dict[str, Any] = {"params": params, "timeout": timeout}
    if headers is not None:
        options["headers"] = headers
    for attempt in range(max_retries + 1):
        stats["requests"] += 1
        try:
            resp = session.get(url, **options)
        except requests.RequestException as exc:
            if attempt < max_retries:
                stats["retries"] += 1
                time.sleep(backoff * 2 ** attempt)
                continue
            raise unreachable(exc) from None
        if resp.status_code == 429 or resp.status_code >= 500:
            stats["429s"] += resp.status_code == 429
            if attempt < max_retries:
                stats["retries"] += 1
                time.sleep(_delay(resp, backoff * 2 ** attempt))
                continue
        return resp
    raise AssertionError("unreachable")  # pragma: no cover
