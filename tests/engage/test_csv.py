"""Audience and computed-trait CSV readers: every shape, identifiers, typing, repairs."""
from __future__ import annotations

import hashlib

import pandas as pd
import pytest

import toolkit
from toolkit.engage.csv import detect_csv_kind, key_from_path, match_hashed
from toolkit.engage.model import IDENTIFIER_COLUMNS

FORMATTED = """key,user_id,email,email_1,anonymous_id,first_name,total_revenue_180_days,last_order_at,is_vip
use_2JqN8w1rT0pXbZ4yH6kL9mQ3aVd,u_100234,Ana.Silva@Example.com,,6f0c2c5e-9b1d-4b7a-8a43-0c1f3e6b2d11,Ana,450.0,2025-03-01T10:00:00Z,true
use_2JqN8xA4bC7dE1fG3hJ5kL7mN9p,u_100871,j.kim@example.com,jkim.work@example.org,,Jun,82.5,2025-02-11T09:30:00Z,false
use_3ZZZ8xA4bC7dE1fG3hJ5kL7mN9p,,,,0c1f3e6b-9b1d-4b7a-8a43-6f0c2c5e2d11,,,,
"""


@pytest.mark.parametrize("name,key", [
    ("dormant_shopper.csv", "dormant_shopper"),
    ("audience_dormant_shopper_formatted.csv", "dormant_shopper"),
    ("Audience-VIP_Customer-Unformatted.csv", "vip_customer"),
    ("first_time_shopper_2025-03-14.csv", "first_time_shopper"),
    ("trait_total_revenue_180_days_20250314T0800Z.csv", "total_revenue_180_days"),
    ("vip_customer.members.csv", "vip_customer"),
])
def test_key_from_file_name(name, key):
    assert key_from_path(name) == key


def test_key_from_unusable_name_asks_for_computation_key():
    with pytest.raises(toolkit.ExportFormatError, match="computation_key"):
        key_from_path("2025 export (1).csv")


def test_formatted_csv_identifiers_traits_and_types(write):
    export = toolkit.load(write("dormant_shopper.csv", FORMATTED))
    p = export.profiles
    assert list(p.columns[:7]) == [*IDENTIFIER_COLUMNS, "emails", "anonymous_ids"]
    for c in IDENTIFIER_COLUMNS:
        assert p[c].dtype == "string"
    assert export.audiences == ["dormant_shopper"]
    assert set(export.traits) == {"first_name", "total_revenue_180_days", "last_order_at", "is_vip"}
    assert p["dormant_shopper"].dtype == "boolean" and p["dormant_shopper"].all()
    assert p["total_revenue_180_days"].dtype == "Float64"
    assert str(p["last_order_at"].dtype) == "datetime64[ns, UTC]"
    assert p["is_vip"].dtype == "boolean" and p["is_vip"].tolist()[:2] == [True, False]
    assert p.loc[0, "email"] == "ana.silva@example.com"
    assert tuple(p.loc[1, "emails"]) == ("j.kim@example.com", "jkim.work@example.org")
    assert tuple(p.loc[2, "emails"]) == () and tuple(p.loc[2, "anonymous_ids"]) == ("0c1f3e6b-9b1d-4b7a-8a43-6f0c2c5e2d11",)
    comps = export.computations.set_index("key")
    assert comps.loc["total_revenue_180_days", "value_type"] == "number"
    assert comps.loc["last_order_at", "value_type"] == "datetime"
    assert export.findings.of("string_boolean", "info")  # "true"/"false" text read as booleans
    assert [f.row for f in export.findings.of("anonymous_only")] == [3]


def test_formatted_semicolon_bom_and_audience_override(write):
    text = "\ufeff" + FORMATTED.replace(",", ";")
    export = toolkit.load(write("whatever.csv", text), computation_key="vip_customer")
    assert export.audiences == ["vip_customer"]
    assert len(export.profiles) == 3
    assert {"separator", "bom"} <= set(export.findings.counts())


def test_formatted_audience_column_gives_membership(write):
    text = "key,email,winback\nuse_a,a@example.com,true\nuse_b,b@example.com,false\n"
    export = toolkit.load(write("winback.csv", text))
    assert export.profiles["winback"].tolist() == [True, False]
    assert export.traits == []


def test_unformatted_csv(write):
    text = ('key,external_ids,traits\n'
            'use_1,"{""user_id"":[""u_1""],""email"":[""A@x.com"",""b@x.com""]}",'
            '"{""first_time_shopper"":true,""total_revenue_180_days"":450.0,""first_name"":""Ana""}"\n'
            'use_2,"{""anonymous_id"":[""anon-2""]}","{""first_time_shopper"":true,'
            '""total_revenue_180_days"":""82.5""}"\n')
    export = toolkit.load(write("first_time_shopper.csv", text))
    p = export.profiles
    assert detect_csv_kind(export.source.split(" (")[0]) == "csv_unformatted"
    assert tuple(p["emails"].iloc[0]) == ("a@x.com", "b@x.com") and p["email"].iloc[0] == "a@x.com"
    assert p["first_time_shopper"].tolist() == [True, True]
    assert p["total_revenue_180_days"].dtype == "Float64"
    assert pd.isna(p["total_revenue_180_days"].iloc[1])
    drift = export.findings.of("type_drift")
    assert len(drift) == 1 and drift[0].row == 2 and drift[0].column == "total_revenue_180_days"


def test_legacy_csv_with_typographic_quotes(write):
    text = ('key,external_ids\n'
            'segment_id_1,"{""anonymous_id"":[""anon_1""], ""email"": [\u201cluke@force.com\u201d, '
            '\u201cchosen_one@force.com\u201d]}"\n')
    export = toolkit.load(write("jedi.csv", text))
    assert export.source.endswith("(csv_legacy)")
    assert tuple(export.profiles.loc[0, "emails"]) == ("luke@force.com", "chosen_one@force.com")
    assert export.findings.of("repaired_quotes")


def test_legacy_formatted_with_indexed_columns(write):
    text = ('key,external_ids,anonymous_id,email,email_1\n'
            'use_1,"{""email"":[""a@x.com"",""b@x.com""]}",anon_1,a@x.com,b@x.com\n')
    export = toolkit.load(write("jedi.csv", text))
    assert tuple(export.profiles.loc[0, "emails"]) == ("a@x.com", "b@x.com")
    assert export.profiles.loc[0, "anonymous_id"] == "anon_1"


def test_hashed_csv_and_matching(write):
    emails = ["ana@example.com", "jun@example.com", "nobody@example.com"]
    text = "email\n" + "\n".join(hashlib.sha256(e.encode()).hexdigest().upper() for e in emails)
    hashed = toolkit.load(write("vip_customer.csv", text + "\n"))
    assert hashed.source.endswith("(csv_hashed)")
    assert hashed.profiles["segment_id"].str.startswith("sha256:").all()
    assert hashed.identifier_coverage()["braze_usable"] == 0
    assert hashed.findings.of("hashed_identifier", "error")
    known = toolkit.load(pd.DataFrame({"segment_id": ["use_a", "use_b"], "user_id": ["u_a", "u_b"],
                                       "email": ["Ana@example.com", "jun@example.com"]}))
    matched = match_hashed(hashed, known)
    assert matched.profiles["user_id"].tolist()[:2] == ["u_a", "u_b"]
    assert pd.isna(matched.profiles["user_id"].iloc[2])
    assert "1 profiles" in matched.findings.of("hashed_identifier")[0].message


@pytest.mark.parametrize("text", [
    # a: key,value,external_ids
    'key,value,external_ids\nuse_1,450.5,"{""user_id"":[""u_1""]}"\nuse_2,12,"{""email"":[""b@x.com""]}"\n',
    # b: indexed identifier columns
    'key,value,external_ids,anonymous_id,email,email_1\nuse_1,450.5,,anon_1,a@x.com,\n'
    'use_2,12,,,b@x.com,c@x.com\n',
])
def test_trait_csv_shapes_a_and_b(write, text):
    export = toolkit.load(write("total_revenue_180_days.csv", text))
    assert export.audiences == [] and export.traits == ["total_revenue_180_days"]
    assert export.profiles["total_revenue_180_days"].tolist() == [450.5, 12.0]


def test_trait_csv_shape_c_repeats_rows_per_identifier(write):
    text = ('key,value,external_ids,anonymous_id,email\n'
            'use_1,Camp Mug,,anon_1,a@x.com\nuse_1,Camp Mug,,anon_2,a2@x.com\nuse_2,Beanie,,,b@x.com\n')
    export = toolkit.load(write("last_product_viewed_item.csv", text))
    p = export.profiles
    assert len(p) == 2
    assert tuple(p.loc[0, "emails"]) == ("a@x.com", "a2@x.com")
    assert tuple(p.loc[0, "anonymous_ids"]) == ("anon_1", "anon_2")
    assert not export.findings.of("duplicate_profile")  # expected in shape c


def test_duplicate_rows_in_audience_csv_are_merged_and_reported(write):
    text = "key,user_id,email\nuse_1,u_1,a@x.com\nuse_2,u_2,b@x.com\nuse_1,u_1,c@x.com\n"
    export = toolkit.load(write("dormant_shopper.csv", text))
    assert len(export.profiles) == 2
    assert tuple(export.profiles.loc[0, "emails"]) == ("a@x.com", "c@x.com")
    (dup,) = export.findings.of("duplicate_profile")
    assert dup.row == 1 and dup.segment_id == "use_1"


def test_no_key_column_derives_profile_ids(write):
    export = toolkit.load(write("dormant_shopper.csv", "user_id,email\nu_1,a@x.com\n,b@x.com\n"))
    assert export.profiles["segment_id"].tolist() == ["user_id:u_1", "email:b@x.com"]


def test_invalid_dates_and_drift_in_a_csv_column(write):
    text = ("key,user_id,last_order_at,total_revenue_180_days\n"
            "use_1,u_1,2025-03-01,10.5\nuse_2,u_2,2025-13-45,11\nuse_3,u_3,2025-02-01,n/a\n")
    export = toolkit.load(write("dormant_shopper.csv", text))
    (bad_date,) = export.findings.of("invalid_date")
    assert bad_date.row == 2 and bad_date.column == "last_order_at"
    (drift,) = export.findings.of("type_drift")
    assert drift.row == 3 and "n/a" in drift.message
    assert pd.isna(export.profiles.loc[2, "total_revenue_180_days"])


def test_ignored_identifier_columns_are_not_traits(write):
    export = toolkit.load(write("a_b.csv", "key,user_id,ios.idfa\nuse_1,u_1,ABC\n"))
    assert export.traits == [] and export.findings.of("ignored_identifier")


def test_quoted_values_spanning_lines(write):
    text = 'key,user_id,note\nuse_1,u_1,"first line\nsecond line"\nuse_2,u_2,plain\n'
    export = toolkit.load(write("dormant_shopper.csv", text))
    assert export.profiles["note"].tolist() == ["first line\nsecond line", "plain"]
