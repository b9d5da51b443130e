"""Benchmark: Braze preview of a 1M-profile Engage export against loading the same export.

    python bench/bench_preview.py [--profiles 1000000] [--data DIR] [--repeat 2]

Baseline (same run): ``toolkit.load`` of ``all_shoppers.csv`` written by
``data/samples/generate.py --profiles N``. When the generator or the loader is not available the
benchmark builds a synthetic export in memory and times ``pandas.read_csv(engine="pyarrow")`` of
an equivalent CSV instead, and says so. Prints seconds and the ratio preview / load; the target
is ≤ 2×.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit.engage.model import EngageExport  # noqa: E402
from toolkit.mapping import Mapping  # noqa: E402

TARGET = 2.0


def _best(fn, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def _generated(profiles: int, data: Path) -> Path | None:
    """all_shoppers.csv from the sample generator (reused when already written for N profiles)."""
    generator = ROOT / "data/samples/generate.py"
    target = data / "all_shoppers.csv"
    stamp = data / f".profiles-{profiles}"
    if target.exists() and stamp.exists():
        return target
    if not generator.exists():
        return None
    print(f"generating {profiles:,} profiles into {data} …", flush=True)
    done = subprocess.run([sys.executable, str(generator), "--profiles", str(profiles),
                           "--out", str(data)], capture_output=True, text=True)
    if done.returncode != 0 or not target.exists():
        print(f"generator failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        return None
    stamp.touch()
    return target


def _synthetic(profiles: int, data: Path) -> tuple[EngageExport, Path]:
    """A 1M-profile export with 3 audiences and 3 traits, plus the same data as a CSV."""
    rng = np.random.default_rng(0)
    n = profiles
    num = np.arange(n).astype(str)
    user = pd.array(np.char.add("u_", num), dtype="string")
    user[rng.random(n) < 0.1] = pd.NA
    email = pd.array(np.char.add(np.char.add("p", num), "@example.com"), dtype="string")
    email[rng.random(n) < 0.05] = pd.NA
    frame = pd.DataFrame({
        "segment_id": pd.array(np.char.add("use_", num), dtype="string"), "user_id": user,
        "email": email, "anonymous_id": pd.array([pd.NA] * n, dtype="string"),
        "braze_id": pd.array([pd.NA] * n, dtype="string"),
        "dormant_shopper": pd.array(rng.random(n) < 0.25, dtype="boolean"),
        "first_time_shopper": pd.array(rng.random(n) < 0.15, dtype="boolean"),
        "vip_customer": pd.array(rng.random(n) < 0.1, dtype="boolean"),
        "last_product_viewed_item": pd.array(rng.choice(
            ["Trail Runner 2 Shoe", "Canvas Tote", "Camp Mug", "Down Vest"], n), dtype="string"),
        "total_revenue_180_days": pd.array(np.round(rng.gamma(2, 80, n), 2), dtype="Float64"),
        "last_order_at": pd.Timestamp("2025-03-14T08:00Z")
        - pd.to_timedelta(rng.integers(0, 180 * 86400, n), unit="s"),
    })
    comps = pd.DataFrame(
        [{"key": k, "kind": "audience", "computation_id": f"aud_{k}", "value_type": "boolean",
          "name": k} for k in ("dormant_shopper", "first_time_shopper", "vip_customer")]
        + [{"key": k, "kind": "trait", "computation_id": f"tra_{k}", "value_type": t, "name": k}
           for k, t in (("last_product_viewed_item", "string"),
                        ("total_revenue_180_days", "number"), ("last_order_at", "datetime"))])
    path = data / "synthetic.csv"
    frame.to_csv(path, index=False)
    return EngageExport(frame, comps, snapshot_at=pd.Timestamp("2025-03-14T08:00Z"),
                        source="synthetic"), path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", type=int, default=1_000_000)
    ap.add_argument("--data", type=Path, default=None,
                    help="folder for the generated files (default: a temporary folder)")
    ap.add_argument("--repeat", type=int, default=2, help="best of N runs for each timing")
    args = ap.parse_args(argv)
    tmp = None
    if args.data is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_preview_")
        args.data = Path(tmp.name)
    args.data.mkdir(parents=True, exist_ok=True)

    try:
        import toolkit
        loader = toolkit.load
    except (ImportError, AttributeError):
        loader = None
    path = _generated(args.profiles, args.data) if loader else None
    if path is not None:
        baseline = f"toolkit.load({path.name})"
        load_s, export = _best(lambda: loader(path), args.repeat)
    else:
        export, path = _synthetic(args.profiles, args.data)
        baseline = 'pandas.read_csv(engine="pyarrow") of an equivalent CSV (loader unavailable)'
        load_s, _ = _best(lambda: pd.read_csv(path, engine="pyarrow"), args.repeat)

    mapping = Mapping.from_export(export)
    preview_s, preview = _best(lambda: mapping.preview(export), args.repeat)
    events = mapping
    for key in export.audiences:
        events = events.set(key, send_as="event", enter_event=f"{key} entered",
                            exit_event=f"{key} exited")
    events_s, _ = _best(lambda: events.preview(export), args.repeat)
    values_s, _ = _best(lambda: mapping.attribute_values(export), args.repeat)

    ratio = preview_s / load_s
    print(f"export: {len(export.profiles):,} profiles, {len(export.audiences)} audiences, "
          f"{len(export.traits)} traits ({len(export.computations)} computations)")
    print(f"baseline  {baseline}: {load_s:.2f} s")
    print(f"preview   (attribute mapping, {len(preview.to_frame())} checks): {preview_s:.2f} s")
    print(f"preview   (audiences as events): {events_s:.2f} s  "
          f"ratio {events_s / load_s:.2f}x")
    print(f"attribute_values: {values_s:.2f} s")
    print(f"ratio preview / load: {ratio:.2f}x (target ≤ {TARGET:.0f}x) "
          f"{'OK' if ratio <= TARGET else 'SLOWER THAN TARGET'}")
    if tmp is not None:
        tmp.cleanup()
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
