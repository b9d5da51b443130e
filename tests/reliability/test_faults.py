"""Fault campaign at CI size: full syncs of the sample shop against a sandbox that injects 429s,
5xx, answers slower than the client timeout, and connections dropped before or after the request
was applied. After each run and the operator's settling rounds (re-plan + apply; uncertain event
batches checked in the sandbox, then resolved), the sandbox holds exactly the planned state,
every event exactly once, and the ledger agrees with it. bench/bench_faults.py runs the full
matrix (every mix at 1%, 10%, 30%) and prints the table.
"""
from __future__ import annotations

import pytest

from reliability_harness import (batch_events, check_state, duplicated_events, make_plan,
                                 run_cell, sample_export, sample_mapping, sandbox_event_counts)
from toolkit.braze.client import BrazeClient
from toolkit.sandbox.server import BrazeSandbox
from toolkit.sync.apply import apply
from toolkit.sync.ledger import Ledger

# (mix, rate): every fault kind at least once, the heavy mixes at 30%
CI_CELLS = [("everything", 0.30), ("drop after", 0.30), ("drop before", 0.30),
            ("slow > timeout", 0.30), ("5xx", 0.30), ("429 storm", 0.01)]


@pytest.mark.slow
@pytest.mark.parametrize("mix,rate", CI_CELLS, ids=[f"{m}@{r:.0%}" for m, r in CI_CELLS])
def test_full_sync_survives_faults(mix, rate, tmp_path):
    result = run_cell(mix, rate, seed=7, tmpdir=tmp_path)
    assert result.faults > 0, "the campaign must actually inject faults"
    assert result.retries > 0 or result.uncertain > 0
    assert result.mismatches == 0, result.examples
    assert result.duplicated == 0
    assert result.requests > 0


@pytest.mark.slow
def test_full_sync_survives_faults_with_the_ledger_on_postgresql(postgres_url, tmp_path):
    """The heaviest mix with the team ledger on the test server: the same guarantees."""
    result = run_cell("everything", 0.30, seed=11, tmpdir=tmp_path, ledger_url=postgres_url)
    assert result.faults > 0 and (result.retries > 0 or result.uncertain > 0)
    assert result.mismatches == 0, result.examples
    assert result.duplicated == 0


READ_BACK_CELLS = [("everything", 0.30), ("slow > timeout", 0.30)]


@pytest.mark.slow
@pytest.mark.parametrize("mix,rate", READ_BACK_CELLS,
                         ids=[f"{m}@{r:.0%}" for m, r in READ_BACK_CELLS])
def test_settle_decides_what_the_operator_would(mix, rate, tmp_path):
    """The same campaign, settled by `toolkit.settle` from Braze's read-back alone instead of an
    operator who can see the sandbox: every decision it makes is what really happened (checked
    in the harness), and the end state is the same — every event exactly once."""
    result = run_cell(mix, rate, seed=7, tmpdir=tmp_path, read_back=True)
    print(f"\n{mix}@{rate:.0%} settled by read-back: {result.uncertain} uncertain, "
          f"{result.landed} landed, {result.not_landed} not landed, {result.rounds} rounds, "
          f"{result.duplicated} duplicated")
    assert result.uncertain > 0 and result.landed + result.not_landed >= result.uncertain
    assert result.mismatches == 0, result.examples
    assert result.duplicated == 0


def test_uncertain_event_batches_are_reported_not_resent(tmp_path):
    """Every request dropped after Braze applied it: attribute batches are resent (harmless),
    event batches are reported as uncertain and not resent — neither by the client's retries,
    nor by applying the same plan again — until the operator decides."""
    export = sample_export()
    mapping = sample_mapping(export)
    with BrazeSandbox(seed=2) as sb:
        client = BrazeClient.for_sandbox(sb, backoff=(0.01, 0.02), seed=2, max_retries=2)
        with Ledger(client, directory=tmp_path) as ledger:
            p = make_plan(export, mapping, ledger, client)
            p.approve(by="tester", expires_in="1h")
            event_batches = [b for b in p.batches() if b.kind == "events"]
            assert event_batches
            sb.set_faults(rate_drop_after=1.0, endpoints=("/users/track",))
            first = apply(p, client, ledger, progress=False)
            assert first.status != "complete"
            assert sorted(u["batch"] for u in first.uncertain) == [b.id for b in event_batches]
            counts = sandbox_event_counts(sb)
            for b in event_batches:                     # each landed exactly once
                assert all(counts[k] == 1 for k in batch_events(p, b.id))
            assert duplicated_events(sb) == 0
            # the same plan again, faults gone: the uncertain batches stay held
            sb.set_faults(None)
            track_before = int((sb.request_log()["endpoint"] == "/users/track").sum())
            again = apply(p, client, ledger, progress=False)
            assert len(again.uncertain) == len(event_batches)
            assert again.counts["batches_uncertain"] == len(event_batches)
            assert duplicated_events(sb) == 0
            # only attribute batches (unknown outcome, safe to resend) were sent again
            sent_again = int((sb.request_log()["endpoint"] == "/users/track").sum()) - track_before
            assert sent_again == sum(1 for b in p.batches() if b.kind == "attributes")
            # a new plan leaves the held users' events out and says so
            replanned = make_plan(export, mapping, ledger, client)
            assert (replanned.operations["op"] == "event").sum() == 0
            assert replanned.findings.of("uncertain_events_held")
            # the operator checks Braze, sees they landed, and settles them
            for b in event_batches:
                ledger.resolve(p.id, b.id, landed=True)
            settled = make_plan(export, mapping, ledger, client)
            assert settled.is_empty
            assert check_state(sb, ledger, p).mismatches == 0
        client.close()


def test_operator_resend_after_verifying_nothing_landed(tmp_path):
    """Dropped *before* applying: the operator sees the events are absent and opts in to a
    resend (apply with resend_uncertain_events=True): each event then lands exactly once."""
    export = sample_export()
    mapping = sample_mapping(export)
    with BrazeSandbox(seed=4) as sb:
        client = BrazeClient.for_sandbox(sb, backoff=(0.01, 0.02), seed=4, max_retries=1)
        with Ledger(client, directory=tmp_path) as ledger:
            p = make_plan(export, mapping, ledger, client)
            p.approve(by="tester", expires_in="1h")
            sb.set_faults(rate_drop_before=1.0, endpoints=("/users/track",))
            first = apply(p, client, ledger, progress=False)
            assert first.uncertain and len(sb.events()) == 0
            sb.set_faults(None)
            uncertain = ledger.uncertain_events()
            counts = sandbox_event_counts(sb)
            assert all(counts[k] == 0 for b in uncertain["batch"] for k in batch_events(p, b))
            second = apply(p, client, ledger, progress=False, resend_uncertain_events=True)
            assert second.status == "complete", second
            assert duplicated_events(sb) == 0
            assert check_state(sb, ledger, p).mismatches == 0
            assert make_plan(export, mapping, ledger, client).is_empty
        client.close()


def test_faults_are_deterministic_for_a_seed(tmp_path):
    """The same seed replays the same faults: the campaign's figures are reproducible."""
    a = run_cell("drop after", 0.3, seed=21, tmpdir=tmp_path / "a")
    b = run_cell("drop after", 0.3, seed=21, tmpdir=tmp_path / "b")
    assert (a.faults, a.uncertain, a.landed, a.not_landed) == \
        (b.faults, b.uncertain, b.landed, b.not_landed)


def test_harness_notices_a_duplicate(tmp_path):
    """The invariant checks can fail: an event sent twice behind the toolkit's back is caught."""
    export = sample_export()
    mapping = sample_mapping(export)
    with BrazeSandbox(seed=6) as sb:
        client = BrazeClient.for_sandbox(sb)
        with Ledger(client, directory=tmp_path) as ledger:
            p = make_plan(export, mapping, ledger, client)
            p.approve(by="tester", expires_in="1h")
            apply(p, client, ledger, progress=False)
            batch = next(b for b in p.batches() if b.kind == "events")
            client.track(**p.payload(batch))             # a rogue resend
            check = check_state(sb, ledger, p)
            assert check.duplicated_events == batch.objects
            client.track(attributes=[{"external_id": "u_rogue", "vip_customer": True}])
            assert check_state(sb, ledger, p).mismatches >= 1
        client.close()
