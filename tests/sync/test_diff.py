"""The SQL diff's first-sync path and the column digests the plan's fingerprint is made of."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from .builders import make_export
from toolkit import engine
from toolkit.mapping import Mapping
from toolkit.sync import diff as diff_module
from toolkit.sync.diff import (OPERATION_COLUMNS, ColumnDigest, DistinctDigest,
                                column_digests, diff)
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
    projection; its operations file, requests, counts and digests must be exactly those of the
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
    assert first.digests == general.digests
    assert first.digests == _digests_of_file(first_path)
    assert len(first.conflicts) == len(general.conflicts) == 0


def _digests_of_file(path) -> dict[str, bytes]:
    per_column = column_digests()
    table = pq.read_table(path)   # plain text columns
    for c in OPERATION_COLUMNS:
        per_column[c].update(table.column(c))
    return {c: d.digest() for c, d in per_column.items()}


def _digest(kind, *arrays) -> bytes:
    d = kind()
    for arr in arrays:
        d.update(arr)
    return d.digest()


@pytest.mark.parametrize("kind", [ColumnDigest, DistinctDigest])
def test_a_column_digest_depends_on_the_values_only(kind):
    """The same values hashed as one array, as chunks, dictionary-encoded, as large strings or
    as a slice give the same digest; a changed value, a moved value or a null for an empty
    text give another. Both kinds: by bytes, and by distinct value (the few-valued columns)."""
    values = ["attribute", None, "", "événement", "attribute", "x" * 300, "event", None, "event"]

    def digest(*arrays) -> bytes:
        return _digest(kind, *arrays)

    plain = pa.array(values, pa.string())
    reference = digest(plain)
    assert digest(plain.slice(0, 3), plain.slice(3)) == reference
    assert digest(pa.chunked_array([plain.slice(0, 5), plain.slice(5)])) == reference
    assert digest(pc.dictionary_encode(plain)) == reference
    assert digest(pc.dictionary_encode(plain.slice(0, 4)), plain.slice(4)) == reference
    assert digest(plain.cast(pa.large_string())) == reference
    assert digest(pa.array(["pad", *values], pa.string()).slice(1)) == reference
    for changed in (values[:3] + ["evenement"] + values[4:], values[1:] + values[:1],
                    [v if v is not None else "" for v in values], values[:-1] + [None]):
        assert digest(pa.array(changed, pa.string())) != reference


def test_a_byte_digest_hashes_numbers_by_value():
    numbers = np.arange(10, dtype=np.int64)
    assert _digest(ColumnDigest, pa.array(numbers)) == _digest(
        ColumnDigest, pa.array(numbers[:4]), pa.array(numbers[4:]))


def test_a_distinct_digest_ignores_how_the_dictionary_is_built():
    """Dictionaries in another order, with unused or repeated entries, and many values first
    seen in one chunk (found by one sort, not a scan each) give the plain column's digest."""
    values = ["attribute", None, "", "événement", "attribute", "x" * 300, "event", None, "event"]
    plain = pa.array(values, pa.string())
    odd = pa.array(["unused", "event", "x" * 300, "attribute", "", "événement", "attribute"])
    where = {"event": 1, "x" * 300: 2, "attribute": 6, "": 4, "événement": 5}
    indices = pa.array([where.get(v) if v is not None else None for v in values], pa.int32())
    assert _digest(DistinctDigest, pa.DictionaryArray.from_arrays(indices, odd)) == _digest(
        DistinctDigest, plain)
    assert _digest(DistinctDigest, pa.DictionaryArray.from_arrays(indices, odd).slice(2)) == \
        _digest(DistinctDigest, plain.slice(2))
    many = pa.array([f"v{(i * 7) % 37}" for i in range(500)], pa.string())
    reference = _digest(DistinctDigest, many)
    assert _digest(DistinctDigest, many.slice(0, 7), many.slice(7)) == reference
    assert _digest(DistinctDigest, pc.dictionary_encode(many)) == reference
    assert _digest(DistinctDigest, pa.array(many.to_pylist()[::-1], pa.string())) != reference
    # the plan's columns use one kind each
    assert {type(d) for d in column_digests().values()} == {ColumnDigest, DistinctDigest}
