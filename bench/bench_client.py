"""Benchmark: BrazeClient.track_batches throughput vs a bare requests.Session().post loop.

Both send the same pre-built /users/track payloads (75 attribute objects each) with the same
number of worker threads to a trivial local HTTP server running in another process, so the ratio
measures what the client's rate limiter, retry bookkeeping, redaction and result parsing cost.
The client runs twice: with its rate limiter off (pure overhead) and with the default
/users/track budget (3,000 requests / 3 s), which a single local server cannot reach anyway.

    python bench/bench_client.py [--payloads 1500] [--workers 4] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit.braze.client import BrazeClient  # noqa: E402

API_KEY = "bench-key-0123456789abcdef"

SERVER = r'''
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = json.dumps({"message": "success", "attributes_processed": 75}).encode()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *args):
        pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
'''


def build_payloads(n: int) -> list[dict]:
    return [{"attributes": [{"external_id": f"user-{b}-{i}", "_update_existing_only": True,
                             "vip_customer": (b + i) % 2 == 0,
                             "total_revenue_180_days": round((b * 75 + i) * 1.37, 2),
                             "last_product_viewed_item": f"sku-{(b * 7 + i) % 500:04d}"}
                            for i in range(75)]} for b in range(n)]


def run_bare(url: str, payloads: list[dict], workers: int) -> float:
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_maxsize=workers, max_retries=0))
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def send(payload: dict) -> int:
        return session.post(url + "/users/track", json=payload, headers=headers, timeout=30).status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        statuses = list(pool.map(send, payloads))
    elapsed = time.perf_counter() - started
    session.close()
    assert all(s == 201 for s in statuses), "baseline saw a failure"
    return len(payloads) / elapsed


def run_client(url: str, payloads: list[dict], workers: int, limited: bool) -> float:
    options = {} if limited else {"rate_limit": None}
    with BrazeClient(url, API_KEY, max_workers=workers, env_file=None, **options) as client:
        started = time.perf_counter()
        results = list(client.track_batches(payloads))
        elapsed = time.perf_counter() - started
    assert len(results) == len(payloads) and all(r.status == 201 for _, r in results), \
        "client saw a failure"
    return len(payloads) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payloads", type=int, default=1500)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{int(server.stdout.readline())}"
        payloads = build_payloads(args.payloads)
        size = len(json.dumps(payloads[0]))
        run_bare(url, payloads[:100], args.workers)            # warm up both paths
        run_client(url, payloads[:100], args.workers, limited=False)
        bare, raw, limited = [], [], []
        for _ in range(args.rounds):                          # interleave to share any drift
            bare.append(run_bare(url, payloads, args.workers))
            raw.append(run_client(url, payloads, args.workers, limited=False))
            limited.append(run_client(url, payloads, args.workers, limited=True))
    finally:
        server.terminate()
        server.wait(10)

    b, r, lim = (statistics.median(x) for x in (bare, raw, limited))
    print(f"{args.payloads} /users/track payloads of 75 objects (~{size / 1024:.1f} KiB each), "
          f"{args.workers} workers, median of {args.rounds} rounds")
    print(f"  bare requests.Session().post loop : {b:8.0f} requests/s")
    print(f"  BrazeClient, rate limiter off     : {r:8.0f} requests/s   ratio {r / b:.2f}")
    print(f"  BrazeClient, default 3000/3s limit: {lim:8.0f} requests/s   ratio {lim / b:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
