"""HTTP limits (issue 12, item 4): request bodies above 1 MiB refused with a JSON 413 (larger limits only
on the routes that take files), and the real server (``serve``) closes connections whose headers do not
arrive within the header timeout and keep-alive connections left idle."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
import redis.asyncio as aioredis
from ews_contracts.settings import Settings
from ews_contracts.tokens import TokenRecord, new_token, token_digest, tokens_key
from ews_gateway_api import service
from ews_gateway_api.app import MAX_REQUEST_BODY
from ews_gateway_api.service import HeaderTimeoutProtocol, RequestLimit, serve
from ews_gateway_api.testing import BASE_URL
from ews_runtime.servers import free_port
from httpx import AsyncClient
from litestar import Litestar
from litestar.routes import HTTPRoute

from .conftest import session_for

MiB = 1024 * 1024


def limit_of(app: Litestar, path: str, method: str) -> int | None:
    for route in app.routes:
        if isinstance(route, HTTPRoute) and route.path == path:
            for handler in route.route_handlers:
                if method in handler.http_methods:
                    return handler.resolve_request_max_body_size()
    raise AssertionError(f"no {method} {path}")


def test_the_body_limits_of_the_routes(app: Litestar) -> None:
    assert MAX_REQUEST_BODY == MiB
    assert limit_of(app, "/api/v1/commands", "POST") == MiB
    assert limit_of(app, "/api/v1/auth/login", "POST") == MiB
    assert limit_of(app, "/api/v1/site/config", "PUT") == 2 * MiB
    assert limit_of(app, "/api/v1/readings/import", "POST") == 20 * MiB
    restore = limit_of(app, "/api/v1/restore", "POST")
    assert restore is None or restore >= 16 * 1024 * MiB  # archives can be hundreds of MB


async def test_a_too_large_json_body_gets_a_json_413(client: AsyncClient, app: Litestar) -> None:
    cookies = await session_for(app, "administrator")
    body = b'{"device":"ev2a","action":"priority","value":"' + b"x" * MiB + b'"}'
    resp = await client.post(
        "/api/v1/commands",
        content=body,
        headers={"content-type": "application/json", "origin": BASE_URL},
        cookies=cookies,
    )
    assert resp.status_code == 413 and resp.headers["content-type"].startswith("application/json")
    assert resp.json()["code"] == "too-large" and resp.json()["detail"] == "the request is too large"
    # the configuration route takes up to 2 MB: 1.5 MB is read (and judged on its content), 3 MB is not
    for size, refused in ((MiB + MiB // 2, False), (3 * MiB, True)):
        resp = await client.put(
            "/api/v1/site/config",
            content=b"#" * size,
            headers={"content-type": "application/yaml", "origin": BASE_URL},
            cookies=cookies,
        )
        assert (resp.status_code == 413) is refused, (size, resp.status_code, resp.text)


# --- the real server: slow headers and idle connections ------------------------------------------------


@pytest.fixture
async def port(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    monkeypatch.setattr(HeaderTimeoutProtocol, "header_timeout", 1.0)
    monkeypatch.setattr(service, "KEEP_ALIVE_TIMEOUT", 1)
    async with running(settings) as port:
        yield port


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[int]:
    """The real server (``serve``) on a free port, answering; yields the port."""
    port = free_port()
    task = asyncio.create_task(serve(settings.model_copy(update={"http_port": port})))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        for _ in range(400):
            try:
                await http.get("/health")
                break
            except httpx.TransportError:
                assert not task.done(), task.exception()
                await asyncio.sleep(0.05)
    yield port
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def closed_after(sock: socket.socket, limit: float) -> float:
    """Seconds until the server closes ``sock`` (reads until EOF); fails after ``limit``."""
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    sock.setblocking(False)
    while True:
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout=limit)
        except ConnectionResetError:
            data = b""
        if not data:
            return time.monotonic() - start
        assert time.monotonic() - start < limit


@pytest.mark.integration
async def test_slow_headers_and_idle_connections_are_closed(port: int) -> None:
    loop = asyncio.get_running_loop()
    silent = socket.create_connection(("127.0.0.1", port))  # connects and sends nothing
    slow = socket.create_connection(("127.0.0.1", port))  # starts its headers and never ends them
    slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    try:
        # meanwhile a real request is served
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/health")).status_code == 200
        waited = await asyncio.gather(closed_after(silent, 5), closed_after(slow, 5))
        assert all(0.5 < w < 3 for w in waited), waited
    finally:
        silent.close()
        slow.close()
    # a kept-alive connection: a request and its answer, then idle → closed after the keep-alive timeout;
    # one that begins a second request and stalls is closed by the header timeout
    for second in (b"", b"GET /health HTTP/1.1\r\n"):
        idle = socket.create_connection(("127.0.0.1", port))
        try:
            idle.setblocking(False)
            await loop.sock_sendall(idle, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await asyncio.wait_for(loop.sock_recv(idle, 65536), timeout=5)
            assert answer.startswith(b"HTTP/1.1 200")
            if second:
                await loop.sock_sendall(idle, second)
            waited = await closed_after(idle, 5)
            assert waited < 3, waited
        finally:
            idle.close()


def open_sockets(sockets: list[socket.socket]) -> int:
    """How many of ``sockets`` the server still holds open (no EOF, no reset; nothing sent to them)."""
    still = 0
    for sock in sockets:
        try:
            if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                still += 1
        except BlockingIOError:
            still += 1
        except OSError:
            pass
    return still


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_a_thousand_slow_connections_starve_nothing_and_are_closed(
    port: int, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit's reproduction: 1,000 connections that send part of their headers and stall. While they are
    open, real requests (liveness and an authenticated API read) are answered at once; the header timeout
    then closes every one of them."""
    header_timeout = 4.0
    monkeypatch.setattr(HeaderTimeoutProtocol, "header_timeout", header_timeout)
    token_id, token = new_token()
    record = TokenRecord(
        id=token_id,
        name="probe",
        role="administrator",
        created_at=datetime.now(UTC),
        created_by="administrator",
        digest=token_digest(token),
    )
    redis = aioredis.from_url(redis_url)
    await redis.hset(tokens_key("demo"), token_id, record.model_dump_json())
    await redis.aclose()

    slow: list[socket.socket] = []
    try:
        opened = time.monotonic()
        for _ in range(1000):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(sock)
        answers = []
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"connection": "close"}, timeout=10
        ) as http:
            for _ in range(5):  # a new connection each: queued behind the slow ones, so accepted after them
                for path, headers in (
                    ("/health", {}),
                    ("/api/v1/devices", {"Authorization": f"Bearer {token}"}),
                ):
                    start = time.monotonic()
                    resp = await http.get(path, headers=headers)
                    answers.append((path, resp.status_code, round(time.monotonic() - start, 2)))
        served = time.monotonic()
        assert served - opened < header_timeout, "too slow to prove anything: the slow ones may be gone"
        assert open_sockets(slow) == len(slow)  # all still open while the real requests were served
        assert all(status == 200 and took < 3 for _, status, took in answers), answers
        # every slow connection is closed by the header timeout (counted from when it was accepted)
        await asyncio.gather(*(closed_after(sock, header_timeout + 10) for sock in slow))
        closed = time.monotonic() - opened
        assert closed < header_timeout + 5
        print(
            f"\n1,000 slow connections: real requests answered in at most {max(t for *_, t in answers)} s; "
            f"all closed {closed:.1f} s after the first opened (header timeout {header_timeout:.0f} s)"
        )
        assert open_sockets(slow) == 0
    finally:
        for sock in slow:
            sock.close()


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_at_the_connection_cap_the_oldest_waiting_connections_are_shed(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connections still waiting for their headers take no request slot: at the cap, each new connection
    closes the oldest of them, so a real client always gets in."""
    monkeypatch.setattr(service, "MAX_CONNECTIONS", 50)
    monkeypatch.setattr(HeaderTimeoutProtocol, "header_timeout", 60.0)  # only the cap closes them here
    slow: list[socket.socket] = []
    async with running(settings) as port:
        try:
            for _ in range(80):
                sock = socket.create_connection(("127.0.0.1", port))
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                slow.append(sock)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                assert (await http.get("/health", headers={"connection": "close"})).status_code == 200
            # 81 arrivals over a cap of 50: the 31 oldest were shed, the newest are still waiting
            await asyncio.gather(*(closed_after(sock, 10) for sock in slow[:30]))
            assert open_sockets(slow[-40:]) == 40
        finally:
            for sock in slow:
                sock.close()


async def test_requests_above_the_limit_get_a_json_503() -> None:
    """Unit: ``RequestLimit`` counts requests being handled (not connections); one more → 503 busy."""
    release = asyncio.Event()
    sent: list[list[dict]] = [[], [], []]

    async def app(scope, receive, send) -> None:  # noqa: ANN001
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limited = RequestLimit(app, 2)

    def call(i: int) -> asyncio.Task[None]:
        async def send(message: dict) -> None:
            sent[i].append(message)

        return asyncio.create_task(limited({"type": "http", "path": "/x"}, None, send))  # type: ignore[arg-type]

    first, second = call(0), call(1)
    await asyncio.sleep(0)  # both admitted and waiting inside the app
    await call(2)
    assert sent[2][0]["status"] == 503
    headers = dict(sent[2][0]["headers"])
    assert headers[b"retry-after"] == b"1"
    assert (headers[b"x-content-type-options"], headers[b"x-frame-options"]) == (b"nosniff", b"DENY")
    assert b'"code": "busy"' in sent[2][1]["body"]
    release.set()
    await asyncio.gather(first, second)
    assert [m[0]["status"] for m in sent[:2]] == [200, 200] and limited.active == 0
    await call(2)  # a slot is free again
    assert sent[2][-2]["status"] == 200
