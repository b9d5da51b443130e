"""Apply against the sandbox: full sync, zero re-send, deltas, exits, rejects, refusals, faults,
uncertain events, cohorts, verify, and no secrets in anything saved."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from .builders import AUDIENCES, edit_operations, make_export
from toolkit.braze.client import BrazeClient
from toolkit.errors import (LedgerMoved, PlanAltered, PlanExpired, PlanNotApproved,
                            PlanWorkspaceMismatch)
from toolkit.mapping import Mapping
from toolkit.sandbox.server import BrazeSandbox
from toolkit.sync.apply import SyncReport, apply
from toolkit.sync.ledger import Ledger
from toolkit.sync.plan import Plan, plan
from toolkit.sync.verify import verify


def _mapping(export, events=("vip_customer",)):
    m = Mapping.from_export(export)
    for key in events:
        m = m.set(key, send_as="both")
    return m


def _sync(export, mapping, client, ledger, **options):
    options.setdefault("create_users", True)
    p = plan(export, mapping, ledger, workspace=client, **options).approve(by="tester")
    return p, apply(p, client, ledger, progress=False)


def _track_requests(sb) -> int:
    log = sb.request_log()
    return int((log["endpoint"] == "/users/track").sum())


def _attrs(sb) -> pd.DataFrame:
    return sb.profiles().set_index("external_id")


def _event_counts(sb) -> pd.Series:
    ev = sb.events()
    return ev.groupby(["external_id", "name"]).size()


def _planned_events(p) -> pd.Series:
    ev = p.operations[p.operations["op"] == "event"]
    return ev.assign(external_id=ev["uid"].str.split(":", n=1).str[1]).groupby(
        ["external_id", "name"]).size()


def _members(export, key):
    p = export.profiles
    return set(p.loc[p[key].fillna(False).astype(bool) & p["user_id"].notna(), "user_id"])


def _changed(export, **edits):
    profiles = export.profiles.copy()
    for key, (rows, value) in edits.items():
        profiles.loc[rows, key] = value
    return type(export)(profiles=profiles, computations=export.computations,
                        snapshot_at=export.snapshot_at, source=export.source)


def test_full_sync_puts_the_plan_into_braze(export, sandbox, client, ledger):
    mapping = _mapping(export)
    p, report = _sync(export, mapping, client, ledger)
    assert report.status == "complete" and report.exit_code == 0
    attrs = _attrs(sandbox)
    assert len(attrs) == 200
    for key in AUDIENCES:
        assert set(attrs.index[attrs[key].eq(True)]) == _members(export, key)
        assert not attrs[key].eq(False).any(), "non-members are left unset, not written"
    identified = export.profiles[export.profiles["user_id"].notna()]
    expected_revenue = identified.set_index("user_id")["total_revenue_180_days"].astype(float)
    got = attrs["total_revenue_180_days"].astype(float)
    assert np.allclose(got.sort_index(), expected_revenue.sort_index())
    counts = _event_counts(sandbox)
    entered = counts.xs("Audience Entered", level="name")
    assert set(entered.index) == _members(export, "vip_customer") and entered.max() == 1
    assert report.data_points == sandbox.data_points == p.cost()["data_points"]
    assert report.summary()["acknowledged"] == p.cost()["attribute_objects"] + p.cost()["events"]
    assert report.client_stats["requests"] == p.cost()["requests"] == _track_requests(sandbox)
    check = verify(report, client, sample=30)
    assert check.ok and check.users_checked == 30, check.mismatches
    assert "Verification" in check._repr_html_() and len(check.to_frame()) > 30


def test_a_second_run_plans_and_sends_nothing(export, sandbox, client, ledger):
    mapping = _mapping(export)
    _sync(export, mapping, client, ledger)
    before, points = _track_requests(sandbox), sandbox.data_points
    again, report = _sync(export, mapping, client, ledger)
    assert again.is_empty and report.status == "complete"
    assert _track_requests(sandbox) == before and sandbox.data_points == points
    assert report.client_stats["requests"] == 0


def test_a_one_percent_change_sends_only_those_users(sandbox, client, ledger):
    export = make_export(1000, seed=3)
    mapping = _mapping(export)
    _sync(export, mapping, client, ledger)
    points = sandbox.data_points
    profiles = export.profiles
    inside = np.flatnonzero(profiles["dormant_shopper"].fillna(False).to_numpy(bool))[:5]
    outside = np.flatnonzero(~profiles["dormant_shopper"].fillna(False).to_numpy(bool))[:5]
    changed = _changed(export, dormant_shopper=(list(inside), False))
    changed = _changed(changed, dormant_shopper=(list(outside), True))
    p, report = _sync(changed, mapping, client, ledger)
    assert p.operations["uid"].nunique() == 10
    assert sandbox.data_points - points == 10 == report.data_points
    attrs = _attrs(sandbox)
    assert set(attrs.index[attrs["dormant_shopper"].eq(True)]) == _members(changed,
                                                                           "dormant_shopper")
    assert set(attrs.index[attrs["dormant_shopper"].eq(False)]) == {
        f"u{i:05d}" for i in inside}


def test_exits_are_sent_as_attribute_and_event(export, sandbox, client, ledger):
    mapping = _mapping(export)
    _sync(export, mapping, client, ledger)
    vip = sorted(_members(export, "vip_customer"))[:4]
    rows = export.profiles.index[export.profiles["user_id"].isin(vip)]
    _sync(_changed(export, vip_customer=(list(rows), False)), mapping, client, ledger)
    attrs = _attrs(sandbox)
    assert attrs.loc[vip, "vip_customer"].eq(False).all()
    counts = _event_counts(sandbox)
    exited = counts.xs("Audience Exited", level="name")
    assert set(exited.index) == set(vip) and exited.max() == 1
    assert counts.xs("Audience Entered", level="name").max() == 1


def test_rejects_map_to_profiles_and_fields_and_stay_pending(export, sandbox, client, ledger):
    # Braze already locked last_product_viewed_item to a number (another source wrote it).
    client.track(attributes=[{"external_id": "someone-else", "last_product_viewed_item": 5}])
    mapping = _mapping(export)
    p, report = _sync(export, mapping, client, ledger)
    assert report.status == "partial" and report.exit_code == 1
    rejected = report.rejected_frame()
    has_product = export.profiles["last_product_viewed_item"].notna() & \
        export.profiles["user_id"].notna()
    want = set(export.profiles.loc[has_product, "segment_id"])
    assert set(rejected["segment_id"]) == want
    assert rejected["fields"].str.contains("last_product_viewed_item").all()
    assert rejected["reason"].str.contains("data type").all()
    assert (rejected["array"] == "attributes").all()
    # rejected users' changes stay out of the ledger: the next plan offers them again
    again = plan(export, mapping, ledger, workspace=client, create_users=True)
    assert set(again.operations["segment_id"]) == want
    assert set(again.operations["op"]) == {"attribute"}


def test_refusals_send_nothing(export, sandbox, client, ledger, tmp_path):
    mapping = _mapping(export)
    p = plan(export, mapping, ledger, workspace=client, create_users=True)
    with pytest.raises(PlanNotApproved):
        apply(p, client, ledger, progress=False)
    p.approve(by="tester", expires_in=1)
    time.sleep(1.05)
    with pytest.raises(PlanExpired):
        apply(p, client, ledger, progress=False)
    p.approve(by="tester")
    p.approval["expires_at"] = (datetime.now(timezone.utc) + timedelta(days=365)).isoformat()
    with pytest.raises(PlanAltered, match="approval record was edited"):
        apply(p, client, ledger, progress=False)
    p.approve(by="tester")
    saved = p.save(tmp_path / "plan.json")
    original = p.operations.loc[0, "value"]
    edit_operations(saved, lambda f: f.__setitem__(
        "value", ["false" if original != "false" else "true"] + list(f["value"][1:])))
    with pytest.raises(PlanAltered):
        apply(Plan.load(saved), client, ledger, progress=False)
    p.save(saved)   # the approved bytes back
    p = Plan.load(saved)
    with BrazeSandbox() as other, BrazeClient.for_sandbox(other) as elsewhere:
        with pytest.raises(PlanWorkspaceMismatch):
            apply(p, elsewhere, progress=False)
        assert _track_requests(other) == 0
    # another plan acknowledged changes since this one was made
    q = plan(make_export(5, seed=9), mapping, ledger, workspace=client, create_users=True)
    apply(q.approve(by="tester"), client, ledger, progress=False)
    requests = _track_requests(sandbox)
    with pytest.raises(LedgerMoved):
        apply(p, client, ledger, progress=False)
    assert _track_requests(sandbox) == requests == q.cost()["requests"]


def test_429_storms_and_5xx_are_retried_to_completion(sandbox, client, ledger):
    export = make_export(300, seed=4)
    # a short window keeps each 429 pause (until x-ratelimit-reset) under a second
    sandbox.set_rate_limit("/users/track", 3000, 0.5)
    sandbox.set_faults(rate_429=0.2, rate_500=0.1, rate_503=0.1, endpoints=("/users/track",))
    p, report = _sync(export, _mapping(export), client, ledger, batch_size=50)
    assert report.status == "complete"
    s = report.summary()
    assert s["retries"] > 0 and s["429s"] > 0
    assert report.client_stats["server_errors"] > 0
    attrs = _attrs(sandbox)
    for key in AUDIENCES:
        assert set(attrs.index[attrs[key].eq(True)]) == _members(export, key)
    assert _event_counts(sandbox).max() == 1
    timeline = report.throughput_frame()
    assert timeline["acknowledged"].is_monotonic_increasing
    assert timeline["acknowledged"].iloc[-1] == report.counts["objects_acknowledged"]
    assert timeline["requests"].iloc[-1] == report.client_stats["requests"]


def test_unknown_event_outcomes_are_held_for_a_decision(export, sandbox, client, ledger):
    mapping = _mapping(export, events=AUDIENCES)
    # every request is applied, then the connection drops: Braze has it, we never hear back
    sandbox.set_faults(rate_drop_after=1.0, endpoints=("/users/track",))
    client.max_retries = 1
    p, report = _sync(export, mapping, client, ledger, batch_size=40)
    assert report.status == "partial" and report.exit_code == 3   # uncertain events: settle
    events = [b for b in p.batches() if b.kind == "events"]
    assert {r["batch"] for r in report.uncertain} == {b.id for b in events}
    planned = _planned_events(p)
    assert _event_counts(sandbox).equals(planned), \
        "an event batch with an unknown outcome is never resent"
    sandbox.set_faults(None)
    # re-applying the same plan resends attributes but still holds the events
    again = apply(p, client, ledger, progress=False)
    assert _event_counts(sandbox).equals(planned)
    assert again.counts["batches_uncertain"] == len(events)
    assert all(r["status"] == "acknowledged" for r in again.batches)
    # a new plan leaves those events out (with a finding) until they are settled
    later = plan(export, mapping, ledger, workspace=client, create_users=True)
    assert later.findings.of("uncertain_events_held") and later.is_empty
    for row in ledger.uncertain_events().itertuples():
        ledger.resolve(row.plan, row.batch, landed=True)   # we checked: Braze has them
    final = plan(export, mapping, ledger, workspace=client, create_users=True)
    assert final.is_empty and not final.findings.of("uncertain_events_held")


def test_resend_uncertain_events_is_an_explicit_choice(export, sandbox, client, ledger):
    mapping = _mapping(export, events=("vip_customer",))
    sandbox.set_faults(rate_drop_before=1.0, endpoints=("/users/track",))
    client.max_retries = 0
    p, report = _sync(export, mapping, client, ledger)
    assert report.uncertain and report.status == "partial" and report.exit_code == 3
    assert _event_counts(sandbox).empty, "dropped before Braze applied anything"
    sandbox.set_faults(None)
    # dropped *before* applying: nothing landed, so the analyst opts in to resend
    done = apply(p, client, ledger, resend_uncertain_events=True, progress=False)
    assert done.status == "complete"
    entered = _event_counts(sandbox).xs("Audience Entered", level="name")
    assert set(entered.index) == _members(export, "vip_customer") and entered.max() == 1


def test_cohort_route_with_partner_credentials(export, sandbox, client, ledger):
    mapping = Mapping.from_export(export).set("vip_customer", send_as="cohort",
                                              cohort_name="VIP customers")
    p, report = _sync(export, mapping, client, ledger)
    assert report.status == "complete", report.batches
    cohorts = sandbox.cohorts().set_index("cohort_id")
    assert cohorts.loc["aud_vip_customer", "name"] == "VIP customers"
    assert set(cohorts.loc["aud_vip_customer", "members"]) == _members(export, "vip_customer")
    leaving = sorted(_members(export, "vip_customer"))[:3]
    rows = export.profiles.index[export.profiles["user_id"].isin(leaving)]
    p2, report2 = _sync(_changed(export, vip_customer=(list(rows), False)), mapping, client,
                        ledger)
    assert set(p2.operations["change"]) == {"remove"}
    members = set(sandbox.cohorts().set_index("cohort_id").loc["aud_vip_customer", "members"])
    assert members == _members(export, "vip_customer") - set(leaving)


def test_combined_limit_mode_fits_the_contract(export, client, ledger):
    with BrazeSandbox(combined_limit=50) as sb, BrazeClient.for_sandbox(sb) as c2, \
            Ledger(c2, directory=ledger.path.parent.parent) as led2:
        p, report = _sync(export, _mapping(export), c2, led2, combined_limit=50)
        assert report.status == "complete"
        assert sb.request_log()["objects"].max() <= 50


def test_verify_finds_a_value_that_differs(export, sandbox, client, ledger):
    p, report = _sync(export, _mapping(export), client, ledger)
    victim = sorted(e["braze_user"] for e in report.expected)[0].split(":", 1)[1]
    client.track(attributes=[{"external_id": victim, "total_revenue_180_days": -1.0}])
    check = verify(report, client, sample=10)
    assert not check.ok
    bad = check.mismatches
    assert list(bad["braze_user"]) == [f"external_id:{victim}"]
    assert list(bad["name"]) == ["total_revenue_180_days"]


@pytest.mark.parametrize("sample", [3, 20, 10_000])
def test_the_verify_sample_is_the_users_of_smallest_hash_however_it_is_asked(
        export, client, ledger, monkeypatch, sample):
    """The sample asks first among users under a hash bound; it must be the very sample the
    question over every user gives (and fall back to that when too few pass the bound)."""
    import toolkit.sync.apply as apply_module

    monkeypatch.setattr(apply_module, "EXPECTED_SAMPLE", sample)
    p, report = _sync(export, _mapping(export), client, ledger)
    users = p.manifest["cost"]["users"]
    assert users > 4 * 3
    p.manifest["cost"] = {**p.manifest["cost"], "users": 0}      # no bound: every user asked
    run = type("Run", (), {"acked": [b.index for b in p.batches()], "rejected_users": set()})
    everyone = apply_module._expected_sample(p, run)
    p.manifest["cost"]["users"] = users
    assert apply_module._expected_sample(p, run) == everyone == report.expected
    assert len(everyone) == min(sample, users)


def test_report_round_trip_and_no_secrets_anywhere(export, sandbox, client, ledger, tmp_path):
    mapping = _mapping(export).set("dormant_shopper", send_as="cohort")
    p, report = _sync(export, mapping, client, ledger)
    report.save(tmp_path / "report.json")
    again = SyncReport.load(tmp_path / "report.json")
    assert again.summary() == report.summary() and again.expected == report.expected
    assert verify(tmp_path / "report.json", client, sample=5).ok
    p.save(tmp_path / "plan.json")
    texts = [(tmp_path / "report.json").read_bytes(), (tmp_path / "plan.json").read_bytes(),
             ledger.path.read_bytes(), repr(report).encode(), report._repr_html_().encode(),
             repr(p).encode(), p._repr_html_().encode()]
    wal = ledger.path.with_name(ledger.path.name + "-wal")
    if wal.exists():
        texts.append(wal.read_bytes())
    for secret in (sandbox.api_key, sandbox.partner_api_key, sandbox.client_secret):
        assert not any(secret.encode() in t for t in texts)
    assert "Sync report" in report._repr_html_()
    assert list(report.to_frame().columns)[:3] == ["batch", "kind", "status"]


def test_a_corrupt_ledger_stops_apply_before_anything_is_sent(export, sandbox, client, ledger,
                                                              tmp_path):
    from toolkit.errors import LedgerError

    p = plan(export, _mapping(export), ledger, workspace=client, create_users=True)
    p.approve(by="tester")
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"garbage" * 1000)
    with pytest.raises(LedgerError) as err:
        apply(p, client, str(broken), progress=False)
    assert str(broken) in str(err.value) and err.value.hint
    assert _track_requests(sandbox) == 0
