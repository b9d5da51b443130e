"""Benchmark `toolkit.load` on a 1M-profile formatted audience CSV against a bare
``pandas.read_csv(engine="pyarrow")`` of the same file, in the same run.

    python bench/bench_load.py [--profiles 1000000] [--repeat 5]

Generates the file once into data/large/ (gitignored) with data/samples/generate.py, then times
both readers (alternating, so a busy machine slows both alike) and measures each one's peak
memory in a fresh child process (ru_maxrss, so pyarrow's allocations count too). Prints the
time ratio of the best runs and of the median runs; the target is toolkit.load ≤ 1.5× the bare
read for both, since the loader also types, collapses and validates.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 1.5

_CHILD = """
import resource, sys, time
import pandas as pd
t = time.perf_counter()
if sys.argv[1] == "toolkit":
    import toolkit
    toolkit.load(sys.argv[2])
else:
    pd.read_csv(sys.argv[2], engine="pyarrow")
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def ensure_file(profiles: int) -> Path:
    large = ROOT / "data" / "large"
    path = large / "all_shoppers.csv"
    marker = large / f".profiles-{profiles}"
    if not (path.exists() and marker.exists()):
        print(f"generating {profiles:,} profiles into {large} …", flush=True)
        subprocess.run([sys.executable, str(ROOT / "data" / "samples" / "generate.py"),
                        "--profiles", str(profiles), "--out", str(large)], check=True)
        for old in large.glob(".profiles-*"):
            old.unlink()
        marker.touch()
    return path


def peak_memory_mb(which: str, path: Path) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", _CHILD, which, str(path)], check=True,
                         capture_output=True, text=True, cwd=ROOT).stdout.split()
    return float(out[0]), int(out[1]) / 1024  # ru_maxrss is KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import pandas as pd

    import toolkit

    path = ensure_file(args.profiles)
    size_mb = path.stat().st_size / 1e6
    # children first: a forked child starts with its parent's peak RSS, so the parent must
    # still be small when they run
    _, bare_mem = peak_memory_mb("pandas", path)
    _, our_mem = peak_memory_mb("toolkit", path)
    toolkit.load(path)  # warm imports and the page cache for both
    bare, ours = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        frame = pd.read_csv(path, engine="pyarrow")
        bare.append(time.perf_counter() - t)
        rows = len(frame)
        del frame
        t = time.perf_counter()
        export = toolkit.load(path)
        ours.append(time.perf_counter() - t)
        if _ < args.repeat - 1:
            del export
    assert len(export.profiles) == rows, "loader and bare read disagree on the row count"
    ratio = min(ours) / min(bare)
    median_ratio = statistics.median(ours) / statistics.median(bare)
    print(f"file: {path.relative_to(ROOT)} ({rows:,} rows, {size_mb:.0f} MB)")
    print(f"pandas.read_csv(engine='pyarrow'): best {min(bare):.2f} s   median "
          f"{statistics.median(bare):.2f} s   peak RSS {bare_mem:,.0f} MB")
    print(f"toolkit.load:                      best {min(ours):.2f} s   median "
          f"{statistics.median(ours):.2f} s   peak RSS {our_mem:,.0f} MB")
    ok = max(ratio, median_ratio) <= TARGET_RATIO
    print(f"ratio toolkit/pandas: best {ratio:.2f}x, median {median_ratio:.2f}x (target <= "
          f"{TARGET_RATIO}x) — {'OK' if ok else 'OVER TARGET'}; memory ratio "
          f"{our_mem / bare_mem:.2f}x")
    print(f"findings: {export.findings.counts()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
