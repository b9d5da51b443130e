"""Exports kept on disk (`StoredExport`): read in chunks, they give the same profiles, findings
and plan as the same file read in one piece, and refuse to fill memory past a limit."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

import toolkit
from toolkit.engage.store import StoredExport
from toolkit.errors import ExportFormatError, ExportTooLarge
from toolkit.mapping import Mapping
from toolkit.sync.plan import plan

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples" / "audience_csv" / "formatted"


@pytest.fixture(autouse=True)
def small_chunks(tmp_path, monkeypatch):
    """Chunks of 37 profiles, so every sample spans many; the cache in the test's folder."""
    monkeypatch.setenv("TOOLKIT_CHUNK_ROWS", "37")
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "cache"))


def _both(path: Path, **options):
    return (toolkit.load(path, store=True, **options), toolkit.load(path, store=False, **options))


@pytest.mark.parametrize("name", ["dormant_shopper.csv", "vip_customer.csv"])
def test_a_stored_export_reads_as_the_same_profiles_and_findings(name, tmp_path):
    stored, memory = _both(SAMPLES / name)
    assert isinstance(stored, StoredExport) and stored.profile_count == len(memory.profiles)
    assert stored.path.exists() and stored.path.parent == tmp_path / "cache"
    pd.testing.assert_frame_equal(stored.profiles, memory.profiles)
    pd.testing.assert_frame_equal(stored.computations, memory.computations)
    # per-row findings keep the file's row numbers; chunks never repeat a finding
    rows = {(f.code, f.row) for f in memory.findings if f.row is not None}
    assert rows == {(f.code, f.row) for f in stored.findings if f.row is not None}
    assert rows or name == "vip_customer.csv"
    pd.testing.assert_frame_equal(stored.summary(), memory.summary())
    assert stored.identifier_coverage() == memory.identifier_coverage()


def test_chunks_and_take_index_profiles_by_their_place_in_the_export():
    stored, memory = _both(SAMPLES / "dormant_shopper.csv")
    chunks = list(stored.chunks(["segment_id", "user_id"]))
    assert [len(c) for c in chunks[:-1]] == [37] * (len(chunks) - 1)
    pd.testing.assert_frame_equal(pd.concat(chunks), memory.profiles[["segment_id", "user_id"]])
    picked = stored.take([300, 5, 41])
    pd.testing.assert_frame_equal(picked, memory.profiles.iloc[[5, 41, 300]])


def test_a_stored_export_plans_exactly_what_the_same_export_in_memory_plans():
    stored, memory = _both(SAMPLES / "dormant_shopper.csv")
    mapping = Mapping.from_export(memory).set("dormant_shopper", send_as="both")
    a, b = plan(stored, mapping), plan(memory, mapping)
    assert isinstance(a.manifest, dict) and a.rows == b.rows > 0
    assert pq.read_table(a.ops_path).equals(pq.read_table(b.ops_path))
    assert [str(f) for f in a.findings] == [str(f) for f in b.findings]
    pd.testing.assert_frame_equal(a.left_out, b.left_out)
    assert a.manifest["input_digest"] == b.manifest["input_digest"]
    assert a.fingerprint == b.fingerprint


def test_shared_identifiers_across_chunks_follow_the_one_rule(tmp_path):
    # the same user_id in the first and the last chunk: the later row wins, as in memory
    lines = (SAMPLES / "dormant_shopper.csv").read_text(encoding="utf-8").splitlines()
    first_user = lines[1].split(",")[1]
    fields = lines[-1].split(",")
    fields[1] = first_user
    lines[-1] = ",".join(fields)
    path = tmp_path / "dormant_shopper.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    stored, memory = _both(path)
    mapping = Mapping.from_export(memory)
    a, b = plan(stored, mapping), plan(memory, mapping)
    assert [str(f) for f in a.findings] == [str(f) for f in b.findings]
    assert any(f.code == "shared_identifier" for f in a.findings)
    assert pq.read_table(a.ops_path).equals(pq.read_table(b.ops_path))


def test_profiles_past_the_limit_point_to_sample_and_sql(monkeypatch):
    monkeypatch.setenv("TOOLKIT_PROFILES_LIMIT", "100")
    stored = toolkit.load(SAMPLES / "dormant_shopper.csv", store=True)
    with pytest.raises(ExportTooLarge) as err:
        stored.profiles
    assert "export.sample" in str(err.value) and "export.sql" in str(err.value)
    assert len(stored.sample(10)) == 10
    members = stored.sql("SELECT count(*) AS n FROM profiles WHERE dormant_shopper")
    assert int(members["n"].iloc[0]) == stored.profile_count
    assert "profiles on disk" in repr(stored) and "export.sample" in stored._repr_html_()


def test_a_profile_repeated_across_chunks_is_said(tmp_path):
    lines = (SAMPLES / "dormant_shopper.csv").read_text(encoding="utf-8").splitlines()
    path = tmp_path / "dormant_shopper.csv"
    path.write_text("\n".join(lines + [lines[1]]) + "\n", encoding="utf-8")
    stored = toolkit.load(path, store=True)
    said = [f for f in stored.findings if f.code == "duplicate_profile"]
    assert said and "more than one chunk" in said[-1].message


def test_a_column_whose_type_changes_midway_is_a_clear_error(tmp_path):
    lines = (SAMPLES / "dormant_shopper.csv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",")
    col = header.index("total_revenue_180_days")
    body = []
    for i, line in enumerate(lines[1:]):
        fields = line.split(",")
        fields[col] = "12.5" if i < 200 else "lots"
        body.append(",".join(fields))
    path = tmp_path / "dormant_shopper.csv"
    path.write_text("\n".join([lines[0], *body]) + "\n", encoding="utf-8")
    with pytest.raises(ExportFormatError) as err:
        toolkit.load(path, store=True)
    assert err.value.context.get("column") == "total_revenue_180_days"
    assert "store=False" in (err.value.hint or "")


def test_only_formatted_audience_csvs_are_kept_on_disk():
    unformatted = SAMPLES.parent / "unformatted" / "dormant_shopper.csv"
    with pytest.raises(ExportFormatError) as err:
        toolkit.load(unformatted, store=True)
    assert "store=False" in (err.value.hint or "")


def _shared_identifier_file(tmp_path) -> Path:
    """The dormant sample with its first user's id also on the last row (another chunk)."""
    lines = (SAMPLES / "dormant_shopper.csv").read_text(encoding="utf-8").splitlines()
    fields = lines[-1].split(",")
    fields[1] = lines[1].split(",")[1]
    lines[-1] = ",".join(fields)
    path = tmp_path / "dormant_shopper.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("shared", [False, True])
def test_a_stored_export_previews_the_same_counts_chunk_by_chunk(shared, tmp_path):
    path = _shared_identifier_file(tmp_path) if shared else SAMPLES / "dormant_shopper.csv"
    stored, memory = _both(path)
    mapping = Mapping.from_export(memory).set("dormant_shopper", send_as="both")
    a, b = mapping.preview(stored), mapping.preview(memory)
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame())
    assert a.user_count == b.user_count == len(b.state.users)
    for key in ("dormant_shopper", "total_revenue_180_days"):
        pd.testing.assert_frame_equal(a.dropped(key), b.dropped(key))


def test_stored_exports_not_written_for_a_week_are_removed(tmp_path):
    import os
    import time

    cache = tmp_path / "cache"
    cache.mkdir()
    old, recent = cache / "old-export.parquet", cache / "recent-export.parquet"
    for path in (old, recent):
        path.write_bytes(b"PAR1")
    week_ago = time.time() - 8 * 86400
    os.utime(old, (week_ago, week_ago))
    stored = toolkit.load(SAMPLES / "dormant_shopper.csv", store=True)
    assert not old.exists() and recent.exists() and stored.path.exists()
