"""`GuidedSync`: the analysts' step-by-step Engage → Braze sync wizard (ipywidgets).

Eight numbered steps — choose an export, review it, map it, preview the Braze segments, plan,
approve, push, verify — with Back/Next. Everything the wizard knows lives in a plain
`GuidedSyncState`; the widgets only display it and forward clicks to its verbs, so tests (and
`GuidedSync.run_all`) drive the same code headless. The target is the built-in Braze sandbox
(started on demand) or the workspace named by ``BRAZE_REST_ENDPOINT`` / ``BRAZE_API_KEY`` — a key
is never typed into a widget, since widget values are sent to the browser and saved with the
notebook. Pushing runs in a background thread inside a kernel, so the notebook stays responsive
while the progress bar moves.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlparse

from toolkit.errors import BrazeAPIError, ToolkitError

__all__ = ["GuidedSync", "GuidedSyncState", "SyncProgress", "ApprovalRefused", "STEPS",
           "bundled_samples"]

STEPS = ("Choose an export", "Review audiences and traits", "Map to Braze",
         "Preview Braze segments", "Plan", "Approve", "Push", "Verify and report")
TARGETS = {"sandbox": "Built-in Braze sandbox (local, no credentials)",
           "workspace": "Braze workspace from BRAZE_REST_ENDPOINT / BRAZE_API_KEY"}
SEND_AS_LABELS = {"attribute": "custom attribute", "event": "custom events",
                  "both": "attribute + events", "cohort": "partner cohort"}
_SAMPLES_DIR = Path(__file__).resolve().parents[2] / "data" / "samples"
# (label, path under data/samples) — the bundled exports an analyst can start from.
_SAMPLE_CHOICES = (
    ("Sample shop — Profiles Sync tables (CSV)", "profiles_sync"),
    ("Sample shop — Engage events (NDJSON, with history)", "events/engage_events.ndjson.gz"),
    ("Sample shop — audience CSVs (formatted)", "audience_csv/formatted"),
    ("Sample shop — audience CSVs (unformatted)", "audience_csv/unformatted"),
)
_DATA_URI_LIMIT = 5_000_000  # bytes; larger reports are linked as files only


class ApprovalRefused(ToolkitError):
    """The approval was not given: no name, the box not ticked, or the wrong workspace typed."""


class PushInProgress(ToolkitError):
    """The wizard is still pushing; wait for the push to finish before changing steps."""


def bundled_samples(directory: str | os.PathLike | None = None) -> dict[str, Path]:
    """The bundled sample exports that exist on disk, label → path."""
    root = Path(directory) if directory is not None else _SAMPLES_DIR
    return {label: root / rel for label, rel in _SAMPLE_CHOICES if (root / rel).exists()}


@dataclass
class SyncProgress:
    """Running counters of one push, updated after every request Braze answers."""

    requests_total: int = 0
    requests_done: int = 0
    objects_total: int = 0
    objects_acknowledged: int = 0
    objects_rejected: int = 0
    requests_failed: int = 0
    retries: int = 0
    running: bool = False
    finished: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    return buf.getvalue()


class GuidedSyncState:
    """Everything the wizard knows, with one verb per user action; no widgets in here.

    Verbs return True on success. A `ToolkitError` from any stage is kept in ``error`` (shown by
    the wizard with its fix) instead of propagating, so an analyst's mistake never ends the
    session; other exceptions are bugs and propagate.
    """

    def __init__(self, *, target: str = "sandbox", sandbox=None, output_dir: str | os.PathLike =
                 "sync-reports", samples_dir: str | os.PathLike | None = None,
                 verify_sample: int = 50, expires_in: str = "1h") -> None:
        if target not in TARGETS:
            raise ToolkitError(f"unknown target {target!r}", field="target",
                               hint="use 'sandbox' or 'workspace'")
        self.step = 0
        self.samples = bundled_samples(samples_dir)
        self.source: str | None = None
        self.export = None
        self.mapping = None
        self.rule_errors: dict[str, ToolkitError] = {}
        self.preview = None
        self.target = target
        self.create_users = target == "sandbox"
        self.client = None
        self.ledger = None
        self.plan = None
        self.approved_by: str | None = None
        self.report = None
        self.verification = None
        self.saved: dict[str, Path] = {}
        self.progress = SyncProgress()
        self.error: ToolkitError | None = None
        self.output_dir = Path(output_dir)
        self.verify_sample = verify_sample
        self.expires_in = expires_in
        self._sandbox = sandbox
        self._owns_sandbox = sandbox is None
        self._tmp: str | None = None
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _shutdown, self.__dict__)

    # -- errors ---------------------------------------------------------------------------
    def _attempt(self, action: Callable[[], Any]) -> bool:
        try:
            action()
        except ToolkitError as exc:
            self.error = exc
            return False
        self.error = None
        return True

    # -- step 1: export -------------------------------------------------------------------
    def load(self, source: str | os.PathLike) -> bool:
        """Load a bundled sample (by label) or an export path; resets everything after it."""
        def action():
            from toolkit.engage.readers import load

            text = str(source).strip()
            if not text:
                raise ToolkitError("no export chosen", field="export",
                                   hint="pick a bundled sample or type the path of an export")
            path = self.samples.get(text, Path(os.path.expanduser(text)))
            export = load(path)
            self._reset_from(0)
            self.source = text
            self.export = export
            self.mapping = _default_mapping(export)
        return self._attempt(action)

    # -- step 3: mapping ------------------------------------------------------------------
    def set_rule(self, key: str, **changes: Any) -> bool:
        """Change how one computation is sent (send_as, attribute, event or cohort names)."""
        def action():
            self._require("mapping", "choose an export first")
            try:
                self.mapping = self.mapping.set(key, **changes)
            except ToolkitError as exc:
                self.rule_errors[key] = exc
                raise
            self.rule_errors.pop(key, None)
            self._reset_from(3)
        return self._attempt(action)

    def filters_for(self, key: str) -> list[str]:
        """The Braze segment filter(s) that select `key`'s members under the current rule."""
        rule = self.mapping[key]
        value_type = str(self.export.computation(key)["value_type"])
        return [str(f) for f in self.mapping.filters_for(rule, value_type)]

    # -- step 4: preview ------------------------------------------------------------------
    def build_preview(self) -> bool:
        def action():
            self._require("mapping", "choose an export first")
            self._require_valid_rules()
            self.preview = self.mapping.preview(self.export)
        return self._attempt(action)

    # -- step 5: target and plan ----------------------------------------------------------
    def set_target(self, target: str) -> bool:
        """Send to the built-in sandbox or to the workspace in the environment (re-plans)."""
        def action():
            if target not in TARGETS:
                raise ToolkitError(f"unknown target {target!r}", field="target",
                                   hint="use 'sandbox' or 'workspace'")
            if target != self.target:
                self._disconnect()
                self.target = target
                self.create_users = target == "sandbox"
                self._reset_from(4)
        return self._attempt(action)

    def set_create_users(self, create: bool) -> bool:
        def action():
            if bool(create) != self.create_users:
                self.create_users = bool(create)
                self._reset_from(4)
        return self._attempt(action)

    @property
    def workspace(self) -> str | None:
        """The target's identity (endpoint#key fingerprint), once connected."""
        return self.client.workspace if self.client is not None else None

    @property
    def confirm_phrase(self) -> str | None:
        """What the analyst types to approve a real workspace: its instance or host name."""
        if self.client is None or self.target == "sandbox":
            return None
        return self.client.instance or urlparse(self.client.endpoint).netloc or self.client.endpoint

    def connect(self) -> bool:
        """Start the sandbox (or read the workspace from the environment) and open its ledger."""
        return self._attempt(self._connect)

    def _connect(self) -> None:
        if self.client is not None:
            return
        from toolkit.braze.client import BrazeClient
        from toolkit.sync.ledger import Ledger

        if self.target == "sandbox":
            if self._sandbox is None:
                from toolkit.sandbox.server import BrazeSandbox

                self._sandbox = BrazeSandbox()
                self._owns_sandbox = True
            client = BrazeClient.for_sandbox(self._sandbox)
            # a fresh sandbox holds nobody, so its ledger starts empty too, in a folder that
            # lives as long as the sandbox
            if self._tmp is None:
                self._tmp = tempfile.mkdtemp(prefix="guided-sync-")
            directory = self._tmp
        else:
            from toolkit.errors import ConfigError
            from toolkit.secrets import read_env_file

            settings = {**read_env_file(".env"), **os.environ}
            missing = [v for v in ("BRAZE_REST_ENDPOINT", "BRAZE_API_KEY") if not settings.get(v)]
            if missing:
                raise ConfigError(
                    f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set",
                    field=missing[0],
                    hint="set BRAZE_REST_ENDPOINT (e.g. US-03) and BRAZE_API_KEY in the "
                         "environment or a .env file before starting the notebook; keys are "
                         "never typed into the wizard")
            client = BrazeClient(interactive=False)
            directory = None
        try:
            ledger = Ledger(client, directory=directory)
        except ToolkitError:
            client.close()
            raise
        # both or neither: a plan without the ledger would resend everything
        self.client, self.ledger = client, ledger

    @property
    def sandbox(self):
        return self._sandbox

    def build_plan(self) -> bool:
        """Diff the export against what this workspace acknowledged: only changes are planned."""
        def action():
            from toolkit.sync.plan import plan

            self._require("mapping", "choose an export first")
            self._require_valid_rules()
            self._connect()
            self._reset_from(4)
            self.plan = plan(self.export, self.mapping, self.ledger, workspace=self.client,
                             create_users=self.create_users)
        return self._attempt(action)

    # -- step 6: approve ------------------------------------------------------------------
    def approve(self, by: str, confirmed: bool, typed: str = "") -> bool:
        """Approve the plan as `by`: needs the box ticked, and for a real workspace its name."""
        def action():
            self._require("plan", "build the plan first (step 5)")
            name = (by or "").strip()
            if not name:
                raise ApprovalRefused("an approval needs your name", field="approved by",
                                      hint="type your name so the ledger records who approved")
            if not confirmed:
                raise ApprovalRefused("the confirmation box is not ticked; nothing was approved",
                                      field="confirmation",
                                      hint="tick the box once you have reviewed the plan")
            phrase = self.confirm_phrase
            if phrase is not None and (typed or "").strip() != phrase:
                raise ApprovalRefused(
                    f"this plan targets a real Braze workspace; type {phrase!r} to confirm",
                    field="workspace name", hint=f"type {phrase} exactly as shown")
            self.plan.approve(by=name, expires_in=self.expires_in)
            self.approved_by = name
        return self._attempt(action)

    @property
    def approved(self) -> bool:
        return self.plan is not None and bool(self.plan.approval)

    # -- step 7: push ---------------------------------------------------------------------
    def push(self, on_progress: Callable[[SyncProgress], None] | None = None) -> bool:
        """Apply the approved plan, updating `progress` (and calling `on_progress`) per batch."""
        with self._lock:
            if self.progress.running:
                self.error = PushInProgress("a push is already running",
                                            hint="wait for it to finish")
                return False
            if self.report is not None:
                self.error = ToolkitError("this plan was already pushed",
                                          hint="go back to step 5 to plan again from the new "
                                               "state")
                return False
            self.progress = SyncProgress(running=True)
        notify = on_progress or (lambda p: None)

        def on_batch(objects: int, result: Any) -> None:
            p = self.progress
            p.requests_done += 1
            if isinstance(result, BrazeAPIError):
                p.requests_failed += 1
                p.retries += max(int(result.context.get("attempts", 1) or 1) - 1, 0)
                rejected_all = result.context.get("outcome") == "rejected"
                p.objects_rejected += objects if rejected_all else 0
            else:
                rejected = len(result.rejected or {})
                p.objects_rejected += rejected
                p.objects_acknowledged += objects - rejected
                p.retries += max(int(result.attempts) - 1, 0)
            notify(p)

        def action():
            from toolkit.sync.apply import apply

            self._require("plan", "build the plan first (step 5)")
            if not self.approved:
                from toolkit.errors import PlanNotApproved

                raise PlanNotApproved("the plan is not approved; nothing was sent",
                                      hint="approve it in step 6")
            self.progress.requests_total = len(self.plan.batches())
            self.progress.objects_total = sum(b.objects for b in self.plan.batches())
            notify(self.progress)
            self.report = apply(self.plan, self.client, self.ledger, progress=False,
                                on_batch=on_batch)
            # the report is the truth (cohort changes are not seen batch by batch)
            s = self.report.summary()
            self.progress.objects_acknowledged = s["acknowledged"]
            self.progress.objects_rejected = s["rejected"]
            self.progress.retries = s["retries"]
            self.progress.requests_done = len(self.report.batches) + \
                self.report.counts.get("batches_skipped", 0)

        try:
            return self._attempt(action)
        finally:
            self.progress.running = False
            self.progress.finished = self.report is not None
            notify(self.progress)

    # -- step 8: verify and report ---------------------------------------------------------
    def verify(self) -> bool:
        """Read a sample back from Braze, then save the report as JSON and CSV files."""
        def action():
            from toolkit.sync.verify import verify

            self._require("report", "push the plan first (step 7)")
            self.verification = verify(self.report, self.client, sample=self.verify_sample)
            self.saved = self.save_report(self.output_dir)
        return self._attempt(action)

    def save_report(self, directory: str | os.PathLike) -> dict[str, Path]:
        """Write the sync report (JSON) and its tables (CSV) into `directory`; returns the paths."""
        self._require("report", "push the plan first (step 7)")
        out = Path(directory)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ToolkitError(f"cannot create the report folder: {exc.strerror}", file=str(out),
                               hint="choose a writable output_dir") from None
        stem = f"sync-{self.report.plan_id}"
        files = {"report (JSON)": self.report.save(out / f"{stem}.json")}
        tables = {"batches (CSV)": self.report.to_frame(),
                  "rejected (CSV)": self.report.rejected_frame()}
        if self.verification is not None:
            tables["verification (CSV)"] = self.verification.to_frame()
        suffixes = {"batches (CSV)": "batches", "rejected (CSV)": "rejected",
                    "verification (CSV)": "verify"}
        for label, frame in tables.items():
            path = out / f"{stem}-{suffixes[label]}.csv"
            try:
                spreadsheet_safe(frame).to_csv(path, index=False)
            except OSError as exc:
                raise ToolkitError(f"cannot write {path.name}: {exc.strerror}", file=str(path),
                                   hint="choose a writable output_dir") from None
            files[label] = path
        return files

    # -- navigation -----------------------------------------------------------------------
    def can_advance(self) -> bool:
        """Whether Next may leave the current step."""
        return {
            0: self.export is not None,
            1: True,
            2: self.mapping is not None and not self.rule_errors,
            3: self.preview is not None,
            4: self.plan is not None,
            5: self.approved,
            6: self.report is not None and not self.progress.running,
            7: False,
        }[self.step]

    def next(self) -> bool:
        """Go to the next step, computing what it shows (preview, plan, verification)."""
        if self.progress.running:
            self.error = PushInProgress("a push is running", hint="wait for it to finish")
            return False
        if not self.can_advance():
            self.error = ToolkitError(f"step {self.step + 1} ({STEPS[self.step]}) is not done",
                                      hint=_STEP_HINTS[self.step])
            return False
        target = self.step + 1
        prepare = {3: lambda: self.preview is not None or self.build_preview(),
                   4: lambda: (self.plan is not None and self.report is None) or self.build_plan(),
                   7: lambda: self.verification is not None or self.verify()}.get(target)
        if prepare is not None and not prepare():
            return False
        self.step = target
        self.error = None
        return True

    def back(self) -> bool:
        if self.progress.running:
            self.error = PushInProgress("a push is running", hint="wait for it to finish")
            return False
        if self.step == 0:
            return False
        self.step -= 1
        self.error = None
        return True

    # -- helpers --------------------------------------------------------------------------
    def _require(self, name: str, hint: str) -> None:
        if getattr(self, name) is None:
            raise ToolkitError(f"no {name} yet", hint=hint)

    def _require_valid_rules(self) -> None:
        if self.rule_errors:
            key, exc = next(iter(self.rule_errors.items()))
            raise ToolkitError(f"the rule for {key!r} is invalid: {exc.message}", rule=key,
                               hint=exc.hint or "fix the highlighted rule in step 3")

    def _reset_from(self, step: int) -> None:
        """Forget what steps after `step` computed (0-based; 0 = a new export)."""
        if step <= 0:
            self.mapping = None
            self.rule_errors = {}
        if step <= 3:
            self.preview = None
        if step <= 4:
            self.plan = None
            self.approved_by = None
            self.report = None
            self.verification = None
            self.saved = {}
            self.progress = SyncProgress()

    def _disconnect(self) -> None:
        """Close the client and ledger; the sandbox and its ledger folder live on, so switching
        back to the sandbox resumes from what it already holds."""
        _shutdown(self.__dict__, everything=False)
        self.client = None
        self.ledger = None

    def close(self) -> None:
        """Stop the sandbox the wizard started and close the client and ledger."""
        _shutdown(self.__dict__, everything=True)
        self.client = None
        self.ledger = None
        if self._owns_sandbox:
            self._sandbox = None

    def summary(self) -> dict[str, Any]:
        """Where the wizard is and what it did, as plain values (for logs and tests)."""
        out: dict[str, Any] = {"step": self.step + 1, "step_name": STEPS[self.step],
                               "source": self.source, "target": self.target,
                               "workspace": self.workspace, "approved_by": self.approved_by,
                               "error": None if self.error is None else self.error.message}
        if self.plan is not None:
            out["plan"] = self.plan.cost()
        if self.report is not None:
            out["report"] = self.report.summary()
        if self.verification is not None:
            out["verified"] = self.verification.ok
        return out

    def __repr__(self) -> str:
        s = self.summary()
        parts = [f"step {s['step']} of {len(STEPS)}: {s['step_name']}", f"target {s['target']}"]
        if s.get("report"):
            parts.append(f"sync {s['report']['status']}")
        if s["error"]:
            parts.append(f"error: {s['error']}")
        return f"<GuidedSyncState {'; '.join(parts)}>"

    def _repr_html_(self) -> str:
        s = self.summary()
        rows = [("step", f"{s['step']} of {len(STEPS)} — {s['step_name']}"),
                ("export", s["source"] or "not chosen"), ("target", TARGETS[self.target]),
                ("workspace", s["workspace"] or "not connected")]
        if "plan" in s:
            rows.append(("plan", f"{s['plan']['operations']:,} operations, "
                                 f"{s['plan']['data_points']:,} data points, "
                                 f"{s['plan']['requests']:,} requests"))
        if s["approved_by"]:
            rows.append(("approved by", s["approved_by"]))
        if "report" in s:
            r = s["report"]
            rows.append(("sync", f"{r['status']}: {r['acknowledged']:,} acknowledged, "
                                 f"{r['rejected']:,} rejected"))
        if "verified" in s:
            rows.append(("verified", "yes" if s["verified"] else "mismatches found"))
        error = self.error._repr_html_() if self.error is not None else ""
        return f"<div><b>Guided sync state</b>{_table(rows)}{error}</div>"


_STEP_HINTS = {
    0: "pick a bundled sample or load an export file first",
    1: "",
    2: "fix the rules marked in red",
    3: "the preview could not be built; see the error above",
    4: "build the plan first",
    5: "type your name, tick the confirmation box and press Approve",
    6: "press Push and wait until it finishes",
    7: "this is the last step",
}


def _default_mapping(export):
    from toolkit import mapping

    return mapping.Mapping.from_export(export)


def _shutdown(state: dict, everything: bool = True) -> None:
    """Release what a wizard holds: the client and ledger, and with `everything` (at close and
    when the wizard is garbage collected) the sandbox it started and the sandbox ledger folder."""
    for name in ("ledger", "client"):
        obj = state.get(name)
        if obj is not None:
            try:
                obj.close()
            except Exception:  # closing is best effort; the process may be exiting
                pass
    if not everything:
        return
    if state.get("_owns_sandbox") and state.get("_sandbox") is not None:
        try:
            state["_sandbox"].close()
        except Exception:
            pass
    tmp = state.get("_tmp")
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
        state["_tmp"] = None


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "under a second"
    if seconds < 120:
        return f"about {seconds:.0f} s"
    return f"about {seconds / 60:.0f} min"


def _table(rows: Iterable[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th style='text-align:left;padding-right:12px'>{html.escape(str(k))}</th>"
                   f"<td>{html.escape(f'{v:,}' if isinstance(v, int) else str(v))}</td></tr>"
                   for k, v in rows)
    return f"<table>{body}</table>"


def _download_link(path: Path, label: str) -> str:
    data = path.read_bytes()
    mime = "application/json" if path.suffix == ".json" else "text/csv"
    name = html.escape(path.name)
    if len(data) <= _DATA_URI_LIMIT:
        href = f"data:{mime};base64,{base64.b64encode(data).decode()}"
        return (f"<li><a download='{name}' href='{href}' target='_blank'>⬇ {html.escape(label)}"
                f"</a> — saved as <code>{html.escape(str(path))}</code></li>")
    return f"<li>{html.escape(label)}: <code>{html.escape(str(path))}</code></li>"


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")


def spreadsheet_safe(frame):
    """A copy of ``frame`` for a CSV meant for people: text cells a spreadsheet would run as a
    formula (starting with =, +, -, @, tab or CR — attribute names, trait values, Braze's
    messages) get a leading ', so Excel shows the text and runs nothing. Plain numbers stay."""
    def cell(value):
        if (isinstance(value, str) and value.startswith(_FORMULA_START)
                and not _PLAIN_NUMBER.match(value)):
            return "'" + value
        return value
    return frame.apply(lambda column: column.map(cell) if column.dtype == object
                       or str(column.dtype).startswith("str") else column)


class GuidedSync:
    """The guided Engage → Braze sync wizard. Display it in a notebook cell; drive it by clicking.

    ``GuidedSync()`` targets the built-in sandbox (started when the plan is built);
    ``GuidedSync(target="workspace")`` the Braze workspace in ``BRAZE_REST_ENDPOINT`` /
    ``BRAZE_API_KEY``. ``background`` pushes in a thread (default: when running in a kernel);
    ``plots=False`` skips drawing figures (faster headless runs).
    Its state is ``wizard.state`` (a `GuidedSyncState`); `run_all` clicks through every step.
    """

    def __init__(self, *, target: str = "sandbox", sandbox=None,
                 output_dir: str | os.PathLike = "sync-reports",
                 samples_dir: str | os.PathLike | None = None, background: bool | None = None,
                 verify_sample: int = 50, plots: bool = True) -> None:
        import ipywidgets as w

        self.state = GuidedSyncState(target=target, sandbox=sandbox, output_dir=output_dir,
                                     samples_dir=samples_dir, verify_sample=verify_sample)
        self.background = _in_kernel() if background is None else bool(background)
        self.plots = plots
        self._drawn: dict[str, Any] = {}   # image name -> the object it was drawn from
        self._thread: threading.Thread | None = None
        self._w = w
        full = w.Layout(width="100%")

        # frame
        self.title = w.HTML("<h3 style='margin:4px 0'>Guided sync: Engage → Braze</h3>")
        self.steps_html = w.HTML()
        self.target_html = w.HTML()
        self.error_html = w.HTML()
        self.body = w.VBox(layout=full)
        self.back_button = w.Button(description="◀ Back", tooltip="previous step")
        self.next_button = w.Button(description="Next ▶", button_style="primary",
                                    tooltip="next step")
        self.position = w.HTML()
        self.back_button.on_click(lambda _: self._do(self.state.back))
        self.next_button.on_click(lambda _: self._do(self.state.next))

        # step 1: export
        options = [(label, label) for label in self.state.samples]
        self.sample_dropdown = w.Dropdown(options=options, value=None,
                                          description="Sample", layout=w.Layout(width="60%"))
        self.path_text = w.Text(placeholder="…or the path of an Engage export (file or folder)",
                                description="Path", layout=w.Layout(width="60%"))
        self.load_button = w.Button(description="Load path", tooltip="load the export at Path")
        self.export_html = w.HTML()
        self.sample_dropdown.observe(self._on_sample, names="value")
        self.load_button.on_click(lambda _: self._do(
            lambda: self.state.load(self.path_text.value)))

        # step 2: review
        self.review_html = w.HTML()
        self.review_images = w.VBox()
        self._review_for = None

        # step 3: mapping rows (built per export)
        self.rules_box = w.VBox()
        self.rule_widgets: dict[str, dict[str, Any]] = {}
        self._rules_for = None

        # step 4: preview
        self.preview_html = w.HTML()
        self.preview_image = w.Image(format="png", layout=w.Layout(max_width="900px"))

        # step 5: plan
        self.target_toggle = w.ToggleButtons(
            options=[("Built-in sandbox", "sandbox"), ("Braze workspace (from environment)",
                                                       "workspace")],
            tooltips=[TARGETS["sandbox"], TARGETS["workspace"]], value=self.state.target,
            description="Send to", style={"description_width": "initial", "button_width": "auto"})
        self.create_users_box = w.Checkbox(value=self.state.create_users, indent=False,
                                           description="create users Braze does not know yet")
        self.replan_button = w.Button(description="Re-plan", tooltip="build the plan again")
        self.plan_html = w.HTML()
        self.plan_image = w.Image(format="png", layout=w.Layout(max_width="900px"))
        # the guards ignore the echo when _refresh copies the state back into the widget
        self.target_toggle.observe(lambda ch: ch["new"] != self.state.target and self._do(
            lambda: self.state.set_target(ch["new"]) and self.state.build_plan()), names="value")
        self.create_users_box.observe(
            lambda ch: ch["new"] != self.state.create_users and self._do(
                lambda: self.state.set_create_users(ch["new"]) and self.state.build_plan()),
            names="value")
        self.replan_button.on_click(lambda _: self._do(self.state.build_plan))

        # step 6: approve
        self.approver_text = w.Text(description="Your name", placeholder="who approves",
                                    style={"description_width": "initial"})
        self.confirm_box = w.Checkbox(value=False, indent=False, layout=w.Layout(width="auto"))
        self.workspace_text = w.Text(description="Type the workspace name",
                                     style={"description_width": "initial"},
                                     layout=w.Layout(width="60%"))
        self.approve_button = w.Button(description="Approve", button_style="warning")
        self.approval_html = w.HTML()
        self.approve_button.on_click(lambda _: self._do(lambda: self.state.approve(
            self.approver_text.value, self.confirm_box.value, self.workspace_text.value)))

        # step 7: push
        self.push_button = w.Button(description="Push to Braze", button_style="danger",
                                    icon="upload")
        self.progress_bar = w.IntProgress(value=0, min=0, max=1, description="Requests",
                                          bar_style="info", layout=w.Layout(width="60%"))
        self.counters_html = w.HTML()
        self.push_result_html = w.HTML()
        self.push_button.on_click(lambda _: self._push())

        # step 8: verify
        self.verify_html = w.HTML()
        self.report_html = w.HTML()
        self.throughput_image = w.Image(format="png", layout=w.Layout(max_width="900px"))

        self.widget = w.VBox([
            self.title, self.steps_html, self.target_html, self.error_html, self.body,
            w.HBox([self.back_button, self.next_button, self.position]),
        ], layout=w.Layout(border="1px solid #ddd", padding="8px"))
        self._refresh()

    # -- display --------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        if isinstance(bundle, tuple):
            bundle = bundle[0]
        bundle = dict(bundle or {})
        # a stable text form keeps saved notebooks deterministic (the widget JSON carries ids)
        bundle["text/plain"] = repr(self)
        return bundle

    def __repr__(self) -> str:
        s = self.state
        return (f"GuidedSync(step {s.step + 1} of {len(STEPS)}: {STEPS[s.step]}; "
                f"target {s.target})")

    # -- actions --------------------------------------------------------------------------
    def _do(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception as exc:  # a callback's traceback would vanish into the browser console
            self.state.error = exc if isinstance(exc, ToolkitError) else ToolkitError(
                f"unexpected {type(exc).__name__}: {exc}",
                hint="this is a bug in the toolkit; please report it with this message")
        self._refresh()

    def _on_sample(self, change: dict) -> None:
        if change["new"]:
            self._do(lambda: self.state.load(change["new"]))

    def _push(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self.push_button.disabled = True

        def update(progress: SyncProgress) -> None:
            self._show_progress(progress)

        def work() -> None:
            try:
                self.state.push(on_progress=update)
            except Exception as exc:
                self.state.error = ToolkitError(f"unexpected {type(exc).__name__}: {exc}",
                                                hint="this is a bug in the toolkit; please "
                                                     "report it with this message")
            finally:
                self._refresh()

        if self.background:
            self._thread = threading.Thread(target=work, name="guided-sync-push", daemon=True)
            self._thread.start()
        else:
            work()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background push to end; True when none is running any more."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def close(self) -> None:
        """Stop the sandbox the wizard started and close its widgets."""
        self.wait(30)
        self.state.close()
        self.widget.close()

    def run_all(self, source: str | os.PathLike | None = None, *,
                rules: Mapping[str, Mapping[str, Any]] | None = None,
                approved_by: str = "guided-sync", confirm: str = "") -> GuidedSyncState:
        """Click through every step headless: load, map (`rules`: key → changes), preview, plan,
        approve as `approved_by` (typing `confirm` for a real workspace), push and verify.
        Stops at the first step that fails and returns the state (its ``error`` says why)."""
        label = source if source is not None else next(iter(self.state.samples), None)
        if label in self.state.samples:
            self.sample_dropdown.value = label
        else:
            self.path_text.value = str(label or "")
            self.load_button.click()
        if self.state.export is None:
            return self.state
        self.next_button.click()                       # → review
        self.next_button.click()                       # → map
        for key, changes in (rules or {}).items():
            row = self.rule_widgets.get(key)
            if row is None:
                self.state.error = ToolkitError(f"no computation {key!r} in this export",
                                                rule=key, hint="use a key the export holds")
                self._refresh()
                return self.state
            for name, value in changes.items():
                if name not in row:
                    self.state.error = ToolkitError(f"the wizard has no {name!r} field", rule=key,
                                                    hint="change send_as, attribute, "
                                                         "enter_event, exit_event, trait_event "
                                                         "or cohort_name")
                    self._refresh()
                    return self.state
                row[name].value = value
        for expected in (3, 4, 5):                      # → preview → plan → approve
            self.next_button.click()
            if self.state.step != expected:
                return self.state
        self.approver_text.value = approved_by
        self.confirm_box.value = True
        self.workspace_text.value = confirm
        self.approve_button.click()
        if not self.state.approved:
            return self.state
        self.next_button.click()                       # → push
        self.push_button.click()
        self.wait()
        if self.state.report is None:
            return self.state
        self.next_button.click()                       # → verify and report
        return self.state

    # -- rendering ------------------------------------------------------------------------
    def _draw(self, image, name: str, source: Any, make: Callable[[], Any]) -> None:
        """Draw `make()` into `image` unless it already shows a figure of `source`."""
        if not self.plots or source is None:
            image.value = b""
            self._drawn.pop(name, None)
        elif self._drawn.get(name) is not source:
            image.value = _png(make())
            self._drawn[name] = source

    def _refresh(self) -> None:
        s = self.state
        items = []
        for i, name in enumerate(STEPS):
            style = ("background:#0072B2;color:white;font-weight:bold" if i == s.step else
                     "color:#333" if i < s.step else "color:#999")
            items.append(f"<span style='padding:2px 6px;border-radius:3px;{style}'>"
                         f"{i + 1}. {html.escape(name)}</span>")
        self.steps_html.value = "<div style='line-height:2'>" + " ".join(items) + "</div>"
        where = TARGETS[s.target]
        if s.workspace:
            where += f" — <code>{html.escape(s.workspace)}</code>"
        self.target_html.value = f"<small><b>Target:</b> {where}</small>"
        self.error_html.value = s.error._repr_html_() if s.error is not None else ""
        self.position.value = (f"<span style='margin-left:12px'>Step {s.step + 1} of "
                               f"{len(STEPS)}</span>")
        self.back_button.disabled = s.step == 0 or s.progress.running
        self.next_button.disabled = not s.can_advance() or s.progress.running
        self.body.children = getattr(self, f"_step_{s.step}")()

    def _step_0(self) -> list:
        s = self.state
        if s.export is None:
            self.export_html.value = ("<p>Pick a bundled sample, or type the path of an Engage "
                                      "export (audience or computed-trait CSV, NDJSON of "
                                      "identify/track calls, or a Profiles Sync folder).</p>")
        else:
            findings = s.export.findings
            counts = findings.counts()
            detail = ("<p>No findings: every row can be used as is.</p>" if not len(findings) else
                      f"<details><summary><b>{len(findings):,} findings</b> — "
                      + ", ".join(f"{html.escape(k)} {v:,}" for k, v in sorted(counts.items()))
                      + "</summary>" + findings.to_frame().head(30).to_html(index=False, na_rep="")
                      + "</details>")
            self.export_html.value = s.export._repr_html_() + detail
        return [self.sample_dropdown, self._w.HBox([self.path_text, self.load_button]),
                self.export_html]

    def _step_1(self) -> list:
        from toolkit.notebook import plots

        s = self.state
        if self._review_for is not s.export:
            cov = s.export.identifier_coverage()
            self.review_html.value = (
                "<p>What Engage computed, and who Braze can receive. Profiles without a "
                "user_id or braze_id are only sent when you opt into email or alias "
                "identifiers.</p>" + s.export.summary().to_html(index=False, na_rep="")
                + _table([("profiles", cov.get("profiles", 0)),
                          ("Braze can receive (user_id or braze_id)", cov.get("braze_usable", 0)),
                          ("anonymous only (dropped)", cov.get("anonymous_only", 0))]))
            figures = []
            if self.plots:
                figures = [plots.audience_sizes(s.export), plots.audience_overlap(s.export),
                           plots.identifier_coverage(s.export)]
                if s.export.traits:
                    figures.append(plots.trait_distributions(s.export))
            self.review_images.children = [
                self._w.Image(value=_png(f), format="png", layout=self._w.Layout(max_width="900px"))
                for f in figures]
            self._review_for = s.export
        return [self.review_html, self.review_images]

    def _step_2(self) -> list:
        s = self.state
        if self._rules_for is not s.export:
            self._build_rule_rows()
            self._rules_for = s.export
        for key in self.rule_widgets:
            self._update_rule_row(key)
        intro = self._w.HTML(
            "<p>Choose how each computation reaches Braze. <b>custom attribute</b>: "
            "true/false or the trait value on the profile; <b>custom events</b>: "
            "Audience Entered/Exited or Trait Computed; <b>partner cohort</b>: a Segment cohort "
            "(audiences only, needs partner credentials). The Braze filter each choice implies "
            "updates as you change it.</p>")
        return [intro, self.rules_box]

    _RULE_COLUMNS = (("computation", "190px"), ("sent as", "150px"), ("attribute", "150px"),
                     ("event: entered / computed", "150px"), ("event: exited", "150px"),
                     ("cohort name", "150px"))

    def _build_rule_rows(self) -> None:
        w = self._w

        def box(width: str):
            return w.Layout(width=width, min_width=width, flex="0 0 auto")

        widths = dict(self._RULE_COLUMNS)
        header = w.HBox([w.HTML(f"<small><b>{html.escape(title)}</b></small>", layout=box(width))
                         for title, width in self._RULE_COLUMNS])
        rows = [header]
        self.rule_widgets = {}
        for rule in self.state.mapping.rules:
            options = [(SEND_AS_LABELS[k], k) for k in SEND_AS_LABELS
                       if k != "cohort" or rule.kind == "audience"]
            text = dict(continuous_update=False, layout=box(widths["attribute"]))
            row: dict[str, Any] = {
                "send_as": w.Dropdown(options=options, value=rule.send_as,
                                      layout=box(widths["sent as"])),
                "attribute": w.Text(value=str(rule.attribute or ""), placeholder="attribute name",
                                    **text),
            }
            if rule.kind == "audience":
                row["enter_event"] = w.Text(value=rule.enter_event, placeholder="entered event",
                                            **text)
                row["exit_event"] = w.Text(value=rule.exit_event, placeholder="exited event",
                                           **text)
                row["cohort_name"] = w.Text(value=str(rule.cohort_name or rule.key),
                                            placeholder="cohort name", **text)
                inputs = [row[n] for n in ("send_as", "attribute", "enter_event", "exit_event",
                                           "cohort_name")]
            else:
                row["trait_event"] = w.Text(value=rule.trait_event, placeholder="trait event",
                                            **text)
                inputs = [row[n] for n in ("send_as", "attribute", "trait_event")]
            row["filter"] = w.HTML()
            for name, widget in row.items():
                if name != "filter":
                    widget.observe(self._rule_observer(rule.key, name), names="value")
            label = w.HTML(f"<b><code>{html.escape(rule.key)}</code></b> "
                           f"<small>{rule.kind}</small>", layout=box(widths["computation"]))
            rows.append(w.VBox([w.HBox([label, *inputs]), row["filter"]],
                               layout=w.Layout(border_bottom="1px solid #eee",
                                               padding="2px 0")))
            self.rule_widgets[rule.key] = row
        self.rules_box.children = rows

    def _rule_observer(self, key: str, name: str) -> Callable[[dict], None]:
        def observe(change: dict) -> None:
            value = change["new"]
            if name == "cohort_name":
                self.state.set_rule(key, cohort_name=value)
            else:
                self.state.set_rule(key, **{name: value})
            self._refresh()
        return observe

    def _update_rule_row(self, key: str) -> None:
        s = self.state
        row = self.rule_widgets[key]
        rule = s.mapping[key]
        send_as = row["send_as"].value
        row["attribute"].disabled = send_as not in ("attribute", "both")
        for name in ("enter_event", "exit_event", "trait_event"):
            if name in row:
                row[name].disabled = send_as not in ("event", "both")
        if "cohort_name" in row:
            row["cohort_name"].disabled = send_as != "cohort"
        problem = s.rule_errors.get(key)
        if problem is not None:
            fix = f" — {html.escape(problem.hint)}" if problem.hint else ""
            row["filter"].value = (f"<span style='color:#c0392b'>✗ {html.escape(problem.message)}"
                                   f"{fix}</span>")
            return
        filters = s.filters_for(key)
        sent = {"attribute": f"attribute <code>{html.escape(str(rule.attribute))}</code>",
                "both": f"attribute <code>{html.escape(str(rule.attribute))}</code> + events "
                        + ", ".join(f"<code>{html.escape(e)}</code>" for e in rule.event_names),
                "event": "events " + ", ".join(f"<code>{html.escape(e)}</code>"
                                               for e in rule.event_names),
                "cohort": f"cohort <code>{html.escape(str(rule.cohort_name))}</code>"}[rule.send_as]
        row["filter"].value = (f"<small>Sent as {sent}. Braze filter: "
                               + " <i>or</i> ".join(f"<b>{html.escape(f)}</b>" for f in filters)
                               + "</small>")

    def _step_3(self) -> list:
        from toolkit.notebook import plots

        s = self.state
        self._draw(self.preview_image, "preview", s.preview, lambda: plots.preview_sizes(s.preview))
        self.preview_html.value = s.preview._repr_html_() if s.preview is not None else ""
        return [self._w.HTML("<p>Each audience and trait as a Braze segment: Engage members "
                             "beside the users the Braze filter selects, and why the others "
                             "are dropped.</p>"), self.preview_image, self.preview_html]

    def _step_4(self) -> list:
        from toolkit.notebook import plots

        s = self.state
        self.target_toggle.value = s.target
        self.create_users_box.value = s.create_users
        if s.plan is not None:
            c = s.plan.cost()
            samples = json.dumps(s.plan.sample_payloads(2), indent=1, ensure_ascii=False)
            if len(samples) > 4000:
                samples = samples[:4000] + "\n…"
            facts = _table([("operations", c["operations"]), ("users", c["users"]),
                            ("data points", c["data_points"]), ("requests", c["requests"]),
                            ("estimated time", _duration(c["estimated_seconds"])
                             + " at the workspace rate limit"),
                            ("fingerprint", s.plan.fingerprint[:16] + "…")])
            body = ("<p><b>Nothing to send:</b> Braze already holds every value.</p>"
                    if s.plan.is_empty else s.plan.summary().to_html(index=False))
            n = len(s.plan.findings)
            findings = (f"<details><summary><b>Findings ({n:,})</b> — profiles or values left "
                        f"out, and why</summary>{s.plan.findings._repr_html_()}</details>"
                        if n else "<p>No findings.</p>")
            self.plan_html.value = (
                facts + "<details open><summary><b>Sample payloads (exactly as sent)</b>"
                "</summary><pre style='max-height:220px;overflow:auto'>"
                f"{html.escape(samples, quote=False)}</pre></details>{findings}"
                f"<h5>Operations</h5>{body}")
        else:
            self.plan_html.value = ""
        self._draw(self.plan_image, "plan", s.plan, lambda: plots.plan_composition(s.plan))
        return [self.target_toggle, self._w.HBox([self.create_users_box, self.replan_button]),
                self.plan_html, self.plan_image]

    def _step_5(self) -> list:
        s = self.state
        where = (f"the built-in sandbox ({html.escape(str(s.workspace))})" if s.target == "sandbox"
                 else f"the Braze workspace <code>{html.escape(str(s.workspace))}</code>")
        self.confirm_box.description = "I reviewed this plan and approve sending it"
        intro = self._w.HTML(f"<p>Approving records your name and this plan's fingerprint; only "
                             f"this exact plan can then be pushed to {where}.</p>")
        children = [intro, self.approver_text, self.confirm_box]
        phrase = s.confirm_phrase
        if phrase is not None:
            self.workspace_text.placeholder = phrase
            children.append(self._w.HTML(
                f"<p style='color:#c0392b'><b>This is a real Braze workspace.</b> Type "
                f"<code>{html.escape(phrase)}</code> to confirm.</p>"))
            children.append(self.workspace_text)
        if s.approved:
            a = s.plan.approval
            self.approval_html.value = (f"<p style='color:#009E73'>✓ Approved by "
                                        f"<b>{html.escape(a['by'])}</b> until "
                                        f"{html.escape(a['expires_at'])}.</p>")
        else:
            self.approval_html.value = "<p>Not approved yet.</p>"
        self.approve_button.disabled = s.approved
        children += [self.approve_button, self.approval_html]
        return children

    def _show_progress(self, p: SyncProgress) -> None:
        self.progress_bar.max = max(p.requests_total, 1)
        self.progress_bar.value = min(p.requests_done, self.progress_bar.max)
        self.progress_bar.bar_style = ("danger" if p.requests_failed or p.objects_rejected
                                       else "success" if p.finished else "info")
        self.counters_html.value = _table([
            ("requests", f"{p.requests_done:,} of {p.requests_total:,}"),
            ("objects acknowledged", p.objects_acknowledged),
            ("objects rejected", p.objects_rejected),
            ("failed requests", p.requests_failed), ("retries", p.retries)])

    def _step_6(self) -> list:
        s = self.state
        self._show_progress(s.progress)
        self.push_button.disabled = s.report is not None or s.progress.running or not s.approved
        if s.report is not None:
            self.push_result_html.value = s.report._repr_html_()
        elif s.progress.running:
            self.push_result_html.value = "<p>Pushing…</p>"
        else:
            c = s.plan.cost() if s.plan is not None else {"requests": 0, "users": 0}
            self.push_result_html.value = (f"<p>Ready to send {c['requests']:,} requests for "
                                           f"{c['users']:,} users.</p>")
        return [self.push_button, self.progress_bar, self.counters_html, self.push_result_html]

    def _step_7(self) -> list:
        from toolkit.notebook import plots

        s = self.state
        self.verify_html.value = (s.verification._repr_html_() if s.verification is not None
                                  else "")
        if s.saved:
            links = "".join(_download_link(path, label) for label, path in s.saved.items())
            self.report_html.value = f"<h5>Download the report</h5><ul>{links}</ul>"
        self._draw(self.throughput_image, "throughput", s.report,
                   lambda: plots.sync_throughput(s.report))
        return [self.verify_html, self.report_html, self.throughput_image]
