"""Multi-site topology (DESIGN.md "Multi-site"): edges and the hub, store and forward with NATS itself.

- Every edge's nats-server runs JetStream in its own domain (``site-<site>``) and is a leaf node of the
  hub's nats-server (JetStream domain ``hub``). An edge's streams hold only its own site's subjects
  (``ews.<site>.<kind>.*``: the edge never stores another site's readings that cross the hub).
- The hub holds one stream per site and kind, ``<STREAM>_<site>`` (e.g. ``EWS_READINGS_demo``), that
  *sources* the edge's stream across the domains (JetStream's own replication: an edge or a link that was
  away catches up from where it stopped; nothing is lost while the edge keeps its data).
- The edge creates and keeps that configuration at the hub (``link_to_hub``, run by the ``hub-link``
  target every ``RELINK_EVERY`` seconds): a new edge needs nothing done at the hub, and no restart of any
  service removes it (the hub's services declare only their own streams, never these).
"""

from __future__ import annotations

import logging
import os
import re

from nats.js.api import ExternalStream, RetentionPolicy, StorageType, StreamConfig, StreamSource
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from .streams import ALL_STREAMS, StreamSpec

log = logging.getLogger("ews.hub")

HUB_DOMAIN = "hub"
HUB_DELIVER = (
    "_ews.hub-deliver"  # the hub aggregators' deliver subjects (never an edge's: leaf nodes share subjects)
)
EDGE_SITE_ENV = "EWS_EDGE_SITE"  # set by `ews up --edge`: this box's streams hold this site only
RELINK_EVERY = 30.0  # seconds between two checks of the hub's configuration by an edge


def edge_domain(site: str) -> str:
    """The JetStream domain of a site's edge box."""
    return f"site-{site}"


def edge_site() -> str | None:
    """The site whose subjects only this box's streams hold (an edge), else None (one box, or the hub)."""
    return os.environ.get(EDGE_SITE_ENV) or None


def hub_stream_name(spec: StreamSpec, site: str) -> str:
    """The hub's copy of a site's stream, e.g. ``EWS_READINGS_demo``."""
    return f"{spec.name}_{site}"


def hub_stream_config(spec: StreamSpec, site: str) -> StreamConfig:
    """A hub stream sourcing the edge's stream of ``spec`` across the domains (no subjects of its own)."""
    return StreamConfig(
        name=hub_stream_name(spec, site),
        description=f"{spec.description} Site {site}, sourced from its edge (domain {edge_domain(site)}).",
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        max_age=spec.max_age or None,
        max_bytes=spec.max_bytes,
        duplicate_window=spec.duplicate_window,
        sources=[StreamSource(name=spec.name, external=ExternalStream(api=f"$JS.{edge_domain(site)}.API"))],
    )


def hub_database(site: str) -> str:
    """The ClickHouse database of ``site``'s figures at the hub: ``ews_<site>`` with ``-`` written ``_``
    (a site id is ``[a-z0-9][a-z0-9_-]*``; two ids that differ only there share a database, which stays
    correct: every row carries its site id)."""
    return "ews_" + site.replace("-", "_")


def hub_sites(stream_names: list[str]) -> list[str]:
    """The sites whose readings and configuration the hub holds, from the names of its streams."""
    from .site import ID_PATTERN
    from .streams import CONFIG, READINGS

    names = set(stream_names)
    readings = f"{READINGS.name}_"
    sites = (n.removeprefix(readings) for n in names if n.startswith(readings))
    return sorted(s for s in sites if re.match(ID_PATTERN, s) and hub_stream_name(CONFIG, s) in names)


def _sources(config: StreamConfig) -> list[tuple[str, str | None]]:
    return [(s.name, s.external.api if s.external else None) for s in config.sources or []]


async def link_to_hub(hub: JetStreamContext, site: str) -> list[str]:
    """Create (or put back) the hub's streams of ``site`` sourcing this edge's; returns what changed.
    ``hub`` is a JetStream context in the hub's domain (``nc.jetstream(domain="hub")`` on the edge)."""
    changed = []
    for spec in ALL_STREAMS:
        wanted = hub_stream_config(spec, site)
        try:
            info = await hub.stream_info(wanted.name)
        except NotFoundError:
            await hub.add_stream(wanted)
            changed.append(f"created {wanted.name}")
            continue
        if _sources(info.config) != _sources(wanted) or info.config.description != wanted.description:
            await hub.update_stream(wanted)
            changed.append(f"restored the sourcing of {wanted.name}")
    return changed
