"""Service entry point (target ``gateway-api``): the Litestar app under uvicorn until cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn
from ews_contracts.settings import Settings

from .app import create_app

log = logging.getLogger("ews.gateway-api")
SHUTDOWN_GRACE = 15.0  # seconds for open requests and the lifespan shutdown


async def serve(settings: Settings) -> None:
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        log_config=None,  # keep the process's logging format (uvicorn.error logs through the root handler)
        lifespan="on",
        access_log=False,
        server_header=False,
    )
    server = uvicorn.Server(config)
    # The process (ews_runtime.targets.run_targets) owns SIGINT/SIGTERM and cancels this coroutine.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    where = f"{settings.http_host}:{settings.http_port}"

    async def run() -> None:
        try:
            await server.serve()
        except SystemExit:  # uvicorn exits the process when it cannot bind: turn it into an error
            raise RuntimeError(f"the web server could not start on {where} (see the message above)") from None
        if not server.started:
            raise RuntimeError(f"the web server on {where} did not start (see the messages above)")

    task = asyncio.create_task(run(), name="uvicorn")
    try:
        await asyncio.shield(task)
    finally:
        if not task.done():  # cancelled: stop accepting, finish requests, run the lifespan shutdown
            server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=SHUTDOWN_GRACE)
            except (TimeoutError, asyncio.CancelledError):
                server.force_exit = True
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
