"""`python -m toolkit sandbox`: run the local Braze sandbox in the foreground until Ctrl-C/SIGTERM.

The first output line is machine-readable (``SANDBOX_URL=http://127.0.0.1:PORT``), followed by
``SANDBOX_API_KEY=…`` and the partner cohort keys, so benchmarks and crash tests can start it as a
subprocess. The sandbox key is not a secret: it only opens this local server.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from toolkit.braze.limits import LIMITS
from toolkit.errors import SandboxError
from toolkit.sandbox.server import BrazeSandbox

_FAULT_FLAGS = ("429", "500", "502", "503", "slow", "drop-before", "drop-after")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--api-key", default=None, help="REST API key to accept (default: generated)")
    parser.add_argument("--seed", type=int, default=0, help="seed for ids and fault injection")
    parser.add_argument("--rate-limit", action="append", default=[], metavar="[ENDPOINT=]N/SECONDS",
                        help="request budget, e.g. 3000/3 for /users/track or "
                             "/users/export/ids=250/60 (repeatable)")
    parser.add_argument("--max-objects", type=int, default=LIMITS.objects_per_array,
                        help="objects per /users/track array (Braze: 75)")
    parser.add_argument("--combined-limit", type=int, default=None,
                        help="objects per request across arrays (50 for CY 24-25 MAU contracts)")
    for kind in _FAULT_FLAGS:
        parser.add_argument(f"--fault-{kind}", type=float, default=0.0, metavar="RATE",
                            help=f"fraction of requests answered with fault {kind}")
    parser.add_argument("--fault", action="append", default=[], metavar="KIND=RATE",
                        help="same as --fault-KIND RATE (KIND: " + ", ".join(_FAULT_FLAGS) + ")")
    parser.add_argument("--slow-seconds", type=float, default=2.0, help="delay of a slow fault")
    parser.add_argument("--fault-endpoint", action="append", default=None, metavar="PATH",
                        help="inject faults only on this endpoint (repeatable; default: all)")
    parser.add_argument("--read-delay", type=float, default=0.0, metavar="SECONDS",
                        help="show stored events in /users/export/ids only this long after they "
                             "arrived (Braze's read-after-write delay; default 0)")
    parser.add_argument("--estimate-error", type=float, default=0.01, metavar="FRACTION",
                        help="segment size estimates are off by up to this share of all users "
                             "(Braze: about 1%%; default 0.01). Build segments with POST "
                             "/sandbox/segments, estimate with POST /sandbox/segments/estimate")
    parser.add_argument("--permissions", default=None, metavar="LIST",
                        help="comma-separated REST API key permissions (default: all), e.g. "
                             "users.track,users.export.ids to see the segment check's 403")
    parser.add_argument("--keep", choices=("users", "counts"), default="users",
                        help="what the workspace holds: every user (default), or 'counts': "
                             "requests validated, refused and billed exactly as with 'users' "
                             "but no attribute values or events kept (about 120 bytes a user, "
                             "for benchmarks at 10M users; no /users/export/ids or segments)")
    parser.add_argument("--partner-api-key", default=None, help="cohort partner key to accept")
    parser.add_argument("--client-secret", default=None, help="cohort client secret to accept")


def _rate_limits(specs: list[str]) -> dict[str, tuple[int, float]]:
    limits = {}
    for spec in specs:
        endpoint, _, budget = spec.rpartition("=")
        count, _, seconds = budget.partition("/")
        try:
            limits[endpoint or "/users/track"] = (int(count), float(seconds or 1))
        except ValueError:
            raise SandboxError(f"--rate-limit {spec!r} is not N/SECONDS",
                               hint="write e.g. --rate-limit 3000/3 or "
                                    "--rate-limit /users/export/ids=250/60") from None
    return limits


def _faults(args: argparse.Namespace) -> dict:
    faults = {f"rate_{k.replace('-', '_')}": getattr(args, f"fault_{k.replace('-', '_')}")
              for k in _FAULT_FLAGS}
    for spec in args.fault:
        kind, _, rate = spec.partition("=")
        kind = kind.strip().replace("-", "_")
        if f"rate_{kind}" not in faults:
            raise SandboxError(f"--fault {spec!r}: unknown kind {kind!r}",
                               hint="use one of " + ", ".join(_FAULT_FLAGS))
        try:
            faults[f"rate_{kind}"] = float(rate)
        except ValueError:
            raise SandboxError(f"--fault {spec!r}: the rate is not a number",
                               hint="write e.g. --fault 429=0.05") from None
    faults["slow_seconds"] = args.slow_seconds
    faults["endpoints"] = tuple(args.fault_endpoint) if args.fault_endpoint else None
    return faults


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    sandbox = BrazeSandbox(args.api_key, port=args.port, seed=args.seed,
                           max_objects_per_array=args.max_objects,
                           combined_limit=args.combined_limit,
                           rate_limits=_rate_limits(args.rate_limit), faults=_faults(args),
                           partner_api_key=args.partner_api_key, client_secret=args.client_secret,
                           read_delay=args.read_delay, estimate_error=args.estimate_error,
                           keep=args.keep,
                           permissions=None if args.permissions is None else
                           [p.strip() for p in args.permissions.split(",") if p.strip()])
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"SANDBOX_URL={sandbox.url}", flush=True)
        print(f"SANDBOX_API_KEY={sandbox.api_key}")
        print(f"SANDBOX_PARTNER_API_KEY={sandbox.partner_api_key}")
        print(f"SANDBOX_CLIENT_SECRET={sandbox.client_secret}")
        print(f"Braze sandbox serving on {sandbox.url} (seed {sandbox.seed}, keeps "
              f"{sandbox.keep}); "
              f"Ctrl-C or SIGTERM stops it.", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        sandbox.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"stopped: {len(sandbox._log)} requests, {sandbox.data_points} data points",
          file=sys.stderr, flush=True)
    return 0
