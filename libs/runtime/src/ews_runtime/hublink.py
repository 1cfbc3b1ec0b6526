"""Target ``hub-link`` (run by ``ews up --edge``): keeps this edge's streams sourced into the hub.

Every ``RELINK_EVERY`` seconds it checks, through the leaf-node link, that the hub holds this site's
streams sourcing the edge's (``ews_contracts.hub.link_to_hub``), and puts back what is missing — a new
edge needs nothing done at the hub, and nothing on either side can remove the link for long. While the
hub is unreachable it says so once (and once when it answers again); the edge keeps recording, and the
hub catches up by itself when the link returns (JetStream sourcing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats
from ews_contracts.hub import HUB_DOMAIN, RELINK_EVERY, link_to_hub
from ews_contracts.settings import Settings
from ews_contracts.text import one_line

log = logging.getLogger("ews.hub-link")


async def serve(settings: Settings) -> None:
    site = settings.site.site
    nc = await nats.connect(
        settings.nats_url, name="hub-link", max_reconnect_attempts=-1, reconnect_time_wait=1
    )
    away: str | None = None  # the last reason the hub could not be reached (said once)
    try:
        hub = nc.jetstream(domain=HUB_DOMAIN, timeout=5.0)
        while True:
            try:
                for change in await link_to_hub(hub, site):
                    log.info("hub-link: %s (site %s)", change, site)
            except Exception as exc:  # the hub away, the link cut: the edge records on; retry later
                reason = one_line(exc) or type(exc).__name__
                if away is None:
                    log.warning(
                        "hub-link: the hub does not answer (%s); this site records on and the hub "
                        "catches up when it is back",
                        reason,
                    )
                away = reason
            else:
                if away is not None:
                    log.info("hub-link: the hub answers again; the streams of site %s are sourced", site)
                away = None
            await asyncio.sleep(RELINK_EVERY)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
