"""``GET /health`` (no auth): liveness — the process answers; what it can reach is reported, never fatal.
``GET /ready`` (no auth): readiness — 503 naming the parts (nats, redis, clickhouse) that do not answer."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from litestar import Request, Response, Router, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from pydantic import BaseModel, Field

from ..guards import public
from ..sites import all_site_states
from ..storage import analytics_status, open_store

REOPEN_EVERY = 15.0  # seconds between attempts to open a store that could not be opened (each logs a warning)
REOPEN_WAIT = 2.0  # seconds a health check waits for such an attempt


class Health(BaseModel):
    status: Literal["ok"] = Field(description="Always ok when the API answers.")
    site: str = Field(examples=["demo"], description="The site this server serves; hub at a hub.")
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
    return await health_of(request.app.state)


async def _reopen_store(state: State) -> None:
    """The store could not be opened (ClickHouse unreachable when the gateway started, say): try again,
    at most every ``REOPEN_EVERY`` seconds, so /ready turns 200 once it answers — not only after a request
    that needs it (``storage.require_store``) happened to open it."""
    now = time.monotonic()
    if now < getattr(state, "store_retry_at", 0.0):
        return
    state.store_retry_at = now + REOPEN_EVERY
    try:  # (an attempt left running past the wait still fills get_store's cache for the next one)
        store = await asyncio.wait_for(open_store(state.settings), timeout=REOPEN_WAIT)
    except TimeoutError:
        return
    if store is not None and state.store is None:
        state.store = store


async def health_of(state: State) -> Health:
    if state.store is None:
        await _reopen_store(state)
    broker = state.broker
    connection = getattr(broker, "_connection", None) if broker is not None else None
    nats_ok = bool(connection is not None and getattr(connection, "is_connected", False))
    sites = all_site_states(state)
    if sites:
        analytics_of = analytics_status(sites[0])
    else:  # a hub no site has reached yet: nothing to query, only whether the store answers

        async def reachable() -> str:
            return "ready" if state.store is not None else "unavailable"

        analytics_of = reachable()
    redis_ok, analytics = await asyncio.gather(_redis_ok(state.redis), analytics_of)
    return Health(
        status="ok",
        site=state.identity,
        nats="connected" if nats_ok else "disconnected",
        redis="ok" if redis_ok else "unavailable",
        analytics=analytics,  # type: ignore[arg-type]
    )


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    unavailable: list[str] = Field(
        default_factory=list,
        description="The parts not reachable: nats, redis, clickhouse.",
        examples=[["redis"]],
    )


@get(
    "/ready",
    guards=[public],
    operation_id="ready",
    summary="Readiness: 200 when NATS, Redis and ClickHouse answer, 503 naming the part otherwise",
    tags=["system"],
    security=[{}],
    responses={503: ResponseSpec(Readiness, description="A part the product needs is unavailable.")},
)
async def ready(request: Request[Any, Any, State]) -> Response[Readiness]:
    health_now = await health_of(request.app.state)
    down = [
        name
        for name, ok in (
            ("nats", health_now.nats == "connected"),
            ("redis", health_now.redis == "ok"),
            ("clickhouse", health_now.analytics in ("ready", "busy")),
        )
        if not ok
    ]
    body = Readiness(status="unavailable" if down else "ready", unavailable=down)
    return Response(
        body,
        status_code=503 if down else 200,
        headers={"Cache-Control": "no-store", **({"Retry-After": "5"} if down else {})},
    )


router = Router(path="/", route_handlers=[health, ready])
