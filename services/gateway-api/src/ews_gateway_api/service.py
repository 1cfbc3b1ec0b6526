"""Service entry point (target ``gateway-api``): the Litestar app under uvicorn until cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import uvicorn
from ews_contracts.settings import Settings
from uvicorn.protocols.http.h11_impl import H11Protocol

from .app import create_app
from .web import SECURITY_HEADERS

log = logging.getLogger("ews.gateway-api")
SHUTDOWN_GRACE = 15.0  # seconds for open requests and the lifespan shutdown

# HTTP limits (issue 12, item 4). The request body limits are Litestar's (app.py, per route).
HEADER_TIMEOUT = 10.0  # seconds from a connection (or a request's first byte) to its complete header block
KEEP_ALIVE_TIMEOUT = 5  # seconds an idle keep-alive connection stays open between requests
MAX_REQUESTS = 1000  # requests handled at once; one more gets a JSON 503 "busy, try again"
# Open connections. Connections still waiting for their headers take no request slot; at the cap a new
# connection sheds the oldest of them (so a flood of slow connections cannot lock real clients out).
# Bounded by the open-file limit, which serve() raises to its hard limit.
MAX_CONNECTIONS = 10_000
FD_RESERVE = 256  # descriptors kept for everything else (NATS, Redis, the store, files, the aggregator)
MAX_HEADER_BYTES = 64 * 1024  # request line + headers (h11); more → 400 and the connection closed

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BUSY_BODY = json.dumps(
    {"status_code": 503, "code": "busy", "detail": "the server is busy; try again"}
).encode()


class RequestLimit:
    """ASGI wrapper: at most ``limit`` HTTP requests handled at once, the next ones answered with a JSON 503
    and ``Retry-After``. It replaces uvicorn's ``limit_concurrency``, which also counts open connections —
    1,000 connections stalled in their headers made every real request a 503."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # the lifespan, websockets
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            log.warning("%d requests in progress: answered %s with 503", self.active, scope.get("path"))
            await send_busy(send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


async def send_busy(send: Send) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BUSY_BODY)).encode()),
        (b"retry-after", b"1"),
        *((name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": BUSY_BODY})


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one (the soft one is often 1,024: fewer than the
    connections the server should hold); returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS + FD_RESERVE
    wanted = MAX_CONNECTIONS + FD_RESERVE if hard == resource.RLIM_INFINITY else hard
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, wanted, exc)
    return soft


def connection_cap() -> int:
    """The open-connection cap: ``MAX_CONNECTIONS`` within the open-file limit (raised first)."""
    soft = raise_open_file_limit()
    cap = min(MAX_CONNECTIONS, max(soft - FD_RESERVE, 64))
    if cap < MAX_CONNECTIONS:
        log.warning(
            "open-file limit %d: the web server holds at most %d connections (raise `ulimit -n` for more)",
            soft,
            cap,
        )
    return cap


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol plus a header-read timeout, which uvicorn lacks: its keep-alive timer only
    runs between requests, so a connection that never finishes its headers stayed open for ever. The
    timer starts when the connection opens and when data of a new request arrives, stops once h11 has
    the whole header block, and closes the connection when it fires first.

    It also caps the open connections (``max_connections``): at the cap, a new connection sheds the oldest
    one still waiting for its headers (itself when no other is waiting). Waiting connections are kept in
    arrival order on the server's shared state."""

    header_timeout = HEADER_TIMEOUT
    max_connections = MAX_CONNECTIONS
    _header_timer: asyncio.TimerHandle | None = None
    _last_shed_warning = 0.0
    _shed_since_warning = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()
        if len(self.connections) > self.max_connections:
            self._shed()

    def _waiting(self) -> dict[HeaderTimeoutProtocol, None]:
        """The connections of this server waiting for headers, oldest first (an ordered set)."""
        waiting = getattr(self.server_state, "ews_waiting_headers", None)
        if waiting is None:
            waiting = {}
            self.server_state.ews_waiting_headers = waiting  # type: ignore[attr-defined]
        return waiting

    def _shed(self) -> None:
        oldest = next(iter(self._waiting()), self)
        oldest._disarm_header_timer()
        oldest.transport.close()
        cls = type(self)
        cls._shed_since_warning += 1
        now = time.monotonic()
        if now - cls._last_shed_warning >= 60:
            log.warning(
                "%d connections open (the cap): closed %d waiting for their headers to admit new ones",
                len(self.connections),
                cls._shed_since_warning,
            )
            cls._last_shed_warning = now
            cls._shed_since_warning = 0

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
            self._waiting()[self] = None

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
            self._waiting().pop(self, None)

    def _header_timeout(self) -> None:
        self._header_timer = None
        self._waiting().pop(self, None)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.debug(
                "closing a connection from %s: no complete request headers in %.0f s",
                self.client,
                self.header_timeout,
            )
            self.transport.close()


async def serve(settings: Settings) -> None:
    app = create_app(settings)
    protocol = type("GatewayProtocol", (HeaderTimeoutProtocol,), {"max_connections": connection_cap()})
    config = uvicorn.Config(
        RequestLimit(app, MAX_REQUESTS),
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        log_config=None,  # keep the process's logging format (uvicorn.error logs through the root handler)
        lifespan="on",
        access_log=False,
        server_header=False,
        http=protocol,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
        limit_concurrency=None,  # RequestLimit and the protocol's connection cap instead (see above)
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
