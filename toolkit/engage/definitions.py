"""Where Engage audience definitions come from: a pasted query, a file of the Public API's JSON
response, or the Segment Public API itself (``GET /spaces/{spaceId}/audiences``).

The Public API (segment-engage.md §2.3; public-api-sdk ``docs/AudiencesApi.md``) answers
``{"data": {"audiences": [AudienceSummary…], "pagination": {"current", "next",
"totalEntries"}}}``, each audience with ``id``, ``spaceId``, ``name``, ``key``, ``enabled`` and
``definition: {query, type: USERS|ACCOUNTS}``; pages are asked for with ``pagination.count`` and
``pagination.cursor``; auth is a Bearer token (``SEGMENT_PUBLIC_API_TOKEN``), never shown: only a
short fingerprint appears in reprs and errors. ``list_audiences`` is limited to 25 requests per
minute, so 429s are waited out (``Retry-After``), with a bounded number of retries.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import quote

import requests

import pandas as pd

from toolkit.engage.query import Definition, parse
from toolkit.engage.segment_http import get_with_retries
from toolkit.errors import DefinitionError, PublicAPIError
from toolkit.secrets import key_fingerprint

__all__ = ["AudienceDefinition", "Definitions", "load_definitions", "SegmentPublicAPI",
           "DEFAULT_PUBLIC_API_URL", "TOKEN_ENV"]

DEFAULT_PUBLIC_API_URL = "https://api.segmentapis.com"
TOKEN_ENV = "SEGMENT_PUBLIC_API_TOKEN"
_ACCEPT = "application/vnd.segment.v1alpha+json, application/json"


@dataclass(frozen=True)
class AudienceDefinition:
    """One Engage audience: its key (the trait name on profiles), name and parsed definition."""

    key: str | None
    name: str
    definition: Definition
    id: str | None = None
    enabled: bool = True
    include_anonymous: bool | None = None   # options.includeAnonymousUsers, when given

    @property
    def query(self) -> str:
        return self.definition.text

    @property
    def level(self) -> str:
        return self.definition.level

    def __str__(self) -> str:
        return f"{self.key or self.name}: {self.query}"

    def _repr_html_(self) -> str:
        return (f"<p><b>{escape(self.name)}</b> (<code>{escape(str(self.key))}</code>, "
                f"{self.level.lower()}): <code>{escape(self.query)}</code></p>")


class Definitions:
    """Audience definitions by key, in source order; ``defs["vip_customer"]``, iteration, a table."""

    def __init__(self, items: Iterable[AudienceDefinition], *, source: str = "") -> None:
        self._items = list(items)
        self.source = source

    def __iter__(self) -> Iterator[AudienceDefinition]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return any(d.key == key for d in self._items)

    def __getitem__(self, key: str | int) -> AudienceDefinition:
        if isinstance(key, int):
            return self._items[key]
        for d in self._items:
            if d.key == key:
                return d
        raise DefinitionError(f"no audience definition with key {key!r}", field="key",
                              hint="keys: " + (", ".join(str(d.key) for d in self._items)
                                               or "none"))

    def keys(self) -> list[str]:
        return [d.key for d in self._items if d.key]

    def to_frame(self):
        return pd.DataFrame([{"key": d.key, "name": d.name, "type": d.level, "enabled": d.enabled,
                              "query": d.query} for d in self._items],
                            columns=["key", "name", "type", "enabled", "query"])

    def __repr__(self) -> str:
        lines = [f"Definitions({len(self)}{', ' + self.source if self.source else ''})"]
        lines += [f"  {d}" for d in self._items]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return (f"<div class='engage-definitions'><p>{len(self)} audience definitions"
                f"{' from ' + escape(self.source) if self.source else ''}</p>"
                f"{self.to_frame().to_html(index=False)}</div>")


def _audience(item: Any, where: str) -> AudienceDefinition:
    if not isinstance(item, dict):
        raise DefinitionError(f"{where} is not an audience object", field="audiences",
                              hint="each audience is an object with key, name and definition")
    definition = item.get("definition")
    if not isinstance(definition, dict) or not isinstance(definition.get("query"), str):
        raise DefinitionError(f"{where} ({item.get('key') or item.get('name') or '?'}) has no "
                              "definition.query", field="definition.query",
                              hint="the Public API returns definition: {query, type} per "
                                   "audience; audiences built in the app may have none")
    key = item.get("key")
    try:
        parsed = parse(definition["query"], level=str(definition.get("type") or "USERS"))
    except DefinitionError as err:
        # keep the parser's location, and say which audience it is
        raise DefinitionError(f"{where} ({key}): {err.message}", hint=err.hint,
                              **{**err.context, "field": "definition.query"}) from None
    options = item.get("options") if isinstance(item.get("options"), dict) else {}
    anonymous = options.get("includeAnonymousUsers")
    return AudienceDefinition(key=key, name=str(item.get("name") or key or "audience"),
                              definition=parsed, id=item.get("id"),
                              enabled=bool(item.get("enabled", True)),
                              include_anonymous=anonymous if isinstance(anonymous, bool)
                              else None)


def _from_document(doc: Any, source: str) -> Definitions:
    """Accepts the list response, a single get response, or a bare list of audiences."""
    items: Any = doc
    if isinstance(doc, dict):
        data = doc.get("data", doc)
        if isinstance(data, dict) and "audiences" in data:
            items = data["audiences"]
        elif isinstance(data, dict) and "audience" in data:
            items = [data["audience"]]
        elif isinstance(data, dict) and "definition" in data:
            items = [data]
        else:
            raise DefinitionError("the JSON holds no audiences", file=source,
                                  hint='expected the Public API\'s {"data": {"audiences": '
                                       '[…]}} response')
    if not isinstance(items, list):
        raise DefinitionError("'audiences' must be a list", file=source, field="audiences",
                              hint="save the Public API's list_audiences response as is")
    return Definitions((_audience(item, f"audience {i}") for i, item in
                        enumerate(items, start=1)), source=source)


def load_definitions(source: str | os.PathLike | dict | list, *, key: str | None = None,
                     name: str | None = None, level: str = "USERS") -> Definitions:
    """Definitions from a pasted query string, a JSON file (or parsed document) of the Public
    API's response, or a folder of such files. A pasted query gets ``key`` (and ``name``)."""
    if isinstance(source, (dict, list)):
        return _from_document(source, "(document)")
    text = str(source)
    path = Path(text) if len(text) < 1024 and "\n" not in text else None
    if path is not None and path.exists():
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        if not files:
            raise DefinitionError("the folder holds no .json files", file=str(path),
                                  hint="save the Public API's response as audiences.json")
        out: list[AudienceDefinition] = []
        for f in files:
            try:
                doc = json.loads(f.read_text(encoding="utf-8-sig"))
            except json.JSONDecodeError as exc:
                raise DefinitionError(f"invalid JSON: {exc.msg}", file=str(f), line=exc.lineno,
                                      column=exc.colno,
                                      hint="save the Public API's response unchanged") from None
            except UnicodeDecodeError:
                raise DefinitionError("the file is not UTF-8 text", file=str(f),
                                      hint="save the Public API's response as UTF-8") from None
            try:
                out += list(_from_document(doc, str(f)))
            except DefinitionError as err:
                if "file" in err.context:
                    raise
                raise DefinitionError(err.message, hint=err.hint,
                                      **{**err.context, "file": str(f)}) from None
        return Definitions(out, source=str(path))
    if text.strip().endswith(".json") and "(" not in text:
        raise DefinitionError("file not found", file=text, hint="check the path")
    return Definitions([AudienceDefinition(key=key, name=name or key or "pasted definition",
                                           definition=parse(text, level=level))],
                       source="pasted query")


class SegmentPublicAPI:
    """A Public API session for one Engage space: ``audiences()`` pages through every definition."""

    def __init__(self, space_id: str, token: str | None = None, *,
                 base_url: str = DEFAULT_PUBLIC_API_URL, session: requests.Session | None = None,
                 timeout: float = 30.0, max_retries: int = 5, backoff: float = 1.0,
                 page_size: int = 100) -> None:
        token = token if token is not None else os.environ.get(TOKEN_ENV, "")
        if not token:
            raise PublicAPIError("no Segment Public API token",
                                 hint=f"set {TOKEN_ENV} in the environment or .env (create a "
                                      "token in Settings > Workspace settings > Access "
                                      "Management > Tokens)")
        if not space_id or not str(space_id).strip():
            raise PublicAPIError("no Engage space id", field="space_id",
                                 hint="the space id is in Engage > Settings (spa_…)")
        self.space_id = str(space_id).strip()
        self._token = token
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.page_size = page_size
        self.stats = {"requests": 0, "retries": 0, "429s": 0}

    def __repr__(self) -> str:
        return (f"<SegmentPublicAPI space {self.space_id} at {self.base_url}, token "
                f"#{key_fingerprint(self._token)}>")

    def _repr_html_(self) -> str:
        return (f"<p><b>Segment Public API</b> space <code>{escape(self.space_id)}</code> at "
                f"{escape(self.base_url)}, token #{key_fingerprint(self._token)}; "
                f"{self.stats['requests']} requests, {self.stats['429s']} rate-limited</p>")

    def _get(self, path: str, params: dict) -> dict:
        url = f"{self.base_url}/spaces/{quote(self.space_id)}/{path}"
        headers = {"Authorization": f"Bearer {self._token}", "Accept": _ACCEPT}
        resp = get_with_retries(
            self.session, url, params=params, headers=headers, timeout=self.timeout,
            max_retries=self.max_retries, backoff=self.backoff, stats=self.stats,
            unreachable=lambda exc: PublicAPIError(
                f"the Public API could not be reached ({type(exc).__name__})",
                request=f"GET /{path}", hint="check the network and the base URL"))
        if resp.status_code != 200:
            raise self._error(resp, path)
        try:
            body = resp.json()
        except ValueError:
            raise PublicAPIError("the Public API answered with something other than JSON",
                                 request=f"GET /{path}", status=resp.status_code,
                                 hint="check the base URL points at api.segmentapis.com"
                                 ) from None
        if not isinstance(body, dict):
            raise PublicAPIError("the Public API answered with an unexpected shape",
                                 request=f"GET /{path}", hint="expected a JSON object")
        return body

    def _error(self, resp: requests.Response, path: str) -> PublicAPIError:
        try:
            errors = resp.json().get("errors") or []
            detail = "; ".join(str(e.get("message", e)) for e in errors if e) or resp.reason
        except (ValueError, AttributeError):
            detail = resp.reason
        hints = {401: f"the token was refused: check {TOKEN_ENV} (token "
                      f"#{key_fingerprint(self._token)})",
                 403: "the token lacks access to this space's audiences: check its role in "
                      "Settings > Workspace settings > Access Management > Tokens",
                 404: "check the space id (spa_…); the Audiences API is in alpha and must be "
                      "enabled for the workspace",
                 429: "the Public API allows 25 list requests per minute; wait and retry"}
        text = str(detail).replace(self._token, "#" + key_fingerprint(self._token))
        return PublicAPIError(f"the Public API answered {resp.status_code}: {text}",
                              request=f"GET /{path}", status=resp.status_code,
                              hint=hints.get(resp.status_code, "see the message above"))

    def audiences(self) -> Definitions:
        """Every audience definition of the space (all pages)."""
        items: list[dict] = []
        cursor: str | None = None
        for page in range(1, 10_001):
            params: dict[str, Any] = {"pagination.count": self.page_size}
            if cursor:
                params["pagination.cursor"] = cursor
            body = self._get("audiences", params)
            data = body.get("data")
            if not isinstance(data, dict) or not isinstance(data.get("audiences"), list):
                raise PublicAPIError("the Public API's answer has no data.audiences list",
                                     request="GET /audiences", batch=page,
                                     hint="check the base URL and the API version")
            items += data["audiences"]
            cursor = (data.get("pagination") or {}).get("next")
            if not cursor:
                break
        return _from_document({"data": {"audiences": items}},
                              f"Public API space {self.space_id}")
