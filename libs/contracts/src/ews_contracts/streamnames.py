"""Which streams a service reads a site's events from (DESIGN.md "Multi-site").

A box or an edge reads its own streams by their plain names (``EWS_READINGS``); the hub reads each site's
copies, sourced from the edge, by their hub names (``EWS_READINGS_<site>``, ``ews_contracts.hub``). A
service is given one ``StreamNames`` value (``streams_for``) and asks it for every name it uses: nothing
checks a global. At the hub the streams are the edges' (sourced, no subjects of their own), so a service
there neither declares them (``ensure_streams``) nor publishes to them (``owns_streams`` is False).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .hub import hub_stream_name
from .rebuild import AGGREGATOR_DURABLE
from .site import ID_PATTERN
from .streams import CONFIG, DEAD_LETTER, READINGS, StreamSpec


@dataclass(frozen=True)
class StreamNames:
    """``site`` None: a box or an edge (its own streams, whatever site); ``hub``: the site's hub copies."""

    site: str | None = None
    hub: bool = False

    def of(self, spec: StreamSpec) -> str:
        return hub_stream_name(spec, self.site) if self.hub and self.site else spec.name

    @property
    def readings(self) -> str:
        return self.of(READINGS)

    @property
    def config(self) -> str:
        return self.of(CONFIG)

    @property
    def dead_letter(self) -> str:
        return self.of(DEAD_LETTER)

    @property
    def owns_streams(self) -> bool:
        """Whether the service may declare these streams and publish to them (not at the hub)."""
        return not self.hub

    @property
    def aggregator_durable(self) -> str:
        """The aggregator's durable consumer of ``readings`` (named per site at the hub)."""
        return f"hub-aggregator-{self.site}" if self.hub else AGGREGATOR_DURABLE


BOX = StreamNames()


def streams_for(site: str | None, hub: bool = False) -> StreamNames:
    """The names of ``site``'s streams on a box or an edge (``hub`` False) or at the hub."""
    if hub and not (site and re.match(ID_PATTERN, site)):
        raise ValueError(f"a hub reads a site's streams by its id: {site!r} is not a site id")
    return StreamNames(site, hub)
