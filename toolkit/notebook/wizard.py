"""`GuidedSync`: the analysts' step-by-step Engage → Braze sync wizard (ipywidgets).

Nine numbered steps — choose an export, review it, map it, preview the Braze segments, plan,
approve, push, verify, and what next — with Back/Next. The steps are data (`STEP_DEFINITIONS`:
name, title, hint, when it is ready, what it prepares on entry, what it resets), so adding a step
is one entry plus the method that draws it. Everything the wizard knows lives in a plain
`GuidedSyncState`; the widgets only display it and forward clicks to its verbs, so tests (and
`GuidedSync.run_all`) drive the same code headless. The target is the built-in Braze sandbox
(started on demand) or the workspace named by ``BRAZE_REST_ENDPOINT`` / ``BRAZE_API_KEY`` — a key
is never typed into a widget, since widget values are sent to the browser and saved with the
notebook. The plan step's Ledger field takes a team's shared ledger (``postgresql://…``, a password
input emptied once used; or ``BRAZE_LEDGER_URL``), shown only as the ledger's ``location``.
Pushing runs in a background thread inside a kernel, so the notebook stays responsive while the
progress bar moves; the bar, the counters and any tqdm bar read one `SyncProgress`.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shlex
import shutil
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

import pandas as pd

from toolkit import mapping
from toolkit.braze.client import BrazeClient
from toolkit.engage.definitions import Definitions, load_definitions
from toolkit.engage.model import Findings
from toolkit.engage.readers import load
from toolkit.errors import (ApprovalRefused, ConfigError, PlanNotApproved, PushInProgress,
                            StepNotDone, ToolkitError)
from toolkit.notebook import views
from toolkit.notebook.progress import SyncProgress
from toolkit.notebook.terms import http_calls, legend_html, planned_totals, totals_frame
from toolkit.preview import REASONS
from toolkit.sandbox.server import BrazeSandbox
from toolkit.secrets import Secret, read_env_file
from toolkit.segment_check import check_segments
from toolkit.sync.apply import apply
from toolkit.sync.journal import is_ledger_url, ledger_location
from toolkit.sync.ledger import Ledger
from toolkit.sync.plan import parse_duration, plan
from toolkit.sync.verify import verify

__all__ = ["GuidedSync", "GuidedSyncState", "SyncProgress",
           "Step", "STEP_DEFINITIONS", "STEPS", "APPROVAL_DURATIONS", "bundled_samples",
           "spreadsheet_safe"]

TARGETS = {"sandbox": "Built-in Braze sandbox (local, no credentials)",
           "workspace": "Braze workspace from BRAZE_REST_ENDPOINT / BRAZE_API_KEY"}
SEND_AS_LABELS = {"attribute": "custom attribute", "event": "custom events",
                  "both": "attribute + events", "cohort": "partner cohort"}
# how long an approval lasts: label -> duration text for Plan.approve(expires_in=…)
APPROVAL_DURATIONS = {"1 hour": "1h", "8 hours": "8h", "24 hours": "24h", "7 days": "7d"}
PARTNER_KEYS = ("BRAZE_PARTNER_API_KEY", "BRAZE_DATA_IMPORT_KEY")
LEDGER_URL = "BRAZE_LEDGER_URL"   # the team's shared ledger; like a key, it may hold a password
_LEDGER_URL_HINT = ("type the team's ledger as postgresql://user:password@host:5432/database "
                    "(add ?schema=NAME for a schema other than braze_sync), or leave the field "
                    "empty for this machine's ledger")
_REPO = Path(__file__).resolve().parents[2]
_SAMPLES_DIR = _REPO / "data" / "samples"
# (label, path under data/samples) — the bundled exports an analyst can start from.
_SAMPLE_CHOICES = (
    ("Sample shop — Profiles Sync tables (CSV)", "profiles_sync"),
    ("Sample shop — Engage events (NDJSON, with history)", "events/engage_events.ndjson.gz"),
    ("Sample shop — audience CSVs (formatted)", "audience_csv/formatted"),
    ("Sample shop — audience CSVs (unformatted)", "audience_csv/unformatted"),
)
_DATA_URI_LIMIT = 5_000_000  # bytes; larger files are linked as paths only


def bundled_samples(directory: str | os.PathLike | None = None) -> dict[str, Path]:
    """The bundled sample exports that exist on disk, label → path."""
    root = Path(directory) if directory is not None else _SAMPLES_DIR
    return {label: root / rel for label, rel in _SAMPLE_CHOICES if (root / rel).exists()}


# -- the steps, as data ------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """One wizard step.

    ``name`` labels it in the step bar, ``title`` heads its page, ``hint`` says what to do when
    Next is pressed too early. ``ready(state)`` tells whether Next may leave it; ``prepare`` (a
    `GuidedSyncState` method name) computes what it shows whenever it is entered, and returns
    False when that failed. ``resets`` names the state it produces: forgotten whenever something
    in an earlier step changes. Adding a step is one entry here plus a ``_step_<key>`` method on
    `GuidedSync` that draws it.
    """

    key: str
    name: str
    title: str
    hint: str
    ready: Callable[["GuidedSyncState"], bool]
    prepare: str | None = None
    resets: tuple[str, ...] = ()

    def _repr_html_(self) -> str:
        return views.table([("step", self.title), ("ready when", self.hint or "always"),
                            ("prepares", self.prepare or "—"),
                            ("resets", ", ".join(self.resets) or "—")])


STEP_DEFINITIONS: tuple[Step, ...] = (
    Step("export", "Export", "Choose an export",
         "pick a bundled sample or load an export file first",
         lambda s: s.export is not None, resets=("export", "source")),
    Step("review", "Review", "Review audiences and traits", "", lambda s: True),
    Step("map", "Map", "Map to Braze", "fix the rules marked in red",
         lambda s: s.mapping is not None and not s.rule_errors,
         resets=("mapping", "rule_errors")),
    Step("preview", "Preview", "Preview Braze segments",
         "the preview could not be built; see the error above",
         lambda s: s.preview is not None, prepare="prepare_preview", resets=("preview",)),
    Step("plan", "Plan", "Plan and cost", "build the plan first",
         lambda s: s.plan is not None, prepare="prepare_plan", resets=("plan", "approved_by")),
    Step("approve", "Approve", "Approve",
         "type your name, tick the confirmation box and press Approve",
         lambda s: s.approved),
    Step("push", "Push", "Push to Braze", "press Push and wait until it finishes",
         lambda s: s.report is not None and not s.progress.running,
         resets=("report", "progress", "saved")),
    Step("verify", "Verify", "Verify and report", "the verification could not run; see above",
         lambda s: s.verification is not None, prepare="prepare_verify",
         resets=("verification", "segment_check")),
    Step("next", "What next", "What next", "this is the last step", lambda s: False),
)
STEPS = tuple(step.title for step in STEP_DEFINITIONS)
_INDEX = {step.key: i for i, step in enumerate(STEP_DEFINITIONS)}
_FRESH = {"progress": SyncProgress, "saved": dict, "rule_errors": dict}


def _png(fig, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def _png_width(data: bytes) -> int | None:
    """The pixel width of a PNG (from its IHDR header), or None for anything else."""
    if len(data) >= 24 and data[:8] == b"\x89PNG\r\n\x1a\n":
        return int.from_bytes(data[16:20], "big")
    return None


def partner_keys_configured() -> bool:
    """Whether Braze partner cohort keys are set in the environment or ./.env."""
    try:
        settings = {**read_env_file(".env"), **os.environ}
    except ToolkitError:
        settings = dict(os.environ)
    return all(settings.get(name) for name in PARTNER_KEYS)


class GuidedSyncState:
    """Everything the wizard knows, with one verb per user action; no widgets in here.

    Verbs return True on success. A `ToolkitError` from any stage is kept in ``error`` (shown by
    the wizard with its fix) instead of propagating, so an analyst's mistake never ends the
    session; other exceptions are bugs and propagate.
    """

    def __init__(self, *, target: str = "sandbox", sandbox=None, output_dir: str | os.PathLike =
                 "sync-reports", samples_dir: str | os.PathLike | None = None,
                 verify_sample: int = 50, expires_in: str = "1h", definitions=None) -> None:
        if target not in TARGETS:
            raise ToolkitError(f"unknown target {target!r}", field="target",
                               hint="use 'sandbox' or 'workspace'")
        self.step = 0
        self.samples = bundled_samples(samples_dir)
        self.source: str | None = None
        self.export = None
        self.unloaded: str | None = None      # the export a failed load replaced
        self.mapping = None
        self.definitions = None   # Engage audience definitions: "native in Braze?" in steps 3-4
        if definitions is not None:
            self.definitions = load_definitions(definitions) if not hasattr(
                definitions, "keys") else definitions
        self.rule_errors: dict[str, ToolkitError] = {}
        self.email_opt_in = False
        self.alias_label: str | None = None
        self.preview = None
        self.target = target
        self.create_users = target == "sandbox"
        self.client = None
        self.ledger = None
        self.ledger_url: Secret | None = None   # a shared ledger typed into the Ledger field
        self.plan = None
        self.approved_by: str | None = None
        self.report = None
        self.verification = None
        self.segment_check = None              # step 8's optional check of Braze's segments
        self.saved: dict[str, Path] = {}
        self.mapping_file: Path | None = None
        self._mapping_file_for = None
        self.plan_file: Path | None = None
        self.history: list[dict[str, Any]] = []   # earlier pushes of this session
        self.progress = SyncProgress()
        self.error: ToolkitError | None = None
        self.output_dir = Path(output_dir)
        self.verify_sample = verify_sample
        self.expires_in = expires_in
        self._value_findings: tuple[Any, Any] | None = None
        self._sandbox = sandbox
        self._owns_sandbox = sandbox is None
        self._tmp: str | None = None
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _shutdown, self.__dict__)

    @property
    def current(self) -> Step:
        return STEP_DEFINITIONS[self.step]

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
        """Load a bundled sample (by label) or an export path. Whatever happens, the previous
        export is gone: a failed load leaves no export (and Next disabled), never the old one."""
        previous = self.source if self.export is not None else None

        def action():
            self._reset(after=-1)
            self.unloaded = previous
            text = str(source).strip()
            if not text:
                raise ToolkitError("no export chosen", field="export",
                                   hint="pick a bundled sample or type the path of an export")
            path = self.samples.get(text) or _resolve_path(text)
            export = load(path)
            self.source = text
            self.export = export
            self.mapping = _default_mapping(export)
            if self.definitions is not None:
                self.mapping = self.mapping.with_definitions(self.definitions)
            self.unloaded = None
        return self._attempt(action)

    @property
    def source_path(self) -> Path | None:
        """The export's file or folder (a sample's path for a sample)."""
        if self.source is None:
            return None
        return self.samples.get(self.source) or Path(os.path.expanduser(self.source)).resolve()

    # -- step 3: mapping and identity -----------------------------------------------------
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
            self._reset(after=_INDEX["map"])
        return self._attempt(action)

    def set_identity(self, *, email_opt_in: bool | None = None,
                     alias_label: str | None | bool = False) -> bool:
        """Which profiles without a user_id are sent: by email (``email_opt_in``) and/or as user
        aliases named by their Segment id under ``alias_label`` (None: no aliases)."""
        def action():
            changed = False
            if email_opt_in is not None and bool(email_opt_in) != self.email_opt_in:
                self.email_opt_in = bool(email_opt_in)
                changed = True
            if alias_label is not False:
                label = (alias_label or "").strip() or None if isinstance(alias_label, str) \
                    else alias_label
                if label is not None and not re.fullmatch(r"[\w.\-]{1,100}", label):
                    raise ToolkitError(f"the alias label {label!r} cannot be used",
                                       field="alias label",
                                       hint="use letters, digits, _ . or -, e.g. segment_id")
                if label != self.alias_label:
                    self.alias_label = label
                    changed = True
            if changed:
                self._reset(after=_INDEX["map"])
        return self._attempt(action)

    def use_definitions(self, source) -> bool:
        """Read the audiences' Engage definitions (a Public API JSON file or a `Definitions`),
        so steps 3 and 4 say whether Braze could compute each audience natively."""
        def action():
            self.definitions = source if isinstance(source, Definitions) else \
                load_definitions(source)
            if self.mapping is not None:
                self.mapping = self.mapping.with_definitions(self.definitions)
                self._reset(after=_INDEX["map"])
        return self._attempt(action)

    def filters_for(self, key: str) -> list[str]:
        """The Braze segment filter(s) that select `key`'s members under the current rule."""
        rule = self.mapping[key]
        value_type = str(self.export.computation(key)["value_type"])
        return [str(f) for f in self.mapping.filters_for(rule, value_type)]

    def value_findings(self):
        """Values the current mapping leaves out because Braze would refuse them, one each."""
        if self.mapping is None:
            return Findings()
        if self._value_findings is None or self._value_findings[0] is not self.mapping:
            self._value_findings = (self.mapping, self.mapping.value_findings(self.export))
        return self._value_findings[1]

    def value_findings_frame(self) -> pd.DataFrame:
        """One row per refused value: computation, profile, the value (shortened), problem, fix."""
        found = self.value_findings()
        profiles = self.export.profiles if self.export is not None else None
        index = (pd.Series(range(len(profiles)), index=profiles["segment_id"].astype(str))
                 if profiles is not None else None)
        rows = []
        for f in found:
            value = None
            if index is not None and f.segment_id in index.index and f.column in profiles:
                value = profiles[f.column].iloc[int(index[f.segment_id])]
            text = "" if value is None or value is pd.NA else str(value)
            shown = text if len(text) <= 60 else f"{text[:57]}… ({len(text):,} characters)"
            rows.append({"computation": f.column, "profile": f.segment_id, "value": shown,
                         "problem": f.message, "fix": f.fix})
        return pd.DataFrame(rows, columns=["computation", "profile", "value", "problem", "fix"])

    def cohort_warnings(self) -> dict[str, str]:
        """Audiences mapped to a partner cohort while no partner keys are configured, with
        what that means on this target."""
        if self.mapping is None or partner_keys_configured():
            return {}
        out = {}
        for rule in self.mapping:
            if rule.send_as != "cohort":
                continue
            where = ("The built-in sandbox accepts cohorts with its own test keys, so a sandbox "
                     "push will look fine; on a real workspace nothing would be sent for it."
                     if self.target == "sandbox" else
                     "Nothing will be planned for it on this workspace.")
            out[rule.key] = (f"A Braze partner cohort needs Segment's partner API key "
                             f"({PARTNER_KEYS[0]}) and the workspace's data import key "
                             f"({PARTNER_KEYS[1]}); they are not set. {where} Send "
                             f"{rule.key} as a custom attribute unless your Braze contract "
                             f"gives you those keys.")
        return out

    def save_mapping(self, path: str | os.PathLike | None = None) -> Path:
        """Write the reviewed mapping as YAML (default ``<output_dir>/mapping.yaml``), the file
        notebook 04 and the CLI reuse for scheduled runs."""
        self._require("mapping", "choose an export first")
        self._require_valid_rules()
        target = Path(path) if path else self.output_dir / "mapping.yaml"
        _mkdir(target.parent)
        try:
            self.mapping.save(target)
        except OSError as exc:
            raise ToolkitError(f"cannot write the mapping: {exc.strerror}", file=str(target),
                               hint="choose a writable folder") from None
        self.mapping_file = target
        self._mapping_file_for = self.mapping
        return target

    @property
    def mapping_saved(self) -> bool:
        """Whether the mapping file on disk holds the current rules."""
        return self.mapping_file is not None and self._mapping_file_for is self.mapping

    # -- step 4: preview ------------------------------------------------------------------
    def build_preview(self) -> bool:
        def action():
            self._require("mapping", "choose an export first")
            self._require_valid_rules()
            self.preview = self.mapping.preview(self.export, email_opt_in=self.email_opt_in,
                                                alias_label=self.alias_label)
        return self._attempt(action)

    def prepare_preview(self) -> bool:
        return self.preview is not None or self.build_preview()

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
                self._reset(after=_INDEX["preview"])
        return self._attempt(action)

    def set_create_users(self, create: bool) -> bool:
        def action():
            if bool(create) != self.create_users:
                self.create_users = bool(create)
                self._reset(after=_INDEX["preview"])
        return self._attempt(action)

    def set_ledger(self, url: "str | Secret | None") -> bool:
        """Which ledger remembers what Braze holds: empty (None or "") for the default one —
        ``BRAZE_LEDGER_URL`` (environment or ``.env``) for a Braze workspace when set, else this
        machine's file — or a ``postgresql://`` URL: the team's shared ledger (re-plans). The
        URL is kept as a `Secret` and shown only as the ledger's ``location``."""
        def action():
            text = (url.reveal() if isinstance(url, Secret) else url or "").strip()
            chosen = _ledger_secret(text, "the Ledger field", "typed") if text else None
            if chosen != self.ledger_url:
                self._disconnect()
                self.ledger_url = chosen
                self._reset(after=_INDEX["preview"])
        return self._attempt(action)

    def ledger_choice(self) -> tuple[Secret | None, str]:
        """(the shared ledger's URL or None for a file, where that choice comes from)."""
        if self.ledger_url is not None:
            return self.ledger_url, "typed into the Ledger field"
        if self.target == "workspace":
            if os.environ.get(LEDGER_URL):
                return _ledger_secret(os.environ[LEDGER_URL], LEDGER_URL,
                                      f"${LEDGER_URL}"), f"from {LEDGER_URL}"
            from_file = read_env_file(".env").get(LEDGER_URL)
            if from_file:
                return _ledger_secret(from_file, LEDGER_URL, ".env"), f"from {LEDGER_URL} in .env"
        return None, ("beside the built-in sandbox" if self.target == "sandbox"
                      else "this machine's default")

    def ledger_description(self) -> str:
        """The ledger in words, password hidden: where it is and whose it is."""
        try:
            url, why = self.ledger_choice()
        except ConfigError:
            return f"{LEDGER_URL} is not a postgresql:// URL: fix it, or type the URL here"
        if self.ledger is not None:
            where = self.ledger.location
        elif url is not None:
            where = _ledger_location(url)
        elif self.target == "workspace":
            where = ".toolkit/ledger-<workspace>.sqlite"
        else:
            where = "a file beside the sandbox"
        kind = "the team's shared ledger" if url is not None else "this machine's ledger"
        return f"{kind} — {where} ({why})"

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

        if self.target == "sandbox":
            if self._sandbox is None:
                self._sandbox = BrazeSandbox()
                self._owns_sandbox = True
            client = BrazeClient.for_sandbox(self._sandbox)
            # a fresh sandbox holds nobody, so its ledger starts empty too, in a folder that
            # lives as long as the sandbox
            if self._tmp is None:
                self._tmp = tempfile.mkdtemp(prefix="guided-sync-")
            directory = self._tmp
        else:
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
            url, _why = self.ledger_choice()
            ledger = (Ledger(url.reveal(), workspace=client, directory=directory)
                      if url is not None else Ledger(client, directory=directory))
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
            self._require("mapping", "choose an export first")
            self._require_valid_rules()
            self._connect()
            self._archive_push()
            self._reset(after=_INDEX["preview"])
            self.plan = plan(self.export, self.mapping, self.ledger, workspace=self.client,
                             create_users=self.create_users, alias_label=self.alias_label,
                             email_opt_in=self.email_opt_in)
        return self._attempt(action)

    def prepare_plan(self) -> bool:
        """On entering the plan step: plan when there is none, and plan again after a push (the
        pushed plan is done; what is left to send is a new plan)."""
        if self.plan is not None and self.report is None:
            return True
        return self.build_plan()

    def save_plan(self, path: str | os.PathLike | None = None) -> Path:
        """Write the plan (with its approval, once given) as JSON, by default into output_dir."""
        self._require("plan", "build the plan first (step 5)")
        target = Path(path) if path else self.output_dir / f"plan-{self.plan.id}.json"
        _mkdir(target.parent)
        self.plan.save(target)
        self.plan_file = target
        return target

    # -- step 6: approve ------------------------------------------------------------------
    def set_approval_duration(self, expires_in: str) -> bool:
        """How long the approval lasts: '1h', '8h', '24h', '7d' (see APPROVAL_DURATIONS)."""
        def action():
            parse_duration(expires_in)
            self.expires_in = expires_in
        return self._attempt(action)

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
    def push(self, on_progress: Callable[[SyncProgress], None] | None = None, *,
             bar: bool = False) -> bool:
        """Apply the approved plan. `progress` (a `SyncProgress`) is updated per answered
        request and reconciled with the report at the end; `on_progress` and, with ``bar``, a
        tqdm bar follow it. Then the report, mapping and plan are saved into output_dir."""
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
        progress = self.progress
        if on_progress is not None:
            progress.subscribe(on_progress)
        if bar:
            progress.tqdm()

        def action():
            self._require("plan", "build the plan first (step 5)")
            if not self.approved:
                raise PlanNotApproved("the plan is not approved; nothing was sent",
                                      hint="approve it in step 6")
            progress.start(self.plan)
            self.report = apply(self.plan, self.client, self.ledger, progress=False,
                                on_batch=progress.record)
            self.saved = self.save_files(self.output_dir)

        try:
            return self._attempt(action)
        finally:
            progress.finish(self.report)

    # -- step 8: verify and report ---------------------------------------------------------
    def verify(self) -> bool:
        """Read a sample back from Braze, then save the files again with the verification."""
        def action():
            self._require("report", "push the plan first (step 7)")
            self.verification = verify(self.report, self.client, sample=self.verify_sample)
            self.saved = self.save_files(self.output_dir)
        return self._attempt(action)

    def prepare_verify(self) -> bool:
        return self.verification is not None or self.verify()

    def build_segments(self) -> bool:
        """Sandbox only: build each computation's recommended segment, named as the mapping's
        convention says, the way an analyst does in Braze's dashboard, and run the sandbox's
        daily size estimate — so the segment check has segments to compare. Segments already
        there (by name) are kept."""
        def action():
            self._require("report", "push the plan first (step 7)")
            if self.target != "sandbox" or self._sandbox is None:
                raise ToolkitError(
                    "the wizard builds segments only in the sandbox", field="target",
                    hint="Braze has no API to create segments: build each one in Braze's "
                         "dashboard with the recommended filter (step 4), named as the mapping "
                         "says, then check them here")
            existing = set(self._sandbox.segments()["name"])
            for rule in self.mapping:
                name = self.mapping.segment_name(rule.key)
                if name not in existing:
                    self._sandbox.create_segment(name, self.preview.filter_for(rule.key))
            self._sandbox.estimate_segments()
            self.segment_check = None
        return self._attempt(action)

    def check_segments(self, *, exact: bool = False) -> bool:
        """Compare the workspace's segments with the computations they mirror
        (`toolkit.check_segments`): filters, sizes, a verdict per computation."""
        def action():
            self._require("report", "push the plan first (step 7)")
            self.segment_check = check_segments(self.client, self.export, self.mapping,
                                                preview=self.preview, exact=exact,
                                                synced_at=self.report, errors="report",
                                                progress=False)
        return self._attempt(action)

    def totals(self) -> pd.DataFrame:
        """operations / objects / requests / data points: planned and, after a push, by
        outcome (see `toolkit.notebook.terms`)."""
        self._require("plan", "build the plan first (step 5)")
        return totals_frame(self.plan, self.report)

    def save_files(self, directory: str | os.PathLike) -> dict[str, Path]:
        """Write what this sync leaves behind into `directory`: the mapping (YAML), the plan
        with its approval (JSON), the report (JSON) and its tables (CSV: totals, batches,
        rejected objects, verification). Returns label → path."""
        self._require("report", "push the plan first (step 7)")
        out = Path(directory)
        _mkdir(out)
        stem = f"sync-{self.report.plan_id}"
        files = {"mapping (YAML)": self.save_mapping(out / "mapping.yaml"),
                 "plan (JSON)": self.save_plan(out / f"plan-{self.report.plan_id}.json")}
        # a columnar plan keeps its operations (and left-out profiles) beside the manifest
        siblings = getattr(type(self.plan), "files_for", None)
        if siblings is not None:
            labels = ("plan operations (Parquet)", "plan left-out profiles (Parquet)")
            for label, path in zip(labels, siblings(files["plan (JSON)"])[1:]):
                if path.exists():
                    files[label] = path
            inputs = getattr(type(self.plan), "inputs_file_for", None)
            inputs = inputs(files["plan (JSON)"]) if inputs is not None else None
            if inputs is not None and inputs.exists():   # the ledger keeps it once converged
                files["plan row hashes (Arrow)"] = inputs
        files["report (JSON)"] = self.report.save(out / f"{stem}.json")
        totals = self.totals().reset_index()
        tables = {"totals (CSV)": ("totals", totals),
                  "batches (CSV)": ("batches", self.report.to_frame()),
                  "rejected (CSV)": ("rejected", self.report.rejected_frame())}
        if self.verification is not None:
            tables["verification (CSV)"] = ("verify", self.verification.to_frame())
        for label, (suffix, frame) in tables.items():
            path = out / f"{stem}-{suffix}.csv"
            try:
                spreadsheet_safe(frame).to_csv(path, index=False)
            except OSError as exc:
                raise ToolkitError(f"cannot write {path.name}: {exc.strerror}", file=str(path),
                                   hint="choose a writable output_dir") from None
            files[label] = path
        return files

    def save_report(self, directory: str | os.PathLike) -> dict[str, Path]:
        """Same as `save_files` (kept for callers of the earlier name)."""
        return self.save_files(directory)

    # -- step 9: what next -----------------------------------------------------------------
    def schedule_command(self) -> str:
        """The papermill command that re-runs this sync daily with the saved mapping."""
        mapping = self.mapping_file.resolve() if self.mapping_file else Path("mapping.yaml")
        export = self.source_path or Path("EXPORT")
        parts = ["papermill", "--cwd", "notebooks", "notebooks/04_scheduled_sync.ipynb",
                 "runs/$(date +%F).ipynb", "-p", "export_path", str(export),
                 "-p", "mapping_path", str(mapping), "-p", "target", self.target,
                 "-p", "create_users", str(self.create_users)]
        if self.email_opt_in:
            parts += ["-p", "email_opt_in", "True"]
        if self.alias_label:
            parts += ["-p", "alias_label", self.alias_label]
        quoted = [p if p.startswith("runs/$(") else shlex.quote(p) for p in parts]
        return " ".join(quoted)

    def next_actions(self) -> list[tuple[str, str]]:
        """(title, text) of what to do after this sync, most urgent first."""
        out: list[tuple[str, str]] = []
        report = self.report
        if report is not None and report.uncertain:
            batches = ", ".join(u["batch"] for u in report.uncertain)
            out.append(("Settle the events whose outcome is unknown",
                        f"{len(report.uncertain):,} event batch(es) ({batches}) were sent but "
                        f"Braze's answer never came, so they are not resent (Braze would count "
                        f"those events twice). Settle them from Braze's read-back: "
                        f"toolkit.settle(ledger, client) in a cell, or `python -m toolkit "
                        f"settle` in a terminal (it decides only on unambiguous evidence, after "
                        f"Braze's read-after-write delay, and lists what needs a person with "
                        f"the --landed / --not-landed command). The next plan then includes "
                        f"what did not land."))
        if report is not None and report.rejected:
            out.append(("Fix the rejected objects",
                        f"Braze rejected {len(report.rejected):,} object(s); the rejected CSV "
                        f"names each profile, field and reason. They stay out of the ledger, "
                        f"so the next plan offers them again once fixed."))
        shared = (" It must use the team's shared ledger too: set BRAZE_LEDGER_URL in the "
                  "job's environment (the command never carries the password)."
                  if self.ledger is not None and self.ledger.shared else "")
        out.append(("Schedule it",
                    "Notebook 04 re-runs this mapping daily (plan → approve by policy → apply → "
                    f"verify), sending only what changed.{shared} Run it with papermill from the "
                    "repository root:"))
        if self.mapping_file is not None:
            out.append(("Reuse the reviewed mapping",
                        f"The rules you reviewed are saved as {self.mapping_file}; "
                        f"toolkit.Mapping.load() reads them back, and the CLI takes them with "
                        f"python -m toolkit plan EXPORT --mapping {self.mapping_file}."))
        return out

    # -- navigation -----------------------------------------------------------------------
    def can_advance(self) -> bool:
        """Whether Next may leave the current step."""
        return bool(self.current.ready(self))

    def next(self) -> bool:
        """Go to the next step, preparing what it shows (preview, plan, verification)."""
        if self.progress.running:
            self.error = PushInProgress("a push is running", hint="wait for it to finish")
            return False
        if not self.can_advance():
            step = self.current
            self.error = StepNotDone(f"step {self.step + 1} ({step.title}) is not done",
                                     hint=step.hint)
            return False
        return self._enter(self.step + 1, stay_on_failure=True)

    def back(self) -> bool:
        """Go to the previous step; it is prepared again if what it showed is out of date
        (the plan step after a push plans what is left)."""
        if self.progress.running:
            self.error = PushInProgress("a push is running", hint="wait for it to finish")
            return False
        if self.step == 0:
            return False
        return self._enter(self.step - 1, stay_on_failure=False)

    def _enter(self, index: int, *, stay_on_failure: bool) -> bool:
        prepare = STEP_DEFINITIONS[index].prepare
        ok = True
        if prepare is not None:
            ok = getattr(self, prepare)()
            if not ok and stay_on_failure:
                return False
        self.step = index
        if ok:
            self.error = None
        return ok

    # -- helpers --------------------------------------------------------------------------
    def _require(self, name: str, hint: str) -> None:
        if getattr(self, name) is None:
            raise ToolkitError(f"no {name} yet", hint=hint)

    def _require_valid_rules(self) -> None:
        if self.rule_errors:
            key, exc = next(iter(self.rule_errors.items()))
            raise ToolkitError(f"the rule for {key!r} is invalid: {exc.message}", rule=key,
                               hint=exc.hint or "fix the highlighted rule in step 3")

    def _reset(self, after: int) -> None:
        """Forget what every step after index `after` produced (-1: everything, export too)."""
        for step in STEP_DEFINITIONS[after + 1:]:
            for name in step.resets:
                factory = _FRESH.get(name)
                setattr(self, name, factory() if factory else None)

    def _archive_push(self) -> None:
        """Remember a finished push before a new plan replaces it."""
        if self.report is not None:
            self.history.append({"plan": self.report.plan_id, "status": self.report.status,
                                 "acknowledged": self.report.summary()["acknowledged"],
                                 "files": dict(self.saved)})

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
                               "workspace": self.workspace,
                               "ledger": None if self.ledger is None else self.ledger.location,
                               "approved_by": self.approved_by,
                               "error": None if self.error is None else self.error.message}
        if self.plan is not None:
            out["plan"] = planned_totals(self.plan)
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
        rows: list[tuple[str, Any]] = [
            ("step", f"{s['step']} of {len(STEPS)} — {s['step_name']}"),
            ("export", s["source"] or "not chosen"), ("target", TARGETS[self.target]),
            ("workspace", s["workspace"] or "not connected"),
            ("ledger", self.ledger_description())]
        if "plan" in s:
            p = s["plan"]
            rows.append(("plan", f"{p['operations']:,} operations → {p['objects']:,} objects in "
                                 f"{p['requests']:,} requests; {p['data points']:,} data points"))
        if s["approved_by"]:
            rows.append(("approved by", s["approved_by"]))
        if "report" in s:
            r = s["report"]
            rows.append(("sync", f"{r['status']}: {r['acknowledged']:,} objects acknowledged, "
                                 f"{r['rejected']:,} rejected"))
        if "verified" in s:
            rows.append(("verified", "yes" if s["verified"] else "mismatches found"))
        error = views.error_html(self.error) if self.error is not None else ""
        return f"<div><b>Guided sync state</b>{views.table(rows)}{error}</div>"


def _ledger_secret(text: str, where: str, source: str) -> Secret:
    """A shared ledger's URL as a `Secret`; anything else is refused without echoing it (it may
    be a password pasted on its own)."""
    text = text.strip()
    if not is_ledger_url(text):
        scheme = text.split("://", 1)[0] + "://" if "://" in text else "a file path"
        raise ConfigError(f"{where} takes a postgresql:// URL, not {scheme}", field=where,
                          hint=_LEDGER_URL_HINT)
    return Secret(text, name="ledger URL", source=source)


def _ledger_location(url: Secret) -> str:
    try:
        return ledger_location(url.reveal())
    except ValueError:
        return "postgresql://… (unreadable URL)"


def _resolve_path(text: str) -> Path:
    """The export path typed into the wizard; a relative path that does not exist is an error
    naming the working directory (and the repository-relative path, when that exists)."""
    path = Path(os.path.expanduser(text))
    if path.is_absolute() or path.exists():
        return path
    cwd = Path.cwd()
    hint = f"relative paths start at the working directory, {cwd}"
    for base in (cwd.parent, _REPO):
        candidate = base / path
        if candidate.exists():
            hint += f"; did you mean {os.path.relpath(candidate, cwd)}?"
            break
    raise ToolkitError(f"no file or folder at {text!r} (looked in {cwd})", file=text, hint=hint)


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToolkitError(f"cannot create the folder: {exc.strerror}", file=str(path),
                           hint="choose a writable output_dir") from None


def _default_mapping(export):
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
        from IPython import get_ipython  # lazy: IPython only inside a kernel
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


def _download_link(path: Path, label: str) -> str:
    data = path.read_bytes()
    mime = {".json": "application/json", ".yaml": "application/x-yaml",
            ".parquet": "application/vnd.apache.parquet"}.get(path.suffix, "text/csv")
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


def report_html(plan, report) -> str:
    """A sync report in the shared vocabulary: planned vs outcome per unit, HTTP calls, rejects
    and events whose outcome is unknown."""
    colour = {"complete": "gs-good", "partial": "gs-warn"}.get(report.status, "gs-bad")
    totals = totals_frame(plan, report)
    calls = http_calls(report)
    extra = [f"{calls['requests sent']:,} requests sent"]
    if calls["set-up calls"]:
        extra.append(f"{calls['set-up calls']:,} set-up call(s) (creating the partner cohort)")
    extra.append(f"{calls['retries']:,} retries")
    parts = [f"<div class='{colour} gs-wrap'><b>Sync report</b> — plan "
             f"<code>{html.escape(report.plan_id)}</code>: <b>{html.escape(report.status)}</b> in "
             f"{report.elapsed_s:.2f} s",
             views.frame_html(totals.reset_index()),
             f"<p style='margin:2px 0'><small>HTTP calls: {calls['HTTP calls']:,} = "
             + " + ".join(extra) + f"; {calls['answered 429']:,} answered 429 (rate limited)."
             "</small></p>"]
    if report.error:
        parts.append(f"<p><b>Stopped:</b> {html.escape(report.error)}</p>")
    if report.rejected:
        parts.append("<b>Rejected by Braze</b>" + views.frame_html(
            report.rejected_frame(), max_rows=20, what="rejected objects"))
    if report.uncertain:
        parts.append("<b>Events with an unknown outcome (not resent)</b>" + views.frame_html(
            report.uncertain_frame(), max_rows=20, what="batches")
            + "<p>See the last step (What next) for how to settle them.</p>")
    for note in report.notes:
        parts.append(f"<p><small>{html.escape(note)}</small></p>")
    return "".join(parts) + "</div>"


def verification_html(check) -> str:
    cls = "gs-good" if check.ok else "gs-bad"
    text = (f"<div class='{cls} gs-wrap'><b>Verification: {'OK' if check.ok else 'MISMATCH'}"
            f"</b> — {check.users_checked:,} users read back from Braze "
            f"({check.requests:,} HTTP call{'s' if check.requests != 1 else ''}), "
            f"{len(check.checks):,} values compared"
            + (f", {check.users_skipped:,} users not checkable by external id or alias"
               if check.users_skipped else "") + ".")
    if check.users_missing:
        text += (f"<p><b>Not found in Braze:</b> "
                 f"{html.escape(', '.join(check.users_missing[:20]))}"
                 + (f" … and {len(check.users_missing) - 20:,} more"
                    if len(check.users_missing) > 20 else "") + "</p>")
    bad = check.mismatches
    text += (views.frame_html(bad, max_rows=30, what="mismatches") if len(bad)
             else "<p style='margin:2px 0'>Every compared value agrees.</p>")
    return text + "</div>"


class GuidedSync:
    """The guided Engage → Braze sync wizard. Display it in a notebook cell; drive it by clicking.

    ``GuidedSync()`` targets the built-in sandbox (started when the plan is built);
    ``GuidedSync(target="workspace")`` the Braze workspace in ``BRAZE_REST_ENDPOINT`` /
    ``BRAZE_API_KEY``. ``background`` pushes in a thread (default: when running in a kernel);
    ``plots=False`` skips drawing figures (faster headless runs). ``definitions`` (a Public
    API JSON file of the audiences, or `toolkit.Definitions`) adds "native in Braze?" to steps
    3 and 4.
    Its state is ``wizard.state`` (a `GuidedSyncState`); `run_all` clicks through every step.
    """

    def __init__(self, *, target: str = "sandbox", sandbox=None,
                 output_dir: str | os.PathLike = "sync-reports",
                 samples_dir: str | os.PathLike | None = None, background: bool | None = None,
                 verify_sample: int = 50, plots: bool = True, definitions=None) -> None:
        import ipywidgets as w  # lazy: ipywidgets only when the wizard is displayed

        self.state = GuidedSyncState(target=target, sandbox=sandbox, output_dir=output_dir,
                                     samples_dir=samples_dir, verify_sample=verify_sample,
                                     definitions=definitions)
        self.background = _in_kernel() if background is None else bool(background)
        self.plots = plots
        self._drawn: dict[str, Any] = {}   # image name -> the object it was drawn from
        self._thread: threading.Thread | None = None
        self._quiet = False                 # True while _refresh copies state into widgets
        self._w = w
        full = w.Layout(width="100%")

        # frame
        self.title = w.HTML(views.STYLE + "<h3 style='margin:4px 0'>Guided sync: Engage → "
                                          "Braze</h3>")
        self.steps_html = w.HTML()
        self.target_html = w.HTML()
        self.error_html = w.HTML()
        self.heading_html = w.HTML()
        self.body = w.VBox(layout=full)
        self.back_button = w.Button(description="◀ Back", tooltip="previous step")
        self.next_button = w.Button(description="Next ▶", button_style="primary",
                                    tooltip="next step")
        self.position = w.HTML()
        self.back_button.on_click(lambda _: self._do(self.state.back))
        self.next_button.on_click(lambda _: self._do(self.state.next))

        # step 1: export
        options = [(label, label) for label in self.state.samples]
        self.sample_dropdown = w.Dropdown(options=options, value=None, description="Sample",
                                          layout=w.Layout(width="min(560px, 100%)"))
        self.path_text = w.Text(placeholder="…or the path of an Engage export (file or folder)",
                                description="Path", layout=w.Layout(width="min(560px, 100%)"))
        self.load_button = w.Button(description="Load path", tooltip="load the export at Path")
        self.export_html = w.HTML()
        self.sample_dropdown.observe(self._on_sample, names="value")
        self.load_button.on_click(lambda _: self._load_path())

        # step 2: review
        self.review_html = w.HTML()
        self.review_images = w.VBox()
        self._review_for = None

        # step 3: identity options, mapping rows (built per export), refused values, saving
        style = {"description_width": "initial"}
        self.email_box = w.Checkbox(value=False, indent=False, layout=w.Layout(width="auto"),
                                    description="Match profiles that have only an email, by email")
        self.alias_box = w.Checkbox(value=False, indent=False, layout=w.Layout(width="auto"),
                                    description="Send profiles without a user_id as user aliases")
        self.alias_text = w.Text(value="segment_id", description="with the alias label",
                                 style=style,
                                 continuous_update=False, layout=w.Layout(width="300px"))
        self.identity_html = w.HTML()
        self.email_box.observe(self._on_identity, names="value")
        self.alias_box.observe(self._on_identity, names="value")
        self.alias_text.observe(self._on_identity, names="value")
        self.rules_box = w.VBox(layout=full)
        self.rule_widgets: dict[str, dict[str, Any]] = {}
        self._rules_for = None
        self.values_html = w.HTML()
        self.mapping_path_text = w.Text(description="Save mapping as", style=style,
                                        layout=w.Layout(width="min(460px, 100%)"))
        self.save_mapping_button = w.Button(description="Save mapping", icon="save",
                                            tooltip="write the rules as YAML for scheduled runs")
        self.mapping_saved_html = w.HTML()
        self.save_mapping_button.on_click(lambda _: self._do(self._save_mapping))

        # step 4: preview
        self.preview_html = w.HTML()
        self.preview_image = self._image()

        # step 5: plan
        self.target_toggle = w.ToggleButtons(
            options=[("Built-in sandbox", "sandbox"), ("Braze workspace (from environment)",
                                                       "workspace")],
            tooltips=[TARGETS["sandbox"], TARGETS["workspace"]], value=self.state.target,
            description="Send to", style={"description_width": "initial", "button_width": "auto"})
        self.create_users_box = w.Checkbox(value=self.state.create_users, indent=False,
                                           layout=w.Layout(width="auto"),
                                           description="create users Braze does not know yet")
        # The Ledger field: a password input, emptied as soon as it is used, so a shared
        # ledger's password is never kept in a widget (widget values are saved with the notebook)
        self.ledger_field = w.Password(
            description="Ledger", style=style, continuous_update=False,
            placeholder="empty: the default ledger · postgresql://user:password@host:5432/db",
            layout=w.Layout(width="min(520px, 100%)"))
        self.ledger_button = w.Button(description="Use this ledger", icon="database",
                                      layout=w.Layout(width="auto"),
                                      tooltip="empty: the default ledger; a postgresql:// URL: "
                                              "the team's shared ledger (re-plans)")
        self.ledger_html = w.HTML()
        self.ledger_button.on_click(lambda _: self._do(self._use_ledger))
        self.replan_button = w.Button(description="Re-plan", tooltip="build the plan again")
        self.save_plan_button = w.Button(description="Save plan", icon="save",
                                         tooltip="write the plan as JSON into the output folder")
        self.plan_html = w.HTML()
        self.plan_image = self._image()
        # the guards ignore the echo when _refresh copies the state back into the widget
        self.target_toggle.observe(lambda ch: not self._quiet and ch["new"] != self.state.target
                                   and self._do(lambda: self.state.set_target(ch["new"])
                                                and self.state.build_plan()), names="value")
        self.create_users_box.observe(
            lambda ch: not self._quiet and ch["new"] != self.state.create_users and self._do(
                lambda: self.state.set_create_users(ch["new"]) and self.state.build_plan()),
            names="value")
        self.replan_button.on_click(lambda _: self._do(self.state.build_plan))
        self.save_plan_button.on_click(lambda _: self._do(self.state.save_plan))

        # step 6: approve
        self.approver_text = w.Text(description="Your name", placeholder="who approves",
                                    style=style, layout=w.Layout(width="min(360px, 100%)"))
        self.duration_dropdown = w.Dropdown(options=list(APPROVAL_DURATIONS.items()),
                                            value=self.state.expires_in,
                                            description="Approval lasts", style=style)
        self.duration_dropdown.observe(
            lambda ch: not self._quiet and self._do(
                lambda: self.state.set_approval_duration(ch["new"])), names="value")
        self.confirm_box = w.Checkbox(value=False, indent=False, layout=w.Layout(width="auto"),
                                      description="I reviewed this plan and approve sending it")
        self.workspace_text = w.Text(description="Type the workspace name", style=style,
                                     layout=w.Layout(width="min(460px, 100%)"))
        self.approve_button = w.Button(description="Approve", button_style="warning")
        self.approval_html = w.HTML()
        self.approve_button.on_click(lambda _: self._do(lambda: self.state.approve(
            self.approver_text.value, self.confirm_box.value, self.workspace_text.value)))

        # step 7: push
        self.push_button = w.Button(description="Push to Braze", button_style="danger",
                                    icon="upload")
        self.progress_bar = w.IntProgress(value=0, min=0, max=1, description="Requests",
                                          bar_style="info",
                                          layout=w.Layout(width="min(520px, 100%)"))
        self.counters_html = w.HTML()
        self.push_result_html = w.HTML()
        self.push_button.on_click(lambda _: self._push())

        # step 8: verify (and, when asked, check the Braze segments)
        self.build_segments_button = w.Button(
            description="Build the recommended segments in the sandbox", icon="wrench",
            layout=w.Layout(width="auto"))
        self.check_segments_button = w.Button(description="Check the Braze segments",
                                              icon="check", layout=w.Layout(width="auto"))
        self.exact_box = w.Checkbox(value=False, indent=False, layout=w.Layout(width="auto"),
                                    description="exactly (export each segment)")
        self.segments_intro_html = w.HTML()
        self.segments_html = w.HTML()
        self.build_segments_button.on_click(lambda _: self._do(self.state.build_segments))
        self.check_segments_button.on_click(lambda _: self._do(
            lambda: self.state.check_segments(exact=self.exact_box.value)))
        self.verify_html = w.HTML()
        self.report_html = w.HTML()
        self.throughput_image = self._image()

        # step 9: what next
        self.next_html = w.HTML()

        self.widget = w.VBox([
            self.title, self.steps_html, self.target_html, self.error_html, self.heading_html,
            self.body, w.HBox([self.back_button, self.next_button, self.position]),
        ], layout=w.Layout(border="1px solid #ddd", padding="8px", max_width="100%"))
        self.widget.add_class("gs-root")
        self._refresh()

    def _image(self):
        # no side margins: ipywidgets' default 2px would push a 100%-wide figure 4px over
        return self._w.Image(format="png", layout=self._w.Layout(max_width="100%",
                                                                 height="auto", margin="4px 0"))

    def _show_png(self, image, data: bytes) -> None:
        """Show a figure at its own pixel size (never stretched, so never blurred), narrower
        when the wizard is narrower."""
        width = _png_width(data)
        image.value = data
        image.layout.width = f"{width}px" if width else None
        image.layout.align_self = "flex-start"

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
        except ToolkitError as exc:
            self.state.error = exc
        except Exception as exc:  # a callback's traceback would vanish into the browser console
            self.state.error = ToolkitError(
                f"unexpected {type(exc).__name__}: {exc}",
                hint="this is a bug in the toolkit; please report it with this message")
        self._refresh()

    def _on_sample(self, change: dict) -> None:
        if change["new"] and not self._quiet:
            def load():
                if self.state.load(change["new"]):
                    self.path_text.value = ""
            self._do(load)

    def _load_path(self) -> None:
        self._do(lambda: self.state.load(self.path_text.value))

    def _on_identity(self, change: dict) -> None:
        if self._quiet:
            return
        self._do(lambda: self.state.set_identity(
            email_opt_in=self.email_box.value,
            alias_label=(self.alias_text.value or "segment_id") if self.alias_box.value
            else None))

    def _save_mapping(self) -> None:
        self.state.save_mapping(self.mapping_path_text.value.strip() or None)
        self.state.error = None

    def _use_ledger(self) -> None:
        typed = self.ledger_field.value
        self._set(self.ledger_field, "")   # the password must not stay in the widget
        if self.state.set_ledger(typed):
            self.state.build_plan()

    def _push(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self.push_button.disabled = True

        def work() -> None:
            try:
                self.state.push(on_progress=self._show_progress)
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
        approve as `approved_by` (typing `confirm` for a real workspace), push, verify, and
        what next. Stops at the first step that fails and returns the state (its ``error``
        says why)."""
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
                if name not in row["inputs"]:
                    self.state.error = ToolkitError(f"the wizard has no {name!r} field", rule=key,
                                                    hint="change send_as, attribute, "
                                                         "enter_event, exit_event, trait_event "
                                                         "or cohort_name")
                    self._refresh()
                    return self.state
                row["inputs"][name].value = value
        for key in ("preview", "plan", "approve"):
            self.next_button.click()
            if self.state.step != _INDEX[key]:
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
        if self.state.step == _INDEX["verify"]:
            self.next_button.click()                   # → what next
        return self.state

    # -- rendering ------------------------------------------------------------------------
    def _draw(self, image, name: str, source: Any, make: Callable[[], Any]) -> None:
        """Draw `make()` into `image` unless it already shows a figure of `source`."""
        if not self.plots or source is None:
            image.value = b""
            self._drawn.pop(name, None)
        elif self._drawn.get(name) is not source:
            self._show_png(image, _png(make()))
            self._drawn[name] = source

    def _set(self, widget, value) -> None:
        """Copy a state value into a widget without its observer acting on the echo."""
        if widget.value != value:
            self._quiet = True
            try:
                widget.value = value
            finally:
                self._quiet = False

    def _refresh(self) -> None:
        s = self.state
        items = []
        for i, step in enumerate(STEP_DEFINITIONS):
            style = ("background:#0072B2;color:white;font-weight:bold" if i == s.step else
                     "color:#333" if i < s.step else "color:#767676")
            items.append(f"<span style='padding:2px 6px;border-radius:3px;{style}'>"
                         f"{i + 1}.&nbsp;{html.escape(step.name)}</span>")
        self.steps_html.value = "<div class='gs-steps'>" + " ".join(items) + "</div>"
        where = TARGETS[s.target]
        if s.workspace:
            where += f" — <code>{html.escape(s.workspace)}</code>"
        self.target_html.value = f"<small class='gs-wrap'><b>Target:</b> {where}</small>"
        self.error_html.value = views.error_html(s.error) if s.error is not None else ""
        self.heading_html.value = (f"<h4 style='margin:8px 0 4px 0'>{s.step + 1}. "
                                   f"{html.escape(s.current.title)}</h4>")
        self.position.value = (f"<span style='margin-left:12px'>Step {s.step + 1} of "
                               f"{len(STEPS)}</span>")
        self.back_button.disabled = s.step == 0 or s.progress.running
        self.next_button.disabled = not s.can_advance() or s.progress.running
        self.body.children = getattr(self, f"_step_{s.current.key}")()

    # step 1 ---------------------------------------------------------------------------------
    def _step_export(self) -> list:
        s = self.state
        self._set(self.sample_dropdown, s.source if s.source in s.samples else None)
        if s.export is None:
            gone = (f"<div class='gs-warn'>The export loaded before "
                    f"(<code>{html.escape(s.unloaded)}</code>) was unloaded, so nothing can be "
                    f"planned from it by mistake. Load it again, or fix the path.</div>"
                    if s.unloaded else "")
            self.export_html.value = gone + (
                "<p>Pick a bundled sample, or type the path of an Engage export (audience or "
                "computed-trait CSV, NDJSON of identify/track calls, or a Profiles Sync folder)"
                f" and press Load path. Relative paths start at <code>"
                f"{html.escape(str(Path.cwd()))}</code>.</p>")
        else:
            e = s.export
            n = len(e.findings)
            facts = (f"<p class='gs-wrap'><b>Source:</b> {html.escape(e.source or s.source)}"
                     f"<br>{len(e.profiles):,} profiles · {len(e.audiences):,} audiences · "
                     f"{len(e.traits):,} traits · {len(e.events):,} events in the history</p>")
            summary = e.summary().drop(columns=["detail"]).rename(columns={
                "profiles_with_value": "profiles with a value", "value_type": "value type"})
            self.export_html.value = (
                facts + views.freshness_html(e) + views.frame_html(summary)
                + f"<details><summary><b>Findings ({n:,})</b> — what needs attention before a "
                  f"sync</summary>" + views.findings_html(e.findings) + "</details>")
        return [self.sample_dropdown,
                self._w.HBox([self.path_text, self.load_button],
                             layout=self._w.Layout(flex_flow="row wrap")),
                self.export_html]

    # step 2 ---------------------------------------------------------------------------------
    def _step_review(self) -> list:
        # lazy: matplotlib only when a chart is drawn
        from toolkit.notebook import plots

        s = self.state
        if self._review_for is not s.export:
            cov = s.export.identifier_coverage()
            tiers = plots.identifier_tiers(s.export).value_counts(sort=False)
            email = int(tiers.get("email only (needs opt-in)", 0))
            anon = int(tiers.get("anonymous only (needs alias)", 0))
            self.review_html.value = (
                "<p>What Engage computed, and who Braze can receive.</p>"
                + views.table([("profiles", cov.get("profiles", 0)),
                               ("Braze can receive (user_id or braze_id)",
                                cov.get("braze_usable", 0)),
                               ("only an email (sent if you opt in, step 3)", email),
                               ("only an anonymous id (sent as aliases if you opt in, step 3)",
                                anon)]))
            figures = []
            if self.plots:
                figures = [plots.audience_sizes(s.export), plots.audience_overlap(s.export),
                           plots.identifier_coverage(s.export)]
                if plots.computed_traits(s.export):
                    figures.append(plots.trait_distributions(s.export))
            images = []
            for figure in figures:
                images.append(self._image())
                self._show_png(images[-1], _png(figure))
            self.review_images.children = images
            self._review_for = s.export
        return [self.review_html, self.review_images]

    # step 3 ---------------------------------------------------------------------------------
    def _step_map(self) -> list:
        s = self.state
        w = self._w
        if self._rules_for is not s.export:
            self._build_rule_rows()
            self._rules_for = s.export
        for key in self.rule_widgets:
            self._update_rule_row(key)
        self._set(self.email_box, s.email_opt_in)
        self._set(self.alias_box, s.alias_label is not None)
        if s.alias_label:
            self._set(self.alias_text, s.alias_label)
        self.alias_text.disabled = s.alias_label is None
        self.identity_html.value = self._identity_text()
        values = s.value_findings_frame()
        if len(values):
            fixes = values.drop_duplicates("fix")["fix"].dropna().tolist()
            self.values_html.value = (
                f"<details><summary><b>Values Braze would refuse ({len(values):,})</b> — left "
                f"out of the sync, one row per value</summary>"
                + views.frame_html(values.drop(columns=["fix"]), max_rows=50, what="values")
                + "".join(f"<p style='margin:2px 0'><b>Fix:</b> {html.escape(f)}</p>"
                          for f in fixes) + "</details>")
        else:
            self.values_html.value = ("<p class='gs-muted'><small>Braze accepts every value "
                                      "these rules send.</small></p>")
        if not self.mapping_path_text.value:
            self.mapping_path_text.value = str(s.output_dir / "mapping.yaml")
        if s.mapping_saved:
            self.mapping_saved_html.value = (f"<span style='color:#009E73'>✓ saved as <code>"
                                             f"{html.escape(str(s.mapping_file))}</code></span>")
        elif s.mapping_file is not None:
            self.mapping_saved_html.value = ("<span style='color:#b9770e'>The rules changed "
                                             "since they were saved; save again.</span>")
        else:
            self.mapping_saved_html.value = ""
        self.save_mapping_button.disabled = bool(s.rule_errors)
        intro = w.HTML(
            "<p class='gs-wrap'>Choose how each computation reaches Braze. <b>custom "
            "attribute</b> (recommended for segments that last): true/false or the trait value "
            "on the profile; <b>custom events</b>: Audience Entered/Exited or Trait Computed, "
            "for campaigns triggered by a change; <b>partner cohort</b>: a Segment cohort "
            "(audiences only, needs partner keys). The Braze filter each choice implies updates "
            "as you change it.</p>")
        identity = w.VBox([w.HTML("<b>Who is sent</b>"), self.email_box,
                           w.HBox([self.alias_box, self.alias_text],
                                  layout=w.Layout(flex_flow="row wrap")), self.identity_html],
                          layout=w.Layout(border="1px solid #eee", padding="4px 8px",
                                          margin="0 0 8px 0"))
        save = w.HBox([self.mapping_path_text, self.save_mapping_button, self.mapping_saved_html],
                      layout=w.Layout(flex_flow="row wrap", align_items="center"))
        return [intro, identity, self.rules_box, self.values_html, save]

    def _identity_text(self) -> str:
        # lazy: matplotlib only when a chart is drawn
        from toolkit.notebook import plots

        s = self.state
        tiers = plots.identifier_tiers(s.export).value_counts(sort=False)
        email = int(tiers.get("email only (needs opt-in)", 0))
        anon = int(tiers.get("anonymous only (needs alias)", 0))
        bare = int(tiers.get("no identifier", 0))
        notes = []
        if email:
            notes.append(f"{email:,} profile(s) have only an email: "
                         + ("sent, matched by email." if s.email_opt_in or s.alias_label else
                            "left out unless you tick email matching (Braze merges by email, so "
                            "profiles sharing an address become one user)."))
        if anon:
            notes.append(f"{anon:,} profile(s) have only an anonymous id: "
                         + (f"sent as user aliases (alias_name = Segment id, alias_label = "
                            f"{s.alias_label})." if s.alias_label else
                            "left out unless you send aliases (Braze creates alias-only users "
                            "that a later identify can merge)."))
        if bare:
            notes.append(f"{bare:,} profile(s) have no identifier at all"
                         + (": sent as aliases." if s.alias_label else " and are left out."))
        if not notes:
            notes.append("Every profile has a user_id or braze_id.")
        return "<small class='gs-wrap'>" + "<br>".join(html.escape(n) for n in notes) + "</small>"

    _INPUT_LABELS = {"attribute": "attribute", "enter_event": "entered event",
                     "exit_event": "exited event", "trait_event": "trait event",
                     "cohort_name": "cohort name"}

    def _build_rule_rows(self) -> None:
        w = self._w
        rows = []
        self.rule_widgets = {}
        for rule in self.state.mapping.rules:
            options = [(SEND_AS_LABELS[k], k) for k in SEND_AS_LABELS
                       if k != "cohort" or rule.kind == "audience"]
            send_as = w.Dropdown(options=options, value=rule.send_as,
                                 layout=w.Layout(width="150px", min_width="150px"))
            names = (("attribute", "enter_event", "exit_event", "cohort_name")
                     if rule.kind == "audience" else ("attribute", "trait_event"))
            inputs: dict[str, Any] = {"send_as": send_as}
            fields: dict[str, Any] = {}
            for name in names:
                value = getattr(rule, name)
                text = w.Text(value=str(value or (rule.key if name == "cohort_name" else "")),
                              continuous_update=False,
                              layout=w.Layout(width="150px", min_width="120px"))
                inputs[name] = text
                fields[name] = w.VBox([w.HTML(f"<small>{self._INPUT_LABELS[name]}</small>"),
                                       text], layout=w.Layout(margin="0 4px 0 0"))
            for name, widget in inputs.items():
                widget.observe(self._rule_observer(rule.key, name), names="value")
            label = w.HTML(f"<div class='gs-wrap'><b><code>{html.escape(rule.key)}</code></b>"
                           f"<br><small>{rule.kind}</small></div>",
                           layout=w.Layout(width="180px", min_width="150px"))
            sent = w.VBox([w.HTML("<small>sent as</small>"), send_as],
                          layout=w.Layout(margin="0 4px 0 0"))
            shown = w.HBox(layout=w.Layout(flex_flow="row wrap"))
            note = w.HTML()
            rows.append(w.VBox([w.HBox([label, sent, shown],
                                       layout=w.Layout(flex_flow="row wrap")), note],
                               layout=w.Layout(border_bottom="1px solid #eee",
                                               padding="2px 0")))
            self.rule_widgets[rule.key] = {"inputs": inputs, "fields": fields, "shown": shown,
                                           "filter": note, **inputs}
        self.rules_box.children = rows

    def _rule_observer(self, key: str, name: str) -> Callable[[dict], None]:
        def observe(change: dict) -> None:
            if self._quiet:
                return
            self.state.set_rule(key, **{name: change["new"]})
            self._refresh()
        return observe

    _SHOWN = {"attribute": ("attribute",), "event": ("enter_event", "exit_event", "trait_event"),
              "both": ("attribute", "enter_event", "exit_event", "trait_event"),
              "cohort": ("cohort_name",)}

    def _update_rule_row(self, key: str) -> None:
        s = self.state
        row = self.rule_widgets[key]
        rule = s.mapping[key]
        send_as = row["send_as"].value
        # only the names this choice uses are shown: greyed fields read like placeholders
        row["shown"].children = [row["fields"][n] for n in self._SHOWN[send_as]
                                 if n in row["fields"]]
        problem = s.rule_errors.get(key)
        if problem is not None:
            fix = f" — {html.escape(problem.hint)}" if problem.hint else ""
            row["filter"].value = (f"<span class='gs-wrap' style='color:#c0392b'>✗ "
                                   f"{html.escape(problem.message)}{fix}</span>")
            return
        filters = s.filters_for(key)
        code = lambda t: f"<code>{html.escape(str(t))}</code>"  # noqa: E731
        sent = {"attribute": f"attribute {code(rule.attribute)}",
                "both": f"attribute {code(rule.attribute)} + events "
                        + ", ".join(code(e) for e in rule.event_names),
                "event": "events " + ", ".join(code(e) for e in rule.event_names),
                "cohort": f"cohort {code(rule.cohort_name)}"}[rule.send_as]
        text = (f"<small class='gs-wrap'>Sent as {sent}. Braze filter: "
                + " <i>or</i> ".join(f"<b>{views.filter_html(f)}</b>" for f in filters)
                + "</small>")
        native = s.mapping.native_in_braze(key)
        if native is not None:
            text += (f"<br><small class='gs-wrap'>Native in Braze? <b>{html.escape(native)}</b>"
                     "</small>")
        if rule.send_as == "event":
            text += ("<br><small class='gs-wrap' style='color:#b9770e'>⚠ Event filters stop "
                     "selecting some members over time (step 4 says when); keep the attribute "
                     "for a segment that lasts.</small>")
        warning = s.cohort_warnings().get(key)
        if warning:
            text += f"<div class='gs-warn gs-wrap'><small>⚠ {html.escape(warning)}</small></div>"
        row["filter"].value = text

    # step 4 ---------------------------------------------------------------------------------
    def _step_preview(self) -> list:
        # lazy: matplotlib only when a chart is drawn
        from toolkit.notebook import plots

        s = self.state
        self._draw(self.preview_image, "preview", s.preview,
                   lambda: plots.preview_sizes(s.preview))
        self.preview_html.value = self._preview_text() if s.preview is not None else ""
        return [self._w.HTML("<p class='gs-wrap'>Each audience and trait as a Braze segment: "
                             "Engage members beside the users the Braze filter selects, and "
                             "why the others are dropped.</p>"),
                self.preview_image, self.preview_html]

    def _preview_text(self) -> str:
        s = self.state
        p = s.preview
        frame = p.to_frame()
        rows = []
        for r in frame.to_dict("records"):
            why = "; ".join(f"{r[k]:,} {k.replace('_', ' ')}" for k in REASONS if r[k])
            check = html.escape(r["check"]) + ("" if r["recommended"] else
                                               " <small>(not recommended)</small>")
            rows.append({"computation": f"<code>{html.escape(r['key'])}</code><br><small>"
                                        f"{r['kind']}, {SEND_AS_LABELS[r['send_as']]}</small>",
                         "check": check, "Braze filter to build": views.filter_html(
                             r["braze_filter"]),
                         "Engage members": r["engage_members"],
                         "Braze can hold": r["braze_can_hold"],
                         "filter selects": r["filter_selects"],
                         "dropped (why)": f"{r['dropped']:,}" + (f" — {html.escape(why)}"
                                                                 if why else ""),
                         **({"native in Braze?": r["native_in_braze"]}
                            if "native_in_braze" in r else {})})
        table = views.frame_html(pd.DataFrame(rows), html_columns=(
            "computation", "check", "Braze filter to build", "dropped (why)"))
        cohort = "".join(f"<div class='gs-warn gs-wrap'>⚠ <code>{html.escape(k)}</code>: "
                         f"{html.escape(v)}</div>" for k, v in s.cohort_warnings().items())
        identity = ("email matching on" if s.email_opt_in else "no email matching") + ", " + (
            f"aliases labelled {s.alias_label}" if s.alias_label else "no aliases")
        return (views.freshness_html(s.export)
                + f"<p class='gs-wrap'><small>Evaluated as of {views.readable_time(p.as_of)} on "
                  f"{p.user_count:,} Braze users ({html.escape(identity)}; change it in "
                  f"step 3).</small></p>"
                + views.staleness_html(p) + cohort + table)

    # step 5 ---------------------------------------------------------------------------------
    def _step_plan(self) -> list:
        # lazy: matplotlib only when a chart is drawn
        from toolkit.notebook import plots

        s = self.state
        self._set(self.target_toggle, s.target)
        self._set(self.create_users_box, s.create_users)
        parts = []
        for earlier in s.history[-1:]:
            parts.append(f"<div class='gs-box gs-wrap'><small>The plan pushed earlier "
                         f"(<code>{html.escape(earlier['plan'])}</code>, "
                         f"{html.escape(earlier['status'])}, {earlier['acknowledged']:,} objects "
                         f"acknowledged) is done; below is what is left to send now.</small>"
                         f"</div>")
        if s.plan is not None:
            p = s.plan
            t = planned_totals(p)
            c = p.cost()
            samples = json.dumps(p.sample_payloads(2), indent=1, ensure_ascii=False)
            if len(samples) > 4000:
                samples = samples[:4000] + "\n…"
            facts = views.table([
                ("operations", t["operations"]), ("objects", t["objects"]),
                ("requests", t["requests"]), ("data points", t["data points"]),
                ("users", c["users"]),
                ("estimated time", _duration(c["estimated_seconds"])
                 + " at the workspace rate limit"),
                ("fingerprint", p.fingerprint[:16] + "…")])
            body = (f"<p><b>{html.escape(p.headline())}</b></p>"
                    if p.is_empty else views.frame_html(p.summary()))
            n = len(p.findings)
            findings = (f"<details><summary><b>Findings ({n:,})</b> — profiles or values left "
                        f"out, and why</summary>{views.findings_html(p.findings, p.left_out)}"
                        f"</details>" if n else "<p>No findings.</p>")
            cohort = "".join(f"<div class='gs-warn gs-wrap'>⚠ <code>{html.escape(k)}</code>: "
                             f"{html.escape(v)}</div>" for k, v in s.cohort_warnings().items())
            saved = (f"<p><small>Saved as <code>{html.escape(str(s.plan_file))}</code></small>"
                     f"</p>" if s.plan_file is not None and s.plan_file.name.endswith(
                         f"{p.id}.json") else "")
            parts.append(
                facts + legend_html() + cohort + findings
                + "<details><summary><b>Sample payloads (exactly as sent)</b></summary>"
                  "<pre style='max-height:220px;overflow:auto;white-space:pre-wrap;"
                  f"overflow-wrap:anywhere'>{html.escape(samples, quote=False)}</pre></details>"
                + f"<b>Operations by computation</b>{body}{saved}")
        self.plan_html.value = "".join(parts)
        self.save_plan_button.disabled = s.plan is None
        self._draw(self.plan_image, "plan", s.plan, lambda: plots.plan_composition(s.plan))
        self.ledger_html.value = self._ledger_html()
        w = self._w
        return [self.target_toggle,
                w.HBox([self.ledger_field, self.ledger_button],
                       layout=w.Layout(flex_flow="row wrap", align_items="center")),
                self.ledger_html,
                w.HBox([self.create_users_box, self.replan_button, self.save_plan_button],
                       layout=w.Layout(flex_flow="row wrap", align_items="center")),
                self.plan_html, self.plan_image]

    def _ledger_html(self) -> str:
        s = self.state
        try:
            url, _why = s.ledger_choice()
        except ConfigError:
            url = None
        note = ""
        if url is not None and s.target == "sandbox":
            note = (" Each built-in sandbox is a new workspace, and a ledger belongs to one "
                    "workspace: give the sandbox a schema of its own (<code>?schema=…</code>).")
        elif url is None:
            also = (" (or set <code>BRAZE_LEDGER_URL</code>)" if s.target == "workspace"
                    else "")
            note = (" A team shares one ledger on PostgreSQL: type its <code>postgresql://"
                    f"</code> URL above{also}, so nobody resends what a colleague already "
                    "synced.")
        return (f"<p class='gs-wrap' style='margin:2px 0'><small><b>Ledger:</b> "
                f"{html.escape(s.ledger_description(), quote=False)}.{note}</small></p>")

    # step 6 ---------------------------------------------------------------------------------
    def _step_approve(self) -> list:
        s = self.state
        where = (f"the built-in sandbox (<code>{html.escape(str(s.workspace))}</code>)"
                 if s.target == "sandbox"
                 else f"the Braze workspace <code>{html.escape(str(s.workspace))}</code>")
        self._set(self.duration_dropdown, s.expires_in)
        t = planned_totals(s.plan) if s.plan is not None else None
        what = (f"{t['objects']:,} objects in {t['requests']:,} requests "
                f"({t['data points']:,} data points)" if t else "the plan")
        intro = self._w.HTML(f"<p class='gs-wrap'>Approving records your name and this plan's "
                             f"fingerprint; only this exact plan — {what} — can then be pushed "
                             f"to {where}, until the approval expires.</p>")
        children = [intro, self.approver_text, self.duration_dropdown, self.confirm_box]
        phrase = s.confirm_phrase
        if phrase is not None:
            children.append(self._w.HTML(
                f"<p class='gs-wrap' style='color:#c0392b'><b>This is a real Braze workspace."
                f"</b> Type <code>{html.escape(phrase)}</code> to confirm.</p>"))
            children.append(self.workspace_text)
        if s.approved:
            a = s.plan.approval
            now = pd.Timestamp.now(tz="UTC")
            pushed = (" It has been pushed; go back to step 5 to plan what is left."
                      if s.report is not None else "")
            self.approval_html.value = (
                f"<p style='color:#007a5a'>✓ Approved by <b>{html.escape(a['by'])}</b> until "
                f"{html.escape(views.readable_time(a['expires_at'], now))}.{pushed}</p>")
        else:
            self.approval_html.value = "<p>Not approved yet.</p>"
        self.approve_button.disabled = s.approved
        self.duration_dropdown.disabled = s.approved
        children += [self.approve_button, self.approval_html]
        return children

    # step 7 ---------------------------------------------------------------------------------
    def _show_progress(self, p: SyncProgress) -> None:
        self.progress_bar.max = max(p.requests_total, 1)
        self.progress_bar.value = min(p.requests_done, self.progress_bar.max)
        self.progress_bar.bar_style = ("danger" if p.requests_failed or p.objects_rejected
                                       else "success" if p.finished else "info")
        self.counters_html.value = p._repr_html_()

    def _step_push(self) -> list:
        s = self.state
        self._show_progress(s.progress)
        self.push_button.disabled = s.report is not None or s.progress.running or not s.approved
        if s.report is not None:
            self.push_result_html.value = report_html(s.plan, s.report) + legend_html()
        elif s.progress.running:
            self.push_result_html.value = "<p>Pushing…</p>"
        elif s.plan is not None:
            t = planned_totals(s.plan)
            self.push_result_html.value = (
                f"<p>Ready to send {t['objects']:,} objects in {t['requests']:,} requests "
                f"({t['data points']:,} data points) for {s.plan.cost()['users']:,} users."
                f"</p>" + legend_html())
        else:
            self.push_result_html.value = ""
        return [self.push_button, self.progress_bar, self.counters_html, self.push_result_html]

    # step 8 ---------------------------------------------------------------------------------
    def _step_verify(self) -> list:
        # lazy: matplotlib only when a chart is drawn
        from toolkit.notebook import plots

        s = self.state
        self.verify_html.value = (verification_html(s.verification)
                                  if s.verification is not None else "")
        if s.saved:
            links = "".join(_download_link(path, label) for label, path in s.saved.items())
            self.report_html.value = (f"<b>Download the report</b> <small>(also saved in "
                                      f"<code>{html.escape(str(s.output_dir))}</code>)</small>"
                                      f"<ul class='gs-wrap'>{links}</ul>")
        else:
            self.report_html.value = ""
        self._draw(self.throughput_image, "throughput", s.report,
                   lambda: plots.sync_throughput(s.report))
        return [self.verify_html, self.report_html, self.throughput_image,
                *self._segment_widgets()]

    def _segment_widgets(self) -> list:
        """The offer to check the segments analysts build in Braze against the computations."""
        s = self.state
        sandbox = s.target == "sandbox"
        intro = ("<h4>Check the Braze segments</h4><p>Build each segment in Braze with the "
                 "recommended filter (step 4), named "
                 f"<code>{html.escape(s.mapping.segment_names)}</code>, then compare them with "
                 "the computations: filters, sizes and a verdict per computation"
                 + (" — in the sandbox the wizard can build them for you" if sandbox else "")
                 + ".</p>") if s.mapping is not None else ""
        self.segments_intro_html.value = intro
        self.segments_html.value = (s.segment_check._repr_html_()
                                    if s.segment_check is not None else "")
        buttons = ([self.build_segments_button] if sandbox else []) + [
            self.check_segments_button, self.exact_box]
        return [self.segments_intro_html, self._w.HBox(buttons), self.segments_html]

    # step 9 ---------------------------------------------------------------------------------
    def _step_next(self) -> list:
        s = self.state
        items = []
        for title, text in s.next_actions():
            extra = ""
            if title == "Schedule it":
                extra = (f"<pre style='white-space:pre-wrap;overflow-wrap:anywhere;margin:4px 0'>"
                         f"{html.escape(s.schedule_command())}</pre>")
            items.append(f"<li style='margin-bottom:6px'><b>{html.escape(title)}.</b> "
                         f"{html.escape(text)}{extra}</li>")
        status = (f"The sync is <b>{html.escape(s.report.status)}</b>"
                  + (" and verified." if s.verification is not None and s.verification.ok else
                     ".") if s.report is not None else "Nothing was pushed yet.")
        self.next_html.value = (f"<p>{status}</p><ol class='gs-wrap' style='padding-left:20px'>"
                                f"{''.join(items)}</ol>")
        return [self.next_html]
