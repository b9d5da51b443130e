"""The SQL diff's first-sync path and the file digest the plan's fingerprint is made of."""
from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .builders import make_export
from toolkit import engine
from toolkit.mapping import Mapping
from toolkit.sync import diff as diff_module
from toolkit.sync.diff import diff
from toolkit.sync.ledger import Snapshot
from toolkit.sync.projection import project


def _empty_state(path) -> Snapshot:
    """A ledger snapshot that holds no user: the general path (checksum join, state join,
    type-conflict check) with nothing to compare against."""
    pq.write_table(pa.table({"uid": pa.array([], pa.string()),
                             "checksum": pa.array([], pa.uint64())}), path)
    return Snapshot(path, frozenset(), None, 0)


@pytest.mark.parametrize("row_group", [7, 122_880])
def test_a_first_sync_reads_the_projection_yet_equals_the_diff_against_an_empty_state(
        tmp_path, monkeypatch, row_group):
    """With no snapshot the diff skips the checksum and state joins and the copies of the
    projection; its operations file, requests, counts and digest must be exactly those of the
    general path against a state that holds nothing — for attributes, events (membership and
    trait) and cohort changes, rows cut into row groups anywhere."""
    monkeypatch.setattr(diff_module, "ROW_GROUP", row_group)
    export = make_export(300, anonymous=4, email_only=2, seed=3)
    mapping = (Mapping.from_export(export).set("vip_customer", send_as="cohort")
               .set("dormant_shopper", send_as="both").set("total_revenue_180_days",
                                                          send_as="both"))
    results = {}
    with engine.connect() as db:
        projection = project(export, mapping, db=db)
        assert {f.op for f in projection.fields} == {"attribute", "event", "cohort"}
        for name, snapshot in (("first", None), ("general", _empty_state(tmp_path / "s.parquet"))):
            out = tmp_path / f"{name}.parquet"
            results[name] = (diff(db, projection, snapshot, None, limit=4, out=out), out)
    (first, first_path), (general, general_path) = results["first"], results["general"]
    assert first.rows > 0 and first.rows == general.rows
    assert pq.read_table(first_path).equals(pq.read_table(general_path))
    assert pq.read_schema(first_path) == diff_module.OPERATIONS_SCHEMA  # plain text columns
    assert first.batches.equals(general.batches)
    assert (first.tally, first.users, first.attribute_users, first.changed_users) == (
        general.tally, general.users, general.attribute_users, general.changed_users)
    assert first.ops_digest == general.ops_digest   # the very same bytes
    assert first.ops_digest == hashlib.sha256(first_path.read_bytes()).hexdigest()
    assert len(first.conflicts) == len(general.conflicts) == 0
