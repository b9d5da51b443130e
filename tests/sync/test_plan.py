"""Planning: delta against the ledger, transitions, identifiers, payload rules, batching, cost,
fingerprint, approval and plan files."""
from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from .builders import AUDIENCES, acknowledge_all, edit_operations, make_export
from toolkit.errors import (PlanAltered, PlanError, PlanExpired, PlanNotApproved,
                            PlanWorkspaceMismatch)
from toolkit.mapping import Mapping
from toolkit.sync.ledger import Ledger
from toolkit.sync.plan import Plan, parse_duration, plan

WS = "http://127.0.0.1:1#feedbeef"


@pytest.fixture
def led(tmp_path):
    with Ledger(path=tmp_path / "ledger.sqlite", workspace=WS) as ledger:
        yield ledger


def _members(export, key):
    return set(export.profiles.loc[export.profiles[key].fillna(False).astype(bool)
                                   & export.profiles["user_id"].notna(), "user_id"])


def test_first_plan_sends_members_and_trait_values_only(export, led):
    p = plan(export, Mapping.from_export(export), led)
    ops = p.operations
    for key in AUDIENCES:
        sent = ops[(ops["rule"] == key)]
        assert set(sent["change"]) == {"enter"}, "non-members never synced get nothing"
        assert {u.split(":", 1)[1] for u in sent["uid"]} == _members(export, key)
        assert set(sent["value"]) == {"true"}
    revenue = ops[ops["rule"] == "total_revenue_180_days"]
    assert len(revenue) == 200
    # one attributes object per user, all in attribute batches
    assert {b.kind for b in p.batches()} == {"attributes"}
    assert sum(b.objects for b in p.batches()) == ops["uid"].nunique()


def test_an_unchanged_rerun_plans_nothing(export, led):
    mapping = Mapping.from_export(export).set("vip_customer", send_as="both")
    first = plan(export, mapping, led)
    acknowledge_all(first, led)
    again = plan(export, mapping, led)
    assert again.is_empty and again.cost()["requests"] == 0 and again.batches() == []
    assert again.ledger_version == led.version > 0


def test_changes_are_planned_as_transitions(export, led):
    mapping = (Mapping.from_export(export).set("vip_customer", send_as="event")
               .set("dormant_shopper", exit_value=None)
               .set("last_product_viewed_item", send_as="both"))
    acknowledge_all(plan(export, mapping, led), led)
    p2 = export.profiles.copy()
    u = p2["user_id"].to_numpy()
    vip_in = np.flatnonzero(p2["vip_customer"].fillna(False).to_numpy(bool) & pd.notna(u))[:3]
    vip_out = np.flatnonzero(~p2["vip_customer"].fillna(False).to_numpy(bool) & pd.notna(u))[:2]
    dormant_in = np.flatnonzero(p2["dormant_shopper"].fillna(False).to_numpy(bool)
                                & pd.notna(u))[:1]
    p2.loc[vip_in, "vip_customer"] = False
    p2.loc[vip_out, "vip_customer"] = True
    p2.loc[dormant_in, "dormant_shopper"] = False
    p2.loc[5, "last_product_viewed_item"] = "Brand New Thing"
    p2.loc[6, "total_revenue_180_days"] = pd.NA
    p2.loc[7, "vip_customer"] = pd.NA       # unknown membership: no exit, no enter
    changed = type(export)(profiles=p2, computations=export.computations,
                           snapshot_at=export.snapshot_at)
    ops = plan(changed, mapping, led).operations
    vip = ops[ops["rule"] == "vip_customer"]
    assert set(vip.loc[vip["change"] == "exit", "uid"]) == {f"external_id:{u[i]}" for i in vip_in
                                                             if i != 7}
    assert set(vip.loc[vip["change"] == "enter", "uid"]) == {f"external_id:{u[i]}" for i in vip_out}
    assert set(vip["name"]) <= {"Audience Entered", "Audience Exited"}
    exit_props = json.loads(vip.loc[vip["change"] == "exit", "value"].iloc[0])
    assert exit_props == {"audience_key": "vip_customer", "vip_customer": False}
    dormant = ops[ops["rule"] == "dormant_shopper"]
    assert list(dormant["change"]) == ["exit"] and list(dormant["value"]) == ["null"]
    product = ops[ops["rule"] == "last_product_viewed_item"]
    assert set(product["op"]) == {"attribute", "event"} and len(product) == 2
    event = product[product["op"] == "event"].iloc[0]
    assert event["name"] == "Trait Computed"
    assert json.loads(event["value"]) == {"trait_key": "last_product_viewed_item",
                                          "last_product_viewed_item": "Brand New Thing"}
    revenue = ops[ops["rule"] == "total_revenue_180_days"]
    assert list(revenue["change"]) == ["unset"] and list(revenue["value"]) == ["null"]


def test_identifier_resolution_and_unsyncable_reasons(led):
    export = make_export(10, anonymous=4, email_only=3)
    mapping = Mapping.from_export(export)
    default = plan(export, mapping, led)
    codes = default.left_out.groupby("code").size().to_dict()
    assert codes == {"anonymous_only": 4, "email_only": 3}
    assert {f.code for f in default.findings} >= {"anonymous_only", "email_only"}
    wide = plan(export, mapping, led, alias_label="segment_id", email_opt_in=True,
                create_users=True)
    kinds = {u.split(":")[0] for u in wide.operations["uid"]}
    assert kinds == {"external_id", "alias"}, "aliases win over email"
    alias_batch = [b for b in wide.batches()]
    objects = [o for b in alias_batch for o in wide.payload(b)["attributes"]]
    alias_objects = [o for o in objects if "user_alias" in o]
    assert alias_objects and all(o["user_alias"]["alias_label"] == "segment_id"
                                 and o["user_alias"]["alias_name"].startswith("use_")
                                 and o["_update_existing_only"] is False for o in alias_objects)
    email = plan(export, mapping, led, email_opt_in=True)
    assert any(o.get("email", "").startswith("only") for b in email.batches()
               for o in email.payload(b)["attributes"])
    assert all(o["_update_existing_only"] is True for b in email.batches()
               for o in email.payload(b)["attributes"])


def test_payload_rule_violations_become_findings_and_are_never_sent(led):
    export = make_export(20)
    profiles = export.profiles.copy()
    profiles.loc[3, "last_product_viewed_item"] = "x" * 300
    export = type(export)(profiles=profiles, computations=export.computations,
                          snapshot_at=export.snapshot_at)
    # Braze holds total_revenue_180_days as a string for u00004: a number would be refused.
    led.finish("old", "b", "acknowledged",
               state=[("attr:total_revenue_180_days", "external_id:u00004", '"12"')])
    p = plan(export, Mapping.from_export(export), led)
    codes = {f.code for f in p.findings}
    assert {"invalid_value", "type_conflict"} <= codes
    ops = p.operations
    assert not ((ops["uid"] == "external_id:u00003") & (ops["rule"] == "last_product_viewed_item")).any()
    assert not ((ops["uid"] == "external_id:u00004") & (ops["rule"] == "total_revenue_180_days")).any()
    left = p.left_out.set_index("uid")
    assert left.loc["external_id:u00004", "code"] == "type_conflict"


def test_batches_respect_limits_and_never_split_a_user(led):
    export = make_export(300)
    mapping = Mapping.from_export(export)
    for key in AUDIENCES:
        mapping = mapping.set(key, send_as="both")
    p = plan(export, mapping, led, batch_size=40, combined_limit=25)
    assert p.limit == 25
    seen: dict[str, set] = {}
    for b in p.batches():
        body = p.payload(b)
        arrays = [k for k in body if k in ("attributes", "events")]
        assert len(arrays) == 1, "attributes and events travel in separate requests"
        objects = body[arrays[0]]
        assert 0 < len(objects) <= 25 and len(objects) == b.objects
        users = {o["external_id"] for o in objects}
        for u in users:
            seen.setdefault(f"{arrays[0]}", set())
            assert u not in seen[arrays[0]], f"user {u} split across {arrays[0]} batches"
        seen[arrays[0]] |= users
    attrs = [o for b in p.batches() if b.kind == "attributes" for o in p.payload(b)["attributes"]]
    assert len(attrs) == len({o["external_id"] for o in attrs}), "one object per user"


def test_cost_counts_data_points_as_braze_bills(export, led):
    mapping = Mapping.from_export(export).set("vip_customer", send_as="both")
    p = plan(export, mapping, led, rate_limit=(300, 3.0))
    c = p.cost()
    ops = p.operations
    assert c["data_points"] == len(ops) == c["attribute_writes"] + c["events"]
    assert c["requests"] == len(p.batches())
    assert c["estimated_seconds"] == pytest.approx(c["track_requests"] * 3.0 / 300)
    assert "data points" in p._repr_html_() and p.id in repr(p)
    frame = p.to_frame()
    assert list(frame.columns) == ["segment_id", "braze_user", "rule", "kind", "change", "name",
                                   "value"] and len(frame) == len(ops)
    # the first rows alone (read from the file) are the same rows, as plain text columns
    pd.testing.assert_frame_equal(p.to_frame(limit=3), frame.head(3))


def test_sample_payloads_are_exactly_what_is_sent(export, led):
    p = plan(export, Mapping.from_export(export).set("vip_customer", send_as="event"), led)
    samples = p.sample_payloads(2)
    assert samples == [p.payload(b) for b in p.batches()[:2]]
    events = [p.payload(b) for b in p.batches() if b.kind == "events"][0]["events"]
    assert events[0]["time"] == "2026-11-27T06:00:00.000Z"
    assert events[0]["name"] == "Audience Entered"


def test_fingerprint_covers_operations_workspace_and_ledger_version(export, led, tmp_path):
    mapping = Mapping.from_export(export)
    a = plan(export, mapping, led)
    b = plan(export, mapping, led)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    with Ledger(path=tmp_path / "other.sqlite", workspace="http://x#00000000") as other:
        assert plan(export, mapping, other).fingerprint != a.fingerprint
    led.finish("x", "y", "acknowledged", state=[("attr:other", "external_id:zz", "1")])
    assert plan(export, mapping, led).fingerprint != a.fingerprint


def test_save_and_load_round_trip(export, led, tmp_path):
    p = plan(export, Mapping.from_export(export).set("vip_customer", send_as="both"), led)
    p.approve(by="Ana", expires_in="2h")
    path = p.save(tmp_path / "plan.json")
    q = Plan.load(path)
    assert q.fingerprint == p.fingerprint and q.approval == p.approval
    assert q.sample_payloads(3) == p.sample_payloads(3)
    assert len(q.findings) == len(p.findings)
    q.check_approval(WS)


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.pop("ledger_version"), "ledger_version"),
    (lambda d: d["options"].update(batch_size=500), "options.batch_size"),
    (lambda d: d.update(approval={"by": "x"}), "approval"),
    (lambda d: d.update(format="something"), "format"),
    (lambda d: d.update(rows=-1), "rows"),
    (lambda d: d.update(operations_file="../elsewhere.parquet"), "operations_file"),
])
def test_a_malformed_plan_manifest_names_the_field(export, led, tmp_path, edit, field):
    p = plan(export, Mapping.from_export(export), led).approve(by="Ana")
    data = json.loads(p.save(tmp_path / "plan.json").read_text())
    edit(data)
    (tmp_path / "plan.json").write_text(json.dumps(data))
    with pytest.raises(PlanError) as err:
        Plan.load(tmp_path / "plan.json")
    assert err.value.field == field


@pytest.mark.parametrize("edit, field", [
    (lambda f: f.__setitem__("op", ["purchase"] + list(f["op"][1:])), "operations.op"),
    (lambda f: f.iloc[:-1], "operations"),
    (lambda f: f.__setitem__("value", ["{not json"] + list(f["value"][1:])), "operations.value"),
    (lambda f: f.__setitem__("uid", [None] + list(f["uid"][1:])), "operations.uid"),
])
def test_a_malformed_operations_file_names_the_field(export, led, tmp_path, edit, field):
    p = plan(export, Mapping.from_export(export), led).approve(by="Ana")
    edit_operations(p.save(tmp_path / "plan.json"), edit)
    with pytest.raises(PlanError) as err:
        Plan.load(tmp_path / "plan.json")
    assert err.value.field == field


def test_a_missing_or_replaced_operations_file_is_refused(export, led, tmp_path):
    p = plan(export, Mapping.from_export(export), led).approve(by="Ana")
    path = p.save(tmp_path / "plan.json")
    ops = tmp_path / "plan.ops.parquet"
    ops.rename(tmp_path / "moved.parquet")
    with pytest.raises(PlanError, match="operations file is missing"):
        Plan.load(path)
    (tmp_path / "moved.parquet").rename(ops)
    Plan.load(path).check_approval(WS)
    ops.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(PlanError, match="cannot be read"):
        Plan.load(path)


def test_a_truncated_plan_file_is_a_plan_error(tmp_path):
    (tmp_path / "p.json").write_text('{"format": "engage-braze-plan", "oper')
    with pytest.raises(PlanError) as err:
        Plan.load(tmp_path / "p.json")
    assert "not valid JSON" in str(err.value)
    with pytest.raises(PlanError):
        Plan.load(tmp_path / "missing.json")


def test_approval_refusals(export, led, tmp_path):
    p = plan(export, Mapping.from_export(export), led)
    with pytest.raises(PlanNotApproved):
        p.check_approval(WS)
    with pytest.raises(PlanError):
        p.approve(by="  ")
    p.approve(by="Ana", expires_in=timedelta(hours=1))
    p.check_approval(WS)
    with pytest.raises(PlanWorkspaceMismatch):
        p.check_approval("http://elsewhere#12345678")
    with pytest.raises(PlanExpired):
        p.check_approval(WS, now=datetime.now(timezone.utc) + timedelta(hours=2))
    # hand edit that keeps the file well-formed: caught by the fingerprint
    saved = p.save(tmp_path / "p.json")
    edit_operations(saved, lambda f: f.__setitem__(
        "value", ["false" if f["value"][0] != "false" else "true"] + list(f["value"][1:])))
    with pytest.raises(PlanAltered):
        Plan.load(saved).check_approval(WS)
    # the very same operations, encoded anew: the fingerprint is over the file's bytes, so
    # this is an alteration too, refused as soon as the plan is read (naming the file); the
    # left-out profiles too, as the ledger reports them to later plans of the same input
    saved = p.save(tmp_path / "p.json")
    Plan.load(saved).check_approval(WS)
    _, ops_file, left_file = Plan.files_for(saved)
    for file, source, altered, missing in (
            (ops_file, p.ops_path, "operations file is not the one", "operations file is missing"),
            (left_file, p.left_path, "left-out file is not the one", "left-out file is missing")):
        saved = p.save(tmp_path / "p.json")
        pq.write_table(pq.read_table(file), file, compression="snappy")
        assert pq.read_table(file).equals(pq.read_table(source))   # the same rows
        with pytest.raises(PlanAltered, match=altered) as err:
            Plan.load(saved)
        assert err.value.file == str(file)
        file.unlink()
        with pytest.raises(PlanError, match=missing):
            Plan.load(saved)
    # a digest edited into the manifest is caught by the fingerprint
    saved = p.save(tmp_path / "p.json")
    data = json.loads(saved.read_text())
    pq.write_table(pq.read_table(left_file), left_file, compression="snappy")
    data["left_out_digest"] = hashlib.sha256(left_file.read_bytes()).hexdigest()
    saved.write_text(json.dumps(data))
    with pytest.raises(PlanAltered, match="changed after it was approved"):
        Plan.load(saved).check_approval(WS)
    data = json.loads(p.save(tmp_path / "p.json").read_text())
    data["workspace"] = "http://elsewhere#12345678"
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(PlanAltered):
        Plan.load(tmp_path / "p.json").check_approval("http://elsewhere#12345678")


def test_a_plan_without_workspace_can_be_read_but_not_approved(export):
    p = plan(export, Mapping.from_export(export))
    assert p.workspace is None and not p.is_empty
    with pytest.raises(PlanError) as err:
        p.approve(by="Ana")
    assert err.value.field == "workspace"


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("24h", 86400),
                                           ("7d", 604800), (3600, 3600)])
def test_parse_duration(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


def test_parse_duration_refuses_nonsense():
    for bad in ("soon", -5, "0h"):
        with pytest.raises(PlanError):
            parse_duration(bad)


def test_cohort_rule_without_partner_credentials_explains_alternatives(export, led, monkeypatch):
    monkeypatch.delenv("BRAZE_PARTNER_API_KEY", raising=False)
    monkeypatch.delenv("BRAZE_DATA_IMPORT_KEY", raising=False)
    monkeypatch.chdir(led.path.parent)
    p = plan(export, Mapping.from_export(export).set("vip_customer", send_as="cohort"), led)
    finding = p.findings.of("cohort_unavailable")[0]
    assert "BRAZE_PARTNER_API_KEY" in finding.message
    assert "attribute" in finding.fix and "Braze Cohorts destination" in finding.fix
    assert not (p.operations["rule"] == "vip_customer").any()


def test_cohort_rule_with_credentials_plans_adds_in_chunks(export, led):
    p = plan(export, Mapping.from_export(export).set("vip_customer", send_as="cohort"), led,
             partner_api_key="pk", client_secret="cs")
    cohort = p.operations[p.operations["op"] == "cohort"]
    assert set(cohort["change"]) == {"add"} and len(cohort) == len(_members(export,
                                                                            "vip_customer"))
    body = p.payload([b for b in p.batches() if b.kind == "cohort"][0])
    assert body["cohort_id"] == "aud_vip_customer" and body["change"] == "add"
    assert "pk" not in json.dumps(p.manifest) and "cs" not in json.dumps(p.cohorts)


@pytest.mark.slow
def test_planning_a_large_export_is_vectorised(tmp_path):
    export = make_export(200_000, traits=False)
    mapping = Mapping.from_export(export)
    with Ledger(path=tmp_path / "big.sqlite", workspace=WS) as big:
        t = time.perf_counter()
        p = plan(export, mapping, big)
        first = time.perf_counter() - t
        acknowledge_all(p, big)
        t = time.perf_counter()
        again = plan(export, mapping, big)
        second = time.perf_counter() - t
    assert again.is_empty
    assert first < 20 and second < 20, (first, second)


def test_trait_event_values_braze_would_refuse_are_findings(led):
    export = make_export(10)
    profiles = export.profiles.copy()
    profiles.loc[2, "last_product_viewed_item"] = "z" * 256
    export = type(export)(profiles=profiles, computations=export.computations,
                          snapshot_at=export.snapshot_at)
    mapping = Mapping.from_export(export).set("last_product_viewed_item", send_as="event")
    p = plan(export, mapping, led)
    assert p.findings.of("invalid_value")
    events = p.operations[p.operations["rule"] == "last_product_viewed_item"]
    assert "external_id:u00002" not in set(events["uid"])
    assert all("z" * 256 not in v for v in events["value"])
    assert list(p.left_out.loc[p.left_out["code"] == "invalid_value", "uid"]) == [
        "external_id:u00002"]


@pytest.mark.parametrize("options", [{}, {"create_users": True}, {"alias_label": "segment_id"}])
def test_the_encoded_payload_apply_sends_is_the_payload_the_plan_shows(export, led, options):
    mapping = Mapping.from_export(export).set("vip_customer", send_as="both").set(
        "last_product_viewed_item", send_as="both")
    export.profiles.loc[4, "last_product_viewed_item"] = 'quote " back\\slash \n é'
    p = plan(export, mapping, led, **options)
    kinds = set()
    for b in p.batches():
        if b.kind == "cohort":
            continue
        encoded = p.encoded_payload(b)
        assert json.loads(encoded.body) == p.payload(b)
        assert encoded.arrays == (b.kind,)
        kinds.add(b.kind)
    assert kinds == {"attributes", "events"}


@pytest.mark.parametrize("row_group", [5, 64, 122_880])
@pytest.mark.parametrize("options", [{"create_users": True}, {"alias_label": "segment_id"}])
def test_attribute_bodies_cut_from_the_file_are_byte_for_byte_the_assembled_ones(
        export, led, monkeypatch, row_group, options):
    """apply's attribute bodies come from one Arrow column per row group; they must equal what
    encoded_payload assembles from the rows (which equals the plan's payload, above), for
    batches inside a row group, across two (assembled), and identifiers JSON must escape."""
    import toolkit.sync.diff as diff_module

    monkeypatch.setattr(diff_module, "ROW_GROUP", row_group)
    export.profiles.loc[3, "user_id"] = 'quo"te\\ é'
    export.profiles.loc[5, "user_id"] = "tab\there"
    p = plan(export, Mapping.from_export(export), led, batch_size=4, **options)
    cut = crossing = 0
    for b in p.batches():
        if b.kind != "attributes":
            continue
        fast = p.encoded_payload(b)
        slow = p.encoded_payload(b, p.rows_of(b, ("uid", "name", "value")))
        assert fast.body == slow.body, b
        assert json.loads(fast.body) == p.payload(b)
        inside = p._ops_reader().locate(b.start, b.stop) is not None
        assert (p._attributes_body(b) is not None) == inside
        cut += inside
        crossing += not inside
    assert cut and (crossing if row_group == 64 else True)


def test_cost_and_summary_counted_while_writing_equal_a_read_of_the_file(export, led):
    from toolkit.mapping import Mapping as _Mapping

    mapping = _Mapping.from_export(export).set("vip_customer", send_as="both").set(
        "dormant_shopper", send_as="event")
    p = plan(export, mapping, led, batch_size=7)
    assert p.rows > 0
    assert p.cost() == p._compute_cost()                      # cost without the diff's counts
    assert p.manifest["summary"] == p._compute_summary()
