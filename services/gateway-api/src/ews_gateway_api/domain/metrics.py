"""``GET /metrics``: Prometheus metrics of every process of the box (prometheus-client's multiprocess mode
under ``ews up``; see ews_contracts.metrics), this process's HTTP requests included (Litestar's
PrometheusMiddleware, added in app.py: requests by route and status, latency histogram).

Read without a session from EWS_METRICS_FROM (default: this machine, where a Prometheus server or agent
runs); from anywhere else an administrator's or installer's session is needed.
"""

from __future__ import annotations

from typing import Any

from ews_contracts.metrics import allowed_reader, registry
from ews_contracts.roles import Permission
from litestar import Response, Router, get
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..guards import requires

_session_guard = requires(Permission.CONFIGURE_SITE)


def metrics_reader(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """A Prometheus server on an allowed address, or a configuring role's session."""
    host = connection.client.host if connection.client else None
    if allowed_reader(host, connection.app.state.settings.metrics_from):
        return
    _session_guard(connection, handler)


metrics_reader.permission = Permission.CONFIGURE_SITE  # type: ignore[attr-defined]  # the route x role matrix


@get(
    "/metrics",
    guards=[metrics_reader],
    include_in_schema=False,
    opt={"skip_compression": False},
    sync_to_thread=False,
)
def metrics() -> Response[bytes]:
    # (the type as a header: as media_type Litestar would add a second charset)
    return Response(generate_latest(registry()), headers={"Content-Type": CONTENT_TYPE_LATEST})


router = Router(path="/", route_handlers=[metrics])
