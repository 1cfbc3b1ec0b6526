"""Start the whole product the way a user does (`.venv/bin/ews up`), for the browser tests, the
screenshots script and the page benchmark.

A fresh temporary data folder, free ports for HTTP, NATS, Redis and the simulated gateway (the demo
site copied with its gateway port changed, as tests/e2e/test_ews_up.py does); ready once ``GET /health``
says the analytics store is ready;
stopped with SIGINT (Ctrl-C) like a person in a terminal.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from ews_runtime.servers import free_port

from tests.helpers import clean_env, demo_site_on_port, stop

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120.0


def ews_command() -> list[str]:
    """``.venv/bin/ews`` as `make run` calls it; the running interpreter's module as a fallback."""
    for candidate in (ROOT / ".venv" / "bin" / "ews", Path(sys.executable).parent / "ews"):
        if candidate.exists():
            return [str(candidate)]
    return [sys.executable, "-m", "ews_runtime.cli"]


def is_ready(base: str) -> bool:
    with httpx.Client(base_url=base, timeout=5) as client:
        health = client.get("/health")
        return health.status_code == 200 and health.json().get("analytics") == "ready"


@contextlib.contextmanager
def running_product(folder: Path, poll_interval: str = "1") -> Iterator[str]:
    """`ews up` on free ports with its data under ``folder``; yields the base URL (http://127.0.0.1:<port>)."""
    folder.mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    env = clean_env(
        EWS_DATA_DIR=str(folder / "data"),
        EWS_SITE_FILE=str(demo_site_on_port(folder, free_port())),
        EWS_SIMULATE="1",
        EWS_HTTP_PORT=str(http_port),
        NATS_URL=f"nats://127.0.0.1:{free_port()}",
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        EWS_POLL_INTERVAL=poll_interval,
    )
    base = f"http://127.0.0.1:{http_port}"
    log = folder / "ews-up.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*ews_command(), "up"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    started = False
    try:
        deadline = time.monotonic() + START_TIMEOUT
        last: object = None
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"`ews up` exited with {proc.returncode}:\n{tail(log)}")
            try:
                if is_ready(base):
                    break
            except (httpx.HTTPError, ValueError) as exc:
                last = exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"`ews up` not ready after {START_TIMEOUT:.0f} s ({last!r}):\n{tail(log)}")
            time.sleep(0.25)
        started = True
        yield base
    finally:
        code = stop(proc, signal.SIGINT, timeout=30)
        if started and code not in (0, -signal.SIGINT):
            print(f"`ews up` stopped with exit code {code}; log tail:\n{tail(log)}", file=sys.stderr)


def tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"
