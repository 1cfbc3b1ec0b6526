"""Test helper: the app and an HTTP client in the *current* event loop.

Litestar's ``AsyncTestClient`` runs the app (and its lifespan) in a blocking portal — another thread and
event loop — and blocks the caller's loop during each request. A service running as a task in the
test's loop (e.g. the auth service answering login requests over NATS) then cannot answer until the
request has timed out. ``app_client`` keeps everything in one loop, as ``ews run aggregator,gateway-api``
does in production: the lifespan runs in its own task (as under uvicorn, so it may be entered and left
from different tasks, e.g. an async pytest fixture's setup and teardown) and requests go through
``httpx.ASGITransport``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from litestar import Litestar

BASE_URL = "http://testserver.local"


@asynccontextmanager
async def app_client(app: Litestar, client_address: str = "testclient") -> AsyncIterator[httpx.AsyncClient]:
    ready, stop = asyncio.Event(), asyncio.Event()

    async def lifespan() -> None:
        async with app.lifespan():
            ready.set()
            await stop.wait()

    task = asyncio.create_task(lifespan(), name="litestar-lifespan")
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()  # the start-up error
        raise RuntimeError("the app's lifespan ended during start-up")
    try:
        transport = httpx.ASGITransport(app=app, client=(client_address, 50000))
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            yield client
    finally:
        stop.set()
        await task
