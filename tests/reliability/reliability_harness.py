"""Shared machinery of the reliability suite and bench/bench_faults.py: the sample-shop sync, an
operator who settles uncertain event batches by checking the sandbox, and the invariants
(profiles equal the planned state, every event exactly once, the ledger agrees with Braze).

Kept free of pytest so the benchmark can run the same campaign at a larger size.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "samples" / "profiles_sync"
# The plan's event time: fixed, so a resent event is recognisably the same event.
EVENT_TIME = "2026-11-27T06:00:00Z"

# Fault mixes of the campaign: name -> the sandbox Faults fields at a total rate of 1.0 (scaled).
FAULT_MIXES: dict[str, dict[str, float]] = {
    "429 storm": {"rate_429": 1.0},
    "5xx": {"rate_500": 1 / 3, "rate_502": 1 / 3, "rate_503": 1 / 3},
    "slow > timeout": {"rate_slow": 1.0},
    "drop before": {"rate_drop_before": 1.0},
    "drop after": {"rate_drop_after": 1.0},
    "everything": {"rate_429": 1 / 7, "rate_500": 1 / 7, "rate_502": 1 / 7, "rate_503": 1 / 7,
                   "rate_slow": 1 / 7, "rate_drop_before": 1 / 7, "rate_drop_after": 1 / 7},
}


@lru_cache(maxsize=1)
def sample_export():
    """The bundled sample shop (2,000 profiles, 3 audiences, 5 traits)."""
    from toolkit.engage.readers import load

    return load(SAMPLE)


def sample_mapping(export):
    """Attributes for everything, plus events that must never double: two audiences as
    enter/exit events and one trait as "Trait Computed" events."""
    from toolkit.mapping import Mapping

    m = Mapping.from_export(export)
    for key in ("vip_customer", "dormant_shopper"):
        m = m.set(key, send_as="both")
    return m.set("total_revenue_180_days", send_as="both")


def faults_for(mix: str, rate: float, *, slow_seconds: float) -> dict[str, Any]:
    spec = {k: v * rate for k, v in FAULT_MIXES[mix].items()}
    return {**spec, "slow_seconds": slow_seconds, "endpoints": ("/users/track",)}


def make_plan(export, mapping, ledger, client, **options):
    from toolkit.sync.plan import plan

    options.setdefault("create_users", True)
    options.setdefault("event_time", EVENT_TIME)
    # bench_faults --diff-at: run every campaign plan's diff in the ledger's server (or here)
    options.setdefault("diff_at", os.environ.get("TOOLKIT_CAMPAIGN_DIFF_AT", "auto"))
    return plan(export, mapping, ledger, workspace=client, **options)


# -- what the sandbox holds ------------------------------------------------------------------

def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def event_key(uid: str, name: str, properties: Any) -> tuple[str, str, str]:
    return (uid, name, _canon(properties or {}))


def sandbox_event_counts(sb) -> Counter:
    """(external_id, name, properties) -> how many times the sandbox stored that event."""
    ev = sb.events()
    return Counter(event_key(f"external_id:{x}", n, p)
                   for x, n, p in zip(ev["external_id"], ev["name"], ev["properties"]))


def planned_events(plan) -> list[tuple[str, str, str]]:
    ops = plan.operations
    ev = ops[ops["op"] == "event"]
    return [event_key(u, n, json.loads(v)) for u, n, v in zip(ev["uid"], ev["name"], ev["value"])]


def batch_events(plan, batch_id: str) -> list[tuple[str, str, str]]:
    batch = next(b for b in plan.batches() if b.id == batch_id)
    body = plan.payload(batch)
    return [event_key(f"external_id:{e['external_id']}", e["name"], e["properties"])
            for e in body["events"]]


# -- the operator ----------------------------------------------------------------------------

@dataclass
class Settlement:
    """What it took to bring Braze to the planned state."""

    rounds: int = 0
    reports: list = field(default_factory=list)
    resolved_landed: int = 0
    resolved_not_landed: int = 0
    uncertain_reported: int = 0
    undecided_answers: int = 0      # read-back answers "not yet" (within the wait)

    @property
    def requests(self) -> int:
        return sum(r.client_stats.get("requests", 0) for r in self.reports)

    @property
    def retries(self) -> int:
        return sum(r.client_stats.get("retries", 0) for r in self.reports)


def decide_uncertain(sb, ledger, plans: dict, settlement: Settlement) -> None:
    """For each event batch whose fate is unknown, look in Braze (the sandbox) whether its
    events are there — all or none, since Braze applies a request as a whole — and record the
    decision in the ledger, as an operator would."""
    uncertain = ledger.uncertain_events()
    if not len(uncertain):
        return
    counts = sandbox_event_counts(sb)
    for plan_id, batch_id in zip(uncertain["plan"], uncertain["batch"]):
        wanted = batch_events(plans[plan_id], batch_id)
        present = [counts[k] > 0 for k in wanted]
        if all(present):
            ledger.resolve(plan_id, batch_id, landed=True)
            settlement.resolved_landed += 1
        elif not any(present):
            ledger.resolve(plan_id, batch_id, landed=False)
            settlement.resolved_not_landed += 1
        else:
            raise AssertionError(f"batch {batch_id} of plan {plan_id} landed partly: "
                                 f"{sum(present)} of {len(present)} events")


def settle_by_read_back(sb, client, ledger, plans: dict, settlement: Settlement, *,
                        wait_s: float) -> None:
    """Decide the uncertain batches with `toolkit.settle` (Braze's read-back, ``wait_s`` as the
    read-after-write wait), and check every decision it makes against what the sandbox really
    stored; batches it leaves undecided are asked again until decided."""
    from toolkit.sync.settle import settle as read_back

    deadline = time.monotonic() + 30
    while len(ledger.uncertain_events()):
        report = read_back(ledger, client, wait=wait_s)
        counts = sandbox_event_counts(sb)      # what really happened, looked at afterwards
        for d in report.decisions:
            if d["decision"] != "undecided":
                present = [counts[k] > 0 for k in batch_events(plans[d["plan"]], d["batch"])]
                real = ("landed" if all(present) else "not landed" if not any(present)
                        else "partly")
                assert d["decision"] == real, (d, real)
                if real == "landed":
                    settlement.resolved_landed += 1
                else:
                    settlement.resolved_not_landed += 1
            else:
                settlement.undecided_answers += 1
        if report.undecided:
            assert time.monotonic() < deadline, f"settle never decided: {report.lines()}"
            time.sleep(0.2)


def settle(sb, client, ledger, export, mapping, *, first_plan, quiet_s: float = 0.0,
           max_rounds: int = 12, apply_options: dict | None = None,
           read_back_wait_s: float | None = None) -> Settlement:
    """Apply ``first_plan`` (approved), then re-plan, decide uncertain batches and apply until
    the plan is empty and nothing is uncertain. ``quiet_s``: how long to wait before looking at
    the sandbox, so requests the client gave up on (slow answers) have landed. With
    ``read_back_wait_s``, `toolkit.settle` decides instead of the all-seeing operator (each of
    its decisions is checked against the sandbox)."""
    from toolkit.sync.apply import apply

    apply_options = {"progress": False, **(apply_options or {})}
    out = Settlement()
    plans = {first_plan.id: first_plan}
    report = apply(first_plan, client, ledger, **apply_options)
    out.reports.append(report)
    out.uncertain_reported += len(report.uncertain)
    for _ in range(max_rounds):
        out.rounds += 1
        if read_back_wait_s is not None:
            settle_by_read_back(sb, client, ledger, plans, out, wait_s=read_back_wait_s)
        else:
            if quiet_s:
                time.sleep(quiet_s)
            decide_uncertain(sb, ledger, plans, out)
        p = make_plan(export, mapping, ledger, client, **_plan_options(first_plan))
        if p.is_empty and not len(ledger.uncertain_events()):
            return out
        p.approve(by="reliability operator", expires_in="1h")
        plans[p.id] = p
        report = apply(p, client, ledger, **apply_options)
        out.reports.append(report)
        out.uncertain_reported += len(report.uncertain)
    raise AssertionError(f"the sync did not settle in {max_rounds} rounds")


def _plan_options(p) -> dict:
    o = p.options
    return {"create_users": o["create_users"], "batch_size": o["batch_size"],
            "combined_limit": o["combined_limit"]}


# -- invariants ------------------------------------------------------------------------------

@dataclass
class Check:
    """Differences between the planned state, the sandbox and the ledger (all must be 0)."""

    attribute_mismatches: int
    missing_events: int
    duplicated_events: int
    unexpected_events: int
    ledger_mismatches: int
    examples: list

    @property
    def mismatches(self) -> int:
        return (self.attribute_mismatches + self.missing_events + self.unexpected_events
                + self.ledger_mismatches)


def check_state(sb, ledger, first_plan) -> Check:
    """Compare the sandbox and the ledger with the state ``first_plan`` (made from an empty
    ledger, so it holds every value) asked for."""
    ops = first_plan.operations
    examples: list = []
    # attributes: every planned value is what the sandbox holds
    attrs = ops[ops["op"] == "attribute"]
    prof = sb.profiles().set_index("external_id")
    bad_attr = 0
    for uid, name, value in zip(attrs["uid"], attrs["name"], attrs["value"]):
        ext = uid.split(":", 1)[1]
        want = json.loads(value)
        have = prof.at[ext, name] if ext in prof.index and name in prof.columns else None
        if _norm(have) != _norm(want):
            bad_attr += 1
            if len(examples) < 5:
                examples.append(("attribute", uid, name, want, have))
    extra_users = len(set(prof.index) - {u.split(":", 1)[1] for u in ops["uid"]})
    bad_attr += extra_users
    # events: each planned event exactly once, nothing else
    want_events = Counter(planned_events(first_plan))
    have_events = sandbox_event_counts(sb)
    missing = sum(max(0, n - have_events[k]) for k, n in want_events.items())
    duplicated = sum(max(0, n - want_events[k]) for k, n in have_events.items()
                     if k in want_events)
    unexpected = sum(n for k, n in have_events.items() if k not in want_events)
    if missing and len(examples) < 5:
        examples.append(("missing events", missing))
    # ledger: what it says Braze acknowledged is what Braze holds
    bad_ledger = 0
    for fld, group in ops.groupby("field"):
        state = ledger.state(fld)
        for uid, after in zip(group["uid"], group["after"]):
            have = state.get(uid)
            if have != after:
                bad_ledger += 1
                if len(examples) < 5:
                    examples.append(("ledger", fld, uid, after, have))
    return Check(bad_attr, missing, duplicated, unexpected, bad_ledger, examples)


def _norm(value: Any) -> Any:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def duplicated_events(sb) -> int:
    return sum(n - 1 for n in sandbox_event_counts(sb).values() if n > 1)


# -- one campaign cell -----------------------------------------------------------------------

@dataclass
class CellResult:
    mix: str
    rate: float
    faults: int
    requests: int
    retries: int
    rounds: int
    uncertain: int
    landed: int
    not_landed: int
    mismatches: int
    duplicated: int
    seconds: float
    examples: list


def fresh_ledger_url(url: str) -> str:
    """``url`` (a PostgreSQL ledger URL) with a schema of its own: one campaign run's ledger."""
    import uuid

    return f"{url}{'&' if '?' in url else '?'}schema=campaign_{uuid.uuid4().hex[:10]}"


def run_cell(mix: str, rate: float, *, seed: int, tmpdir: Path, timeout: float = 0.4,
             slow_seconds: float = 0.8, batch_size: int = 75,
             read_back: bool = False, ledger_url: str | None = None) -> CellResult:
    """A full sync of the sample shop against a sandbox injecting ``mix`` at ``rate``, settled
    by the operator (or, with ``read_back``, by `toolkit.settle`, each decision checked against
    the sandbox), with every invariant checked. ``ledger_url``: keep the ledger on that
    PostgreSQL server (a fresh schema) instead of a SQLite file."""
    from toolkit.braze.client import BrazeClient
    from toolkit.sandbox.server import BrazeSandbox
    from toolkit.sync.ledger import Ledger

    export = sample_export()
    mapping = sample_mapping(export)
    t0 = time.monotonic()
    with BrazeSandbox(seed=seed, faults=faults_for(mix, rate, slow_seconds=slow_seconds),
                      rate_limits={"/users/track": (3000, 1.0)}) as sb:
        client = BrazeClient.for_sandbox(sb, backoff=(0.01, 0.1), timeout=timeout, seed=seed,
                                         max_retries=6)
        where = fresh_ledger_url(ledger_url) if ledger_url else client
        with Ledger(where, workspace=client, directory=tmpdir) as ledger:
            first = make_plan(export, mapping, ledger, client, batch_size=batch_size)
            first.approve(by="reliability", expires_in="1h")
            # answers the client gave up on land later: wait for them before looking
            quiet = slow_seconds + 0.2 if FAULT_MIXES[mix].get("rate_slow") and rate else 0.0
            # toolkit.settle's wait: past the moment an answer the client gave up on lands
            wait = (slow_seconds + 0.3) if read_back else None
            s = settle(sb, client, ledger, export, mapping, first_plan=first, quiet_s=quiet,
                       read_back_wait_s=wait)
            if quiet:
                time.sleep(quiet)
            check = check_state(sb, ledger, first)
            log = sb.request_log()
            faults = int(log["fault"].notna().sum())
        client.close()
    return CellResult(mix, rate, faults, s.requests, s.retries, s.rounds, s.uncertain_reported,
                      s.resolved_landed, s.resolved_not_landed, check.mismatches,
                      check.duplicated_events, round(time.monotonic() - t0, 2), check.examples)


# ---------------------------------------------------------------------------------------------
# saved plans as one editable dict: the manifest plus ``operations`` as columns

def plan_as_data(manifest: Path) -> dict:
    """A saved plan's manifest with its operations file read in as ``operations`` columns (and
    the bytes of that file and of the left-out file kept, so an unedited plan is written back
    byte for byte)."""
    import pyarrow.parquet as pq

    data = json.loads(Path(manifest).read_text())
    ops_path = Path(manifest).with_name(data["operations_file"])
    table = pq.read_table(ops_path)
    data["operations"] = {c: table.column(c).to_pylist() for c in table.column_names}
    data[OPERATIONS_AS_READ] = (ops_path.read_bytes(), json.dumps(data["operations"]))
    left = Path(manifest).with_name(data["left_out_file"])
    data[LEFT_OUT_AS_READ] = left.read_bytes() if left.exists() else None
    return data


OPERATIONS_AS_READ = "operations file as read"
LEFT_OUT_AS_READ = "left-out file as read"


def write_plan_data(manifest: Path, data: dict) -> Path:
    """Write ``data`` (as `plan_as_data` returns it, perhaps edited) back as a plan's files:
    the operations file as it was read when its operations are unedited (the fingerprint is
    over the file's bytes), else encoded anew."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = dict(data)
    ops = data.pop("operations")
    as_read, as_read_ops = data.pop(OPERATIONS_AS_READ, (None, None))
    left_out = data.pop(LEFT_OUT_AS_READ, None)
    if left_out is not None:
        Path(manifest).with_name(data["left_out_file"]).write_bytes(left_out)
    ops_path = Path(manifest).with_name(data["operations_file"])
    if as_read is not None and json.dumps(ops) == as_read_ops:
        ops_path.write_bytes(as_read)
    else:
        pq.write_table(pa.table({c: pa.array(v, pa.int64() if c == "batch" else pa.string())
                                 for c, v in ops.items()}), ops_path)
    Path(manifest).write_text(json.dumps(data))
    return Path(manifest)
