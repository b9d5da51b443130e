"""Profiles Sync reader: directory or pair of paths, CSV or parquet, merged_to, audiences=."""
from __future__ import annotations

import pandas as pd
import pytest

import toolkit

TRAITS = ("canonical_segment_id,first_name,vip,score,merged_to\n"
          "use_1,Ana,true,1.5,\nuse_2,Jun,false,2,\nuse_3,,false,,use_1\n")
MAPPING = ("canonical_segment_id,external_id_type,external_id_value,timestamp\n"
           "use_1,email,B@x.com,2024-01-02 00:00:00\nuse_1,email,a@x.com,2024-01-01 00:00:00\n"
           "use_1,user_id,u_1,2024-01-03 00:00:00\nuse_2,anonymous_id,anon-2,2024-01-01 00:00:00\n")


def test_directory_of_csv_tables(write):
    write("ps/profile_traits.csv", TRAITS)
    path = write("ps/external_id_mapping.csv", MAPPING).parent
    export = toolkit.load(path)
    p = export.profiles
    assert len(p) == 2 and export.findings.of("merged_profile")
    assert export.audiences == ["vip"] and set(export.traits) == {"first_name", "score"}
    assert tuple(p.loc[0, "emails"]) == ("a@x.com", "b@x.com") and p.loc[0, "email"] == "a@x.com"
    assert p.loc[0, "user_id"] == "u_1" and p.loc[1, "anonymous_id"] == "anon-2"
    assert p["vip"].tolist() == [True, False]


def test_pair_of_parquet_paths_and_explicit_audiences(write, tmp_path):
    traits = pd.read_csv(write("t.csv", TRAITS))
    mapping = pd.read_csv(write("m.csv", MAPPING))
    traits.to_parquet(tmp_path / "profile_traits.parquet")
    mapping.to_parquet(tmp_path / "external_id_mapping.parquet")
    export = toolkit.load((tmp_path / "profile_traits.parquet",
                           tmp_path / "external_id_mapping.parquet"), audiences=[])
    assert export.audiences == [] and "vip" in export.traits
    assert export.profiles["score"].dtype == "Float64"


def test_one_table_alone_is_refused(write):
    path = write("ps/profile_traits.csv", TRAITS)
    with pytest.raises(toolkit.ExportFormatError, match="both Profiles Sync tables"):
        toolkit.load(path, kind="profiles_sync")
