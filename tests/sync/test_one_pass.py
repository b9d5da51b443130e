"""A plan reads its export once (`project_once`: row hashes, keys and projection in one pass)
instead of once per step. Each case plans the same export both ways — one pass, and the
separate steps (``plan._ONE_PASS = "never"``: `row_hashes`, `export_keys` or `PreviousInput.keys`,
then `project`) — from the same ledger state, and asserts the very same plan: operations,
batches, findings, left-out profiles, manifest, cost and what the ledger would keep. Exports
are kept on disk in chunks of a few rows, so shared identifiers cross chunks and the
projection goes through its Parquet file."""
from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from toolkit.engage.store import StoredExport
from toolkit.sync import plan as plan_module
from toolkit.sync.plan import plan

from . import test_replan_changed as changed_tests
from .test_replan_changed import (
    CHANGES,
    MANIFEST,
    _edited,
    _inputs,
    _mapping,
    _stored,
    _sync,
)

base = changed_tests.base   # the fixture: identified, anonymous, email-only, shared, refused


@pytest.fixture
def reads(monkeypatch):
    """How many times the plans read a stored export through (`StoredExport.chunks`; the
    one-row look at its column types not counted)."""
    count = {"n": 0}
    chunks = StoredExport.chunks

    def counted(self, columns=None, rows=None):
        if rows != 1:
            count["n"] += 1
        yield from chunks(self, columns, rows)

    monkeypatch.setattr(StoredExport, "chunks", counted)
    monkeypatch.setenv("TOOLKIT_CHUNK_ROWS", "23")     # every step spans several chunks
    return count


@pytest.fixture
def shared(base):
    """``base`` plus a shared identifier across chunks (row 2 loses to row 140) and a value
    Braze refuses on a profile that loses (row 7 loses to row 8)."""
    profiles = base.profiles
    profiles.loc[2, "user_id"] = profiles.loc[140, "user_id"]
    profiles.loc[7, "last_product_viewed_item"] = "z" * 300
    return base


def _both_ways(export, mapping, ledger, reads, monkeypatch, **options):
    """(one pass, separate steps, the reads of each), compared in full."""
    if ledger is not None:   # both from the same ledger state: a plan with nothing to send
        monkeypatch.setattr(ledger, "record_converged", lambda p: False)   # records otherwise
    reads["n"] = 0
    made = plan(export, mapping, ledger, **options)
    once = reads["n"]
    reads["n"] = 0
    with monkeypatch.context() as m:
        m.setattr(plan_module, "_ONE_PASS", "never")
        steps = plan(export, mapping, ledger, **options)
    assert pq.read_table(made.ops_path).equals(pq.read_table(steps.ops_path))
    pd.testing.assert_frame_equal(made.operations, steps.operations)
    assert made.batches() == steps.batches()
    assert [str(f) for f in made.findings] == [str(f) for f in steps.findings]
    pd.testing.assert_frame_equal(made.left_out, steps.left_out)
    for key in (*MANIFEST, "diffed_users", "converged_with"):
        assert made.manifest.get(key) == steps.manifest.get(key), key
    assert made.cost() == steps.cost()
    if ledger is None:
        assert made.fingerprint == steps.fingerprint
    if made.inputs_path is not None or steps.inputs_path is not None:
        for a, b in zip(_inputs(made), _inputs(steps)):
            assert a.equals(b)
    return made, once, reads["n"]


@pytest.mark.parametrize("ledgered", [False, True])
def test_a_first_plan_reads_the_export_once(shared, client, ledger, reads, monkeypatch,
                                             tmp_path, ledgered):
    export = _stored(shared, tmp_path, "shared")
    options = {"workspace": client, "create_users": True} if ledgered else {}
    made, once, steps = _both_ways(export, _mapping(shared), ledger if ledgered else None,
                                   reads, monkeypatch, **options)
    assert (once, steps) == (1, 3)
    lost = made.left_out[made.left_out["code"] == "shared_identifier"]
    assert sorted(lost["segment_id"]) == sorted(shared.profiles.loc[[2, 7], "segment_id"])
    assert not (made.left_out["segment_id"] == shared.profiles.loc[7, "segment_id"]).sum() > 1


def test_an_export_in_memory_plans_the_same_in_one_pass(shared, monkeypatch, reads):
    # (it takes the separate steps by default: reading it again costs nothing)
    monkeypatch.setattr(plan_module, "_ONE_PASS", "always")
    made, _, _ = _both_ways(shared, _mapping(shared), None, reads, monkeypatch)
    assert "shared_identifier" in {f.code for f in made.findings}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_export_reads_once_and_plans_the_same(base, client, ledger, reads,
                                                         monkeypatch, tmp_path, change):
    mapping = _mapping(base)
    _sync(_stored(base, tmp_path, "base"), mapping, client, ledger)
    changed = _stored(_edited(base, CHANGES[change]), tmp_path, "changed")
    made, once, steps = _both_ways(changed, mapping, ledger, reads, monkeypatch,
                                   workspace=client, create_users=True)
    assert "diffed_users" in made.manifest
    assert once == 1 and steps >= 2


def test_an_unchanged_export_reads_once_and_sends_nothing(base, client, ledger, reads,
                                                          monkeypatch, tmp_path):
    mapping = _mapping(base)
    export = _stored(base, tmp_path, "base")
    _sync(export, mapping, client, ledger)
    made, once, steps = _both_ways(export, mapping, ledger, reads, monkeypatch,
                                   workspace=client, create_users=True)
    assert made.is_empty and made.manifest["converged_with"]
    assert (once, steps) == (1, 1)


def test_a_record_without_row_hashes_hashes_first_then_reads_once_more(
        base, client, ledger, reads, monkeypatch, tmp_path):
    import json

    mapping = _mapping(base)
    export = _stored(base, tmp_path, "base")
    _sync(export, mapping, client, ledger)
    record = json.loads(ledger._meta("converged"))
    record["inputs"] = None          # as recorded before row hashes were kept
    ledger._write(lambda c: c.execute("UPDATE meta SET value = ? WHERE key = 'converged'",
                                      (json.dumps(record),)))
    same, once, _ = _both_ways(export, mapping, ledger, reads, monkeypatch, workspace=client,
                               create_users=True)
    assert same.is_empty and once == 1                 # the digest answers: no projection
    changed = _stored(_edited(base, CHANGES["many things at once"]), tmp_path, "changed")
    made, once, steps = _both_ways(changed, mapping, ledger, reads, monkeypatch,
                                   workspace=client, create_users=True)
    assert not made.is_empty and "diffed_users" not in made.manifest
    assert (once, steps) == (2, 3)


def test_rows_seen_before_are_found_by_hash_in_any_order():
    import numpy as np

    from toolkit.sync.projection import _in_sorted

    before = np.sort(np.array([5, 9, 9, 2**64 - 1, 0], dtype=np.uint64))
    now = np.array([9, 1, 2**64 - 1, 0, 9, 10, 5], dtype=np.uint64)
    assert _in_sorted(now, before).tolist() == [True, False, True, True, True, False, True]
    assert _in_sorted(now, before[:0]).tolist() == [False] * len(now)
    assert _in_sorted(now[:0], before).tolist() == []
