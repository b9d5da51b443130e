"""The sandbox's Braze segments: defined with the toolkit's filters, estimated daily, exported whole.

Braze has no API to create a segment: analysts build them in the dashboard. The sandbox stands in
for that dashboard with `BrazeSandbox.create_segment` (and the sandbox-only ``POST
/sandbox/segments``), taking `toolkit.braze.filters` definitions. What Braze's REST API then
offers is answered from here (docs/reference-segments.md has the sources):

- ``GET /segments/list``: 100 per page, ``page`` from 0, ``sort_direction`` asc (default) or desc
  by creation time; ``{id, name, analytics_tracking_enabled, tags}``.
- ``GET /segments/details``: ``created_at``, ``updated_at``, ``name``, ``description`` ("a
  human-readable description of filters"), ``text_description``, ``tags``, ``teams``.
- ``GET /segments/data_series``: ``length`` 1–100 days before ``ending_at`` (default now) of
  **daily estimates** ``{time, size}``. Braze estimates once a day from a sample, "higher or lower
  … by approximately 1% of your workspace's entire population": `estimate` (the sandbox's daily
  job) computes the exact size with Braze's filter semantics over the sandbox's users and moves
  it by up to ``estimate_error`` × the number of users, drawn from the seed.
- ``POST /users/export/segment``: asynchronous; answers ``{message, object_prefix, url}`` and the
  URL becomes a ZIP of newline-delimited user JSON files (one per 5,000 users) only when the
  export is ready; a second export of the same segment while one runs answers 429.

Where Braze documents nothing (the wording of ``description``, the answer to an unknown
``segment_id``, the date format of ``time``) the sandbox is strict and says so.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
import time
import zipfile
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from toolkit.sandbox.timeparse import format_time

__all__ = ["SegmentBook", "EXPORT_FIELDS_SEGMENT", "USERS_PER_FILE", "as_filter"]

STRICT = "(sandbox is strict here: Braze does not document this case)"
PAGE_SIZE = 100            # /segments/list: "returned in groups of 100"
MAX_SERIES_DAYS = 100      # /segments/data_series: length "between 1 and 100 (inclusive)"
USERS_PER_FILE = 5000      # /users/export/segment: "1 file per 5,000 users"
# Fields the sandbox can put in a segment export (Braze's list is longer; others are refused).
EXPORT_FIELDS_SEGMENT = frozenset({
    "external_id", "user_aliases", "braze_id", "email", "phone", "first_name", "last_name",
    "country", "dob", "gender", "home_city", "language", "time_zone", "created_at",
    "custom_attributes", "custom_events", "purchases",
})
_EPOCH_2017 = datetime(2017, 1, 1, tzinfo=timezone.utc)   # object_prefix timestamps count from it


def as_filter(filters: Any):
    """A `toolkit.braze.filters.Filter` from a Filter, a dict (``Filter.to_dict()``) or a list of
    either (joined with AND, as the filter groups of Braze's segment builder are)."""
    from toolkit.braze.filters import AllOf, Filter
    from toolkit.errors import FilterError

    if isinstance(filters, Filter):
        return filters
    if isinstance(filters, dict):
        return Filter.from_dict(filters)
    if isinstance(filters, (list, tuple)) and filters:
        items = [as_filter(f) for f in filters]
        return items[0] if len(items) == 1 else AllOf(*items)
    raise FilterError(f"a segment needs filters, got {filters!r}", field="filters",
                      hint="pass a toolkit.braze.filters Filter, its to_dict(), or a list of them")


class SegmentBook:
    """Every segment of the sandbox workspace, their daily estimates and running exports.

    Guarded by the store's lock; `state` reads the store's users into a `BrazeState`."""

    def __init__(self, store: Any, *, estimate_error: float = 0.01,
                 export_delay: float = 0.3) -> None:
        self.store = store
        self.estimate_error = float(estimate_error)
        self.export_delay = float(export_delay)
        self.clear()

    def clear(self) -> None:
        self.segments: dict[str, dict] = {}
        self.exports: dict[str, dict] = {}          # object_prefix -> export job
        self._count = 0
        self._draws = 0

    # ------------------------------------------------------------------ the analyst's side
    def create(self, name: str, filters: Any, *, tags: Iterable[str] = (),
               text_description: str | None = None, description: str | None = None,
               analytics_tracking: bool = True, at: datetime | None = None) -> str:
        """A new segment; returns its id. ``description`` overrides the wording of the
        filters (to stand in for a description Braze words differently)."""
        from toolkit.errors import SandboxError

        if not isinstance(name, str) or not name.strip():
            raise SandboxError("a segment needs a name", field="name",
                               hint="name it as the mapping's convention says, e.g. the key")
        f = as_filter(filters)
        now = _utc(at)
        with self.store.lock:
            self._count += 1
            digest = hashlib.blake2b(f"{self.store.seed}:segment:{self._count}".encode(),
                                     digest_size=16).hexdigest()
            sid = f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:]}"
            self.segments[sid] = {
                "id": sid, "name": name, "filter": f, "tags": [str(t) for t in tags],
                "description": str(f) if description is None else description,
                "text_description": text_description, "created_at": now, "updated_at": now,
                "analytics_tracking_enabled": bool(analytics_tracking), "series": {},
                "seq": self._count,
            }
        return sid

    def update(self, segment_id: str, filters: Any, *, description: str | None = None,
               at: datetime | None = None) -> None:
        """Change a segment's filters (its estimates so far stay, as Braze's history does)."""
        from toolkit.errors import SandboxError

        f = as_filter(filters)
        with self.store.lock:
            seg = self.segments.get(segment_id)
            if seg is None:
                raise SandboxError(f"no segment {segment_id!r}", field="segment_id",
                                   hint="use an id create_segment returned")
            seg.update(filter=f, description=str(f) if description is None else description,
                       updated_at=_utc(at))

    def state(self, as_of: datetime | None = None):
        """What the sandbox holds as a `BrazeState` (users keyed like the preview's)."""
        import pandas as pd

        from toolkit.braze.state import BrazeState

        with self.store.lock:
            users = list(self.store.users)
            keys = [_key(u) for u in users]
            rows = [dict(u.fields) | dict(u.attrs) for u in users]
            events = [(_key(u), n, t, p) for u, n, t, p, _ in self.store.event_log]
            cohorts = [(_key(u), c.get("name") or cid) for cid, c in self.store.cohorts.items()
                       for u in c["members"].values()]
        attributes = pd.DataFrame(rows, index=pd.Index(keys, name="user", dtype="string"))
        # one value kind per column as Braze locks it; object keeps mixed kinds apart
        attributes = attributes.astype(object)
        ev = pd.DataFrame(events, columns=["user", "name", "time", "properties"])
        ev["user"] = ev["user"].astype("string")
        ev["name"] = ev["name"].astype("string")
        ev["time"] = pd.to_datetime(ev["time"], utc=True)
        co = pd.DataFrame(cohorts, columns=["user", "cohort"]).astype("string")
        return BrazeState(attributes, ev, co, as_of=pd.Timestamp(_utc(as_of)))

    def members(self, segment_id: str, as_of: datetime | None = None) -> list:
        """The sandbox's users the segment selects now (exactly)."""
        seg = self.segments[segment_id]
        state = self.state(as_of)
        selected = seg["filter"].evaluate(state).to_numpy(dtype=bool)
        with self.store.lock:
            users = list(self.store.users)
        return [u for u, hit in zip(users, selected) if hit]

    def estimate(self, at: datetime | None = None) -> dict[str, int]:
        """Braze's daily estimate job: one size per segment with analytics tracking, for the
        day of ``at``, stamped with the time it ran (a second run on the same day replaces that
        day's point). The size is
        the exact one moved by up to ``estimate_error`` × all users, drawn from the seed."""
        when = _utc(at)
        day = when.replace(hour=0, minute=0, second=0, microsecond=0)
        state = self.state(when)
        population = len(state.users)
        out: dict[str, int] = {}
        with self.store.lock:
            segments = [s for s in self.segments.values() if s["analytics_tracking_enabled"]]
        for seg in segments:
            exact = int(seg["filter"].evaluate(state).sum())
            self._draws += 1
            rng = random.Random(f"{self.store.seed}:{seg['id']}:{self._draws}")
            spread = self.estimate_error * population
            size = max(0, exact + round(rng.uniform(-spread, spread)))
            with self.store.lock:
                seg["series"][day] = (when, size)
            out[seg["id"]] = size
        return out

    # ------------------------------------------------------------------ REST endpoints
    def list(self, params: dict[str, list[str]]) -> tuple[int, dict, dict]:
        page_text = (params.get("page") or ["0"])[0]
        try:
            page = int(page_text)
        except ValueError:
            page = -1
        if page < 0:
            return 400, {"message": f"Invalid 'page' parameter {page_text!r}: a page number "
                                    f"from 0"}, {}
        direction = (params.get("sort_direction") or ["asc"])[0]
        if direction not in ("asc", "desc"):
            return 400, {"message": f"Invalid 'sort_direction' {direction!r}: use 'asc' or "
                                    f"'desc' {STRICT}"}, {}
        with self.store.lock:
            ordered = sorted(self.segments.values(), key=lambda s: s["seq"],
                             reverse=direction == "desc")
            chunk = ordered[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
            items = [{"id": s["id"], "name": s["name"],
                      "analytics_tracking_enabled": s["analytics_tracking_enabled"],
                      "tags": list(s["tags"])} for s in chunk]
        return 200, {"message": "success", "segments": items}, {"objects": len(items)}

    def _segment(self, params: dict[str, list[str]]) -> tuple[dict | None, tuple | None]:
        sid = (params.get("segment_id") or [""])[0]
        if not sid:
            return None, (400, {"message": "'segment_id' is required"}, {})
        seg = self.segments.get(sid)
        if seg is None:
            return None, (400, {"message": f"Invalid 'segment_id': no segment {sid!r} in this "
                                           f"workspace {STRICT}"}, {})
        return seg, None

    def details(self, params: dict[str, list[str]]) -> tuple[int, dict, dict]:
        with self.store.lock:
            seg, error = self._segment(params)
            if error:
                return error
            return 200, {"message": "success", "created_at": format_time(seg["created_at"]),
                         "updated_at": format_time(seg["updated_at"]), "name": seg["name"],
                         "description": seg["description"],
                         "text_description": seg["text_description"],
                         "tags": list(seg["tags"]), "teams": []}, {"objects": 1}

    def data_series(self, params: dict[str, list[str]]) -> tuple[int, dict, dict]:
        length_text = (params.get("length") or [""])[0]
        if not length_text:
            return 400, {"message": "'length' is required"}, {}
        try:
            length = int(length_text)
        except ValueError:
            length = 0
        if not 1 <= length <= MAX_SERIES_DAYS:
            return 400, {"message": f"'length' must be between 1 and {MAX_SERIES_DAYS} "
                                    f"(inclusive), got {length_text!r}"}, {}
        ending_text = (params.get("ending_at") or [None])[0]
        if ending_text:
            from toolkit.sandbox.timeparse import parse_time

            ending = parse_time(_zone_padded(ending_text))
            if ending is None:
                return 400, {"message": f"'ending_at' must be an ISO-8601 time, got "
                                        f"{ending_text!r}"}, {}
        else:
            ending = datetime.now(timezone.utc)
        start = ending - timedelta(days=length)
        with self.store.lock:
            seg, error = self._segment(params)
            if error:
                return error
            points = [{"time": format_time(when), "size": size}
                      for _, (when, size) in sorted(seg["series"].items())
                      if start < when <= ending]
        return 200, {"message": "success", "data": points}, {"objects": len(points)}

    def export(self, body: Any, base_url: str) -> tuple[int, dict, dict]:
        if type(body) is not dict:
            return 400, {"message": "Bad Request: the body must be a JSON object"}, {}
        allowed = {"segment_id", "callback_endpoint", "fields_to_export",
                   "custom_attributes_to_export", "output_format"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            return 400, {"message": f"Bad Request: unknown field(s) {unknown} {STRICT}"}, {}
        sid = body.get("segment_id")
        if type(sid) is not str or not sid:
            return 400, {"message": "'segment_id' is required (a string)"}, {}
        fields = body.get("fields_to_export")
        if type(fields) is not list or not fields or not all(type(f) is str for f in fields):
            return 400, {"message": "'fields_to_export' is required: a non-empty array of "
                                    "strings"}, {}
        bad = sorted(set(fields) - EXPORT_FIELDS_SEGMENT)
        if bad:
            return 400, {"message": f"'fields_to_export' has unsupported field(s) {bad}; the "
                                    f"sandbox answers {sorted(EXPORT_FIELDS_SEGMENT)}"}, {}
        if body.get("callback_endpoint") is not None:
            return 400, {"message": f"'callback_endpoint' is not supported: the sandbox never "
                                    f"calls out; poll the url instead {STRICT}"}, {}
        if body.get("output_format") not in (None, "zip", "gzip"):
            return 400, {"message": "'output_format' must be 'zip' or 'gzip'"}, {}
        picked = body.get("custom_attributes_to_export")
        if picked is not None and (type(picked) is not list or len(picked) > 500
                                   or not all(type(a) is str for a in picked)):
            return 400, {"message": "'custom_attributes_to_export' must be an array of at "
                                    "most 500 attribute names"}, {}
        now = time.monotonic()
        with self.store.lock:
            if sid not in self.segments:
                return 400, {"message": f"Invalid 'segment_id': no segment {sid!r} in this "
                                        f"workspace {STRICT}"}, {}
            running = [j for j in self.exports.values()
                       if j["segment_id"] == sid and j["ready_at"] > now]
            if running:
                # "Attempting to export a segment a second time while the first export job is
                # still running will result in a 429 error."
                return 429, {"message": "An export of this segment is already running; wait "
                                        "for it to complete"}, {}
            started = datetime.now(timezone.utc)
            token = hashlib.blake2b(f"{self.store.seed}:export:{len(self.exports)}:{sid}"
                                    .encode(), digest_size=16).hexdigest()
            prefix = f"{token[:8]}-{token[8:12]}-{token[12:16]}-{token[16:20]}-{token[20:]}-" \
                     f"{int((started - _EPOCH_2017).total_seconds())}"
        members = self.members(sid)
        with self.store.lock:
            rows = []
            for user in members:
                row = self.store._export_user(user, [f for f in fields
                                                     if f != "custom_attributes"])
                if "custom_attributes" in fields or picked:
                    attrs = json.loads(json.dumps(user.attrs))
                    if picked and "custom_attributes" not in fields:
                        attrs = {k: v for k, v in attrs.items() if k in picked}
                    row["custom_attributes"] = attrs
                rows.append(row)
            self.exports[prefix] = {"segment_id": sid, "ready_at": now + self.export_delay,
                                    "data": _zip(prefix, rows), "users": len(rows)}
        url = f"{base_url}/sandbox/exports/{prefix}.zip"
        return 201, {"message": "success", "object_prefix": prefix, "url": url}, \
            {"objects": len(rows)}

    def download(self, name: str) -> tuple[int, bytes | dict]:
        """The export file once ready (the URL is its own credential, like a presigned URL)."""
        prefix = name[:-4] if name.endswith(".zip") else None
        with self.store.lock:
            job = self.exports.get(prefix) if prefix else None
            if job is None or job["ready_at"] > time.monotonic():
                # a presigned URL "will only become a valid location once the export is ready"
                return 404, {"message": "The export is not ready (or the URL is wrong)"}
            return 200, job["data"]


def _zip(prefix: str, rows: list[dict]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for n, start in enumerate(range(0, max(len(rows), 1), USERS_PER_FILE)):
            chunk = rows[start:start + USERS_PER_FILE]
            text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in chunk)
            info = zipfile.ZipInfo(f"{prefix}/{n:04d}.json", date_time=(2017, 1, 1, 0, 0, 0))
            archive.writestr(info, text)
    return buf.getvalue()


def _zone_padded(text: str) -> str:
    """``…T23:59:59-5:00`` (Braze's own data_series example) as ``…-05:00``; a ``+`` that a
    query string turned into a space is a ``+`` again."""
    import re

    text = re.sub(r"(\d{2}:\d{2}:\d{2}(?:\.\d+)?) (\d)", r"\1+\2", text)
    return re.sub(r"([+-])(\d)(:?\d{2})$", r"\g<1>0\2\3", text)


def _key(u) -> str:
    """A sandbox user's key as the preview names Braze users (`toolkit.braze.state`)."""
    if u.external_id is not None:
        return f"external_id:{u.external_id}"
    if u.aliases:
        name, label = u.aliases[0]
        return f"alias:{label}:{name}"
    return f"braze_id:{u.braze_id}"


def _utc(at: datetime | None) -> datetime:
    if at is None:
        return datetime.now(timezone.utc)
    if isinstance(at, str):
        at = datetime.fromisoformat(at.replace("Z", "+00:00"))
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)
