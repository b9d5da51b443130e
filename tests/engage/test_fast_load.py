"""The in-memory CSV load's shortcuts keep its results: the identifier lists built on first use
of ``profiles`` (never by the preview or the plan), and the UTF-8 check the parse skips for an
all-ASCII file (a file that is not UTF-8 past the header's megabyte gets the same error)."""
from __future__ import annotations

import threading

import pandas as pd
import pytest

import toolkit
from toolkit.engage.assemble import ID_LIST_COLUMNS
from toolkit.errors import ExportFormatError

HEADER = "key,user_id,email,email_1,anonymous_id,anonymous_id_1,first_name,score"


def _rows(n: int) -> list[str]:
    out = []
    for i in range(n):
        second = f"alt{i}@x.com" if i % 7 == 0 else ""
        same = f"a{i}@x.com" if i % 11 == 0 else second   # a repeated email is listed once
        out.append(f"use_{i:07d},u_{i},a{i}@x.com,{same},anon-{i},{'anon-b' if i % 5 == 0 else ''},"
                   f"Ana,{i % 13}")
    return out


@pytest.fixture
def big_csv(tmp_path):
    """A formatted audience CSV of more than a megabyte (past the header's sample)."""
    def write(extra: bytes = b"", name: str = "all_shoppers.csv"):
        path = tmp_path / name
        path.write_bytes(("\n".join([HEADER, *_rows(25_000)]) + "\n").encode() + extra)
        return path
    return write


def _pending(export) -> bool:
    return export.__dict__.get("_pending") is not None


def test_identifier_lists_are_built_on_first_use_and_equal_the_columns(big_csv):
    export = toolkit.load(big_csv())
    assert _pending(export)
    columns = export.columns
    assert columns[5:7] == list(ID_LIST_COLUMNS)
    assert export.profile_count == 25_000
    # views and stages that read other columns do not build them
    next(export.chunks(["user_id", "first_name"]))
    export.take([3, 1], ["email"])
    export.summary()
    export.identifier_coverage()
    repr(export)
    assert _pending(export)
    profiles = export.profiles
    assert not _pending(export)
    assert list(profiles.columns) == columns == export.columns
    assert str(profiles["emails"].dtype) == "list<item: string>[pyarrow]"
    assert list(profiles.loc[0, "emails"]) == ["a0@x.com"]              # both cells the same
    assert list(profiles.loc[7, "emails"]) == ["a7@x.com", "alt7@x.com"]
    assert list(profiles.loc[5, "anonymous_ids"]) == ["anon-5", "anon-b"]
    assert list(profiles.loc[1, "anonymous_ids"]) == ["anon-1"]
    assert export.profiles is profiles   # built once


def test_take_and_chunks_of_a_list_column_build_it(big_csv):
    export = toolkit.load(big_csv())
    rows = export.take([7], ["emails"])
    assert list(rows.iloc[0]["emails"]) == ["a7@x.com", "alt7@x.com"]
    assert not _pending(export)


def test_the_preview_and_the_plan_do_not_build_the_lists(big_csv, tmp_path):
    from toolkit.braze.client import BrazeClient
    from toolkit.sandbox.server import BrazeSandbox
    from toolkit.sync.ledger import Ledger
    from toolkit.sync.plan import plan

    export = toolkit.load(big_csv())
    mapping = toolkit.Mapping.from_export(export)
    mapping.preview(export).to_frame()
    with BrazeSandbox() as sandbox, BrazeClient.for_sandbox(sandbox) as client, \
            Ledger(client, directory=tmp_path / "ledger") as ledger:
        made = plan(export, mapping, ledger, workspace=client, create_users=True)
        made.save(tmp_path / "plan.json")
    assert made.cost()["operations"] > 0
    assert _pending(export)


def test_profiles_set_replaces_what_was_deferred(big_csv):
    export = toolkit.load(big_csv())
    frame = pd.DataFrame({"segment_id": pd.Series(["use_1"], dtype="string")})
    export.profiles = frame
    assert export.profiles is frame and export.columns == ["segment_id"]


def test_two_threads_build_the_lists_once(big_csv):
    export = toolkit.load(big_csv())
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(export.profiles)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(s is seen[0] for s in seen) and "emails" in seen[0]


def test_non_utf8_text_past_the_first_megabyte_names_its_line(big_csv):
    path = big_csv("use_x,u_x,x@x.com,,,,Jos\xe9,1\n".encode("latin-1"))
    with pytest.raises(ExportFormatError, match="not UTF-8") as info:
        toolkit.load(path)
    assert info.value.line == 25_002 and info.value.column == 25


def test_non_utf8_bytes_in_a_number_column_are_the_same_error(big_csv):
    path = big_csv(b"use_x,u_x,x@x.com,,,,Jo,1\xe9\n")
    with pytest.raises(ExportFormatError, match="not UTF-8") as info:
        toolkit.load(path)
    assert info.value.line == 25_002


def test_utf8_text_past_the_first_megabyte_is_read(big_csv):
    path = big_csv("use_x,u_x,x@x.com,,,,Zoë ünïcödé,1\n".encode())
    export = toolkit.load(path)
    assert export.profiles["first_name"].iloc[-1] == "Zoë ünïcödé"
