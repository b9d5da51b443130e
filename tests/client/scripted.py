"""A scripted Braze for the client tests, behind `MockTransport`: no server, no sockets.

Each request gets the next queued `Step` for its path (or the path's default answer): a status,
headers and body, a delay, or a failure the network would give (``drop``: the connection
dropped after sending; ``refuse``: nothing listening). A delay longer than the request's read
timeout ends as a timeout, as on a socket. With ``window`` set it counts requests the way Braze
does, with the sandbox's own `FixedWindow`. What the client's real HTTP transport does with
sockets is tested in test_transport.py against the sandbox."""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qs

from toolkit.braze.ratelimit import FixedWindow
from toolkit.braze.transport import MockTransport, Request, Response
from toolkit.errors import Outcome, TransportError

API_KEY = "test-key-7f3a9c2e-5b1d-4e8f-a6c0-1d2e3f4a5b6c"


@dataclass
class Seen:
    method: str
    path: str
    query: dict
    headers: dict
    body: Any
    at: float


@dataclass
class Step:
    status: int = 201
    body: Any = field(default_factory=lambda: {"message": "success"})
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    refuse: bool = False


class ScriptedBraze:
    """Answers each request with the next scripted `Step` for its path (or the default)."""

    url = "http://127.0.0.1:9"   # loopback, so clients need no workspace name; never connected

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._scripts: dict[str, deque] = {}
        self._defaults: dict[str, Callable[[Seen], Step]] = {}
        self._lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.window: tuple[int, float] | None = None
        self._meter: FixedWindow | None = None
        self.answered_429 = 0
        self.transport = MockTransport(self.answer)

    def script(self, path: str, *steps: Step) -> None:
        self._scripts.setdefault(path, deque()).extend(steps)

    def default(self, path: str, answer: Callable[[Seen], Step]) -> None:
        self._defaults[path] = answer

    def requests_to(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    def answer(self, request: Request) -> Response:
        try:
            body = request.json()
        except ValueError:
            body = request.content.decode("utf-8", "replace")
        seen = Seen(request.method, request.path, parse_qs(request.query),
                    dict(request.headers), body, time.monotonic())
        with self._lock:
            self.seen.append(seen)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            step = self._next(seen)
            if step.refuse:
                raise TransportError("could not connect (refused or unreachable)",
                                     outcome=Outcome.NOT_APPLIED, kind="connection")
            read = request.timeout[1] if isinstance(request.timeout, tuple) else request.timeout
            if step.delay and read is not None and step.delay > read:
                time.sleep(read)
                raise TransportError("no answer within the timeout (the request was sent)",
                                     outcome=Outcome.UNKNOWN, kind="timeout")
            if step.delay:
                time.sleep(step.delay)
            if step.drop:
                raise TransportError("the connection dropped before Braze answered",
                                     outcome=Outcome.UNKNOWN, kind="connection")
            return Response.of(step.status, step.body, step.headers)
        finally:
            with self._lock:
                self.active -= 1

    def _next(self, seen: Seen) -> Step:
        with self._lock:
            queue = self._scripts.get(seen.path)
            if queue:
                return queue.popleft()
            if self.window is not None:
                if self._meter is None or (self._meter.limit, self._meter.period) != self.window:
                    self._meter = FixedWindow(*self.window)
                allowed, headers = self._meter.take()
                if not allowed:
                    self.answered_429 += 1
                    return Step(429, {"message": "Rate Limited"}, dict(headers))
                return Step(201, {"message": "success"}, dict(headers))
        answer = self._defaults.get(seen.path)
        return answer(seen) if answer else Step()
