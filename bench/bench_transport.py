"""Benchmark the client's transports: one push of N profiles × 3 audience attributes to a sandbox
in this process, through `SandboxTransport` (no sockets) and through HTTP on loopback (what
`BrazeClient.for_sandbox` did before the transport seam).

    python bench/bench_transport.py [--profiles 1000000] [--files DIR] [--rounds 1]

Same method as bench_push.py (b): plan against an empty ledger, approve, time `toolkit.apply`;
each push goes to a fresh sandbox; the best of ``--rounds`` of each kind, alternated because the
machine is shared. Prints both throughputs and their ratio. ``--files`` reads an existing
generated export (e.g. bench/out/scale-1000000) instead of generating into bench/out/push-<N>/.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_push import audience_only, ensure_files  # noqa: E402


def push(export, mapping, *, http: bool) -> tuple[float, object]:
    """(seconds of apply, report) for one push to a fresh in-process sandbox."""
    import toolkit
    from toolkit.braze.client import BrazeClient
    from toolkit.sandbox import BrazeSandbox

    with BrazeSandbox() as sb, tempfile.TemporaryDirectory() as tmp, \
            BrazeClient.for_sandbox(sb, http=http, max_workers=4) as client:
        ledger = toolkit.Ledger(client, directory=tmp)
        plan = toolkit.plan(export, mapping, ledger, workspace=client, create_users=True)
        plan.approve(by="bench")
        t = time.perf_counter()
        report = toolkit.apply(plan, client, ledger, progress=False)
        seconds = time.perf_counter() - t
        ledger.close()
    assert report.status == "complete", report
    return seconds, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--files", type=Path, default=None,
                        help="a generated export directory to read instead of generating one")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    import toolkit

    if args.files is not None:
        files = sorted((args.files / "audience_csv" / "formatted").glob("*.csv"))
        files.append(args.files / "all_shoppers.csv")
    else:
        files = ensure_files(args.profiles)
    export = toolkit.load(files)
    mapping = audience_only(export)
    timings: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for http in (True, False):
            seconds, report = push(export, mapping, http=http)
            timings[http].append(seconds)
    objects = report.counts["objects_acknowledged"]
    requests = report.client_stats["requests"]
    http_s, inproc_s = min(timings[True]), min(timings[False])
    print(f"{len(export.profiles):,} profiles, {objects:,} objects in {requests:,} requests")
    print(f"loopback HTTP:    {http_s:7.2f} s  {requests / http_s:8,.0f} req/s  "
          f"{objects / http_s:10,.0f} obj/s")
    print(f"in-process:       {inproc_s:7.2f} s  {requests / inproc_s:8,.0f} req/s  "
          f"{objects / inproc_s:10,.0f} obj/s")
    print(f"in-process / HTTP throughput: {http_s / inproc_s:.2f}x (best of {args.rounds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
