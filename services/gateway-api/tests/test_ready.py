"""GET /ready (issue 12, item 1): 503 naming the part while ClickHouse is unavailable, 200 again once it
answers, without a person; /health stays liveness (200) meanwhile. The real app, real NATS and Redis."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from ews_contracts.settings import Settings
from ews_contracts.store import Store, get_store
from ews_gateway_api.app import create_app
from ews_gateway_api.domain import health
from ews_gateway_api.testing import app_client
from ews_runtime.servers import free_port
from litestar import Litestar

pytestmark = pytest.mark.integration


async def ready_becomes(client: httpx.AsyncClient, status: int, within: float = 10.0) -> httpx.Response:
    deadline = time.monotonic() + within
    while True:
        resp = await client.get("/ready")
        if resp.status_code == status or time.monotonic() > deadline:
            return resp
        await asyncio.sleep(0.1)


def says_unavailable(resp: httpx.Response, *parts: str) -> bool:
    return (
        resp.status_code == 503
        and resp.json() == {"status": "unavailable", "unavailable": list(parts)}
        and resp.headers.get("retry-after") == "5"
        and resp.headers.get("cache-control") == "no-store"
    )


async def test_ready_names_clickhouse_while_its_store_is_closed(
    app: Litestar, settings: Settings, migrated: None
) -> None:
    async with app_client(app) as client:
        resp = await ready_becomes(client, 200)
        assert resp.json() == {"status": "ready", "unavailable": []}, resp.text
        working = app.state.store
        # a store whose connection is closed (its engine unreachable from this client): every query fails
        closed = Store(settings.clickhouse_dsn)
        closed.client.close()
        closed._executor.shutdown()
        app.state.store = closed
        try:
            resp = await client.get("/ready")
            assert says_unavailable(resp, "clickhouse"), (resp.status_code, resp.text, resp.headers)
            alive = await client.get("/health")
            assert alive.status_code == 200 and alive.json()["analytics"] == "unavailable"
            assert (alive.json()["nats"], alive.json()["redis"]) == ("connected", "ok")
        finally:
            app.state.store = working
        resp = await ready_becomes(client, 200)
        assert resp.json() == {"status": "ready", "unavailable": []}, resp.text


async def test_ready_recovers_when_clickhouse_was_unreachable_at_start(
    settings: Settings, migrated: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ClickHouse server that refused connections when the gateway started (the store could not be
    opened): 503 naming it; once its address answers, /ready reopens the store by itself and says 200."""
    monkeypatch.setattr(health, "REOPEN_EVERY", 0.2)
    refused = free_port()  # nothing listens there: connection refused
    unreachable = settings.model_copy(update={"clickhouse_url": f"http://127.0.0.1:{refused}"})
    assert not unreachable.uses_chdb
    app = create_app(unreachable)
    async with app_client(app) as client:
        assert app.state.store is None  # the start-up could not open it
        resp = await client.get("/ready")
        assert says_unavailable(resp, "clickhouse"), (resp.status_code, resp.text)
        await asyncio.sleep(0.3)
        assert says_unavailable(await client.get("/ready"), "clickhouse")  # tried again: still refused
        assert (await client.get("/health")).status_code == 200
        # the store answers at the configured address now
        app.state.settings = settings
        resp = await ready_becomes(client, 200)
        assert resp.json() == {"status": "ready", "unavailable": []}, resp.text
        assert app.state.store is get_store(settings.clickhouse_dsn)
