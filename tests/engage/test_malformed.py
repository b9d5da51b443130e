"""Malformed inputs raise ExportFormatError naming the file, the line/column and what was
expected — never a raw pandas / pyarrow / json traceback."""
from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest

import toolkit
from toolkit.errors import ExportFormatError

GOOD_MSG = json.dumps({"type": "identify", "userId": "u_1", "timestamp": "2025-01-06T09:00:00Z",
                       "context": {"personas": {"computation_class": "audience",
                                                "computation_key": "vip"}},
                       "traits": {"vip": True}})

# (file name, content, kind or None, expected line or None, expected column or None, message)
CASES = [
    ("empty.csv", "", None, 1, None, "empty"),
    ("blank.csv", "\n\n  \n", None, 1, None, "empty"),
    ("header_only.csv", "key,user_id,email\n", None, 2, None, "no rows"),
    ("no_id.csv", "first_name,last_name\nAna,Silva\n", None, 1, None, "no identifier column"),
    ("bad_json.csv", 'key,external_ids\nuse_1,"{""email"": [""a@x.com""]}"\n'
                     'use_2,"{""email"": [""b@x.com""}"\n', None, 3, "external_ids", "invalid JSON"),
    ("bad_traits.csv", 'key,external_ids,traits\nuse_1,"{}","{""vip"": tru}"\n', None, 2,
     "traits", "invalid JSON"),
    ("not_object.csv", 'key,external_ids\nuse_1,"[1, 2]"\n', None, 2, "external_ids",
     "JSON object"),
    ("latin1.csv", "key,user_id,first_name\nuse_1,u_1,Ana\nuse_2,u_2,Jos\xe9\n".encode("latin-1"),
     None, 3, 14, "not UTF-8"),
    ("utf16.csv", "key,user_id\nuse_1,u_1\n".encode("utf-16"), None, 1, None, "UTF-16"),
    ("ragged.csv", "key,user_id,email\nuse_1,u_1,a@x.com\nuse_2,u_2,b@x.com,extra,more\n", None,
     3, None, "expected 3 fields"),
    ("no_key_value.csv", "key,user_id\n,u_1\n", None, 2, "key", "no profile key"),
    ("dup_header.csv", "key,email,email\nuse_1,a@x.com,b@x.com\n", None, 1, 3, "appears twice"),
    ("unnamed_col.csv", "key,,email\nuse_1,x,a@x.com\n", None, 1, 2, "no name"),
    ("bad_hash.csv", "email\n" + "A" * 64 + "\nnot-a-hash\n", "csv_hashed", 3, "email",
     "SHA-256"),
    ("truncated.ndjson", GOOD_MSG + "\n" + GOOD_MSG[:40] + "\n", None, 2, None, "cut off"),
    ("bad_line.ndjson", GOOD_MSG + "\n" + GOOD_MSG + "\n{nope}\n", None, 3, 2, "invalid JSON"),
    ("scalar.ndjson", GOOD_MSG + "\n42\n", None, 2, None, "expected a JSON object"),
    ("no_engage.ndjson", json.dumps({"type": "track", "event": "Order Completed",
                                      "userId": "u"}) + "\n", None, None, None,
     "no Engage identify/track messages"),
    ("bad_array.json", '[\n  {"type": "identify"},\n  {"type": \n', None, 4, None,
     "invalid JSON"),
    ("bad_batch.json", json.dumps({"batch": [1]}), None, 1, None, "batch entry"),
    ("broken.ndjson.gz", gzip.compress(GOOD_MSG.encode())[:-12], None, None, None, "gzip"),
    ("binary.dat", b"\x00\x01\x02\x03binary", None, None, None, "unknown format"),
    ("single.parquet", b"PAR1" + b"\x00" * 20, None, None, None, "parquet"),
    ("unknown_kind.csv", "key,user_id\nuse_1,u_1\n", "xlsx", None, None, "unknown kind"),
    ("gz_csv.csv.gz", gzip.compress(b"key,user_id\nuse_1,u_1\n"), None, None, None,
     "NDJSON or JSON"),
]


@pytest.mark.parametrize("name,content,kind,line,column,message", CASES,
                         ids=[c[0] for c in CASES])
def test_malformed_file(write, name, content, kind, line, column, message):
    path = write(name, content)
    with pytest.raises(ExportFormatError) as err:
        toolkit.load(path, kind=kind)
    e = err.value
    assert message.lower() in str(e).lower()
    if kind != "xlsx":
        assert e.file == str(path)
    if line is not None:
        assert e.line == line, str(e)
    if column is not None:
        assert e.column == column, str(e)


def test_missing_file(tmp_path):
    with pytest.raises(ExportFormatError, match="file not found") as err:
        toolkit.load(tmp_path / "nope.csv")
    assert err.value.file.endswith("nope.csv") and err.value.hint


def test_directory_with_nothing_usable(write):
    path = write("dir/notes.md", "# hi\n").parent
    with pytest.raises(ExportFormatError, match="holds no Engage export") as err:
        toolkit.load(path)
    assert err.value.file == str(path)


def test_directory_with_a_bad_member_names_that_file(write):
    write("dir/dormant_shopper.csv", "key,user_id\nuse_1,u_1\n")
    bad = write("dir/vip_customer.csv", "key,user_id\n")
    with pytest.raises(ExportFormatError) as err:
        toolkit.load(bad.parent)
    assert err.value.file == str(bad)


def test_dataframe_without_identifiers():
    with pytest.raises(ExportFormatError, match="no identifier column"):
        toolkit.load(pd.DataFrame({"vip": [True]}))


def test_computation_key_with_several_files(write):
    a = write("a.csv", "key,user_id\nuse_1,u_1\n")
    b = write("b.csv", "key,user_id\nuse_2,u_2\n")
    with pytest.raises(ExportFormatError, match="ONE file"):
        toolkit.load([a, b], computation_key="vip")


def test_errors_render_with_a_hint(write):
    path = write("header_only.csv", "key,user_id\n")
    with pytest.raises(ExportFormatError) as err:
        toolkit.load(path)
    text = str(err.value)
    assert text.startswith(f"file {path}, line 2:") and "How to fix" in text
