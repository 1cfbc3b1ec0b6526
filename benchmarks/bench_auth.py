"""Cost of an authenticated request: ``GET /api/v1/me`` vs ``GET /health`` on one uvicorn worker.

Starts a real redis-server and nats-server on free ports, the auth service and the gateway-api (uvicorn,
one worker) as child processes, logs in once with PIN + PUK, then times N sequential keep-alive requests
of each route with httpx, interleaved in blocks so that drift hits every route alike. Also times
``GET /api/v1/language`` (public, no session) to isolate the session's own cost: /health runs a
ClickHouse query, so it is not a "do nothing" baseline.

    .venv/bin/python benchmarks/bench_auth.py [--n 2000]

Prints a markdown table (p50 / p90 in ms) and the p50 differences; the target is me - health <= 2 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from ews_runtime.servers import NatsServer, RedisServer, free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ADMIN = {"pin": "99999", "puk": "00000 9999 00000"}
SERVE_GATEWAY = """
import uvicorn
from ews_contracts.settings import Settings
from ews_gateway_api.app import create_app
s = Settings()
uvicorn.run(create_app(s), host=s.http_host, port=s.http_port, workers=1, log_level="warning",
            access_log=False, lifespan="on")
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_requests(client: httpx.Client, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        resp = client.get(path)
        out.append((time.perf_counter() - start) * 1000)
        if resp.status_code != 200:
            raise SystemExit(f"GET {path}: {resp.status_code} {resp.text[:200]}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="requests per route (default 2000)")
    parser.add_argument("--block", type=int, default=200, help="requests per route per interleaved block")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ews-bench-auth-") as tmp:
        data = Path(tmp)
        redis = RedisServer(data / "redis", free_port()).start()
        nats = NatsServer(data / "nats", free_port()).start()
        http_port = free_port()
        env = dict(
            os.environ,
            REDIS_URL=redis.url,
            NATS_URL=nats.url,
            EWS_DATA_DIR=str(data / "ews"),
            EWS_HTTP_HOST="127.0.0.1",
            EWS_HTTP_PORT=str(http_port),
            EWS_LOG_LEVEL="WARNING",
        )
        procs = [
            subprocess.Popen([str(BIN / "ews"), "run", "auth"], env=env, cwd=ROOT),
            subprocess.Popen([sys.executable, "-c", SERVE_GATEWAY], env=env, cwd=ROOT),
        ]
        try:
            wait_for_port("127.0.0.1", http_port, 60.0, procs[1])
            base = f"http://127.0.0.1:{http_port}"
            with httpx.Client(base_url=base, timeout=10) as client:
                for _ in range(200):  # until the auth service answers
                    resp = client.post("/api/v1/auth/login", json=ADMIN)
                    if resp.status_code != 503:
                        break
                    time.sleep(0.1)
                if resp.status_code != 200:
                    raise SystemExit(f"login failed: {resp.status_code} {resp.text[:200]}")
                routes = ["/health", "/api/v1/language", "/api/v1/me"]
                anonymous = httpx.Client(base_url=base, timeout=10)
                clients = {"/health": anonymous, "/api/v1/language": anonymous, "/api/v1/me": client}
                for path in routes:  # warm-up
                    time_requests(clients[path], path, 200)
                times: dict[str, list[float]] = {p: [] for p in routes}
                done = 0
                while done < args.n:
                    block = min(args.block, args.n - done)
                    for path in routes:
                        times[path] += time_requests(clients[path], path, block)
                    done += block
                anonymous.close()
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            nats.stop()
            redis.stop()

    p50 = {p: statistics.median(v) for p, v in times.items()}
    print(f"\n### Authenticated request cost (uvicorn, 1 worker, real Redis; N = {args.n} per route)\n")
    print("| route | p50 ms | p90 ms |")
    print("|---|---:|---:|")
    for path in routes:
        print(f"| GET {path} | {p50[path]:.3f} | {percentile(times[path], 0.9):.3f} |")
    diff = p50["/api/v1/me"] - p50["/health"]
    session = p50["/api/v1/me"] - p50["/api/v1/language"]
    print(f"\nme - health (p50): {diff:+.3f} ms (target <= 2 ms: {'met' if diff <= 2 else 'NOT met'})")
    print(f"me - language (p50, the session + guard cost over a public route): {session:+.3f} ms")
    return 0 if diff <= 2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
