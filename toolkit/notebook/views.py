"""HTML views shared by the wizard and the notebooks: numbers, times, findings, freshness, errors.

Every view formats cells the same way — whole numbers with thousands separators (never
``494.0``), missing values as an em dash (never ``None``), times as "30 Nov 2026, 05:20 UTC" —
and stays within its container (long text wraps, wide tables scroll inside themselves only as a
last resort), so the wizard reads at 1280 px.
"""
from __future__ import annotations

import math
import numbers
import re
from datetime import datetime, timezone
from html import escape
from html import unescape as html_unescape
from typing import Any, Iterable

import pandas as pd

from toolkit.braze.filters import AnyOf, CustomEventCount, CustomEventPropertyCount

__all__ = ["cell", "readable", "table", "frame_html", "readable_time", "age", "freshness",
           "freshness_html", "filter_html", "error_title", "error_html", "findings_table",
           "findings_html", "WIZARD_FIXES", "STYLE", "event_staleness",
           "staleness_html"]

DASH = "—"

# One style sheet for the wizard (its class names start with gs-). Tables wrap their text and
# never push the page sideways; code wraps too, since attribute names can be long.
STYLE = """<style>
.gs-table{border-collapse:collapse;margin:4px 0 8px 0;max-width:100%;font-size:12.5px;
  line-height:1.4}
.gs-table th,.gs-table td{padding:2px 12px 2px 0;text-align:left;vertical-align:top}
.gs-table td{overflow-wrap:anywhere}
.gs-table th{overflow-wrap:normal}
.gs-table td.num,.gs-table th.num{text-align:right}
.gs-table td.num{white-space:nowrap}
.gs-table thead th{border-bottom:1px solid #ccc}
.gs-counters{line-height:1.4;margin:4px 0}
.gs-counters th,.gs-counters td{padding:1px 14px 1px 0;text-align:left}
.gs-wrap,.gs-box,.gs-warn,.gs-bad,.gs-good,.gs-legend{max-width:100%;overflow-wrap:anywhere;
  line-height:1.45}
.gs-wrap code,.gs-table code,.gs-box code,.gs-warn code{white-space:normal;overflow-wrap:anywhere}
.gs-box{border-left:4px solid #0072B2;padding:4px 10px;margin:6px 0;background:#f7fafc}
.gs-warn{border-left:4px solid #E69F00;padding:4px 10px;margin:6px 0;background:#fffaf0}
.gs-bad{border-left:4px solid #c0392b;padding:4px 10px;margin:6px 0;background:#fdf3f2}
.gs-good{border-left:4px solid #009E73;padding:4px 10px;margin:6px 0;background:#f2fbf7}
.gs-steps{line-height:1.6}
.gs-steps span{white-space:nowrap;display:inline-block;margin:0 2px 2px 0}
.gs-muted{color:#555}
.gs-root .widget-html-content{line-height:1.45}
.gs-root .widget-html-content p{margin:4px 0}
</style>"""


# -- cells -------------------------------------------------------------------------------------

def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    try:
        return bool(isinstance(value, float) and math.isnan(value))
    except TypeError:
        return False


def cell(value: Any) -> str:
    """One value as escaped HTML text: 1,234 · 12.5 · — for missing · readable times."""
    if _missing(value):
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        v = float(value)
        return f"{int(v):,}" if v.is_integer() else f"{v:,.2f}"
    if isinstance(value, (pd.Timestamp, datetime)):
        return escape(readable_time(value))
    return escape(str(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not _missing(value)


def readable(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` for reading, not computing: every cell as `cell` writes it (1,881 not
    1881.0, — for missing, readable times), numbers right-aligned in the text view."""
    out = frame.copy()
    for col in out.columns:
        column = out[col]
        numeric = (pd.api.types.is_numeric_dtype(column)
                   and not pd.api.types.is_bool_dtype(column))
        texts = [html_unescape(cell(v)) for v in column.astype(object)]
        if numeric:
            width = max((len(t) for t in texts), default=0)
            texts = [t.rjust(width) for t in texts]
        out[col] = pd.Series(texts, index=out.index, dtype=object)
    return out


def table(rows: Iterable[tuple[str, Any]], *, cls: str = "gs-table") -> str:
    """A two-column (label, value) table."""
    body = "".join(f"<tr><th>{escape(str(k))}</th>"
                   f"<td{' class=num' if _is_number(v) else ''}>{cell(v)}</td></tr>"
                   for k, v in rows)
    return f"<table class='{cls}'>{body}</table>"


def frame_html(frame: pd.DataFrame, *, max_rows: int | None = None, html_columns: Iterable[str]
               = (), what: str = "rows") -> str:
    """A DataFrame as a compact table; cut to ``max_rows`` with a line saying so."""
    html_columns = set(html_columns)
    shown = frame if max_rows is None else frame.head(max_rows)
    numeric = {c for c in frame.columns
               if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(
                   frame[c])}
    head = "".join(f"<th{' class=num' if c in numeric else ''}>{escape(str(c))}</th>"
                   for c in frame.columns)
    body = []
    for row in shown.itertuples(index=False):
        tds = []
        for c, v in zip(frame.columns, row):
            text = str(v) if c in html_columns and not _missing(v) else cell(v)
            tds.append(f"<td{' class=num' if c in numeric else ''}>{text}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    out = (f"<table class='gs-table'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}"
           f"</tbody></table>")
    if max_rows is not None and len(frame) > max_rows:
        out += (f"<p class='gs-muted'><small>Showing the first {max_rows:,} of {len(frame):,} "
                f"{escape(what)}.</small></p>")
    return out


# -- time --------------------------------------------------------------------------------------

def _utc(ts: Any) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def age(delta: pd.Timedelta) -> str:
    """A duration in words: "4 minutes", "3 hours", "2 days"."""
    seconds = max(delta.total_seconds(), 0)
    for size, unit in ((86400 * 365, "year"), (86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n:,} {unit}{'s' if n != 1 else ''}"
    return "less than a minute"


def readable_time(ts: Any, now: Any = None) -> str:
    """ "30 Nov 2026, 05:20 UTC", plus "(3 hours ago)" / "(in 1 hour)" when ``now`` is given."""
    if _missing(ts):
        return "unknown"
    t = _utc(ts)
    text = f"{t.day} {t:%b %Y, %H:%M} UTC"
    if now is not None:
        delta = t - _utc(now)
        if abs(delta.total_seconds()) < 60:
            text += " (just now)"
        elif delta.total_seconds() < 0:
            text += f" ({age(-delta)} ago)"
        else:
            text += f" (in {age(delta)})"
    return text


# segment-engage.md §3.2 (Engage docs): how often Engage refreshes what an export holds.
REFRESH = {
    "real-time": "real-time audiences and traits update about every 10 minutes",
    "batch": "batch audiences and traits recompute every 8 hours by default, and batch "
             "destinations receive changes every 12–15 hours",
    "new": "a new audience needs up to 24 hours to finish computing",
}


def freshness(export, now: Any = None) -> dict[str, str]:
    """How old an export is and how far it may lag Engage, in words.

    Returns ``snapshot`` (readable time and age), ``refresh`` (how Engage refreshes, from the
    reference notes) and ``lag`` (how old the preview built from it therefore may be).
    """
    now = _utc(now if now is not None else datetime.now(timezone.utc))
    snap = getattr(export, "snapshot_at", None)
    events = getattr(export, "events", None)
    replay = events is not None and len(events) > 0
    refresh = (f"Engage refreshes what you see here on its own schedule: {REFRESH['real-time']}; "
               f"{REFRESH['batch']}; {REFRESH['new']}.")
    if _missing(snap):
        return {"snapshot": "unknown (the export carries no snapshot time)", "refresh": refresh,
                "lag": "The preview may be any age: check when the export was made."}
    old = now - _utc(snap)
    basis = "its last event" if replay else "Engage's last compute before the export"
    return {
        "snapshot": f"{readable_time(snap, now)} — as fresh as {basis}",
        "refresh": refresh,
        "lag": (f"So the preview shows Engage as it was {age(old)} ago, when a real-time "
                f"audience was at most about 10 minutes behind its events and a batch one up to "
                f"8 hours. Export again before a push if that is too old."),
    }


def freshness_html(export, now: Any = None) -> str:
    f = freshness(export, now)
    return (f"<div class='gs-box gs-wrap'><b>Snapshot:</b> {escape(f['snapshot'])}.<br>"
            f"<small>{escape(f['refresh'])} {escape(f['lag'])}</small></div>")


# -- filters and errors ------------------------------------------------------------------------

_BACKTICKS = re.compile(r"`([^`]*)`")


def filter_html(text: str) -> str:
    """A Braze filter's text with `names` set as code instead of literal backticks."""
    return _BACKTICKS.sub(lambda m: f"<code>{m.group(1)}</code>", escape(str(text)))


_ERROR_TITLES = {
    "ApprovalRefused": "Not approved",
    "PushInProgress": "A push is running",
    "PlanNotApproved": "Not approved",
    "PlanExpired": "The approval expired",
    "PlanAltered": "The plan changed after approval",
    "PlanWorkspaceMismatch": "Approved for another workspace",
    "ConfigError": "A setting is missing",
    "ExportFormatError": "This export cannot be read",
    "ExportValidationError": "This export holds values the toolkit cannot use",
    "MappingError": "This mapping cannot be used",
    "FilterError": "This filter cannot be used",
    "PlanError": "The plan cannot be made",
    "LedgerError": "The sync ledger cannot be used",
    "LedgerMoved": "The ledger changed since the plan was made",
    "BrazeAuthError": "Braze refused the API key",
    "BrazeAPIError": "Braze answered with an error",
    "ReportError": "The report cannot be saved",
    "StepNotDone": "This step is not done yet",
}


def error_title(exc: BaseException) -> str:
    """Plain words for an error's kind (never a class name)."""
    for cls in type(exc).__mro__:
        if cls.__name__ in _ERROR_TITLES:
            return _ERROR_TITLES[cls.__name__]
    return "Something needs fixing"


def error_html(exc) -> str:
    """An error as a box: what happened, where, and how to fix it."""
    context = getattr(exc, "context", {}) or {}
    where = "".join(f"<tr><th>{escape(str(k))}</th><td>{cell(v)}</td></tr>"
                    for k, v in context.items() if not _missing(v))
    hint = getattr(exc, "hint", None)
    message = getattr(exc, "message", str(exc))
    return (f"<div class='gs-bad gs-wrap toolkit-error'><b>{escape(error_title(exc))}:</b> "
            f"{escape(message)}"
            + (f"<table class='gs-table'>{where}</table>" if where else "")
            + (f"<p style='margin:2px 0'><b>How to fix:</b> {escape(hint)}</p>" if hint else "")
            + "</div>")


# -- findings ----------------------------------------------------------------------------------

# Fixes that point to the wizard's own controls instead of code, by finding code.
WIZARD_FIXES = {
    "email_only": "In step 3 (Map), tick “Match profiles that have only an email, by email”; "
                  "or give them a userId in Segment.",
    "anonymous_only": "In step 3 (Map), tick “Send profiles without a user_id as user "
                      "aliases”; or identify them in Segment so they get a userId.",
    "no_identifier": "In step 3 (Map), tick “Send profiles without a user_id as user aliases”.",
    "cohort_identifier": "In step 3 (Map), tick “Send profiles without a user_id as user "
                         "aliases”: a cohort holds external ids and aliases only.",
    "invalid_value": "See “Values Braze would refuse” in step 3 (Map) for each value, and fix "
                     "them in Engage.",
    "type_conflict": "In step 3 (Map), send the trait to a new attribute name, or make the "
                     "trait produce one data type.",
    "cohort_unavailable": "In step 3 (Map), send the audience as a custom attribute; or set "
                          "BRAZE_PARTNER_API_KEY and BRAZE_DATA_IMPORT_KEY before starting "
                          "Jupyter.",
    "uncertain_events_held": "See the last step (What next) for how to settle them.",
}

_COUNT = re.compile(r"^\s*([\d,]+)\s+(?:\w+\s+)?(?:profile|value)")


def _count_in(message: str) -> int | None:
    m = _COUNT.match(message or "")
    return int(m.group(1).replace(",", "")) if m else None


def findings_table(findings, left_out: pd.DataFrame | None = None, *,
                   fixes: dict[str, str] | None = None, max_places: int = 8) -> pd.DataFrame:
    """One row per distinct finding message: severity, code, how many findings, how many
    profiles they concern, the message and the fix (each once), and where it occurs.

    Profiles are counted from ``left_out`` (a plan's profiles left out, by code) when given,
    else as the distinct profiles/rows the findings name, else from the count a summary message
    starts with ("61 profiles have …"); NA when a finding is not about profiles.
    """
    order = {"error": 0, "warning": 1, "info": 2}
    groups: dict[tuple, list] = {}
    for f in findings:
        groups.setdefault((f.severity, f.code, f.message), []).append(f)
    rows = []
    for (severity, code, message), items in sorted(
            groups.items(), key=lambda kv: (order.get(kv[0][0], 3), kv[0][1])):
        named = {f.segment_id or (f"row {f.row}" if f.row is not None else None) for f in items}
        named.discard(None)
        profiles: int | None
        shares_code = sum(1 for g in groups if g[1] == code) > 1
        if (left_out is not None and len(left_out) and not shares_code
                and code in set(left_out["code"])):
            profiles = int(left_out.loc[left_out["code"] == code, "segment_id"].nunique())
        elif named:
            profiles = len(named)
        else:
            profiles = _count_in(message)
        places = []
        for f in items:
            parts = [f"row {f.row}" if f.row is not None else "",
                     f"column {f.column}" if f.column else "", f.segment_id or ""]
            text = " ".join(p for p in parts if p)
            if text and text not in places:
                places.append(text)
        where = "; ".join(places[:max_places])
        if len(places) > max_places:
            where += f"; … and {len(places) - max_places:,} more"
        fix = (fixes or {}).get(code) or next((f.fix for f in items if f.fix), None)
        rows.append({"severity": severity, "code": code, "findings": len(items),
                     "profiles": profiles, "message": message, "fix": fix, "where": where})
    frame = pd.DataFrame(rows, columns=["severity", "code", "findings", "profiles", "message",
                                        "fix", "where"])
    for col in ("findings", "profiles"):
        frame[col] = frame[col].astype("Int64")
    return frame


_SEVERITY_COLOURS = {"error": "#c0392b", "warning": "#b9770e", "info": "#0072B2"}


def findings_html(findings, left_out: pd.DataFrame | None = None, *,
                  fixes: dict[str, str] | None = WIZARD_FIXES, limit: int = 12) -> str:
    """Findings grouped by message: each message and fix once, with counts and places.

    Says how many findings and distinct messages there are, and when the list is cut."""
    if not len(findings):
        return "<p>No findings: every row can be used as is.</p>"
    frame = findings_table(findings, left_out, fixes=fixes)
    items = []
    for row in frame.head(limit).itertuples(index=False):
        colour = _SEVERITY_COLOURS.get(row.severity, "#333")
        counts = f"{row.findings:,} finding{'s' if row.findings != 1 else ''}"
        if not _missing(row.profiles):
            counts += f", {row.profiles:,} profile{'s' if row.profiles != 1 else ''}"
        fix = "" if _missing(row.fix) or not row.fix else f"<br><b>Fix:</b> {escape(row.fix)}"
        where = ("" if _missing(row.where) or not row.where else
                 f"<br><small class='gs-muted'>Where: {escape(row.where)}</small>")
        items.append(f"<li style='margin-bottom:4px'><span style='color:{colour}'>"
                     f"<b>{escape(row.severity)}</b></span> <code>{escape(row.code)}</code> "
                     f"({counts}): {escape(row.message)}{fix}{where}</li>")
    cut = (f"<p class='gs-muted'><small>Showing {limit:,} of {len(frame):,} distinct messages."
           f"</small></p>" if len(frame) > limit else "")
    return (f"<p>{len(findings):,} finding{'s' if len(findings) != 1 else ''}, "
            f"{len(frame):,} distinct message{'s' if len(frame) != 1 else ''}:</p>"
            f"<ul class='gs-wrap' style='padding-left:18px;margin:2px 0'>{''.join(items)}</ul>"
            + cut)


# -- event filters that go stale ---------------------------------------------------------------

def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _walk(f) -> list:
    subs = getattr(f, "filters", None)
    return [f] if subs is None else [x for s in subs for x in _walk(s)]


def _event_filter(filters: list):
    for f in filters:
        leaves = _walk(f)
        if leaves and all(isinstance(x, (CustomEventCount, CustomEventPropertyCount))
                          for x in leaves):
            return f
    return None


def event_staleness(preview) -> list[dict[str, Any]]:
    """For every computation sent as events, when its Braze event filter stops selecting
    members, in plain words, and what to do instead.

    Returns dicts with ``key``, ``when`` (what goes wrong, with dates), ``why`` and ``instead``.
    """
    mapping, frame = preview.mapping, preview.to_frame()
    shared = mapping.shared_events()
    as_of = _utc(preview.as_of)
    out = []
    for rule in mapping:
        if not rule.sends_event:
            continue
        candidates = [f for f in (_event_filter([f]) for f in preview.filters.get(rule.key, []))
                      if f is not None]
        if not candidates:
            continue
        f = candidates[0]
        leaves = _walk(f)
        attr = f"Custom Attribute `{rule.attribute}`"
        instead = (f"For a segment that must stay right for months, send {rule.key} as a custom "
                   f"attribute (or attribute + events) in step 3: {attr} "
                   f"{'is true' if rule.kind == 'audience' else 'is not blank'} is rewritten by "
                   f"every sync and never ages out.")
        if rule.sends_attribute:
            instead = (f"Build the Braze segment on the attribute filter ({attr} "
                       f"{'is true' if rule.kind == 'audience' else 'is not blank'}); keep the "
                       f"events for campaigns triggered by entering or leaving.")
        rows = frame[(frame["key"] == rule.key) & frame["braze_filter"].eq(str(f))]
        missed = int(rows["outside_lookback"].iloc[0]) if len(rows) else 0
        if any(isinstance(x, CustomEventPropertyCount) for x in leaves):
            days = max(x.days for x in leaves if isinstance(x, CustomEventPropertyCount))
            names = [n for n in rule.event_names if n in shared]
            others = sorted({k for n in names for k in shared[n]} - {rule.key})
            what = "entering" if rule.kind == "audience" else "getting a new value"
            tag = "audience_key" if rule.kind == "audience" else "trait_key"
            until = readable_time(as_of + pd.Timedelta(days=days)).split(",")[0]
            out.append({
                "key": rule.key,
                "when": (f"Members drop out of this Braze segment {days} days after {what}, "
                         f"even while Engage keeps them in: members synced now are no longer "
                         f"selected after {until}."
                         + (f" {missed:,} members in this preview are already past the window."
                            if missed else "")),
                "why": (f"The event name “{names[0] if names else rule.event_names[0]}” is also "
                        f"sent by {', '.join(others) or 'other computations'}, so the filter has "
                        f"to check the event's {tag} property — and Braze looks back at most "
                        f"{days} days when a filter checks an event property. Engage sends the "
                        f"event once, when the change happens."),
                "instead": instead + " Or give this computation its own event names.",
            })
        elif rule.kind == "audience":
            k = len(f.filters) if isinstance(f, AnyOf) else 1
            if k > 1:
                when = (f"This filter is fitted to today's history, where a profile entered at "
                        f"most {k} times. A member who enters for the {_ordinal(k + 1)} time is "
                        f"not selected until “{rule.enter_event} exactly {k + 1} AND "
                        f"{rule.exit_event} exactly {k}” is added to the segment.")
            else:
                when = (f"A member who leaves and later comes back is not selected: their "
                        f"“{rule.exit_event}” count is no longer 0, so the segment needs "
                        f"“{rule.enter_event} exactly 2 AND {rule.exit_event} exactly 1” "
                        f"added — and one more clause for every further return.")
            out.append({
                "key": rule.key, "when": when,
                "why": ("Braze segments count events; they cannot ask “did the last event say "
                        "entered?”. Current members are those with one more entry than exits, "
                        "and Braze counts each event up to 50 times at most."),
                "instead": instead,
            })
        else:
            out.append({
                "key": rule.key,
                "when": (f"The filter selects everyone who ever had a value computed, including "
                         f"profiles whose {rule.key} has since changed or been removed."),
                "why": (f"“{rule.trait_event}” events record each new value as it happens; "
                        f"counting them does not tell Braze the value now."),
                "instead": instead,
            })
    return out


def staleness_html(preview) -> str:
    items = event_staleness(preview)
    if not items:
        return ""
    body = "".join(
        f"<li style='margin-bottom:6px'><code>{escape(i['key'])}</code>: "
        f"<b>{filter_html(i['when'])}</b><br><small>Why: {filter_html(i['why'])}</small><br>"
        f"<small><b>Instead:</b> {filter_html(i['instead'])}</small></li>" for i in items)
    return (f"<div class='gs-warn gs-wrap'><b>When the event filters stop selecting members"
            f"</b><ul style='padding-left:18px;margin:4px 0'>{body}</ul></div>")
