"""Check the Braze segments analysts built against the Engage computations they mirror.

The toolkit tells the analyst which Braze segment filter to build, pushes the data and verifies
values per user; the analyst then builds the segment in Braze's dashboard by hand (Braze has no
API to create segments). `check_segments(client, export, mapping)` closes that loop: it lists the
workspace's segments, pairs each with the computation it mirrors (by the mapping's name
convention, or an explicit segment id the mapping records), and reports per computation:

- the recommended filter beside Braze's own description of the segment's filters, flagging
  another attribute, event, operator, value or event window (`toolkit.braze.descriptions`);
- the expected size (the preview's count of users the recommended filter selects) beside
  Braze's latest **daily estimate** and its time, or with ``exact=True`` the exact membership from
  ``/users/export/segment`` and the users that differ;
- a verdict — matches / within Braze's estimate error / differs — with the likely reason in words.

Braze's estimates "may be higher or lower than the shown value by approximately 1% of your
workspace's entire population size" (docs/reference-segments.md): a size within
``estimate_error`` × the population is "within estimate error", not a difference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Iterable

import pandas as pd

from toolkit.braze.descriptions import Difference, clauses_of, compare, parse_description
from toolkit.errors import BrazeAPIError, BrazeAuthError, SegmentCheckError

if TYPE_CHECKING:
    from toolkit.engage.model import EngageExport
    from toolkit.mapping import Mapping
    from toolkit.preview import Preview

__all__ = ["check_segments", "SegmentCheck", "VERDICTS", "REASONS", "PERMISSIONS", "command"]

# verdict → how the report words it
VERDICTS = {
    "matches": "matches",
    "within_error": "within Braze's estimate error",
    "differs": "differs",
    "no_segment": "no segment",
    "cannot_check": "cannot check",
}
# likely reason → its words (placeholders filled per computation)
REASONS = {
    "different_attribute": "filter on a different attribute: {detail}",
    "different_event": "filter on a different event: {detail}",
    "different_cohort": "filter on a different cohort: {detail}",
    "window_expired": "event window expired: {detail}. The sync stamps events with the "
                      "export's snapshot time ({snapshot}), so members whose events are older "
                      "than the window when Braze evaluates the segment drop out",
    "different_window": "a different event window: {detail}",
    "different_operator": "a different operator: {detail}",
    "different_value": "a different value: {detail}",
    "missing_filter": "a filter is missing: {detail}",
    "extra_filter": "an extra filter narrows the segment: {detail}",
    "not_refreshed": "segment not refreshed since the sync: Braze's latest estimate ({estimated}) "
                     "is not later than the sync ({synced}); Braze estimates sizes once a day, "
                     "so check again after its next estimate, or run the exact check",
    "not_received": "users Braze could not receive: Braze's segment has {short:,} fewer users "
                    "than the sync meant to select. In update-only mode Braze skips users it "
                    "does not know yet (verify lists them as 'not found in Braze'), rejected "
                    "objects are not stored, and nothing arrives before the sync has run; the "
                    "exact check lists them",
    "other_sources": "Braze's segment has {extra:,} more users than the export selects: "
                     "another source writes the same attribute or event, or exits were not "
                     "synced yet; the exact check lists them",
}
# aspect of a filter difference → the reason it suggests
_ASPECT_REASONS = {"attribute": "different_attribute", "event": "different_event",
                   "cohort": "different_cohort", "operator": "different_operator",
                   "fewer_operators": "different_operator",
                   "value": "different_value", "missing": "missing_filter",
                   "extra": "extra_filter"}
# which filter difference explains a size difference best, first first
_PRIORITY = ("attribute", "event", "cohort", "window", "missing", "operator", "value",
             "fewer_operators", "extra")
# REST API key permissions the check needs (the last only for the exact check)
PERMISSIONS = ("segments.list", "segments.details", "segments.data_series",
               "users.export.segment")
ERRORS = ("raise", "report")

_COLUMNS = ["key", "kind", "send_as", "segment_id", "segment_name", "recommended_filter",
            "braze_description", "filter_differences", "expected_size", "braze_estimate",
            "estimated_at", "estimate_error", "braze_exact", "differing_users", "verdict",
            "reason", "note"]


@dataclass
class SegmentCheck:
    """The result of `check_segments`: one row per computation (``to_frame()``), the users
    that differ per computation after an exact check (``differing(key)``)."""

    rows: list[dict]
    synced_at: pd.Timestamp | None = None
    exact: bool = False
    workspace: str | None = None
    _differing: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        """True when every paired segment matches (or is within Braze's estimate error)."""
        return all(r["verdict"] in ("matches", "within_error") for r in self.rows
                   if r["verdict"] != "no_segment")

    def to_frame(self) -> pd.DataFrame:
        """One row per computation: the filters side by side, the sizes, verdict and reason."""
        frame = pd.DataFrame(self.rows, columns=_COLUMNS)
        return frame.astype({"expected_size": "Int64", "braze_estimate": "Int64",
                             "estimate_error": "Int64", "braze_exact": "Int64",
                             "differing_users": "Int64"})

    def differing(self, key: str) -> pd.DataFrame:
        """After an exact check: the users in Braze's segment or in the expected selection but
        not both (``user``, ``in_braze``, ``expected``, ``why``)."""
        if key not in self._differing:
            raise SegmentCheckError(f"no exact comparison for {key!r}", rule=key,
                                    hint="run check_segments(..., exact=True) (CLI: --exact); "
                                         "exact comparisons: "
                                         + (", ".join(self._differing) or "none"))
        return self._differing[key].copy()

    def summary(self) -> dict[str, int]:
        """How many computations got each verdict."""
        out = {v: 0 for v in VERDICTS}
        for r in self.rows:
            out[r["verdict"]] += 1
        return {k: v for k, v in out.items() if v}

    def __repr__(self) -> str:
        head = (f"<SegmentCheck of {len(self.rows)} computation(s)"
                f"{' (exact)' if self.exact else ''}: "
                + ", ".join(f"{n} {VERDICTS[v]}" for v, n in self.summary().items()) + ">")
        lines = [head]
        for r in self.rows:
            size = _sizes_text(r)
            lines.append(f"  {r['key']}: {VERDICTS[r['verdict']]}"
                         + (f" — {size}" if size else "")
                         + (f"\n    {r['reason']}" if r["reason"] else ""))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        colour = {"matches": "#1e8449", "within_error": "#1e8449", "differs": "#c0392b",
                  "no_segment": "#b9770e", "cannot_check": "#b9770e"}
        body = []
        for r in self.rows:
            flags = "".join(f"<li>{escape(d)}</li>" for d in r["filter_differences"] or [])
            described = escape(r["braze_description"] or "—")
            segment = (f"{escape(r['segment_name'] or '')}<br><small><code>"
                       f"{escape(r['segment_id'])}</code></small>" if r["segment_id"]
                       else f"<small>{escape(r['note'] or '')}</small>")
            body.append(
                f"<tr style='vertical-align:top'><td><code>{escape(r['key'])}</code><br><small>{escape(r['kind'])}, "
                f"{escape(r['send_as'])}</small></td><td>{segment}</td>"
                f"<td>{escape(r['recommended_filter'])}</td>"
                f"<td>{described}{f'<ul style=color:#c0392b>{flags}</ul>' if flags else ''}</td>"
                f"<td>{'<br>'.join(escape(p) for p in _sizes_text(r, chr(10)).splitlines())}</td>"
                f"<td style='color:{colour[r['verdict']]}'><b>{escape(VERDICTS[r['verdict']])}"
                f"</b><br><small>{escape(r['reason'] or '')}</small></td></tr>")
        synced = (f"; sync finished {escape(self.synced_at.isoformat())}"
                  if self.synced_at is not None else "")
        heads = ["computation", "Braze segment", "recommended filter",
                 "Braze's description of its filters", "size: expected · Braze", "verdict"]
        return (f"<div class='segment-check'><h4>Braze segments checked"
                f"{' exactly' if self.exact else ''}</h4><p>"
                + escape(", ".join(f"{n} {VERDICTS[v]}" for v, n in self.summary().items()))
                + f"{synced}.</p><table style='text-align:left'><thead><tr>"
                + "".join(f"<th>{h}</th>" for h in heads)
                + f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def _sizes_text(r: dict, joiner: str = " · ") -> str:
    if r["expected_size"] is None:
        return ""
    parts = [f"expected {r['expected_size']:,}"]
    if r["braze_exact"] is not None:
        parts.append(f"Braze exactly {r['braze_exact']:,}")
    if r["braze_estimate"] is not None:
        parts.append(f"Braze estimate {r['braze_estimate']:,} ±{r['estimate_error']:,} "
                     f"({r['estimated_at']})")
    return joiner.join(parts)


def check_segments(client: Any, export: "EngageExport", mapping: "Mapping", *,
                   preview: "Preview | None" = None, exact: bool = False,
                   synced_at: Any = None, estimate_error: float = 0.01,
                   population: int | None = None, check_filters: bool = True,
                   keys: Iterable[str] | None = None, length: int = 30,
                   errors: str = "raise", progress: bool | None = None) -> SegmentCheck:
    """Check every computation's Braze segment (see the module docstring).

    ``preview``: the mapping's preview of the export (built when not given). ``exact``: export
    each segment (``/users/export/segment``) and list the differing users instead of trusting
    the daily estimate. ``synced_at``: when the sync finished (a time, or a `SyncReport`), to
    tell a segment Braze has not re-estimated since. ``estimate_error`` × ``population`` is the
    estimate error allowed; Braze's error is a share of the whole workspace, so give its number
    of users when it holds many more than the export (default: the users the preview projects).
    ``check_filters=False`` compares sizes only. ``length``: days of estimates to read (1–100).
    ``errors``: "raise" a `SegmentCheckError` for a segment that cannot be checked (unknown
    id, empty or unreadable description, no estimate yet), or "report" it as a row.
    ``progress``: a bar over the computations (default: with ``exact``, whose exports can take
    minutes each)."""
    if errors not in ERRORS:
        raise SegmentCheckError(f"errors must be one of {ERRORS}, not {errors!r}",
                                field="errors")
    if not isinstance(estimate_error, (int, float)) or not 0 <= estimate_error < 1:
        raise SegmentCheckError(f"estimate_error must be a fraction from 0 to 1, not "
                                f"{estimate_error!r}", field="estimate_error",
                                hint="Braze's estimates are off by about 1% of all users: 0.01")
    if population is not None and (isinstance(population, bool)
                                   or not isinstance(population, int) or population < 0):
        raise SegmentCheckError(f"population must be a number of users, not {population!r}",
                                field="population",
                                hint="give the workspace's number of users, e.g. 2500000")
    if preview is None:
        preview = mapping.preview(export)
    if isinstance(keys, str):
        keys = [keys]
    wanted = list(keys) if keys is not None else [r.key for r in mapping]
    for key in wanted:
        mapping[key]
    synced = _sync_time(synced_at)
    users = _user_count(preview) if population is None else int(population)
    tolerance = math.ceil(estimate_error * users)
    frame = preview.to_frame()
    workspace = getattr(client, "workspace_name", None)
    try:
        listing = client.segments()
    except BrazeAuthError as exc:
        raise _permission_error(exc, exact) from None
    by_id = {str(s.get("id")): s for s in listing}
    by_name: dict[str, list[dict]] = {}
    for s in listing:
        by_name.setdefault(_norm(s.get("name")), []).append(s)
    check = SegmentCheck(rows=[], synced_at=synced, exact=exact, workspace=workspace)
    from tqdm.auto import tqdm

    for key in tqdm(wanted, desc="segments: exact check" if exact else "segments: check",
                    unit="segment", leave=False,
                    disable=not (exact if progress is None else progress)):
        rule = mapping[key]
        recommended = preview.filter_for(key)
        rows = frame[(frame["key"] == key) & frame["recommended"]]
        expected = int(rows["filter_selects"].iloc[0]) if len(rows) else None
        row = {"key": key, "kind": rule.kind, "send_as": rule.send_as, "segment_id": None,
               "segment_name": None, "recommended_filter": str(recommended),
               "braze_description": None, "filter_differences": [],
               "expected_size": expected, "braze_estimate": None, "estimated_at": None,
               "estimate_error": tolerance, "braze_exact": None, "differing_users": None,
               "verdict": "cannot_check", "reason": "", "note": ""}
        try:
            segment = _pair(mapping, key, by_id, by_name)
            if segment is None:
                name = mapping.segment_name(key)
                row.update(verdict="no_segment",
                           note=f"no segment named {name!r}: build it in Braze with the "
                                f"recommended filter, or pair it by id "
                                f"(mapping.pair_segment({key!r}, SEGMENT_ID))")
                check.rows.append(row)
                continue
            sid = str(segment["id"])
            row.update(segment_id=sid, segment_name=segment.get("name"))
            _check_one(client, preview, export, rule, recommended, row, check, exact=exact,
                       synced=synced, tolerance=tolerance, check_filters=check_filters,
                       length=length, estimate_error=estimate_error)
        except SegmentCheckError as exc:
            if errors == "raise":
                raise
            row.update(verdict="cannot_check", reason=exc.message, note=exc.hint or "")
        except BrazeAuthError as exc:
            raise _permission_error(exc, exact) from None
        check.rows.append(row)
    return check


def _check_one(client: Any, preview: "Preview", export: "EngageExport", rule: Any,
               recommended: Any, row: dict, check: SegmentCheck, *, exact: bool,
               synced: pd.Timestamp | None, tolerance: int, check_filters: bool,
               length: int, estimate_error: float) -> None:
    key, sid = rule.key, row["segment_id"]
    where = {"rule": key, "segment": f"{row['segment_name']!r} ({sid})"}
    try:
        details = client.segment_details(sid)
    except BrazeAPIError as exc:
        raise _unknown_segment(key, sid, check.workspace, exc) from None
    row["segment_name"] = row["segment_name"] or details.get("name")
    description = details.get("description")
    row["braze_description"] = description if isinstance(description, str) else None
    diffs: list[Difference] = []
    if check_filters:
        try:
            actual = parse_description(description, segment=where["segment"])
        except SegmentCheckError as exc:
            raise SegmentCheckError(exc.message, hint=exc.hint, rule=key,
                                    **exc.context) from None
        diffs = compare(clauses_of(recommended), actual)
        unread = [c.text for c in actual if c.subject == "unknown"]
        if unread:
            row["note"] = "could not read part of Braze's description: " + "; ".join(unread)
    row["filter_differences"] = [d.words for d in diffs]
    latest = None
    try:
        series = client.segment_data_series(sid, length=length)
    except BrazeAPIError as exc:
        raise _unknown_segment(key, sid, check.workspace, exc) from None
    points = [(_time(p.get("time")), p.get("size")) for p in series]
    points = [(t, s) for t, s in points if t is not None and isinstance(s, int)
              and not isinstance(s, bool)]
    if points:
        latest = max(points, key=lambda p: p[0])
        row["braze_estimate"], row["estimated_at"] = latest[1], latest[0].isoformat()
    elif not exact:
        raise SegmentCheckError(
            f"Braze has no size estimate for this segment in the last {length} days", **where,
            hint="Braze estimates segment sizes once a day (and only for segments with "
                 "analytics tracking): check again after its next estimate, or run the exact "
                 "check (exact=True, --exact), which exports the segment now")
    expected = row["expected_size"]
    stale = (latest is not None and synced is not None and latest[0] <= synced)
    if exact:
        members = client.export_segment(sid)
        row["braze_exact"] = len(members)
        size, tol = len(members), 0
        if len(preview.state.users) or not _user_count(preview):
            selected = recommended.evaluate(preview.state)
            want = set(selected.index[selected.to_numpy(dtype=bool)].astype(str))
            differing = _differing(members, want)
            check._differing[key] = differing
            row["differing_users"] = len(differing)
        else:
            # an export kept on disk is previewed a chunk at a time and keeps no state
            row["note"] = ("sizes compared exactly; users not listed: the export is kept on "
                           "disk and its preview keeps no per-user state (check a sample, "
                           "export.sample(n), to list them)")
    else:
        size, tol = (latest[1] if latest else None), tolerance
    if diffs:
        row["verdict"] = "differs"
        main = min(diffs, key=lambda d: _PRIORITY.index(d.aspect))
        row["reason"] = _reason_of(main, export, preview)
        if size is not None and expected is not None and abs(size - expected) <= tol:
            row["reason"] += " (the sizes agree for now)"
        return
    gap = size - expected
    if gap == 0:
        row["verdict"] = "matches"
    elif abs(gap) <= tol:
        row["verdict"] = "within_error"
        row["reason"] = (f"Braze's estimate is {abs(gap):,} {'above' if gap > 0 else 'below'} "
                         f"the expected size; its estimates may be off by about "
                         f"{tol:,} users ({estimate_error:.0%} of the workspace's users)")
    else:
        row["verdict"] = "differs"
        if stale and not exact:
            row["reason"] = REASONS["not_refreshed"].format(estimated=latest[0].isoformat(),
                                                            synced=synced.isoformat())
        elif gap < 0:
            row["reason"] = REASONS["not_received"].format(short=-gap)
        else:
            row["reason"] = REASONS["other_sources"].format(extra=gap)


def _reason_of(diff: Difference, export: "EngageExport", preview: "Preview") -> str:
    if diff.aspect == "window":
        if diff.narrows:
            snapshot = export.snapshot_at if export.snapshot_at is not None else preview.as_of
            return REASONS["window_expired"].format(
                detail=diff.words, snapshot=pd.Timestamp(snapshot).isoformat())
        return REASONS["different_window"].format(detail=diff.words)
    return REASONS[_ASPECT_REASONS[diff.aspect]].format(detail=diff.words)


def _differing(members: list[dict], want: set[str]) -> pd.DataFrame:
    """Users in Braze's segment or in the expected selection but not both."""
    rows = []
    matched: set[str] = set()
    for user in members:
        keys = _keys_of(user)
        hit = next((k for k in keys if k in want), None)
        if hit is not None:
            matched.add(hit)
            continue
        rows.append({"user": keys[0] if keys else "?", "in_braze": True, "expected": False,
                     "why": "in Braze's segment, not selected by the recommended filter on "
                            "what the export syncs"})
    for key in sorted(want - matched):
        rows.append({"user": key, "in_braze": False, "expected": True,
                     "why": "selected by the recommended filter on what the export syncs, "
                            "not in Braze's segment"})
    return pd.DataFrame(rows, columns=["user", "in_braze", "expected", "why"])


def _keys_of(user: dict) -> list[str]:
    """The keys a Braze user may have in the preview (`toolkit.braze.state`), best first."""
    keys = []
    if user.get("external_id"):
        keys.append(f"external_id:{user['external_id']}")
    for alias in user.get("user_aliases") or []:
        if isinstance(alias, dict) and alias.get("alias_name") and alias.get("alias_label"):
            keys.append(f"alias:{alias['alias_label']}:{alias['alias_name']}")
    if user.get("braze_id"):
        keys.append(f"braze_id:{user['braze_id']}")
    if user.get("email"):
        keys.append(f"email:{user['email']}")
    return keys


def _pair(mapping: "Mapping", key: str, by_id: dict, by_name: dict) -> dict | None:
    """The segment mirroring `key`: the mapping's explicit id, else the conventional name."""
    sid = mapping.segment_ids.get(key)
    if sid is not None:
        # /segments/list leaves archived segments out; details still tells them apart
        return by_id.get(sid) or {"id": sid, "name": None}
    found = by_name.get(_norm(mapping.segment_name(key)), [])
    if len(found) > 1:
        ids = ", ".join(str(s.get("id")) for s in found)
        raise SegmentCheckError(
            f"{len(found)} Braze segments are named {mapping.segment_name(key)!r} ({ids})",
            rule=key, hint=f"pair the right one by id: mapping.pair_segment({key!r}, "
                           f"SEGMENT_ID), or rename the others in Braze")
    return found[0] if found else None


def _unknown_segment(key: str, sid: str, workspace: str | None,
                     exc: BrazeAPIError) -> Exception:
    """Braze refusing a segment id (400/404) means it has no such segment; anything else
    (403, 429, 5xx, a dropped connection) is the error it is."""
    if exc.status not in (400, 404) or isinstance(exc, BrazeAuthError):
        return exc
    return SegmentCheckError(
        f"Braze knows no segment {sid!r}"
        + (f" in workspace {workspace!r}" if workspace else "")
        + f" (it answered {exc.status}: {_message(exc)})", rule=key, segment=sid,
        hint=f"copy the id from Braze (Settings > APIs and Identifiers, or the segment list) "
             f"and pair it again with mapping.pair_segment({key!r}, SEGMENT_ID), or "
             f"mapping.pair_segment({key!r}, None) to pair the segment by name")


def _permission_error(exc: BrazeAuthError, exact: bool) -> BrazeAuthError:
    if exc.status != 403:
        return exc
    endpoint = exc.context.get("endpoint") or ""
    needed = PERMISSIONS if exact else PERMISSIONS[:3]
    missing = {"/segments/list": "segments.list", "/segments/details": "segments.details",
               "/segments/data_series": "segments.data_series",
               "/users/export/segment": "users.export.segment"}.get(endpoint, "")
    return BrazeAuthError(
        f"the API key may not read Braze's segments: {endpoint} answered 403 "
        f"({_message(exc)})", status=403, body=exc.body, endpoint=endpoint,
        hint=f"the key needs the '{missing}' permission. Braze cannot add a permission to an "
             f"existing key: create a new REST API key (Settings > APIs and Identifiers > API "
             f"Keys) with the permissions the toolkit uses plus {', '.join(needed)}, put it in "
             f"BRAZE_API_KEY and revoke the old one (the sync ledger belongs to the workspace, "
             f"not the key)")


def _message(exc: BrazeAPIError) -> str:
    body = exc.body
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])[:200]
    return "no message"


def _user_count(preview: "Preview") -> int:
    """Braze users the preview projects (an on-disk export's preview counts them by chunk)."""
    count = getattr(preview, "user_count", None)
    return int(count) if count is not None else len(preview.state.users)


def _norm(name: Any) -> str:
    return " ".join(str(name or "").split()).casefold()


def _time(value: Any) -> pd.Timestamp | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        t = pd.Timestamp(value)
    except (ValueError, TypeError):
        return None
    if pd.isna(t):
        return None
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _sync_time(value: Any) -> pd.Timestamp | None:
    if value is None:
        return None
    value = getattr(value, "finished_at", value)
    if isinstance(value, (datetime, str, pd.Timestamp)) and value != "":
        t = _time(value if isinstance(value, str) else pd.Timestamp(value).isoformat())
        if t is not None:
            return t
    raise SegmentCheckError(f"synced_at must be a time or a sync report, not {value!r}",
                            field="synced_at", hint="pass report (toolkit.apply's result) or "
                                                    "an ISO-8601 time")


# -- python -m toolkit segments check ------------------------------------------------------
def _add_arguments(parser: Any) -> None:
    sub = parser.add_subparsers(dest="segments_command", metavar="ACTION", required=True)
    p = sub.add_parser("check", help="check the Braze segments analysts built against the "
                                     "computations they mirror",
                       description="Pair each computation with its Braze segment (by the "
                                   "mapping's name convention or segment id) and compare "
                                   "filters and sizes. Exit code 0: every paired segment "
                                   "matches; 1: some differ or cannot be checked; 2: error.")
    from toolkit.sync.cli import _target_arguments

    p.add_argument("export", help="Engage export file or folder")
    p.add_argument("--kind", default=None, help="export kind (default: detected)")
    p.add_argument("--mapping", default=None,
                   help="mapping YAML (default: every computation as an attribute)")
    p.add_argument("--exact", action="store_true",
                   help="export each segment (/users/export/segment, permission "
                        "users.export.segment) and list the users that differ, instead of "
                        "Braze's daily estimate")
    p.add_argument("--report", default=None,
                   help="the sync report written by `apply`: a Braze estimate not later than "
                        "the sync is reported as not refreshed")
    p.add_argument("--keys", default=None, help="comma-separated computation keys (default: all)")
    p.add_argument("--sizes-only", action="store_true",
                   help="compare sizes only, not Braze's description of the filters")
    p.add_argument("--estimate-error", type=float, default=0.01,
                   help="Braze's estimate error as a fraction of all users (default 0.01)")
    p.add_argument("--population", type=int, default=None,
                   help="the workspace's number of users, which Braze's estimate error is a "
                        "share of (default: the users the export syncs; give the workspace's "
                        "when it holds many more)")
    p.add_argument("--alias-label", default=None,
                   help="as for plan: profiles without user_id addressed by alias")
    p.add_argument("--email-opt-in", action="store_true",
                   help="as for plan: profiles without user_id addressed by email")
    p.add_argument("--users", type=int, default=20,
                   help="differing users to print per computation with --exact (default 20)")
    _target_arguments(p)


def _run(args: Any) -> int:
    from toolkit.engage.readers import load
    from toolkit.mapping import Mapping
    from toolkit.sync.cli import _client

    export = load(args.export, kind=args.kind)
    mapping = Mapping.load(args.mapping) if args.mapping else Mapping.from_export(export)
    preview = mapping.preview(export, email_opt_in=args.email_opt_in,
                              alias_label=args.alias_label)
    synced = None
    if args.report:
        from toolkit.sync.apply import SyncReport

        synced = SyncReport.load(args.report)
    keys = [k.strip() for k in args.keys.split(",") if k.strip()] if args.keys else None
    client = _client(args)
    try:
        result = check_segments(client, export, mapping, preview=preview, exact=args.exact,
                                synced_at=synced, estimate_error=args.estimate_error,
                                population=args.population,
                                check_filters=not args.sizes_only, keys=keys)
    finally:
        client.close()
    print(repr(result), flush=True)
    for row in result.rows:
        for words in row["filter_differences"]:
            print(f"  {row['key']}: {words}")
        if row["verdict"] == "no_segment":
            print(f"  {row['key']}: {row['note']}; recommended filter: "
                  f"{row['recommended_filter']}")
        if args.exact and row["differing_users"]:
            users = result.differing(row["key"])
            print(f"  {row['key']}: {len(users):,} differing user(s):")
            for u in users.head(max(0, args.users)).itertuples(index=False):
                print(f"    {u.user}: {u.why}")
    if result.synced_at is None and not args.exact:
        print("note: sync time unknown (pass --report REPORT.json): an estimate Braze made "
              "before the sync cannot be told apart")
    return 0 if result.ok else 1


command = SimpleNamespace(add_arguments=_add_arguments, run=_run,
                          __doc__="check Braze segments against the computations they mirror")
