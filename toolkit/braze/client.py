"""`BrazeClient`: the one object that talks to Braze's REST API (and to the local sandbox).

It owns one ``requests.Session``, bearer auth, a per-endpoint token-bucket rate limiter fed by
``x-ratelimit-*`` headers, and retries with exponential backoff and jitter on 429, 5xx and
connection failures — never on 400/401/403/404. Every failed request says what Braze may have done
with it (`outcome`):

- ``"acknowledged"``  Braze answered 2xx (per-object rejects are listed in `TrackResult.rejected`);
- ``"rejected"``      Braze refused the request (4xx); nothing was applied, resending will not help;
- ``"not_applied"``   nothing reached Braze or Braze said it applied nothing (connection refused,
  429, 5xx — "no messages will be sent"); safe to resend;
- ``"unknown"``       the request may have been applied (connection dropped after sending, read
  timeout). Attribute writes are idempotent, events are not: by default a batch holding events or
  purchases is *not* resent automatically after an unknown outcome (``retry_unknown``).

Logging (logger ``toolkit.braze``): every request and every retry at DEBUG; one INFO line per
request that needed retries, once it succeeded or failed; nothing at WARNING, so a run against a
flaky Braze prints no line per retry — the totals are in `stats` (``retries``,
``retried_requests``, ``rate_limited``…), which the sync report prints.

The API key never leaves the client except in the Authorization header: repr, logs, exceptions and
`stats` show only `key_fingerprint(key)`.

Workspace identity: `BrazeClient.workspace` is ``"<name>@<endpoint>"`` — the instance and a
workspace name the user gives once (``workspace=``, ``BRAZE_WORKSPACE`` in the environment or
``.env``; loopback endpoints, i.e. the sandbox, default to ``"sandbox"``). It names the sync
ledger, plans and reports, and does not depend on the API key, so a rotated key keeps the
ledger. `legacy_workspace` is the identity earlier versions used (``"<endpoint>#<key
fingerprint>"``), kept so an old ledger can be recognised and re-labelled.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import parse_qs, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from toolkit.braze.instances import instance_of, is_loopback, resolve_endpoint
from toolkit.braze.ratelimit import RateLimiter, TokenBucket, parse_rate_headers
from toolkit.errors import (BrazeAPIError, BrazeAuthError, BrazeConnectionError, BrazeRateLimited,
                            ConfigError)
from toolkit.secrets import Secret, key_fingerprint, read_env_file, redact, resolve_secret

__all__ = [
    "BrazeClient", "CohortClient", "TrackResult", "ClientStats", "RequestInfo", "ResponseInfo",
    "EncodedTrack",
    "BrazeBadRequest", "BrazeServerError", "key_fingerprint", "OUTCOMES", "workspace_identity",
    "check_workspace_name", "SANDBOX_WORKSPACE",
]

log = logging.getLogger("toolkit.braze")

OUTCOMES = ("acknowledged", "rejected", "not_applied", "unknown")
TRACK_ARRAYS = ("attributes", "events", "purchases")
EXPORT_IDS_PER_REQUEST = 50
COHORT_IDS_PER_REQUEST = 1000
DEFAULT_EXPORT_FIELDS = ("external_id", "user_aliases", "braze_id", "email", "custom_attributes",
                         "custom_events")
_USER_AGENT = "engage-braze-toolkit/0.1.0"
_REDACTED = "REDACTED"
SANDBOX_WORKSPACE = "sandbox"     # the workspace name of a loopback endpoint nobody named
_WORKSPACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")
_PERMISSIONS = {"/users/track": "users.track", "/users/export/ids": "users.export.ids",
                "/custom_attributes": "custom_attributes.get", "/events/list": "events.list",
                "/segments/list": "segments.list", "/segments/details": "segments.details",
                "/segments/data_series": "segments.data_series",
                "/users/export/segment": "users.export.segment"}
SEGMENTS_PER_PAGE = 100          # /segments/list answers "in groups of 100"
SEGMENT_EXPORT_FIELDS = ("external_id", "user_aliases", "braze_id", "email")


def check_workspace_name(name: str, *, source: str = "workspace") -> str:
    """A workspace name as given (spaces trimmed), or `ConfigError` naming what is allowed."""
    text = name.strip() if isinstance(name, str) else ""
    if not _WORKSPACE_NAME.fullmatch(text):
        raise ConfigError(f"{source} {name!r} is not a usable workspace name", field=source,
                          hint="use 1-64 letters, digits, spaces, '.', '_' or '-', starting with "
                               "a letter or digit, e.g. BRAZE_WORKSPACE=marketing-prod")
    return text


def workspace_identity(name: str, endpoint: str) -> str:
    """``"<name>@<endpoint>"``: one Braze workspace, whatever key is used to reach it."""
    return f"{name}@{endpoint}"


class BrazeBadRequest(BrazeAPIError):
    """Braze refused the request itself (400, 404, 413 …); fix it before sending it again."""


class BrazeServerError(BrazeAPIError):
    """Braze kept failing with 5xx (or 423) after every retry allowed."""


@dataclass(frozen=True)
class EncodedTrack:
    """A ``/users/track`` body already encoded as JSON (``arrays`` names the arrays it holds),
    so a large sync does not decode and re-encode every value."""

    body: bytes
    arrays: tuple[str, ...]


@dataclass(frozen=True)
class RequestInfo:
    """What was sent, with the Authorization header and partner keys redacted."""

    method: str
    url: str
    headers: dict[str, str]
    payload: Any = None


@dataclass(frozen=True)
class ResponseInfo:
    """What came back: status, headers (case-insensitive), parsed body (secrets redacted) and
    seconds taken."""

    status: int
    headers: Mapping[str, str]
    body: Any
    elapsed: float


@dataclass(frozen=True)
class TrackResult:
    """A 2xx answer to one ``/users/track`` request.

    ``errors`` are Braze's non-fatal errors (``{type, input_array, index}``); ``rejected`` maps
    ``(input_array, index)`` — the index *within that array* — to the reason, for errors that name
    an object. ``unknown_attempts`` > 0 means an earlier attempt's fate was unknown and the batch
    was resent, so its events may have been recorded twice."""

    status: int
    body: Any
    errors: list[dict] = field(default_factory=list)
    rejected: dict[tuple[str, int], str] = field(default_factory=dict)
    attempts: int = 1
    elapsed: float = 0.0
    unknown_attempts: int = 0
    outcome: str = "acknowledged"

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def queued(self) -> bool:
        """Braze accepted the request for later processing (202 ``{"message": "queued"}``)."""
        message = self.body.get("message") if isinstance(self.body, dict) else None
        return self.status == 202 or message == "queued"

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{escape(a)}[{i}]</td><td>{escape(str(r))}</td></tr>"
                       for (a, i), r in sorted(self.rejected.items()))
        table = (f"<table><tr><th>object</th><th>rejected because</th></tr>{rows}</table>"
                 if rows else "")
        return (f"<div><b>TrackResult</b> {self.status}{' (queued)' if self.queued else ''} — "
                f"{len(self.rejected)} rejected object(s), {self.attempts} attempt(s), "
                f"{self.elapsed:.3f}s{table}</div>")


@dataclass(frozen=True)
class ClientStats:
    """Counters of one client since it was created (a snapshot)."""

    workspace: str
    requests: int = 0
    responses: int = 0
    retries: int = 0
    retried_requests: int = 0     # requests that needed at least one retry
    rate_limited: int = 0
    server_errors: int = 0
    connection_errors: int = 0
    timeouts: int = 0
    unknown_outcomes: int = 0
    rate_limit_wait_s: float = 0.0

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{escape(k)}</th><td>{escape(str(v))}</td></tr>"
                       for k, v in self.__dict__.items())
        return f"<table>{rows}</table>"


class _LazyBody:
    """An encoded request body that is decoded only when an error shows it."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def decoded(self) -> Any:
        return json.loads(self.data)


@dataclass
class _Reply:
    status: int
    body: Any
    headers: Mapping[str, str]
    attempts: int
    elapsed: float
    unknown_attempts: int


class _Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}

    def add(self, name: str, amount: float = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._values)


class BrazeClient:
    """Transport to one Braze workspace: ``BrazeClient("US-03", api_key)`` or, with
    ``BRAZE_REST_ENDPOINT`` / ``BRAZE_API_KEY`` set (environment or ``.env``), ``BrazeClient()``.

    ``rate_limit`` is the ``/users/track`` budget (requests, seconds); ``rate_limits`` overrides
    other endpoints' budgets (None = no client-side limit). ``seed`` makes retry jitter
    reproducible. ``backoff`` is (first delay, longest delay) in seconds. ``workspace`` names the
    Braze workspace the key belongs to (default ``BRAZE_WORKSPACE``; ``"sandbox"`` for a
    loopback endpoint): the sync ledger belongs to that name and the instance, not to the key."""

    # A 429 or exhausted budget that resets further away than this fails instead of sleeping.
    MAX_PAUSE_S = 900.0

    def __init__(self, endpoint: str | None = None, api_key: "str | Secret | None" = None, *,
                 rate_limit: tuple[int, float] | None = (3000, 3.0),
                 rate_limits: Mapping[str, tuple[int, float] | None] | None = None,
                 max_workers: int = 4, timeout: float | tuple[float, float] = 30,
                 max_retries: int = 6, backoff: tuple[float, float] = (0.5, 30.0),
                 env_file: str | None = ".env", interactive: bool | None = None,
                 seed: int | None = None, workspace: str | None = None) -> None:
        if endpoint is None:
            endpoint = os.environ.get("BRAZE_REST_ENDPOINT") or (
                read_env_file(env_file).get("BRAZE_REST_ENDPOINT") if env_file else None)
        self.endpoint = resolve_endpoint(endpoint or "")
        self._key = resolve_secret(api_key, name="Braze REST API key", env_var="BRAZE_API_KEY",
                                   env_file=env_file, interactive=interactive)
        if workspace is not None:
            self.workspace_name: str | None = check_workspace_name(workspace)
        else:
            named = os.environ.get("BRAZE_WORKSPACE") or (
                read_env_file(env_file).get("BRAZE_WORKSPACE") if env_file else None)
            if named:
                self.workspace_name = check_workspace_name(named, source="BRAZE_WORKSPACE")
            elif is_loopback(urlsplit(self.endpoint).hostname):
                self.workspace_name = SANDBOX_WORKSPACE
            else:
                self.workspace_name = None
        if int(max_workers) < 1:
            raise ConfigError("max_workers must be at least 1", field="max_workers")
        if int(max_retries) < 0:
            raise ConfigError("max_retries cannot be negative", field="max_retries")
        self.max_workers = int(max_workers)
        self.max_retries = int(max_retries)
        self.timeout = timeout
        self._backoff = (float(backoff[0]), float(backoff[1]))
        self._env_file = env_file
        self._interactive = interactive
        limits = {"/users/track": rate_limit, **(rate_limits or {})}
        self._limiter = RateLimiter(limits)
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._counters = _Counters()
        self._partner_defaults: dict[str, Any] = {}
        self._session = requests.Session()
        # urllib3 must not retry on its own: only this client knows whether a resend is safe.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(self.max_workers, 4),
                              max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        # trust_env would let a ~/.netrc entry replace the bearer header; proxies and CA bundles
        # from the environment are still honoured, explicitly, for remote hosts.
        self._session.trust_env = False
        if not is_loopback(urlsplit(self.endpoint).hostname):
            self._session.proxies.update(requests.utils.get_environ_proxies(self.endpoint))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            self._session.verify = bundle
        self._closed = False

    # ----------------------------------------------------------------- identity and lifecycle
    @classmethod
    def for_sandbox(cls, sb: Any, **options: Any) -> "BrazeClient":
        """A client for a running `toolkit.sandbox.BrazeSandbox` (its URL, key and partner keys)."""
        options.setdefault("env_file", None)
        options.setdefault("workspace", getattr(sb, "workspace", None) or SANDBOX_WORKSPACE)
        client = cls(sb.url, sb.api_key, **options)
        for name in ("partner_api_key", "client_secret"):
            value = getattr(sb, name, None)
            if isinstance(value, str) and value:
                client._partner_defaults[name] = value
        return client

    @property
    def workspace(self) -> str:
        """``"<workspace name>@<endpoint>"``: the Braze workspace this client targets, independent
        of the API key (a rotated key keeps the same identity, ledger and approvals). Raises
        `ConfigError` when no name was given for a Braze endpoint."""
        if self.workspace_name is None:
            raise ConfigError(
                f"name the Braze workspace behind {self.endpoint}: the sync ledger belongs to "
                "the workspace (instance + name), not to the API key, so a rotated key keeps "
                "what was already sent", field="BRAZE_WORKSPACE",
                hint="add BRAZE_WORKSPACE=<name> (e.g. marketing-prod) to .env or the "
                     "environment, pass --workspace NAME on the command line, or "
                     "BrazeClient(..., workspace='marketing-prod'); a ledger made before "
                     "workspaces were named is re-labelled the first time it is opened with "
                     "its key")
        return workspace_identity(self.workspace_name, self.endpoint)

    @property
    def legacy_workspace(self) -> str:
        """The identity earlier versions gave this client, ``"<endpoint>#<key fingerprint>"``:
        only used to recognise (and re-label) a ledger made before workspaces were named."""
        return f"{self.endpoint}#{self._key.fingerprint}"

    @property
    def key_fingerprint(self) -> str:
        """The API key's short sha256 fingerprint (safe to show; the key itself never is)."""
        return self._key.fingerprint

    def _label(self) -> str:
        """The workspace identity, or the endpoint while the workspace has no name (for logs
        and stats, which must never fail)."""
        return (workspace_identity(self.workspace_name, self.endpoint)
                if self.workspace_name is not None else self.endpoint)

    @property
    def instance(self) -> str | None:
        return instance_of(self.endpoint)

    @property
    def stats(self) -> ClientStats:
        values = self._counters.snapshot()
        ints = {k: int(v) for k, v in values.items() if k != "rate_limit_wait_s"}
        return ClientStats(workspace=self._label(), **ints,
                           rate_limit_wait_s=round(values.get("rate_limit_wait_s", 0.0), 3))

    def rate_limit_for(self, path: str) -> tuple[int, float] | None:
        """The (requests, seconds) budget currently applied to an endpoint path."""
        return self._limiter.limit_for(path)

    def close(self) -> None:
        self._closed = True
        self._session.close()

    def __enter__(self) -> "BrazeClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f" ({self.instance})" if self.instance else ""
        name = (f"workspace {self.workspace_name!r}, " if self.workspace_name is not None
                else "workspace not named, ")
        return f"BrazeClient({self.endpoint}{where}, {name}key sha256:{self._key.fingerprint})"

    __str__ = __repr__

    def _repr_html_(self) -> str:
        track = self.rate_limit_for("/users/track")
        limit = f"{track[0]:,} requests / {track[1]:g} s" if track else "not limited"
        stats = self.stats
        rows = [("endpoint", self.endpoint + (f" ({self.instance})" if self.instance else "")),
                ("workspace", self.workspace_name if self.workspace_name is not None else
                 "not named (set BRAZE_WORKSPACE)"),
                ("API key", f"sha256:{self._key.fingerprint} (from {self._key.source})"),
                ("/users/track rate limit", limit), ("workers", self.max_workers),
                ("requests sent", stats.requests), ("retries", stats.retries),
                ("429s", stats.rate_limited), ("5xx", stats.server_errors)]
        body = "".join(f"<tr><th style='text-align:left'>{escape(k)}</th><td>{escape(str(v))}</td></tr>"
                       for k, v in rows)
        return f"<div><b>BrazeClient</b><table>{body}</table></div>"

    # -------------------------------------------------------------------------- /users/track
    def track(self, *, attributes: Iterable[dict] = (), events: Iterable[dict] = (),
              purchases: Iterable[dict] = (), retry_unknown: bool | None = None) -> TrackResult:
        """Send one ``/users/track`` request. ``retry_unknown=None`` resends after an unknown
        outcome only when the request holds no events or purchases (attribute sets are
        idempotent; events would be counted twice). Fatal statuses raise `BrazeAPIError`."""
        payload = {"attributes": attributes, "events": events, "purchases": purchases}
        return self._track(payload, retry_unknown, batch=None)

    def track_batches(self, payloads: Iterable[Mapping[str, Any]], *,
                      on_result: Callable[[int, "TrackResult | BrazeAPIError"], Any] | None = None,
                      retry_unknown: bool | None = None,
                      ) -> Iterator[tuple[int, "TrackResult | BrazeAPIError"]]:
        """Send ``/users/track`` payloads (dicts of attributes/events/purchases) with
        ``max_workers`` threads; yields ``(payload_index, TrackResult or BrazeAPIError)`` as each
        completes. Sending happens while you iterate; at most ``max_workers`` requests are in
        flight and payloads are drawn from ``payloads`` lazily. ``on_result`` runs in the calling
        thread before each yield — and for requests still in flight if iteration stops early.
        The caller keeps each user in one payload; the client never reorders inside a payload."""
        source = enumerate(payloads)
        pending: dict[Any, int] = {}
        pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="braze-track")

        def submit_next() -> bool:
            try:
                index, payload = next(source)
            except StopIteration:
                return False
            pending[pool.submit(self._track_or_error, payload, retry_unknown, index)] = index
            return True

        try:
            for _ in range(self.max_workers):
                if not submit_next():
                    break
            while pending:
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for future in done:
                    index = pending.pop(future)
                    item = (index, future.result())
                    submit_next()
                    if on_result is not None:
                        on_result(*item)
                    yield item
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if on_result is not None:
                for future, index in sorted(pending.items(), key=lambda kv: kv[1]):
                    if future.done() and not future.cancelled() and future.exception() is None:
                        on_result(index, future.result())

    def _track_or_error(self, payload: Mapping[str, Any], retry_unknown: bool | None,
                        index: int) -> "TrackResult | BrazeAPIError":
        try:
            return self._track(payload, retry_unknown, batch=index)
        except BrazeAPIError as exc:
            return exc

    def _track(self, payload: Mapping[str, Any], retry_unknown: bool | None,
               batch: int | None) -> TrackResult:
        if isinstance(payload, EncodedTrack):
            if retry_unknown is None:
                retry_unknown = not ({"events", "purchases"} & set(payload.arrays))
            reply = self._request("POST", "/users/track", data=payload.body,
                                  retry_unknown=retry_unknown, batch=batch)
            errors = _errors_of(reply.body)
            return TrackResult(status=reply.status, body=reply.body, errors=errors,
                               rejected=_rejected_of(errors), attempts=reply.attempts,
                               elapsed=reply.elapsed, unknown_attempts=reply.unknown_attempts)
        if not isinstance(payload, Mapping):
            raise ConfigError(f"a /users/track payload must be a dict, not {type(payload).__name__}",
                              batch=batch)
        unknown_keys = set(payload) - set(TRACK_ARRAYS)
        if unknown_keys:
            raise ConfigError(f"unexpected /users/track keys {sorted(unknown_keys)}", batch=batch,
                              hint="a payload holds only 'attributes', 'events' and 'purchases'")
        body = {name: list(payload.get(name) or ()) for name in TRACK_ARRAYS}
        body = {name: objects for name, objects in body.items() if objects}
        if not body:
            raise ConfigError("nothing to send: attributes, events and purchases are all empty",
                              batch=batch)
        if retry_unknown is None:
            retry_unknown = not (body.get("events") or body.get("purchases"))
        reply = self._request("POST", "/users/track", payload=body, retry_unknown=retry_unknown,
                              batch=batch)
        errors = _errors_of(reply.body)
        return TrackResult(status=reply.status, body=reply.body, errors=errors,
                           rejected=_rejected_of(errors), attempts=reply.attempts,
                           elapsed=reply.elapsed, unknown_attempts=reply.unknown_attempts)

    # ----------------------------------------------------------------------------- reading
    def export_ids(self, external_ids: Iterable[str] = (), user_aliases: Iterable[dict] = (), *,
                   fields_to_export: Iterable[str] | None = DEFAULT_EXPORT_FIELDS,
                   braze_ids: Iterable[str] = (), email_addresses: Iterable[str] = ()) -> dict:
        """Profiles by external id and/or alias via ``/users/export/ids``, 50 identifiers per
        request; returns ``{"users": [...], "invalid_user_ids": [...], "requests": n}``.
        ``braze_ids`` and ``email_addresses`` take one request each (Braze accepts one of them
        per request); ``"by_lookup"`` maps each of those to the users its request returned."""
        items = [("external_ids", str(x)) for x in external_ids]
        items += [("user_aliases", dict(a)) for a in user_aliases]
        singles = [("braze_id", str(x)) for x in braze_ids]
        singles += [("email_address", str(x)) for x in email_addresses]
        if not items and not singles:
            raise ConfigError("export_ids needs at least one external id or user alias")
        users: list[dict] = []
        invalid: list[Any] = []
        by_lookup: dict[tuple[str, str], list[dict]] = {}
        requests_made = 0
        bodies: list[tuple[tuple | None, dict]] = []
        for start in range(0, len(items), EXPORT_IDS_PER_REQUEST):
            body: dict[str, Any] = {}
            for key, value in items[start:start + EXPORT_IDS_PER_REQUEST]:
                body.setdefault(key, []).append(value)
            bodies.append((None, body))
        bodies += [((key, value), {key: value}) for key, value in singles]
        for lookup, body in bodies:
            if fields_to_export is not None:
                body["fields_to_export"] = list(fields_to_export)
            reply = self._request("POST", "/users/export/ids", payload=body)
            requests_made += 1
            data = reply.body if isinstance(reply.body, dict) else {}
            found = list(data.get("users") or [])
            users.extend(found)
            invalid.extend(data.get("invalid_user_ids") or [])
            if lookup is not None:
                by_lookup[lookup] = found
        out = {"message": "success", "users": users, "invalid_user_ids": invalid,
               "requests": requests_made}
        if singles:
            out["by_lookup"] = by_lookup
        return out

    def custom_attributes(self) -> list[dict]:
        """Every custom attribute of the workspace (``/custom_attributes``, following the
        ``Link: <…?cursor=…>; rel="next"`` header from page to page)."""
        items: list[dict] = []
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            reply = self._request("GET", "/custom_attributes",
                                  params={"cursor": cursor} if cursor else None)
            data = reply.body if isinstance(reply.body, dict) else {}
            items.extend(data.get("attributes") or [])
            cursor = _next_cursor(reply.headers)
            if not cursor or cursor in seen:
                return items
            seen.add(cursor)

    def events_list(self) -> list[str]:
        """Every custom event name of the workspace (``/events/list``, page by page)."""
        names: list[str] = []
        page = 0
        largest = 0
        previous: list[str] | None = None
        while True:
            reply = self._request("GET", "/events/list", params={"page": page})
            data = reply.body if isinstance(reply.body, dict) else {}
            events = list(data.get("events") or [])
            if not events or events == previous:
                return names
            names.extend(events)
            largest = max(largest, len(events))
            if len(events) < largest:
                return names
            previous = events
            page += 1

    # ---------------------------------------------------------------------------- segments
    def segments(self, *, sort_direction: str = "asc") -> list[dict]:
        """Every (non-archived) segment of the workspace: ``{id, name,
        analytics_tracking_enabled, tags}`` from ``/segments/list``, 100 per page."""
        if sort_direction not in ("asc", "desc"):
            raise ConfigError(f"sort_direction must be 'asc' or 'desc', not {sort_direction!r}",
                              field="sort_direction")
        items: list[dict] = []
        seen: set[str] = set()
        page = 0
        while True:
            reply = self._request("GET", "/segments/list",
                                  params={"page": page, "sort_direction": sort_direction})
            data = reply.body if isinstance(reply.body, dict) else {}
            batch = [s for s in data.get("segments") or [] if isinstance(s, dict)]
            fresh = [s for s in batch if str(s.get("id")) not in seen]
            items.extend(fresh)
            seen.update(str(s.get("id")) for s in fresh)
            # a short page is the last; an empty or repeated one means the same
            if len(batch) < SEGMENTS_PER_PAGE or not fresh:
                return items
            page += 1

    def segment_details(self, segment_id: str) -> dict:
        """``/segments/details`` of one segment: name, ``description`` (Braze's human-readable
        description of its filters), ``text_description``, tags, ``created_at``,
        ``updated_at``."""
        reply = self._request("GET", "/segments/details",
                              params={"segment_id": _segment_id(segment_id)})
        return reply.body if isinstance(reply.body, dict) else {}

    def segment_data_series(self, segment_id: str, *, length: int = 30,
                            ending_at: "datetime | str | None" = None) -> list[dict]:
        """The daily **estimated** sizes ``[{time, size}]`` of a segment over the ``length``
        days (1–100) before ``ending_at`` (default: now), from ``/segments/data_series``."""
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= 100:
            raise ConfigError(f"length must be a whole number of days from 1 to 100, not "
                              f"{length!r}", field="length")
        if isinstance(ending_at, datetime):
            ending_at = (ending_at if ending_at.tzinfo else
                         ending_at.replace(tzinfo=timezone.utc)).isoformat()
        reply = self._request("GET", "/segments/data_series",
                              params={"segment_id": _segment_id(segment_id), "length": length,
                                      "ending_at": ending_at})
        data = reply.body.get("data") if isinstance(reply.body, dict) else None
        return [d for d in data or [] if isinstance(d, dict)]

    def export_segment(self, segment_id: str,
                       fields_to_export: Iterable[str] = SEGMENT_EXPORT_FIELDS, *,
                       timeout: float = 900.0, poll: tuple[float, float] = (0.2, 15.0)
                       ) -> list[dict]:
        """Every user of a segment, exactly, via ``/users/export/segment``: Braze answers with
        a download URL that becomes valid once the export is ready, polled here (at most
        ``timeout`` seconds, waiting ``poll`` = (first, longest) seconds between tries). Only
        for workspaces without their own S3/Azure/GCS export bucket (then Braze writes the
        files there and answers no URL). The API key is never sent to the download URL."""
        import io
        import zipfile

        fields = list(fields_to_export)
        if not fields:
            raise ConfigError("fields_to_export cannot be empty: Braze requires it",
                              field="fields_to_export", hint="e.g. ['external_id', 'braze_id']")
        reply = self._request("POST", "/users/export/segment",
                              payload={"segment_id": _segment_id(segment_id),
                                       "fields_to_export": fields})
        body = reply.body if isinstance(reply.body, dict) else {}
        url = body.get("url")
        if not url:
            raise BrazeBadRequest(
                f"Braze exported segment {segment_id} to the workspace's own storage (object "
                f"prefix {body.get('object_prefix')!r}), not to a download URL",
                status=reply.status, body=body, endpoint="/users/export/segment",
                hint="read the files from your S3/Azure/GCS export bucket, or check without "
                     "--exact (Braze's daily estimate)")
        deadline = time.monotonic() + float(timeout)
        wait_s = float(poll[0])
        while True:
            got, why = self._download(url)
            if got is not None and got.status_code == 200:
                break
            if time.monotonic() + wait_s > deadline:
                raise BrazeConnectionError(
                    f"the export of segment {segment_id} was not ready after {timeout:g} s "
                    f"({why})", endpoint="/users/export/segment", outcome="acknowledged",
                    hint="large segments take longer (20 million users: an hour or more); "
                         "try again later with a longer timeout")
            time.sleep(wait_s)
            wait_s = min(float(poll[1]), wait_s * 2)
        users: list[dict] = []
        try:
            with zipfile.ZipFile(io.BytesIO(got.content)) as archive:
                for name in sorted(archive.namelist()):
                    for line in archive.read(name).decode("utf-8").splitlines():
                        if line.strip():
                            users.append(json.loads(line))
        except (zipfile.BadZipFile, UnicodeDecodeError, ValueError) as exc:
            raise BrazeBadRequest(f"the export of segment {segment_id} is not a ZIP of "
                                  f"user JSON lines ({exc})", endpoint="/users/export/segment",
                                  hint="download the URL by hand and look at it") from None
        return users

    def _download(self, url: str) -> "tuple[requests.Response | None, str]":
        """GET a presigned download URL: no Authorization header (the URL is its own
        credential, and the key must never reach a storage host); (response or None, why)."""
        try:
            got = self._session.get(url, timeout=self.timeout, allow_redirects=True)
        except requests.RequestException as exc:
            return None, _classify(exc)[2]
        return got, f"HTTP {got.status_code}"

    # ---------------------------------------------------------------------- partner cohorts
    def partner_credentials(self, partner_api_key: "str | Secret | None" = None,
                            client_secret: "str | Secret | None" = None, *,
                            required: bool = True) -> "tuple[Secret, Secret] | None":
        """The partner cohort credentials as Secrets, from the arguments, then
        ``BRAZE_PARTNER_API_KEY`` / ``BRAZE_DATA_IMPORT_KEY`` (env or ``.env``), then the sandbox
        this client was made for. Not configured: ConfigError, or None when not ``required``
        (a plan must never prompt for them)."""
        partner_api_key = partner_api_key or self._partner_defaults.get("partner_api_key")
        client_secret = client_secret or self._partner_defaults.get("client_secret")
        interactive = self._interactive if required else False
        try:
            key = resolve_secret(partner_api_key, name="Braze partner API key",
                                 env_var="BRAZE_PARTNER_API_KEY", env_file=self._env_file,
                                 interactive=interactive)
            secret = resolve_secret(client_secret, name="Braze data import key (client_secret)",
                                    env_var="BRAZE_DATA_IMPORT_KEY", env_file=self._env_file,
                                    interactive=interactive)
        except ConfigError:
            if required:
                raise
            return None
        return key, secret

    def cohort(self, partner_api_key: "str | Secret | None" = None,
               client_secret: "str | Secret | None" = None, *,
               partner: str = "segment") -> "CohortClient":
        """A client for the partner cohort endpoints (``/partners/<partner>/cohorts…``), with
        the keys `partner_credentials` finds."""
        key, secret = self.partner_credentials(partner_api_key, client_secret)
        return CohortClient(self, key, secret, partner=partner)

    # ---------------------------------------------------------------------------- transport
    def _request(self, method: str, path: str, *, payload: Any = None, data: bytes | None = None,
                 params: Mapping[str, Any] | None = None, retry_unknown: bool = True,
                 batch: int | None = None, bearer: bool = True,
                 body_secrets: tuple[Secret, ...] = ()) -> _Reply:
        if self._closed:
            raise ConfigError("this BrazeClient is closed", hint="create a new client")
        url = self.endpoint + path
        bucket = self._limiter.bucket(path)
        secrets = (self._key, *body_secrets)
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": _USER_AGENT}
        if bearer:
            headers["Authorization"] = "Bearer " + self._key.reveal()
        if data is not None:  # already encoded: decoded again only to describe a failure
            payload = _LazyBody(data)
        elif payload is not None:
            try:
                data = json.dumps(payload, allow_nan=False, separators=(",", ":")).encode("utf-8")
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{path}: the payload is not valid JSON ({exc})", batch=batch,
                                  hint="send only str, int, float (not NaN/inf), bool, None, "
                                       "lists and dicts; format dates as ISO-8601 strings"
                                  ) from None
        started = time.monotonic()
        attempts = 0
        unknown = 0

        def info() -> RequestInfo:
            shown = dict(headers)
            if "Authorization" in shown:
                shown["Authorization"] = f"Bearer {_REDACTED} (sha256:{self._key.fingerprint})"
            body = payload.decoded() if isinstance(payload, _LazyBody) else payload
            return RequestInfo(method, url if not params else f"{url}?{_query(params)}", shown,
                               redact(body, secrets))

        causes: list[str] = []  # why each retry happened, for the one-line summary
        last: str | None = None  # why the final attempt failed
        try:
            while True:
                attempts += 1
                if bucket is not None:
                    self._wait_for(bucket, path, info, attempts, unknown, batch)
                self._counters.add("requests")
                sent_at = time.monotonic()
                failure: requests.RequestException | None = None
                try:
                    response = self._session.request(method, url, data=data, params=params,
                                                     headers=headers, timeout=self.timeout,
                                                     allow_redirects=False)
                except requests.RequestException as exc:
                    failure = exc
                finally:
                    if bucket is not None:
                        bucket.release()
                if failure is not None:
                    outcome, kind, cause = _classify(failure)
                    self._counters.add("timeouts" if kind == "timeout" else "connection_errors")
                    if outcome == "unknown":
                        unknown += 1
                        self._counters.add("unknown_outcomes")
                    may_retry = kind != "fatal" and (outcome != "unknown" or retry_unknown)
                    if may_retry and attempts <= self.max_retries:
                        delay = self._backoff_delay(attempts)
                        self._retrying(method, path, cause, delay, attempts, batch, causes)
                        time.sleep(delay)
                        continue
                    overall = "unknown" if unknown else outcome
                    last = cause
                    why = ("" if may_retry or kind == "fatal" else
                           " — not resent automatically because it holds events or purchases "
                           "that Braze may already have recorded")
                    raise BrazeConnectionError(
                        f"{method} {path}: {cause} after {attempts} attempt(s){why}",
                        request=info(), outcome=overall, attempts=attempts, endpoint=path,
                        batch=batch,
                        hint=("check the batch in Braze (e.g. /users/export/ids) before resending "
                              "it" if overall == "unknown" else
                              f"check that {self.endpoint} is reachable, then run again")) from None
                elapsed = time.monotonic() - sent_at
                self._counters.add("responses")
                status = response.status_code
                # redacted like the body: a proxy or a faulty server may echo the key in a header
                resp_headers = CaseInsensitiveDict(redact(dict(response.headers), secrets))
                body = redact(_body_of(response), secrets)
                if bucket is not None:
                    self._observe(bucket, response.headers)
                log.debug("%s %s -> %s in %.3fs (attempt %d, batch %s)", method, path, status,
                          elapsed, attempts, batch)
                if 200 <= status < 300:
                    if causes:
                        self._retried(method, path, attempts, causes, batch, ok=True)
                    return _Reply(status, body, resp_headers, attempts,
                                  time.monotonic() - started, unknown)
                reply_info = ResponseInfo(status, resp_headers, body, elapsed)
                if status == 429 or status >= 500 or status == 423:
                    if status == 429:
                        self._counters.add("rate_limited")
                        delay = self._pause_after_429(bucket, response.headers, attempts)
                    else:
                        self._counters.add("server_errors")
                        delay = self._backoff_delay(attempts)
                    if attempts <= self.max_retries:
                        self._retrying(method, path, f"HTTP {status}", delay, attempts, batch,
                                       causes)
                        if status != 429 or bucket is None:
                            time.sleep(delay)
                        continue
                    cls = BrazeRateLimited if status == 429 else BrazeServerError
                    last = f"HTTP {status}"
                    raise cls(f"{method} {path}: Braze answered {status} ({_message(body)}) "
                              f"{attempts} time(s)", status=status, body=body, request=info(),
                              response=reply_info,
                              outcome="unknown" if unknown else "not_applied",
                              attempts=attempts, endpoint=path, batch=batch,
                              hint="wait and run again; nothing from this request was applied"
                              if not unknown else "an earlier attempt's fate is unknown; check "
                                                  "the batch in Braze before resending it"
                              ) from None
                last = f"HTTP {status}"
                raise self._rejection(method, path, status, body, info(), reply_info, attempts,
                                      batch)
        except BaseException:
            if causes:
                self._retried(method, path, attempts, causes + [last] if last else causes,
                              batch, ok=False)
            raise

    def _wait_for(self, bucket: TokenBucket, path: str, info: Callable[[], RequestInfo],
                  attempts: int, unknown: int, batch: int | None) -> None:
        paused = bucket.paused_for()
        if paused > self.MAX_PAUSE_S:
            resets = datetime.fromtimestamp(time.time() + paused, tz=timezone.utc)
            raise BrazeRateLimited(
                f"{path}: Braze's rate limit for this workspace is used up until "
                f"{resets:%H:%M:%S} UTC", request=info(), attempts=attempts, endpoint=path,
                batch=batch, outcome="unknown" if unknown else "not_applied",
                hint="run again after the reset time, or lower the request volume")
        self._counters.add("rate_limit_wait_s", bucket.acquire())

    def _observe(self, bucket: TokenBucket, headers: Mapping[str, str]) -> None:
        limit, remaining, reset = parse_rate_headers(headers)
        if limit is None and remaining is None:
            return
        reset_in = bucket.seconds_until_reset(reset) if reset is not None else None
        if remaining is not None and remaining <= 0 and reset_in:
            reset_in += self._jitter(min(1.0, 0.05 + 0.1 * reset_in))
        bucket.observe(limit, remaining, reset_in)

    def _pause_after_429(self, bucket: TokenBucket | None, headers: Mapping[str, str],
                         attempts: int) -> float:
        """Seconds until sending may resume; every worker on the bucket pauses, not only this one."""
        _, _, reset = parse_rate_headers(headers)
        retry_after = _retry_after(headers)
        if reset is not None and bucket is not None:
            wait_s = bucket.seconds_until_reset(reset)
        elif reset is not None:
            wait_s = reset if reset < 1e9 else max(0.0, reset - time.time())
        elif retry_after is not None:
            wait_s = retry_after
        else:
            wait_s = self._backoff_delay(attempts)
        wait_s += self._jitter(min(1.0, 0.05 + 0.1 * wait_s))
        if bucket is not None:
            bucket.pause_for(wait_s)
        return wait_s

    def _backoff_delay(self, attempt: int) -> float:
        base, cap = self._backoff
        delay = min(cap, base * (2 ** (attempt - 1)))
        return delay / 2 + self._jitter(delay / 2)

    def _jitter(self, upto: float) -> float:
        with self._rng_lock:
            return self._rng.uniform(0.0, max(0.0, upto))

    def _retrying(self, method: str, path: str, why: str, delay: float, attempt: int,
                  batch: int | None, causes: list[str]) -> None:
        """Count one retry and log its details at DEBUG: a faulty run must not print a line
        per retry (the request's summary is `_retried`, the totals are in `stats`)."""
        self._counters.add("retries")
        if not causes:
            self._counters.add("retried_requests")
        causes.append(why)
        log.debug("%s %s: %s; retrying in %.2fs (attempt %d of %d%s) [%s]", method, path, why,
                  delay, attempt + 1, self.max_retries + 1,
                  f", batch {batch}" if batch is not None else "", self._label())

    def _retried(self, method: str, path: str, attempts: int, causes: list[str],
                 batch: int | None, *, ok: bool) -> None:
        """One INFO line for a request that needed retries, once its fate is known."""
        counts: dict[str, int] = {}
        for cause in causes:
            counts[cause] = counts.get(cause, 0) + 1
        why = ", ".join(f"{c} ×{n}" if n > 1 else c for c, n in counts.items())
        log.info("%s %s: %s after %d attempts (%s)%s", method, path,
                 "succeeded" if ok else "failed", attempts, why,
                 f" [batch {batch}]" if batch is not None else "")

    def _rejection(self, method: str, path: str, status: int, body: Any, request: RequestInfo,
                   response: ResponseInfo, attempts: int, batch: int | None) -> BrazeAPIError:
        message = _message(body)
        common = dict(status=status, body=body, request=request, response=response,
                      outcome="rejected", attempts=attempts, endpoint=path, batch=batch)
        partner = path.startswith("/partners/")
        if status == 401 and not partner:
            where = f"{self.endpoint} ({self.instance})" if self.instance else self.endpoint
            quoted = self._key.reveal()[:1] in "'\"`" or self._key.reveal()[-1:] in "'\"`"
            hint = ("the key starts or ends with a quote character — remove the quotes. "
                    if quoted else "")
            hint += ("Copy the REST API key and the REST endpoint from Settings > APIs and "
                     "Identifiers > API Keys of the same workspace: a key from a workspace on "
                     "another instance (e.g. EU-01, https://rest.fra-01.braze.eu) is refused here")
            return BrazeAuthError(
                f"Braze refused the API key sha256:{self._key.fingerprint} at {where} "
                f"({message}): the key is wrong or revoked, was pasted with quotes, or belongs to "
                f"a workspace on another Braze instance", hint=hint, **common)
        if status == 401:
            return BrazeAuthError(
                f"Braze refused the partner credentials at {path} ({message})",
                hint="check the partner API key (one for US clusters, another for EU) and the "
                     "workspace's Data Import Key (client_secret)", **common)
        if status == 403:
            permission = _PERMISSIONS.get(path)
            return BrazeAuthError(
                f"Braze refused {method} {path} for key sha256:{self._key.fingerprint} "
                f"({message})",
                hint=(f"give the key the '{permission}' permission" if permission else
                      "give the key the permission this endpoint needs") +
                     ", or check that the workspace's plan includes this endpoint", **common)
        if 300 <= status < 400:
            target = response.headers.get("Location", "elsewhere")
            return BrazeBadRequest(f"{method} {path}: the endpoint answered {status}, a redirect "
                                   f"to {target}", hint="use the REST endpoint itself (an "
                                   "instance name such as 'US-03' or its https:// URL); the key "
                                   "is not sent on to redirects", **common)
        if status == 404:
            return BrazeBadRequest(f"{method} {path}: Braze answered 404 ({message})",
                                   hint=f"check the endpoint {self.endpoint}: it must be the "
                                        f"REST endpoint of your instance", **common)
        error = BrazeBadRequest(f"{method} {path}: Braze refused the request with {status} "
                                f"({message})",
                                hint="fix the request; sending it again unchanged will fail "
                                     "the same way", **common)
        error.rejected = _rejected_of(_errors_of(body))
        return error


class CohortClient:
    """Braze partner cohort import (``/partners/<partner>/cohorts`` and ``…/cohorts/users``).

    Both keys travel in the JSON body, as Braze's partner API requires; they are redacted from
    every error, log and `RequestInfo`."""

    def __init__(self, client: BrazeClient, partner_api_key: Secret, client_secret: Secret, *,
                 partner: str = "segment") -> None:
        self._client = client
        self._partner_api_key = partner_api_key
        self._client_secret = client_secret
        self.partner = partner

    def __repr__(self) -> str:
        return (f"CohortClient({self._client.endpoint}, partner {self.partner!r}, partner key "
                f"sha256:{self._partner_api_key.fingerprint}, client_secret "
                f"sha256:{self._client_secret.fingerprint})")

    def _post(self, path: str, fields: dict) -> _Reply:
        payload = {"partner_api_key": self._partner_api_key.reveal(),
                   "client_secret": self._client_secret.reveal(), **fields}
        return self._client._request("POST", f"/partners/{self.partner}{path}", payload=payload,
                                     bearer=False,
                                     body_secrets=(self._partner_api_key, self._client_secret))

    def create(self, cohort_id: str, name: str, *, created_at: datetime | str | None = None) -> dict:
        """Register a cohort, or rename one Braze already knows."""
        if not str(cohort_id).strip() or not str(name).strip():
            raise ConfigError("a cohort needs a non-empty cohort_id and name", field="cohort_id")
        if created_at is None:
            created_at = datetime.now(timezone.utc)
        if isinstance(created_at, datetime):
            if created_at.tzinfo is None:
                created_at = created_at.replace(tzinfo=timezone.utc)
            created_at = created_at.isoformat()
        reply = self._post("/cohorts", {"cohort_id": str(cohort_id), "name": str(name),
                                        "created_at": created_at})
        return reply.body if isinstance(reply.body, dict) else {"message": reply.body}

    def update_users(self, cohort_id: str, *, add: Iterable[Any] = (),
                     remove: Iterable[Any] = ()) -> dict:
        """Add and remove users (external ids, or ``{"alias_name", "alias_label"}`` dicts),
        at most 1,000 identifiers per request; returns counts and the number of requests."""
        items = [(False, _cohort_id_kind(u)) for u in add]
        items += [(True, _cohort_id_kind(u)) for u in remove]
        requests_made = 0
        for start in range(0, len(items), COHORT_IDS_PER_REQUEST):
            changes = []
            for should_remove in (False, True):
                change: dict[str, Any] = {}
                for removing, (kind, value) in items[start:start + COHORT_IDS_PER_REQUEST]:
                    if removing == should_remove:
                        change.setdefault(kind, []).append(value)
                if change:
                    if should_remove:
                        change["should_remove"] = True
                    changes.append(change)
            self._post("/cohorts/users", {"cohort_id": str(cohort_id), "cohort_changes": changes})
            requests_made += 1
        return {"cohort_id": str(cohort_id), "added": sum(1 for r, _ in items if not r),
                "removed": sum(1 for r, _ in items if r), "requests": requests_made}


# ------------------------------------------------------------------------------- helpers
def _segment_id(segment_id: Any) -> str:
    if not isinstance(segment_id, str) or not segment_id.strip():
        raise ConfigError(f"a segment id must be a non-empty string, not {segment_id!r}",
                          field="segment_id",
                          hint="copy the Segment API identifier from Braze (Settings > APIs and "
                               "Identifiers) or from /segments/list")
    return segment_id.strip()


def _cohort_id_kind(user: Any) -> tuple[str, Any]:
    if isinstance(user, str) and user:
        return ("user_ids", user)
    if isinstance(user, Mapping) and user.get("alias_name") and user.get("alias_label"):
        return ("aliases", {"alias_name": str(user["alias_name"]),
                            "alias_label": str(user["alias_label"])})
    raise ConfigError(f"not a cohort member identifier: {user!r}", field="cohort_changes",
                      hint="use an external id string or {'alias_name': …, 'alias_label': …}")


def _classify(exc: requests.RequestException) -> tuple[str, str, str]:
    """(outcome, kind, description) of a transport failure; kind is timeout|connection|fatal."""
    name = type(exc).__name__
    if isinstance(exc, requests.exceptions.SSLError):
        return "not_applied", "fatal", "TLS handshake failed (certificate or protocol)"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "not_applied", "connection", "connecting timed out"
    if isinstance(exc, requests.exceptions.Timeout):
        return "unknown", "timeout", "no answer within the timeout (the request was sent)"
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidHeader,
                        requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema)):
        return "not_applied", "fatal", f"invalid request ({name})"
    if isinstance(exc, requests.exceptions.ConnectionError) and _failed_before_sending(exc):
        return "not_applied", "connection", "could not connect (refused or unreachable)"
    return "unknown", "connection", "the connection dropped before Braze answered"


def _failed_before_sending(exc: BaseException) -> bool:
    import urllib3.exceptions as u3

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


def _body_of(response: requests.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text[:2000]


def _message(body: Any) -> str:
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])[:300]
    if isinstance(body, str) and body.strip():
        return body.strip()[:300]
    return "no message"


def _errors_of(body: Any) -> list[dict]:
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return []
    return [e if isinstance(e, dict) else {"type": str(e)} for e in errors]


def _rejected_of(errors: list[dict]) -> dict[tuple[str, int], str]:
    rejected: dict[tuple[str, int], str] = {}
    for error in errors:
        array, index = error.get("input_array"), error.get("index")
        if array in TRACK_ARRAYS and isinstance(index, int) and not isinstance(index, bool):
            reason = str(error.get("type") or error.get("message") or "rejected")
            key = (array, index)
            rejected[key] = f"{rejected[key]}; {reason}" if key in rejected else reason
    return rejected


def _retry_after(headers: Mapping[str, str]) -> float | None:
    for key, value in headers.items():
        if str(key).lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


def _next_cursor(headers: Mapping[str, str]) -> str | None:
    """The ``cursor`` of the ``rel="next"`` Link; only the cursor is used, never the link's host,
    so a Link can never send the API key elsewhere."""
    link = next((v for k, v in headers.items() if str(k).lower() == "link"), None)
    if not link:
        return None
    for part in link.split(","):
        target, _, rest = part.partition(";")
        if 'rel="next"' in rest.replace("'", '"').replace(" ", "") or "rel=next" in rest.replace(" ", ""):
            query = urlsplit(target.strip().strip("<>")).query
            values = parse_qs(query).get("cursor")
            if values and values[0]:
                return values[0]
    return None


def _query(params: Mapping[str, Any]) -> str:
    from urllib.parse import urlencode

    return urlencode({k: v for k, v in params.items() if v is not None})
