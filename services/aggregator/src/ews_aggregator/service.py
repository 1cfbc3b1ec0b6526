"""Aggregator target: a durable JetStream consumer of readings that writes ClickHouse.

The consumer is a durable **push** consumer with ``AckPolicy.ALL`` and no filter (``consumer_filter``), read
with ``natsclient.bulk_subscribe``: the connection's parser hands each read's messages over as raw frames,
without a nats-py ``Msg``, header parse or queue hop per message (FastStream's pull subscriber, then nats-py's
own push path, capped ingest at ~16,000 and ~60,000 readings/s). Frames are cut into batches of
``EWS_AGGREGATOR_BATCH`` (or what arrived within ``BATCH_TIMEOUT``); each batch's readings in the canonical
form are accepted in columns by the fast intake (``ews_contracts.fastintake``, pyarrow, in its own thread,
while earlier batches are written), the others checked one by one by the contract's rules
(``ews_contracts.intake``, ``deadletter.Gate``). The columns are accounted at once
(``Aggregator.store_columns``) and written as Arrow tables; behind a backlog up to ``MERGED_CHUNKS`` batches
go in one write. A write is acked with one ack of its last message (``ALL`` acks everything delivered before
it). A message the rules reject is not stored, but published with the reason to the dead-letter stream
(EWS_DEAD_LETTER) before the batch is acked, and logged once per cause (a summary a minute); a ClickHouse
failure is retried (with a growing delay, messages kept in progress) until it succeeds: the consumer pauses
rather than skipping a batch. ``max_ack_pending`` (``IN_FLIGHT_BATCHES`` batches) bounds what is in memory.

After a restore (``ews_contracts.rebuild``: the restorer replaces the durable consumer by a marker, then
asks over ``ews.<site>.rpc-aggregator.rebuild``), the service rebuilds its projections from the stream and
puts its consumer back (``rebuild.py``); ``…rpc-aggregator.status`` reports the progress. The service
accounts with the configuration in force (the last ``SiteConfigured`` of ``EWS_CONFIG``, else the site
file) as it was when it started or last rebuilt.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from dataclasses import replace

from ews_contracts.bus import ensure_streams_with
from ews_contracts.events import SiteConfigured, utcnow
from ews_contracts.intake import CONSUMED
from ews_contracts.natsclient import FastHeaderClient, Frames, connect_fast
from ews_contracts.rebuild import (
    AGGREGATOR_DURABLE,
    RPC_QUEUE,
    RebuildMarker,
    RebuildStatus,
    aggregator_rpc,
    current_marker,
)
from ews_contracts.settings import Settings
from ews_contracts.site import Site
from ews_contracts.siteconfig import LiveSite
from ews_contracts.store import get_store
from ews_contracts.streamnames import BOX, StreamNames
from ews_contracts.streams import READINGS
from ews_contracts.subjects import PREFIX
from ews_contracts.text import one_line
from nats.aio.msg import Msg
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from prometheus_client import Counter, Gauge, Histogram

from .aggregator import Aggregator
from .columns import ReadingColumns
from .deadletter import Gate
from .rebuild import RebuildCancelled, empty_projections, replay, site_in_force

log = logging.getLogger("ews.aggregator")

DURABLE = AGGREGATOR_DURABLE
BATCH_SIZE = 20_000  # default (EWS_AGGREGATOR_BATCH): a backlog is written in big batches, one insert each
IN_FLIGHT_BATCHES = 6  # max_ack_pending = 6 batches delivered and not yet acked (bounds memory)
MERGED_CHUNKS = 3  # behind a backlog, up to 3 batches are written at once (fewer, larger ClickHouse parts)
ACK_WAIT = 15.0  # seconds before JetStream redelivers what a crashed aggregator had in flight
BATCH_TIMEOUT = 0.5  # seconds to fill a batch: the latency from poll to ClickHouse
WRITE_ATTEMPTS = 3  # failures logged one by one; then every 30th
RETRY_DELAY = 0.2  # seconds, times the attempt number
MAX_RETRY_DELAY = 10.0
WATCH_INTERVAL = 15.0  # seconds between two looks at the durable consumer (a due rebuild marker)
REBUILD_RETRY = 30.0  # seconds before a failed rebuild is tried again


# Prometheus (served by the gateway-api's /metrics under `ews up`, see ews_contracts.metrics)
READINGS_IN = Counter(
    "ews_aggregator_readings_total",
    "Readings and status events taken in, by outcome (stored, rejected)",
    ["outcome"],
)
BATCHES = Counter("ews_aggregator_batches_total", "Batches written to ClickHouse (one insert each)")
STORE_TIME = Histogram(
    "ews_aggregator_store_seconds",
    "Time to write one batch to ClickHouse",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LAG = Gauge(
    "ews_aggregator_lag_messages",
    "Readings in the stream not yet stored by the aggregator (its consumer's pending + unacknowledged)",
    multiprocess_mode="mostrecent",
)


async def handle_batch(aggregator: Aggregator, messages: list[Msg], gate: Gate) -> None:
    """Check a batch, dead-letter what the rules reject, store the readings, then ack the batch."""
    if not messages:
        return
    readings, rejected = await gate.sort(messages)
    if rejected:
        await gate.dead_letter(rejected, messages)
        READINGS_IN.labels("rejected").inc(len(rejected))
    if readings:
        await store_until_stored(lambda: aggregator.store_batch(readings), len(readings), messages)
    # AckPolicy.ALL: acking the last message acks every message delivered before it
    await messages[-1].ack()


async def handle_frames(
    aggregator: Aggregator,
    chunks: list[tuple[Frames, asyncio.Future | None]],
    gate: Gate,
    client: FastHeaderClient,
) -> None:
    """``handle_batch`` of raw frames (the live consumer), in one or more consecutive chunks each with its
    fast intake already started (or None): the fast intake accepts the canonical readings in columns, the
    rules check the others one by one; dead-letter, store (one write for every chunk), ack the last."""
    chunks = [(frames, decoded) for frames, decoded in chunks if len(frames)]
    if not chunks:
        return
    parts: list[ReadingColumns] = []
    rejected: list = []
    for frames, decoded in chunks:
        readings, refused = await gate.sort_frames(client, frames, decoded)
        parts.append(readings)
        rejected += refused
    readings = ReadingColumns.concat(parts)
    messages = InFlight(client, [frames for frames, _ in chunks])
    if rejected:
        await gate.dead_letter(rejected, messages)
        READINGS_IN.labels("rejected").inc(len(rejected))
    if len(readings):
        await store_until_stored(lambda: aggregator.store_columns(readings), len(readings), messages)
    last = chunks[-1][0]
    await client.raw_msg(last, len(last) - 1).ack()


class InFlight:
    """The messages of chunks of frames, for keeping them in progress while a write is retried."""

    def __init__(self, client: FastHeaderClient, chunks: list[Frames]) -> None:
        self.client, self.chunks = client, chunks

    def __len__(self) -> int:
        return sum(len(frames) for frames in self.chunks)

    def __iter__(self):
        for frames in self.chunks:
            for i in range(len(frames)):
                yield self.client.raw_msg(frames, i)


async def store_until_stored(store, count: int, messages) -> None:  # noqa: ANN001
    """Retried until it is stored: with AckPolicy.ALL a later batch's ack would also ack this one, so the
    consumer must not move past an unstored batch (ClickHouse down = consumption pauses, nothing is lost)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            started = time.perf_counter()
            plan = await store()
            STORE_TIME.observe(time.perf_counter() - started)
            BATCHES.inc()
            READINGS_IN.labels("stored").inc(count)
            log.debug("stored %d readings: %s", count, plan.outcomes)
            return
        except Exception as exc:  # ClickHouse down, disk full ...: keep the consumer alive
            if attempt <= WRITE_ATTEMPTS or attempt % 30 == 0:
                log.error("writing %d readings failed (attempt %d): %s", count, attempt, one_line(exc))
            for msg in messages:  # keep them from being redelivered while we retry
                with contextlib.suppress(Exception):
                    await msg.in_progress()
            await asyncio.sleep(min(RETRY_DELAY * attempt, MAX_RETRY_DELAY))


def load_profiles_or_none(settings: Settings) -> dict:
    """The device profiles (for counter rollover ranges); none when they cannot be loaded (resets stay safe)."""
    try:
        from ews_contracts.profiles import load_profiles

        return dict(load_profiles(settings.profiles_dir))
    except Exception as exc:
        log.warning("device profiles not loaded (%s): counter rollovers are treated as resets", one_line(exc))
        return {}


def make_aggregator(settings: Settings, site: Site | None = None, database: str | None = None) -> Aggregator:
    return Aggregator(
        get_store(settings.clickhouse_dsn),
        database or settings.clickhouse_database,
        site or settings.site,
        load_profiles_or_none(settings),
    )


def deliver_subject(site: str) -> str:
    return f"_ews.deliver.{site}.{DURABLE}"


def consumer_filter(site: str) -> str:
    """What the aggregator consumes of EWS_READINGS: every subject of the site there, i.e. its readings and
    status events (``intake.CONSUMED``; both checked). The durable consumer itself has **no filter**: a
    filtered consumer costs nats-server ~4× the CPU per delivered message (7.4 against 2.1 µs here, with a
    wildcard filter or several: it matches the stream's subjects for every message), as much as the whole
    aggregator spends on a reading. The stream holds this site's subjects only on an edge box, and on one box
    in practice; a message of another site that is there anyway is skipped by the service (``Gate.sort_frames``)
    exactly as the filter left it out: neither accounted nor dead-lettered."""
    assert {s.split(".")[2] for s in READINGS.subjects} == set(CONSUMED)  # (the stream holds those only)
    return f"{PREFIX}.{site}.>"


def consumer_config(
    site: str,
    ack_wait: float = ACK_WAIT,
    batch_size: int = BATCH_SIZE,
    start_seq: int | None = None,
    durable: str = DURABLE,
    deliver: str | None = None,
) -> ConsumerConfig:
    """The durable push consumer of the aggregator (from ``start_seq`` after a rebuild, else from the start);
    ``durable`` and ``deliver`` (its deliver subject) are a hub member's (``take_over``), else the box's."""
    return ConsumerConfig(
        name=durable,
        durable_name=durable,
        deliver_subject=deliver or deliver_subject(site),  # no filter: see consumer_filter
        ack_policy=JsAckPolicy.ALL,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start_seq else DeliverPolicy.ALL,
        opt_start_seq=start_seq or None,
        max_ack_pending=IN_FLIGHT_BATCHES * batch_size,
        ack_wait=ack_wait,
        # no flow control needed: max_ack_pending bounds what is in flight, below the subscription's pending limit
        idle_heartbeat=5.0,
    )


class MarkerPresent(Exception):
    """The durable consumer is a restore's rebuild marker: the rebuild puts the consumer back."""


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
    if RebuildMarker.of(info) is not None:
        raise MarkerPresent("a restore asked for a rebuild")
    if config.deliver_subject is None or config.ack_policy != JsAckPolicy.ALL:
        log.info("replacing the %s consumer of %s by a push consumer with ack-all", DURABLE, READINGS.name)
        await js.delete_consumer(READINGS.name, DURABLE)
        return (
            await js.add_consumer(READINGS.name, config=consumer_config(site, batch_size=batch_size))
        ).config
    wanted = IN_FLIGHT_BATCHES * batch_size
    if config.filter_subject or config.filter_subjects:
        # an older version filtered (its readings, then every subject of the site): the filter is dropped (see
        # consumer_filter); status events are checked too, and other sites skipped, from where it was
        log.info(
            "the %s consumer of %s now takes every subject (skipping other sites')", DURABLE, READINGS.name
        )
        config = replace(config, filter_subject=None, filter_subjects=None)
        if (config.max_ack_pending or 0) < wanted:
            config = replace(config, max_ack_pending=wanted)
        return (await js.add_consumer(READINGS.name, config=config)).config
    if (config.max_ack_pending or 0) < wanted:  # made by an older version or a smaller batch: raise it
        config = replace(config, max_ack_pending=wanted)
        return (await js.add_consumer(READINGS.name, config=config)).config
    return config


async def take_over(js, names: StreamNames, deliver: str, batch_size: int = BATCH_SIZE) -> ConsumerConfig:  # noqa: ANN001
    """At the hub (``group.py``): the site's durable consumer made this member's. A consumer another member
    left (it died, or gave the site up) is replaced by one starting after its ack floor — what it acked is
    stored; what it had in flight comes again, and the aggregator counts nothing twice — and delivering to
    this member's own subject, so a member that lost its lease without knowing it receives nothing more."""
    durable = names.aggregator_durable
    start = None
    try:
        info = await js.consumer_info(names.readings, durable)
    except NotFoundError:
        info = None
    if info is not None:
        if RebuildMarker.of(info) is not None:
            raise MarkerPresent("a restore asked for a rebuild")
        if info.config.deliver_subject == deliver:
            return info.config  # already this member's (bound again after a pause)
        start = (info.ack_floor.stream_seq or 0) + 1 if info.ack_floor else None
        await js.delete_consumer(names.readings, durable)
    config = consumer_config(
        names.site or "", batch_size=batch_size, start_seq=start, durable=durable, deliver=deliver
    )
    return (await js.add_consumer(names.readings, config=config)).config


class Batcher:
    """Collects delivered messages (raw frames, ``natsclient.bulk_subscribe``) into chunks of ``batch_size``
    (or what waited ``BATCH_TIMEOUT``), and stores them in one task, in delivery order.

    Each chunk's fast intake starts in its thread as soon as the chunk is cut, while earlier ones are being
    written; the writer then takes every chunk ready at once (at most ``MERGED_CHUNKS``): behind a backlog
    the writes grow to several chunks — fewer, larger inserts and ClickHouse parts — and when the consumer
    keeps up each chunk is written alone, ``BATCH_TIMEOUT`` at most after its first message.
    ``max_ack_pending`` (``IN_FLIGHT_BATCHES`` chunks) bounds how many wait.
    """

    def __init__(
        self,
        aggregator: Aggregator,
        gate: Gate,
        batch_size: int = BATCH_SIZE,
        client: FastHeaderClient | None = None,
    ) -> None:
        self.aggregator = aggregator
        self.gate = gate
        self.batch_size = batch_size
        self.client = client
        self.pending = Frames()
        self.first_at = 0.0
        self.ready: list[tuple[Frames, asyncio.Future]] = []  # cut, decoding or decoded, not yet written
        self.writer: asyncio.Task | None = None

    def on_frames(self, frames: Frames) -> None:
        """The sink of the bulk subscription (called from the connection's read loop: never blocks)."""
        if b"" in frames.replies:  # heartbeats (status messages, no reply subject): nothing to store
            frames = frames.pick([i for i, reply in enumerate(frames.replies) if reply])
            if not len(frames):
                return
        fresh = not len(self.pending)
        self.pending.extend(frames)
        while len(self.pending) >= self.batch_size:
            self._cut(self.batch_size)
            fresh = True
        if fresh and len(self.pending):
            self.first_at = time.monotonic()

    def _cut(self, n: int) -> None:
        chunk = self.pending.cut(n)
        self.ready.append((chunk, self.gate.decode(chunk)))  # the fast intake starts now
        if self.writer is None or self.writer.done():
            self.writer = asyncio.get_running_loop().create_task(self._write(), name="aggregator-store")

    async def _write(self) -> None:
        """Write what is ready, chunks at a time, until nothing is."""
        while self.ready:
            take, self.ready = self.ready[:MERGED_CHUNKS], self.ready[MERGED_CHUNKS:]
            try:
                assert self.client is not None
                await handle_frames(self.aggregator, take, self.gate, self.client)
            except Exception as exc:  # never let a batch kill the consumer: it is redelivered
                log.error("batch of %d readings not stored: %s", sum(len(f) for f, _ in take), one_line(exc))

    async def flush(self, wait: bool = True) -> None:
        if len(self.pending):
            self._cut(len(self.pending))
        if wait:
            await self.settle()

    async def settle(self) -> None:
        """Everything cut so far is written (or failed)."""
        while self.writer is not None and not self.writer.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self.writer)

    def drop(self) -> None:
        """Forget what is not being written (the consumer is replaced: it is read again)."""
        self.pending = Frames()
        self.ready = []

    async def tick(self) -> None:
        """Flush what waited ``BATCH_TIMEOUT`` (the latency from poll to ClickHouse when idle)."""
        while True:
            await asyncio.sleep(BATCH_TIMEOUT / 2)
            if len(self.pending) and time.monotonic() - self.first_at >= BATCH_TIMEOUT:
                await self.flush(wait=False)
            self.gate.log.flush()  # the rejections' summary lines, once a minute per cause


GC_THRESHOLD = (50_000, 20, 100)


def tune_gc() -> None:
    """The collector's cost grows with live objects: at thousands of readings per second (each a few
    objects, nearly all freed by reference counting) the default gen-0 threshold of 700 allocations made
    parsing 3x slower. Start-up objects (modules, profiles, ClickHouse client) are frozen out of its
    view, and collections run every 50,000 allocations instead."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


class AggregatorService:
    """The running aggregator: the live consumer, and the rebuilds a restore asks for.

    On a box or an edge it reads the streams by their own names (``BOX``). At the hub (``group.py``) it is
    given the site's hub streams (``streams_for(site, hub=True)``), its ClickHouse ``database`` and the
    member's ``deliver`` subject: it reads the configuration from ``EWS_CONFIG_<site>`` (no site file),
    declares and publishes to no stream, and answers no rebuild request (those are the edge's, and leaf
    nodes share subjects)."""

    def __init__(
        self,
        settings: Settings,
        names: StreamNames = BOX,
        database: str | None = None,
        deliver: str | None = None,
    ) -> None:
        self.settings = settings
        self.names = names
        self.database = database or settings.clickhouse_database
        self.deliver = deliver
        self.batch_size = settings.aggregator_batch
        self.live: LiveSite | None = None
        self.pinned = 0  # configuration versions below this one are not applied (see _apply_site)
        self.nc = None
        self.js = None
        self.sub = None
        self.aggregator: Aggregator | None = None
        self.batcher: Batcher | None = None
        self.gate: Gate | None = None
        self.status = RebuildStatus(state="idle")
        self.wanted: RebuildMarker | None = None  # the rebuild to do (a newer request replaces it)
        self.rebuilding: asyncio.Task | None = None
        self.failed_at = 0.0
        self.tasks: list[asyncio.Task] = []

    @property
    def site_id(self) -> str:
        return self.names.site or self.settings.site.site

    @property
    def name(self) -> str:
        return f"hub-aggregator-{self.site_id}" if self.names.hub else "aggregator"

    async def start(self) -> None:
        # the configuration in force (seeded from the site file on the first start), followed live
        if self.names.hub:  # the edge's configuration, sourced
            stored = (self.site_id, self.names.config)
            self.live = await LiveSite.connect(self.settings.nats_url, None, self.name, stored=stored)
        else:
            self.live = await LiveSite.connect(self.settings.nats_url, self.settings.site_path, "aggregator")
        # readings are the hot path: a plain nats-py connection with the fast header parser
        self.nc = await connect_fast(self.settings.nats_url, self.name)
        self.js = self.nc.jetstream()
        if self.names.owns_streams:
            await ensure_streams_with(self.js)
        self.aggregator = make_aggregator(self.settings, self.live.site, self.database)
        await self.aggregator.start()  # migrate + load state before the first message
        # the contract's rules check devices against every configuration version (with its stream time)
        self.gate = Gate(self.js, self.live.site, self.live.store, dead_letters=self.names.owns_streams)
        await self.gate.load()
        self.live.on_change(self._apply_site)
        self.live.on_change(self._follow_declarations)
        await self.live.follow()
        tune_gc()
        self.batcher = Batcher(self.aggregator, self.gate, self.batch_size, self.nc)
        self.tasks.append(asyncio.create_task(self.batcher.tick(), name="aggregator-batches"))
        marker = await self.marker()
        if marker is None:
            await self.consume(await self.ensure_consumer())
            log.info(
                "%s consuming %s of %s into %s",
                self.name,
                consumer_filter(self.site_id),
                self.names.readings,
                self.database,
            )  # (the consumer delivers the whole stream: other sites' messages are skipped)
        else:
            self.status = RebuildStatus(state="waiting", restore=marker.restore)
            if marker.due():
                self.start_rebuild(marker)
            else:
                log.info("a restore is in progress: the aggregator waits for it before rebuilding")
        # answers status and rebuild requests once its state is known (an early "idle" would tell a
        # restorer that no rebuild is pending)
        if self.names.owns_streams:
            await self.nc.subscribe(aggregator_rpc(self.site_id, "*"), queue=RPC_QUEUE, cb=self.on_request)
        self.tasks.append(asyncio.create_task(self.watch(), name="aggregator-watch"))

    async def marker(self) -> RebuildMarker | None:
        assert self.js is not None
        return await current_marker(self.js, self.names.readings, self.names.aggregator_durable)

    async def ensure_consumer(self) -> ConsumerConfig:
        """The durable consumer: the box's (``ensure_consumer``), or taken over by this hub member."""
        if self.names.hub:
            assert self.deliver, "a hub member consumes on its own deliver subject"
            return await take_over(self.js, self.names, self.deliver, self.batch_size)
        return await ensure_consumer(self.js, self.site_id, self.batch_size)

    async def consume(self, config: ConsumerConfig) -> None:
        """Bind to the push consumer's deliver subject: its messages arrive as raw frames, batched."""
        assert self.nc is not None and self.batcher is not None and config.deliver_subject
        self.sub = await self.nc.bulk_subscribe(config.deliver_subject, self.batcher.on_frames)

    async def stop_consuming(self) -> None:
        """Unsubscribe, drop what waits for a batch (the rebuild reads it again), finish the batch being
        written."""
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
            self.sub = None
        assert self.batcher is not None
        self.batcher.drop()
        await self.batcher.settle()

    def _follow_declarations(self, site: Site, event: SiteConfigured) -> None:  # noqa: ARG002
        """A new version: the rules read the history again (in a task: a reading of a device added by it
        that comes first is checked again once the version is known, see ``Gate.sort``)."""
        if self.gate is not None:
            task = asyncio.create_task(self.gate.load(site), name="aggregator-declarations")
            self.tasks.append(task)
            task.add_done_callback(lambda t: self.tasks.remove(t) if t in self.tasks else None)

    def _apply_site(self, site: Site, event: SiteConfigured) -> None:
        """A new configuration version, live. A restore republishes the configuration history before
        its own version: versions older than the one a rebuild accounts with are not applied (they would
        change the prices in the middle of the rebuild)."""
        if event.version < self.pinned or self.aggregator is None:
            return
        self.aggregator.apply_site(site)

    # --- rebuilds ---------------------------------------------------------------------------------

    def start_rebuild(self, marker: RebuildMarker) -> None:
        self.wanted = marker
        self.status = RebuildStatus(state="rebuilding", restore=marker.restore)
        if self.rebuilding is None or self.rebuilding.done():
            self.rebuilding = asyncio.create_task(self._rebuilds(), name="aggregator-rebuild")

    async def _rebuilds(self) -> None:
        while self.wanted is not None:
            marker = self.wanted
            try:
                await self._rebuild(marker)
            except RebuildCancelled:
                log.info("rebuild for restore %s interrupted by a newer restore", marker.restore)
                continue
            except Exception as exc:
                self.failed_at = time.monotonic()
                self.status = RebuildStatus(state="failed", restore=marker.restore, error=one_line(exc))
                log.error(
                    "rebuild after restore %s failed (tried again later): %s", marker.restore, one_line(exc)
                )
                if self.wanted is marker:
                    self.wanted = None
                return
            if self.wanted is marker:
                self.wanted = None

    async def _rebuild(self, marker: RebuildMarker) -> None:
        """See rebuild.py; raises on failure (the marker stays, the watchdog retries)."""
        assert self.js is not None and self.nc is not None and self.batcher is not None
        started = time.monotonic()
        status = self.status = RebuildStatus(state="rebuilding", restore=marker.restore)
        log.info("rebuilding the projections of site %s (restore %s)", self.site_id, marker.restore)
        await self.stop_consuming()
        assert self.live is not None
        site, self.pinned = await site_in_force(self.live.store, self.live.site)
        assert self.gate is not None
        await self.gate.load(site)  # the restored configuration history
        aggregator = make_aggregator(self.settings, site, self.database)
        await empty_projections(aggregator)
        await aggregator.start()
        self.aggregator = self.batcher.aggregator = aggregator

        def progress(done: int, total: int) -> None:
            status.done, status.total = done, total

        result = await replay(
            self.nc,
            aggregator,
            marker.cut,
            self.batch_size,
            progress,
            cancelled=lambda: self.wanted is not marker,
            intake=self.gate.intake,
            stream=self.names.readings,
        )
        now = await self.marker()
        if now is not None and now.restore != marker.restore:  # another restore began meanwhile
            if now.due():
                self.wanted = now
                raise RebuildCancelled
            self.status = RebuildStatus(state="waiting", restore=now.restore)
            return
        with contextlib.suppress(NotFoundError):
            await self.js.delete_consumer(self.names.readings, self.names.aggregator_durable)
        config = consumer_config(
            self.site_id,
            batch_size=self.batch_size,
            start_seq=result.last_seq + 1,
            durable=self.names.aggregator_durable,
            deliver=self.deliver,
        )
        config = (await self.js.add_consumer(self.names.readings, config=config)).config
        await self.consume(config)
        self.status = RebuildStatus(
            state="idle",
            restore=marker.restore,
            done=result.readings,
            total=result.readings,
            finished_at=utcnow(),
        )
        log.info(
            "rebuilt the projections from %d readings in %.1f s (%d taken during the restore, %d bad skipped)",
            result.readings,
            time.monotonic() - started,
            result.held_back,
            result.skipped,
        )

    async def on_request(self, msg: Msg) -> None:
        operation = msg.subject.rpartition(".")[2]
        try:
            if operation == "rebuild":
                marker = await self.marker()
                if marker is not None:
                    self.start_rebuild(replace(marker, not_before=0.0))
                answer = self.status.model_dump(mode="json")
            elif operation == "status":
                answer = self.status.model_dump(mode="json")
            else:
                answer = {"state": "failed", "error": f"unknown operation {operation!r}"}
        except Exception as exc:
            answer = {"state": "failed", "error": one_line(exc)}
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(json.dumps(answer).encode())

    async def watch(self) -> None:
        """A due marker (the restorer died, or the rebuild failed) starts a rebuild; a consumer that
        vanished without a marker is created again."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            if self.rebuilding is not None and not self.rebuilding.done():
                continue
            with contextlib.suppress(Exception):
                info = await self.js.consumer_info(self.names.readings, self.names.aggregator_durable)
                LAG.set((info.num_pending or 0) + (info.num_ack_pending or 0))
            try:
                marker = await self.marker()
                if marker is not None:
                    if self.status.state == "failed" and time.monotonic() - self.failed_at < REBUILD_RETRY:
                        continue
                    if marker.due():
                        self.start_rebuild(marker)
                    elif self.status.state != "waiting":
                        self.status = RebuildStatus(state="waiting", restore=marker.restore)
                elif self.sub is None:
                    await self.consume(await self.ensure_consumer())
                    self.status = RebuildStatus(state="idle")
            except MarkerPresent:
                continue
            except Exception as exc:
                log.debug("watchdog: %s", one_line(exc))

    async def stop(self) -> None:
        for task in [*self.tasks, self.rebuilding]:
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *[t for t in [*self.tasks, self.rebuilding] if t is not None], return_exceptions=True
        )
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self.live is not None:
            await self.live.close()


async def serve(settings: Settings) -> None:
    service = AggregatorService(settings)
    try:
        await service.start()
        await asyncio.Event().wait()
    finally:
        await service.stop()
