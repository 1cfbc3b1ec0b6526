"""``ews replay``: rebuild every projection (raw readings, counter readings, hourly/daily/monthly
consumption, checkpoints) from the readings stream ``EWS_READINGS``.

The derived tables of the database are emptied (the materialized views stay), then every reading of
the site is read again from the stream's first message through an ephemeral pull consumer and stored
by the same path the live service uses (raw frames, the fast intake, ``Aggregator.store_columns``; up to
``MERGED`` batches per write while the previous write goes on), after the same checks
(``ews_contracts.intake``, with the configuration history of EWS_CONFIG): what the live consumer
dead-lettered is skipped again.
Consumption is a function of the set of readings accepted, so the result equals the live one. Stop the
aggregator first (with chDB, ``ews up`` holds the database folder). The live durable consumer is
untouched: when it resumes, what it re-reads is a duplicate and changes nothing.

Registered as the ``replay`` command (entry point group ``ews.commands``): the ``ews`` CLI finds it
without importing this service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ews_analytics import migrate, truncate_projections
from ews_contracts.events import ReadingTaken
from ews_contracts.fastintake import FastIntake
from ews_contracts.intake import Intake, Rejected
from ews_contracts.natsclient import FastHeaderClient, Frames
from ews_contracts.settings import Settings
from ews_contracts.siteconfig import ConfigStore, site_of
from ews_contracts.store import get_store
from ews_contracts.streamio import read_frames
from ews_contracts.streams import READINGS
from ews_contracts.subjects import PREFIX, Kind
from ews_contracts.text import one_line

from .aggregator import Aggregator
from .columns import ReadingColumns
from .deadletter import intake_executor, load_declarations
from .service import load_profiles_or_none

log = logging.getLogger("ews.aggregator.replay")

BATCH = 20_000  # messages per fetch (the live consumer's batch); up to MERGED of them per write
MERGED = 5


@dataclass
class ReplayResult:
    database: str
    readings: int
    skipped: int
    seconds: float
    causes: dict[str, int] | None = None  # skipped messages by the cause the rules reject them for


async def _quiet(exc: Exception) -> None:
    """nats-py logs every connection error with a traceback by default; the command reports one line."""
    log.debug("nats: %s", one_line(exc))


def stderr_progress(done: int, total: int, started: float) -> None:
    """One line on stderr, rewritten in place: count, percentage, rate."""
    elapsed = max(time.monotonic() - started, 1e-9)
    pct = 100.0 * done / total if total else 100.0
    width = 30
    filled = int(width * pct / 100)
    bar = "#" * filled + "-" * (width - filled)
    sys.stderr.write(f"\rreplay [{bar}] {done:,}/{total:,} messages {pct:5.1f}%  {done / elapsed:,.0f}/s ")
    sys.stderr.flush()


async def replay(
    settings: Settings,
    database: str | None = None,
    batch_size: int = BATCH,
    progress: Callable[[int, int, float], None] | None = stderr_progress,
) -> ReplayResult:
    """Empty the derived tables of ``database`` (default: the configured one) and rebuild them from
    the stream. Raises RuntimeError (one line) when NATS or the stream cannot be reached.

    The live path's pipeline: the stream is read as raw frames (``streamio.read_frames``, the next batch
    requested while this one is used), the canonical readings accepted in columns by the fast intake (in
    its thread, while the previous batch is written), the others checked one by one (``Intake.check``),
    and every batch stored by ``Aggregator.store_columns``."""
    site = settings.site
    db = database or settings.clickhouse_database
    started = time.monotonic()
    store = get_store(settings.clickhouse_dsn)
    await migrate(store, db)
    nc = FastHeaderClient()
    try:
        await nc.connect(
            settings.nats_url, name="replay", connect_timeout=5, max_reconnect_attempts=1, error_cb=_quiet
        )
    except Exception as exc:
        raise RuntimeError(
            f"cannot reach NATS at {settings.nats_url}: {one_line(exc)} (set NATS_URL)"
        ) from None
    try:
        js = nc.jetstream()
        try:
            await js.stream_info(READINGS.name)
        except Exception as exc:
            raise RuntimeError(
                f"stream {READINGS.name} not found on {settings.nats_url} ({one_line(exc)}): nothing to replay"
            ) from None
        config = ConfigStore(js, site.site)
        stored = await config.latest()
        if stored is not None:  # the configuration in force (tariffs, devices), not the file's first version
            site = site_of(stored)
        intake = Intake(site.site, await load_declarations(config, site))
        await truncate_projections(store, db)
        aggregator = Aggregator(store, db, site, load_profiles_or_none(settings))
        await aggregator.start()
        fast = FastIntake(site.site)
        loop = asyncio.get_running_loop()
        total: list[int] = []
        done = skipped = taken = 0
        causes: dict[str, int] = {}
        writing: asyncio.Task | None = None
        waiting: list[ReadingColumns] = []  # checked, not yet written: written together (up to MERGED)
        try:
            # the whole stream, unfiltered (a filtered consumer costs nats-server ~4x the CPU per message:
            # service.consumer_filter); what is not a reading of the site is skipped, as the filter did
            async for frames in read_frames(nc, READINGS.name, None, batch=batch_size, total=total):
                decoded = loop.run_in_executor(
                    intake_executor(),
                    fast.check,
                    frames.subjects,
                    frames.replies,
                    frames.datas,
                    intake.declarations,
                )
                readings, rejected, considered = await check_frames(nc, intake, frames, await decoded)
                for cause in rejected:
                    causes[cause] = causes.get(cause, 0) + 1
                skipped += len(rejected)
                taken += considered
                if len(readings):
                    waiting.append(readings)
                done += len(frames)
                if not waiting or (writing is not None and not writing.done() and len(waiting) < MERGED):
                    continue  # the previous write goes on: this batch waits to be written with the next ones
                if writing is not None:
                    await writing
                writing = asyncio.create_task(
                    aggregator.store_columns(ReadingColumns.concat(waiting)), name="replay-store"
                )
                waiting = []
                if progress:
                    progress(done, total[0] if total else done, started)
            if writing is not None:
                await writing
            if waiting:
                await aggregator.store_columns(ReadingColumns.concat(waiting))
            if progress:
                progress(done, total[0] if total else done, started)
        except BaseException:
            if writing is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.shield(writing)
            raise
        if progress:
            sys.stderr.write("\n")
        return ReplayResult(db, taken - skipped, skipped, time.monotonic() - started, causes)
    finally:
        await nc.close()


async def check_frames(
    nc: FastHeaderClient, intake: Intake, frames: Frames, fast: Any
) -> tuple[ReadingColumns, list[str], int]:
    """The readings of ``frames`` in columns (those ``fast``, the fast intake's answer, accepted, and those
    ``Intake.check`` accepts among the others on the site's reading subjects), the causes of the rejected
    ones (skipped, as live), and how many messages were on the site's reading subjects."""
    parts: list[tuple[Any, ReadingColumns]] = [(fast.rows, ReadingColumns.of(fast))]
    causes: list[str] = []
    considered = len(fast.rows)
    if len(fast.rest):
        mine = f"{PREFIX}.{intake.site_id}.{Kind.READING}.".encode()
        taken: list[tuple[int, ReadingTaken]] = []
        for i in fast.rest.tolist():
            if not frames.subjects[i].startswith(mine):
                continue  # a status event, another site's message: not a reading of this site
            considered += 1
            msg = await nc.raw_msg(frames, i).load_headers()
            try:
                event = intake.check(msg.subject, msg.data, msg.headers, msg.reply)
                assert isinstance(event, ReadingTaken)  # (the subject is a reading's)
                taken.append((i, event))
            except Rejected as exc:
                causes.append(exc.cause)
                log.debug("skipped a rejected message on %s: %s", msg.subject, one_line(exc))
        if taken:
            parts.append(([i for i, _ in taken], ReadingColumns.from_readings([e for _, e in taken])))
    return ReadingColumns.merge(parts), causes, considered


def command(settings: Settings, database: str | None = None, batch_size: int = BATCH) -> int:
    """The ``ews replay`` command (entry point ``ews.commands:replay``)."""
    try:
        result = asyncio.run(replay(settings, database, batch_size))
    except RuntimeError as exc:
        print(f"ews replay: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        message = one_line(exc)
        hint = ""
        if "already initialized" in message or "lock" in message.lower():
            hint = " (stop `ews up` / the aggregator first: chDB lets one process open the database)"
        print(f"ews replay: error: {message[:300]}{hint}", file=sys.stderr)
        return 2
    print(
        f"replayed {result.readings:,} readings into {result.database} in {result.seconds:.1f} s"
        + (
            f" ({result.skipped} rejected messages skipped, as live: "
            + ", ".join(f"{n} {cause}" for cause, n in sorted((result.causes or {}).items()))
            + ")"
            if result.skipped
            else ""
        )
    )
    return 0
