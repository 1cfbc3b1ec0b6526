"""`ews up` supervises nats-server and redis-server: after `kill -9` of either, `/ready` turns 503 naming
the part within seconds, the server is restarted (logged) and `/ready` is 200 again within a minute."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from ews_runtime.servers import free_port

from tests.helpers import simulated_demo_env, start_ews, stop, wait_until

pytestmark = pytest.mark.integration


def ready(base: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{base}/ready", timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def pid_of(name: str, port: str) -> int | None:
    """The server process listening on ``port`` (redis-server rewrites its command line to host:port)."""
    found = subprocess.run(["pgrep", name], capture_output=True, text=True).stdout.split()
    for pid in found:
        try:
            if port in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " "):
                return int(pid)
        except OSError:
            continue
    return None


@pytest.mark.timeout(300)
def test_dead_servers_are_restarted_and_ready_tells_the_truth(tmp_path: Path):
    http, nats_port, redis_port = free_port(), free_port(), free_port()
    ports = {"nats-server": str(nats_port), "redis-server": str(redis_port)}
    env = simulated_demo_env(tmp_path, http, nats_port, redis_port)
    log = tmp_path / "up.log"
    proc = start_ews(["up"], env, log)
    base = f"http://127.0.0.1:{http}"
    try:
        wait_until(lambda: ready(base)[0] == 200 or None, 120, "/ready 200 after start")
        # the long-lived supervisor is the light one (ews_runtime.supervise: standard library only)
        supervisor = wait_until(
            lambda: "ews_runtime.supervise" in (c := Path(f"/proc/{proc.pid}/cmdline").read_text()) and c,
            30,
            "`ews up` to hand over to ews_runtime.supervise",
        )
        assert "--handover-fd" in supervisor
        assert "pydantic" not in Path(f"/proc/{proc.pid}/maps").read_text()
        for server, part in (("nats-server", "nats"), ("redis-server", "redis")):
            pid = pid_of(server, ports[server])
            assert pid, f"no {server} of this stack"
            os.kill(pid, signal.SIGKILL)
            status, body = wait_until(
                lambda part=part: (r := ready(base))[0] == 503 and part in r[1].get("unavailable", []) and r or None,
                20,
                f"/ready 503 naming {part}",
            )
            wait_until(lambda: ready(base)[0] == 200 or None, 60, f"/ready 200 after {server} came back")
            assert pid_of(server, ports[server]) not in (None, pid)
        # the supervisor logs "restarted" once it sees the port open, which may be just after /ready does
        wanted = [f"{server} {what}" for server in ports for what in ("exited with code", "restarted")]
        wait_until(lambda: all(w in log.read_text() for w in wanted), 10, f"the log lines {wanted}")
    finally:
        stop(proc)
