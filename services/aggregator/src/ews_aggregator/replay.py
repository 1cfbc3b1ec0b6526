"""``ews replay``: rebuild every projection (raw readings, counter readings, hourly/daily/monthly
consumption, checkpoints) from the readings stream ``EWS_READINGS``.

The derived tables of the database are emptied (the materialized views stay), then every reading of
the site is read again from the stream's first message through an ephemeral pull consumer and stored
by the same ``Aggregator`` code the live service uses, after the same checks (``ews_contracts.intake``,
with the configuration history of EWS_CONFIG): what the live consumer dead-lettered is skipped again.
Consumption is a function of the set of readings accepted, so the result equals the live one. Stop the
aggregator first (with chDB, ``ews up`` holds the database folder). The live durable consumer is
untouched: when it resumes, what it re-reads is a duplicate and changes nothing.

Registered as the ``replay`` command (entry point group ``ews.commands``): the ``ews`` CLI finds it
without importing this service.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import nats
from ews_analytics import migrate, truncate_projections
from ews_contracts.events import ReadingTaken
from ews_contracts.intake import Intake, Rejected
from ews_contracts.settings import Settings
from ews_contracts.siteconfig import ConfigStore, site_of
from ews_contracts.store import get_store
from ews_contracts.streams import READINGS
from ews_contracts.subjects import Kind, pattern
from ews_contracts.text import one_line
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from .aggregator import Aggregator
from .deadletter import load_declarations
from .service import load_profiles_or_none

log = logging.getLogger("ews.aggregator.replay")

BATCH = 5000
FETCH_TIMEOUT = 2.0


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
    the stream. Raises RuntimeError (one line) when NATS or the stream cannot be reached."""
    site = settings.site
    db = database or settings.clickhouse_database
    started = time.monotonic()
    store = get_store(settings.clickhouse_dsn)
    await migrate(store, db)
    try:
        nc = await nats.connect(
            settings.nats_url, connect_timeout=5, max_reconnect_attempts=1, error_cb=_quiet
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
        sub = await js.pull_subscribe(
            pattern(site.site, Kind.READING),
            stream=READINGS.name,
            config=ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.ALL,
                inactive_threshold=60.0,
            ),
        )
        info = await sub.consumer_info()
        total = int(info.num_pending or 0)
        done = skipped = 0
        causes: dict[str, int] = {}
        if progress:
            progress(done, total, started)
        while done < total:
            try:
                msgs = await sub.fetch(min(batch_size, total - done), timeout=FETCH_TIMEOUT)
            except (TimeoutError, nats.errors.TimeoutError):
                break  # the stream ended sooner than announced (messages expired meanwhile)
            readings: list[ReadingTaken] = []
            for msg in msgs:
                try:
                    event = intake.check(msg.subject, msg.data, msg.headers, msg.reply)
                    assert isinstance(event, ReadingTaken)  # (the filter reads readings only)
                    readings.append(event)
                except Rejected as exc:
                    skipped += 1
                    causes[exc.cause] = causes.get(exc.cause, 0) + 1
                    log.debug("skipped a rejected message on %s: %s", msg.subject, one_line(exc))
            if readings:
                await aggregator.store_batch(readings)
            done += len(msgs)
            if progress:
                progress(done, total, started)
        await sub.unsubscribe()
        if progress:
            sys.stderr.write("\n")
        return ReplayResult(db, done - skipped, skipped, time.monotonic() - started, causes)
    finally:
        await nc.close()


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
