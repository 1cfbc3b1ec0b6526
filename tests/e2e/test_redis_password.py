"""`ews up` protects the redis-server it starts: a password made on the first start and kept in the data folder
(data/redis/password, mode 0600), required from every client, given to every service; never in the log or on
the Network page; the sessions are stored under the hash of their ids."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import httpx
import pytest
import redis
from ews_runtime.servers import free_port

from tests.helpers import simulated_demo_env, start_ews, stop, wait_until

pytestmark = pytest.mark.integration

ADMIN = {"pin": "99999", "puk": "00000 9999 00000"}


def unauthenticated_ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(256)


@pytest.mark.timeout(300)
def test_ews_up_redis_requires_its_password(tmp_path: Path):
    data = tmp_path / "data"
    http, redis_port = free_port(), free_port()
    env = simulated_demo_env(tmp_path, http, free_port(), redis_port)
    log = tmp_path / "up.log"
    proc = start_ews(["up"], env, log)
    base = f"http://127.0.0.1:{http}"
    try:
        wait_until(lambda: httpx.get(f"{base}/ready").status_code == 200, 120, "/ready 200 (Redis reachable)")
        secret = data / "redis" / "password"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        password = secret.read_text().strip()
        assert len(password) >= 32

        assert unauthenticated_ping(redis_port).startswith(b"-NOAUTH")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=redis_port).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=redis_port, password="wrong").ping()
        client = redis.Redis(port=redis_port, password=password)
        assert client.ping()

        with httpx.Client(base_url=base, timeout=10) as web:
            r = web.post("/api/v1/auth/login", json=ADMIN)
            assert r.status_code == 200, r.text
            sid = web.cookies["ews_session"]
            assert web.get("/api/v1/me").status_code == 200
            keys = [k.decode() for k in client.keys("ews:*session*")]
            assert keys and not [k for k in keys if sid in k]
            page = web.get("/configuration/network")
            assert page.status_code == 200
            assert f"127.0.0.1:{redis_port}" in page.text and password not in page.text
            # live readings reach Redis through the poller's authenticated connection
            wait_until(lambda: client.keys("ews:demo:live:*"), 60, "live state in Redis")
        assert password not in log.read_text()
    finally:
        stop(proc)
    # the next start keeps the password (and the data)
    proc = start_ews(["up"], env, log)
    try:
        wait_until(lambda: httpx.get(f"{base}/ready").status_code == 200, 120, "/ready 200 after a restart")
        assert (data / "redis" / "password").read_text().strip() == password
        assert unauthenticated_ping(redis_port).startswith(b"-NOAUTH")
    finally:
        stop(proc)
    assert password not in log.read_text()
