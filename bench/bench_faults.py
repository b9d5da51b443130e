"""Benchmark: the reliability campaign at full size, with the figures the issue asks for.

1. Fault matrix: full syncs of the sample shop against the sandbox for every fault mix (429
   storm, 5xx, slow answers beyond the client timeout, connections dropped before / after the
   request was applied, everything together) at 1%, 10% and 30% of /users/track requests, for
   several seeds. Each run is settled as an operator would (uncertain event batches checked in
   the sandbox and resolved, then re-plan + apply) and checked: profiles equal the planned state,
   every event exactly once, the ledger agrees. The baseline is the same sync without faults in
   the same run; the table prints each cell's time as a ratio of it.
2. Crash campaign: `python -m toolkit apply` SIGKILLed at seeded points, resumed, settled.
3. Bad inputs: the refused corpus of tests/reliability/test_bad_inputs.py, refused N/N.
4. Leaks: canary keys through the API (with an echoing server), the CLI and the demo.

    python bench/bench_faults.py [--seeds 2] [--kills 20] [--quick]
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "reliability"))

import reliability_harness as h  # noqa: E402

RATES = (0.01, 0.10, 0.30)


def fault_matrix(seeds: int, quick: bool, ledger_url: str | None = None) -> tuple[list, float]:
    rows = []
    h.sample_export()                      # load once, outside every timing
    with tempfile.TemporaryDirectory() as tmp:
        base = [h.run_cell("everything", 0.0, seed=seed, tmpdir=Path(tmp) / f"base-{seed}",
                           ledger_url=ledger_url)
                for seed in range(1, seeds + 1)]
        baseline = sum(c.seconds for c in base) / len(base)
        rows.append(("(none: baseline)", 0.0, base))
        for mix in h.FAULT_MIXES:
            for rate in RATES:
                if quick and mix == "429 storm" and rate > 0.01:
                    continue
                cells = [h.run_cell(mix, rate, seed=seed, tmpdir=Path(tmp) / f"{mix}-{rate}-{seed}",
                                    ledger_url=ledger_url)
                         for seed in range(1, seeds + 1)]
                rows.append((mix, rate, cells))
    return rows, baseline


def print_matrix(rows: list, baseline: float) -> None:
    head = (f"{'fault mix':<18}{'rate':>6}{'runs':>6}{'faults':>8}{'requests':>10}{'retries':>9}"
            f"{'uncertain':>11}{'landed/not':>12}{'rounds':>8}{'mismatches':>12}"
            f"{'dup events':>12}{'seconds':>9}{'×base':>7}")
    print(head)
    print("-" * len(head))
    for mix, rate, cells in rows:
        n = len(cells)
        secs = sum(c.seconds for c in cells) / n
        print(f"{mix:<18}{rate:>6.0%}{n:>6}{sum(c.faults for c in cells):>8}"
              f"{sum(c.requests for c in cells):>10}{sum(c.retries for c in cells):>9}"
              f"{sum(c.uncertain for c in cells):>11}"
              f"{str(sum(c.landed for c in cells)) + '/' + str(sum(c.not_landed for c in cells)):>12}"
              f"{max(c.rounds for c in cells):>8}{sum(c.mismatches for c in cells):>12}"
              f"{sum(c.duplicated for c in cells):>12}{secs:>9.2f}{secs / baseline:>7.1f}")


def crash_campaign(kills: int, ledger_url: str | None = None) -> dict:
    """SIGKILL a real apply process ``kills`` times across one sync, resume, settle, check."""
    import test_crash as tc
    from toolkit.braze.client import BrazeClient
    from toolkit.sandbox.server import BrazeSandbox
    from toolkit.sync.ledger import Ledger

    rng = random.Random(99)
    export, mapping = h.sample_export(), h.sample_mapping(h.sample_export())
    done, t0 = [], time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, BrazeSandbox(
            seed=99, faults={"rate_slow": 1.0, "slow_seconds": tc.SLOW_S,
                             "endpoints": ("/users/track",)}) as sb:
        tmp = Path(tmp)
        client = BrazeClient.for_sandbox(sb)
        ledger_path = (h.fresh_ledger_url(ledger_url) if ledger_url else tmp / "ledger.sqlite")
        with Ledger(path=ledger_path, workspace=client.workspace) as ledger:
            first = h.make_plan(export, mapping, ledger, client, batch_size=tc.BATCH_SIZE)
        first.approve(by="bench", expires_in="1h")
        plan_path = first.save(tmp / "plan.json")
        total = len(first.batches())
        targets = sorted(rng.sample(range(1, total), min(kills, total - 1)))
        cmd, env = tc._apply_cmd(plan_path, sb, ledger_path), tc._env(sb)
        for at in targets:
            killed, gone = tc._run_and_kill(cmd, env, tmp, ledger=ledger_path, plan_id=first.id,
                                            after_batches=at, after_seconds=None)
            done.append(killed)
        tc._run_and_kill(cmd, env, tmp, ledger=ledger_path, plan_id=first.id,
                         after_batches=None, after_seconds=None)
        with Ledger(path=ledger_path, workspace=client.workspace) as ledger:
            s = tc._settle(sb, client, ledger, export, mapping, first)
            check = h.check_state(sb, ledger, first)
        client.close()
    return {"kills": sum(done), "batches": total, "landed": s.resolved_landed,
            "not_landed": s.resolved_not_landed, "mismatches": check.mismatches,
            "duplicated": check.duplicated_events, "seconds": round(time.monotonic() - t0, 1)}


def bad_inputs() -> tuple[int, int, list]:
    """(refused as required, total, failures) over the refused corpus and the plan edits."""
    import test_bad_inputs as tb
    from reliability_harness import write_plan_data
    from toolkit.errors import ToolkitError
    from toolkit.sandbox.server import BrazeSandbox

    ok, total, failures = 0, 0, []
    for case in tb.REFUSED:
        total += 1
        with tempfile.TemporaryDirectory() as tmp, BrazeSandbox(seed=3) as sb:
            inputs = case.make(Path(tmp))
            _, error, seconds, peak = tb.bounded(lambda: tb.run_pipeline(inputs, sb, Path(tmp)))
            good = (isinstance(error, case.error) and isinstance(error, ToolkitError)
                    and len(sb.request_log()) == 0 and seconds < tb.MAX_SECONDS
                    and peak < tb.MAX_PEAK_BYTES)
        ok += good
        if not good:
            failures.append(f"{case.id}: {type(error).__name__}")
    for name, edit, error_type, _ in tb.PLAN_EDITS:
        total += 1
        with tempfile.TemporaryDirectory() as tmp, BrazeSandbox(seed=5) as sb:
            path, data = tb._approved_plan(Path(tmp), sb)
            edit(data)
            write_plan_data(path, data)
            client = tb.BrazeClient.for_sandbox(sb)
            _, error, _, _ = tb.bounded(lambda: tb.toolkit.apply(path, client, progress=False))
            client.close()
            good = isinstance(error, error_type) and len(sb.request_log()) == 0
        ok += good
        if not good:
            failures.append(f"plan edit {name}: {type(error).__name__}")
    return ok, total, failures


def leaks() -> tuple[int, int]:
    """(places holding a canary key, places searched) after the API, echo and CLI runs."""
    import test_secrets as ts
    import toolkit
    from toolkit.braze.client import BrazeClient
    from toolkit.errors import BrazeAPIError
    from toolkit.sandbox.server import BrazeSandbox
    from toolkit.sync.ledger import Ledger

    searched: list = []
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    root = logging.getLogger()
    handler = Keep(level=logging.DEBUG)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    keys = {"BRAZE_API_KEY": ts.API_KEY, "BRAZE_PARTNER_API_KEY": ts.PARTNER_KEY,
            "BRAZE_DATA_IMPORT_KEY": ts.CLIENT_SECRET}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    tmp = Path(tempfile.mkdtemp())
    try:
        with BrazeSandbox(ts.API_KEY, seed=8, partner_api_key=ts.PARTNER_KEY,
                          client_secret=ts.CLIENT_SECRET) as sb:
            export = h.sample_export()
            client = BrazeClient(sb.url, ts.API_KEY, env_file=None, backoff=(0.01, 0.02))
            sb.set_faults(rate_500=0.2, rate_drop_after=0.1, endpoints=("/users/track",))
            with Ledger(client, directory=tmp) as ledger:
                p = toolkit.plan(export, ts.canary_mapping(export), ledger, workspace=client,
                                 create_users=True)
                p.approve(by="bench", expires_in="1h")
                report = toolkit.apply(p, client, ledger, progress=False)
                sb.set_faults(None)
                check = toolkit.verify(report, client, sample=20)
                searched += [repr(x) for x in (client, p, report, check, ledger, sb,
                                               client.cohort())]
                searched += [p._repr_html_(), report._repr_html_(), check._repr_html_()]
                p.save(tmp / "plan.json")
                report.save(tmp / "report.json")
            client.close()
            cli = subprocess.run([sys.executable, "-m", "toolkit", "demo", "--no-progress"],
                                 env=env, cwd=tmp, capture_output=True, text=True, timeout=120)
            searched += [cli.stdout, cli.stderr]
        from http.server import ThreadingHTTPServer
        import threading

        server = ThreadingHTTPServer(("127.0.0.1", 0), ts._Echo)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        echo = BrazeClient(f"http://127.0.0.1:{server.server_address[1]}", ts.API_KEY,
                           env_file=None, backoff=(0.001, 0.002), max_retries=1)
        for status in (400, 401, 403, 404, 500):
            ts._Echo.script = [status] * 4
            for call in (lambda: echo.track(attributes=[{"external_id": "u1"}]),
                         lambda: echo.cohort(ts.PARTNER_KEY, ts.CLIENT_SECRET).create("c", "n")):
                try:
                    call()
                except BrazeAPIError as exc:
                    searched += ts.error_text(exc)
        echo.close()
        server.shutdown()
        server.server_close()
        files = [p for p in tmp.rglob("*") if p.is_file()]
        searched += [p.read_bytes() for p in files] + records
        hits = ts.leaks(*searched)
    finally:
        root.removeHandler(handler)
        shutil.rmtree(tmp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return len(hits), len(searched)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="runs per fault cell")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs in the crash campaign")
    parser.add_argument("--quick", action="store_true", help="skip the slow 429 storms at 10%%+")
    parser.add_argument("--ledger", default=None, metavar="URL",
                        help="run the fault matrix and the crash campaign with the ledger on "
                             "PostgreSQL (a fresh schema per run at this URL; 'local-postgresql' "
                             "starts a throwaway server as the tests do)")
    parser.add_argument("--diff-at", choices=("auto", "local", "server"), default="auto",
                        help="where every campaign plan's diff runs (toolkit.plan's diff_at; "
                             "'server' with --ledger exercises the diff in PostgreSQL)")
    args = parser.parse_args()
    os.environ["TOOLKIT_CAMPAIGN_DIFF_AT"] = args.diff_at
    server = None
    if args.ledger == "local-postgresql":
        from tests.pgserver import PostgresServer

        server = PostgresServer().start()
        args.ledger = server.url
    try:
        return _campaign(args)
    finally:
        if server is not None:
            server.stop()


def _campaign(args) -> int:
    logging.getLogger("toolkit").setLevel(logging.ERROR)   # retries log a warning each

    t0 = time.monotonic()
    rows, baseline = fault_matrix(args.seeds, args.quick, args.ledger)
    if args.ledger:
        from toolkit.engage.warehouse import redact
        print(f"ledger: PostgreSQL, a fresh schema per run on {redact(args.ledger)}")
    print(f"\nFault matrix: sample shop, {args.seeds} seed(s) per cell; baseline (no faults) "
          f"{baseline:.2f}s\n")
    print_matrix(rows, baseline)
    crash = crash_campaign(args.kills, args.ledger)
    print(f"\nCrash campaign: {crash['kills']} SIGKILLs across {crash['batches']} batches, "
          f"uncertain event batches decided {crash['landed']} landed / {crash['not_landed']} "
          f"not; mismatches {crash['mismatches']}, duplicated events {crash['duplicated']} "
          f"({crash['seconds']}s)")
    refused, total, failures = bad_inputs()
    print(f"\nBad inputs refused clearly without sending: {refused}/{total}"
          + (f"  (not: {', '.join(failures)})" if failures else ""))
    leak_hits, searched = leaks()
    print(f"Secret leaks: {leak_hits} in {searched} outputs, files, objects and log records")

    cells = [c for _, _, cs in rows for c in cs]
    faults = sum(c.faults for c in cells)
    mismatches = sum(c.mismatches for c in cells) + crash["mismatches"]
    duplicated = sum(c.duplicated for c in cells) + crash["duplicated"]
    print("\nFigures")
    print(f"  faults injected        {faults:,} (+ {crash['kills']} SIGKILLs)")
    print(f"  runs                   {len(cells)} fault runs + 1 crash campaign")
    print(f"  final mismatches       {mismatches}")
    print(f"  duplicated events      {duplicated}")
    print(f"  bad inputs refused     {refused}/{total}")
    print(f"  leaks                  {leak_hits}")
    print(f"  total time             {time.monotonic() - t0:.0f}s")
    return 0 if (mismatches == 0 and duplicated == 0 and leak_hits == 0
                 and refused == total) else 1


if __name__ == "__main__":
    sys.exit(main())
