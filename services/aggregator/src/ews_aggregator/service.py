"""Aggregator target: a durable JetStream pull consumer of readings that writes ClickHouse.

Readings arrive in batches (up to ``BATCH_SIZE``); each batch is written to ClickHouse and only
then acked. A message that is not a valid ``ReadingTaken`` of this site is logged on one line and
terminated (never redelivered); a ClickHouse failure is retried, then the batch is nak'ed for
redelivery — the consumer keeps running either way.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Annotated, Any

from ews_contracts.bus import ensure_streams, jstream, make_broker
from ews_contracts.events import ReadingTaken
from ews_contracts.settings import Settings
from ews_contracts.store import get_store
from ews_contracts.streams import READINGS
from ews_contracts.subjects import Kind, pattern
from faststream import AckPolicy, Context
from faststream.nats import NatsBroker, PullSub
from nats.aio.msg import Msg
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from .aggregator import Aggregator

log = logging.getLogger("ews.aggregator")

DURABLE = "aggregator"
BATCH_SIZE = 5000  # a backlog (catch-up, replay) is written in big batches: ClickHouse inserts are per batch
MAX_ACK_PENDING = 4 * BATCH_SIZE  # JetStream's default (1000) would cap every fetch below BATCH_SIZE
ACK_WAIT = 15.0  # seconds before JetStream redelivers what a crashed aggregator had in flight
BATCH_TIMEOUT = 0.5  # seconds to fill a batch: the latency from poll to ClickHouse
WRITE_ATTEMPTS = 3
RETRY_DELAY = 0.2  # seconds, times the attempt number


def one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
    return " ".join(str(exc).split()) or type(exc).__name__


def parse(msg: Msg, site: str) -> ReadingTaken:
    reading = ReadingTaken.model_validate_json(msg.data)
    if reading.site != site:
        raise ValueError(f"reading of site {reading.site!r} on this site's subject (expected {site!r})")
    return reading


async def handle_batch(aggregator: Aggregator, messages: list[Msg]) -> None:
    """Store a batch, then ack it; bad messages are logged and terminated."""
    good: list[Msg] = []
    readings: list[ReadingTaken] = []
    for msg in messages:
        try:
            readings.append(parse(msg, aggregator.site.site))
            good.append(msg)
        except (ValidationError, ValueError) as exc:
            log.warning("dropped bad reading on %s: %s", msg.subject, one_line(exc))
            await msg.term()
    if not readings:
        return
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            plan = await aggregator.store_batch(readings)
            break
        except Exception as exc:  # ClickHouse down, disk full ...: keep the consumer alive
            log.error(
                "writing %d readings failed (attempt %d/%d): %s",
                len(readings),
                attempt,
                WRITE_ATTEMPTS,
                one_line(exc),
            )
            if attempt == WRITE_ATTEMPTS:
                for msg in good:
                    await msg.nak(delay=2.0)
                return
            await asyncio.sleep(RETRY_DELAY * attempt)
    for msg in good:
        await msg.ack()
    log.debug("stored %d readings: %s", len(readings), plan.outcomes)


def _raw_bodies(message: Any) -> Any:
    """Decoder: keep the raw bytes (each message is validated on its own in ``handle_batch``)."""
    return message.body


def load_profiles_or_none(settings: Settings) -> dict:
    """The device profiles (for counter rollover ranges); none when they cannot be loaded (resets stay safe)."""
    try:
        from ews_contracts.profiles import load_profiles

        return dict(load_profiles(settings.profiles_dir))
    except Exception as exc:
        log.warning("device profiles not loaded (%s): counter rollovers are treated as resets", one_line(exc))
        return {}


def make_aggregator(settings: Settings) -> Aggregator:
    return Aggregator(
        get_store(settings.clickhouse_dsn),
        settings.clickhouse_database,
        settings.site,
        load_profiles_or_none(settings),
    )


def build(settings: Settings) -> tuple[NatsBroker, Aggregator]:
    site = settings.site
    aggregator = make_aggregator(settings)
    broker = make_broker(settings.nats_url, "aggregator")

    @broker.subscriber(
        pattern(site.site, Kind.READING),
        stream=jstream(READINGS),
        durable=DURABLE,
        pull_sub=PullSub(batch_size=BATCH_SIZE, timeout=BATCH_TIMEOUT, batch=True),
        ack_policy=AckPolicy.MANUAL,
        decoder=_raw_bodies,
        title="aggregator",
        description="Readings of this site, in batches, into ClickHouse (acked after the insert).",
    )
    async def on_readings(body: list[bytes], message: Annotated[Any, Context("message")]) -> None:
        await handle_batch(aggregator, list(message.raw_message))

    return broker, aggregator


def consumer_config(site: str, ack_wait: float = ACK_WAIT) -> ConsumerConfig:
    """The durable consumer of the aggregator (created before FastStream binds to it)."""
    return ConsumerConfig(
        name=DURABLE,
        durable_name=DURABLE,
        filter_subject=pattern(site, Kind.READING),
        ack_policy=JsAckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        max_ack_pending=MAX_ACK_PENDING,
        ack_wait=ack_wait,
    )


async def ensure_consumer(broker: NatsBroker, site: str) -> None:
    """Create the durable consumer, or raise its max_ack_pending (FastStream binds to an existing one as is)."""
    js = broker.connection.jetstream()
    try:
        info = await js.consumer_info(READINGS.name, DURABLE)
    except NotFoundError:
        await js.add_consumer(READINGS.name, config=consumer_config(site))
        return
    if (info.config.max_ack_pending or 0) < MAX_ACK_PENDING:
        await js.add_consumer(READINGS.name, config=replace(info.config, max_ack_pending=MAX_ACK_PENDING))


async def serve(settings: Settings) -> None:
    broker, aggregator = build(settings)
    await aggregator.start()  # migrate + load state before the first message
    try:
        await broker.connect()
        await ensure_streams(broker)
        await ensure_consumer(broker, aggregator.site.site)
        await broker.start()
        log.info(
            "aggregator consuming %s into %s",
            pattern(aggregator.site.site, Kind.READING),
            settings.clickhouse_database,
        )
        await asyncio.Event().wait()
    finally:
        await broker.stop()
