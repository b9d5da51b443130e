"""Client for the Segment Profile API (``profiles.segment.com``) and a loader that turns a list of
profile lookups into an `EngageExport`.

Per the Segment docs: HTTP Basic auth with the access token as user and an empty password;
profiles addressed as ``<type>:<value>`` with the value lower-cased and ``+`` sent as ``%2B``;
``cursor.next`` pagination; 429 answered with exponential backoff (honouring ``Retry-After``).
Audiences come from ``/traits?class=audience``, computed traits from
``/traits?class=computed_trait``, identifiers from ``/external_ids``. The token is never shown:
only a short fingerprint appears in reprs and errors.
"""
from __future__ import annotations

from html import escape
from typing import Any, Iterable, Iterator
from urllib.parse import quote

import numpy as np
import pandas as pd
import requests

from toolkit.engage.assemble import assemble
from toolkit.engage.frames import Typed, identifier_frame, type_python_values
from toolkit.engage.model import Findings
from toolkit.engage.segment_http import get_with_retries
from toolkit.errors import ProfileAPIError
from toolkit.secrets import key_fingerprint

__all__ = ["ProfileAPI", "load_profile_api", "profile_path_id", "DEFAULT_BASE_URL"]

DEFAULT_BASE_URL = "https://profiles.segment.com"
_ID_TYPES = ("user_id", "email", "anonymous_id", "braze_id")


def profile_path_id(identifier: str) -> str:
    """``type:value`` as the Profile API wants it in the path: lower-cased, ``+`` escaped."""
    if ":" not in identifier:
        raise ProfileAPIError(f"profile id {identifier!r} has no type",
                              field="ids", hint="write ids as type:value, e.g. user_id:u_000123")
    id_type, value = identifier.split(":", 1)
    if not id_type or not value:
        raise ProfileAPIError(f"profile id {identifier!r} needs both a type and a value",
                              field="ids", hint="write ids as type:value, e.g. user_id:u_000123")
    return f"{id_type.strip().lower()}:{quote(value.strip().lower(), safe='@._-~')}"


class ProfileAPI:
    """A Profile API session for one space: ``traits``, ``external_ids`` with pagination/backoff."""

    def __init__(self, space_id: str, token: str, *, base_url: str = DEFAULT_BASE_URL,
                 session: requests.Session | None = None, timeout: float = 30.0,
                 max_retries: int = 5, backoff: float = 0.5, page_size: int = 100) -> None:
        if not token:
            raise ProfileAPIError("no Profile API access token",
                                  hint="create one in Unify > Unify settings > API access")
        self.space_id = space_id
        self._token = token
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        self.session.auth = (token, "")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.page_size = page_size
        self.stats = {"requests": 0, "retries": 0, "429s": 0}

    def __repr__(self) -> str:
        return (f"<ProfileAPI space {self.space_id} at {self.base_url}, token "
                f"#{key_fingerprint(self._token)}>")

    def _repr_html_(self) -> str:
        return (f"<p><b>Segment Profile API</b> space <code>{escape(self.space_id)}</code> at "
                f"{escape(self.base_url)}, token #{key_fingerprint(self._token)}; "
                f"{self.stats['requests']} requests, {self.stats['429s']} rate-limited</p>")

    def _get(self, path: str, params: dict) -> dict:
        url = f"{self.base_url}/v1/spaces/{quote(self.space_id)}/{path}"
        resp = get_with_retries(
            self.session, url, params=params, timeout=self.timeout,
            max_retries=self.max_retries, backoff=self.backoff, stats=self.stats,
            unreachable=lambda exc: ProfileAPIError(
                f"the Profile API could not be reached ({type(exc).__name__})",
                request=f"GET /{path}", hint="check the network and the base URL"))
        if resp.status_code == 404:
            raise _NotFound(path)
        if resp.status_code >= 400:
            try:
                error = resp.json().get("error", {})
                detail = f"{error.get('code', '')}: {error.get('message', '')}".strip(": ")
            except ValueError:
                detail = resp.text[:200]
            hint = ("check the access token and the space id" if resp.status_code in (401, 403)
                    else "slow down or retry later" if resp.status_code == 429 else None)
            raise ProfileAPIError(f"HTTP {resp.status_code} {detail}",
                                  request=f"GET /{path}", status=resp.status_code,
                                  token=f"#{key_fingerprint(self._token)}", hint=hint)
        try:
            return resp.json()
        except ValueError:
            raise ProfileAPIError("the Profile API answered with something other than JSON",
                                  request=f"GET /{path}",
                                  hint="check that base_url is the Profile API "
                                       "(https://profiles.segment.com)") from None

    def _pages(self, path: str, params: dict) -> Iterator[dict]:
        params = {**params, "limit": self.page_size}
        while True:
            body = self._get(path, params)
            yield body
            cursor = body.get("cursor") or {}
            if not cursor.get("has_more") or not cursor.get("next"):
                return
            params = {**params, "next": cursor["next"]}

    def traits(self, identifier: str, *, klass: str | None = None,
               include: Iterable[str] | None = None) -> dict[str, Any]:
        """All traits of a profile (``klass``: "audience" or "computed_trait" to filter)."""
        params: dict[str, Any] = {}
        if klass:
            params["class"] = klass
        if include:
            params["include"] = ",".join(include)
        out: dict[str, Any] = {}
        for page in self._pages(f"collections/users/profiles/{profile_path_id(identifier)}/traits",
                                params):
            out.update(page.get("traits") or {})
        return out

    def external_ids(self, identifier: str) -> list[dict]:
        """Every external id of a profile: dicts with ``type`` and ``id``."""
        out: list[dict] = []
        path = f"collections/users/profiles/{profile_path_id(identifier)}/external_ids"
        for page in self._pages(path, {}):
            out.extend(page.get("data") or [])
        return out


class _NotFound(Exception):
    """Internal: the profile does not exist (404)."""


def load_profile_api(space_id: str, token: str, ids: Iterable[str], *,
                     base_url: str = DEFAULT_BASE_URL, include: Iterable[str] | None = None,
                     session: requests.Session | None = None, max_retries: int = 5,
                     backoff: float = 0.5, page_size: int = 100) -> "EngageExport":  # noqa: F821
    """Fetch each profile in `ids` (``type:value``) and build an `EngageExport`.

    Audience keys (``class=audience``) become audience computations, computed traits
    (``class=computed_trait``) trait computations; profiles not found are findings.
    """
    api = ProfileAPI(space_id, token, base_url=base_url, session=session,
                     max_retries=max_retries, backoff=backoff, page_size=page_size)
    findings = Findings()
    ids = list(ids)
    if not ids:
        raise ProfileAPIError("no profile ids to look up", field="ids",
                              hint="pass ids=['user_id:u_000123', …]")
    rows: list[dict] = []
    audience_keys: dict[str, None] = {}
    trait_keys: dict[str, None] = {}
    started = pd.Timestamp.now(tz="UTC")
    for n, identifier in enumerate(ids, start=1):
        try:
            audiences = api.traits(identifier, klass="audience", include=include)
            traits = api.traits(identifier, klass="computed_trait", include=include)
            external = api.external_ids(identifier)
        except _NotFound:
            findings.add("warning", "profile_not_found", f"no profile {identifier!r} in space "
                         f"{space_id}", row=n, column="ids",
                         fix="check the id type and value (values are lower-cased)")
            continue
        known: dict[str, list[str]] = {t: [] for t in (*_ID_TYPES, "segment_id")}
        for ext in external:
            t = str(ext.get("type", "")).lower()
            if t in known and ext.get("id") is not None:
                v = str(ext["id"])
                v = v.lower() if t == "email" else v
                if v not in known[t]:
                    known[t].append(v)
        id_type, _, value = identifier.partition(":")
        id_type = id_type.strip().lower()
        if id_type in known and not known[id_type]:
            known[id_type].append(value.strip().lower() if id_type == "email" else value.strip())
        for k in audiences:
            audience_keys.setdefault(k)
        for k in traits:
            trait_keys.setdefault(k)
        rows.append({"lookup": identifier, "ids": known, "audiences": audiences, "traits": traits,
                     "row": n})
    if not rows:
        raise ProfileAPIError("none of the profiles was found", field="ids",
                              hint="check the space id and the identifiers")
    segs = []
    for r in rows:
        k = r["ids"]
        segs.append(k["segment_id"][0] if k["segment_id"] else
                    next((f"{t}:{k[t][0]}" for t in ("user_id", "email", "anonymous_id",
                                                     "braze_id") if k[t]), r["lookup"]))
    idx = pd.RangeIndex(len(rows))
    ident = identifier_frame(
        segs, *[[r["ids"][t][0] if r["ids"][t] else None for r in rows] for t in _ID_TYPES[:2]],
        [r["ids"]["anonymous_id"][0] if r["ids"]["anonymous_id"] else None for r in rows],
        [r["ids"]["braze_id"][0] if r["ids"]["braze_id"] else None for r in rows],
        [r["ids"]["email"] for r in rows], [r["ids"]["anonymous_id"] for r in rows], idx)
    typed: dict[str, Typed] = {}
    comps = []
    for key in audience_keys:
        raw = pd.Series([r["audiences"].get(key) for r in rows], dtype=object)
        t = type_python_values(raw, audience=True)
        t.values = t.values.where(raw.notna(), False).astype("boolean")
        typed[key] = t
        comps.append({"key": key, "kind": "audience"})
    for key in trait_keys:
        if key in typed:
            continue
        typed[key] = type_python_values(pd.Series([r["traits"].get(key) for r in rows],
                                                  dtype=object))
        comps.append({"key": key, "kind": "trait"})
    return assemble(ident, typed, comps, events=None, snapshot_at=started,
                    source=f"Profile API space {space_id} ({len(rows)} profiles, profile_api)",
                    findings=findings, rows=np.array([r["row"] for r in rows]))
