"""Validation findings: what Braze would refuse or silently change, with rows and fixes."""
from __future__ import annotations

import json

import pandas as pd
import pytest

import toolkit
from toolkit.engage.readers import merge
from toolkit.engage.validation import MAX_ROW_FINDINGS


def test_findings_from_a_dataframe():
    frame = pd.DataFrame({
        "segment_id": ["use_1", "use_2", "use_3", "use_4", "use_5"],
        "user_id": ["u_1", "u_1", None, None, "u_5"],
        "email": [None, None, "c@x.com", None, None],
        "anonymous_id": [None, None, None, "anon-4", None],
        "vip": pd.array([True, False, True, True, False], dtype="boolean"),
        "note": ["ok", "x" * 300, None, "fine", 5],
        "$bad": [1, 2, 3, 4, 5],
        "k" * 256: ["a"] * 5,
        "signup": ["2025-01-01T00:00:00Z", "2025-02-30T00:00:00Z", None, None,
                   "2025-03-01T00:00:00Z"],
    })
    export = toolkit.load(frame)
    f = export.findings
    assert export.audiences == ["vip"]
    assert [x.row for x in f.of("anonymous_only")] == [4]
    assert f.of("anonymous_only")[0].severity == "error"
    assert f.of("email_only")[0].severity == "info"
    (dup,) = f.of("duplicate_user_id")
    assert "use_1" in dup.message and "use_2" in dup.message
    (long,) = f.of("long_string")
    assert long.row == 2 and long.column == "note"
    (drift,) = f.of("type_drift")
    assert drift.row == 5 and drift.column == "note" and drift.segment_id == "use_5"
    keys = {x.column for x in f.of("invalid_key")}
    assert keys == {"$bad", "k" * 255}
    (date,) = f.of("invalid_date")
    assert date.row == 2 and date.column == "signup"
    assert str(export.profiles["signup"].dtype) == "datetime64[ns, UTC]"
    frame_view = f.to_frame()
    assert list(frame_view.columns) == ["severity", "code", "row", "column", "segment_id",
                                        "message", "fix"]
    assert frame_view["fix"].notna().all()


def test_row_findings_are_capped_with_a_summary(write):
    n = MAX_ROW_FINDINGS + 50
    text = "key,anonymous_id\n" + "".join(f"use_{i},anon-{i}\n" for i in range(n))
    export = toolkit.load(write("dormant_shopper.csv", text))
    anon = export.findings.of("anonymous_only")
    assert len(anon) == MAX_ROW_FINDINGS + 1
    assert f"{n:,} rows in all" in anon[-1].message and anon[-1].row is None


def test_merge_of_audience_files_sets_false_for_other_files(write):
    a = write("d/dormant_shopper.csv", "key,user_id\nuse_1,u_1\nuse_2,u_2\n")
    write("d/vip_customer.csv", "key,user_id,total\nuse_2,u_2,10\nuse_3,u_3,20\n")
    export = toolkit.load(a.parent)
    p = export.profiles.set_index("segment_id")
    assert p["dormant_shopper"].tolist() == [True, True, False]
    assert p["vip_customer"].tolist() == [False, True, True]
    assert p["dormant_shopper"].dtype == "boolean" and p["total"].dtype == "Float64"
    assert pd.isna(p.loc["use_1", "total"])
    assert export.source.startswith("2 exports merged")


def test_merge_reports_a_key_whose_type_differs_between_files(write):
    a = toolkit.load(write("a/x.csv", "key,user_id,score\nuse_1,u_1,10\n"))
    b = toolkit.load(write("b/y.csv", "key,user_id,score\nuse_2,u_2,high\n"))
    merged = merge([a, b])
    (drift,) = merged.findings.of("type_drift")
    assert "score" in drift.message and "y.csv" in drift.message


def test_ndjson_type_drift_and_string_booleans(write):
    def m(uid, value, key="total", klass="trait"):
        return json.dumps({"type": "identify", "userId": uid, "timestamp": "2025-01-01T00:00:00Z",
                           "context": {"personas": {"computation_class": klass,
                                                    "computation_key": key}},
                           "traits": {key: value}})
    text = "\n".join([m("u_1", 1.5), m("u_2", 2.0), m("u_3", "3.0"),
                      m("u_4", "false", "vip", "audience")]) + "\n"
    export = toolkit.load(write("e.ndjson", text))
    (drift,) = export.findings.of("type_drift")
    assert drift.row == 3 and drift.column == "total" and "'3.0'" in drift.message
    (sb,) = export.findings.of("string_boolean")
    assert sb.row == 4 and sb.severity == "warning"


@pytest.mark.parametrize("severity", ["fatal", "WARN"])
def test_finding_severity_is_checked(severity):
    with pytest.raises(ValueError):
        toolkit.Finding(severity, "x", "y")
