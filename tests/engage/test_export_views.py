"""Looking at a large export without displaying all of it: a reproducible sample, and SQL on
the data engine over its tables."""
from __future__ import annotations

from pathlib import Path

import pytest

import toolkit
from toolkit.errors import ExportValidationError

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"


@pytest.fixture(scope="module")
def export():
    return toolkit.load(SAMPLES / "audience_csv" / "formatted")


def test_sample_is_reproducible_and_bounded(export):
    a, b = export.sample(25, seed=3), export.sample(25, seed=3)
    assert len(a) == 25 and a.index.equals(b.index)
    assert not a.index.equals(export.sample(25, seed=4).index)
    assert len(export.sample(10 ** 9)) == len(export.profiles)
    with pytest.raises(ExportValidationError):
        export.sample(-1)


def test_sql_counts_what_pandas_counts(export):
    counts = export.sql("SELECT count(*) FILTER (WHERE vip_customer) AS vip, "
                        "count(*) FILTER (WHERE vip_customer AND dormant_shopper) AS both "
                        "FROM profiles")
    p = export.profiles
    vip = p["vip_customer"].fillna(False).astype(bool)
    dormant = p["dormant_shopper"].fillna(False).astype(bool)
    assert counts.loc[0, "vip"] == vip.sum()
    assert counts.loc[0, "both"] == (vip & dormant).sum()
    kinds = export.sql("SELECT kind, count(*) AS n FROM computations GROUP BY kind ORDER BY kind")
    assert dict(zip(kinds["kind"], kinds["n"])) == {"audience": len(export.audiences),
                                                    "trait": len(export.traits)}


def test_a_bad_query_is_a_clear_error(export):
    with pytest.raises(ExportValidationError) as err:
        export.sql("SELECT no_such_column FROM profiles")
    assert err.value.field == "query" and "no_such_column" in str(err.value)
    with pytest.raises(ExportValidationError):
        export.sql("  ")
