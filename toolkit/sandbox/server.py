"""`BrazeSandbox`: a threaded loopback HTTP server that answers like Braze's REST API.

Endpoints: ``POST /users/track``, ``POST /users/export/ids``, ``GET /custom_attributes``,
``GET /events/list``, ``POST /partners/segment/cohorts``, ``POST /partners/segment/cohorts/users``,
``GET /segments/list``, ``GET /segments/details``, ``GET /segments/data_series`` and
``POST /users/export/segment`` (its file is served at ``GET /sandbox/exports/<prefix>.zip``).
Sandbox-only: ``POST /sandbox/segments`` builds a segment, as an analyst does in Braze's dashboard
(Braze has no API for it), and ``POST /sandbox/segments/estimate`` runs Braze's daily size
estimate. A key's permissions can be narrowed (`set_permissions`): an endpoint
outside them answers 403, as Braze does.
Stdlib only on the request path (http.server + json); pandas is used only by the inspection methods.
`BrazeSandbox.respond` answers one request whatever carried it: the HTTP server here, or
`toolkit.braze.transport.SandboxTransport` in the same process (no sockets). Braze semantics live
in :mod:`toolkit.sandbox.store`; faults in :mod:`toolkit.sandbox.faults`; rate limits are
:mod:`toolkit.braze.ratelimit`'s, with fixed windows as Braze counts them.
"""
from __future__ import annotations

import collections
import hashlib
import json
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qs

from toolkit.braze.limits import LIMITS, PERMISSIONS  # the sandbox-only endpoints need none
from toolkit.braze.ratelimit import FixedWindow, RateLimiter
from toolkit.errors import SandboxError, ToolkitError
from toolkit.sandbox.faults import Faults, FaultPlan
from toolkit.sandbox.segments import SegmentBook, member_key
from toolkit.sandbox.store import KEEP, KEPT_COUNTS
from toolkit.sandbox.timeparse import parse_time

__all__ = ["BrazeSandbox", "Faults", "Answer"]

_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized",
            403: "Forbidden", 404: "Not Found", 413: "Payload Too Large", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
_FAULT_BODIES = {
    "429": (429, {"message": "Rate Limited"}),   # §1.9 "429 Rate Limited: Over rate limit."
    "500": (500, {"message": "Internal Server Error"}),
    "502": (502, {"message": "Bad Gateway"}),
    "503": (503, {"message": "Service Unavailable"}),
}
_MAX_BODY = 8 * 1024 * 1024
_LOG_LIMIT = 500_000
_PARTNER = ("/partners/segment/cohorts", "/partners/segment/cohorts/users")
# endpoint -> HTTP method
_ROUTES = {
    "/users/track": "POST",
    "/users/export/ids": "POST",
    "/custom_attributes": "GET",
    "/events/list": "GET",
    "/partners/segment/cohorts": "POST",
    "/partners/segment/cohorts/users": "POST",
    "/segments/list": "GET",
    "/segments/details": "GET",
    "/segments/data_series": "GET",
    "/users/export/segment": "POST",
    "/sandbox/segments": "POST",
    "/sandbox/segments/estimate": "POST",
}
_EXPORTS = "/sandbox/exports/"
# endpoints that read every user's attributes and events: answered 400 by keep="counts"
_READS_USERS = frozenset({"/users/export/segment", "/sandbox/segments",
                          "/sandbox/segments/estimate"})


@dataclass
class Answer:
    """The sandbox's answer to one request: status (None: the connection is dropped without an
    answer), JSON body, headers, the injected fault, and whether the caller's read timeout
    passed first."""

    status: int | None
    body: Any
    headers: list[tuple[str, str]]
    fault: str | None = None
    timed_out: bool = False
    raw: bytes | None = None                  # a file answered as it is (an export's ZIP)
    content_type: str = "application/json; charset=utf-8"

    def content(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return b"" if self.body is None else json.dumps(self.body, separators=(",", ":")).encode()


def _fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address) -> None:
        # A client that vanishes mid-request (a killed apply, a dropped keep-alive) is part of
        # what the sandbox exists to exercise, not a server fault: no traceback for it.

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive; every answer carries Content-Length
    server_version = "BrazeSandbox"
    disable_nagle_algorithm = True     # one write per answer, no Nagle/delayed-ACK stall
    timeout = 120                      # idle keep-alive connections end eventually

    def setup(self) -> None:
        super().setup()
        self.server.sandbox._connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sandbox._connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # the request log is the record
        pass

    def do_POST(self) -> None:
        self.server.sandbox._serve(self, "POST")

    def do_GET(self) -> None:
        self.server.sandbox._serve(self, "GET")

    def do_PUT(self) -> None:
        self.server.sandbox._serve(self, "PUT")

    def do_DELETE(self) -> None:
        self.server.sandbox._serve(self, "DELETE")


class BrazeSandbox:
    """A local Braze-compatible REST server holding one in-memory workspace.

    ``with BrazeSandbox() as sb:`` starts it on a free loopback port (``sb.url``, ``sb.api_key``)
    and stops it on exit. Inspect what Braze would hold with :meth:`profiles`, :meth:`events`,
    :meth:`cohorts`, :meth:`request_log` and :attr:`data_points`; inject faults with
    :meth:`set_faults`; tune budgets with :meth:`set_rate_limit`. ``read_delay`` (seconds, also
    :meth:`set_read_delay`) makes a stored event show in ``/users/export/ids`` only that long
    after it arrived, as Braze's eventual consistency does (attributes show at once);
    :meth:`rotate_api_key` replaces the accepted REST key, as revoking a key and creating a new
    one in Braze's dashboard does.

    Segments: :meth:`create_segment` builds one from `toolkit.braze.filters` definitions, as an
    analyst does in Braze's dashboard; :meth:`estimate_segments` runs Braze's daily size
    estimate (off by up to ``estimate_error`` × all users, as Braze's estimates are);
    ``export_delay`` is how long a ``/users/export/segment`` file takes to become ready.
    ``permissions`` (also :meth:`set_permissions`) narrows what the API key may call (None: all).

    ``keep`` says what the workspace holds. ``"users"`` (the default): every user's identifiers,
    profile fields, attributes, events and purchases, about 1.5 KB of Python objects a user.
    ``"counts"``, for benchmarks at 10M users (about 120 bytes a user): every request is
    authorised, rate limited, validated, refused and billed exactly as with ``"users"`` — the
    same code decides — and the users' existence, emails and phones, attribute types, event
    names, cohort members and data points are kept exactly, but not attribute values or event
    and purchase records: ``/users/export/ids`` and segment building answer 400, and
    :meth:`profiles`, :meth:`events`, :meth:`purchases` and the segment methods raise
    `SandboxError`. :meth:`summary` works in both.
    """

    def __init__(self, api_key: str | None = None, *, port: int = 0, seed: int = 0,
                 max_objects_per_array: int = LIMITS.objects_per_array,
                 combined_limit: int | None = LIMITS.combined_objects,
                 rate_limits: Mapping[str, tuple[int | None, float] | None] | None = None,
                 faults: Faults | Mapping[str, Any] | None = None,
                 partner_api_key: str | None = None, client_secret: str | None = None,
                 array_length_limit: int = LIMITS.array_length, read_delay: float = 0.0,
                 permissions: "Iterable[str] | None" = None, estimate_error: float = 0.01,
                 export_delay: float = 0.3, keep: str = "users") -> None:
        if keep not in KEEP:
            raise SandboxError(f"keep must be one of {', '.join(map(repr, KEEP))}, got {keep!r}",
                               hint="'users' keeps every user (the default); 'counts' only what "
                                    "validation and billing need, for benchmarks at 10M users")
        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
            raise SandboxError("api_key must be a non-empty string or None (generated)")
        if not isinstance(max_objects_per_array, int) or max_objects_per_array < 1:
            raise SandboxError(f"max_objects_per_array must be a positive integer, got "
                               f"{max_objects_per_array!r}")
        if combined_limit is not None and (not isinstance(combined_limit, int) or combined_limit < 1):
            raise SandboxError(f"combined_limit must be a positive integer or None, got "
                               f"{combined_limit!r}", hint="use 50 for CY 24-25 MAU contracts")
        self.api_key = api_key or f"sandbox-{secrets.token_hex(12)}"
        self.partner_api_key = partner_api_key or f"partner-{secrets.token_hex(8)}"
        self.client_secret = client_secret or f"secret-{secrets.token_hex(8)}"
        self.seed = seed
        self._auth = f"Bearer {self.api_key}"
        self.keep = keep
        self._store = KEEP[keep](seed=seed, max_objects_per_array=max_objects_per_array,
                            combined_limit=combined_limit, array_length_limit=array_length_limit,
                            read_delay=_checked_delay(read_delay))
        self._segments = SegmentBook(self._store, estimate_error=_checked_error(estimate_error),
                                     export_delay=_checked_export_delay(export_delay))
        self._permissions = _checked_permissions(permissions)
        self._rate_limits = dict(rate_limits or {})
        for endpoint in self._rate_limits:
            _check_endpoint(endpoint)
        self._limiter = self._new_limiter()
        self._faults = FaultPlan(seed, _checked(Faults.coerce(faults)))
        self._log: collections.deque = collections.deque(maxlen=_LOG_LIMIT)
        self._log_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        try:
            self._server = _Server(("127.0.0.1", port), _Handler)
        except OSError as exc:
            raise SandboxError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}",
                               hint="pick another --port, or 0 for any free port") from None
        self._server.sandbox = self
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"braze-sandbox-{self.port}", daemon=True)
        self._thread.start()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "BrazeSandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and drop open keep-alive connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        for conn in list(self._connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    stop = close

    # ------------------------------------------------------------------ settings
    @property
    def key_fingerprint(self) -> str:
        return _fingerprint(self.api_key)

    @property
    def faults(self) -> Faults:
        return self._faults.faults

    def set_faults(self, faults: Faults | Mapping[str, Any] | None = None, **rates: Any) -> Faults:
        """Replace the fault settings (a Faults, a dict, keyword rates, or None for no faults)."""
        if faults is not None and rates:
            raise SandboxError("pass either a Faults/dict or keyword rates, not both")
        chosen = _checked(Faults.coerce(rates if rates else faults))
        self._faults.set(chosen)
        return chosen

    def set_rate_limit(self, endpoint: str, limit: int | None, period_s: float = 1.0) -> None:
        """Budget ``limit`` requests per ``period_s`` seconds for an endpoint (None: unlimited).

        ``/custom_attributes`` and ``/events/list`` share one budget, as do the two cohort
        endpoints, as in Braze.
        """
        _check_endpoint(endpoint)
        _checked_limit(endpoint, limit, period_s)
        self._limiter.set(endpoint, limit, period_s)
        self._rate_limits[endpoint] = (limit, period_s) if limit is not None else None

    @property
    def read_delay(self) -> float:
        """Seconds before a stored event shows in ``/users/export/ids``."""
        return self._store.read_delay

    def set_read_delay(self, seconds: float) -> None:
        """Show stored events in ``/users/export/ids`` only ``seconds`` after they arrived
        (0: at once). Braze asks for up to 5 minutes between a write and a dependent read."""
        self._store.read_delay = _checked_delay(seconds)

    def rotate_api_key(self, new_key: str | None = None) -> str:
        """Accept ``new_key`` (default: a new generated one) instead of the current REST API
        key, which is refused from now on with 401, as after revoking it in Braze. Returns the
        new key. The workspace and everything it holds stay as they are."""
        if new_key is not None and (not isinstance(new_key, str) or not new_key.strip()):
            raise SandboxError("new_key must be a non-empty string or None (generated)")
        self.api_key = new_key or f"sandbox-{secrets.token_hex(12)}"
        self._auth = f"Bearer {self.api_key}"
        return self.api_key

    def set_permissions(self, permissions: "Iterable[str] | None") -> None:
        """Let the API key call only endpoints whose permission is listed (None: every one);
        others answer 403, as Braze does for a key without the permission."""
        self._permissions = _checked_permissions(permissions)

    # ------------------------------------------------------------------ segments
    def create_segment(self, name: str, filters: Any, *, tags: Iterable[str] = (),
                       text_description: str | None = None, description: str | None = None,
                       analytics_tracking: bool = True) -> str:
        """Build a segment the way an analyst does in Braze's dashboard and return its id.

        ``filters``: a `toolkit.braze.filters.Filter`, its ``to_dict()``, or a list of them
        (joined with AND). Braze's ``description`` of it is the filters as the dashboard words
        them, unless ``description`` gives another text. A new segment has no size estimate
        until the daily job runs (:meth:`estimate_segments`)."""
        self._need_users("create_segment()")
        return self._segments.create(name, filters, tags=tags, text_description=text_description,
                                     description=description,
                                     analytics_tracking=analytics_tracking)

    def update_segment(self, segment_id: str, filters: Any, *,
                       description: str | None = None) -> None:
        """Change a segment's filters, as editing it in the dashboard does."""
        self._segments.update(segment_id, filters, description=description)

    def estimate_segments(self, at: Any = None) -> dict[str, int]:
        """Run Braze's daily segment-size estimate now (or for the day of ``at``): one point
        per segment in ``/segments/data_series``. Returns segment id → estimated size."""
        self._need_users("estimate_segments()")
        return self._segments.estimate(at)

    def segments(self):
        """One row per segment: id, name, filter, description, latest estimate and its day."""
        import pandas as pd  # lazy: pandas only for inspection; the request path is stdlib

        with self._store.lock:
            rows = []
            for s in self._segments.segments.values():
                _, (day, size) = max(s["series"].items()) if s["series"] else (None, (None, None))
                rows.append({"segment_id": s["id"], "name": s["name"],
                             "filter": str(s["filter"]), "description": s["description"],
                             "estimated_size": size, "estimated_on": day})
        return pd.DataFrame(rows, columns=["segment_id", "name", "filter", "description",
                                           "estimated_size", "estimated_on"])

    def segment_members(self, segment_id: str) -> list[str]:
        """The exact members of a segment now, as user keys (``external_id:…``)."""
        if segment_id not in self._segments.segments:
            raise SandboxError(f"no segment {segment_id!r}", field="segment_id",
                               hint="use an id create_segment returned")
        return sorted(member_key(u) for u in self._segments.members(segment_id))

    def reset(self) -> None:
        """Forget every user, event, cohort, segment, log entry and fault counter; keep the
        settings."""
        with self._store.lock:
            self._store.clear()
            self._segments.clear()
        with self._log_lock:
            self._log.clear()
        self._faults.reset()
        self._limiter = self._new_limiter()

    def _new_limiter(self) -> RateLimiter:
        limits = {}
        for endpoint, value in self._rate_limits.items():
            limit, period = value if value is not None else (None, 1.0)
            _checked_limit(endpoint, limit, period)
            limits[endpoint] = None if limit is None else (limit, period)
        return RateLimiter(limits, meter=FixedWindow)

    # ------------------------------------------------------------------ inspection
    def summary(self) -> dict:
        """What the workspace holds, as counts: keep, users, data_points, attribute_types,
        events and purchases per name, cohort sizes (works whatever ``keep`` is)."""
        with self._store.lock:
            return self._store.summary()

    def _need_users(self, what: str) -> None:
        if self.keep != "users":
            raise SandboxError(f"{what} needs every user's state, which {KEPT_COUNTS} does not "
                               f"keep", hint="use summary(), or start the sandbox with "
                                             "keep='users' (the default)")

    @property
    def data_points(self) -> int:
        """Data points written so far, counted as Braze bills them (reference §7)."""
        return self._store.data_points

    def profiles(self):
        """One row per user: identifiers, profile fields, then custom attributes."""
        self._need_users("profiles()")
        import pandas as pd  # lazy: pandas only for inspection; the request path is stdlib

        with self._store.lock:
            users = list(self._store.users)
            attr_names = sorted(self._store.attr_types)
            rows = [self._user_columns(u) | dict(u.fields) | dict(u.attrs) for u in users]
        fields = sorted({k for r in rows for k in r} - set(attr_names) - set(_ID_COLUMNS))
        return pd.DataFrame(rows, columns=[*_ID_COLUMNS, *fields, *attr_names])

    def events(self):
        """One row per stored custom event: user identifiers, name, time, properties, app_id."""
        self._need_users("events()")
        import pandas as pd  # lazy: pandas only for inspection; the request path is stdlib

        with self._store.lock:
            rows = [self._user_columns(u) | {"name": n, "time": t, "properties": p, "app_id": a}
                    for u, n, t, p, a in self._store.event_log]
        frame = pd.DataFrame(rows, columns=[*_ID_COLUMNS, "name", "time", "properties", "app_id"])
        frame["time"] = pd.to_datetime(frame["time"], utc=True)
        return frame

    def purchases(self):
        """One row per stored purchase."""
        self._need_users("purchases()")
        import pandas as pd  # lazy: pandas only for inspection; the request path is stdlib

        with self._store.lock:
            rows = [self._user_columns(u) | {"product_id": pid, "currency": c, "price": pr,
                                             "quantity": q, "time": t, "properties": p}
                    for u, pid, c, pr, q, t, p in self._store.purchase_log]
        frame = pd.DataFrame(rows, columns=[*_ID_COLUMNS, "product_id", "currency", "price",
                                            "quantity", "time", "properties"])
        frame["time"] = pd.to_datetime(frame["time"], utc=True)
        return frame

    def cohorts(self):
        """One row per partner cohort: id, name, created_at, size and member user keys."""
        import pandas as pd  # lazy: pandas only for inspection; the request path is stdlib

        with self._store.lock:
            rows = [{"cohort_id": cid, "name": c.get("name"), "created_at": c["created_at"],
                     "size": len(c["members"]),
                     "members": sorted(self._store.label(u) for u in c["members"].values())}
                    for cid, c in self._store.cohorts.items()]
        frame = pd.DataFrame(rows, columns=["cohort_id", "name", "created_at", "size", "members"])
        frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
        return frame

    def request_log(self):
        """One row per request: time, endpoint, status, objects, data_points, fault, skipped, note."""
        import pandas as pd  # lazy: pandas only for inspection; the request path is stdlib

        with self._log_lock:
            entries = list(self._log)
        frame = pd.DataFrame(entries, columns=["time", "endpoint", "status", "objects",
                                                       "data_points", "fault", "skipped", "note"])
        frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
        return frame

    @staticmethod
    def _user_columns(u) -> dict:
        alias = u.aliases[0] if u.aliases else (None, None)
        return {"external_id": u.external_id, "braze_id": u.braze_id, "alias_name": alias[0],
                "alias_label": alias[1], "email": u.email, "phone": u.phone}

    def __repr__(self) -> str:
        state = "closed" if self._closed else "serving"
        return (f"BrazeSandbox(url={self.url!r}, key={self.key_fingerprint}, {state}, "
                f"keep={self.keep!r}, users={self._store.user_count}, "
                f"data_points={self.data_points})")

    def _repr_html_(self) -> str:
        rows = [("URL", self.url), ("API key", f"fingerprint {self.key_fingerprint} (sb.api_key)"),
                ("State", "closed" if self._closed else "serving"),
                ("Keeps", self.keep), ("Users", self._store.user_count),
                ("Events", sum(self.summary()["events"].values())),
                ("Cohorts", len(self._store.cohorts)), ("Data points", self.data_points),
                ("Requests", len(self._log))]
        body = "".join(f"<tr><th style='text-align:left'>{escape(str(k))}</th>"
                       f"<td>{escape(str(v))}</td></tr>" for k, v in rows)
        return f"<div><b>Braze sandbox</b><table>{body}</table></div>"

    # ------------------------------------------------------------------ request path
    @property
    def closed(self) -> bool:
        return self._closed

    def respond(self, method: str, path: str, query: str, headers: Mapping[str, str],
                raw: bytes, *, read_timeout: float | None = None) -> Answer:
        """Answer one request as Braze would, whatever carried it (the HTTP server here, or
        `toolkit.braze.transport.SandboxTransport` in the same process), and log it.
        ``read_timeout`` is how long the caller waits: a slower answer is applied all the same
        but comes back ``timed_out``, as a client that gave up would see it."""
        endpoint = path.rstrip("/") or "/"
        if endpoint.startswith(_EXPORTS) and method == "GET":
            # a download URL carries its own credential, like Braze's presigned storage URLs,
            # which refuse a second one: an API key sent along is an error, never accepted
            if headers.get("Authorization"):
                return self._answer(_EXPORTS, 400, {
                    "message": "Only one auth mechanism allowed: the download URL is its own "
                               "credential; send no Authorization header"}, [])
            status, data = self._segments.download(endpoint[len(_EXPORTS):])
            if isinstance(data, bytes):
                answer = self._answer(_EXPORTS, 200, None, [])
                answer.raw, answer.content_type = data, "application/zip"
                return answer
            return self._answer(_EXPORTS, status, data, [])
        expected = _ROUTES.get(endpoint)
        if expected is None or expected != method:
            # §1.9: "404 Not Found: Invalid URL."
            return self._answer(endpoint, 404, {"message": f"Invalid URL: {method} {endpoint} "
                                                           f"is not a Braze sandbox endpoint"},
                                self._take("*"))
        if len(raw) > _MAX_BODY:
            return self._answer(endpoint, 413, {"message": f"Bad Request: Content-Length must "
                                                           f"be 0..{_MAX_BODY}"}, [])
        partner = endpoint in _PARTNER
        if not partner and not self._authorized(headers.get("Authorization")):
            # §1.9: "401 Unauthorized: Invalid API key." (also a quoted key or wrong instance)
            return self._answer(endpoint, 401, {"message": "Invalid API key"},
                                self._take(endpoint, consume=False))
        permission = PERMISSIONS.get(endpoint)
        if (permission is not None and self._permissions is not None
                and permission not in self._permissions):
            # braze-api.md §1.9: "403 Access Denied: The REST API key you are using does not
            # have sufficient permissions"
            return self._answer(endpoint, 403, {"message": "Access Denied"},
                                self._take(endpoint, consume=False))
        window = self._limiter.bucket(endpoint)
        allowed, limit_headers = window.take() if window is not None else (True, [])
        if not allowed:
            return self._answer(endpoint, 429, {"message": "Rate Limited"}, limit_headers)
        fault = self._faults.draw(endpoint)
        timed_out = False
        if fault in _FAULT_BODIES:
            # 5xx and 429: "no messages will be sent" (§1.9), so nothing is applied.
            status, body = _FAULT_BODIES[fault]
            if fault == "429" and window is not None:
                limit_headers = window.exhausted_headers()
            return self._answer(endpoint, status, body, limit_headers, fault=fault)
        if fault == "slow":
            slow = self.faults.slow_seconds
            timed_out = read_timeout is not None and slow > read_timeout
            time.sleep(min(slow, read_timeout) if timed_out else slow)
        elif fault == "drop_before":
            return self._answer(endpoint, None, None, [], fault=fault)
        if method == "POST":
            ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype != "application/json":
                return self._answer(endpoint, 400, {
                    "message": "Bad Request: send 'Content-Type: application/json' (§1.1)"},
                    limit_headers, fault=fault)
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError) as exc:
                return self._answer(endpoint, 400, {"message": f"Bad syntax: the body is not "
                                                               f"valid JSON ({exc})"},
                                    limit_headers, fault=fault)
        else:
            body = None
        try:
            status, response, stats = self._dispatch(endpoint, body, query, partner)
        except Exception as exc:  # a sandbox bug must not look like a dropped connection
            status, response, stats = 500, {"message": f"sandbox internal error: "
                                                       f"{type(exc).__name__}: {exc}"}, {}
        if fault == "drop_after":
            stats = {**stats, "note": f"dropped after applying (would have answered {status}); "
                                      + stats.get("note", "")}
            return self._answer(endpoint, None, None, [], fault=fault, stats=stats)
        link = stats.get("link")
        if link:
            limit_headers = [*limit_headers, ("Link", link)]
        answer = self._answer(endpoint, status, response, limit_headers, fault=fault, stats=stats)
        answer.timed_out = timed_out
        return answer

    def _take(self, endpoint: str, *, consume: bool = True) -> list[tuple[str, str]]:
        window = self._limiter.bucket(endpoint)
        return window.take(consume=consume)[1] if window is not None else []

    def _answer(self, endpoint: str, status: int | None, body: dict | None,
                headers: list[tuple[str, str]], *, fault: str | None = None,
                stats: Mapping[str, Any] | None = None) -> Answer:
        """Log the request, then return its answer (status None: the connection is dropped).
        Logged first: a client that reads the answer must find the request in the log."""
        stats = dict(stats or {})
        if status is None and fault == "drop_before":
            stats["note"] = "dropped before applying; " + stats.get("note", "")
        self._record(endpoint, status, fault, stats)
        return Answer(status, body, headers, fault)

    def _serve(self, h: _Handler, method: str) -> None:
        """The HTTP side of `respond`: read the request off the socket, write the answer back
        (or drop the connection)."""
        path, _, query = h.path.partition("?")
        raw = self._read_body(h)
        if raw is None:
            return
        answer = self.respond(method, path, query, h.headers, raw)
        if answer.status is None:
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._write(h, answer.status, answer.content(), answer.headers, answer.content_type)

    def _authorized(self, header: str | None) -> bool:
        if header == self._auth:
            return True
        # The auth scheme is case-insensitive (RFC 9110 §11.1); the key itself is compared exactly,
        # so a quoted key fails as Braze documents (§1.9).
        scheme, _, token = (header or "").partition(" ")
        return scheme.lower() == "bearer" and token == self.api_key

    def _dispatch(self, endpoint: str, body: Any, query: str, partner: bool):
        store = self._store
        if endpoint in _READS_USERS and self.keep != "users":
            return 400, {"message": f"{endpoint} reads users' attributes and events, which "
                                    f"{KEPT_COUNTS} does not keep; start it with keep='users' "
                                    f"(the default)"}, {}
        if partner:
            if type(body) is not dict:
                return 400, {"message": "Bad Request: the body must be a JSON object"}, {}
            # §4.1: both keys travel in the body; no Authorization header.
            if body.get("partner_api_key") != self.partner_api_key:
                return 401, {"message": "Invalid Partner API key"}, {}
            if body.get("client_secret") != self.client_secret:
                return 401, {"message": "Invalid client secret"}, {}
            if endpoint == "/partners/segment/cohorts":
                return store.create_cohort(body)
            return store.update_cohort(body)
        if endpoint == "/users/track":
            return store.track(body)
        if endpoint == "/users/export/ids":
            return store.export_ids(body)
        if endpoint == "/users/export/segment":
            return self._segments.export(body, self.url)
        if endpoint == "/sandbox/segments":
            return self._create_segment_from(body)
        if endpoint == "/sandbox/segments/estimate":
            at = body.get("at") if isinstance(body, dict) else None
            if at is not None and parse_time(at) is None:
                return 400, {"message": "'at' must be an ISO-8601 time or absent"}, {}
            sizes = self._segments.estimate(parse_time(at) if at else None)
            return 200, {"message": "success", "estimates": sizes}, {"objects": len(sizes)}
        params = parse_qs(query)
        if endpoint == "/segments/list":
            return self._segments.list(params)
        if endpoint == "/segments/details":
            return self._segments.details(params)
        if endpoint == "/segments/data_series":
            return self._segments.data_series(params)
        if endpoint == "/custom_attributes":
            return store.custom_attributes((params.get("cursor") or [None])[0], self.url)
        return store.events_list((params.get("page") or [None])[0])

    def _create_segment_from(self, body: Any):
        """``POST /sandbox/segments`` {name, filters, tags?, text_description?, description?}."""

        if type(body) is not dict:
            return 400, {"message": "Bad Request: the body must be a JSON object"}, {}
        allowed = {"name", "filters", "tags", "text_description", "description"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            return 400, {"message": f"unknown field(s) {unknown}; a segment has "
                                    f"{sorted(allowed)}"}, {}
        try:
            sid = self._segments.create(body.get("name"), body.get("filters"),
                                        tags=body.get("tags") or (),
                                        text_description=body.get("text_description"),
                                        description=body.get("description"))
        except ToolkitError as exc:
            return 400, {"message": str(exc)}, {}
        return 201, {"message": "success", "segment_id": sid}, {"objects": 1}

    def _read_body(self, h: _Handler) -> bytes | None:
        """The request body, or None after answering 400/413 to a body we will not read."""
        if h.headers.get("Transfer-Encoding"):
            return self._refuse(h, 400, "Bad Request: chunked bodies are not accepted; send "
                                        "Content-Length")
        length = h.headers.get("Content-Length")
        if not length:
            return b""
        try:
            n = int(length)
        except ValueError:
            n = -1
        if n < 0 or n > _MAX_BODY:
            return self._refuse(h, 413 if n > 0 else 400,
                                f"Bad Request: Content-Length must be 0..{_MAX_BODY}")
        return h.rfile.read(n)

    def _refuse(self, h: _Handler, status: int, message: str) -> None:
        self._record("-", status, None, {})
        h.close_connection = True
        self._write(h, status, json.dumps({"message": message}).encode(), [])

    @staticmethod
    def _write(h: _Handler, status: int, payload: bytes, headers: list[tuple[str, str]],
               content_type: str = "application/json; charset=utf-8") -> None:
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
                f"Content-Type: {content_type}",
                f"Content-Length: {len(payload)}"]
        head += [f"{k}: {v}" for k, v in headers]
        if h.close_connection:
            head.append("Connection: close")
        h.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)

    def _record(self, endpoint: str, status: int | None, fault: str | None,
                stats: Mapping[str, Any]) -> None:
        entry = (time.time(), endpoint, status, stats.get("objects", 0),
                 stats.get("data_points", 0), fault, stats.get("skipped", 0),
                 stats.get("note") or "")
        with self._log_lock:
            self._log.append(entry)


def _check_endpoint(endpoint: str) -> None:
    if endpoint not in _ROUTES and endpoint != "*":
        raise SandboxError(f"unknown endpoint {endpoint!r}",
                           hint=f"use one of {', '.join(sorted(_ROUTES))} (or '*' for any other)")


def _checked_limit(endpoint: str, limit: Any, period_s: Any) -> None:
    """Braze budgets are whole requests per positive seconds (or None: unlimited)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise SandboxError(f"rate limit for {endpoint} must be a positive integer or None, "
                           f"got {limit!r}")
    if isinstance(period_s, bool) or not isinstance(period_s, (int, float)) or period_s <= 0:
        raise SandboxError(f"rate-limit period for {endpoint} must be positive seconds, got "
                           f"{period_s!r}")


def _checked_permissions(permissions: Any) -> frozenset[str] | None:
    if permissions is None:
        return None
    if isinstance(permissions, str) or not all(isinstance(p, str) for p in permissions):
        raise SandboxError(f"permissions must be a list of permission names or None, got "
                           f"{permissions!r}", hint="e.g. ['users.track', 'segments.list']")
    return frozenset(permissions)


def _checked_error(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 0.5:
        raise SandboxError(f"estimate_error must be a fraction from 0 to 0.5, got {value!r}",
                           hint="Braze's estimates are off by about 1% of all users: 0.01")
    return float(value)


def _checked_export_delay(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 3600:
        raise SandboxError(f"export_delay must be seconds from 0 to 3600, got {value!r}")
    return float(value)


def _checked_delay(seconds: Any) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
            0 <= seconds < 86400):
        raise SandboxError(f"read_delay must be seconds from 0 to 86400, got {seconds!r}",
                           hint="Braze suggests allowing up to 300 s between a write and a read")
    return float(seconds)


def _checked(faults: Faults) -> Faults:
    for endpoint in faults.endpoints or ():
        _check_endpoint(endpoint)
    return faults


_ID_COLUMNS = ("external_id", "braze_id", "alias_name", "alias_label", "email", "phone")


