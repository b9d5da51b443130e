"""`toolkit.load` picks a reader from a registry (kind -> sniff, read): every built-in kind is
registered, and a new kind is taught to it without touching `load`."""
from __future__ import annotations

import pandas as pd
import pytest

import toolkit
from toolkit.engage import readers
from toolkit.engage.readers import READERS, KINDS, register_reader


def test_every_kind_has_a_reader_and_a_description():
    assert set(KINDS) == set(READERS)
    assert {"csv_formatted", "ndjson", "profiles_sync", "dataframe"} <= set(KINDS)
    assert all(r.description for r in READERS.values())


@pytest.fixture
def toy_reader():
    def sniff(path, head):
        return head.startswith(b"#toy-export")

    def read(path, options):
        ids = [line for line in path.read_text().splitlines()[1:] if line]
        return readers.from_frame(pd.DataFrame({"user_id": ids, "toy_fans": [True] * len(ids)}),
                                  audiences=options.get("audiences"))

    register_reader("toy", read, sniff=sniff, description="a one-id-per-line toy export")
    yield
    del READERS["toy"]


def test_a_registered_reader_is_detected_and_used(toy_reader, tmp_path):
    path = tmp_path / "fans.txt"
    path.write_text("#toy-export\nu1\nu2\n")
    assert readers.detect_kind(path) == "toy"
    export = toolkit.load(path)
    assert list(export.profiles["user_id"]) == ["u1", "u2"]
    assert list(export.profiles["toy_fans"]) == [True, True]


def test_a_registered_kind_can_be_named(toy_reader, tmp_path):
    path = tmp_path / "fans.csv"
    path.write_text("#toy-export\nu3\n")
    assert list(toolkit.load(path, kind="toy").profiles["user_id"]) == ["u3"]
