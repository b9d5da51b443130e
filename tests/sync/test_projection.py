"""The desired-state projection: JSON texts built column-wise equal json.dumps of the converted
values (so they compare equal to what earlier ledgers stored), and one rule for shared ids."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .builders import make_export
from toolkit.braze import rules as braze_rules
from toolkit.mapping import Mapping
from toolkit.sync.projection import json_texts, owners, project


def _reference(conv, field=None) -> list:
    values = braze_rules.to_json_values(conv, field=field)
    return [None if pd.isna(v) else json.dumps(v, separators=(",", ":"), sort_keys=True,
                                               ensure_ascii=False) for v in values]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False),
                          st.integers(-2 ** 60, 2 ** 60).map(float)), max_size=40))
def test_number_texts_match_json_dumps(values):
    conv = braze_rules.convert(pd.Series(values, dtype="Float64"), "number")
    assert json_texts(conv).to_pylist() == _reference(conv)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=30)), max_size=40))
def test_string_texts_match_json_dumps(values):
    conv = braze_rules.convert(pd.Series(values, dtype="string"), "string")
    assert json_texts(conv).to_pylist() == _reference(conv)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=12)), min_size=1, max_size=30),
       st.integers(0, 29))
def test_string_texts_of_a_slice_escape_the_right_values(values, start):
    # an array that starts inside its buffers (a slice) must still find the values to escape
    import pyarrow as pa

    from toolkit.sync.projection import _string_texts

    arr = pa.array(values, pa.large_string()).slice(min(start, len(values) - 1))
    assert _string_texts(arr).to_pylist() == [
        None if v is None else json.dumps(v, ensure_ascii=False) for v in arr.to_pylist()]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(-2 * 10 ** 18, 4 * 10 ** 18)), max_size=30),
       st.sampled_from([None, "dob"]))
def test_time_texts_match_json_dumps(nanos, field):
    times = pd.Series(pd.to_datetime(pd.array(nanos, dtype="Int64"), utc=True))
    conv = braze_rules.convert(times, "datetime", field=field)
    assert json_texts(conv, field=field).to_pylist() == _reference(conv, field)


def test_boolean_and_mixed_texts_match_json_dumps():
    conv = braze_rules.convert(pd.Series([True, False, None], dtype="boolean"), "boolean")
    assert json_texts(conv).to_pylist() == ["true", "false", None]
    mixed = braze_rules.convert(pd.Series([1, "a", None, 2.5], dtype=object), "string")
    assert json_texts(mixed).to_pylist() == _reference(mixed)


def test_the_last_profile_sharing_an_identifier_wins():
    keys = pd.Series(["external_id:a", None, "external_id:a", "external_id:b",
                      "external_id:a"], dtype="string")
    owner, shadowed = owners(keys)
    assert owner.tolist() == [False, False, False, True, True]
    assert shadowed.tolist() == [True, False, True, False, False]


def test_projection_has_one_row_per_braze_user_and_names_every_left_out_profile():
    export = make_export(30, anonymous=3, email_only=2)
    export.profiles.loc[5, "user_id"] = export.profiles.loc[1, "user_id"]
    mapping = Mapping.from_export(export).set("vip_customer", send_as="both")
    proj = project(export, mapping)
    uids = proj.table.column("uid").to_pylist()
    assert len(uids) == len(set(uids)) == 29
    codes = proj.left_out.groupby("code").size().to_dict()
    assert codes == {"anonymous_only": 3, "email_only": 2, "shared_identifier": 1}
    fields = {f.field: f.kind for f in proj.fields}
    assert fields["attr:vip_customer"] == fields["member:vip_customer"] == "membership"
    assert fields["attr:total_revenue_180_days"] == "value"
    # the winner's values are the ones projected
    row = uids.index("external_id:" + export.profiles.loc[5, "user_id"])
    spec = next(f for f in proj.fields if f.field == "attr:total_revenue_180_days")
    expected = export.profiles.loc[5, "total_revenue_180_days"]
    assert json.loads(proj.table.column(spec.column)[row].as_py()) == pytest.approx(expected)
    assert np.all(proj.table.column("pos").to_numpy() != 1)


def test_candidates_from_colliding_hashes_are_compared_by_their_real_keys():
    # the engine finds candidates by a 64-bit hash of each key; only rows whose real keys are
    # equal may lose to a later row
    from toolkit.sync.projection import IDENTITY_COLUMNS, _shared_among

    export = make_export(10)
    ident = [c for c in IDENTITY_COLUMNS if c in export.profiles.columns]
    lose, winner, _ = _shared_among(export, np.array([1, 2, 5]), ident, False, None)
    assert len(lose) == 0 and len(winner) == 0
    export.profiles.loc[2, "user_id"] = export.profiles.loc[5, "user_id"]
    lose, winner, key_of = _shared_among(export, np.array([1, 2, 5]), ident, False, None)
    assert lose.tolist() == [2] and winner.tolist() == [5]
    assert key_of == {2: f"external_id:{export.profiles.loc[5, 'user_id']}"}
