"""A quoted CSV value that is never closed is reported as such — file, the line where the quote
opened, the column, and the fix — never as a field-count mismatch further down, and never
loaded silently with the following rows swallowed into one value."""
from __future__ import annotations

import pytest

import toolkit
from toolkit.errors import ExportFormatError

HEADER = "key,user_id,email,vip_customer\n"
GOOD = "use_1,u1,a@example.com,true\nuse_2,u2,b@example.com,true\n"

UNCLOSED = {
    # quote opened on line 4; the reader runs on into line 5 and finds too few fields
    "runs_into_the_next_row": (HEADER + GOOD + 'use_3,u3,"c@example.com,true\n'
                               "use_4,u4,d@example.com,true\n", 4, "email"),
    # quote opened on the last line: the file ends inside it
    "last_row": (HEADER + GOOD + 'use_3,u3,"c@example.com,true\n', 4, "email"),
    "last_row_without_newline": (HEADER + GOOD + 'use_3,u3,c@example.com,"true', 4,
                                 "vip_customer"),
    # two columns: the runaway value swallows every later row and the field count still fits
    "swallows_later_rows": ("key,note\nuse_1,ok\nuse_2,\"abc\nuse_3,x\nuse_4,y\n", 3, "note"),
    "crlf_line_ends": ((HEADER + GOOD + 'use_3,u3,"c@example.com,true\n'
                        "use_4,u4,d@example.com,true\n").replace("\n", "\r\n"), 4, "email"),
    # text after a closing quote on line 2 ("a"b) is tolerated; the quote on line 3 is not
    "after_a_tolerated_oddity": ('key,user_id,note\nuse_1,u1,"a"b\nuse_2,u2,"x\n', 3, "note"),
    "semicolons": ((HEADER + GOOD + 'use_3;u3;"c@example.com;true\n').replace(",", ";"), 4,
                   "email"),
}


@pytest.mark.parametrize("text,line,column", UNCLOSED.values(), ids=UNCLOSED.keys())
def test_unclosed_quote_names_the_line_it_opened_on(write, text, line, column):
    path = write("vip_customer.csv", text)
    with pytest.raises(ExportFormatError) as info:
        toolkit.load(path)
    err = info.value
    assert "never closed" in err.message and "quote" in err.message, err.message
    assert err.file == str(path) and err.line == line and err.column == column
    assert '""' in err.hint and "close" in err.hint


def test_unclosed_quote_in_a_profiles_sync_table(write, tmp_path):
    write("ps/profile_traits.csv", "canonical_segment_id,vip\nuse_1,true\nuse_2,\"true\n"
                                   "use_3,false\n")
    write("ps/external_id_mapping.csv", "canonical_segment_id,external_id_type,"
                                        "external_id_value\nuse_1,user_id,u1\n")
    with pytest.raises(ExportFormatError, match="never closed") as info:
        toolkit.load(tmp_path / "ps")
    assert info.value.line == 3 and info.value.file.endswith("profile_traits.csv")


@pytest.mark.parametrize("text", [
    HEADER + GOOD + 'use_3,u3,"c@example.com",true\n',                     # quoted, closed
    "key,user_id,note\nuse_1,u1,\"two\nlines\"\nuse_2,u2,x\n",              # legit line break
    "key,user_id,note\nuse_1,u1,\"say \"\"hi\"\"\"\nuse_2,u2,x\n",          # escaped quotes
    "key,user_id,note\nuse_1,u1,5\" screen\nuse_2,u2,x\n",                  # stray quote: data
], ids=["closed", "line_break_inside_quotes", "escaped_quotes", "stray_quote_mid_value"])
def test_well_formed_or_tolerable_quotes_load(write, text):
    export = toolkit.load(write("vip_customer.csv", text))
    assert len(export.profiles) == text.count("use_")
