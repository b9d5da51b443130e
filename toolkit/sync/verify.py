"""Verify a sync: read a sample of synced users back from Braze and compare with what was planned.

`verify(report, client)` takes users from the `SyncReport`'s sample of acknowledged users, reads
them with ``/users/export/ids`` (50 per request, ``fields_to_export`` always given) and compares
every planned attribute value and event count. Event counts are compared as "at least what this
sync sent": Braze counts every event the user ever had (last 90 days), including other sources.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from html import escape
from typing import Any

import pandas as pd

from toolkit.errors import ConfigError, ReportError
from toolkit.sync.apply import SyncReport

__all__ = ["verify", "VerifyReport"]

_FIELDS = ("external_id", "user_aliases", "braze_id", "email", "custom_attributes",
           "custom_events", "first_name", "last_name", "dob", "home_city", "country", "gender",
           "phone", "language", "time_zone")


@dataclass
class VerifyReport:
    """Per sampled user and field: what was planned, what Braze holds, and whether they agree."""

    plan_id: str
    workspace: str
    checks: list = field(default_factory=list)   # dicts: braze_user, kind, name, expected, actual, ok, note
    users_checked: int = 0
    users_missing: list = field(default_factory=list)
    users_skipped: int = 0
    requests: int = 0

    @property
    def ok(self) -> bool:
        """True when every sampled user exists in Braze and every compared value agrees."""
        return not self.users_missing and all(c["ok"] for c in self.checks)

    @property
    def mismatches(self) -> pd.DataFrame:
        frame = self.to_frame()
        return frame[~frame["ok"]] if len(frame) else frame

    def to_frame(self) -> pd.DataFrame:
        cols = ["braze_user", "kind", "name", "expected", "actual", "ok", "note"]
        return pd.DataFrame(self.checks, columns=cols)

    def __repr__(self) -> str:
        bad = int(sum(not c["ok"] for c in self.checks))
        return (f"<VerifyReport {self.plan_id}: {'OK' if self.ok else 'MISMATCH'} — "
                f"{self.users_checked} users, {len(self.checks)} values compared, {bad} differ, "
                f"{len(self.users_missing)} missing in Braze, {self.users_skipped} not checkable>")

    def _repr_html_(self) -> str:
        colour = "#27ae60" if self.ok else "#c0392b"
        bad = self.mismatches
        detail = (bad.head(30).to_html(index=False) if len(bad) else
                  "<p>Every compared value agrees.</p>")
        missing = (f"<p><b>Not found in Braze:</b> {escape(', '.join(self.users_missing[:20]))}"
                   "</p>" if self.users_missing else "")
        return (f"<div class='toolkit-verify' style='border-left:4px solid {colour};"
                f"padding:4px 8px'><h4>Verification — plan {escape(self.plan_id)}: "
                f"{'OK' if self.ok else 'MISMATCH'}</h4><p>{self.users_checked} users read back "
                f"from <code>{escape(self.workspace)}</code> ({self.requests} requests); "
                f"{len(self.checks)} values compared; {self.users_skipped} users not checkable "
                f"by external id or alias.</p>{missing}{detail}</div>")


def _same(expected: Any, actual: Any) -> bool:
    if expected is None:
        return actual is None
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual or expected == actual and type(expected) is type(actual)
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(float(expected), float(actual), rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(expected, str) and isinstance(actual, str) and expected != actual:
        # Braze may render times differently (…Z vs +00:00, milliseconds): compare instants.
        try:
            return pd.Timestamp(expected) == pd.Timestamp(actual)
        except (ValueError, TypeError):
            return False
    return expected == actual


def verify(report, client, sample: int = 50, wait: float = 0) -> VerifyReport:
    """Read ``sample`` synced users back from Braze and compare with the plan.

    ``report`` is a `SyncReport` or the path of a saved one; ``wait`` seconds are slept first
    (Braze is eventually consistent: allow up to a few minutes on a real workspace).
    """
    if not isinstance(report, SyncReport):
        report = SyncReport.load(report)
    if report.workspace != client.workspace:
        raise ReportError(f"the report is for workspace {report.workspace!r}, the client targets "
                          f"{client.workspace!r}", field="workspace",
                          hint="verify with a client for the workspace the sync went to")
    if not isinstance(sample, int) or sample < 1:
        raise ConfigError(f"sample must be a positive integer, not {sample!r}", field="sample")
    if wait:
        time.sleep(float(wait))
    out = VerifyReport(plan_id=report.plan_id, workspace=report.workspace)
    chosen = sorted(report.expected, key=lambda e: e["braze_user"])[:sample]
    by_id: dict[tuple, dict] = {}
    external_ids, aliases = [], []
    for entry in chosen:
        ident = entry["identifier"]
        if "external_id" in ident:
            external_ids.append(ident["external_id"])
            by_id[("external_id", ident["external_id"])] = entry
        elif "user_alias" in ident:
            a = ident["user_alias"]
            aliases.append(a)
            by_id[("alias", a["alias_name"], a["alias_label"])] = entry
        else:
            out.users_skipped += 1
    if not by_id:
        return out
    answer = client.export_ids(external_ids=external_ids, user_aliases=aliases,
                               fields_to_export=list(_FIELDS))
    out.requests = int(answer.get("requests", 0))
    found: dict[str, dict] = {}
    for user in answer.get("users", []):
        keys = []
        if user.get("external_id") is not None:
            keys.append(("external_id", user["external_id"]))
        for a in user.get("user_aliases") or []:
            keys.append(("alias", a.get("alias_name"), a.get("alias_label")))
        for key in keys:
            if key in by_id:
                found[by_id[key]["braze_user"]] = user
    for entry in (by_id[k] for k in by_id):
        uid = entry["braze_user"]
        user = found.get(uid)
        if user is None:
            out.users_missing.append(uid)
            continue
        out.users_checked += 1
        custom = user.get("custom_attributes") or {}
        for name, expected in entry["attributes"].items():
            actual = user.get(name) if name in _FIELDS else custom.get(name)
            out.checks.append({"braze_user": uid, "kind": "attribute", "name": name,
                               "expected": json.dumps(expected), "actual": json.dumps(actual),
                               "ok": _same(expected, actual), "note": ""})
        counts = {e.get("name"): int(e.get("count") or 0) for e in user.get("custom_events") or []}
        for name, sent in entry["events"].items():
            have = counts.get(name, 0)
            out.checks.append({"braze_user": uid, "kind": "event", "name": name,
                               "expected": f">= {sent}", "actual": str(have), "ok": have >= sent,
                               "note": "count over Braze's last 90 days"})
    return out
