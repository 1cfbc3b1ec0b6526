"""Aggregator target: a durable JetStream consumer of readings that writes ClickHouse.

The consumer is a durable **push** consumer with ``AckPolicy.ALL``, bound with nats-py directly on a
connection that parses headers fast (``ews_contracts.natsclient``): FastStream's batch *pull* subscriber
costs a Python ``wait_for`` per message and one ack publish per message, and nats-py's e-mail header parser
~15 µs per message; together they capped ingest at ~16,000 readings/s (benchmarks/bench_aggregator.py). Messages are collected into batches of up
to ``EWS_AGGREGATOR_BATCH`` (or what arrived within ``BATCH_TIMEOUT``); each batch is written to ClickHouse and only
then acked, with one ack of its last message (``ALL`` acks everything delivered before it). A message that
is not a valid ``ReadingTaken`` of this site is logged on one line and terminated (never redelivered); a
ClickHouse failure is retried (with a growing delay, messages kept in progress) until it succeeds: the
consumer pauses rather than skipping a batch. ``max_ack_pending`` (below the subscription's pending limit)
keeps a slow aggregator from being flooded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from dataclasses import replace

from ews_contracts.bus import ensure_streams_with
from ews_contracts.events import ReadingTaken
from ews_contracts.natsclient import connect_fast
from ews_contracts.settings import Settings
from ews_contracts.store import get_store
from ews_contracts.streams import READINGS
from ews_contracts.subjects import Kind, pattern
from ews_contracts.text import one_line
from nats.aio.msg import Msg
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from .aggregator import Aggregator

log = logging.getLogger("ews.aggregator")

DURABLE = "aggregator"
BATCH_SIZE = 20_000  # default (EWS_AGGREGATOR_BATCH): a backlog is written in big batches, one insert each
IN_FLIGHT_BATCHES = 4  # max_ack_pending = 4 batches delivered and not yet acked (bounds memory)
ACK_WAIT = 15.0  # seconds before JetStream redelivers what a crashed aggregator had in flight
BATCH_TIMEOUT = 0.5  # seconds to fill a batch: the latency from poll to ClickHouse
WRITE_ATTEMPTS = 3  # failures logged one by one; then every 30th
RETRY_DELAY = 0.2  # seconds, times the attempt number
MAX_RETRY_DELAY = 10.0


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
    # Retried until it is stored: with AckPolicy.ALL a later batch's ack would also ack this one, so the
    # consumer must not move past an unstored batch (ClickHouse down = consumption pauses, nothing is lost).
    attempt = 0
    while True:
        attempt += 1
        try:
            plan = await aggregator.store_batch(readings)
            break
        except Exception as exc:  # ClickHouse down, disk full ...: keep the consumer alive
            if attempt <= WRITE_ATTEMPTS or attempt % 30 == 0:
                log.error(
                    "writing %d readings failed (attempt %d): %s", len(readings), attempt, one_line(exc)
                )
            for msg in good:  # keep them from being redelivered while we retry
                with contextlib.suppress(Exception):
                    await msg.in_progress()
            await asyncio.sleep(min(RETRY_DELAY * attempt, MAX_RETRY_DELAY))
    # AckPolicy.ALL: acking the last message acks every message delivered before it
    await good[-1].ack()
    log.debug("stored %d readings: %s", len(readings), plan.outcomes)


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


def deliver_subject(site: str) -> str:
    return f"_ews.deliver.{site}.{DURABLE}"


def consumer_config(site: str, ack_wait: float = ACK_WAIT, batch_size: int = BATCH_SIZE) -> ConsumerConfig:
    """The durable push consumer of the aggregator."""
    return ConsumerConfig(
        name=DURABLE,
        durable_name=DURABLE,
        filter_subject=pattern(site, Kind.READING),
        deliver_subject=deliver_subject(site),
        ack_policy=JsAckPolicy.ALL,
        deliver_policy=DeliverPolicy.ALL,
        max_ack_pending=IN_FLIGHT_BATCHES * batch_size,
        ack_wait=ack_wait,
        # no flow control needed: max_ack_pending bounds what is in flight, below the subscription's pending limit
        idle_heartbeat=5.0,
    )


async def ensure_consumer(js, site: str, batch_size: int = BATCH_SIZE) -> ConsumerConfig:
    """Create the durable consumer; an older pull-based or differently acked one is replaced (the
    aggregator is idempotent: the new consumer replays the stream and changes nothing already counted)."""
    try:
        info = await js.consumer_info(READINGS.name, DURABLE)
    except NotFoundError:
        return (
            await js.add_consumer(READINGS.name, config=consumer_config(site, batch_size=batch_size))
        ).config
    config = info.config
    if config.deliver_subject is None or config.ack_policy != JsAckPolicy.ALL:
        log.info("replacing the %s consumer of %s by a push consumer with ack-all", DURABLE, READINGS.name)
        await js.delete_consumer(READINGS.name, DURABLE)
        return (
            await js.add_consumer(READINGS.name, config=consumer_config(site, batch_size=batch_size))
        ).config
    wanted = IN_FLIGHT_BATCHES * batch_size
    if (config.max_ack_pending or 0) < wanted:  # made by an older version or a smaller batch: raise it
        config = replace(config, max_ack_pending=wanted)
        return (await js.add_consumer(READINGS.name, config=config)).config
    return config


class Batcher:
    """Collects delivered messages into batches, flushed when full or ``BATCH_TIMEOUT`` old.

    A full batch is stored in a task, so the next one fills while ClickHouse writes (its inserts run in a
    worker thread); batches are stored one at a time, in delivery order.
    """

    def __init__(self, aggregator: Aggregator, batch_size: int = BATCH_SIZE) -> None:
        self.aggregator = aggregator
        self.batch_size = batch_size
        self.pending: list[Msg] = []
        self.first_at = 0.0
        self.lock = asyncio.Lock()
        self.inflight: asyncio.Task | None = None

    async def on_message(self, msg: Msg) -> None:
        if not self.pending:
            self.first_at = time.monotonic()
        self.pending.append(msg)
        if len(self.pending) >= self.batch_size:
            await self.flush(wait=False)

    async def flush(self, wait: bool = True) -> None:
        batch, self.pending = self.pending, []
        if not batch:
            return
        async with self.lock:  # FIFO: batches are chained in the order they were cut
            if self.inflight is not None:
                await asyncio.shield(self.inflight)
            self.inflight = asyncio.create_task(self._store(batch), name="aggregator-store")
            task = self.inflight
        if wait:
            await asyncio.shield(task)

    async def _store(self, batch: list[Msg]) -> None:
        try:
            await handle_batch(self.aggregator, batch)
        except Exception as exc:  # never let a batch kill the consumer: it is redelivered
            log.error("batch of %d readings not stored: %s", len(batch), one_line(exc))

    async def tick(self) -> None:
        """Flush what waited ``BATCH_TIMEOUT`` (the latency from poll to ClickHouse when idle)."""
        while True:
            await asyncio.sleep(BATCH_TIMEOUT / 2)
            if self.pending and time.monotonic() - self.first_at >= BATCH_TIMEOUT:
                await self.flush()


GC_THRESHOLD = (50_000, 20, 100)


def tune_gc() -> None:
    """The collector's cost grows with live objects: at thousands of readings per second (each a few
    objects, nearly all freed by reference counting) the default gen-0 threshold of 700 allocations made
    parsing 3x slower. Start-up objects (modules, profiles, ClickHouse client) are frozen out of its
    view, and collections run every 50,000 allocations instead."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


async def serve(settings: Settings) -> None:
    aggregator = make_aggregator(settings)
    await aggregator.start()  # migrate + load state before the first message
    tune_gc()
    batcher = Batcher(aggregator, settings.aggregator_batch)
    ticker = asyncio.create_task(batcher.tick(), name="aggregator-batches")
    sub = None
    nc = None
    try:
        # readings are the hot path: a plain nats-py connection with the fast header parser
        nc = await connect_fast(settings.nats_url, "aggregator")
        js = nc.jetstream()
        await ensure_streams_with(js)
        config = await ensure_consumer(js, aggregator.site.site, settings.aggregator_batch)
        sub = await js.subscribe_bind(
            READINGS.name,
            config,
            DURABLE,
            cb=batcher.on_message,
            manual_ack=True,
            pending_msgs_limit=2 * (config.max_ack_pending or IN_FLIGHT_BATCHES * settings.aggregator_batch),
            pending_bytes_limit=256 * 1024 * 1024,
        )
        log.info(
            "aggregator consuming %s into %s",
            pattern(aggregator.site.site, Kind.READING),
            settings.clickhouse_database,
        )
        await asyncio.Event().wait()
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
