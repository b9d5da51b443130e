"""Benchmark: /users/track throughput of the Braze sandbox vs a trivial HTTP server, same run.

Starts ``python -m toolkit sandbox`` in a subprocess and, as the baseline, a bare
``http.server`` subprocess that answers every POST with 201 ``{}`` (HTTP/1.1 keep-alive). Both are
driven by the same client: N threads, one keep-alive connection each, posting 75-object attribute
batches for a bounded time. Prints requests/s for each and the ratio sandbox / baseline.

    python bench/bench_sandbox.py [--seconds 5] [--threads 4] [--client http.client|requests]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench-sandbox-key"
TARGET_RPS = 1000


def baseline_server() -> None:
    """The trivial baseline: read the body, answer 201 {} with Content-Length, keep-alive."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.wfile.write(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 2\r\n\r\n{}")

    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"SANDBOX_URL=http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


def start(argv: list[str]) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, cwd=ROOT, env=env,
                            text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("SANDBOX_URL="):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.split("=", 1)[1]


def payloads(count: int = 200, users: int = 20_000) -> list[bytes]:
    out = []
    for p in range(count):
        objs = []
        for i in range(75):
            n = (p * 75 + i) % users
            objs.append({"external_id": f"user-{n:06d}", "_update_existing_only": False,
                         "vip_customer": n % 3 == 0, "total_revenue_180_days": n * 1.5,
                         "last_product_viewed_item": f"sku-{n % 997}"})
        out.append(json.dumps({"attributes": objs}).encode())
    return out


def drive(url: str, bodies: list[bytes], threads: int, seconds: float, client: str) -> dict:
    host, port = urlsplit(url).hostname, urlsplit(url).port
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    counts = [0] * threads
    bad = [0] * threads
    deadline = [0.0]
    go = threading.Event()

    def worker(k: int) -> None:
        go.wait()
        i = k
        if client == "requests":
            import requests

            session = requests.Session()
            send = lambda body: session.post(url + "/users/track", data=body,  # noqa: E731
                                             headers=headers).status_code
        else:
            conn = http.client.HTTPConnection(host, port)

            def send(body):
                conn.request("POST", "/users/track", body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                return resp.status
        while time.perf_counter() < deadline[0]:
            status = send(bodies[i % len(bodies)])
            i += threads
            if status == 201:
                counts[k] += 1
            else:
                bad[k] += 1

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    start_t = time.perf_counter()
    deadline[0] = start_t + seconds
    go.set()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start_t
    return {"rps": sum(counts) / elapsed, "ok": sum(counts), "bad": sum(bad)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--client", choices=("http.client", "requests"), default="http.client")
    parser.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        baseline_server()
        return 0
    bodies = payloads()
    results = {}
    for name, argv in (
        ("baseline", [str(Path(__file__).resolve()), "--baseline-server"]),
        ("sandbox", ["-m", "toolkit", "sandbox", "--api-key", API_KEY,
                     "--rate-limit", "100000000/1"]),
    ):
        proc, url = start(argv)
        try:
            drive(url, bodies, args.threads, min(1.0, args.seconds), args.client)  # warm-up
            results[name] = drive(url, bodies, args.threads, args.seconds, args.client)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        r = results[name]
        print(f"{name:9s} {r['rps']:8.0f} requests/s of 75-object /users/track batches "
              f"({r['ok']} ok, {r['bad']} not 201; {args.threads} threads, {args.client})")
    ratio = results["sandbox"]["rps"] / results["baseline"]["rps"]
    print(f"ratio sandbox/baseline: {ratio:.2f}  "
          f"(sandbox target >= {TARGET_RPS} requests/s: "
          f"{'met' if results['sandbox']['rps'] >= TARGET_RPS else 'NOT met'})")
    return 0 if results["sandbox"]["bad"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
