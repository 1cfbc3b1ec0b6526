"""``GET /health`` (no auth): the process answers; what it can reach is reported, never fatal."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from litestar import Request, Router, get
from litestar.datastructures import State
from pydantic import BaseModel, Field

from ..guards import public
from ..storage import analytics_status


class Health(BaseModel):
    status: Literal["ok"] = Field(description="Always ok when the API answers.")
    site: str = Field(examples=["demo"])
    nats: Literal["connected", "disconnected"]
    redis: Literal["ok", "unavailable"]
    analytics: Literal["ready", "not-migrated", "unavailable", "busy"] = Field(
        description="ClickHouse: ready once the aggregator has created the schema."
    )


async def _redis_ok(redis: Any) -> bool:
    try:
        return bool(await asyncio.wait_for(redis.ping(), timeout=1.0))
    except Exception:
        return False


@get(
    "/health",
    guards=[public],
    operation_id="health",
    summary="Liveness and reachability of NATS, Redis and ClickHouse",
    tags=["system"],
    security=[{}],
)
async def health(request: Request[Any, Any, State]) -> Health:
    state = request.app.state
    broker = state.broker
    connection = getattr(broker, "_connection", None) if broker is not None else None
    nats_ok = bool(connection is not None and getattr(connection, "is_connected", False))
    redis_ok, analytics = await asyncio.gather(_redis_ok(state.redis), analytics_status(state))
    return Health(
        status="ok",
        site=state.site.site,
        nats="connected" if nats_ok else "disconnected",
        redis="ok" if redis_ok else "unavailable",
        analytics=analytics,  # type: ignore[arg-type]
    )


router = Router(path="/", route_handlers=[health])
