"""Apply an approved plan to Braze: batch by batch, recorded in the ledger, resumable after a crash.

`apply(plan, client)` refuses a plan that is unapproved, expired, altered, approved for another
workspace, or made from an older ledger (`LedgerMoved`). It then sends attribute batches, then
event batches, then partner cohort changes, recording each batch in the ledger *before* it leaves
and again with Braze's answer (state and batch status in one transaction). Re-applying the same
plan after a crash skips acknowledged batches, resends attribute batches whose outcome is unknown
(setting a value twice is harmless), and never resends an event batch whose outcome is unknown
unless ``resend_uncertain_events=True`` — Braze would count those events twice. Per-object
rejects (``errors[].index``) are mapped back to profiles and fields; they stay out of the ledger,
so the next plan offers them again. One apply at a time holds a ledger (`Ledger.exclusive`), so
a scheduled run and a manual run of the same plan cannot both send it. Attribute batches are
marked and committed in small groups (resending one is harmless), event batches one by one.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from toolkit import engine
from toolkit.documents import read_document, write_document
from toolkit.errors import (BrazeAPIError, BrazeAuthError, ConfigError, LedgerError, LedgerMoved,
                            Outcome, ReportError)
from toolkit.sync.journal import is_ledger_url
from toolkit.sync.ledger import Ledger, Rows, describe_workspace, reopen_ledger
from toolkit.sync.plan import Batch, Plan

__all__ = ["apply", "SyncReport"]

REPORT_FORMAT = "engage-braze-sync-report"
EXPECTED_SAMPLE = 1000          # users whose planned values the report keeps for `verify`
_STAT_KEYS = ("requests", "retries", "rate_limited", "server_errors", "connection_errors",
              "timeouts", "unknown_outcomes")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class SyncReport:
    """What an apply did: per batch status, per object rejects with Braze's reason, what is
    uncertain, requests/retries/429s, data points, throughput over time and timings."""

    plan_id: str
    fingerprint: str
    workspace: str
    status: str = "complete"                 # complete | partial | failed
    started_at: str = ""
    finished_at: str = ""
    elapsed_s: float = 0.0
    counts: dict = field(default_factory=dict)
    client_stats: dict = field(default_factory=dict)
    data_points: int = 0
    batches: list = field(default_factory=list)       # one dict per batch
    rejected: list = field(default_factory=list)      # one dict per rejected object
    uncertain: list = field(default_factory=list)     # event batches needing a decision
    throughput: list = field(default_factory=list)    # [seconds, acknowledged objects, requests]
    timings: dict = field(default_factory=dict)
    expected: list = field(default_factory=list)      # sample of planned values, for verify
    error: str | None = None
    notes: list = field(default_factory=list)
    awaiting_settle: int = 0     # uncertain event batches in the ledger after this apply

    # -- outcome -------------------------------------------------------------------------
    @property
    def exit_code(self) -> int:
        """0 complete; 1 partial (objects rejected); 2 failed; 3 event batches with an unknown
        outcome await `settle` (this apply's, or earlier ones still in the ledger) — failed wins
        over 3, and 3 over 1."""
        if self.status not in ("complete", "partial"):
            return 2
        if self.uncertain or self.awaiting_settle:
            return 3
        return 0 if self.status == "complete" else 1

    @property
    def ok(self) -> bool:
        return self.status == "complete"

    # -- views ---------------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """One row per batch: kind, status, objects, acknowledged, rejected, seconds, reason."""
        cols = ["batch", "kind", "status", "objects", "acknowledged", "rejected", "seconds",
                "attempts", "reason"]
        return pd.DataFrame(self.batches, columns=cols)

    def rejected_frame(self) -> pd.DataFrame:
        """One row per object Braze rejected: profile, Braze user, array, fields and reason."""
        cols = ["batch", "array", "index", "segment_id", "braze_user", "fields", "reason"]
        return pd.DataFrame(self.rejected, columns=cols)

    def uncertain_frame(self) -> pd.DataFrame:
        cols = ["batch", "status", "objects", "users", "reason"]
        return pd.DataFrame(self.uncertain, columns=cols)

    def throughput_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.throughput, columns=["seconds", "acknowledged", "requests"])

    def summary(self) -> dict[str, Any]:
        c = self.counts
        return {"status": self.status, "sent": c.get("objects_sent", 0),
                "acknowledged": c.get("objects_acknowledged", 0),
                "rejected": c.get("objects_rejected", 0), "skipped": c.get("objects_skipped", 0),
                "uncertain": c.get("objects_uncertain", 0), "failed": c.get("objects_failed", 0),
                "requests": self.client_stats.get("requests", 0),
                "retries": self.client_stats.get("retries", 0),
                "429s": self.client_stats.get("rate_limited", 0),
                "data_points": self.data_points, "elapsed_s": round(self.elapsed_s, 3)}

    def __repr__(self) -> str:
        s = self.summary()
        return (f"<SyncReport {self.plan_id} {s['status']}: {s['acknowledged']:,} acknowledged, "
                f"{s['rejected']:,} rejected, {s['skipped']:,} skipped, {s['uncertain']:,} "
                f"uncertain, {s['failed']:,} failed; {s['requests']:,} requests, {s['retries']:,}"
                f" retries, {s['429s']:,} 429s, {s['data_points']:,} data points in "
                f"{s['elapsed_s']:.2f}s>")

    def _repr_html_(self) -> str:
        s = self.summary()
        colour = {"complete": "#27ae60", "partial": "#e67e22"}.get(self.status, "#c0392b")
        rows = "".join(f"<tr><th style='text-align:left'>{escape(str(k))}</th>"
                       f"<td>{escape(f'{v:,}' if isinstance(v, int) else str(v))}</td></tr>"
                       for k, v in s.items())
        parts = [f"<div class='toolkit-sync-report' style='border-left:4px solid {colour};"
                 f"padding:4px 8px'><h4>Sync report — plan {escape(self.plan_id)}</h4>"
                 f"<p>Target <code>{escape(self.workspace)}</code></p><table>{rows}</table>"]
        if self.error:
            parts.append(f"<p><b>Stopped:</b> {escape(self.error)}</p>")
        if self.rejected:
            parts.append("<h5>Rejected by Braze</h5>"
                         + self.rejected_frame().head(20).to_html(index=False))
        if self.uncertain or self.awaiting_settle:
            parts.append("<h5>Events with an unknown outcome (not resent)</h5>"
                         + (self.uncertain_frame().to_html(index=False) if self.uncertain else
                            f"<p>{self.awaiting_settle:,} batch(es) from earlier applies.</p>")
                         + "<p>Braze never answered for these event batches, so they may or may "
                           "not be in Braze. Settle them with <code>python -m toolkit settle"
                           "</code> (or <code>toolkit.settle(ledger, client)</code>): it reads "
                           "their users back from Braze and records each batch as landed or "
                           "not; the next plan sends what did not land.</p>")
        for note in self.notes:
            parts.append(f"<p><small>{escape(note)}</small></p>")
        return "".join(parts) + "</div>"

    # -- files ---------------------------------------------------------------------------
    def save(self, path: "str | os.PathLike[str]") -> Path:
        """Write the report as JSON. It holds identities, values, statuses and Braze's error
        texts (secrets are redacted by the client before they reach it), never a key."""
        data = {"format": REPORT_FORMAT, **asdict(self)}
        return write_document(path, json.dumps(data, ensure_ascii=False, default=str),
                              error=ReportError, what="report")

    @classmethod
    def load(cls, path: "str | os.PathLike[str]") -> "SyncReport":
        path = Path(path)
        data = read_document(path, error=ReportError, what="report",
                             missing_hint="write one with `python -m toolkit apply … --report "
                                          "FILE`",
                             damaged_hint="the file is damaged; re-run apply to get a new one")
        if not isinstance(data, dict) or data.pop("format", None) != REPORT_FORMAT:
            raise ReportError("not a sync report", file=str(path), field="format",
                               hint="pass the file written by apply --report")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ReportError(f"unknown report field(s) {unknown}", file=str(path),
                               field=unknown[0], hint="pass the file written by apply --report")
        expected = data.get("expected", [])
        if not isinstance(expected, list) or not all(map(_is_expected, expected)):
            # verify reads these entries to choose whom to look up in Braze
            raise ReportError("report field 'expected' is not the list apply writes",
                              file=str(path), field="expected",
                              hint="pass the file written by apply --report, unedited")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ReportError(f"incomplete report: {exc}", file=str(path)) from None


def _is_expected(entry: Any) -> bool:
    """Whether ``entry`` has the shape of one `SyncReport.expected` item."""
    return (isinstance(entry, dict) and isinstance(entry.get("braze_user"), str)
            and isinstance(entry.get("identifier"), dict)
            and isinstance(entry.get("attributes", {}), dict)
            and isinstance(entry.get("events", {}), dict))


def _open_ledger(plan: Plan, client, ledger) -> Ledger:
    if isinstance(ledger, Ledger):
        out = ledger
    elif ledger is not None:
        out = Ledger(path=ledger, workspace=client)
    elif plan.ledger_path and is_ledger_url(plan.ledger_path):
        out = reopen_ledger(plan.ledger_path, client)
    elif plan.ledger_path and Path(plan.ledger_path).exists():
        out = Ledger(path=plan.ledger_path, workspace=client)
    else:
        out = Ledger(client)
    if out.workspace != client.workspace:
        raise LedgerError(f"the ledger belongs to {describe_workspace(out.workspace)}, the client "
                          f"targets {describe_workspace(client.workspace)}; nothing was sent",
                          file=out.location, hint="use the ledger of the workspace you apply to")
    return out


def _check_ledger(plan: Plan, ledger: Ledger) -> None:
    others = ledger.changes_since(plan.ledger_version, excluding_plan=plan.id)
    if others or ledger.version < plan.ledger_version:
        what = (f"{others:,} change(s) were acknowledged by other syncs" if others else
                f"it is at version {ledger.version}, older than the plan's "
                f"{plan.ledger_version} (replaced or restored?)")
        raise LedgerMoved(f"the ledger moved since this plan was made: {what}; nothing was sent",
                          file=ledger.location,
                          hint="plan again from the current ledger and approve the new plan")
    if not any(b.kind == "events" for b in plan.batches()):
        return
    owner = ledger.event_time_owner(plan.options["event_time"])
    if owner not in (None, plan.id):
        raise LedgerMoved(f"plan {owner} already sent events stamped "
                          f"{plan.options['event_time'][:19]}Z to this workspace; a plan's events "
                          "need a time of their own so `settle` can tell them apart; nothing was "
                          "sent", file=ledger.location,
                          hint="plan again from this ledger (it picks a free time) and approve "
                               "the new plan")
    clash = _held_by_others(plan, ledger)
    if clash:
        raise LedgerMoved(
            f"{clash:,} event(s) of this plan may already be in Braze: another apply sent them "
            "after this plan was made and never got Braze's answer; nothing was sent",
            file=ledger.location,
            hint="settle those batches (`python -m toolkit settle`), then plan again and "
                 "approve the new plan")


def _held_by_others(plan: Plan, ledger: Ledger) -> int:
    """Events of ``plan`` for a (user, field) that an uncertain batch of another plan holds."""
    waiting = ledger.uncertain_events()
    held = [(f, u) for p, items in zip(waiting["plan"], waiting["items"]) if p != plan.id
            for f, u, _ in json.loads(items)]
    if not held:
        return 0

    with engine.connect() as db:
        db.register("held_raw", pa.table({"field": pa.array([h[0] for h in held], pa.string()),
                                          "uid": pa.array([h[1] for h in held], pa.string())}))
        return int(db.execute(
            "SELECT count(*) FROM read_parquet(?) o WHERE o.op = 'event' AND EXISTS (SELECT 1 "
            "FROM held_raw h WHERE h.field = o.field AND h.uid = o.uid)",
            [str(plan.ops_path)]).fetchall()[0][0])


class _Run:
    """The mutable state of one apply: counters, per-batch rows, rejects, timeline. Operation
    rows are read from the plan's file batch by batch and kept only while their batch is in
    flight, so memory stays bounded whatever the plan's size."""

    def __init__(self, plan: Plan, ledger: Ledger, progress: bool, total: int) -> None:
        from tqdm.auto import tqdm  # lazy: tqdm.auto imports IPython when it is installed

        self.plan = plan
        self.on_batch: "Callable[[int, Any], None] | None" = None
        self.ledger = ledger
        self.counts = dict.fromkeys((
            "batches", "batches_sent", "batches_acknowledged", "batches_skipped",
            "batches_rejected", "batches_failed", "batches_unknown", "batches_uncertain",
            "objects_sent", "objects_acknowledged", "objects_rejected", "objects_skipped",
            "objects_uncertain", "objects_failed", "objects_unknown"), 0)
        self.rows: list[dict] = []
        self.rejected: list[dict] = []
        self.uncertain: list[dict] = []
        self.acked: list[int] = []          # request numbers Braze acknowledged (for verify)
        self.rejected_users: set[str] = set()
        self.data_points = 0
        self.timeline: list[list[float]] = []
        self.started = time.monotonic()
        self.sent_at: dict[str, float] = {}
        self.abort: str | None = None
        self.answers: list[tuple] = []     # ledger writes not yet committed (see flush)
        self.group = 1
        self.in_flight: dict[str, dict] = {}   # batch id -> its operation rows
        self.bar = tqdm(total=total, unit="obj", desc=f"apply {plan.id[:8]}",
                        disable=not progress, leave=True)

    def finish(self, batch: Batch, status: str, *, state=(), reason=None) -> None:
        """Queue the ledger record of Braze's answer; committed every ``group`` answers.
        Deferring is safe: an answer lost in a crash leaves the batch 'sent', which a resumed
        apply resends (attributes, idempotent) or holds for a decision (events, group 1)."""
        self.answers.append((batch.id, status, state, reason))
        if len(self.answers) >= self.group:
            self.flush()

    def flush(self) -> None:
        if self.answers:
            answers, self.answers = self.answers, []
            self.ledger.finish_many(self.plan.id, answers)

    def tick(self, client, before: dict, *, last: bool = False) -> None:
        """Add a throughput point, at most every 0.1 s (and at the end of a phase)."""
        now = time.monotonic() - self.started
        if not last and self.timeline and now - self.timeline[-1][0] < 0.1:
            return
        requests = _stats(client)["requests"] - before["requests"]
        self.timeline.append([round(now, 4), self.counts["objects_acknowledged"], requests])

    def row(self, batch: Batch, status: str, *, acknowledged=0, rejected=0, attempts=0,
            reason=None) -> None:
        seconds = (time.monotonic() - self.sent_at[batch.id]) if batch.id in self.sent_at else 0.0
        self.rows.append({"batch": batch.id, "kind": batch.kind, "status": status,
                          "objects": batch.objects, "acknowledged": acknowledged,
                          "rejected": rejected, "seconds": round(seconds, 4),
                          "attempts": attempts, "reason": reason})

    def ops(self, batch: Batch) -> dict:
        """The operation rows of ``batch`` (kept from its payload while it is in flight)."""
        rows = self.in_flight.pop(batch.id, None)
        return rows if rows is not None else self.plan.rows_of(batch)

    @staticmethod
    def object_index(batch: Batch, uids: list) -> np.ndarray:
        """Object position (within its array) of each operation row of ``batch``."""
        if batch.kind != "attributes":
            return np.arange(len(uids))
        u = np.asarray(uids, dtype=object)
        new = np.ones(len(u), dtype=bool)
        new[1:] = u[1:] != u[:-1]
        return np.cumsum(new) - 1

    def _reject_rows(self, batch: Batch, ops: dict, per_object: dict[int, str]
                     ) -> tuple[int, list[tuple[str, str]]]:
        """Record each rejected object with its profile and fields; returns how many objects
        were rejected and their (user, field) rows."""
        obj = self.object_index(batch, ops["uid"])
        array = {"attributes": "attributes", "events": "events"}.get(batch.kind, "cohort")
        count, rows = 0, []
        for index, why in sorted(per_object.items()):
            sel = np.flatnonzero(obj == index)
            if not len(sel):
                continue
            count += 1
            uid = ops["uid"][sel[0]]
            rows += [(ops["uid"][i], ops["field"][i]) for i in sel]
            self.rejected_users.add(uid)
            self.rejected.append({
                "batch": batch.id, "array": array, "index": int(index),
                "segment_id": ops["segment_id"][sel[0]], "braze_user": uid,
                "fields": ", ".join(dict.fromkeys(ops["name"][i] for i in sel)), "reason": why})
        return count, rows

    def acknowledge(self, batch: Batch, rejected: dict[int, str], *, status="acknowledged",
                    attempts=1, note=None) -> None:
        ops = self.in_flight.pop(batch.id, None)
        rows = batch.stop - batch.start
        # the rows are read only when Braze rejected something in the batch
        n_rej, bad = self._reject_rows(batch, ops if ops is not None else self.plan.rows_of(
            batch), rejected) if rejected else (0, [])
        # Braze took every object but the rejected ones: a reference to the batch's rows of the
        # plan (less the rejected rows) is the state it acknowledged.
        reason = note
        if rejected:
            reason = f"{len(rejected)} object(s) rejected" + (f"; {note}" if note else "")
        self.finish(batch, status, state=Rows(batch.index, rows, tuple(sorted(bad))),
                    reason=reason)
        self.acked.append(batch.index)
        acked = batch.objects - n_rej
        self.counts["batches_acknowledged"] += 1
        self.counts["objects_acknowledged"] += acked
        self.counts["objects_rejected"] += n_rej
        if batch.kind != "cohort":
            self.data_points += rows - len(bad)
        self.row(batch, status, acknowledged=acked, rejected=n_rej, attempts=attempts,
                 reason=reason)
        self.bar.update(batch.objects)

    def fail(self, batch: Batch, exc: BrazeAPIError, *, outcome: Outcome | None = None) -> None:
        outcome = outcome or exc.outcome
        attempts = exc.attempts or 0
        ops = self.ops(batch)
        if outcome is Outcome.REJECTED and not isinstance(exc, BrazeAuthError):
            rejected = exc.rejected
            array = "events" if batch.kind == "events" else "attributes"
            per_object = {i: why for (a, i), why in rejected.items() if a == array}
            if not per_object:
                per_object = {i: exc.message for i in range(batch.objects)}
            self.finish(batch, "rejected", reason=exc.message[:500])
            self._reject_rows(batch, ops, per_object)
            self.counts["batches_rejected"] += 1
            self.counts["objects_rejected"] += batch.objects
            self.row(batch, "rejected", rejected=batch.objects, attempts=attempts,
                     reason=exc.message)
        elif outcome is Outcome.UNKNOWN:
            self.finish(batch, "unknown", reason=exc.message[:500])
            self.counts["batches_unknown"] += 1
            if batch.kind == "events":
                self.counts["objects_uncertain"] += batch.objects
                self.uncertain.append(self._uncertain_row(batch, "unknown", exc.message, ops))
            else:
                self.counts["objects_unknown"] += batch.objects
            self.row(batch, "unknown", attempts=attempts, reason=exc.message)
        else:
            # Nothing was applied (auth refused, 429s or 5xx after every retry): safe to resend.
            self.finish(batch, "failed", reason=exc.message[:500])
            self.counts["batches_failed"] += 1
            self.counts["objects_failed"] += batch.objects
            self.row(batch, "failed", attempts=attempts, reason=exc.message)
            if isinstance(exc, BrazeAuthError):
                self.abort = exc.message
        self.bar.update(batch.objects)

    def _uncertain_row(self, batch: Batch, status: str, reason: str, ops: dict | None = None
                       ) -> dict:
        ops = ops if ops is not None else self.plan.rows_of(batch)
        users = list(dict.fromkeys(ops["uid"]))
        return {"batch": batch.id, "status": status, "objects": batch.objects,
                "users": ", ".join(users[:5]) + (f" … (+{len(users) - 5})" if len(users) > 5
                                                  else ""), "reason": reason}


def apply(plan: "Plan | str | os.PathLike[str]", client, ledger: "Ledger | str | None" = None, *,
          resend_uncertain_events: bool = False, progress: bool = True,
          partner_api_key: str | None = None, client_secret: str | None = None,
          on_batch: "Callable[[int, Any], None] | None" = None) -> SyncReport:
    """Send an approved plan to ``client``'s workspace; returns a `SyncReport`.

    ``on_batch(objects, result)`` is called after each /users/track batch is answered and
    recorded in the ledger (``result`` is the client's TrackResult or BrazeAPIError), so a
    display can show live counters that never run ahead of what the ledger holds.

    Refuses (and sends nothing) with `PlanNotApproved`, `PlanExpired`, `PlanAltered`,
    `PlanWorkspaceMismatch` or `LedgerMoved`. Safe to call again with the same plan after a crash
    or a partial failure: it resumes where the ledger says it stopped.
    """
    if not isinstance(plan, Plan):
        plan = Plan.load(plan)
    t0 = time.monotonic()
    plan.check_approval(client.workspace)
    ledger = _open_ledger(plan, client, ledger)
    with ledger.exclusive("apply"):
        return _apply_locked(plan, client, ledger, t0, resend_uncertain_events, progress,
                             partner_api_key, client_secret, on_batch)


def _apply_locked(plan: Plan, client, ledger: Ledger, t0: float, resend_uncertain_events: bool,
                  progress: bool, partner_api_key, client_secret, on_batch=None) -> SyncReport:
    _check_ledger(plan, ledger)
    batches = plan.batches()
    ledger.record_plan(plan)
    ledger.record_batches(plan.id, [(b.id, b.kind, b.objects, None, b.index) for b in batches])
    statuses = ledger.batch_statuses(plan.id)
    checks_s = time.monotonic() - t0

    todo: dict[str, list[Batch]] = {"attributes": [], "events": [], "cohort": []}
    skipped, held = [], []
    for b in batches:
        status = statuses.get(b.id, "pending")
        if status in ("acknowledged", "rejected", "resolved"):
            skipped.append(b)
        elif status in ("sent", "unknown") and b.kind == "events" and not resend_uncertain_events:
            held.append((b, status))
        else:
            todo[b.kind].append(b)
    total = sum(b.objects for group in todo.values() for b in group)
    run = _Run(plan, ledger, progress, total)
    run.on_batch = on_batch
    run.counts["batches"] = len(batches)
    run.counts["batches_skipped"] = len(skipped)
    run.counts["objects_skipped"] = sum(b.objects for b in skipped)
    for b, status in held:
        run.counts["batches_uncertain"] += 1
        run.counts["objects_uncertain"] += b.objects
        run.uncertain.append(run._uncertain_row(
            b, status, "sent by an earlier apply that never got Braze's answer; not resent"))
    before = _stats(client)
    started_at = _now()
    phases: dict[str, float] = {}
    try:
        for kind in ("attributes", "events"):
            if todo[kind] and not run.abort:
                p0 = time.monotonic()
                _send_track(run, client, todo[kind], before)
                phases[kind] = round(time.monotonic() - p0, 4)
        if todo["cohort"] and not run.abort:
            p0 = time.monotonic()
            _send_cohorts(run, client, todo["cohort"], before, partner_api_key, client_secret)
            phases["cohort"] = round(time.monotonic() - p0, 4)
    finally:
        run.flush()
        run.bar.close()
    # fold what Braze acknowledged into the state snapshot now, while this apply holds the
    # ledger, so the next plan starts from it
    p0 = time.monotonic()
    ledger.materialize(progress=progress)
    phases["ledger"] = round(time.monotonic() - p0, 4)
    after = _stats(client)
    stats = {k: after.get(k, 0) - before.get(k, 0) for k in _STAT_KEYS}
    elapsed = time.monotonic() - t0
    counts = run.counts
    if run.abort or counts["batches_failed"]:
        status = "failed"
    elif counts["objects_rejected"] or counts["objects_uncertain"] or counts["batches_unknown"]:
        status = "partial"
    else:
        status = "complete"
    notes = []
    if not plan.options.get("create_users"):
        notes.append("Update-only mode: Braze skips, without an error, users it does not know yet;"
                     " run verify to see whether every user exists (plan with create_users=True "
                     "to create them).")
    if counts["batches_unknown"] and counts["objects_unknown"]:
        notes.append(f"{counts['objects_unknown']:,} attribute object(s) had an unknown outcome; "
                     "applying the plan again resends them (setting a value twice is harmless).")
    awaiting = ledger.awaiting_settle()[0]
    if status == "complete" and not awaiting and not plan.manifest.get("held_events"):
        ledger.record_converged(plan)   # Braze holds all this export asks for (see Ledger)
    if awaiting:
        notes.append(f"{awaiting:,} event batch(es) with an unknown outcome await settling: run "
                     "`python -m toolkit settle` (toolkit.settle(ledger, client)), then plan "
                     "again.")
    report = SyncReport(
        plan_id=plan.id, fingerprint=plan.fingerprint, workspace=client.workspace, status=status,
        started_at=started_at, finished_at=_now(), elapsed_s=round(elapsed, 4), counts=counts,
        client_stats=stats, data_points=run.data_points,
        batches=run.rows, rejected=run.rejected, uncertain=run.uncertain,
        throughput=run.timeline, timings={"checks_s": round(checks_s, 4), **{
            f"{k}_s": v for k, v in phases.items()}, "total_s": round(elapsed, 4)},
        expected=_expected_sample(plan, run), error=run.abort, notes=notes,
        awaiting_settle=awaiting)
    return report


def _stats(client) -> dict[str, int]:
    stats = getattr(client, "stats", None)
    return {k: int(getattr(stats, k, 0) or 0) for k in _STAT_KEYS}


def _send_track(run: _Run, client, batches: list[Batch], before: dict) -> None:
    plan, ledger = run.plan, run.ledger
    # Attribute batches are marked 'sent' a few at a time and their answers committed a few at a
    # time (a resend is harmless; 4 per worker: each commit costs about as much as building a
    # request, and a crash resends at most that many); event batches one by one, so a crash
    # leaves at most the batches really in flight uncertain.
    group = 1 if batches[0].kind == "events" else 4 * max(1, int(getattr(client, "max_workers",
                                                                           4)))
    run.group = group

    def payloads():
        for i, b in enumerate(batches):
            if run.abort:
                return
            if i % group == 0:
                # Durable before the requests leave: a crash from here on leaves these batches
                # 'sent', which a resumed apply treats as "may have landed".
                ledger.mark_sent(plan.id, [x.id for x in batches[i:i + group]])
            run.sent_at[b.id] = time.monotonic()
            run.counts["batches_sent"] += 1
            run.counts["objects_sent"] += b.objects
            if b.kind == "attributes":
                # cut out of the plan's file with no Python object per operation; the rows are
                # read only for an answer that needs them (a rejection), see _Run.ops
                yield plan.encoded_payload(b)
            else:
                rows = plan.rows_of(b)
                run.in_flight[b.id] = rows
                yield plan.encoded_payload(b, rows)

    try:
        for index, result in client.track_batches(payloads()):
            batch = batches[index]
            if isinstance(result, BrazeAPIError):
                run.fail(batch, result)
            else:
                array = "events" if batch.kind == "events" else "attributes"
                rejected = {i: why for (a, i), why in (result.rejected or {}).items()
                            if a == array}
                note = None
                if getattr(result, "unknown_attempts", 0) and batch.kind == "events":
                    note = "resent after an unknown outcome: Braze may hold these events twice"
                run.acknowledge(batch, rejected, attempts=result.attempts, note=note)
            run.tick(client, before)
            if run.on_batch is not None:
                run.on_batch(batch.objects, result)
    finally:
        run.flush()
        run.group = 1
        run.tick(client, before, last=True)


def _send_cohorts(run: _Run, client, batches: list[Batch], before: dict, partner_api_key,
                  client_secret) -> None:
    plan, ledger = run.plan, run.ledger
    try:
        cohorts = client.cohort(partner_api_key, client_secret)
    except ConfigError as exc:
        for b in batches:
            run.finish(b, "failed", reason=exc.message)
            run.counts["batches_failed"] += 1
            run.counts["objects_failed"] += b.objects
            run.row(b, "failed", reason=f"partner credentials: {exc.message}")
        return
    names = {c["cohort_id"]: c["name"] for c in plan.cohorts}
    created: dict[str, BrazeAPIError | None] = {}
    for b in batches:
        if run.abort:
            return
        rows = plan.rows_of(b)
        run.in_flight[b.id] = rows
        body = plan.payload(b, rows)
        cohort_id = body["cohort_id"]
        if cohort_id not in created:
            # "call whenever a cohort is initially exported … or when the name … is changed"
            try:
                cohorts.create(cohort_id, names.get(cohort_id, cohort_id),
                               created_at=plan.options["event_time"])
                created[cohort_id] = None
            except BrazeAPIError as exc:
                created[cohort_id] = exc
        ledger.mark_sent(plan.id, b.id)
        run.sent_at[b.id] = time.monotonic()
        run.counts["batches_sent"] += 1
        run.counts["objects_sent"] += b.objects
        error = created[cohort_id]
        if error is None:
            members = body["user_ids"] + body["aliases"]
            try:
                if body["change"] == "add":
                    cohorts.update_users(cohort_id, add=members)
                else:
                    cohorts.update_users(cohort_id, remove=members)
            except BrazeAPIError as exc:
                error = exc
        if error is None:
            run.acknowledge(b, {})
        else:
            # Cohort membership is a set: resending an uncertain change cannot double-count.
            run.fail(b, error, outcome=Outcome.NOT_APPLIED
                     if error.outcome is Outcome.UNKNOWN else error.outcome)
        run.tick(client, before)


def _expected_sample(plan: Plan, run: _Run) -> list[dict]:
    """Planned values of up to EXPECTED_SAMPLE acknowledged users (a deterministic sample by
    hash of the user key), for `verify`; read from the plan's file on the engine."""
    if not run.acked:
        return []

    # The sample is the EXPECTED_SAMPLE users of smallest hash. Asking first only among users
    # whose hash is below a bound that about 4× as many users pass gives the same answer (every
    # user left out hashes higher) without grouping every user of a large plan; when fewer pass,
    # the question is asked of all.
    top = (1 << 64) - 1
    users = int(((plan.manifest.get("cost") or {}).get("users")) or 0)
    bounds = [top] if users <= 4 * EXPECTED_SAMPLE else [top * 4 * EXPECTED_SAMPLE // users, top]
    with engine.connect() as db:
        db.register("acked_raw", pa.table({"batch": pa.array(sorted(set(run.acked)), pa.int64())}))
        db.register("rejected_raw", pa.table({"uid": pa.array(sorted(run.rejected_users),
                                                              pa.string())}))
        for bound in bounds:
            rows = db.execute(f"""
                WITH ops AS (SELECT * FROM read_parquet(?) WHERE op <> 'cohort'
                             AND hash(uid) <= {bound}::UBIGINT
                             AND batch IN (SELECT batch FROM acked_raw)
                             AND uid NOT IN (SELECT uid FROM rejected_raw)),
                     chosen AS (SELECT DISTINCT uid FROM ops ORDER BY hash(uid), uid
                                LIMIT {EXPECTED_SAMPLE})
                SELECT uid, segment_id, op, name, value FROM ops
                WHERE uid IN (SELECT uid FROM chosen) ORDER BY uid""",
                [str(plan.ops_path)]).fetchall()
            if len({r[0] for r in rows}) >= EXPECTED_SAMPLE:
                break
    out: dict[str, dict] = {}
    for uid, seg, op, name, value in rows:
        entry = out.setdefault(uid, {"braze_user": uid, "segment_id": seg,
                                     "identifier": plan.identifier(uid), "attributes": {},
                                     "events": {}})
        if op == "attribute":
            entry["attributes"][name] = json.loads(value)
        else:
            entry["events"][name] = entry["events"].get(name, 0) + 1
    return list(out.values())
