"""``serve(settings)``: uvicorn on the configured port until cancelled, then a clean shutdown."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
from ews_contracts.settings import Settings
from ews_gateway_api.service import serve
from ews_runtime.servers import free_port

pytestmark = pytest.mark.integration


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_serve_until_cancelled(settings: Settings, monkeypatch) -> None:
    port = free_port()
    settings = settings.model_copy(update={"http_port": port})
    task = asyncio.create_task(serve(settings))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(200):
                try:
                    resp = await http.get("/health")
                    break
                except httpx.TransportError:
                    assert not task.done(), task.exception()
                    await asyncio.sleep(0.05)
            assert resp.status_code == 200 and resp.json()["status"] == "ok"
            assert (await http.get("/api/v1/me")).status_code == 401
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not port_open(port)


async def test_serve_fails_clearly_when_the_port_is_taken(settings: Settings) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        settings = settings.model_copy(update={"http_port": busy.getsockname()[1]})
        with pytest.raises(RuntimeError, match="could not start"):
            await asyncio.wait_for(serve(settings), timeout=20)
