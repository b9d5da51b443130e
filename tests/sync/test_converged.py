"""The unchanged daily run: after a complete sync the ledger records the export's input digest,
and planning the very same input again answers from that record (no projection, no diff) — only
when the answer is exactly what the full path gives."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from .builders import make_export
from toolkit.errors import PlanAltered
from toolkit.mapping import Mapping
from toolkit.sync import plan as plan_module
from toolkit.sync.apply import apply
from toolkit.sync.plan import Plan, plan
from toolkit.sync.projection import input_digest


@pytest.fixture
def export():
    """Identified, anonymous and email-only profiles, two sharing an identifier, a refused value."""
    ex = make_export(120, anonymous=4, email_only=3)
    profiles = ex.profiles
    profiles.loc[7, "user_id"] = profiles.loc[8, "user_id"]          # row 8 wins u00008
    profiles.loc[9, "last_product_viewed_item"] = "x" * 300            # over Braze's 255
    return ex


def _mapping(export):
    return Mapping.from_export(export).set("vip_customer", send_as="both")


def _sync(export, mapping, client, ledger, **options):
    p = plan(export, mapping, ledger, workspace=client, create_users=True, **options)
    return p, apply(p.approve(by="tester"), client, ledger, progress=False)


def _the_long_way(export, mapping, client, ledger, **options):
    """The same plan with the convergence record set aside (and put back after)."""
    record = ledger._meta("converged")
    ledger._write(lambda c: c.execute("DELETE FROM meta WHERE key = 'converged'"))
    try:
        return plan(export, mapping, ledger, workspace=client, create_users=True, **options)
    finally:
        ledger._write(lambda c: c.execute("INSERT OR REPLACE INTO meta VALUES ('converged', ?)",
                                          (record,)))


def _no_projection(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the projection ran")
    monkeypatch.setattr(plan_module, "project", refuse)


def _edited(export, edit):
    profiles = export.profiles.copy()
    edit(profiles)
    return type(export)(profiles=profiles, computations=export.computations,
                        snapshot_at=export.snapshot_at, source=export.source)


def test_an_unchanged_export_after_a_complete_apply_is_answered_from_the_ledger(
        export, client, ledger, monkeypatch):
    mapping = _mapping(export)
    first, report = _sync(export, mapping, client, ledger)
    assert report.status == "complete" and not first.is_empty
    full = _the_long_way(export, mapping, client, ledger)
    _no_projection(monkeypatch)
    again = plan(export, mapping, ledger, workspace=client, create_users=True)
    assert again.is_empty and again.manifest["converged_with"] == first.id
    # exactly what the full path says: findings, left-out profiles, sizes
    assert [str(f) for f in again.findings] == [str(f) for f in full.findings]
    assert {"shared_identifier", "invalid_value", "anonymous_only"} <= {
        f.code for f in again.findings}
    pd.testing.assert_frame_equal(again.left_out, full.left_out)
    for key in ("profiles", "users", "fields", "field_digest", "cohorts", "input_digest"):
        assert again.manifest[key] == full.manifest[key], key
    assert full.is_empty and "converged_with" not in full.manifest


@pytest.mark.parametrize("change", [
    "trait value", "audience membership", "row order", "mapping", "option", "value type"])
def test_anything_the_projection_reads_changes_the_digest(export, change):
    mapping = _mapping(export)
    base = input_digest(export, mapping)
    options = {}
    if change == "trait value":
        export = _edited(export, lambda p: p.__setitem__("total_revenue_180_days", p[
            "total_revenue_180_days"].where(p.index != 3, 1.5)))
    elif change == "audience membership":
        export = _edited(export, lambda p: p.__setitem__("vip_customer", p[
            "vip_customer"].where(p.index != 3, ~p.loc[3, "vip_customer"])))
    elif change == "row order":   # the shared identifier's winner changes with the order
        export = type(export)(profiles=export.profiles.iloc[::-1].reset_index(drop=True),
                              computations=export.computations, snapshot_at=export.snapshot_at)
    elif change == "mapping":
        mapping = mapping.set("dormant_shopper", send_as="event")
    elif change == "option":
        options = {"email_opt_in": True}
    elif change == "value type":
        comps = export.computations.copy()
        comps.loc[comps["key"] == "total_revenue_180_days", "value_type"] = "string"
        export = type(export)(profiles=export.profiles, computations=comps,
                              snapshot_at=export.snapshot_at)
    assert input_digest(export, mapping, **options) != base


def test_a_changed_export_takes_the_full_path_and_sends_the_change(export, client, ledger):
    mapping = _mapping(export)
    _sync(export, mapping, client, ledger)
    changed = _edited(export, lambda p: p.__setitem__("total_revenue_180_days", p[
        "total_revenue_180_days"].where(p.index != 3, 1.5)))
    p = plan(changed, mapping, ledger, workspace=client, create_users=True)
    assert "converged_with" not in p.manifest
    assert list(p.operations["value"]) == ["1.5"]


def test_a_partial_apply_records_nothing(export, sandbox, client, ledger):
    # Braze already locked last_product_viewed_item to a number: its values are rejected
    client.track(attributes=[{"external_id": "someone-else", "last_product_viewed_item": 5}])
    mapping = _mapping(export)
    _, report = _sync(export, mapping, client, ledger)
    assert report.status == "partial"
    assert ledger.converged(input_digest(export, mapping)) is None
    again = plan(export, mapping, ledger, workspace=client, create_users=True)
    assert "converged_with" not in again.manifest and not again.is_empty   # rejected, re-offered


def test_a_plan_with_nothing_to_send_records_convergence(export, client, ledger, monkeypatch):
    mapping = _mapping(export)
    _sync(export, mapping, client, ledger)
    full = _the_long_way(export, mapping, client, ledger)
    ledger._write(lambda c: c.execute("DELETE FROM meta WHERE key = 'converged'"))
    again = plan(export, mapping, ledger, workspace=client, create_users=True)
    assert again.is_empty and "converged_with" not in again.manifest
    _no_projection(monkeypatch)
    third = plan(export, mapping, ledger, workspace=client, create_users=True)
    assert third.manifest["converged_with"] == again.id
    assert [str(f) for f in third.findings] == [str(f) for f in full.findings]


def test_a_sync_of_another_export_in_between_voids_the_record(export, client, ledger):
    mapping = _mapping(export)
    _sync(export, mapping, client, ledger)
    other = _edited(export, lambda p: p.__setitem__("vip_customer", pd.array(
        [False] * len(p), dtype="boolean")))
    _sync(other, mapping, client, ledger)
    back = plan(export, mapping, ledger, workspace=client, create_users=True)
    assert "converged_with" not in back.manifest
    # the members the other sync took out are put back
    assert set(back.operations.loc[back.operations["op"] == "event", "name"]) == {
        "Audience Entered"}


def test_the_input_digest_is_part_of_the_fingerprint(export, client, ledger, tmp_path):
    p = plan(export, _mapping(export), ledger, workspace=client, create_users=True)
    p.approve(by="tester")
    saved = p.save(tmp_path / "p.json")
    data = json.loads(saved.read_text())
    data["input_digest"] = "0" * 64
    saved.write_text(json.dumps(data))
    with pytest.raises(PlanAltered):
        Plan.load(saved).check_approval(client.workspace)
