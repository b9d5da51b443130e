"""Approval safety, as properties (hypothesis): an approval covers exactly one set of operations
for one workspace, and apply sends nothing that set does not hold.

* Any change to a saved plan's operations (a cell of any column, a row added, dropped,
  duplicated or moved) or to its target and payload options invalidates the approval: apply
  refuses it and the sandbox sees no request.
* For random exports and mappings, every object apply sends — including resends after injected
  faults — is an object of the approved plan's payloads, and every planned object is sent.
"""
from __future__ import annotations

import copy
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import toolkit
from toolkit.braze.client import BrazeClient
from toolkit.engage.model import EngageExport
from toolkit.errors import PlanError, PlanNotApproved, PlanWorkspaceMismatch
from toolkit.mapping import Mapping
from toolkit.sandbox.server import BrazeSandbox
from toolkit.sync.ledger import Ledger
from toolkit.sync.plan import OPERATION_COLUMNS, Plan

from reliability_harness import OPERATIONS_AS_READ, plan_as_data, write_plan_data

SNAPSHOT = pd.Timestamp("2026-11-27T06:00:00Z")
ITEMS = ["Blue Shirt", "Red Shoes", "=HYPERLINK(\"x\")", "Ünïcödé ✓", None]
PROPERTY_SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                             suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                    HealthCheck.too_slow])


def build_export(members: list[tuple[bool, bool]], items: list, revenue: list) -> EngageExport:
    n = len(members)
    profiles = pd.DataFrame({
        "segment_id": pd.array([f"use_{i}" for i in range(n)], dtype="string"),
        "user_id": pd.array([f"u{i}" for i in range(n)], dtype="string"),
        "email": pd.array([None] * n, dtype="string"),
        "anonymous_id": pd.array([None] * n, dtype="string"),
        "braze_id": pd.array([None] * n, dtype="string"),
        "vip_customer": pd.array([m[0] for m in members], dtype="boolean"),
        "dormant_shopper": pd.array([m[1] for m in members], dtype="boolean"),
        "last_product_viewed_item": pd.array(items, dtype="string"),
        "total_revenue_180_days": pd.array(revenue, dtype="Float64"),
    })
    comps = pd.DataFrame([
        {"key": "vip_customer", "kind": "audience", "computation_id": "aud_1",
         "value_type": "boolean", "name": "vip_customer"},
        {"key": "dormant_shopper", "kind": "audience", "computation_id": "aud_2",
         "value_type": "boolean", "name": "dormant_shopper"},
        {"key": "last_product_viewed_item", "kind": "trait", "computation_id": "tra_1",
         "value_type": "string", "name": "last_product_viewed_item"},
        {"key": "total_revenue_180_days", "kind": "trait", "computation_id": "tra_2",
         "value_type": "number", "name": "total_revenue_180_days"},
    ])
    return EngageExport(profiles=profiles, computations=comps, snapshot_at=SNAPSHOT,
                        source="hypothesis")


exports = st.integers(min_value=1, max_value=40).flatmap(lambda n: st.tuples(
    st.lists(st.tuples(st.booleans(), st.booleans()), min_size=n, max_size=n),
    st.lists(st.sampled_from(ITEMS), min_size=n, max_size=n),
    st.lists(st.one_of(st.none(), st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)),
             min_size=n, max_size=n)))
send_as = st.sampled_from(["attribute", "event", "both"])


@pytest.fixture(scope="module")
def sandbox():
    with BrazeSandbox(seed=11) as sb:
        yield sb


@pytest.fixture(scope="module")
def saved_plan(sandbox, tmp_path_factory):
    """An approved plan with attribute and event operations, as saved on disk."""
    tmp = tmp_path_factory.mktemp("approval")
    rng = np.random.default_rng(4)
    n = 60
    exp = build_export([(bool(a), bool(b)) for a, b in rng.random((n, 2)) < 0.5],
                       [ITEMS[i] for i in rng.integers(0, len(ITEMS), n)],
                       [float(x) for x in np.round(rng.random(n) * 100, 2)])
    client = BrazeClient.for_sandbox(sandbox)
    mapping = Mapping.from_export(exp).set("vip_customer", send_as="both")
    with Ledger(client, directory=tmp) as ledger:
        p = toolkit.plan(exp, mapping, ledger, workspace=client, create_users=True,
                         batch_size=10)
    p.approve(by="tester", expires_in="1h")
    path = p.save(tmp / "plan.json")
    client.close()
    return plan_as_data(path)


def _load(data: dict, tmp) -> Plan:
    """The plan ``data`` describes, written as a saved plan's files, then loaded as apply would."""
    return Plan.load(write_plan_data(tmp / "plan.json", data))


def _refused(data: dict, sandbox, tmp) -> BaseException:
    before = len(sandbox.request_log())
    client = BrazeClient.for_sandbox(sandbox, max_retries=0)
    try:
        p = _load(data, tmp)
        with Ledger(client, directory=tmp) as ledger:
            toolkit.apply(p, client, ledger, progress=False)
    except (PlanNotApproved, PlanError) as exc:
        return exc
    finally:
        client.close()
        assert len(sandbox.request_log()) == before, "a refused plan must send nothing"
    raise AssertionError("apply accepted an altered plan")


def test_the_unaltered_plan_is_accepted(saved_plan, sandbox, tmp_path):
    client = BrazeClient.for_sandbox(sandbox)
    p = _load(saved_plan, tmp_path)
    p.check_approval(client.workspace)
    client.close()


text_values = st.one_of(st.text(max_size=12), st.sampled_from(
    ["true", "false", "null", "0", '"x"', "external_id:u0", "Audience Exited"]))


@PROPERTY_SETTINGS
@given(column=st.sampled_from(OPERATION_COLUMNS), row=st.integers(min_value=0), value=text_values)
def test_changing_any_operation_cell_invalidates_the_approval(saved_plan, sandbox, tmp_path,
                                                              column, row, value):
    data = copy.deepcopy(saved_plan)
    ops = data["operations"]
    row %= len(ops["uid"])
    if column == "value":
        value = json.dumps(value)       # keep it loadable: the fingerprint must catch it
    if column == "batch":
        value = ops[column][row] + 1 + len(value)
    elif ops[column][row] == value:
        value = value + "!"
    ops[column][row] = value
    _refused(data, sandbox, tmp_path)


@PROPERTY_SETTINGS
@given(at=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_changing_any_byte_of_the_operations_file_invalidates_the_approval(
        saved_plan, sandbox, tmp_path, at, bit):
    """The fingerprint is over the approved file's bytes: one flipped bit anywhere (in a value,
    the encoding, the metadata) is refused, whether or not the file still reads back."""
    data = copy.deepcopy(saved_plan)
    raw, ops = data[OPERATIONS_AS_READ]
    raw = bytearray(raw)
    raw[at % len(raw)] ^= 1 << bit
    data[OPERATIONS_AS_READ] = (bytes(raw), ops)
    _refused(data, sandbox, tmp_path)


structural = st.sampled_from(["drop", "duplicate", "swap", "append_copy_for_other_user"])


@PROPERTY_SETTINGS
@given(change=structural, i=st.integers(min_value=0), j=st.integers(min_value=0))
def test_adding_removing_or_reordering_operations_invalidates_the_approval(
        saved_plan, sandbox, tmp_path, change, i, j):
    data = copy.deepcopy(saved_plan)
    ops = data["operations"]
    n = len(ops["uid"])
    i, j = i % n, j % n
    rows = [{c: ops[c][k] for c in OPERATION_COLUMNS} for k in range(n)]
    if change == "drop":
        rows.pop(i)
    elif change == "duplicate":
        rows.insert(i, dict(rows[i]))
    elif change == "swap":
        if rows[i] == rows[j]:
            j = (i + 1) % n
        rows[i], rows[j] = rows[j], rows[i]
    else:
        rows.append({**rows[i], "uid": "external_id:intruder", "segment_id": "use_x"})
    for c in OPERATION_COLUMNS:
        ops[c] = [r[c] for r in rows]
    _refused(data, sandbox, tmp_path)


TARGET_EDITS = {
    "workspace": lambda d, v: d.update(workspace=v),
    "workspace_and_approval": lambda d, v: (d.update(workspace=v),
                                            d["approval"].update(workspace=v)),
    "approval_workspace": lambda d, v: d["approval"].update(workspace=v),
    "approval_fingerprint": lambda d, v: d["approval"].update(fingerprint=v),
    "event_time": lambda d, v: d["options"].update(event_time=v),
    "alias_label": lambda d, v: d["options"].update(alias_label=v),
    "create_users": lambda d, v: d["options"].update(create_users=not d["options"]["create_users"]),
    "batch_size": lambda d, v: d["options"].update(batch_size=1 + len(v) % 9),
    "combined_limit": lambda d, v: d["options"].update(combined_limit=1 + len(v) % 9),
    "ledger_version": lambda d, v: d.update(ledger_version=d["ledger_version"] + 1 + len(v)),
    "cohorts": lambda d, v: d.update(cohorts=[{"rule": "vip_customer", "cohort_id": v or "c",
                                               "name": v}]),
}


@PROPERTY_SETTINGS
@given(edit=st.sampled_from(sorted(TARGET_EDITS)),
       value=st.text(alphabet="abcdefghij0123456789#:/.", min_size=1, max_size=30))
def test_changing_the_target_or_payload_options_invalidates_the_approval(
        saved_plan, sandbox, tmp_path, edit, value):
    data = copy.deepcopy(saved_plan)
    TARGET_EDITS[edit](data, value)
    _refused(data, sandbox, tmp_path)


def test_an_approval_does_not_travel_to_another_workspace(saved_plan, tmp_path):
    with BrazeSandbox(seed=12) as other:
        client = BrazeClient.for_sandbox(other)
        with pytest.raises(PlanWorkspaceMismatch):
            toolkit.apply(_load(saved_plan, tmp_path), client, progress=False)
        client.close()
        assert len(other.request_log()) == 0


# ---------------------------------------------------------------------------------------------
# apply sends exactly the approved operations


class Recorder:
    """Wraps a client's transport so every request body that leaves is kept."""

    def __init__(self, client: BrazeClient) -> None:
        self.bodies: list[dict] = []
        original = client.transport.send

        def send(request):
            if request.path == "/users/track" and request.content:
                self.bodies.append(json.loads(request.content))
            return original(request)

        client.transport.send = send


def _objects(body: dict) -> list[str]:
    out = []
    for array in ("attributes", "events"):
        for obj in body.get(array, ()):
            out.append(array + json.dumps(obj, sort_keys=True))
    return out


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=exports, vip=send_as, dormant=send_as, item=send_as, revenue=send_as,
       batch_size=st.integers(min_value=1, max_value=75),
       fault=st.sampled_from([None, "rate_500", "rate_503", "rate_drop_before",
                              "rate_drop_after"]))
def test_apply_sends_only_and_all_approved_operations(tmp_path_factory, data, vip, dormant,
                                                      item, revenue, batch_size, fault):
    members, items, rev = data
    exp = build_export(members, items, rev)
    mapping = (Mapping.from_export(exp).set("vip_customer", send_as=vip)
               .set("dormant_shopper", send_as=dormant)
               .set("last_product_viewed_item", send_as=item)
               .set("total_revenue_180_days", send_as=revenue))
    faults = {fault: 0.25, "endpoints": ("/users/track",)} if fault else None
    tmp = tmp_path_factory.mktemp("send")
    with BrazeSandbox(seed=len(members), faults=faults) as sb:
        client = BrazeClient.for_sandbox(sb, backoff=(0.001, 0.005), seed=1, max_retries=8)
        recorder = Recorder(client)
        with Ledger(client, directory=tmp) as ledger:
            p = toolkit.plan(exp, mapping, ledger, workspace=client, create_users=True,
                             batch_size=batch_size)
            p.approve(by="tester", expires_in="1h")
            report = toolkit.apply(p, client, ledger, progress=False)
        client.close()
        recorded = Counter((x, n, json.dumps(pr, sort_keys=True)) for x, n, pr in
                           zip(sb.events()["external_id"], sb.events()["name"],
                               sb.events()["properties"]))
    approved = Counter(o for _, body in p.payloads() for o in _objects(body))
    sent = Counter(o for body in recorder.bodies for o in _objects(body))
    assert set(sent) <= set(approved), "apply sent an object that is not in the approved plan"
    # every body that left is one of the plan's batches, unchanged
    plan_bodies = [json.dumps(b, sort_keys=True) for _, b in p.payloads()]
    for body in recorder.bodies:
        assert json.dumps(body, sort_keys=True) in plan_bodies
    # an event may be resent only after Braze said it applied nothing (429/5xx): it is
    # recorded once; after an unknown outcome it is held for a decision, not resent
    for key, n in recorded.items():
        assert n == 1, f"event recorded {n} times: {key}"
    if report.status == "complete":
        assert set(sent) == set(approved)
