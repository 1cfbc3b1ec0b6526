"""Proxies (issue 12, item 5): ``X-Forwarded-For`` is believed only from a peer in EWS_TRUSTED_PROXIES
(none by default), so the sign-in guessing limits key on the real client. Against the real server
(``serve``: uvicorn as configured in production) and the real auth service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import redis.asyncio as aioredis
from ews_contracts.settings import Settings
from ews_gateway_api.service import serve
from ews_runtime.servers import free_port
from pydantic import ValidationError

pytestmark = pytest.mark.integration

LOGIN = "/api/v1/auth/login"
GUESSES = 12


def test_trusted_proxies_are_read_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().trusted_proxies == ()  # nothing trusted by default
    monkeypatch.setenv("EWS_TRUSTED_PROXIES", " 10.0.0.1, 192.168.1.0/24 ,,::1, 10.0.0.1,172.16.0.7/16")
    assert Settings().trusted_proxies == ("10.0.0.1", "192.168.1.0/24", "::1", "172.16.0.0/16")
    for wrong in ("proxy.local", "10.0.0.300", "*", "10.0.0.0/33"):
        monkeypatch.setenv("EWS_TRUSTED_PROXIES", wrong)
        with pytest.raises(ValidationError, match="is not an IP address or network"):
            Settings()


Server = Callable[[tuple[str, ...]], Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def server(settings: Settings, auth_service: None, migrated: None) -> AsyncIterator[Server]:
    """Starts ``serve`` with the given EWS_TRUSTED_PROXIES; a client to it once the auth service answers,
    with the guessing counts cleared (the probe counted as a wrong PIN)."""
    tasks: list[asyncio.Task[None]] = []
    clients: list[httpx.AsyncClient] = []

    async def start(trusted: tuple[str, ...]) -> httpx.AsyncClient:
        port = free_port()
        configured = settings.model_copy(update={"http_port": port, "trusted_proxies": trusted})
        task = asyncio.create_task(serve(configured))
        tasks.append(task)
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}")
        clients.append(http)
        for _ in range(400):
            try:
                if (await http.post(LOGIN, json={"pin": "00000"})).status_code != 503:
                    break
            except httpx.TransportError:
                assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the server or the auth service never answered")
        r = aioredis.from_url(settings.redis_url)
        for key in await r.keys("ews:demo:auth:limits:*"):
            await r.delete(key)
        await r.aclose()
        return http

    yield start
    for http in clients:
        await http.aclose()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def guess(http: httpx.AsyncClient, forwarded_for: Callable[[int], str]) -> list[int]:
    statuses = []
    for n in range(GUESSES):
        resp = await http.post(
            LOGIN,
            json={"pin": f"{30000 + n}", "puk": "1" * 14},
            headers={"X-Forwarded-For": forwarded_for(n)},
        )
        statuses.append(resp.status_code)
    return statuses


async def test_spoofed_forwarded_for_does_not_escape_the_guessing_limit(server: Server) -> None:
    """The reproduction: 12 wrong PIN+PUK pairs from 127.0.0.1, each claiming another address, are
    limited like 12 from one address (the default trusts no proxy, not even 127.0.0.1)."""
    http = await server(())
    statuses = await guess(http, lambda n: f"203.0.113.{n + 1}")
    assert statuses[:6] == [401] * 6 and set(statuses[6:]) == {429}, statuses


async def test_a_trusted_proxy_forwards_the_real_client(server: Server) -> None:
    """From a peer in EWS_TRUSTED_PROXIES (an address or a network) the forwarded address is the client:
    the same 12 guesses are 12 clients' first guesses, and one forwarded client is still limited."""
    for trusted in (("127.0.0.1",), ("10.9.0.0/16", "127.0.0.0/8")):
        http = await server(trusted)
        assert await guess(http, lambda n: f"203.0.113.{n + 1}") == [401] * GUESSES
        statuses = await guess(http, lambda n: "198.51.100.7")
        assert statuses[:6] == [401] * 6 and set(statuses[6:]) == {429}, statuses
