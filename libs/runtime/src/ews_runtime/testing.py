"""pytest plugin: real servers for integration tests (loaded by the root conftest).

- ``nats_url``: a nats-server with JetStream in a temporary folder, on a free port (one per test).
- ``redis_url``: a redis-server on a free port (one per session; each test gets a clean db via ``redis_clean``).
- ``chdb_dsn``: one chDB folder per session (chDB allows one engine per process);
  ``clickhouse_database`` gives each test its own database in it.
- ``settings``: Settings pointing at all of the above and a temporary data folder.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from ews_contracts.settings import Settings

from .servers import NatsServer, RedisServer, free_port


@pytest.fixture
def nats_url(tmp_path_factory: pytest.TempPathFactory):
    """A fresh nats-server per test (starts in ~0.1 s): streams and durable consumers never leak."""
    folder = tmp_path_factory.mktemp("nats")
    with NatsServer(folder / "js", free_port(), log=folder / "nats.log") as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("redis")
    with RedisServer(folder, free_port(), log=folder / "redis.log") as server:
        yield server.url


@pytest.fixture
async def redis_clean(redis_url: str):
    """A Redis URL whose database is empty at the start of the test."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    await client.flushdb()
    await client.aclose()
    return redis_url


@pytest.fixture(scope="session")
def chdb_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"chdb://{tmp_path_factory.mktemp('chdb')}"


@pytest.fixture
def clickhouse_database() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(
    tmp_path: Path, nats_url: str, redis_url: str, chdb_dsn: str, clickhouse_database: str, monkeypatch
):
    """Settings for a test: real servers, a temporary data folder, the bundled demo site."""
    env = {
        "NATS_URL": nats_url,
        "REDIS_URL": redis_url,
        "CLICKHOUSE_URL": chdb_dsn,
        "CLICKHOUSE_DATABASE": clickhouse_database,
        "EWS_DATA_DIR": str(tmp_path / "data"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()
