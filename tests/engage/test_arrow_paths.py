"""The vectorised million-row paths of the Engage readers agree with plain-Python references:
identifier lists, duplicate detection, list unions, predicted column types and the checks that
skip work when nothing can be found."""
from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import toolkit
from toolkit.engage.frames import (ID_LIST_DTYPE, has_duplicates, id_lists, id_lists_from_arrow,
                                   may_need_trim, union_id_lists)


def _random_text(rng: random.Random, n: int, *, null_rate=0.2, max_len=20, alphabet="ab ") -> list:
    return [None if rng.random() < null_rate else
            "".join(rng.choice(alphabet) for _ in range(rng.randint(0, max_len)))
            for _ in range(n)]


def _chunked(values: list, sizes=(7, 1, 30)) -> pa.ChunkedArray:
    chunks, i = [], 0
    while i < len(values):
        size = sizes[len(chunks) % len(sizes)]
        chunks.append(pa.array(values[i:i + size], type=pa.string()))
        i += size
    return pa.chunked_array(chunks, type=pa.string())


@pytest.mark.parametrize("width", [1, 2, 3])
def test_id_lists_match_the_python_reference(width):
    rng = random.Random(width)
    n = 400
    columns = [_random_text(rng, n, null_rate=0.3 + 0.2 * j, max_len=2) for j in range(width)]
    got = id_lists_from_arrow([_chunked(c) for c in columns], n)
    want = [list(dict.fromkeys(v for v in row if v is not None)) for row in zip(*columns)]
    assert got.dtype == ID_LIST_DTYPE
    assert got.tolist() == want


def test_id_lists_with_no_columns_or_only_empty_extra_columns():
    assert id_lists_from_arrow([], 3).tolist() == [[], [], []]
    empty = pa.chunked_array([pa.array([None, None, None], pa.string())])
    first = pa.chunked_array([pa.array(["a", None, "b"])])
    assert id_lists_from_arrow([first, empty], 3).tolist() == [["a"], [], ["b"]]
    assert id_lists_from_arrow([empty, first], 3).tolist() == [["a"], [], ["b"]]


def test_id_lists_from_python_values():
    got = id_lists([("a", "b", "a"), None, [], "c", np.array(["d", None], dtype=object)])
    assert got.dtype == ID_LIST_DTYPE
    assert got.tolist() == [["a", "b"], [], [], ["c"], ["d"]]


@pytest.mark.parametrize("case", ["short", "fixed", "long", "sliced", "large_string", "big"])
def test_has_duplicates_matches_the_python_reference(case):
    rng = random.Random(sum(map(ord, case)))
    if case == "fixed":      # every value the same width, like Segment ids
        values = [f"use_{rng.randrange(10**6):027d}" for _ in range(3000)]
    elif case == "long":     # too long for fingerprints: pyarrow's hash table decides
        values = ["x" * 200 + str(rng.randrange(400)) for _ in range(300)]
    elif case == "big":      # enough values for the partitioned check
        values = [f"u_{i}" for i in range(70_000)]
    else:
        values = _random_text(rng, 3000, max_len=6, alphabet="ab\x00")
    distinct = [v for v in dict.fromkeys(v for v in values if v is not None)]
    for sample in (values, distinct + [None, None]):
        arr = _chunked(sample)
        if case == "sliced":
            arr = pa.chunked_array([pa.array(["pad", *sample])[1:]])
        if case == "large_string":
            arr = arr.cast(pa.large_string())
        present = [v for v in sample if v is not None]
        assert has_duplicates(arr) == (len(set(present)) < len(present)), case
    if case == "big":
        assert has_duplicates(pa.array(values + [values[12_345]]))


@pytest.mark.parametrize("seed", range(6))
def test_has_duplicates_across_chunks_of_other_widths(seed):
    # a value's fingerprint must not depend on its neighbours: the CSV reader's chunks each
    # hold values of other widths, with or without nulls
    rng = random.Random(seed)
    repeated = "".join(rng.choice("abc") for _ in range(rng.randint(1, 40)))
    chunks = []
    for _ in range(2):
        width = rng.choice([len(repeated), rng.randint(1, 60)])
        others = ["".join(rng.choice("xyz") for _ in range(width)) + str(i) for i in range(5)]
        chunk = [repeated, *others, *([None] * rng.randint(0, 2))]
        rng.shuffle(chunk)
        chunks.append(pa.array(chunk, type=pa.string()))
    assert has_duplicates(pa.chunked_array(chunks))
    unique = pa.chunked_array([chunks[0], pa.array(["zz" + repeated])])
    assert not has_duplicates(unique)


def test_union_id_lists_merges_in_row_then_list_order():
    lists = id_lists([["a", "b"], ["c"], ["b", "d"], [], ["e"]])
    codes = np.array([0, 1, 0, -1, 1])  # -1: a row in no group
    assert union_id_lists(lists, codes, 2).tolist() == [["a", "b", "d"], ["c", "e"]]


def test_may_need_trim_is_conservative():
    assert not may_need_trim(pa.chunked_array([pa.array(["a@x.com", None])]))
    assert may_need_trim(pa.chunked_array([pa.array(["a@x.com "])]))
    assert may_need_trim(pa.chunked_array([pa.array(["\u00a0a@x.com"])]))  # a Unicode space


def test_every_reader_gives_identifier_lists_as_arrow_lists(samples):
    export = toolkit.load(samples / "events" / "engage_events.ndjson.gz")
    frame = toolkit.load(export.profiles.drop(columns=["emails"]))
    merged = toolkit.engage.readers.merge([export, frame])
    for p in (export.profiles, frame.profiles, merged.profiles):
        for column in ("emails", "anonymous_ids"):
            assert p[column].dtype == ID_LIST_DTYPE
    assert all(list(e)[:1] == ([m] if m is not pd.NA else [])
               for e, m in zip(frame.profiles["emails"], frame.profiles["email"]))


def test_padded_identifiers_are_trimmed_and_blank_ones_missing(write):
    text = ("key,user_id,email,email_1\n"
            " use_1 ,u_1, Ana@X.com ,   \n"
            "use_2,u_2,b@x.com,B@x.com\n")
    p = toolkit.load(write("dormant_shopper.csv", text)).profiles
    assert p["segment_id"].tolist() == ["use_1", "use_2"]
    assert p["email"].tolist() == ["ana@x.com", "b@x.com"]
    assert p["emails"].tolist() == [["ana@x.com"], ["b@x.com"]]  # lower-cased, then distinct


def _formatted_csv(rows: int, value, when) -> str:
    lines = ["key,user_id,total_revenue_180_days,last_order_at"]
    for i in range(rows):
        lines.append(f"use_{i:08d},u_{i},{value(i)},{when(i)}")
    return "\n".join(lines) + "\n"


def test_predicted_number_column_with_a_late_misfit_still_reports_drift(write):
    # the type is decided from the first 2,000 values; row 3000 is text in a number column
    text = _formatted_csv(3500, lambda i: "oops" if i == 2999 else f"{i}.5",
                          lambda i: "2025-03-01T10:00:00Z")
    export = toolkit.load(write("vip_customer.csv", text))
    p = export.profiles
    assert p["total_revenue_180_days"].dtype == "Float64"
    assert p["total_revenue_180_days"].isna().tolist().count(True) == 1
    assert pd.isna(p.loc[2999, "total_revenue_180_days"])
    (drift,) = export.findings.of("type_drift")
    assert drift.row == 3000 and drift.column == "total_revenue_180_days"


def test_predicted_datetime_column_accepts_a_late_date_without_zone(write):
    text = _formatted_csv(3000, lambda i: "1",
                          lambda i: "2025-03-01T10:00:00" if i == 2500 else "2025-03-01T10:00:00Z")
    export = toolkit.load(write("vip_customer.csv", text))
    dates = export.profiles["last_order_at"]
    assert str(dates.dtype) == "datetime64[ns, UTC]"
    assert dates.notna().all() and dates.nunique() == 1
    assert not export.findings.of("invalid_date") and not export.findings.of("type_drift")


def test_shared_user_id_found_in_a_large_export(write):
    text = _formatted_csv(70_000, lambda i: "1", lambda i: "2025-03-01T10:00:00Z")
    text = text.replace("use_00069999,u_69999,", "use_00069999,u_5,")
    export = toolkit.load(write("vip_customer.csv", text))
    (shared,) = export.findings.of("duplicate_user_id")
    assert "u_5" in shared.message and shared.row == 6
    # every value fitted the predicted types: parsed by the CSV reader itself
    assert (export.profiles["total_revenue_180_days"] == 1.0).all()
    assert str(export.profiles["last_order_at"].dtype) == "datetime64[ns, UTC]"


def test_long_strings_found_past_the_byte_prefilter(write):
    long_ascii, long_accents, short_accents = "x" * 300, "é" * 256, "é" * 200  # 400 bytes
    text = f"key,user_id,note\nuse_1,u_1,{long_ascii}\nuse_2,u_2,{long_accents}\nuse_3,u_3,{short_accents}\n"
    export = toolkit.load(write("vip_customer.csv", text))
    found = export.findings.of("long_string")
    assert [f.row for f in found] == [1, 2]
    assert "256 characters" in found[1].message


# -- the load's restructured scans agree with the plain ones ---------------------------------

def test_formula_positions_match_the_python_rule_over_chunks_nulls_and_slices():
    from toolkit.engage.frames import formula_positions, is_formula_like

    rng = random.Random(7)
    values = _random_text(rng, 2000, null_rate=0.2, max_len=6, alphabet="=+-@ \t\r1a(.e")
    values[-1] = ""  # an empty last value: its first byte lies past the data
    want = [i for i, v in enumerate(values) if v is not None and is_formula_like(v)]
    assert want  # the sample holds formula-like values, signed numbers and phone numbers
    for arr in (_chunked(values), pa.chunked_array([pa.array(["=pad", *values])[1:]]),
                _chunked(values).cast(pa.large_string())):
        assert formula_positions(arr).tolist() == want
    assert formula_positions(pa.chunked_array([pa.array([None, ""])])).tolist() == []


def test_non_finite_numbers_found_when_a_null_slot_holds_nan():
    from toolkit.engage.frames import _split_non_finite

    finite = pa.chunked_array([pa.array([1.0, None, 2.5])])
    assert _split_non_finite(finite)[1] == {}
    # a null whose slot holds NaN is still no value; the real NaN and -inf are reported
    data = pa.py_buffer(np.array([np.nan, 1.0, np.nan, -np.inf]).tobytes())
    validity = pa.py_buffer(np.packbits([0, 1, 1, 1], bitorder="little").tobytes())
    arr = pa.Array.from_buffers(pa.float64(), 4, [validity, data])
    numbers, kinds = _split_non_finite(pa.chunked_array([arr]))
    assert kinds["NaN"].tolist() == [2] and kinds["-inf"].tolist() == [3]
    assert not len(kinds["+inf"])
    assert numbers.to_pylist() == [None, 1.0, None, -np.inf]


@pytest.mark.parametrize("quotes", [0, 1, 2, 999, 1000, 1001, 2500])
def test_odd_quote_count_with_memchr_and_with_numpy(quotes):
    from toolkit.engage import csv as csv_reader

    rng = random.Random(quotes)
    data = bytearray(b"x" * 5000)
    for at in rng.sample(range(len(data)), quotes):
        data[at] = ord('"')
    buffer = pa.py_buffer(bytes(data))
    assert csv_reader._odd_quotes(buffer) is bool(quotes % 2)
    memchr, csv_reader._memchr = csv_reader._memchr, None   # where no C library loads
    try:
        assert csv_reader._odd_quotes(buffer) is bool(quotes % 2)
    finally:
        csv_reader._memchr = memchr


@pytest.mark.parametrize("n", [40_000, 70_000, 300_000])
def test_has_duplicates_finds_one_repeat_at_every_part_count(n):
    values = [f"use_{i:027d}" for i in range(n)]   # one width: fingerprints read in place
    assert not has_duplicates(pa.array(values))
    assert has_duplicates(pa.array([*values, values[n // 3]]))
    assert has_duplicates(pa.array([f"u_{i}" for i in range(n)] + ["u_7"]))


def test_text_checks_computed_while_typing_find_what_the_validation_finds(write, monkeypatch):
    # long and formula-like values are found on the worker pool with each column's typing;
    # the findings (rows, columns, profiles) are those of the validation's own pass
    from toolkit.engage import validation

    rows = ["key,user_id,note,plan"]
    for i in range(3000):
        note = "=SUM(A1)" if i % 700 == 5 else "x" * 300 if i % 900 == 1 else f"n{i}"
        rows.append(f"use_{i:05d},u_{i},{note},{'-1' if i == 12 else '@home' if i == 13 else 'p'}")
    path = write("vip_customer.csv", "\n".join(rows) + "\n")
    with_pool = toolkit.load(path)
    monkeypatch.setattr(validation, "with_text_checks", lambda typed, column: typed)
    monkeypatch.setattr("toolkit.engage.csv.with_text_checks", lambda typed, column: typed)
    alone = toolkit.load(path)
    assert list(with_pool.findings) == list(alone.findings)
    formulas = with_pool.findings.of("formula_text")
    assert [(f.row, f.column) for f in formulas] == [
        (6, "note"), (706, "note"), (1406, "note"), (2106, "note"), (2806, "note"), (14, "plan")]
    assert formulas[0].segment_id == "use_00005"
    assert [f.row for f in with_pool.findings.of("long_string")] == [2, 902, 1802, 2702]


def test_text_checks_of_merged_rows_follow_the_merge(write):
    # a repeated profile merges rows: positions move, so the checks run on the merged column
    text = ("key,user_id,note\n"
            "use_1,u_1,a\n"
            "use_2,u_2,b\n"
            "use_1,u_1,\n"
            "use_3,u_3,=HYPERLINK(1)\n")
    export = toolkit.load(write("vip_customer.csv", text))
    (formula,) = export.findings.of("formula_text")
    assert formula.segment_id == "use_3" and formula.row == 4  # its data row


def test_sampled_kinds_reused_for_typing_give_the_same_export(write, monkeypatch):
    # the header's first megabyte decides each text column's kind once; typing the whole
    # column with those kinds gives what sampling it again gives (a file over 1 MB, with a
    # column of numbers then text: mixed, and one of text then numbers)
    lines = ["key,user_id,code,label"]
    for i in range(40_000):
        code = str(i) if i < 30_000 else f"c{i}"
        label = f"name {i}" if i < 2_500 else str(i)
        lines.append(f"use_{i:06d},u_{i},{code},{label}")
    path = write("vip_customer.csv", "\n".join(lines) + "\n")
    assert path.stat().st_size > 1 << 20
    reused = toolkit.load(path)
    from toolkit.engage import csv as csv_reader
    original = csv_reader._typed_text
    monkeypatch.setattr(csv_reader, "_typed_text",
                        lambda column, audience=False, kinds=None: original(column,
                                                                            audience=audience))
    sampled = toolkit.load(path)
    pd.testing.assert_frame_equal(reused.profiles, sampled.profiles)
    assert list(reused.findings) == list(sampled.findings)
    assert reused.findings.of("type_drift")  # the number column's late text is reported


def test_count_prefixed_matches_starts_with():
    from toolkit.engage.frames import count_prefixed

    rng = random.Random(3)
    values = _random_text(rng, 3000, null_rate=0.2, max_len=9, alphabet="sha256:x")
    values[-1] = ""
    for prefix in ("sha256:", "s", "x", ""):
        want = sum(1 for v in values if v is not None and v.startswith(prefix))
        for arr in (_chunked(values), pa.chunked_array([pa.array(["sha256:pad", *values])[1:]]),
                    _chunked(values).cast(pa.large_string())):
            assert count_prefixed(arr, prefix) == want, prefix
