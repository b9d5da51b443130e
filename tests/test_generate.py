"""The sample generator's large mode: deterministic, block-independent, the small mode's CSV format
and distributions, and the --change file (small sizes; tests/engage/test_samples.py covers the
committed samples)."""
from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "data" / "samples" / "generate.py"


def _module():
    spec = importlib.util.spec_from_file_location("sample_generator", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module      # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


gen = _module()
N, BLOCK = 3000, 1000


def _write(out: Path, n: int = N, **kw) -> dict[str, int]:
    kw.setdefault("block", BLOCK)
    return gen.write_large(n, out, **kw)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.csv"))}


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("large")
    _write(out, change=0.1)
    return out


def test_same_seed_and_size_give_the_same_bytes_and_another_seed_does_not(large, tmp_path):
    _write(tmp_path / "again", change=0.1)
    assert _files(tmp_path / "again") == _files(large)
    _write(tmp_path / "other", seed=gen.SEED + 1)
    assert _files(tmp_path / "other")["all_shoppers.csv"] != _files(large)["all_shoppers.csv"]


def test_a_block_does_not_depend_on_the_total_so_whole_blocks_are_prefixes(large, tmp_path):
    _write(tmp_path, n=2 * BLOCK)
    small = (tmp_path / "all_shoppers.csv").read_bytes()
    assert (large / "all_shoppers.csv").read_bytes().startswith(small)


def test_the_change_option_leaves_the_unchanged_file_alone(large, tmp_path):
    _write(tmp_path)
    assert not (tmp_path / "all_shoppers_changed.csv").exists()
    assert (tmp_path / "all_shoppers.csv").read_bytes() == (large / "all_shoppers.csv").read_bytes()


def test_lines_are_what_the_small_mode_writer_writes_for_the_same_profiles(large, tmp_path):
    """Read the large file back into Profiles and write them with the small mode's
    formatted_rows/_write_csv: the bytes must be the same (header, quoting, number format)."""
    profiles = []
    for r in _rows(large / "all_shoppers.csv"):
        traits = {k: r[k] for k in gen.TRAITS if r[k]}
        if "total_revenue_180_days" in traits:
            traits["total_revenue_180_days"] = float(traits["total_revenue_180_days"])
        profiles.append(gen.Profile(
            r["key"], r["user_id"] or None, [e for e in (r["email"], r["email_1"]) if e],
            [a for a in (r["anonymous_id"], r["anonymous_id_1"]) if a],
            r["first_name"] or None, r["last_name"] or None, traits))
    header, rows = gen.formatted_rows(profiles)
    gen._write_csv(tmp_path / "old.csv", header, rows)
    assert (tmp_path / "old.csv").read_bytes() == (large / "all_shoppers.csv").read_bytes()


def test_shape_identifiers_and_the_over_long_product(large):
    rows = _rows(large / "all_shoppers.csv")
    assert list(rows[0]) == gen.WIDE and len(rows) == N
    assert len({r["key"] for r in rows}) == N
    assert all(r["key"].startswith("use_") and len(r["key"]) == 31 for r in rows)
    for i, r in enumerate(rows, start=1):
        assert r["user_id"] in ("", f"u_{i:06d}")
        if r["email"]:
            assert r["email"].split("@")[0].endswith(str(i))
        if r["email_1"]:
            assert r["user_id"] and ".work" in r["email_1"]
        if r["anonymous_id_1"]:
            assert r["anonymous_id"]
        for a in (r["anonymous_id"], r["anonymous_id_1"]):
            assert not a or (len(a) == 36 and a[14] == "4" and a[19] in "89ab")
    long = [i for i, r in enumerate(rows) if len(r["last_product_viewed_item"]) > 255]
    assert long == [41]


def test_distributions_match_the_small_mode(tmp_path):
    n = 20_000
    _write(tmp_path, n=n, block=5000)
    rows = _rows(tmp_path / "all_shoppers.csv")

    def share(pred) -> float:
        return sum(1 for r in rows if pred(r)) / n

    old = gen.make_profiles(n)

    def old_share(pred) -> float:
        return sum(1 for p in old if pred(p)) / n

    pairs = {
        "anonymous only": (share(lambda r: not r["email"]),
                           old_share(lambda p: not p.emails)),
        "email only": (share(lambda r: r["email"] and not r["user_id"]),
                       old_share(lambda p: p.emails and not p.user_id)),
        "second email": (share(lambda r: r["email_1"]), old_share(lambda p: len(p.emails) > 1)),
        "no anonymous id": (share(lambda r: not r["anonymous_id"]),
                            old_share(lambda p: not p.anonymous_ids)),
        "two anonymous ids": (share(lambda r: r["anonymous_id_1"]),
                              old_share(lambda p: len(p.anonymous_ids) > 1)),
        **{k: (share(lambda r, k=k: r[k]), old_share(lambda p, k=k: k in p.traits))
           for k in gen.TRAITS},
    }
    for k in gen.AUDIENCES:
        members = len(_rows(tmp_path / "audience_csv" / "formatted" / f"{k}.csv")) / n
        pairs[k] = (members, old_share(lambda p, k=k: p.audiences[k]))
    off = {k: (round(a, 4), round(b, 4)) for k, (a, b) in pairs.items() if abs(a - b) > 0.012}
    assert not off, f"shares (large, small mode) that differ: {off}"


def test_audience_files_follow_the_rules_and_list_profiles_in_order(large):
    rows = _rows(large / "all_shoppers.csv")
    by_key = {r["key"]: r for r in rows}
    snapshot = gen.SNAPSHOT.replace(tzinfo=None)

    def days(r) -> int:
        return (snapshot - datetime.strptime(r["last_order_at"], "%Y-%m-%dT%H:%M:%SZ")).days

    members = {k: _rows(large / "audience_csv" / "formatted" / f"{k}.csv")
               for k in gen.AUDIENCES}
    for k, rows_k in members.items():
        assert rows_k and all(by_key[r["key"]] == r for r in rows_k)
        order = [int(r["user_id"][2:]) for r in rows_k if r["user_id"]]
        assert order == sorted(order)
    dormant = {r["key"] for r in members["dormant_shopper"]}
    assert dormant == {r["key"] for r in rows if r["last_order_at"] and days(r) > 90}
    assert all(r["last_order_at"] and days(r) <= 60 for r in members["first_time_shopper"])
    vip = {r["key"] for r in members["vip_customer"]}
    revenue = {r["key"]: float(r["total_revenue_180_days"] or 0) for r in rows}
    assert all(revenue[k] >= 400 for k in vip)
    assert {k for k, v in revenue.items() if v >= 600} <= vip
    assert all(days(r) <= 180 for r in rows if r["total_revenue_180_days"])


def test_the_changed_file_changes_product_and_revenue_of_a_fraction_of_the_profiles(large):
    before, after = _rows(large / "all_shoppers.csv"), _rows(large / "all_shoppers_changed.csv")
    assert [r["key"] for r in before] == [r["key"] for r in after]
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert 0.07 * N < len(changed) < 0.13 * N
    fields = ("last_product_viewed_item", "total_revenue_180_days")
    for a, b in changed:
        assert all(a[f] != b[f] and b[f] for f in fields)
        assert {f: v for f, v in a.items() if f not in fields} == \
            {f: v for f, v in b.items() if f not in fields}
        assert b["last_product_viewed_item"] in gen.PRODUCTS


def test_cli_refuses_a_change_in_small_mode(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--profiles", "100", "--change", "0.1",
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "large mode" in done.stderr
    assert not any(tmp_path.iterdir())
