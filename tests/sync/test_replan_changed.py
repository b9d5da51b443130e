"""The daily run after a change: once a sync converged, the ledger keeps a hash of every profile's
row, and a plan of a changed export projects and diffs only the users whose row changed. Each case
plans the same export both ways — that path, and the full one (every user projected and diffed)
— and asserts the very same plan: operations, batches, findings, left-out profiles, and what the
ledger would keep of it."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from toolkit.mapping import Mapping
from toolkit.sync import plan as plan_module
from toolkit.sync.apply import apply
from toolkit.sync.ledger import _SET_META, Ledger, Rows
from toolkit.sync.plan import Plan, plan
from toolkit.sync.projection import read_inputs

from .builders import make_export

MANIFEST = ("profiles", "users", "fields", "field_digest", "cohorts", "input_digest", "rows",
            "summary", "held_events")


@pytest.fixture
def base():
    """Identified, anonymous and email-only profiles, a shared identifier, a refused value."""
    ex = make_export(150, anonymous=6, email_only=4, seed=3)
    profiles = ex.profiles
    profiles.loc[7, "user_id"] = profiles.loc[8, "user_id"]          # row 8 wins u00008
    profiles.loc[9, "last_product_viewed_item"] = "x" * 300            # over Braze's 255
    profiles.loc[20, "braze_id"] = "bz-20"
    profiles.loc[20, "user_id"] = None
    return ex


def _mapping(export):
    return Mapping.from_export(export).set("vip_customer", send_as="both")


def _edited(export, edit):
    profiles = export.profiles.copy()
    out = edit(profiles)
    profiles = out if out is not None else profiles
    return type(export)(profiles=profiles.reset_index(drop=True),
                        computations=export.computations, snapshot_at=export.snapshot_at,
                        source=export.source)


def _sync(export, mapping, client, ledger, **options):
    p = plan(export, mapping, ledger, workspace=client, create_users=True, **options)
    report = apply(p.approve(by="tester"), client, ledger, progress=False)
    assert report.status == "complete", report
    return p


def _both_ways(export, mapping, client, ledger, monkeypatch, **options):
    """(the plan as made, the plan made the full way), compared in full."""
    made = plan(export, mapping, ledger, workspace=client, create_users=True, **options)
    # the full way: without the ledger's record (a plan with nothing to send makes one)
    record = ledger._meta("converged")
    ledger._write(lambda c: c.execute("DELETE FROM meta WHERE key = 'converged'"))
    try:
        with monkeypatch.context() as m:
            m.setattr(plan_module, "_INCREMENTAL", False)
            full = plan(export, mapping, ledger, workspace=client, create_users=True, **options)
    finally:
        if record is not None:
            ledger._write(lambda c: c.execute(_SET_META, ("converged", record)))
    assert "diffed_users" not in full.manifest
    pd.testing.assert_frame_equal(made.operations, full.operations)
    assert made.batches() == full.batches()
    assert [str(f) for f in made.findings] == [str(f) for f in full.findings]
    pd.testing.assert_frame_equal(made.left_out, full.left_out)
    for key in MANIFEST:
        assert made.manifest[key] == full.manifest[key], key
    assert made.cost() == full.cost()
    # what the ledger keeps of each, for the plan after: the same too
    for a, b in zip(_inputs(made), _inputs(full)):
        assert a.equals(b)
    return made, full


def _inputs(p):
    rows, entries = read_inputs(p.inputs_path)
    return pa.concat_tables([rows.select(["h"]), entries.select(["h"])]), rows, entries


def _flip(column, rows):
    def edit(p):
        p.loc[rows, column] = ~p.loc[rows, column].astype("boolean")
    return edit


def _chain(*edits):
    def edit(p):
        for e in edits:
            out = e(p)
            p = out if out is not None else p
        return p
    return edit


CHANGES = {
    "memberships flipped": _flip("vip_customer", list(range(0, 150, 10))),
    "audience changed by its attribute": _flip("dormant_shopper", [3, 8, 40, 151]),
    "trait values changed": lambda p: p.__setitem__("total_revenue_180_days", p[
        "total_revenue_180_days"].where(p.index % 7 != 0, 12.5)),
    "trait unset and refused values": lambda p: p.__setitem__(
        "last_product_viewed_item", p["last_product_viewed_item"].where(
            ~p.index.isin([1, 2, 9]), pd.Series({1: None, 2: "y" * 400, 9: "fine now"}))),
    "profiles added": lambda p: pd.concat([p, p.iloc[[0, 5, 152, 158]].assign(
        segment_id=["new_1", "new_2", "new_3", "new_4"],
        user_id=pd.array(["n1", "n2", None, None], dtype="string"),
        anonymous_id=["a-n1", "a-n2", "a-n3", "a-n4"])], ignore_index=True),
    "profiles removed": lambda p: p.drop(index=[0, 4, 8, 151, 157]),
    "identifiers changed": lambda p: p.assign(user_id=p["user_id"].where(
        ~p.index.isin([11, 12]), pd.Series({11: "renamed", 12: None}, dtype="string")).where(
        p.index != 152, "was-anonymous")),
    "identifier newly shared": lambda p: p.assign(user_id=p["user_id"].where(
        p.index != 30, p.loc[60, "user_id"]).where(p.index != 90, p.loc[45, "user_id"])),
    "identifier no longer shared": lambda p: p.assign(user_id=p["user_id"].where(
        p.index != 7, "u00007")),
    "rows reordered": lambda p: p.iloc[[8, 7, *range(9, len(p)), *range(7)]],
    "two unrelated rows swapped": lambda p: p.iloc[[1, 0, *range(2, len(p))]],
    "only a left-out profile changed": lambda p: p.assign(anonymous_id=p["anonymous_id"].where(
        p.index != 152, "anon-new")),
    "many things at once": _chain(
        _flip("vip_customer", list(range(1, 150, 9))),
        lambda p: p.assign(user_id=p["user_id"].where(p.index != 33, p.loc[34, "user_id"])),
        lambda p: p.drop(index=[50, 51]),
        lambda p: pd.concat([p, p.iloc[[3]].assign(segment_id="late", user_id="u00003")])),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_export_plans_exactly_what_the_full_path_plans(base, client, ledger,
                                                                 monkeypatch, change):
    mapping = _mapping(base)
    _sync(base, mapping, client, ledger)
    changed = _edited(base, CHANGES[change])
    made, _ = _both_ways(changed, mapping, client, ledger, monkeypatch)
    assert made.manifest["diffed_users"] <= made.manifest["users"]
    if change in ("two unrelated rows swapped", "only a left-out profile changed"):
        assert made.is_empty
    if change == "rows reordered":   # row 7 now comes after row 8: its values win u00008
        assert made.manifest["diffed_users"] == 1 and not made.is_empty
    if change == "two unrelated rows swapped":
        assert made.manifest["diffed_users"] == 0
    if change == "memberships flipped":
        assert 0 < made.manifest["diffed_users"] <= 15


def test_the_next_change_after_applying_the_first_is_planned_the_same_way(
        base, client, ledger, monkeypatch):
    mapping = _mapping(base)
    _sync(base, mapping, client, ledger)
    first = _edited(base, CHANGES["many things at once"])
    made = plan(first, mapping, ledger, workspace=client, create_users=True)
    assert "diffed_users" in made.manifest
    assert apply(made.approve(by="tester"), client, ledger, progress=False).status == "complete"
    # the ledger now keeps the inputs the fast path computed: the change after builds on them
    second = _edited(first, _chain(CHANGES["memberships flipped"], CHANGES["profiles removed"]))
    again, _ = _both_ways(second, mapping, client, ledger, monkeypatch)
    assert "diffed_users" in again.manifest


@pytest.mark.parametrize("change", ["mapping", "option"])
def test_a_changed_mapping_or_option_takes_the_full_path(base, client, ledger, monkeypatch,
                                                         change):
    mapping = _mapping(base)
    _sync(base, mapping, client, ledger)
    changed = _edited(base, CHANGES["memberships flipped"])
    options = {}
    if change == "mapping":
        mapping = mapping.set("dormant_shopper", send_as="event")
    else:
        options = {"alias_label": "segment_id"}
    made = plan(changed, mapping, ledger, workspace=client, create_users=True, **options)
    assert "diffed_users" not in made.manifest and not made.is_empty


def test_a_type_conflict_of_an_unchanged_user_is_still_reported(base, client, ledger,
                                                                 monkeypatch):
    mapping = _mapping(base)
    _sync(base, mapping, client, ledger)
    # Braze holds a text where the export has numbers for two users: Braze would refuse them
    ledger.finish("by-hand", "b1", "acknowledged", state=[
        ("attr:total_revenue_180_days", "external_id:u00005", '"text"'),
        ("attr:total_revenue_180_days", "external_id:u00012", '"text"')])
    settled = plan(base, mapping, ledger, workspace=client, create_users=True)
    assert settled.is_empty and "type_conflict" in {f.code for f in settled.findings}
    changed = _edited(base, _chain(CHANGES["memberships flipped"], lambda p: p.__setitem__(
        "total_revenue_180_days", p["total_revenue_180_days"].where(p.index != 12, 99.0))))
    made, _ = _both_ways(changed, mapping, client, ledger, monkeypatch)
    assert "diffed_users" in made.manifest
    conflicts = made.left_out[made.left_out["code"] == "type_conflict"]
    assert set(conflicts["uid"]) == {"external_id:u00005", "external_id:u00012"}


def test_uncertain_events_or_a_partial_apply_take_the_full_path(base, client, ledger,
                                                                monkeypatch):
    mapping = _mapping(base)
    _sync(base, mapping, client, ledger)
    changed = _edited(base, CHANGES["memberships flipped"])
    p = plan(changed, mapping, ledger, workspace=client, create_users=True, batch_size=4)
    p.approve(by="tester")
    ledger.record_plan(p)
    batches = p.batches()
    ledger.record_batches(p.id, [(b.id, b.kind, b.objects, None, b.index) for b in batches])
    events = next(b for b in batches if b.kind == "events")
    ledger.mark_sent(p.id, events.id)           # sent, never answered: uncertain
    assert ledger.converged_inputs() is None
    made, _ = _both_ways(_edited(changed, CHANGES["trait values changed"]), mapping, client,
                         ledger, monkeypatch)
    assert "diffed_users" not in made.manifest and made.manifest["held_events"]
    ledger.resolve(p.id, events.id, landed=True)
    attrs = next(b for b in batches if b.kind == "attributes")
    ledger.finish(p.id, attrs.id, "acknowledged", state=Rows(attrs.index, attrs.stop - attrs.start))
    assert ledger.converged_inputs() is None
    made, _ = _both_ways(changed, mapping, client, ledger, monkeypatch,   # partly applied
                         batch_size=4)
    assert "diffed_users" not in made.manifest and not made.is_empty


def test_a_ledger_converged_without_row_hashes_takes_the_full_path_once(base, client, ledger):
    import json

    mapping = _mapping(base)
    _sync(base, mapping, client, ledger)
    record = json.loads(ledger._meta("converged"))
    record["inputs"] = None          # as recorded before row hashes were kept
    ledger._write(lambda c: c.execute("UPDATE meta SET value = ? WHERE key = 'converged'",
                                      (json.dumps(record),)))
    changed = _edited(base, CHANGES["memberships flipped"])
    first = plan(changed, mapping, ledger, workspace=client, create_users=True)
    assert "diffed_users" not in first.manifest
    assert apply(first.approve(by="tester"), client, ledger, progress=False).ok
    second = plan(_edited(changed, CHANGES["trait values changed"]), mapping, ledger,
                  workspace=client, create_users=True)
    assert "diffed_users" in second.manifest


def test_a_saved_plan_brings_its_row_hashes_and_a_tampered_file_is_not_kept(
        base, client, ledger, tmp_path):
    mapping = _mapping(base)
    p = plan(base, mapping, ledger, workspace=client, create_users=True)
    saved = p.approve(by="tester").save(tmp_path / "p.json")
    assert Plan.inputs_file_for(saved).exists()
    loaded = Plan.load(saved)
    assert apply(loaded, client, ledger, progress=False).status == "complete"
    assert ledger.converged_inputs() is not None
    changed = _edited(base, CHANGES["memberships flipped"])
    second = plan(changed, mapping, ledger, workspace=client, create_users=True)
    saved = second.approve(by="tester").save(tmp_path / "q.json")
    inputs = Plan.inputs_file_for(saved)
    source = pa.BufferReader(inputs.read_bytes())               # not mapped: rewritten below
    rows, entries = pa.ipc.open_stream(source).read_all(), pa.ipc.open_stream(source).read_all()
    with pa.OSFile(str(inputs), "wb") as sink:                 # half the users forgotten
        for table in (rows.slice(0, rows.num_rows // 2), entries):
            with pa.ipc.new_stream(sink, table.schema) as out:
                out.write_table(table)
    assert apply(Plan.load(saved), client, ledger, progress=False).status == "complete"
    assert ledger.converged_inputs() is None      # not kept: the next change takes the full path
    third = plan(_edited(changed, CHANGES["trait values changed"]), mapping, ledger,
                 workspace=client, create_users=True)
    assert "diffed_users" not in third.manifest


@pytest.mark.parametrize("diff_at", ["local", "server"])
def test_a_shared_ledger_plans_a_change_from_another_machine_the_same_way(
        base, postgres_url, tmp_path, monkeypatch, diff_at):
    from toolkit.braze.client import BrazeClient
    from toolkit.sandbox.server import BrazeSandbox

    mapping = _mapping(base)
    url = f"{postgres_url}?schema=t_replan_{np.random.default_rng().integers(1 << 30)}"
    with BrazeSandbox(seed=4) as sandbox, BrazeClient.for_sandbox(sandbox) as client:
        (tmp_path / "alice").mkdir()
        (tmp_path / "bob").mkdir()
        with Ledger(url, workspace=client, directory=tmp_path / "alice") as alice:
            _sync(base, mapping, client, alice)
        with Ledger(url, workspace=client, directory=tmp_path / "bob") as bob:
            assert bob.converged_inputs() is not None      # fetched from the server
            changed = _edited(base, CHANGES["many things at once"])
            made, _ = _both_ways(changed, mapping, client, bob, monkeypatch, diff_at=diff_at)
            assert 0 < made.manifest["diffed_users"] < made.manifest["users"]
            assert made.manifest["diff"]["where"] == diff_at


def _stored(export, folder, name):
    """The export as kept on disk (a `StoredExport` read a few rows at a time)."""
    import pyarrow.parquet as pq

    from toolkit.engage.store import StoredExport

    path = folder / f"{name}.parquet"
    pq.write_table(pa.Table.from_pandas(export.profiles, preserve_index=False), path)
    return StoredExport(path, export.computations, rows=len(export.profiles),
                        dtypes=dict(export.profiles.dtypes), snapshot_at=export.snapshot_at,
                        source=export.source)


def test_an_export_kept_on_disk_plans_its_change_in_chunks_the_same_way(
        base, client, ledger, monkeypatch, tmp_path):
    monkeypatch.setenv("TOOLKIT_CHUNK_ROWS", "23")     # every step spans several chunks
    mapping = _mapping(base)
    _sync(_stored(base, tmp_path, "base"), mapping, client, ledger)
    changed = _edited(base, CHANGES["many things at once"])
    made, _ = _both_ways(_stored(changed, tmp_path, "changed"), mapping, client, ledger,
                         monkeypatch)
    assert 0 < made.manifest["diffed_users"] < made.manifest["users"]
    in_memory = plan(changed, mapping, ledger, workspace=client, create_users=True)
    pd.testing.assert_frame_equal(made.operations, in_memory.operations)
    pd.testing.assert_frame_equal(made.left_out, in_memory.left_out)
    assert [str(f) for f in made.findings] == [str(f) for f in in_memory.findings]


def test_applying_a_plan_answered_from_the_record_keeps_the_row_hashes(base, client, ledger):
    mapping = _mapping(base)
    _sync(base, mapping, client, ledger)
    kept = ledger.converged_inputs()
    again = plan(base, mapping, ledger, workspace=client, create_users=True)
    assert again.is_empty and again.manifest["converged_with"] and again.inputs_path is None
    assert apply(again.approve(by="tester"), client, ledger, progress=False).status == "complete"
    assert ledger.converged_inputs() == kept
    changed = _edited(base, CHANGES["memberships flipped"])
    assert "diffed_users" in plan(changed, mapping, ledger, workspace=client,
                                  create_users=True).manifest
