"""The fast paths of value conversion and the preview's column reads give exactly what the plain
pandas formulations give (Arrow byte sizes, no per-value character count, no copies)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from toolkit.braze import payload_rules
from toolkit.braze.limits import LIMITS
from toolkit.preview import _EngineBuilder, _non_empty


def _texts(seed: int = 0, n: int = 3000) -> list[str | None]:
    rng = np.random.default_rng(seed)
    out: list[str | None] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.1:
            out.append(None)
        elif r < 0.15:   # more bytes than the limit, not always more characters
            out.append("é" * int(rng.integers(120, 300)))
        elif r < 0.2:
            out.append("x" * int(rng.integers(250, 260)))
        elif r < 0.22:
            out.append("")
        else:
            out.append(f"v{rng.integers(0, 100)}")
    return out


def _columns() -> list[pd.Series]:
    values = _texts()
    chunked = pa.chunked_array([pa.array(values[:1000]), pa.array(values[1000:])])
    return [
        pd.Series(values, dtype="string", name="k"),
        pd.Series(pd.arrays.ArrowStringArray(chunked), name="k"),
        pd.Series(pd.arrays.ArrowStringArray(chunked.slice(7)), name="k",
                  index=pd.RangeIndex(7, len(values))),
        pd.Series(values, dtype="string[python]", name="k"),
        pd.Series(["short"] * 5, dtype="string", name="k"),
    ]


@pytest.mark.parametrize("column", _columns(), ids=["arrow", "chunks", "sliced", "python", "short"])
def test_text_conversion_equals_the_pandas_formulation(column):
    conv = payload_rules.convert(column, "string")
    text = column.astype("string")
    bad = text.str.len().fillna(0) > LIMITS.string_length
    pd.testing.assert_series_equal(conv.values, text.where(~bad))
    pd.testing.assert_series_equal(conv.invalid, bad.astype(bool))
    assert conv.json_type == "string" and not conv.conflict.any()


@pytest.mark.parametrize("values", [[1.0, None, np.inf, -np.inf, 2.5], [1.0, None, 3.0], [None, None]])
def test_float_conversion_equals_the_pandas_formulation(values):
    column = pd.Series(values, dtype="Float64", name="n")
    conv = payload_rules.convert(column, "number")
    numbers = pd.to_numeric(column, errors="coerce").astype("Float64")
    bad = (column.notna() & numbers.isna()) | payload_rules._non_finite(numbers)
    pd.testing.assert_series_equal(conv.values, numbers.where(~bad))
    pd.testing.assert_series_equal(conv.invalid, bad)


@pytest.mark.parametrize("column", _columns() + [pd.Series(["x", None, ""], dtype=object),
                                                 pd.Series([], dtype="string")])
def test_non_empty_equals_comparing_with_the_empty_text(column):
    expected = pc.fill_null(pc.not_equal(pa.array(column.astype("string")), ""), False)
    assert _non_empty(column).tolist() == expected.to_numpy(zero_copy_only=False).tolist()


def test_median_number_equals_pandas_median():
    rng = np.random.default_rng(3)
    builder = _EngineBuilder.__new__(_EngineBuilder)
    builder._encodings = {}
    for _ in range(200):
        n = int(rng.integers(1, 40))
        values = rng.normal(size=n) * 10.0 ** int(rng.integers(-5, 15))
        column = pd.Series(pd.array(np.where(rng.random(n) < 0.3, np.nan, values),
                                    dtype="Float64"), name="n")
        expected = None if column.notna().sum() == 0 else float(column.median())
        assert builder._median_number(column) == expected


def test_median_day_equals_the_reference_value_parameter():
    from types import SimpleNamespace

    from toolkit.preview import value_parameter

    rng = np.random.default_rng(5)
    builder = _EngineBuilder.__new__(_EngineBuilder)
    rule = SimpleNamespace(attribute="last_order_at")
    for trial in range(1000):
        n = int(rng.integers(1, 30))
        scale = [2**62, 2**40, 10**18, 86400 * 10**9 * 3][trial % 4]
        ns = rng.integers(-scale, scale, n)
        if trial % 5 == 0:
            ns[: n // 2] = ns[0]   # ties
        times = pd.Series(pd.to_datetime(ns, utc=True)).where(rng.random(n) > 0.3)
        conv = payload_rules.Conversion(times, "time", times.isna(), times.isna())
        assert builder._median_day(rule, conv, times) == value_parameter(rule, conv, times)
