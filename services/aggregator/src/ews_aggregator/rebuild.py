"""Rebuilding the projections after a restore: the aggregator's side of ``ews_contracts.rebuild``.

The service (``service.AggregatorService``) calls :func:`rebuild` when the restore's marker is due — on a
``…rpc-aggregator.rebuild`` request, at start-up, or from its watchdog. Steps:

1. stop the live subscription (the marker already stopped its deliveries) and let the batch being
   written finish;
2. empty the derived tables (the materialized views stay), and start a fresh ``Aggregator`` on the
   configuration in force (the restored one: tariffs, pulse weights, time zone make the figures);
3. account every reading of the site in the stream, up to its last sequence now, through an ephemeral
   consumer (``streamio.read_stream``): the same rules (``ews_contracts.intake``, with the restored
   configuration history) and the same ``Aggregator.store_batch`` as the live path, so the figures are
   those of ``ews replay`` and of the original. Readings taken after the restore began
   (``cut``: live polls published while it republished, interleaved in the stream with a year of restored
   ones) are held back and accounted last: accounted first, they would make every restored reading of
   their counter an out-of-order one (slow, and the in-memory window would have to hold them all). If
   too many are held back, they are read again in a second pass instead of being kept in memory;
4. put the durable consumer back in place of the marker, starting right after the last sequence read.

A failure (ClickHouse down) leaves the marker: the watchdog starts again from step 2 later. So does a
crash; nothing is half-counted, since step 2 empties the tables first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ews_analytics import truncate_projections
from ews_contracts.events import ReadingTaken
from ews_contracts.intake import Declarations, Intake, Rejected
from ews_contracts.site import Site
from ews_contracts.siteconfig import ConfigStore, site_of
from ews_contracts.streamio import ack_tokens, last_sequence, read_stream
from ews_contracts.streams import READINGS
from ews_contracts.subjects import Kind, pattern
from ews_contracts.text import one_line
from nats.aio.client import Client

from .aggregator import Aggregator

log = logging.getLogger("ews.aggregator.rebuild")

MAX_HELD = 200_000  # readings newer than the cut kept in memory; beyond, a second pass reads them again


async def site_in_force(store: ConfigStore, fallback: Site) -> tuple[Site, int]:
    """The configuration in force and its version, read from the store (a follower may not have seen the
    restore's version yet); ``fallback`` (version 0) when it cannot be read."""
    try:
        event = await store.latest()
    except Exception as exc:
        log.warning(
            "configuration not read from EWS_CONFIG (%s): rebuilding with the one followed", one_line(exc)
        )
        return fallback, 0
    if event is None:
        return fallback, 0
    return site_of(event), event.version


@dataclass
class Replayed:
    readings: int
    skipped: int
    held_back: int
    last_seq: int


def _parse(intake: Intake, msg) -> ReadingTaken:  # noqa: ANN001
    """The reading of a message the live consumer accepted; ``Rejected`` for the others (skipped)."""
    event = intake.check(msg.subject, msg.data, msg.headers, msg.reply)
    if not isinstance(event, ReadingTaken):  # (the filter reads readings only)
        raise Rejected("not-accepted", "not a reading")
    return event


class _Writer:
    """Batches of readings stored one at a time, in order, each while the next one is read."""

    def __init__(self, aggregator: Aggregator, batch_size: int) -> None:
        self.aggregator = aggregator
        self.batch_size = batch_size
        self.batch: list[ReadingTaken] = []
        self.stored = 0
        self.writing: asyncio.Task | None = None

    async def add(self, reading: ReadingTaken) -> None:
        self.batch.append(reading)
        if len(self.batch) >= self.batch_size:
            await self.flush()

    async def flush(self) -> None:
        if self.batch:
            await self.wait()
            batch, self.batch = self.batch, []
            self.writing = asyncio.create_task(self.aggregator.store_batch(batch), name="rebuild-store")
            self.stored += len(batch)

    async def wait(self) -> None:
        if self.writing is not None:
            task, self.writing = self.writing, None
            await task

    async def settle(self) -> None:
        """After a failure or a cancellation: the write in progress ends before anything else happens."""
        if self.writing is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self.writing)


async def replay(
    nc: Client,
    aggregator: Aggregator,
    cut: datetime,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
    intake: Intake | None = None,
    stream: str = READINGS.name,
) -> Replayed:
    """Account every reading of the site up to the stream's last sequence now (step 3 of the module doc),
    skipping what ``intake`` (default: the rules with the aggregator's configuration) rejects. ``stream``: the
    site's readings (``ews_contracts.streamnames``)."""
    site = aggregator.site.site
    if intake is None:
        intake = Intake(site, Declarations.of(aggregator.site))
    subject = pattern(site, Kind.READING)
    upto = await last_sequence(nc, stream)
    total: list[int] = []
    held: list[ReadingTaken] = []
    first_held: int | None = None
    overflow = False
    done = skipped = held_count = 0
    writer = _Writer(aggregator, batch_size)
    try:
        async for msgs in read_stream(nc, stream, subject, upto=upto, total=total):
            if cancelled():
                raise RebuildCancelled
            for msg in msgs:
                try:
                    reading = _parse(intake, msg)
                except Rejected as exc:
                    skipped += 1
                    log.debug("skipped a rejected message on %s: %s", msg.subject, one_line(exc))
                    continue
                if reading.occurred_at > cut:
                    held_count += 1
                    if first_held is None:
                        first_held = ack_tokens(msg.reply)[0]
                    if not overflow:
                        held.append(reading)
                        if len(held) > MAX_HELD:
                            overflow, held = True, []
                    continue
                await writer.add(reading)
            done += len(msgs)
            if progress:
                progress(done, total[0] if total else done)
        await writer.flush()
        if overflow and first_held is not None:
            log.info("rebuild: %d readings taken since the restore began: reading them again", held_count)
            async for msgs in read_stream(nc, stream, subject, upto=upto, start=first_held):
                for msg in msgs:
                    try:
                        reading = _parse(intake, msg)
                    except Rejected:
                        continue
                    if reading.occurred_at > cut:
                        await writer.add(reading)
        else:
            held.sort(key=lambda r: r.occurred_at)
            for reading in held:
                await writer.add(reading)
        await writer.flush()
        await writer.wait()
    except BaseException:
        await writer.settle()
        raise
    return Replayed(writer.stored, skipped, held_count, upto)


class RebuildCancelled(Exception):
    """A newer restore asked for a rebuild while this one ran: it starts over."""


async def empty_projections(aggregator: Aggregator) -> None:
    await truncate_projections(aggregator.store, aggregator.database)
