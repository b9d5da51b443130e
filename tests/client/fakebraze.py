"""A scripted fake Braze for the client tests: a threaded HTTP server on 127.0.0.1 that answers
with queued statuses/headers/bodies, can delay, drop the connection after reading the request,
count concurrency, and enforce a fixed-window rate limit with ``x-ratelimit-*`` headers."""
from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

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


class FakeBraze:
    """Answers each request with the next scripted `Step` for its path (or the default)."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._scripts: dict[str, deque] = {}
        self._defaults: dict[str, Callable[[Seen], Step]] = {}
        self._lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.window: tuple[int, float] | None = None
        self._window_start = 0.0
        self._window_used = 0
        self.answered_429 = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):  # keep pytest output clean
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                parts = urlsplit(self.path)
                seen = Seen(self.command, parts.path, parse_qs(parts.query), dict(self.headers),
                            body, time.monotonic())
                with fake._lock:
                    fake.seen.append(seen)
                    fake.active += 1
                    fake.max_active = max(fake.max_active, fake.active)
                try:
                    step = fake._next(seen)
                    if step.delay:
                        time.sleep(step.delay)
                    if step.drop:
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    data = b"" if step.body is None else (
                        step.body.encode() if isinstance(step.body, str) else
                        json.dumps(step.body).encode())
                    self.send_response(step.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in step.headers.items():
                        self.send_header(key, str(value))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    with fake._lock:
                        fake.active -= 1

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.02}, daemon=True)

    def script(self, path: str, *steps: Step) -> None:
        self._scripts.setdefault(path, deque()).extend(steps)

    def default(self, path: str, answer: Callable[[Seen], Step]) -> None:
        self._defaults[path] = answer

    def requests_to(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    def _next(self, seen: Seen) -> Step:
        with self._lock:
            queue = self._scripts.get(seen.path)
            if queue:
                return queue.popleft()
            if self.window is not None:
                limit, period = self.window
                now = time.time()
                if now >= self._window_start + period:
                    self._window_start, self._window_used = now, 0
                reset = self._window_start + period
                if self._window_used >= limit:
                    self.answered_429 += 1
                    return Step(429, {"message": "Rate Limited"},
                                {"x-ratelimit-limit": limit, "x-ratelimit-remaining": 0,
                                 "x-ratelimit-reset": f"{reset:.3f}"})
                self._window_used += 1
                headers = {"X-RateLimit-Limit": limit,
                           "X-RateLimit-Remaining": limit - self._window_used,
                           "X-RateLimit-Reset": f"{reset:.3f}"}
                return Step(201, {"message": "success"}, headers)
        answer = self._defaults.get(seen.path)
        return answer(seen) if answer else Step()

    def __enter__(self) -> "FakeBraze":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    """A loopback port with nothing listening (connection refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port
