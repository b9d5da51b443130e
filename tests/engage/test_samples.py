"""Every committed sample loads, the shop agrees with itself across formats, and the generator
is deterministic and small."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import toolkit
from toolkit.engage.csv import match_hashed
from toolkit.engage.frames import ID_LIST_DTYPE

AUDIENCES = ["dormant_shopper", "first_time_shopper", "vip_customer"]
SAMPLE_FILES = [
    ("audience_csv/formatted/dormant_shopper.csv", "csv_formatted"),
    ("audience_csv/formatted/first_time_shopper.csv", "csv_formatted"),
    ("audience_csv/formatted/vip_customer.csv", "csv_formatted"),
    ("audience_csv/unformatted/dormant_shopper.csv", "csv_unformatted"),
    ("audience_csv/unformatted/first_time_shopper.csv", "csv_unformatted"),
    ("audience_csv/unformatted/vip_customer.csv", "csv_unformatted"),
    ("audience_csv/legacy/dormant_shopper.csv", "csv_legacy"),
    ("audience_csv/hashed/vip_customer.csv", "csv_hashed"),
    ("trait_csv/unformatted/total_revenue_180_days.csv", "trait_csv"),
    ("trait_csv/columns/last_product_viewed_item.csv", "trait_csv"),
    ("trait_csv/rows/last_order_at.csv", "trait_csv"),
    ("events/engage_events.ndjson.gz", "ndjson"),
    ("events/engage_events_batch.json", "ndjson"),
    ("profiles_sync", "profiles_sync"),
    ("profiles_sync/parquet", "profiles_sync"),
]


@pytest.fixture(scope="module")
def loaded():
    root = Path(__file__).resolve().parents[2] / "data" / "samples"
    return {name: toolkit.load(root / name) for name, _ in SAMPLE_FILES}


def person_key(p: pd.DataFrame) -> pd.Series:
    """A cross-format identity: user_id, else email, else anonymous_id."""
    return ("u:" + p["user_id"]).fillna("e:" + p["email"]).fillna("a:" + p["anonymous_id"])


@pytest.mark.parametrize("name,kind", SAMPLE_FILES)
def test_every_sample_loads_with_its_kind(loaded, samples, name, kind):
    from toolkit.engage.readers import detect_kind
    export = loaded[name]
    assert export.source.endswith(f"({kind})")
    assert detect_kind(samples / name) == kind
    assert len(export.profiles) > 50
    assert export.profiles["segment_id"].is_unique
    for c in ("segment_id", "user_id", "email", "anonymous_id", "braze_id"):
        assert export.profiles[c].dtype == "string"
    for c in ("emails", "anonymous_ids"):
        assert export.profiles[c].dtype == ID_LIST_DTYPE
    for key in export.audiences:
        assert export.profiles[key].dtype == "boolean"


def test_same_membership_across_formats(loaded):
    formatted = toolkit.load([Path(loaded[n].source.split(" (")[0]) for n in
                              ("audience_csv/formatted/dormant_shopper.csv",
                               "audience_csv/formatted/first_time_shopper.csv",
                               "audience_csv/formatted/vip_customer.csv")])
    unformatted_dir = Path(loaded["audience_csv/unformatted/vip_customer.csv"].source
                           .split(" (")[0]).parent
    exports = {"formatted": formatted, "unformatted": toolkit.load(unformatted_dir),
               "ndjson": loaded["events/engage_events.ndjson.gz"],
               "profiles_sync": loaded["profiles_sync"],
               "parquet": loaded["profiles_sync/parquet"]}
    for audience in AUDIENCES:
        members = {k: set(person_key(e.members(audience))) for k, e in exports.items()}
        assert len(members["formatted"]) > 100
        for k, m in members.items():
            assert m == members["formatted"], (audience, k)
        # and among profiles present in both, NDJSON agrees with Profiles Sync row by row
        nd, ps = exports["ndjson"].profiles, exports["profiles_sync"].profiles
        a = pd.Series(nd[audience].to_numpy(), index=person_key(nd))
        b = pd.Series(ps[audience].to_numpy(), index=person_key(ps))
        common = a.index.intersection(b.index)
        assert len(common) > 1500
        assert (a[common].fillna(False).astype(bool) == b[common].astype(bool)).all()


def test_batch_variant_agrees_with_the_ndjson(loaded):
    full, batch = loaded["events/engage_events.ndjson.gz"], loaded["events/engage_events_batch.json"]
    f = full.profiles.set_index("segment_id")
    for sid, row in batch.profiles.set_index("segment_id").iterrows():
        for audience in AUDIENCES:
            assert bool(row[audience]) == bool(f.loc[sid, audience])


def test_traits_agree_between_trait_csvs_and_unformatted(loaded):
    trait = loaded["trait_csv/unformatted/total_revenue_180_days.csv"].profiles
    ps = loaded["profiles_sync"].profiles
    merged = trait.merge(ps, on="segment_id", suffixes=("", "_ps"))
    assert len(merged) == len(trait)
    assert (merged["total_revenue_180_days"] == merged["total_revenue_180_days_ps"]).all()


def test_sample_scenarios_are_present(loaded):
    nd = loaded["events/engage_events.ndjson.gz"]
    counts = nd.findings.counts()
    assert counts["string_boolean"] == 1 and counts["type_drift"] == 1
    assert counts["anonymous_only"] > 50 and counts["long_string"] == 1
    assert "Dormant Shopper Entered" in set(nd.events["event"].dropna())
    ev = nd.events[nd.events["computation_kind"] == "audience"]
    assert (ev["value"] == False).sum() > 100  # noqa: E712 - exits in the history
    backfill = ev[ev["timestamp"].dt.floor("h") == pd.Timestamp("2025-01-06 09:00", tz="UTC")]
    assert len(backfill) > 500
    share = nd.identifier_coverage()["anonymous_only"] / len(nd.profiles)
    assert 0.04 < share < 0.09
    assert (nd.profiles["emails"].list.len() > 1).sum() > 100
    assert loaded["audience_csv/legacy/dormant_shopper.csv"].findings.of("repaired_quotes")
    assert {"separator", "bom"} <= set(loaded["audience_csv/formatted/vip_customer.csv"]
                                       .findings.counts())


def test_hashed_sample_matches_the_clear_text_export(loaded):
    matched = match_hashed(loaded["audience_csv/hashed/vip_customer.csv"], loaded["profiles_sync"])
    assert matched.profiles["user_id"].notna().sum() > 0.8 * len(matched.profiles)
    assert not matched.profiles["segment_id"].str.startswith("sha256:").any()


def test_generator_is_deterministic_and_small(samples, tmp_path):
    subprocess.run([sys.executable, str(samples / "generate.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    committed = {p.relative_to(samples): p for p in samples.rglob("*")
                 if p.is_file() and p.suffix != ".py" and p.name != "README.md"}
    fresh = {p.relative_to(tmp_path): p for p in tmp_path.rglob("*") if p.is_file()}
    assert set(fresh) == set(committed)
    for rel, path in fresh.items():
        if rel.suffix == ".parquet":   # parquet embeds the writer's version; compare content
            assert pd.read_parquet(path).equals(pd.read_parquet(committed[rel])), rel
        else:
            assert hashlib.sha256(path.read_bytes()).digest() == \
                hashlib.sha256(committed[rel].read_bytes()).digest(), rel
    total = sum(p.stat().st_size for p in samples.rglob("*") if p.is_file())
    assert total < 5_000_000
