"""The cut-off between `BrazeClient` and the network: a `Transport` sends one `Request` and returns
its `Response`, or raises `TransportError` saying whether Braze may have applied the request
(the same seam as httpx's transports).

- `RequestsTransport` — HTTP(S) through one ``requests.Session``: the real thing;
- `SandboxTransport` — hands the request to a `BrazeSandbox` in this process, no sockets (the
  wizard, notebooks and tests); the sandbox's faults arrive as the failures a network gives;
- `MockTransport` — answers with a function of the request: client tests need no server.

A transport never retries, waits or reads a status: that is the client's (see `retries`,
`ratelimit`). Reprs show neither headers nor bodies, so no key can leak through them.
"""
from __future__ import annotations

import json
import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3.exceptions as u3
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from toolkit.braze.instances import is_loopback
from toolkit.errors import Outcome, TransportError

__all__ = ["Request", "Response", "Transport", "RequestsTransport", "SandboxTransport",
           "MockTransport"]

_DROPPED = "the connection dropped before Braze answered"
_TIMED_OUT = "no answer within the timeout (the request was sent)"
_REFUSED = "could not connect (refused or unreachable)"


@dataclass(frozen=True, repr=False)
class Request:
    """One HTTP request as the client built it: ``url`` includes the query string, ``content``
    the encoded body, ``timeout`` seconds (or (connect, read))."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    content: bytes = b""
    timeout: float | tuple[float, float] | None = None
    follow_redirects: bool = False   # only for URLs that carry no key (a presigned download)

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def query(self) -> str:
        return urlsplit(self.url).query

    def json(self) -> Any:
        """The body decoded (None when empty)."""
        return json.loads(self.content) if self.content else None

    def __repr__(self) -> str:  # never the headers: they hold the bearer key
        return f"Request({self.method} {self.url}, {len(self.content)} bytes)"


@dataclass(frozen=True, repr=False)
class Response:
    """One HTTP answer: status, headers (case-insensitive), raw content and seconds taken."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    content: bytes = b""
    elapsed: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.headers, CaseInsensitiveDict):
            object.__setattr__(self, "headers", CaseInsensitiveDict(self.headers))

    @classmethod
    def of(cls, status: int, body: Any = None, headers: Mapping[str, Any] | None = None,
           ) -> Response:
        """A JSON answer (``body`` None: empty; a str is sent as it is)."""
        content = (b"" if body is None else body.encode() if isinstance(body, str) else
                   json.dumps(body).encode())
        return cls(status, {"Content-Type": "application/json",
                            **{k: str(v) for k, v in (headers or {}).items()}}, content)

    def json(self) -> Any:
        """The body decoded; ValueError when it is not JSON."""
        return json.loads(self.content)

    def __repr__(self) -> str:
        return f"Response({self.status}, {len(self.content)} bytes)"


class Transport(ABC):
    """Sends one request and returns its response; raises `TransportError` when there is none."""

    @abstractmethod
    def send(self, request: Request) -> Response:
        """The answer to ``request``, or `TransportError` (with its `Outcome`) if none came."""

    def close(self) -> None:
        """Release connections (nothing to release by default)."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RequestsTransport(Transport):
    """HTTP(S) to ``endpoint`` through one pooled ``requests.Session`` (``pool_size``
    connections)."""

    def __init__(self, endpoint: str, *, pool_size: int = 4) -> None:
        self.endpoint = endpoint
        self._session = requests.Session()
        # urllib3 must not retry on its own: only the client knows whether a resend is safe.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(pool_size, 4), max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        # trust_env would let a ~/.netrc entry replace the bearer header; proxies and CA bundles
        # from the environment are still honoured, explicitly, for remote hosts.
        self._session.trust_env = False
        if not is_loopback(urlsplit(endpoint).hostname):
            self._session.proxies.update(requests.utils.get_environ_proxies(endpoint))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            self._session.verify = bundle

    def send(self, request: Request) -> Response:
        try:
            answer = self._session.request(request.method, request.url,
                                           data=request.content or None,
                                           headers=dict(request.headers), timeout=request.timeout,
                                           allow_redirects=request.follow_redirects)
        except requests.RequestException as exc:
            outcome, kind, description = _classify(exc)
            raise TransportError(description, outcome=outcome, kind=kind) from None
        return Response(answer.status_code, answer.headers, answer.content,
                        answer.elapsed.total_seconds())

    def close(self) -> None:
        self._session.close()

    def __repr__(self) -> str:
        return f"RequestsTransport({self.endpoint})"


class SandboxTransport(Transport):
    """Hands each request to a `toolkit.sandbox.BrazeSandbox` in this process: no sockets, no
    HTTP parsing, the same answers. A dropped connection or an answer slower than the read
    timeout raises the `TransportError` the network would; a closed sandbox refuses."""

    def __init__(self, sandbox: Any) -> None:
        self.sandbox = sandbox

    def send(self, request: Request) -> Response:
        if self.sandbox.closed:
            raise TransportError(_REFUSED, outcome=Outcome.NOT_APPLIED, kind="connection")
        started = time.monotonic()
        answer = self.sandbox.respond(request.method, request.path, request.query,
                                      CaseInsensitiveDict(request.headers), request.content,
                                      read_timeout=_read_timeout(request.timeout))
        if answer.timed_out:
            raise TransportError(_TIMED_OUT, outcome=Outcome.UNKNOWN, kind="timeout")
        if answer.status is None:
            raise TransportError(_DROPPED, outcome=Outcome.UNKNOWN, kind="connection")
        return Response(answer.status, dict(answer.headers), answer.content(),
                        time.monotonic() - started)

    def __repr__(self) -> str:
        return f"SandboxTransport({self.sandbox.url}, in-process)"


class MockTransport(Transport):
    """Answers each request with ``handler(request)``: a `Response`, or a raised
    `TransportError` to stand for a network failure."""

    def __init__(self, handler: Callable[[Request], Response]) -> None:
        self.handler = handler

    def send(self, request: Request) -> Response:
        response = self.handler(request)
        if not isinstance(response, Response):
            raise TypeError(f"a MockTransport handler must return a Response, not "
                            f"{type(response).__name__}")
        return response

    def __repr__(self) -> str:
        return f"MockTransport({getattr(self.handler, '__name__', type(self.handler).__name__)})"


def _read_timeout(timeout: float | tuple[float, float] | None) -> float | None:
    return timeout[1] if isinstance(timeout, tuple) else timeout


def _classify(exc: requests.RequestException) -> tuple[Outcome, str, str]:
    """(outcome, kind, description) of a failure of requests; kind is timeout|connection|fatal."""
    name = type(exc).__name__
    if isinstance(exc, requests.exceptions.SSLError):
        return Outcome.NOT_APPLIED, "fatal", "TLS handshake failed (certificate or protocol)"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return Outcome.NOT_APPLIED, "connection", "connecting timed out"
    if isinstance(exc, requests.exceptions.Timeout):
        return Outcome.UNKNOWN, "timeout", _TIMED_OUT
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidHeader,
                        requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema)):
        return Outcome.NOT_APPLIED, "fatal", f"invalid request ({name})"
    if isinstance(exc, requests.exceptions.ConnectionError) and _failed_before_sending(exc):
        return Outcome.NOT_APPLIED, "connection", _REFUSED
    return Outcome.UNKNOWN, "connection", _DROPPED


def _failed_before_sending(exc: BaseException) -> bool:
    early = (u3.NewConnectionError, u3.ConnectTimeoutError, ConnectionRefusedError,
             socket.gaierror)
    name_error = getattr(u3, "NameResolutionError", None)
    if name_error is not None:
        early += (name_error,)
    stack: list[Any] = [exc]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, early):
            return True
        if isinstance(item, BaseException):
            stack.extend([getattr(item, "reason", None), item.__cause__, item.__context__,
                          *[a for a in item.args if isinstance(a, BaseException)]])
    return False
