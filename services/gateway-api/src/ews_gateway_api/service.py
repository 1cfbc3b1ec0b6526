"""Service entry point (target ``gateway-api``): the Litestar app under uvicorn until cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import h11
import uvicorn
from ews_contracts.settings import Settings
from uvicorn.protocols.http.h11_impl import H11Protocol

from .app import create_app

log = logging.getLogger("ews.gateway-api")
SHUTDOWN_GRACE = 15.0  # seconds for open requests and the lifespan shutdown

# HTTP limits (issue 12, item 4). The request body limits are Litestar's (app.py, per route).
HEADER_TIMEOUT = 10.0  # seconds from a connection (or a request's first byte) to its complete header block
KEEP_ALIVE_TIMEOUT = 5  # seconds an idle keep-alive connection stays open between requests
MAX_CONNECTIONS = 1000  # open connections (or running requests) above which a new request gets 503
MAX_HEADER_BYTES = 64 * 1024  # request line + headers (h11); more → 400 and the connection closed


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol plus a header-read timeout, which uvicorn lacks: its keep-alive timer only
    runs between requests, so a connection that never finishes its headers stayed open for ever. The
    timer starts when the connection opens and when data of a new request arrives, stops once h11 has
    the whole header block, and closes the connection when it fires first."""

    header_timeout = HEADER_TIMEOUT
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm_header_timer()  # a request has begun (or data is pending): its headers are due
        else:
            self._disarm_header_timer()

    def on_response_complete(self) -> None:
        self._disarm_header_timer()
        super().on_response_complete()  # the keep-alive timer now guards the idle connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.debug(
                "closing a connection from %s: no complete request headers in %.0f s",
                self.client,
                self.header_timeout,
            )
            self.transport.close()


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
        http=HeaderTimeoutProtocol,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
        limit_concurrency=MAX_CONNECTIONS,
        # X-Forwarded-For/-Proto only from EWS_TRUSTED_PROXIES (uvicorn's default trusts 127.0.0.1, so
        # anyone on the host could pose as any client to the sign-in limiter)
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=list(settings.trusted_proxies) or None,
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
