"""The analytics store (ClickHouse / chDB) as the API sees it: opened lazily, 503 while not ready."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ews_analytics import ENERGY_HOURLY, table
from ews_contracts.settings import Settings
from ews_contracts.store import Store, get_store
from ews_contracts.text import one_line
from litestar.exceptions import HTTPException

from .errors import ApiError
from .i18n import N_

log = logging.getLogger("ews.gateway-api.storage")

NOT_READY = ("(UNKNOWN_TABLE)", "(UNKNOWN_DATABASE)", "Code: 60.", "Code: 81.")


async def open_store(settings: Settings) -> Store | None:
    """The process-wide store (shared with the aggregator under chDB); None when it cannot be reached."""
    try:
        if settings.uses_chdb:  # one engine per process, created where the aggregator also creates it
            return get_store(settings.clickhouse_dsn)
        return await asyncio.to_thread(get_store, settings.clickhouse_dsn)
    except Exception as exc:
        log.warning("analytics store unavailable for now: %s", one_line(exc))
        return None


async def require_store(state: Any) -> Store:
    if state.store is None:
        state.store = await open_store(state.settings)
    if state.store is None:
        raise ApiError(
            503,
            "analytics-unreachable",
            N_("the analytics database (ClickHouse) is unreachable; try again"),
            headers={"Retry-After": "10"},
        )
    return state.store


def not_ready(exc: BaseException) -> bool:
    """True when ClickHouse says the database or table does not exist yet (the aggregator migrates it)."""
    text = str(exc)
    return any(marker in text for marker in NOT_READY)


def store_error(exc: BaseException) -> HTTPException:
    if not_ready(exc):
        return ApiError(
            503,
            "analytics-not-ready",
            N_(
                "the analytics database is not ready yet (the aggregator creates it when it starts); try again shortly"
            ),
            headers={"Retry-After": "10"},
        )
    log.warning("analytics query failed: %s", one_line(exc))
    return ApiError(
        503,
        "analytics-failed",
        N_("the analytics database did not answer: %(reason)s"),
        headers={"Retry-After": "10"},
        reason=one_line(exc, limit=200),
    )


async def analytics_status(state: Any, wait: float = 1.0) -> str:
    """ready, not-migrated, unavailable or busy (for /health)."""
    store = state.store
    if store is None:
        return "unavailable"
    try:
        rows = await asyncio.wait_for(
            store.query(f"EXISTS TABLE {table(state.database, ENERGY_HOURLY)}"), timeout=wait
        )
    except TimeoutError:
        return "busy"
    except Exception as exc:
        return "not-migrated" if not_ready(exc) else "unavailable"
    return "ready" if rows and rows[0][0] else "not-migrated"
