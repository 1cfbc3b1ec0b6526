"""Fixtures of the gateway-api tests: the real app (create_app) in front of the real auth service."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis
from argon2 import PasswordHasher
from ews_analytics import migrate
from ews_auth import codes as auth_codes
from ews_auth.service import serve as auth_serve
from ews_contracts.settings import Settings
from ews_contracts.store import get_store
from ews_contracts.tokens import TokenRecord, new_token, token_digest, tokens_key
from ews_gateway_api.app import create_app
from ews_gateway_api.sessions import SESSION_COOKIE
from ews_gateway_api.testing import app_client
from httpx import AsyncClient
from litestar import Litestar

ADMIN = {"pin": "99999", "puk": "00000 9999 00000"}
CODES = {
    "administrator": ADMIN,
    "greenUp": {"pin": "88888", "puk": "00000 8888 00000"},
    "installer": {"pin": "55555", "puk": "00000 5555 00000"},
    "user": {"pin": "11111", "puk": "00000 1111 00000"},
}


@pytest.fixture
async def fresh_redis(redis_url: str) -> str:
    client = aioredis.from_url(redis_url)
    await client.flushdb()
    await client.aclose()
    return redis_url


@pytest.fixture
async def auth_service(settings: Settings, fresh_redis: str, monkeypatch) -> AsyncIterator[None]:
    """The real auth service (serve) as a task; argon2 with cheap parameters to keep the tests fast."""
    monkeypatch.setattr(
        auth_codes, "PasswordHasher", lambda: PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
    task = asyncio.create_task(auth_serve(settings))
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def migrated(settings: Settings) -> None:
    await migrate(get_store(settings.clickhouse_dsn), settings.clickhouse_database)


async def _wait_auth(client: AsyncClient) -> None:
    for _ in range(200):
        resp = await client.post("/api/v1/auth/login", json={"pin": "00000"})
        if resp.status_code != 503:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the auth service never answered")


@pytest.fixture
async def app(settings: Settings) -> Litestar:
    return create_app(settings)


@pytest.fixture
async def client(app: Litestar, auth_service: None, migrated: None) -> AsyncIterator[AsyncClient]:
    async with app_client(app) as c:
        await _wait_auth(c)
        # the probe above counted as a wrong PIN for this client: start from a clean count
        r = app.state.redis
        for key in await r.keys("ews:demo:auth:limits:*"):
            await r.delete(key)
        yield c


async def token_for(app: Litestar, role: str, name: str | None = None) -> dict[str, str]:
    """An ``Authorization: Bearer`` header with a machine token of ``role``, its record put straight into
    Redis (as the auth service stores it)."""
    token_id, token = new_token()
    record = TokenRecord(
        id=token_id,
        name=name or f"{role} {token_id}",
        role=role,
        created_at=datetime.now(UTC),
        created_by="administrator",
        digest=token_digest(token),
    )
    await app.state.redis.hset(tokens_key("demo"), token_id, record.model_dump_json())
    return {"Authorization": f"Bearer {token}"}


async def session_for(app: Litestar, role: str) -> dict[str, str]:
    """A session cookie for ``role``, put straight into the sessions store (as a login would)."""
    sid = secrets.token_hex(32)
    data = {"role": role, "login_at": time.time()}
    await app.stores.get("sessions").set(sid, json.dumps(data).encode(), expires_in=600)
    return {SESSION_COOKIE: sid}
