"""Helpers for cross-service tests: a demo site on free ports, `ews` subprocesses, polling until true."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from ews_contracts.hub import HUB_DOMAIN, edge_domain, link_to_hub
from ews_contracts.settings import BUNDLED_DEMO_SITE
from ews_runtime.servers import NatsServer, free_port

T = TypeVar("T")


def demo_site_on_port(folder: Path, gateway_port: int) -> Path:
    """A copy of the bundled demo site whose simulated gateway listens on ``gateway_port``."""
    text = BUNDLED_DEMO_SITE.read_text()
    assert "port: 5020" in text
    path = folder / "site.yaml"
    path.write_text(text.replace("port: 5020", f"port: {gateway_port}"))
    return path


def simulated_demo_env(folder: Path, http_port: int, nats_port: int, redis_port: int) -> dict[str, str]:
    """The environment of an `ews up` of the simulated demo site on the given ports, data in ``folder``."""
    return clean_env(
        EWS_DATA_DIR=str(folder / "data"),
        EWS_SITE_FILE=str(demo_site_on_port(folder, free_port())),
        EWS_SIMULATE="1",
        EWS_HTTP_PORT=str(http_port),
        NATS_URL=f"nats://127.0.0.1:{nats_port}",
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
    )


def clean_env(**values: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("EWS_", "NATS_", "REDIS_", "CLICKHOUSE_"))
    }
    env.update(values)
    return env


def start_ews(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ews_runtime.cli", *args],
        env=env,
        stdout=open(log, "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def login_when_auth_answers(client, credentials: dict[str, str], timeout: float = 60):
    """``POST /api/v1/auth/login`` once auth answers: on a fresh data folder auth hashes the factory codes
    (argon2) before it subscribes, and the API says 503 ``auth-unavailable`` meanwhile — the gateway-api may
    be up first (it is with chdb-core-lite, and on a loaded machine)."""
    return wait_until(
        lambda: (r := client.post("/api/v1/auth/login", json=credentials)).status_code != 503 and r,
        timeout,
        "auth to answer a sign-in",
        interval=0.2,
    )


def wait_until(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25) -> T:
    """Call ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 — retried until the deadline, reported below
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error!r})")


def supervised(up_pid: int) -> dict[str, int]:
    """The processes an `ews up` (process ``up_pid``) runs now, from /proc: ``nats-server``, ``redis-server``
    and every target group (``poller``, ``aggregator,gateway-api`` …) -> pid. A child that died and is not
    reaped yet (a zombie) is left out."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            words = [w.decode() for w in (entry / "cmdline").read_bytes().split(b"\0") if w]
        except OSError:  # gone meanwhile
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) != up_pid or state == "Z" or not words:
            continue
        if "ews_runtime.cli" in words and "run" in words[:-1]:
            found[words[words.index("run") + 1]] = int(entry.name)
        else:  # redis-server rewrites its command line to "redis-server host:port"
            found[Path(words[0].split()[0]).name] = int(entry.name)
    return found


# --- a hub and its edges on this machine (their nats-servers) ---------------------------------------------


def hub_nats(folder: Path, leaf_port: int) -> NatsServer:
    """The hub's nats-server (JetStream domain ``hub``, edges join on ``leaf_port``), not started."""
    return NatsServer(
        folder / "hub", free_port(), domain=HUB_DOMAIN, leaf_port=leaf_port, log=folder / "hub.log"
    )


def edge_nats(folder: Path, sites: Iterable[str], leaf_port: int) -> dict[str, NatsServer]:
    """One nats-server per edge site (its own JetStream domain, a leaf node of the hub on ``leaf_port``), not
    started; data in ``folder/<site>``, log in ``folder/<site>.log``."""
    return {
        site: NatsServer(
            folder / site,
            free_port(),
            domain=edge_domain(site),
            leaf_remote=f"nats-leaf://127.0.0.1:{leaf_port}",
            log=folder / f"{site}.log",
        )
        for site in sites
    }


async def link_edges(conns: dict[str, Any], seconds: float = 30.0) -> None:
    """``link_to_hub`` from every edge's connection (site -> nats client), as `ews up --edge` does, tried
    again every 0.2 s until the leaf-node links are up."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            for site, nc in conns.items():
                await link_to_hub(nc.jetstream(domain=HUB_DOMAIN, timeout=2), site)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
