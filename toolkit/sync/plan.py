"""Plan a sync: the delta between what an export says and what Braze last acknowledged, with cost.

`plan(export, mapping, ledger)` projects the desired Braze state once (`toolkit.sync.projection`),
diffs it against the workspace's `Ledger` in SQL on the engine (`toolkit.sync.diff`: users whose
checksum is unchanged cost one comparison) and keeps only changes: new members, exits, changed
trait values, and events only for transitions. After a sync that converged, the very same export
costs one pass over its rows, and a changed one is projected and diffed only for the users whose
row changed (the ledger keeps every row's hash; the result is the full path's exactly). A plan
is two files: its operations as Parquet, in send order with each operation's request assigned,
and a small JSON manifest (options, cost, findings, fingerprint, approval); the profiles it
leaves out, and why, go in a third, Parquet, file (and the row hashes the ledger keeps once it
converged, in a fourth, Arrow, file). The fingerprint is a sha256 computed while streaming the
operations (plus the target workspace, ledger version, options and cost); `plan.approve(by=…)`
records who approved that fingerprint until when, sealed; `toolkit.apply` refuses anything else
and streams the requests from the file with bounded memory.
"""
from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from html import escape
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from toolkit import engine
from toolkit.braze.client import EncodedTrack
from toolkit.braze.limits import LIMITS
from toolkit.documents import read_document
from toolkit.durations import checked_duration
from toolkit.engage.model import Finding, Findings
from toolkit.engage.store import StoredExport
from toolkit.errors import (ConfigError, PlanAltered, PlanError, PlanExpired, PlanNotApproved,
                            PlanWorkspaceMismatch)
from toolkit.secrets import resolve_secret
from toolkit.sync.diff import OPERATION_COLUMNS, diff, empty_result, name_batches
from toolkit.sync.diffsite import DiffSite, check_diff_at, choose
from toolkit.sync.ledger import Ledger, describe_workspace, file_digest
from toolkit.sync.projection import (CONFLICT_CODE, CONFLICT_REASON, LEFT_OUT_COLUMNS,
                                     InputsFile, OnePass, PreviousInput, dumps as _dumps,
                                     InputHashes, export_keys, input_shape, project,
                                     project_once, row_hashes)

__all__ = ["Plan", "Batch", "plan", "parse_duration", "OPERATION_COLUMNS"]

PLAN_FORMAT = "engage-braze-plan"
PLAN_FORMAT_VERSION = 4
SAMPLE_PAYLOADS = 3
PROGRESS_FROM = 200_000           # profiles from which plan shows a progress bar by default
# plan a changed export from the ledger's record of the last converged one (tests switch it off
# to compare with the full path)
_INCREMENTAL = True
# When a plan reads its export once for hashes, keys and projection (`project_once`): "on disk"
# (exports kept on disk, where each read decodes the file; one in memory costs nothing to read
# again, and the separate steps share its keys without copies), "always", or "never" (one read
# per step: the reference the tests compare it with)
_ONE_PASS = "on disk"
OP_KINDS = ("attribute", "event", "cohort")
_TEXT_COLUMNS = [c for c in OPERATION_COLUMNS if c != "batch"]


@lru_cache(maxsize=1 << 16)
def _decode(text: str) -> Any:
    return json.loads(text)


def _plain(text: str) -> bool:
    """JSON writes ``text`` between quotes as it is (nothing to escape)."""
    return text.isprintable() and '"' not in text and "\\" not in text


@lru_cache(maxsize=1 << 12)
def _key_text(name: str) -> str:
    """``"name":`` as it opens a member of a JSON object."""
    return json.dumps(name, ensure_ascii=False) + ":"


def _utc_iso(ts: pd.Timestamp | datetime) -> str:
    ts = pd.Timestamp(ts)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def parse_duration(value: "timedelta | int | float | str") -> timedelta:
    """An approval's length: a positive duration (``"90s"``, ``"24h"``, ``"7d"`` …)."""
    return checked_duration(value, error=PlanError, field="expires_in", what="duration",
                            examples="24h, 90s, 30m, 7d or 2w", allow_zero=False)


@dataclass(frozen=True)
class Batch:
    """One request of a plan: rows ``start:stop`` of the plan's operations, ``objects`` objects."""

    id: str            # "attributes-00001", "events-00001", "cohort-<id>-add-00001"
    kind: str          # "attributes" | "events" | "cohort"
    start: int
    stop: int
    objects: int
    index: int = 0     # the request's number in the operations file's ``batch`` column


def _resolve_target(workspace, ledger):
    """(workspace identity, ledger) from what the caller passed."""
    client = None
    if workspace is not None and not isinstance(workspace, str):
        client = workspace
        workspace = getattr(client, "workspace", None)
        if not isinstance(workspace, str):
            raise PlanError("workspace must be a BrazeClient or its .workspace text",
                            field="workspace")
    if isinstance(ledger, (str, os.PathLike)):
        ledger = Ledger(path=ledger, workspace=client if client is not None else workspace)
    if ledger is not None:
        if workspace is None:
            workspace = ledger.workspace
        elif ledger.workspace not in (None, workspace):
            raise PlanError(f"the ledger belongs to {describe_workspace(ledger.workspace)}, not "
                            f"to {describe_workspace(workspace)}", field="ledger",
                            file=ledger.location,
                            hint="pass the ledger of the workspace you target, or none (its "
                                 "default ledger is used)")
    elif client is not None:
        ledger = Ledger(client)
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

    try:
        key = resolve_secret(partner_api_key, name="partner API key",
                             env_var="BRAZE_PARTNER_API_KEY", interactive=False)
        secret = resolve_secret(client_secret, name="Braze data import key",
                                env_var="BRAZE_DATA_IMPORT_KEY", interactive=False)
    except ConfigError:
        return None
    return key, secret


def plan(export, mapping, ledger=None, *, workspace=None, create_users: bool = False,
         alias_label: str | None = None, email_opt_in: bool = False, batch_size: int = LIMITS.objects_per_array,
         combined_limit: int | None = None, rate_limit: tuple[int, float] = (3000, 3.0),
         partner_api_key: str | None = None, client_secret: str | None = None,
         event_time: "pd.Timestamp | datetime | str | None" = None,
         progress: bool | None = None, diff_at: str = "auto") -> "Plan":
    """Plan what to send to Braze so it matches ``export`` under ``mapping``, given ``ledger``.

    ``workspace`` is the target: a `BrazeClient` or its ``.workspace`` text; the ledger defaults
    to that workspace's ledger. Without either the plan diffs against nothing (everything is new)
    and can be inspected but not approved. Identifiers: external_id = user_id, else braze_id,
    else a user alias ``{alias_name: segment_id, alias_label}`` when ``alias_label`` is set, else
    email when ``email_opt_in``. Events are stamped ``event_time`` (default: the export's
    snapshot time), so resending an uncertain batch sends the identical event; when an earlier
    plan of the same ledger already used that second, the latest free second before it — each
    plan's events carry a time of their own, which `toolkit.settle` reads back from Braze.
    ``progress`` shows a bar (default: for exports of at least 200,000 profiles).
    ``diff_at``: where the diff runs when the ledger is on a server — ``"auto"`` (the smaller
    side moves; see `toolkit.sync.diffsite`), ``"local"`` or ``"server"``; the plan says where
    it ran and why (``plan.diff_site``).
    """
    check_diff_at(diff_at)
    if not isinstance(batch_size, int) or not 1 <= batch_size <= LIMITS.objects_per_array:
        raise PlanError(f"batch_size must be 1–{LIMITS.objects_per_array}, not {batch_size!r}",
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
    when = event_time if event_time is not None else export.snapshot_at
    when = pd.Timestamp.now(tz="UTC").floor("s") if when is None or pd.isna(when) else when
    try:
        event_iso = _utc_iso(pd.Timestamp(when))
    except (ValueError, TypeError):
        raise PlanError(f"event_time {event_time!r} is not a time", field="event_time",
                        hint="pass an ISO-8601 time or a pandas Timestamp") from None
    mapping.validate(export)
    credentials = _partner_credentials(partner_api_key, client_secret, client)
    from tqdm.auto import tqdm  # lazy: tqdm.auto imports IPython when it is installed

    show = progress if progress is not None else export.profile_count >= PROGRESS_FROM
    options = {"create_users": bool(create_users), "alias_label": alias_label,
               "email_opt_in": bool(email_opt_in), "batch_size": batch_size,
               "combined_limit": combined_limit, "rate_limit": list(rate), "event_time": event_iso}
    limit = min(batch_size, combined_limit) if combined_limit else batch_size
    workdir = Path(tempfile.mkdtemp(prefix="toolkit-plan-"))
    ops_path = workdir / "plan.ops.parquet"
    left_path = workdir / "plan.left_out.parquet"
    inputs_path = inputs_digest = None
    with engine.connect() as db:   # one connection for the whole plan
        one = _read_once(export, mapping, ledger, workdir, show, email_opt_in=email_opt_in,
                         alias_label=alias_label, cohorts_available=credentials is not None)
        if one is not None:
            hashes = one.hashes
        else:
            hashes = row_hashes(export, mapping, email_opt_in=email_opt_in,
                                alias_label=alias_label,
                                cohorts_available=credentials is not None, db=db)
        digest = hashes.digest
        stored = ledger.converged(digest) if ledger is not None else None
        if stored is not None:
            # the ledger already holds everything this very input asks for: nothing to send, and
            # the findings and left-out profiles are the ones its earlier plan found
            result = empty_result(ops_path)
            findings = Findings()
            findings.extend([Finding(**f) for f in stored["findings"]])
            shutil.copyfile(stored["left_out"], left_path)
            site = DiffSite("local", "nothing", "the ledger already holds this very input "
                            "(its digest matches the last converged plan's): no diff needed",
                            ledger=ledger.location)
            about = {k: stored[k] for k in ("fields", "field_digest", "profiles", "users",
                                            "cohorts")}
            about["converged"] = stored["plan"]
        else:
            # a changed export after a sync that converged: only the users whose row changed
            # are projected and diffed, every other one is known to hold what it asks for
            if one is None:   # hashed first, as the ledger's record might have answered
                one = _read_once(export, mapping, ledger, workdir, show,
                                 email_opt_in=email_opt_in, alias_label=alias_label,
                                 cohorts_available=credentials is not None, hashes=hashes)
                hashes = one.hashes if one is not None else hashes   # the same: one copy kept
            bar = tqdm(unit="op", desc="plan: desired state", disable=not show, leave=True)
            if one is not None:   # the export was read once, projected as it was hashed
                keys, _, projection = one.finish(db)
                del one
                engine.release_memory()   # the pass's arrays back before the diff
                if ledger is not None:   # what the ledger keeps once this plan converged
                    inputs_path = workdir / "plan.inputs.arrow"
                    inputs = InputsFile(inputs_path, hashes.shape)
                    inputs.write_rows(hashes, keys)
            else:
                previous = change = None
                kept = (ledger.converged_inputs() if ledger is not None and _INCREMENTAL
                        else None)
                if kept is not None:
                    previous = PreviousInput.read(kept, hashes.shape)
                if previous is not None:
                    keys, *change = previous.keys(export, hashes.rows,
                                                  email_opt_in=email_opt_in,
                                                  alias_label=alias_label, db=db)
                else:
                    keys = export_keys(export, email_opt_in=email_opt_in,
                                       alias_label=alias_label)
                if ledger is not None:   # what the ledger keeps once this plan converged
                    inputs_path = workdir / "plan.inputs.arrow"
                    inputs = InputsFile(inputs_path, hashes.shape)
                    inputs.write_rows(hashes, keys)
                projection = project(export, mapping, email_opt_in=email_opt_in,
                                     alias_label=alias_label,
                                     cohorts_available=credentials is not None, db=db,
                                     spill=workdir, previous=previous, hashes=hashes,
                                     keys=keys, change=change)
                del previous, change
            del keys
            diffed = projection.users if projection.projected is None else projection.projected
            bar.set_description(f"plan: diff of {diffed:,} users")
            findings = projection.findings
            site, snapshot = choose(ledger, projection, wanted=diff_at,
                                    source=str(getattr(export, "source", "") or ""))
            held = ledger.held_items() if ledger is not None else None
            try:
                result = diff(db, projection, snapshot, held, limit=limit, out=ops_path,
                              on_rows=bar.update)
            finally:
                bar.close()
            site.sent_bytes, site.received_bytes = result.transfer
            left_out = projection.left_out
            conflicts = result.conflicts
            if projection.earlier_conflicts is not None and len(projection.earlier_conflicts):
                conflicts = pd.concat([conflicts, projection.earlier_conflicts],
                                      ignore_index=True).sort_values(
                    ["k", "pos"], kind="stable", ignore_index=True)
            if len(conflicts):
                for rule, group in conflicts.groupby("rule", sort=False):
                    findings.add("error", "type_conflict",
                                 f"{len(group):,} value(s) of {rule!r} change type from what "
                                 "Braze holds; Braze refuses them", column=rule,
                                 fix="keep the attribute's type, or send to a new attribute name")
                left_out = pd.concat([left_out, conflicts.assign(
                    code=CONFLICT_CODE, reason=CONFLICT_REASON)], ignore_index=True)
            _write_left_out(left_out, left_path)
            if ledger is not None:
                inputs.write_entries(hashes, projection, conflicts)
                inputs_digest = file_digest(inputs_path)
            about = {"fields": [[f.field, f.kind] for f in projection.fields],
                     "field_digest": projection.spec_digest(), "profiles": projection.profiles,
                     "users": projection.users, "cohorts": projection.cohorts}
            if projection.projected is not None:
                about["diffed_users"] = diffed
    waiting_batches, waiting_events = ledger.awaiting_settle() if ledger is not None else (0, 0)
    if waiting_batches:
        held_text = (f"; {result.held:,} event(s) this plan would send to the same users for the "
                     "same audiences or traits are held back until then" if result.held else "")
        findings.add(
            "warning", "uncertain_events_held",
            f"{waiting_events:,} event(s) in {waiting_batches:,} batch(es) sent by an earlier "
            "apply have an unknown outcome (Braze never answered), so they are not sent again "
            "until settled — resending could count them twice" + held_text, fix=(
                "run `python -m toolkit settle` (toolkit.settle(ledger, client) in code): it "
                "reads those users back from Braze and records each batch as landed or not; "
                "the next plan then sends what did not land. A batch it cannot decide is "
                "settled by hand: settle --landed PLAN/BATCH or --not-landed PLAN/BATCH"))
    if client is not None and ledger is not None and hasattr(client, "key_fingerprint"):
        previous = ledger.note_key(client.key_fingerprint)
        if previous is not None:
            findings.add(
                "info", "api_key_changed",
                f"the API key changed since this ledger was last used (sha256:{previous} → "
                f"sha256:{client.key_fingerprint}); the ledger of {workspace} is kept because "
                "the workspace (instance and name) is the same", fix=(
                    "nothing to do after a key rotation; if the new key belongs to another "
                    "workspace, stop and give that workspace its own name (BRAZE_WORKSPACE)"))
    has_events = bool(len(result.batches)) and bool((result.batches["kind"] == "events").any())
    if has_events and ledger is not None:
        # each plan's events carry a second of their own, so Braze's read-back names the plan
        reserved = _utc_iso(ledger.reserve_event_time(pd.Timestamp(event_iso).to_pydatetime()))
        if reserved != event_iso and event_time is not None:
            findings.add("info", "event_time_moved",
                         f"events are stamped {reserved}, not {event_iso}: an earlier plan of "
                         "this ledger already used that second, and each plan's events need a "
                         "time of their own so `settle` can tell them apart in Braze",
                         fix="nothing to do")
        event_iso = options["event_time"] = reserved
    manifest = {
        "format": PLAN_FORMAT, "format_version": PLAN_FORMAT_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": str(getattr(export, "source", "") or ""), "workspace": workspace,
        "ledger_version": ledger.version if ledger is not None else 0,
        "ledger_path": ledger.location if ledger is not None else None,
        "options": options, "cohorts": about["cohorts"], "fields": about["fields"],
        "field_digest": about["field_digest"], "input_digest": digest,
        "profiles": about["profiles"], "users": about["users"],
        "changed_users": result.changed_users, "held_events": result.held,
        "awaiting_settle": {"batches": waiting_batches, "events": waiting_events},
        "rows": result.rows, "approval": None, "diff": site.to_dict(),
    }
    if "converged" in about:
        manifest["converged_with"] = about["converged"]
    if "diffed_users" in about:
        manifest["diffed_users"] = about["diffed_users"]
    if inputs_digest is not None:
        manifest["inputs_digest"] = inputs_digest
    manifest["left_out_digest"] = file_digest(left_path)
    out = Plan(manifest, ops_path, left_path, findings=findings, batches=result.batches,
               owned_dir=workdir, ops_digest=result.ops_digest,
               inputs_path=inputs_path)
    out.manifest["cost"] = out._compute_cost(result)
    out.manifest["summary"] = result.tally if result.rows else []
    if (ledger is not None and stored is None and not result.rows and not result.held
            and not waiting_batches):
        ledger.record_converged(out)   # nothing to send: Braze already holds this input
    return out


def _read_once(export, mapping, ledger, workdir: Path, show: bool, *, email_opt_in: bool,
               alias_label: str | None, cohorts_available: bool,
               hashes: "InputHashes | None" = None) -> "OnePass | None":
    """The export read once for the whole plan (`project_once`: hashes, keys, projection) —
    unless the ledger holds a convergence record it cannot compare rows with (no row hashes
    of that export kept): the input is then hashed first (None here), and read once more
    (with its ``hashes``) only when it is not that very input. None where ``_ONE_PASS`` says
    the separate steps."""
    if _ONE_PASS == "never" or (_ONE_PASS == "on disk"
                                and not isinstance(export, StoredExport)):
        return None
    previous = None
    kept = ledger.converged_inputs() if ledger is not None and _INCREMENTAL else None
    if kept is not None:
        previous = PreviousInput.read(kept, hashes.shape if hashes is not None else input_shape(
            export, mapping, email_opt_in=email_opt_in, alias_label=alias_label,
            cohorts_available=cohorts_available))
    if (hashes is None and previous is None and ledger is not None
            and ledger.converged_digest() is not None):
        return None
    from tqdm.auto import tqdm  # lazy: tqdm.auto imports IPython when it is installed

    with tqdm(total=export.profile_count, unit="profile", desc="plan: reading the export",
              disable=not show, leave=False) as bar:
        # hashed on a connection of its own, closed after the pass: the engine's memory goes
        # back before the diff
        one = project_once(export, mapping, email_opt_in=email_opt_in, alias_label=alias_label,
                           cohorts_available=cohorts_available, spill=workdir,
                           previous=previous, on_rows=bar.update)
    engine.release_memory()
    return None if one.stale else one


def _write_left_out(frame: pd.DataFrame, path: Path) -> None:
    table = pa.table({c: (pa.array(frame[c].array) if c in frame
                          else pa.nulls(len(frame), pa.string())) for c in LEFT_OUT_COLUMNS})
    table = pa.table({c: (table[c].combine_chunks() if isinstance(table[c], pa.ChunkedArray)
                          else table[c]).cast(pa.string()) for c in LEFT_OUT_COLUMNS})
    pq.write_table(table, path, compression="zstd")


class _OpsReader:
    """Row ranges of a plan's operations file, read one row group at a time as Arrow (apply
    reads in order); the two latest groups stay loaded, so the rows of a batch still in flight
    when the next group is read are at hand. Only the rows and columns asked for become Python
    objects."""

    KEPT = 2

    def __init__(self, path: Path) -> None:
        self.file = pq.ParquetFile(path, pre_buffer=False)
        meta = self.file.metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self.starts = [0, *np.cumsum(sizes).tolist()]
        self._groups: dict[int, dict[str, Any]] = {}

    def group(self, group: int) -> dict[str, Any]:
        """``{"table": …}`` of one row group (callers may cache more in it)."""
        entry = self._groups.get(group)
        if entry is None:
            entry = {"table": self.file.read_row_group(group).combine_chunks()}
            self._groups[group] = entry
            while len(self._groups) > self.KEPT:
                del self._groups[next(iter(self._groups))]
        return entry

    def locate(self, start: int, stop: int) -> tuple[int, int, int] | None:
        """``(group, first, stop)`` within one row group holding rows start..stop, else None."""
        group = bisect.bisect_right(self.starts, start) - 1
        if group < 0 or stop > self.starts[group + 1]:
            return None
        base = self.starts[group]
        return group, start - base, stop - base

    def rows(self, start: int, stop: int, columns: tuple[str, ...]) -> dict[str, list]:
        out: dict[str, list] = {c: [] for c in columns}
        at = start
        while at < stop:
            group = bisect.bisect_right(self.starts, at) - 1
            base = self.starts[group]
            end = min(stop, self.starts[group + 1])
            part = self.group(group)["table"].slice(at - base, end - at)
            for c in columns:
                out[c].extend(part.column(c).to_pylist())
            at = end
        return out

    def close(self) -> None:
        self.file.close()
        self._groups = {}



# --------------------------------------------------------------------------------------------
# the plan

class Plan:
    """A sync plan: operations (a Parquet file), cost, sample payloads, fingerprint and (once
    given) approval. Made by `plan`, or read back with `Plan.load`."""

    def __init__(self, manifest: dict, ops_path: Path, left_path: Path | None = None, *,
                 findings: Findings | None = None, batches: pd.DataFrame | None = None,
                 owned_dir: Path | None = None,
                 ops_digest: str | None = None,
                 inputs_path: Path | None = None) -> None:
        self.manifest = manifest
        # what the ledger keeps of this export once the plan is applied (see Ledger.record_converged)
        self.inputs_path = Path(inputs_path) if inputs_path is not None else None
        self.ops_path = Path(ops_path)
        self.left_path = Path(left_path) if left_path is not None else None
        self.findings = findings if findings is not None else Findings()
        self._batch_frame = batches
        # the file's digest taken as it was written (its first fingerprint needs no re-read);
        # check_approval drops it and reads the file again
        self._ops_digest = ops_digest
        self._batches: list[Batch] | None = None
        self._fingerprint: str | None = None
        self._reader: _OpsReader | None = None
        self._left_out: pd.DataFrame | None = None
        self._operations: pd.DataFrame | None = None
        if owned_dir is not None:  # a plan not yet saved lives in a temporary folder
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(owned_dir), True)

    # -- manifest fields -------------------------------------------------------------------
    workspace = property(lambda self: self.manifest["workspace"])
    ledger_version = property(lambda self: int(self.manifest["ledger_version"]))
    ledger_path = property(lambda self: self.manifest.get("ledger_path"))
    options = property(lambda self: self.manifest["options"])
    cohorts = property(lambda self: self.manifest["cohorts"])
    source = property(lambda self: self.manifest.get("source", ""))
    created_at = property(lambda self: self.manifest.get("created_at"))
    fields = property(lambda self: [tuple(f) for f in self.manifest.get("fields", [])])
    field_digest = property(lambda self: self.manifest.get("field_digest"))

    @property
    def approval(self) -> dict | None:
        return self.manifest.get("approval")

    @approval.setter
    def approval(self, value: dict | None) -> None:
        self.manifest["approval"] = value

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def operations(self) -> pd.DataFrame:
        """Every operation as a DataFrame (read from the Parquet file; at scale prefer
        `sample_payloads`, `summary` or `to_frame(limit=…)`)."""
        if self._operations is None:
            with _damaged(self.ops_path, "operations"):
                table = pq.read_table(self.ops_path, columns=list(OPERATION_COLUMNS))
                self._operations = pd.DataFrame(
                    {c: table.column(c).to_numpy(zero_copy_only=False).astype(object)
                     if c != "batch" else table.column(c).to_numpy() for c in OPERATION_COLUMNS})
        return self._operations

    @property
    def left_out(self) -> pd.DataFrame:
        """Profiles the plan leaves out: segment_id, Braze user, rule, code and reason."""
        if self._left_out is None:
            if self.left_path is None or not self.left_path.exists():
                self._left_out = pd.DataFrame({c: pd.Series(dtype=object)
                                               for c in LEFT_OUT_COLUMNS})
            else:
                with _damaged(self.left_path, "left-out"):
                    table = pq.read_table(self.left_path, columns=list(LEFT_OUT_COLUMNS))
                    self._left_out = pd.DataFrame({c: table.column(c).to_numpy(
                        zero_copy_only=False).astype(object) for c in table.column_names})
        return self._left_out

    def _check_left_out(self) -> None:
        """The left-out file is the one the (fingerprinted) manifest names: the ledger keeps
        it once the plan converges and reports its profiles to later plans of the same input."""
        if self.manifest.get("left_out_digest"):
            _same_bytes(self.left_path, self.manifest["left_out_digest"], "left-out")

    # -- identity ------------------------------------------------------------------------
    def compute_fingerprint(self) -> str:
        """sha256 over the operations file's bytes, the workspace, the ledger version, the
        options, the cohorts, the cost and the digests of the files kept beside it."""
        m = self.manifest
        head = {"format": PLAN_FORMAT, "workspace": m["workspace"],
                "ledger_version": m["ledger_version"], "options": m["options"],
                "cohorts": m["cohorts"], "fields": m.get("fields", []),
                "columns": list(OPERATION_COLUMNS), "rows": m["rows"], "cost": m.get("cost")}
        if m.get("input_digest"):   # the ledger records it as converged after a complete apply
            head["input_digest"] = m["input_digest"]
        if m.get("inputs_digest"):  # … and keeps the inputs file it names
            head["inputs_digest"] = m["inputs_digest"]
        if m.get("left_out_digest"):  # … and reports its left-out profiles to later plans
            head["left_out_digest"] = m["left_out_digest"]
        if self._ops_digest is None:
            self._ops_digest = self._digest_file()
        h = hashlib.sha256(_dumps(head).encode())
        h.update(self._ops_digest.encode())
        return h.hexdigest()

    def _digest_file(self) -> str:
        """sha256 of the operations file's bytes: any change to it, even one that reads back
        as the same operations, is an alteration."""
        try:
            return file_digest(self.ops_path)
        except OSError as exc:
            raise PlanAltered(f"the plan's operations file cannot be read: {exc.strerror}",
                              file=str(self.ops_path),
                              hint="the file was damaged or replaced; make and approve a new plan"
                              ) from None

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
            frame = self._batch_frame
            if frame is None:
                frame = _read_batches(self.ops_path)
            self._batches = [Batch(str(b), str(k), int(s), int(e), int(n), i) for i, (b, k, s, e, n)
                             in enumerate(zip(frame["batch"], frame["kind"], frame["start"],
                                              frame["stop"], frame["objects"]))]
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

    def rows_of(self, batch: Batch, columns: tuple[str, ...] = (
            "uid", "segment_id", "op", "name", "value", "change", "field", "after")) -> dict:
        """The operation rows of one batch, column by column (lists)."""
        return self._ops_reader().rows(batch.start, batch.stop, columns)

    def _ops_reader(self) -> _OpsReader:
        if self._reader is None:
            self._reader = _OpsReader(self.ops_path)
        return self._reader

    def payload(self, batch: Batch, rows: dict | None = None) -> dict:
        """The exact JSON body of one batch (``/users/track`` body, or a cohort change)."""
        rows = rows if rows is not None else self.rows_of(batch)
        uid, names, values, changes = rows["uid"], rows["name"], rows["value"], rows["change"]
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
        ids = [self.identifier(u) for u in uid]
        return {"cohort_id": names[0], "change": changes[0],
                "user_ids": [i["external_id"] for i in ids if "external_id" in i],
                "aliases": [i["user_alias"] for i in ids if "user_alias" in i]}

    def encoded_payload(self, batch: Batch, rows: dict | None = None):
        """`payload` of an attributes or events batch as JSON bytes, assembled from the
        operations' JSON texts without decoding them (what apply sends)."""
        if rows is None and batch.kind == "attributes":
            body = self._attributes_body(batch)
            if body is not None:
                return EncodedTrack(body, ("attributes",))
        rows = rows if rows is not None else self.rows_of(batch, ("uid", "name", "value"))
        uid, names, values = rows["uid"], rows["name"], rows["value"]
        flag = "false" if self.options.get("create_users", False) else "true"
        ident = self._identifier_text
        key = _key_text
        if batch.kind == "attributes":
            objects: list[str] = []
            last = None
            parts: list[str] = []
            for u, n, v in zip(uid, names, values):
                if u != last:
                    if parts:
                        objects.append("{" + ",".join(parts) + "}")
                    parts = [ident(u), '"_update_existing_only":' + flag]
                    last = u
                parts.append(key(n) + v)
            if parts:
                objects.append("{" + ",".join(parts) + "}")
            body = '{"attributes":[' + ",".join(objects) + "]}"
            return EncodedTrack(body.encode("utf-8"), ("attributes",))
        time = ',"time":' + _dumps(self.options["event_time"]) + ',"properties":'
        events = ["{" + ident(u) + ',"name":' + _dumps(n) + time + v
                  + ',"_update_existing_only":' + flag + "}"
                  for u, n, v in zip(uid, names, values)]
        return EncodedTrack(('{"events":[' + ",".join(events) + "]}").encode("utf-8"),
                            ("events",))

    def _identifier_text(self, uid: str) -> str:
        kind, _, value = uid.partition(":")
        if kind == "external_id" and _plain(value):
            return '"external_id":"' + value + '"'     # what _dumps writes, without its cost
        return _dumps(self.identifier(uid))[1:-1]

    def _attributes_body(self, batch: Batch) -> bytes | None:
        """The body `encoded_payload` assembles, cut out of one Arrow text column computed per
        row group (each operation's piece of JSON, a user's first one opening its object), with
        no Python object per operation: the rows between two offsets of that column are the
        batch's objects. None when the batch is empty, crosses a row group or has a null."""
        reader = self._ops_reader()
        where = reader.locate(batch.start, batch.stop) if batch.stop > batch.start else None
        if where is None:
            return None
        group, a, b = where
        entry = reader.group(group)
        pieces = entry.get("pieces")
        if pieces is None:
            pieces = entry["pieces"] = self._attribute_pieces(entry["table"])
        if pieces.slice(a, b - a).null_count:
            return None
        offsets = np.frombuffer(pieces.buffers()[1], dtype=np.int32,
                                count=len(pieces) + 1, offset=4 * pieces.offset)
        data = memoryview(pieces.buffers()[2])
        # every piece of a user's first operation starts with "},{": the batch's first two
        # characters are dropped and its last object closed
        return b"".join((b'{"attributes":[', data[int(offsets[a]) + 2:int(offsets[b])],
                         b"}]}"))

    def _attribute_pieces(self, table: pa.Table) -> pa.Array:
        uid, name, value, batch = (table.column(c).combine_chunks() if isinstance(
            table.column(c), pa.ChunkedArray) else table.column(c)
            for c in ("uid", "name", "value", "batch"))
        n = len(uid)
        if n == 0:
            return pa.array([], pa.string())
        # a user's first operation in its batch opens the user's object
        first = np.zeros(n, dtype=bool)
        for column in (uid, batch):
            first[pc.run_end_encode(column).run_ends.to_numpy()[:-1]] = True
        first[0] = True
        at = pa.array(np.flatnonzero(first))
        opening = uid.take(at)
        rest = pc.utf8_slice_codeunits(opening, 12)
        ident = pc.binary_join_element_wise('"external_id":"', rest, '"', "")
        slow = pc.invert(pc.fill_null(pc.and_(
            pc.starts_with(opening, "external_id:"),
            pc.invert(pc.match_substring_regex(rest, r'["\\\x00-\x1f]'))), False))
        if pc.any(slow).as_py():
            texts = [self._identifier_text(u) for u in opening.filter(slow).to_pylist()]
            ident = pc.replace_with_mask(ident, slow, pa.array(texts, pa.string()))
        flag = "false" if self.options.get("create_users", False) else "true"
        head = pc.binary_join_element_wise("},{", ident, ',"_update_existing_only":' + flag + ",",
                                           "")
        lead = pc.replace_with_mask(pa.repeat(pa.scalar(",", pa.string()), n), pa.array(first),
                                    head)
        names = pc.unique(name)
        keys = pc.take(pa.array([None if x is None else _key_text(x) for x in names.to_pylist()],
                                pa.string()), pc.index_in(name, value_set=names))
        return pc.binary_join_element_wise(lead, keys, value, "").cast(pa.string())

    def payloads(self) -> Iterator[tuple[Batch, dict]]:
        for batch in self.batches():
            yield batch, self.payload(batch)

    def sample_payloads(self, n: int = SAMPLE_PAYLOADS) -> list[dict]:
        """The first ``n`` request bodies exactly as they will be sent."""
        return [self.payload(b) for b in self.batches()[:n]]

    # -- cost ----------------------------------------------------------------------------
    def _compute_summary(self) -> list[list]:
        with engine.connect() as db:
            rows = db.execute(
                "SELECT rule, op, change, name, count(*) FROM read_parquet(?) "
                "GROUP BY ALL ORDER BY ALL", [str(self.ops_path)]).fetchall()
        return [list(r) for r in rows]

    def summary(self) -> pd.DataFrame:
        """Operations by audience/trait, kind and change."""
        return pd.DataFrame(self.manifest.get("summary") or [],
                            columns=["rule", "op", "change", "name", "operations"])

    @property
    def is_empty(self) -> bool:
        """No operations to send. Not the same as "in sync": see `awaiting_settle`."""
        return self.rows == 0

    @property
    def awaiting_settle(self) -> dict:
        """``{"batches", "events"}`` of event batches sent by earlier applies whose outcome is
        unknown when this plan was made; until they are settled (`toolkit.settle`) their users'
        events for the same audiences or traits are held back (``held_events``)."""
        waiting = self.manifest.get("awaiting_settle") or {}
        return {"batches": int(waiting.get("batches") or 0),
                "events": int(waiting.get("events") or 0)}

    @property
    def held_events(self) -> int:
        """Events this plan leaves out until an uncertain batch holding them is settled."""
        return int(self.manifest.get("held_events") or 0)

    def headline(self) -> str:
        """One sentence on what the plan does, which never says "nothing to send" while events
        await settling: what a CLI, the wizard or a notebook shows first."""
        c = self.cost()
        waiting = self.awaiting_settle
        settle = ""
        if waiting["batches"]:
            settle = (f"{waiting['events']:,} event(s) in {waiting['batches']:,} batch(es) from an "
                      "earlier apply have an unknown outcome and are not resent"
                      + (f" ({self.held_events:,} planned event(s) held back with them)"
                         if self.held_events else "")
                      + "; settle them with `python -m toolkit settle` (toolkit.settle(ledger, "
                        "client)), then plan again")
        if self.is_empty and settle:
            return "Nothing can be sent yet: " + settle + "."
        if self.is_empty:
            return "Nothing to send: Braze already holds every value."
        text = (f"{c['operations']:,} operations for {c['users']:,} users in {c['requests']:,} "
                f"requests ({c['data_points']:,} data points).")
        return text + (" Also: " + settle + "." if settle else "")

    def _compute_cost(self, counted=None) -> dict[str, Any]:
        """The cost, from the counts the diff kept while writing (``counted``, a DiffResult)
        or, without them, from the operations file."""
        if counted is not None:
            by_op = {}
            for _rule, op, _change, _name, n in counted.tally:
                by_op[op] = by_op.get(op, 0) + n
            ops, users, attr_users = counted.rows, counted.users, counted.attribute_users
            attr, events, cohort = (by_op.get(k, 0) for k in ("attribute", "event", "cohort"))
        else:
            with engine.connect() as db:
                ops, users, attr_users, attr, events, cohort = db.execute(
                    "SELECT count(*), count(DISTINCT uid), "
                    "count(DISTINCT uid) FILTER (WHERE op = 'attribute'), "
                    "count(*) FILTER (WHERE op = 'attribute'), "
                    "count(*) FILTER (WHERE op = 'event'), "
                    "count(*) FILTER (WHERE op = 'cohort') FROM read_parquet(?)",
                    [str(self.ops_path)]).fetchall()[0]
        batches = self.batches()
        track = sum(1 for b in batches if b.kind != "cohort")
        limit, period = self.options["rate_limit"]
        return {
            "operations": int(ops), "users": int(users), "attribute_objects": int(attr_users),
            "attribute_writes": int(attr), "events": int(events), "cohort_changes": int(cohort),
            "requests": len(batches), "track_requests": track,
            "cohort_requests": len(batches) - track, "data_points": int(attr + events),
            "estimated_seconds": round(track * float(period) / float(limit), 3),
        }

    def cost(self) -> dict[str, Any]:
        """Objects, requests, data points (every attribute key set + each event, as Braze bills
        them) and the estimated duration at the workspace rate limit."""
        return dict(self.manifest["cost"])

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
        self._ops_digest = None  # what is sent is what the file holds now
        actual = self.fingerprint
        if a.get("fingerprint") != actual or a.get("workspace") != self.workspace:
            raise PlanAltered("the plan changed after it was approved (fingerprint "
                              f"{str(a.get('fingerprint'))[:12]}… approved, {actual[:12]}… now);"
                              " nothing was sent", hint="re-plan and approve the new plan")
        self._check_left_out()
        if workspace != self.workspace:
            raise PlanWorkspaceMismatch(
                f"the plan was approved for workspace {self.workspace!r} but the client targets "
                f"{workspace!r}; nothing was sent",
                hint="apply with a client for the approved workspace, or plan for this one")

    # -- views ---------------------------------------------------------------------------
    def to_frame(self, limit: int | None = None) -> pd.DataFrame:
        """One row per operation (the first ``limit``): who, which rule, what kind of change,
        what is sent."""
        if limit is None or not self.rows:
            ops = self.operations
        else:
            file = pq.ParquetFile(self.ops_path, pre_buffer=False)
            ops = next(file.iter_batches(batch_size=max(1, int(limit)))).to_pandas()
            file.close()
        return pd.DataFrame({
            "segment_id": ops["segment_id"], "braze_user": ops["uid"], "rule": ops["rule"],
            "kind": ops["op"], "change": ops["change"], "name": ops["name"],
            "value": ops["value"]}).reset_index(drop=True)

    def __repr__(self) -> str:
        c = self.cost()
        state = ("approved by " + self.approval["by"]) if self.approval else "not approved"
        waiting = self.awaiting_settle
        settle = (f", {waiting['events']:,} uncertain event(s) in {waiting['batches']:,} "
                  "batch(es) await settling (python -m toolkit settle)" if waiting["batches"]
                  else "")
        return (f"<Plan {self.id} for {self.workspace or '(no workspace)'}: "
                f"{c['operations']:,} operations, {c['users']:,} users, {c['requests']:,} "
                f"requests, {c['data_points']:,} data points, ~{c['estimated_seconds']:.1f}s, "
                f"{len(self.findings)} findings, {state}{settle}>")

    def _repr_html_(self) -> str:
        c = self.cost()
        approval = (f"approved by <b>{escape(self.approval['by'])}</b> until "
                    f"{escape(self.approval['expires_at'])}" if self.approval
                    else "<b>not approved</b>")
        waiting = self.awaiting_settle
        settle = ""
        if waiting["batches"]:
            held = (f" {self.held_events:,} event(s) of this plan are held back with them."
                    if self.held_events else "")
            settle = (f"<p style='border-left:4px solid #e67e22;padding:2px 6px'><b>"
                      f"{waiting['events']:,} event(s) in {waiting['batches']:,} batch(es) "
                      "await settling</b>: an earlier apply sent them but Braze never answered, "
                      f"so they are not resent (Braze would count them twice).{held} Settle them "
                      "with <code>python -m toolkit settle</code> (or <code>toolkit.settle(ledger,"
                      " client)</code>): it reads those users back from Braze and decides each "
                      "batch; then plan again.</p>")
        if self.is_empty and waiting["batches"]:
            body = "<p><b>Nothing can be sent yet.</b></p>" + settle
        elif self.is_empty:
            body = "<p><b>Nothing to send</b>: Braze already holds every value.</p>"
        else:
            body = self.summary().to_html(index=False) + settle
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
            f"</p>{self._diff_html()}{body}<details><summary>First payload exactly as sent</summary>"
            f"<pre>{escape(samples)}</pre></details><h5>Findings</h5>{findings}"
            f"<p><small>fingerprint {escape(self.fingerprint)}</small></p></div>")

    @property
    def diff_site(self) -> str | None:
        """Where this plan's diff ran, what moved, and why (None: a plan saved before plans
        said so)."""
        site = self.manifest.get("diff")
        return site.get("text") if isinstance(site, dict) else None

    def _diff_html(self) -> str:
        text = self.diff_site
        return f"<p><small>{escape(text)}</small></p>" if text else ""

    # -- files ---------------------------------------------------------------------------
    @staticmethod
    def files_for(path: "str | os.PathLike[str]") -> tuple[Path, Path, Path]:
        """(manifest, operations, left-out) file names of a plan saved as ``path``."""
        path = Path(path)
        stem = path.name[:-5] if path.name.endswith(".json") else path.name
        return path, path.with_name(stem + ".ops.parquet"), path.with_name(stem + ".left_out.parquet")

    @staticmethod
    def inputs_file_for(path: "str | os.PathLike[str]") -> Path:
        """The inputs file saved beside a plan saved as ``path`` (row hashes of its export,
        kept by the ledger after a complete apply so the next plan of a changed export
        projects only the changed users)."""
        path = Path(path)
        stem = path.name[:-5] if path.name.endswith(".json") else path.name
        return path.with_name(stem + ".inputs.arrow")

    def save(self, path: "str | os.PathLike[str]") -> Path:
        """Write the plan: ``path`` (the JSON manifest) and, beside it, ``<stem>.ops.parquet``,
        ``<stem>.left_out.parquet`` and (a plan made against a ledger)
        ``<stem>.inputs.arrow``. No secrets: identities, values and options only."""
        manifest_path, ops_path, left_path = self.files_for(path)
        data = dict(self.manifest, fingerprint=self.fingerprint,
                    operations_digest=self._ops_digest,   # set by the fingerprint
                    operations_file=ops_path.name, left_out_file=left_path.name,
                    findings=[{k: getattr(f, k) for k in ("severity", "code", "message", "row",
                                                          "column", "fix", "segment_id")}
                              for f in self.findings])
        inputs_path = self.inputs_file_for(path)
        try:
            for src, dst in ((self.ops_path, ops_path), (self.left_path, left_path),
                             (self.inputs_path, inputs_path)):
                if src is not None and src.exists() and not (dst.exists() and src.samefile(dst)):
                    tmp = dst.with_name(dst.name + ".tmp")
                    shutil.copyfile(src, tmp)
                    os.replace(tmp, dst)
            tmp = manifest_path.with_name(manifest_path.name + ".tmp")
            tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1, default=str),
                           encoding="utf-8")
            os.replace(tmp, manifest_path)
        except OSError as exc:
            raise PlanError(f"cannot write the plan: {exc.strerror}", file=str(path),
                            hint="choose a writable path") from None
        return manifest_path

    @classmethod
    def load(cls, path: "str | os.PathLike[str]") -> "Plan":
        """Read a saved plan; a malformed manifest or operations file raises PlanError naming
        the field, and an operations or left-out file whose bytes are not those the plan was
        saved with (damaged, edited, re-encoded) raises PlanAltered naming the file. (An edit
        of the manifest that keeps it well-formed is caught by the fingerprint at apply.)"""
        path = Path(path)
        data = read_document(path, error=PlanError, what="plan",
                             missing_hint="make one with `python -m toolkit plan …`",
                             damaged_hint="the plan file was damaged; make and approve a new plan")
        findings = _check_manifest(data, str(path))
        ops_path = path.with_name(str(data["operations_file"]))
        left_path = path.with_name(str(data.get("left_out_file") or ""))
        _check_operations(ops_path, int(data["rows"]))
        saved_digest = data["operations_digest"]
        data = {k: v for k, v in data.items() if k not in (
            "findings", "fingerprint", "operations_digest", "operations_file", "left_out_file")}
        inputs_path = cls.inputs_file_for(path)
        plan = cls(data, ops_path, left_path if data.get("rows") is not None else None,
                   findings=findings,
                   inputs_path=inputs_path if data.get("inputs_digest") else None)
        # one sha256 of each file (0.4 s for a 10M-profile plan): a damaged file is refused
        # here, once, rather than failing in whichever view reads the damaged part first
        plan._ops_digest = _same_bytes(ops_path, saved_digest, "operations")
        plan._check_left_out()
        return plan


def _same_bytes(path: Path | None, want: str, what: str) -> str:
    """The sha256 of a plan's ``what`` file at ``path``, which must be ``want``; else
    PlanAltered naming the file (missing, or damaged, edited or re-encoded)."""
    try:
        actual = file_digest(path) if path is not None else None
    except OSError:
        actual = None
    if actual != want:
        raise PlanAltered(f"the plan's {what} file " + (
            "is not the one the plan was saved with (damaged, edited or re-encoded)"
            if actual else "is missing"), file=str(path) if path is not None else None,
            hint="keep the plan's files together as they were saved, or make and approve a "
                 "new plan")
    return actual


@contextlib.contextmanager
def _damaged(path: Path, what: str):
    """A plan file that fails to read (in any of the many ways a damaged Parquet file fails,
    a text that does not decode among them) raises PlanError naming it."""
    try:
        yield
    except (OSError, pa.ArrowException, ValueError, KeyError) as exc:
        raise PlanError(f"the plan's {what} file cannot be read: {exc}", file=str(path),
                        hint="the file was damaged or replaced; plan again") from None


def _bad(file: str | None, field: str, what: str) -> PlanError:
    return PlanError(f"plan field {field!r} {what}", file=file, field=field,
                     hint="do not edit plan files by hand; make and approve a new plan")


def _check_manifest(data: Any, file: str) -> Findings:
    """Validate a plan manifest's fields; returns its findings."""
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        raise _bad(file, "format", f"must be {PLAN_FORMAT!r}")
    if data.get("format_version") != PLAN_FORMAT_VERSION:
        raise _bad(file, "format_version", f"must be {PLAN_FORMAT_VERSION} (plans made by another "
                   "version of the toolkit cannot be applied; plan again)")
    ws = data.get("workspace")
    if ws is not None and not isinstance(ws, str):
        raise _bad(file, "workspace", "must be text or null")
    lv = data.get("ledger_version")
    if not isinstance(lv, int) or isinstance(lv, bool) or lv < 0:
        raise _bad(file, "ledger_version", "must be a non-negative integer")
    options = data.get("options")
    if not isinstance(options, dict):
        raise _bad(file, "options", "must be an object")
    for key, check in (("batch_size", lambda v: isinstance(v, int) and 1 <= v <= LIMITS.objects_per_array),
                       ("combined_limit", lambda v: v is None or (isinstance(v, int) and v > 0)),
                       ("rate_limit", lambda v: isinstance(v, list) and len(v) == 2 and all(
                           isinstance(x, (int, float)) and x > 0 for x in v)),
                       ("event_time", lambda v: isinstance(v, str)),
                       ("create_users", lambda v: isinstance(v, bool))):
        if key not in options or not check(options[key]):
            raise _bad(file, f"options.{key}", "is missing or invalid")
    rows = data.get("rows")
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        raise _bad(file, "rows", "must be a non-negative integer")
    if not isinstance(data.get("operations_file"), str) or "/" in data["operations_file"]:
        raise _bad(file, "operations_file", "must name the operations file beside the manifest")
    if not isinstance(data.get("cost"), dict) or not isinstance(data.get("summary"), list):
        raise _bad(file, "cost", "must hold the plan's cost and summary")
    fields = data.get("fields")
    if not isinstance(fields, list) or not all(
            isinstance(f, list) and len(f) == 2 and all(isinstance(x, str) for x in f)
            for f in fields):
        raise _bad(file, "fields", "must be a list of [field, kind]")
    cohorts = data.get("cohorts", [])
    if not isinstance(cohorts, list) or not all(
            isinstance(c, dict) and {"rule", "cohort_id", "name"} <= set(c) for c in cohorts):
        raise _bad(file, "cohorts", "must be a list of {rule, cohort_id, name}")
    for key in ("operations_digest", "left_out_digest", "inputs_digest"):
        if (key in data or key == "operations_digest") and not (
                isinstance(data.get(key), str) and re.fullmatch(r"[0-9a-f]{64}", data[key])):
            raise _bad(file, key, "must be a sha256 digest (64 hex digits)")
    approval = data.get("approval")
    if approval is not None and (not isinstance(approval, dict) or not {
            "by", "at", "expires_at", "fingerprint", "workspace"} <= set(approval)):
        raise _bad(file, "approval", "must be null or {by, at, expires_at, fingerprint, workspace}")
    findings = Findings()
    try:
        for f in data.get("findings", []):
            findings.extend([Finding(**f)])
    except (TypeError, ValueError):
        raise _bad(file, "findings", "holds an entry that is not a finding") from None
    return findings


def _check_operations(path: Path, rows: int) -> None:
    """The operations file exists, has the plan's columns and rows, and holds sendable values."""
    file = str(path)
    if not path.exists():
        raise PlanError("the plan's operations file is missing", file=file,
                        hint="keep the .ops.parquet file next to the plan's JSON file")
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException, ValueError) as exc:   # a damaged name fails to decode
        raise PlanError(f"the plan's operations file cannot be read: {exc}", file=file,
                        hint="the file was damaged; make and approve a new plan") from None
    for col in OPERATION_COLUMNS:
        if col not in schema.names:
            raise _bad(file, f"operations.{col}", "is missing")
    with engine.connect() as db:
        try:
            n, bad_op, null_text, bad_json = db.execute(
                "SELECT count(*), count(*) FILTER (WHERE op NOT IN ('attribute','event','cohort')"
                " OR op IS NULL), count(*) FILTER (WHERE uid IS NULL OR name IS NULL OR "
                "value IS NULL OR field IS NULL), count(*) FILTER (WHERE NOT json_valid(value)) "
                "FROM read_parquet(?)", [file]).fetchall()[0]
        except Exception as exc:  # duckdb raises its own error classes for damaged files
            raise PlanError(f"the plan's operations file cannot be read: {exc}", file=file,
                            hint="the file was damaged; make and approve a new plan") from None
    if n != rows:
        raise _bad(file, "operations", f"has {n:,} rows, the manifest says {rows:,} (different "
                   "lengths)")
    if bad_op:
        raise _bad(file, "operations.op", f"has {bad_op:,} unknown value(s)")
    if null_text:
        raise _bad(file, "operations.uid", f"must hold text; {null_text:,} row(s) do not")
    if bad_json:
        raise _bad(file, "operations.value", f"holds text that is not JSON ({bad_json:,} rows)")


def _read_batches(path: Path) -> pd.DataFrame:
    with engine.connect() as db:
        frame = db.execute(
            "WITH o AS (SELECT *, row_number() OVER () AS rn FROM read_parquet(?)) "
            "SELECT batch, any_value(op) AS op, min(rn) - 1 AS start, max(rn) AS stop, "
            "CASE WHEN any_value(op) = 'attribute' THEN count(DISTINCT uid) ELSE count(*) END "
            "AS objects, any_value(name) AS name, any_value(change) AS change "
            "FROM o GROUP BY batch ORDER BY batch", [str(path)]).df()
    return name_batches(frame)
