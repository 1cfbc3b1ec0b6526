"""Asking the aggregator to rebuild its projections after a restore (the protocol; the aggregator
implements it in ``ews_aggregator.rebuild``).

A restore replaces the site's readings in ``EWS_READINGS``; the ClickHouse projections must then be
rebuilt from them, whatever runs where (``ews up`` with chDB puts the aggregator in the gateway-api's
process, ``docker-compose`` in its own container, the stack may not run at all during ``ews restore``).
So the request goes through NATS, in two parts:

1. **The marker** — before touching the readings, the restorer replaces the aggregator's durable consumer
   by a *pull* consumer of the same name carrying the restore in its metadata (``RebuildMarker``). A
   running aggregator instantly stops receiving readings (its push consumer is gone), so it never
   accounts half a restore; one that is not running finds the marker when it starts. The marker lives in
   JetStream, next to the readings it is about: it survives a crash of anyone.
2. **The request** — once everything is republished, the restorer makes the marker *due* and sends
   ``ews.<site>.rpc-aggregator.rebuild`` (core NATS request/reply, queue group ``aggregator``). The
   aggregator answers at once and rebuilds in the background: it empties the projections, accounts every
   reading of the stream (readings taken after the restore began — live polls published during the
   restore — after the restored ones, so the in-memory counter window never has to take a year of
   readings out of order), then puts its durable consumer back, starting after the last reading it
   read. ``…rpc-aggregator.status`` answers with its progress (``RebuildStatus``).

A marker that is not due (a restore still republishing) is left alone until ``not_before``: a restorer
that died half-way (Ctrl-C) only delays the rebuild by that lease, which the restorer renews while it
works. A rebuild that failed (ClickHouse down) keeps the marker and is retried.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import APIError, NotFoundError
from pydantic import BaseModel, Field

from .streams import READINGS
from .subjects import PREFIX, Kind, pattern

AGGREGATOR_DURABLE = "aggregator"  # the aggregator's durable consumer of the site's readings
LEASE = 900.0  # seconds a restore may take between two renewals of its marker
RPC_QUEUE = "aggregator"

META_RESTORE = "ews-rebuild-restore"
META_CUT = "ews-rebuild-cut"
META_NOT_BEFORE = "ews-rebuild-not-before"


def aggregator_rpc(site: str, operation: str) -> str:
    """Request/reply subject of the aggregator (core NATS), e.g. ``ews.demo.rpc-aggregator.rebuild``."""
    return f"{PREFIX}.{site}.rpc-aggregator.{operation}"


@dataclass(frozen=True)
class RebuildMarker:
    """A restore's request to rebuild: ``restore`` its id, ``cut`` when it began (readings taken later
    are live ones), ``not_before`` (epoch seconds) until when the restorer is still at work."""

    restore: str
    cut: datetime
    not_before: float = 0.0

    def metadata(self) -> dict[str, str]:
        return {
            META_RESTORE: self.restore,
            META_CUT: self.cut.astimezone(UTC).isoformat(),
            META_NOT_BEFORE: f"{self.not_before:.3f}",
        }

    @classmethod
    def of(cls, info: ConsumerInfo | ConsumerConfig | None) -> RebuildMarker | None:
        """The marker carried by a consumer (its info or config), if any."""
        config = info.config if isinstance(info, ConsumerInfo) else info
        metadata = (config.metadata or {}) if config is not None else {}
        if META_RESTORE not in metadata:
            return None
        try:
            cut = datetime.fromisoformat(metadata[META_CUT])
            not_before = float(metadata.get(META_NOT_BEFORE) or 0)
        except (KeyError, ValueError):
            cut, not_before = datetime.now(UTC), 0.0
        return cls(metadata[META_RESTORE], cut, not_before)

    def due(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.not_before


def marker_config(site: str, marker: RebuildMarker) -> ConsumerConfig:
    """A pull consumer under the aggregator's durable name: it delivers nothing by itself."""
    return ConsumerConfig(
        name=AGGREGATOR_DURABLE,
        durable_name=AGGREGATOR_DURABLE,
        description="rebuild requested by a restore (the aggregator replaces this consumer when done)",
        filter_subject=pattern(site, Kind.READING),
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        metadata=marker.metadata(),
    )


async def current_marker(
    js: JetStreamContext, stream: str = READINGS.name, durable: str = AGGREGATOR_DURABLE
) -> RebuildMarker | None:
    """The marker in place of the aggregator's durable consumer (``stream``, ``durable``: see
    ``ews_contracts.streamnames``), if any."""
    try:
        return RebuildMarker.of(await js.consumer_info(stream, durable))
    except NotFoundError:
        return None


async def mark(js: JetStreamContext, site: str, marker: RebuildMarker) -> None:
    """Put the marker in place of the aggregator's durable consumer (which stops its deliveries)."""
    try:
        await js.delete_consumer(READINGS.name, AGGREGATOR_DURABLE)
    except NotFoundError:
        pass
    await js.add_consumer(READINGS.name, marker_config(site, marker))


async def renew(js: JetStreamContext, site: str, marker: RebuildMarker) -> None:
    """Update the marker (a new ``not_before``); put it back when the consumer is not a marker any more
    (an aggregator that found the lease over has rebuilt meanwhile: it will rebuild again)."""
    try:
        info = await js.consumer_info(READINGS.name, AGGREGATOR_DURABLE)
    except NotFoundError:
        info = None
    if info is not None and RebuildMarker.of(info) is not None:
        try:
            await js.add_consumer(READINGS.name, marker_config(site, marker))
            return
        except APIError:
            pass
    await mark(js, site, marker)


class RebuildStatus(BaseModel):
    """What the aggregator says about rebuilding (``…rpc-aggregator.status``)."""

    state: Literal["idle", "waiting", "rebuilding", "failed"] = Field(
        description="idle (nothing pending), waiting (a restore is still republishing), rebuilding, failed "
        "(retried)."
    )
    restore: str = Field(default="", description="Id of the restore being (or last) rebuilt.")
    done: int = Field(default=0, description="Readings accounted so far.")
    total: int = Field(default=0, description="Readings to account.")
    error: str = ""
    finished_at: datetime | None = None


async def request(nc: Client, site: str, operation: str, body: dict, wait: float) -> dict | None:
    """One request to the aggregator; None when no aggregator answers."""
    try:
        reply = await nc.request(aggregator_rpc(site, operation), json.dumps(body).encode(), timeout=wait)
    except (NoRespondersError, NatsTimeoutError, TimeoutError):
        return None
    try:
        answer = json.loads(reply.data)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


async def request_rebuild(nc: Client, site: str, restore: str, wait: float = 5.0) -> RebuildStatus | None:
    """Ask the running aggregator to rebuild now; None when none answers (it rebuilds when it starts)."""
    answer = await request(nc, site, "rebuild", {"restore": restore}, wait)
    return RebuildStatus.model_validate(answer) if answer is not None else None


async def rebuild_status(nc: Client, site: str, wait: float = 2.0) -> RebuildStatus | None:
    answer = await request(nc, site, "status", {}, wait)
    return RebuildStatus.model_validate(answer) if answer is not None else None
