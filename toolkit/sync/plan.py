"""Plan a sync: the delta between what an export says and what Braze last acknowledged, with cost.

`plan(export, mapping, ledger)` computes the desired Braze state from the mapping, diffs it
against the workspace's `Ledger` (vectorised, so a million profiles plan in seconds) and keeps
only changes: new members, exits, changed trait values, and events only for transitions. The
`Plan` shows operations by audience and kind, requests, objects, data points (as Braze bills
them), an estimated duration, sample payloads exactly as they will be sent, and a fingerprint
(sha256 over canonical JSON of the operations, the target workspace, the ledger version and the
options that shape payloads). `plan.approve(by=…)` records who approved that fingerprint until
when; `toolkit.apply` refuses anything else.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from html import escape
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from toolkit.braze import rules as braze_rules
from toolkit.braze.state import braze_user_keys
from toolkit.engage.model import Finding, Findings
from toolkit.errors import (PlanAltered, PlanError, PlanExpired, PlanNotApproved,
                            PlanWorkspaceMismatch)

__all__ = ["Plan", "Batch", "plan", "parse_duration", "OPERATION_COLUMNS"]

PLAN_FORMAT = "engage-braze-plan"
PLAN_FORMAT_VERSION = 1
# The operations table, in canonical column order (the fingerprint hashes these columns).
OPERATION_COLUMNS = ("uid", "segment_id", "op", "rule", "change", "name", "value", "field",
                     "after")
MAX_TRACK_OBJECTS = 75            # braze-api.md §1.6: per array per /users/track request
MAX_COHORT_IDS = 1000             # braze-api.md §4.1: user ids per cohort request
SAMPLE_PAYLOADS = 3
_OP_ORDER = {"attribute": 0, "event": 1, "cohort": 2}


@lru_cache(maxsize=1 << 16)
def _decode(text: str) -> Any:
    return json.loads(text)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False,
                      allow_nan=False)


def _utc_iso(ts: pd.Timestamp | datetime) -> str:
    ts = pd.Timestamp(ts)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def parse_duration(value: "timedelta | int | float | str") -> timedelta:
    """``timedelta``, seconds, or text like ``"90s"``, ``"30m"``, ``"24h"``, ``"7d"``."""
    if isinstance(value, timedelta):
        out = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out = timedelta(seconds=float(value))
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", value.lower())
        if not m:
            raise PlanError(f"cannot read the duration {value!r}", field="expires_in",
                            hint="write a number with a unit: 90s, 30m, 24h, 7d or 2w")
        unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        out = timedelta(seconds=float(m.group(1)) * unit)
    else:
        raise PlanError(f"expires_in must be a timedelta, seconds or text like '24h', not "
                        f"{type(value).__name__}", field="expires_in")
    if out <= timedelta(0):
        raise PlanError("the approval must last longer than zero", field="expires_in",
                        hint="pass a positive duration such as '24h'")
    return out


@dataclass(frozen=True)
class Batch:
    """One request of a plan: rows ``start:stop`` of the plan's operations, ``objects`` objects."""

    id: str            # "attributes-00001", "events-00001", "cohort-<id>-add-00001"
    kind: str          # "attributes" | "events" | "cohort"
    start: int
    stop: int
    objects: int


# --------------------------------------------------------------------------------------------
# building the operations

class _Builder:
    """Collects per-rule operation frames and findings while planning."""

    def __init__(self, profiles: pd.DataFrame, uids: np.ndarray, syncable: np.ndarray,
                 ledger) -> None:
        self.profiles = profiles
        self.uids = uids                      # object array aligned to profiles, None = unsyncable
        self.syncable = syncable              # False for unsyncable and duplicate identities
        self.segment_ids = profiles["segment_id"].to_numpy(dtype=object, na_value=None)
        self.ledger = ledger
        self.findings = Findings()
        self.left_out: list[pd.DataFrame] = []
        self.frames: list[pd.DataFrame] = []
        self._state_cache: dict[str, np.ndarray] = {}
        self._uid_index: pd.Index | None = None
        self.held: set[tuple[str, str]] = ledger.uncertain_items() if ledger is not None else set()
        self.held_count = 0

    def previous(self, field: str) -> np.ndarray:
        """Last acknowledged JSON text of ``field`` for every profile (None when never sent)."""
        if field not in self._state_cache:
            prev = np.full(len(self.uids), None, dtype=object)
            if self.ledger is not None:
                uids, values = self.ledger.state_arrays(field)
                if len(uids):
                    if self._uid_index is None:  # hashed once, reused for every field
                        self._uid_pos = np.flatnonzero(self.syncable)  # unique uids only
                        self._uid_index = pd.Index(self.uids[self._uid_pos], dtype=object)
                    at = self._uid_index.get_indexer(pd.Index(uids, dtype=object))
                    known = at >= 0
                    prev[self._uid_pos[at[known]]] = values[known]
            self._state_cache[field] = prev
        return self._state_cache[field]

    def add(self, mask: np.ndarray, *, op: str, rule: str, change: str | np.ndarray, name: str,
            value: Any, field: str, after: Any) -> None:
        """Add operations for the profiles in ``mask`` (values may be scalars or arrays)."""
        mask = mask & self.syncable
        if self.held:
            held = np.fromiter(((field, u) in self.held for u in self.uids), bool, len(self.uids))
            self.held_count += int((mask & held).sum())
            mask = mask & ~held
        if not mask.any():
            return
        pos = np.flatnonzero(mask)

        def pick(v):
            return v[pos] if isinstance(v, np.ndarray) else np.full(len(pos), v, dtype=object)

        self.frames.append(pd.DataFrame({
            "uid": self.uids[pos], "segment_id": self.segment_ids[pos], "op": op, "rule": rule,
            "change": pick(change), "name": name, "value": pick(value), "field": field,
            "after": pick(after), "_pos": pos}))

    def leave_out(self, mask: np.ndarray, *, rule: str, code: str, reason: str) -> None:
        pos = np.flatnonzero(mask & self.syncable)
        if len(pos):
            self.left_out.append(pd.DataFrame({
                "segment_id": self.segment_ids[pos], "uid": self.uids[pos], "rule": rule,
                "code": code, "reason": reason}))

    def refuse(self, mask: np.ndarray, *, rule: str, code: str, reason: str, what: str,
               fix: str, severity: str = "error") -> None:
        """Leave the masked profiles out of the plan *and* tell the approver: one step, so no
        value is ever dropped silently. The finding reads "<count> <what>"."""
        self.leave_out(mask, rule=rule, code=code, reason=reason)
        self.findings.add(severity, code, f"{int((mask & self.syncable).sum()):,} {what}",
                          column=rule, fix=fix)


def _json_texts(values: np.ndarray) -> np.ndarray:
    """Canonical JSON text of each value (None where the value is missing), vectorised by
    encoding each distinct value once."""
    out = np.full(len(values), None, dtype=object)
    present = ~pd.isna(values)
    if not present.any():
        return out
    # Key by (type, value) so True and 1 (equal and same-hash in Python) stay distinct.
    keyed = pd.Series(values[present], dtype=object)
    codes, uniques = pd.factorize(keyed.map(lambda v: (type(v).__name__, v))
                                  if keyed.map(type).nunique() > 1 else keyed)
    texts = np.array([_dumps(u[1] if isinstance(u, tuple) else u) for u in uniques], dtype=object)
    out[present] = texts[codes]
    return out


_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]')  # what json.dumps(ensure_ascii=False) escapes


def _json_array(values) -> str:
    """``json.dumps(list(values), separators=(",", ":"), ensure_ascii=False)`` for a column of
    text/None, fast: a repetitive column encodes each distinct value once."""
    n = len(values)
    if not n:
        return "[]"
    codes, uniques = pd.factorize(np.asarray(values, dtype=object))
    if len(uniques) > n // 4:
        try:
            plain = "".join(values)
        except TypeError:  # a None among them
            plain = None
        if plain is not None and not _NEEDS_ESCAPE.search(plain):
            # identifiers: text that JSON leaves as is, so no per-value encoding is needed
            return '["' + '","'.join(values) + '"]'
        return json.dumps(list(values), separators=(",", ":"), ensure_ascii=False)
    texts = np.array([json.dumps(u, ensure_ascii=False) for u in uniques] + ["null"],
                     dtype=object)
    return "[" + ",".join(texts[codes].tolist()) + "]"


def _first_char_types(texts: np.ndarray) -> np.ndarray:
    """JSON kind of each text from its first character (b, n, s, a, o; None for missing/null)."""
    s = pd.Series(texts, dtype=object)
    first = s.str[:1]
    kinds = first.map({"t": "b", "f": "b", '"': "s", "[": "a", "{": "o"})
    kinds = kinds.where(~first.isin(list("-0123456789")), "n")
    kinds = kinds.where(s.notna() & (s != "null"), None)
    return kinds.to_numpy(dtype=object)


def _resolve_target(workspace, ledger):
    """(workspace identity, ledger) from what the caller passed."""
    from toolkit.sync.ledger import Ledger

    client = None
    if workspace is not None and not isinstance(workspace, str):
        client = workspace
        workspace = getattr(client, "workspace", None)
        if not isinstance(workspace, str):
            raise PlanError("workspace must be a BrazeClient or its .workspace text",
                            field="workspace")
    if isinstance(ledger, (str, os.PathLike)):
        ledger = Ledger(path=ledger, workspace=workspace)
    if ledger is not None:
        if workspace is None:
            workspace = ledger.workspace
        elif ledger.workspace not in (None, workspace):
            raise PlanError(f"the ledger belongs to workspace {ledger.workspace!r}, not "
                            f"{workspace!r}", field="ledger",
                            hint="pass the ledger of the workspace you target, or none")
    elif workspace is not None:
        ledger = Ledger(workspace=workspace)
    return workspace, ledger


def _approval_seal(approval: dict) -> str:
    """A digest of who approved what, for which workspace, until when (everything but the seal)."""
    record = {k: approval.get(k) for k in ("by", "at", "expires_at", "fingerprint", "workspace")}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _partner_credentials(partner_api_key, client_secret, client=None):
    """Partner cohort credentials as Secrets, or None when either is not configured. Looked up
    in the arguments, then BRAZE_PARTNER_API_KEY / BRAZE_DATA_IMPORT_KEY (environment or .env),
    then the sandbox a client was made for — never by prompting."""
    if hasattr(client, "partner_credentials"):
        return client.partner_credentials(partner_api_key, client_secret, required=False)
    from toolkit.errors import ConfigError
    from toolkit.secrets import resolve_secret

    try:
        key = resolve_secret(partner_api_key, name="partner API key",
                             env_var="BRAZE_PARTNER_API_KEY", interactive=False)
        secret = resolve_secret(client_secret, name="Braze data import key",
                                env_var="BRAZE_DATA_IMPORT_KEY", interactive=False)
    except ConfigError:
        return None
    return key, secret


def plan(export, mapping, ledger=None, *, workspace=None, create_users: bool = False,
         alias_label: str | None = None, email_opt_in: bool = False, batch_size: int = 75,
         combined_limit: int | None = None, rate_limit: tuple[int, float] = (3000, 3.0),
         partner_api_key: str | None = None, client_secret: str | None = None,
         event_time: "pd.Timestamp | datetime | str | None" = None) -> "Plan":
    """Plan what to send to Braze so it matches ``export`` under ``mapping``, given ``ledger``.

    ``workspace`` is the target: a `BrazeClient` or its ``.workspace`` text; the ledger defaults
    to that workspace's ledger. Without either the plan diffs against nothing (everything is new)
    and can be inspected but not approved. Identifiers: external_id = user_id, else braze_id,
    else a user alias ``{alias_name: segment_id, alias_label}`` when ``alias_label`` is set, else
    email when ``email_opt_in``. Events are stamped ``event_time`` (default: the export's
    snapshot time), so resending an uncertain batch sends the identical event.
    """
    if not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_TRACK_OBJECTS:
        raise PlanError(f"batch_size must be 1–{MAX_TRACK_OBJECTS}, not {batch_size!r}",
                        field="batch_size", hint="Braze takes at most 75 objects per array")
    if combined_limit is not None and (not isinstance(combined_limit, int) or combined_limit < 1):
        raise PlanError(f"combined_limit must be a positive integer or None, not "
                        f"{combined_limit!r}", field="combined_limit",
                        hint="use 50 for Braze MAU (CY 24-25) contracts")
    try:
        rate = (int(rate_limit[0]), float(rate_limit[1]))
    except (TypeError, ValueError, IndexError):
        rate = (0, 0.0)
    if rate[0] <= 0 or rate[1] <= 0:
        raise PlanError(f"rate_limit must be (requests, seconds), not {rate_limit!r}",
                        field="rate_limit", hint="the /users/track default is (3000, 3.0)")
    client = workspace if workspace is not None and not isinstance(workspace, str) else None
    workspace, ledger = _resolve_target(workspace, ledger)
    profiles = export.profiles
    when = event_time if event_time is not None else export.snapshot_at
    when = pd.Timestamp.now(tz="UTC").floor("s") if when is None or pd.isna(when) else when
    try:
        event_iso = _utc_iso(pd.Timestamp(when))
    except (ValueError, TypeError):
        raise PlanError(f"event_time {event_time!r} is not a time", field="event_time",
                        hint="pass an ISO-8601 time or a pandas Timestamp") from None

    keys, _kinds = braze_user_keys(profiles, email_opt_in=email_opt_in, alias_label=alias_label)
    b = _Builder(profiles, keys.to_numpy(dtype=object, na_value=None),
                 keys.notna().to_numpy(dtype=bool), ledger)
    _report_unsyncable(b, profiles, email_opt_in=email_opt_in, alias_label=alias_label)

    credentials = _partner_credentials(partner_api_key, client_secret, client)
    cohorts: list[dict[str, Any]] = []
    attribute_values = None
    for rule in mapping.rules:
        problems = _rule_violations(rule)
        if problems:
            for v in problems:
                b.findings.add("error", v.code, f"rule {rule.key!r} left out: {v.message}",
                               column=rule.key, fix=v.fix)
            continue
        if rule.key not in profiles.columns:
            b.findings.add("error", "missing_column", f"rule {rule.key!r} has no column in the "
                           "export; nothing planned for it", column=rule.key,
                           fix="re-export the computation or remove the rule")
            continue
        if rule.kind == "audience":
            member = profiles[rule.key].astype("boolean")
            is_in = member.fillna(False).to_numpy(dtype=bool)
            is_out = (~member.fillna(True)).to_numpy(dtype=bool)
            if rule.send_as in ("attribute", "both"):
                _plan_audience_attribute(b, rule, is_in, is_out)
            if rule.send_as in ("event", "both"):
                _plan_audience_events(b, rule, is_in, is_out)
            if rule.send_as == "cohort":
                cohort = _plan_cohort(b, rule, is_in, is_out, export, credentials is not None)
                if cohort:
                    cohorts.append(cohort)
        else:
            if rule.send_as in ("attribute", "both"):
                if attribute_values is None:
                    attribute_values = mapping.attribute_values(export)
                _plan_trait_attribute(b, rule, attribute_values, mapping, export)
            if rule.send_as in ("event", "both"):
                _plan_trait_events(b, rule, export)
            if rule.send_as == "cohort":
                b.findings.add("error", "cohort_trait", f"trait {rule.key!r} cannot be a cohort: "
                               "a cohort holds audience membership only", column=rule.key,
                               fix="send the trait as an attribute or an event")
    if b.held_count:
        b.findings.add(
            "warning", "uncertain_events_held",
            f"{b.held_count:,} event(s) were left out: an earlier apply sent them but never got "
            "Braze's answer, so sending them again could count them twice", fix=(
                "check those users in Braze, then ledger.resolve(plan, batch, landed=True|False)"
                ", or re-apply that plan with resend_uncertain_events=True"))
    ops = _assemble(b.frames)
    left_out = (pd.concat(b.left_out, ignore_index=True) if b.left_out else
                pd.DataFrame(columns=["segment_id", "uid", "rule", "code", "reason"]))
    options = {"create_users": bool(create_users), "alias_label": alias_label,
               "email_opt_in": bool(email_opt_in), "batch_size": batch_size,
               "combined_limit": combined_limit, "rate_limit": list(rate), "event_time": event_iso}
    return Plan(ops, workspace=workspace, ledger_version=ledger.version if ledger else 0,
                ledger_path=str(ledger.path) if ledger is not None else None, options=options,
                cohorts=cohorts, findings=b.findings, left_out=left_out,
                source=getattr(export, "source", ""),
                created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _rule_violations(rule) -> list:
    """Name violations that make a whole rule unsendable (payload rules, braze-api.md §2)."""
    out = []
    if rule.send_as in ("attribute", "both"):
        out += braze_rules.attribute_name_violations(
            rule.attribute, allow_profile_field=rule.kind == "trait"
            and rule.attribute in braze_rules.WRITABLE_PROFILE_FIELDS)
    if rule.send_as in ("event", "both"):
        names = ([rule.enter_event, rule.exit_event] if rule.kind == "audience"
                 else [rule.trait_event])
        for name in names:
            out += braze_rules.event_name_violations(name)
        out += braze_rules.property_name_violations(rule.key)
    return out


def _report_unsyncable(b: _Builder, profiles: pd.DataFrame, *, email_opt_in: bool,
                       alias_label: str | None) -> None:
    n = len(profiles)
    if not n:
        return

    def has(col):
        return (profiles[col].notna().to_numpy(dtype=bool) if col in profiles.columns
                else np.zeros(n, dtype=bool))

    none = ~b.syncable
    email_only = none & has("email")
    anon_only = none & ~has("email") & has("anonymous_id")
    bare = none & ~email_only & ~anon_only
    email_reason = ("email only (identifying users by email is opt-in: email_opt_in=True)"
                    if not email_opt_in else "email only")
    anon_reason = ("anonymous only: Braze cannot address it without an external id or alias"
                   + ("" if alias_label else " (plan with alias_label='segment_id' to use aliases)"))
    reasons = [(email_only, "email_only", email_reason), (anon_only, "anonymous_only", anon_reason),
               (bare, "no_identifier", "no identifier Braze can use")]
    for mask, code, reason in reasons:
        if mask.any():
            pos = np.flatnonzero(mask)
            b.left_out.append(pd.DataFrame({"segment_id": b.segment_ids[pos], "uid": None,
                                            "rule": None, "code": code, "reason": reason}))
            b.findings.add("warning", code, f"{len(pos):,} profile(s) not syncable: {reason}",
                           fix="give them a user_id in Segment, or plan with alias_label / "
                               "email_opt_in")
    # Two profiles resolving to one Braze user would write the same user twice, racing.
    dup = pd.Series(b.uids).duplicated(keep="first").to_numpy() & b.syncable
    if dup.any():
        pos = np.flatnonzero(dup)
        b.left_out.append(pd.DataFrame({"segment_id": b.segment_ids[pos], "uid": b.uids[pos],
                                        "rule": None, "code": "duplicate_identifier",
                                        "reason": "another profile has the same Braze identifier"}))
        b.findings.add("warning", "duplicate_identifier",
                       f"{len(pos):,} profile(s) share a Braze identifier with an earlier profile;"
                       " only the first is synced", fix="merge the profiles in Segment")
        b.syncable = b.syncable & ~dup


def _plan_audience_attribute(b: _Builder, rule, is_in, is_out) -> None:
    field = f"attr:{rule.attribute}"
    prev = b.previous(field)
    was_true = prev == "true"
    exit_text = _dumps(rule.exit_value)
    b.add(is_in & ~was_true, op="attribute", rule=rule.key, change="enter", name=rule.attribute,
          value="true", field=field, after="true")
    # Exit only users Braze holds as members: writing the exit value to every non-member
    # would bill a data point per profile for nothing ("FALSE OR NOT SET" already selects them).
    b.add(is_out & was_true, op="attribute", rule=rule.key, change="exit", name=rule.attribute,
          value=exit_text, field=field, after=None if rule.exit_value is None else exit_text)


def _event_properties(rule, value: Any) -> dict:
    id_key = "audience_key" if rule.kind == "audience" else "trait_key"
    return {id_key: rule.key, rule.key: value}


def _plan_audience_events(b: _Builder, rule, is_in, is_out) -> None:
    field = f"member:{rule.key}"
    was_in = b.previous(field) == "true"
    b.add(is_in & ~was_in, op="event", rule=rule.key, change="enter", name=rule.enter_event,
          value=_dumps(_event_properties(rule, True)), field=field, after="true")
    b.add(is_out & was_in, op="event", rule=rule.key, change="exit", name=rule.exit_event,
          value=_dumps(_event_properties(rule, False)), field=field, after=None)


def _check_values(b: _Builder, rule, texts: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """Mask of values that break payload rules (left out, with findings)."""
    bad = np.zeros(len(texts), dtype=bool)
    s = pd.Series(texts, dtype=object)
    is_str = s.str.startswith('"').fillna(False).to_numpy(dtype=bool)
    if is_str.any():
        lengths = s[is_str].map(lambda t: len(_decode(t))).to_numpy()
        too_long = np.zeros(len(texts), dtype=bool)
        too_long[np.flatnonzero(is_str)[lengths > braze_rules.MAX_STRING_LENGTH]] = True
        if too_long.any():
            b.refuse(too_long, rule=rule.key, code="string_too_long",
                     reason=f"value longer than {braze_rules.MAX_STRING_LENGTH} characters",
                     what=f"value(s) of {rule.key!r} are longer than "
                          f"{braze_rules.MAX_STRING_LENGTH} characters; left out",
                     fix="shorten the values in Segment")
            bad |= too_long
    new_kind, old_kind = _first_char_types(texts), _first_char_types(prev)
    conflict = pd.notna(new_kind) & pd.notna(old_kind) & (new_kind != old_kind)
    conflict = np.asarray(conflict, dtype=bool)
    if conflict.any():
        b.refuse(conflict, rule=rule.key, code="type_conflict",
                 reason="value type differs from the type Braze holds for this attribute",
                 what=f"value(s) of {rule.key!r} change type from what Braze holds; Braze "
                      "refuses them",
                 fix="keep the attribute's type, or send to a new attribute name")
        bad |= conflict
    return bad


def _plan_trait_attribute(b: _Builder, rule, attribute_values: pd.DataFrame, mapping,
                          export) -> None:
    if rule.attribute not in attribute_values.columns:
        b.findings.add("error", "missing_attribute_values",
                       f"the mapping produced no values for attribute {rule.attribute!r}",
                       column=rule.key, fix="check the rule with mapping.validate(export)")
        return
    field = f"attr:{rule.attribute}"
    texts = _json_texts(attribute_values[rule.attribute].to_numpy(dtype=object))
    prev = b.previous(field)
    prev_set = pd.notna(prev) & (prev != "null")
    bad = _check_values(b, rule, texts, prev)
    # Values the mapping blanked because Braze would refuse them are left out, not unset:
    # an invalid new value is no reason to delete what Braze holds.
    conv = mapping.converted(export, rule)
    refused = (conv.invalid | conv.conflict).to_numpy(dtype=bool)
    if refused.any():
        b.refuse(refused, rule=rule.key, code="invalid_value",
                 reason=f"a value Braze would refuse for {rule.attribute!r}",
                 what=f"value(s) of {rule.key!r} would be refused by Braze (too long, wrong type "
                      "or format); left out",
                 fix="see mapping.value_findings(export) for each value")
        bad = bad | refused
    has = pd.notna(texts) & (texts != "null")
    changed = has & (texts != prev) & ~bad
    b.add(changed, op="attribute", rule=rule.key, change=np.where(prev_set, "change", "set"),
          name=rule.attribute, value=texts, field=field, after=texts)
    # A trait that lost its value: remove the attribute ("set it to null", braze-api.md §1.3).
    b.add(~has & prev_set & ~bad, op="attribute", rule=rule.key, change="unset", name=rule.attribute,
          value="null", field=field, after=None)


def _plan_trait_events(b: _Builder, rule, export) -> None:
    comp = export.computation(rule.key) if hasattr(export, "computation") else {}
    conv = braze_rules.convert(b.profiles[rule.key], comp.get("value_type", "string"))
    values = braze_rules.to_json_values(conv)
    refused = (conv.invalid | conv.conflict).to_numpy(dtype=bool)
    if refused.any():
        values[refused] = pd.NA
        b.refuse(refused, rule=rule.key, code="invalid_value",
                 reason=f"a {rule.trait_event!r} property value Braze would refuse",
                 what=f"value(s) of {rule.key!r} would be refused by Braze as a "
                      f"{rule.trait_event!r} property (too long, wrong type or format); left out",
                 fix="fix the values in Segment (strings at most 255 characters)")
    texts = _json_texts(values)
    field = f"trait:{rule.key}"
    prev = b.previous(field)
    bad = _check_values(b, rule, texts, np.full(len(texts), None, dtype=object))
    changed = pd.notna(texts) & (texts != prev) & ~bad
    if not changed.any():
        return
    pos = np.flatnonzero(changed)
    props = np.full(len(texts), None, dtype=object)
    if "trait_key" < rule.key:
        # Canonical (sorted-key) JSON assembled from the already-encoded values, so a million
        # trait events do not each go through json.dumps.
        prefix = '{"trait_key":' + _dumps(rule.key) + "," + _dumps(rule.key) + ":"
        props[pos] = [prefix + t + "}" for t in texts[pos]]
    else:
        props[pos] = [_dumps(_event_properties(rule, _decode(t))) for t in texts[pos]]
    b.add(changed, op="event", rule=rule.key, change="change", name=rule.trait_event,
          value=props, field=field, after=texts)


def _plan_cohort(b: _Builder, rule, is_in, is_out, export, available: bool) -> dict | None:
    comp = export.computation(rule.key) if hasattr(export, "computation") else {}
    cohort_id = (getattr(rule, "cohort_id", None) or comp.get("computation_id")
                 or rule.key)
    cohort_id = rule.key if pd.isna(cohort_id) else str(cohort_id)
    name = getattr(rule, "cohort_name", None) or comp.get("name") or rule.key
    if not available:
        b.findings.add(
            "warning", "cohort_unavailable",
            f"audience {rule.key!r} is mapped to a Braze cohort, but no partner credentials are "
            "configured, so nothing is planned for it. Braze's cohort import "
            "(/partners/segment/cohorts) needs Segment's partner API key "
            "(BRAZE_PARTNER_API_KEY) and the workspace's data import key (BRAZE_DATA_IMPORT_KEY)",
            column=rule.key,
            fix=("map the audience to an attribute instead (mapping.set(key, send_as='attribute'))"
                 ", or connect Segment's Braze Cohorts destination to this audience"))
        return None
    field = f"cohort:{cohort_id}"
    # The cohort endpoint matches identified users by external_id or alias only (§4.1).
    usable = np.array([u is not None and (u.startswith("external_id:") or u.startswith("alias:"))
                       for u in b.uids], dtype=bool)
    wrong = b.syncable & ~usable & (is_in | is_out)
    if wrong.any():
        b.refuse(wrong, rule=rule.key, code="cohort_identifier", severity="warning",
                 reason="a cohort matches users by external_id or alias only",
                 what=f"profile(s) of {rule.key!r} have no external_id or alias; the cohort "
                      "cannot hold them",
                 fix="plan with alias_label to address them by alias")
    was_in = b.previous(field) == "true"
    b.add(usable & is_in & ~was_in, op="cohort", rule=rule.key, change="add", name=cohort_id,
          value="true", field=field, after="true")
    b.add(usable & is_out & was_in, op="cohort", rule=rule.key, change="remove", name=cohort_id,
          value="false", field=field, after=None)
    return {"rule": rule.key, "cohort_id": cohort_id, "name": str(name)}


def _assemble(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One operations table in send order: attributes, then events, then cohort changes; by
    profile within each, so one user's operations are adjacent and never split."""
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in OPERATION_COLUMNS})
    ops = pd.concat(frames, ignore_index=True)
    order = ops["op"].map(_OP_ORDER).to_numpy()
    cohort_key = np.where(order == 2, ops["name"].astype(str) + "\x00" + ops["change"].astype(str),
                          "")
    cohort_rank = pd.factorize(pd.Series(cohort_key), sort=True)[0]
    idx = np.lexsort((np.arange(len(ops)), ops["_pos"].to_numpy(), cohort_rank, order))
    ops = ops.iloc[idx].reset_index(drop=True)
    return ops[list(OPERATION_COLUMNS)].astype(object)


# --------------------------------------------------------------------------------------------
# the plan

class Plan:
    """A sync plan: operations, cost, sample payloads, fingerprint and (once given) approval."""

    def __init__(self, operations: pd.DataFrame, *, workspace: str | None, ledger_version: int,
                 options: dict, cohorts: list[dict] | None = None, findings: Findings | None = None,
                 left_out: pd.DataFrame | None = None, source: str = "",
                 created_at: str | None = None, ledger_path: str | None = None,
                 approval: dict | None = None) -> None:
        self.operations = operations
        self.workspace = workspace
        self.ledger_version = int(ledger_version)
        self.ledger_path = ledger_path
        self.options = dict(options)
        self.cohorts = list(cohorts or [])
        self.findings = findings if findings is not None else Findings()
        self.left_out = left_out if left_out is not None else pd.DataFrame(
            columns=["segment_id", "uid", "rule", "code", "reason"])
        self.source = source
        self.created_at = created_at or datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.approval = approval
        self._fingerprint: str | None = None
        self._batches: list[Batch] | None = None
        self._column_cache: dict[str, np.ndarray] | None = None

    # -- identity ------------------------------------------------------------------------
    def compute_fingerprint(self) -> str:
        """sha256 over canonical JSON of operations, workspace, ledger version and options."""
        h = hashlib.sha256()
        head = {"format": PLAN_FORMAT, "workspace": self.workspace,
                "ledger_version": self.ledger_version, "options": self.options,
                "cohorts": self.cohorts, "columns": list(OPERATION_COLUMNS),
                "rows": len(self.operations)}
        h.update(_dumps(head).encode())
        for col in OPERATION_COLUMNS:
            values = self.operations[col].to_numpy(dtype=object) if len(self.operations) else []
            h.update(b"\n" + _json_array(values).encode())
        return h.hexdigest()

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = self.compute_fingerprint()
        return self._fingerprint

    @property
    def id(self) -> str:
        """Short name of the plan in the ledger and reports: the fingerprint's first 16 digits."""
        return self.fingerprint[:16]

    # -- batches and payloads ------------------------------------------------------------
    @property
    def limit(self) -> int:
        """Objects per request: batch_size, lowered by combined_limit when set."""
        combined = self.options.get("combined_limit")
        size = int(self.options["batch_size"])
        return min(size, int(combined)) if combined else size

    def batches(self) -> list[Batch]:
        """The requests this plan makes, in order; deterministic, so a resumed apply finds the
        same batches under the same names."""
        if self._batches is None:
            self._batches = _cut_batches(self.operations, self.limit)
        return self._batches

    def identifier(self, uid: str) -> dict:
        """The identifier fields of one Braze user key, as they go into a payload object."""
        kind, _, value = uid.partition(":")
        if kind == "alias":
            label = self.options.get("alias_label") or ""
            name = uid[len(f"alias:{label}:"):] if uid.startswith(f"alias:{label}:") else \
                value.partition(":")[2]
            return {"user_alias": {"alias_name": name, "alias_label": label}}
        return {kind: value}

    def payload(self, batch: Batch) -> dict:
        """The exact JSON body of one batch (``/users/track`` body, or a cohort change)."""
        columns = self._columns()
        uid, names, values, changes = (columns[c][batch.start:batch.stop]
                                       for c in ("uid", "name", "value", "change"))
        update_only = not self.options.get("create_users", False)
        if batch.kind == "attributes":
            objects: list[dict] = []
            last = None
            for u, n, v in zip(uid, names, values):
                if u != last:
                    obj = self.identifier(u)
                    obj["_update_existing_only"] = update_only
                    objects.append(obj)
                    last = u
                obj[n] = _decode(v)
            return {"attributes": objects}
        if batch.kind == "events":
            time = self.options["event_time"]
            events = []
            for u, n, v in zip(uid, names, values):
                obj = self.identifier(u)
                obj.update({"name": n, "time": time, "properties": _decode(v),
                            "_update_existing_only": update_only})
                events.append(obj)
            return {"events": events}
        change = changes[0]
        user_ids = [self.identifier(u).get("external_id") for u in uid]
        aliases = [self.identifier(u).get("user_alias") for u in uid]
        return {"cohort_id": names[0], "change": change,
                "user_ids": [x for x in user_ids if x is not None],
                "aliases": [a for a in aliases if a is not None]}

    def _columns(self) -> dict[str, np.ndarray]:
        """The operation columns payloads are built from, as arrays (cached; `check_approval`
        drops the cache, so what is sent is what was just fingerprinted)."""
        if self._column_cache is None:
            self._column_cache = {c: self.operations[c].to_numpy(dtype=object)
                                  for c in ("uid", "name", "value", "change")}
        return self._column_cache

    def payloads(self) -> Iterator[tuple[Batch, dict]]:
        for batch in self.batches():
            yield batch, self.payload(batch)

    def sample_payloads(self, n: int = SAMPLE_PAYLOADS) -> list[dict]:
        """The first ``n`` request bodies exactly as they will be sent."""
        return [self.payload(b) for b in self.batches()[:n]]

    # -- cost ----------------------------------------------------------------------------
    def summary(self) -> pd.DataFrame:
        """Operations by audience/trait, kind and change."""
        ops = self.operations
        if not len(ops):
            return pd.DataFrame(columns=["rule", "op", "change", "name", "operations"])
        return (ops.groupby(["rule", "op", "change", "name"], sort=True).size()
                .rename("operations").reset_index())

    @property
    def is_empty(self) -> bool:
        return len(self.operations) == 0

    def cost(self) -> dict[str, Any]:
        """Objects, requests, data points (every attribute key set + each event, as Braze bills
        them) and the estimated duration at the workspace rate limit."""
        ops = self.operations
        op = ops["op"].to_numpy() if len(ops) else np.array([], dtype=object)
        attr = op == "attribute"
        batches = self.batches()
        track = sum(1 for b in batches if b.kind != "cohort")
        limit, period = self.options["rate_limit"]
        return {
            "operations": int(len(ops)),
            "users": int(ops["uid"].nunique()) if len(ops) else 0,
            "attribute_objects": int(ops.loc[attr, "uid"].nunique()) if attr.any() else 0,
            "attribute_writes": int(attr.sum()),
            "events": int((op == "event").sum()),
            "cohort_changes": int((op == "cohort").sum()),
            "requests": len(batches),
            "track_requests": track,
            "cohort_requests": len(batches) - track,
            "data_points": int(attr.sum() + (op == "event").sum()),
            "estimated_seconds": round(track * float(period) / float(limit), 3),
        }

    # -- approval ------------------------------------------------------------------------
    def approve(self, by: str, expires_in: "timedelta | int | float | str" = "24h") -> "Plan":
        """Record that ``by`` approved exactly these operations for this workspace until
        ``expires_in`` from now. Returns the plan."""
        if not isinstance(by, str) or not by.strip():
            raise PlanError("an approval needs the approver's name", field="by",
                            hint="plan.approve(by='your name')")
        if self.workspace is None:
            raise PlanError("this plan has no target workspace, so it cannot be approved",
                            field="workspace",
                            hint="plan again with workspace=client (or ledger=Ledger(client))")
        now = datetime.now(timezone.utc)
        self.approval = {"by": by.strip(), "at": now.isoformat(timespec="seconds"),
                         "expires_at": (now + parse_duration(expires_in)).isoformat(
                             timespec="seconds"),
                         "fingerprint": self.compute_fingerprint(), "workspace": self.workspace}
        self.approval["seal"] = _approval_seal(self.approval)
        self._fingerprint = self.approval["fingerprint"]
        return self

    def check_approval(self, workspace: str | None, *, now: datetime | None = None) -> None:
        """Raise unless the plan is approved, unexpired, unaltered and for ``workspace``."""
        a = self.approval
        if not a:
            raise PlanNotApproved("the plan is not approved; nothing was sent",
                                  hint="review it, then plan.approve(by='your name')")
        if a.get("seal") != _approval_seal(a):
            # The fingerprint covers the operations and target, not the approval record itself:
            # without a seal, editing expires_at (or the approver) by hand would go unnoticed.
            raise PlanAltered("the approval record was edited after it was made; nothing was sent",
                              field="approval", hint="approve the plan again")
        now = now or datetime.now(timezone.utc)
        try:
            expires = datetime.fromisoformat(a["expires_at"])
        except (KeyError, TypeError, ValueError):
            raise PlanAltered("the approval's expiry cannot be read; nothing was sent",
                              field="approval.expires_at", hint="approve the plan again") from None
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=timezone.utc)
        if now >= expires:
            raise PlanExpired(f"the approval by {a.get('by')} expired at {a['expires_at']}; "
                              "nothing was sent", hint="re-plan and approve again")
        self._fingerprint = None
        self._batches = None
        self._column_cache = None
        actual = self.fingerprint
        if a.get("fingerprint") != actual or a.get("workspace") != self.workspace:
            raise PlanAltered("the plan changed after it was approved (fingerprint "
                              f"{str(a.get('fingerprint'))[:12]}… approved, {actual[:12]}… now);"
                              " nothing was sent", hint="re-plan and approve the new plan")
        if workspace != self.workspace:
            raise PlanWorkspaceMismatch(
                f"the plan was approved for workspace {self.workspace!r} but the client targets "
                f"{workspace!r}; nothing was sent",
                hint="apply with a client for the approved workspace, or plan for this one")

    # -- views ---------------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """One row per operation: who, which rule, what kind of change, what is sent."""
        ops = self.operations
        return pd.DataFrame({
            "segment_id": ops["segment_id"], "braze_user": ops["uid"], "rule": ops["rule"],
            "kind": ops["op"], "change": ops["change"], "name": ops["name"],
            "value": ops["value"]}).reset_index(drop=True)

    def __repr__(self) -> str:
        c = self.cost()
        state = ("approved by " + self.approval["by"]) if self.approval else "not approved"
        return (f"<Plan {self.id} for {self.workspace or '(no workspace)'}: "
                f"{c['operations']:,} operations, {c['users']:,} users, {c['requests']:,} "
                f"requests, {c['data_points']:,} data points, ~{c['estimated_seconds']:.1f}s, "
                f"{len(self.findings)} findings, {state}>")

    def _repr_html_(self) -> str:
        c = self.cost()
        approval = (f"approved by <b>{escape(self.approval['by'])}</b> until "
                    f"{escape(self.approval['expires_at'])}" if self.approval
                    else "<b>not approved</b>")
        if self.is_empty:
            body = "<p><b>Nothing to send</b>: Braze already holds every value.</p>"
        else:
            body = self.summary().to_html(index=False)
        samples = json.dumps(self.sample_payloads(1), indent=1, ensure_ascii=False)[:3000]
        findings = self.findings._repr_html_() if len(self.findings) else "<p>No findings.</p>"
        return (
            f"<div class='toolkit-plan'><h4>Sync plan {escape(self.id)}</h4>"
            f"<p>Target <code>{escape(str(self.workspace))}</code> · ledger version "
            f"{self.ledger_version} · {approval}</p>"
            f"<p>{c['operations']:,} operations for {c['users']:,} users · {c['requests']:,} "
            f"requests · {c['attribute_writes']:,} attribute writes + {c['events']:,} events = "
            f"<b>{c['data_points']:,} data points</b> · about {c['estimated_seconds']:.1f} s at "
            f"{self.options['rate_limit'][0]:,} requests / {self.options['rate_limit'][1]:g} s"
            f"</p>{body}<details><summary>First payload exactly as sent</summary>"
            f"<pre>{escape(samples)}</pre></details><h5>Findings</h5>{findings}"
            f"<p><small>fingerprint {escape(self.fingerprint)}</small></p></div>")

    # -- files ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        ops = self.operations
        return {
            "format": PLAN_FORMAT, "format_version": PLAN_FORMAT_VERSION,
            "created_at": self.created_at, "source": self.source, "workspace": self.workspace,
            "ledger_version": self.ledger_version, "ledger_path": self.ledger_path,
            "options": self.options, "cohorts": self.cohorts,
            "operations": {c: (ops[c].tolist() if len(ops) else []) for c in OPERATION_COLUMNS},
            "findings": [{k: getattr(f, k) for k in ("severity", "code", "message", "row",
                                                     "column", "fix", "segment_id")}
                         for f in self.findings],
            "left_out": {c: self.left_out[c].tolist() for c in self.left_out.columns},
            "cost": self.cost(), "fingerprint": self.fingerprint, "approval": self.approval,
        }

    def save(self, path: "str | os.PathLike[str]") -> Path:
        """Write the plan as JSON (no secrets: identities, values and options only)."""
        path = Path(path)
        text = json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            raise PlanError(f"cannot write the plan: {exc.strerror}", file=str(path),
                            hint="choose a writable path") from None
        return path

    @classmethod
    def load(cls, path: "str | os.PathLike[str]") -> "Plan":
        """Read a saved plan; a malformed or hand-edited file raises PlanError naming the field.
        (An edit that keeps the file well-formed is caught by the fingerprint at apply.)"""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PlanError("no plan file here", file=str(path),
                            hint="make one with `python -m toolkit plan …`") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise PlanError(f"cannot read the plan: {exc}", file=str(path)) from None
        except json.JSONDecodeError as exc:
            raise PlanError(f"not valid JSON: {exc.msg}", file=str(path), line=exc.lineno,
                            hint="the plan file was damaged; make and approve a new plan") from None
        except RecursionError:
            raise PlanError("not valid JSON: nested too deeply to read", file=str(path),
                            hint="the plan file was damaged; make and approve a new plan") from None
        return cls.from_dict(data, file=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, file: str | None = None) -> "Plan":
        def bad(field: str, what: str) -> PlanError:
            return PlanError(f"plan field {field!r} {what}", file=file, field=field,
                             hint="do not edit plan files by hand; make and approve a new plan")

        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise bad("format", f"must be {PLAN_FORMAT!r}")
        if data.get("format_version") != PLAN_FORMAT_VERSION:
            raise bad("format_version", f"must be {PLAN_FORMAT_VERSION}")
        ws = data.get("workspace")
        if ws is not None and not isinstance(ws, str):
            raise bad("workspace", "must be text or null")
        lv = data.get("ledger_version")
        if not isinstance(lv, int) or isinstance(lv, bool) or lv < 0:
            raise bad("ledger_version", "must be a non-negative integer")
        options = data.get("options")
        if not isinstance(options, dict):
            raise bad("options", "must be an object")
        for key, check in (("batch_size", lambda v: isinstance(v, int) and 1 <= v <= 75),
                           ("combined_limit", lambda v: v is None or (isinstance(v, int) and v > 0)),
                           ("rate_limit", lambda v: isinstance(v, list) and len(v) == 2 and all(
                               isinstance(x, (int, float)) and x > 0 for x in v)),
                           ("event_time", lambda v: isinstance(v, str)),
                           ("create_users", lambda v: isinstance(v, bool))):
            if key not in options or not check(options[key]):
                raise bad(f"options.{key}", "is missing or invalid")
        ops = data.get("operations")
        if not isinstance(ops, dict):
            raise bad("operations", "must be an object of columns")
        lengths = set()
        for col in OPERATION_COLUMNS:
            if not isinstance(ops.get(col), list):
                raise bad(f"operations.{col}", "must be a list")
            lengths.add(len(ops[col]))
        if len(lengths) > 1:
            raise bad("operations", "columns have different lengths")
        frame = pd.DataFrame({c: pd.Series(ops[c], dtype=object) for c in OPERATION_COLUMNS})
        if len(frame):
            bad_op = ~frame["op"].isin(list(_OP_ORDER))
            if bad_op.any():
                raise bad("operations.op", f"has unknown value {frame['op'][bad_op].iloc[0]!r}"
                          f" at row {int(np.flatnonzero(bad_op)[0])}")
            for col in ("uid", "name", "value", "field"):
                notstr = ~frame[col].map(lambda v: isinstance(v, str))
                if notstr.any():
                    raise bad(f"operations.{col}",
                              f"must hold text; row {int(np.flatnonzero(notstr)[0])} does not")
            try:
                frame["value"].map(_decode)
            except (ValueError, TypeError):
                raise bad("operations.value", "holds text that is not JSON") from None
        cohorts = data.get("cohorts", [])
        if not isinstance(cohorts, list) or not all(
                isinstance(c, dict) and {"rule", "cohort_id", "name"} <= set(c) for c in cohorts):
            raise bad("cohorts", "must be a list of {rule, cohort_id, name}")
        approval = data.get("approval")
        if approval is not None and (not isinstance(approval, dict) or not {
                "by", "at", "expires_at", "fingerprint", "workspace"} <= set(approval)):
            raise bad("approval", "must be null or {by, at, expires_at, fingerprint, workspace}")
        findings = Findings()
        try:
            for f in data.get("findings", []):
                findings.extend([Finding(**f)])
        except (TypeError, ValueError):
            raise bad("findings", "holds an entry that is not a finding") from None
        left = data.get("left_out") or {}
        try:
            left_out = pd.DataFrame(left) if left else None
        except ValueError:
            raise bad("left_out", "columns have different lengths") from None
        return cls(frame, workspace=ws, ledger_version=lv, options=options, cohorts=cohorts,
                   findings=findings, left_out=left_out, source=str(data.get("source", "")),
                   created_at=data.get("created_at"), ledger_path=data.get("ledger_path"),
                   approval=approval)


def _cut_batches(ops: pd.DataFrame, limit: int) -> list[Batch]:
    """Cut the ordered operations into requests: ≤ ``limit`` objects each, one user's objects
    never split; attributes, events and cohort changes in separate requests."""
    if not len(ops):
        return []
    uid = ops["uid"].to_numpy()
    out: list[Batch] = []
    # operations are ordered attributes → events → cohort changes (see _assemble)
    order = ops["op"].map(_OP_ORDER).to_numpy()
    bounds = {k: (int(np.searchsorted(order, v, "left")), int(np.searchsorted(order, v, "right")))
              for k, v in _OP_ORDER.items()}
    bounds = {k: v for k, v in bounds.items() if v[1] > v[0]}
    if "attribute" in bounds:
        s, e = bounds["attribute"]
        u = uid[s:e]
        new = np.ones(len(u), dtype=bool)
        new[1:] = u[1:] != u[:-1]
        rank = np.cumsum(new) - 1
        starts = np.flatnonzero(new & (rank % limit == 0))
        ends = np.append(starts[1:], len(u))
        for i, (a, z) in enumerate(zip(starts, ends), start=1):
            out.append(Batch(f"attributes-{i:05d}", "attributes", s + int(a), s + int(z),
                             int(new[a:z].sum())))
    if "event" in bounds:
        s, e = bounds["event"]
        u = uid[s:e]
        new = np.ones(len(u), dtype=bool)
        new[1:] = u[1:] != u[:-1]
        user_starts = np.flatnonzero(new)
        counts = np.diff(np.append(user_starts, len(u)))
        i, start, size = 1, 0, 0
        for first, n in zip(user_starts.tolist(), counts.tolist()):
            if size and size + n > limit:
                out.append(Batch(f"events-{i:05d}", "events", s + start, s + first, size))
                i, start, size = i + 1, first, 0
            size += n
        out.append(Batch(f"events-{i:05d}", "events", s + start, e, size))
    if "cohort" in bounds:
        s, e = bounds["cohort"]
        names = ops["name"].to_numpy()[s:e]
        changes = ops["change"].to_numpy()[s:e]
        key = pd.Series(names.astype(str)) + "\x00" + pd.Series(changes.astype(str))
        new = np.ones(len(key), dtype=bool)
        new[1:] = key.to_numpy()[1:] != key.to_numpy()[:-1]
        group_starts = np.append(np.flatnonzero(new), len(key))
        for g0, g1 in zip(group_starts[:-1], group_starts[1:]):
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(names[g0]))
            for j, a in enumerate(range(int(g0), int(g1), MAX_COHORT_IDS), start=1):
                z = min(a + MAX_COHORT_IDS, int(g1))
                out.append(Batch(f"cohort-{safe}-{changes[g0]}-{j:05d}", "cohort", s + a, s + z,
                                 z - a))
    return out
