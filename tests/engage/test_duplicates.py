"""Rows of one profile merged into one say which rows, which value was kept (from which row)
and which values were dropped."""
from __future__ import annotations

import toolkit


def _dup(export, sid):
    (f,) = [f for f in export.findings.of("duplicate_profile") if f.segment_id == sid]
    return f


def test_merged_rows_name_the_kept_and_dropped_values(write):
    text = ("key,user_id,score,tier\n"
            "use_1,u1,5,gold\n"
            "use_2,u2,1,silver\n"
            "use_1,u9,6,gold\n"
            "use_2,u2,1,silver\n"
            "use_1,u1,,bronze\n")
    export = toolkit.load(write("shoppers.csv", text))
    one = _dup(export, "use_1")
    assert one.row == 1 and "rows 1, 3 and 5" in one.message
    assert "score kept 5 (row 1), dropped 6 (row 3)" in one.message
    assert "user_id kept 'u1' (row 1), dropped 'u9' (row 3)" in one.message
    assert "tier kept 'gold' (row 1), dropped 'bronze' (row 5)" in one.message
    two = _dup(export, "use_2")
    assert "rows 2 and 4" in two.message and "the rows agree" in two.message
    p = export.profiles.set_index("segment_id")
    assert p.loc["use_1", "score"] == 5 and p.loc["use_1", "user_id"] == "u1"


def test_a_blank_is_filled_from_a_later_row_and_said_so(write):
    text = "key,user_id,score\nuse_1,u1,\nuse_1,u1,7\n"
    export = toolkit.load(write("shoppers.csv", text))
    f = _dup(export, "use_1")
    assert "score kept 7 (row 2)" in f.message and "dropped" not in f.message
    assert export.profiles.loc[0, "score"] == 7


def test_json_trait_values_are_compared_as_values(write):
    text = ('key,external_ids,traits\n'
            'use_1,"{""user_id"": [""u1""]}","{""plan"": {""a"": 1}, ""n"": 2}"\n'
            'use_1,"{""user_id"": [""u1""]}","{""n"": 2, ""plan"": {""a"": 1}}"\n'
            'use_2,"{""user_id"": [""u2""]}","{""n"": 1}"\n'
            'use_2,"{""user_id"": [""u2""]}","{""n"": 3}"\n')
    export = toolkit.load(write("shoppers.csv", text))
    assert "the rows agree" in _dup(export, "use_1").message
    assert "n kept 1 (row 3), dropped 3 (row 4)" in _dup(export, "use_2").message


def test_trait_csv_repeats_are_silent_unless_their_values_disagree(write):
    text = ("key,value,anonymous_id,email\n"
            "use_1,Mug,anon_1,a@x.com\nuse_1,Mug,anon_2,\n"
            "use_2,Hat,,b@x.com\nuse_2,Cap,,c@x.com\n")
    export = toolkit.load(write("last_product_viewed_item.csv", text))
    (f,) = export.findings.of("duplicate_profile")
    assert f.segment_id == "use_2" and f.row == 3
    assert "last_product_viewed_item kept 'Hat' (row 3), dropped 'Cap' (row 4)" in f.message


def test_profiles_sync_duplicates_name_the_kept_row_and_the_dropped_values(write, tmp_path):
    write("ps/profile_traits.csv", "canonical_segment_id,vip,score\nuse_1,true,1\n"
                                   "use_2,false,2\nuse_1,false,1\n")
    write("ps/external_id_mapping.csv", "canonical_segment_id,external_id_type,"
                                        "external_id_value\nuse_1,user_id,u1\nuse_2,user_id,u2\n")
    export = toolkit.load(tmp_path / "ps")
    (f,) = export.findings.of("duplicate_profile")
    assert f.segment_id == "use_1" and f.row == 3
    assert "row 1 is kept" in f.message and "vip kept 'true' (row 1), dropped 'false' (row 3)" in \
        f.message and "score" not in f.message
