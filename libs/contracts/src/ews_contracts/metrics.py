"""Prometheus metrics (prometheus-client): each service declares its own counters, gauges and histograms
next to its code; this module says where they are served.

- Under ``ews up`` every process writes its metrics to ``PROMETHEUS_MULTIPROC_DIR`` (``ews up`` sets it to
  ``<data>/metrics`` and empties it at start; prometheus-client's multiprocess mode), and the gateway-api's
  ``GET /metrics`` serves them all: one scrape for the whole box.
- Elsewhere (a split deployment, one container per service) ``EWS_METRICS_PORT`` makes a process serve its
  own on ``http://EWS_METRICS_HOST:EWS_METRICS_PORT/metrics`` (prometheus-client's own HTTP server).

Gauges declare how processes combine (``multiprocess_mode``); counters and histograms are summed.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

from .settings import Settings

log = logging.getLogger("ews.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def registry() -> CollectorRegistry:
    """What a scrape reads: every process of the box in multiprocess mode, else this process."""
    if os.environ.get(MULTIPROC_ENV):
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected)  # type: ignore[no-untyped-call]
        return collected
    return REGISTRY


def serve_own(settings: Settings) -> WSGIServer | None:
    """Serve this process's metrics on EWS_METRICS_PORT when set, from a daemon thread (never fatal: a
    taken port is logged). Returns the server (``shutdown()`` stops it), None when nothing is served."""
    if settings.metrics_port is None:
        return None
    try:
        server, _thread = start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=registry()
        )
    except OSError as exc:
        log.error(
            "metrics: cannot listen on %s:%s (%s); metrics not served",
            settings.metrics_host,
            settings.metrics_port,
            exc.strerror or exc,
        )
        return None
    log.info("metrics on http://%s:%s/metrics", settings.metrics_host, settings.metrics_port)
    return server


def allowed_reader(host: str | None, networks: tuple[str, ...]) -> bool:
    """Whether a client address may read /metrics without a session (EWS_METRICS_FROM)."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in ipaddress.ip_network(n, strict=False) for n in networks)
