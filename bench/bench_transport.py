"""Benchmark the client's transports: pushes of N profiles × 3 audience attributes to a sandbox in
this process, through `SandboxTransport` (no sockets) and through HTTP on loopback (what
`BrazeClient.for_sandbox` did before the transport seam).

    python bench/bench_transport.py [--profiles 1000000] [--files DIR] [--rounds 1]

(a) the whole push — same method as bench_push.py (b): plan against an empty ledger, approve,
    time `toolkit.apply`;
(b) the client alone — the same plan's payloads sent with `BrazeClient.track_batches`, which
    isolates the transport from apply's checks and ledger.
Each push goes to a fresh sandbox; best of ``--rounds`` of each kind, alternated because the
machine is shared. Prints throughputs and the in-process/HTTP ratios. ``--files`` reads an
existing generated export (e.g. bench/out/scale-1000000) instead of generating one into
bench/out/push-<N>/.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_push import apply_timed, audience_only, ensure_files  # noqa: E402


def push(export, mapping, *, http: bool) -> tuple[float, object, object]:
    """(seconds of apply, report, plan) for one push to a fresh in-process sandbox."""
    from toolkit.braze.client import BrazeClient
    from toolkit.sandbox import BrazeSandbox

    with BrazeSandbox() as sb, BrazeClient.for_sandbox(sb, http=http, max_workers=4) as client:
        seconds, plan, report = apply_timed(export, mapping, client)
    assert report.status == "complete", report
    return seconds, report, plan


def send(payloads: list[dict], *, http: bool) -> float:
    """Seconds for the client alone to send ``payloads`` to a fresh in-process sandbox."""
    from toolkit.braze.client import BrazeClient
    from toolkit.sandbox import BrazeSandbox

    with BrazeSandbox() as sb, BrazeClient.for_sandbox(sb, http=http, max_workers=4) as client:
        t = time.perf_counter()
        results = [r for _, r in client.track_batches(payloads)]
        seconds = time.perf_counter() - t
    bad = [r for r in results if getattr(r, "status", None) != 201]
    assert not bad, f"{len(bad)} requests failed: {bad[:1]}"
    return seconds


def _line(label: str, seconds: float, requests: int, objects: int) -> str:
    return (f"{label:<22}{seconds:7.2f} s  {requests / seconds:8,.0f} req/s  "
            f"{objects / seconds:10,.0f} obj/s")


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
    applied: dict[bool, list[float]] = {False: [], True: []}
    sent: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for http in (True, False):
            seconds, report, plan = push(export, mapping, http=http)
            applied[http].append(seconds)
    payloads = [plan.payload(b) for b in plan.batches()]
    for _ in range(args.rounds):
        for http in (True, False):
            sent[http].append(send(payloads, http=http))
    objects = report.counts["objects_acknowledged"]
    requests = len(payloads)
    print(f"{len(export.profiles):,} profiles, {objects:,} objects in {requests:,} requests "
          f"(best of {args.rounds})")
    print("(a) toolkit.apply")
    print(_line("  loopback HTTP", min(applied[True]), requests, objects))
    print(_line("  in-process", min(applied[False]), requests, objects))
    print(f"  in-process / HTTP throughput: {min(applied[True]) / min(applied[False]):.2f}x")
    print("(b) BrazeClient.track_batches alone")
    print(_line("  loopback HTTP", min(sent[True]), requests, objects))
    print(_line("  in-process", min(sent[False]), requests, objects))
    print(f"  in-process / HTTP throughput: {min(sent[True]) / min(sent[False]):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
