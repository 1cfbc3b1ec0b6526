"""HTTP limits (issue 12, item 4): request bodies above 1 MiB refused with a JSON 413 (larger limits only
on the routes that take files), and the real server (``serve``) closes connections whose headers do not
arrive within the header timeout and keep-alive connections left idle."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from ews_contracts.settings import Settings
from ews_gateway_api import service
from ews_gateway_api.app import MAX_REQUEST_BODY
from ews_gateway_api.service import HeaderTimeoutProtocol, serve
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
