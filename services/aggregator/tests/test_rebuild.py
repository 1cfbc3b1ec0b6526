"""The rebuild a restore asks for (ews_contracts.rebuild): real nats-server + chDB, the aggregator service
running in this process."""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress
from datetime import UTC, datetime, timedelta

import pytest
from ews_aggregator.aggregator import Aggregator
from ews_aggregator.service import DURABLE, serve
from ews_contracts import rebuild
from ews_contracts.bus import ensure_streams_with
from ews_contracts.events import ReadingTaken, utcnow
from ews_contracts.natsclient import connect_fast
from ews_contracts.settings import Settings
from ews_contracts.store import get_store
from ews_contracts.streamio import Republisher
from ews_contracts.streams import READINGS
from ews_contracts.subjects import pattern
from nats.js.api import DeliverPolicy

pytestmark = pytest.mark.integration

SITE = "acct"
EA = "energy_active_import"


def series(device: str, start: datetime, n: int, step: timedelta, per_step: float, base: float = 0.0) -> list:
    return [
        ReadingTaken(
            event_id=ReadingTaken.id_for(SITE, device, start + k * step),
            site=SITE,
            device=device,
            profile="energy-meter-rs485-3ph",
            occurred_at=start + k * step,
            values={EA: base + per_step * k},
        )
        for k in range(n)
    ]


async def republish(nc, events: list[ReadingTaken]) -> None:
    """As a restore does: every message acknowledged, those JetStream's dedupe window drops stored again."""
    publisher = await Republisher(nc).start()
    for e in events:
        await publisher.publish(e.subject, e.model_dump_json().encode(), e.event_id)
    assert (await publisher.close()).stored == len(events)


async def publish(nc, events: list[ReadingTaken]) -> None:
    js = nc.jetstream()
    for i in range(0, len(events), 500):
        await asyncio.gather(
            *(
                js.publish(e.subject, e.model_dump_json().encode(), headers=e.headers())
                for e in events[i : i + 500]
            )
        )


async def hourly(settings: Settings, database: str | None = None) -> list[tuple]:
    db = database or settings.clickhouse_database
    return await get_store(settings.clickhouse_dsn).query(
        f"SELECT device, quantity, toUnixTimestamp(hour) AS h, sum(value_milli) AS v, sum(estimated_milli), "
        f"round(sum(cost), 6) FROM {db}.consumption_hourly GROUP BY device, quantity, h HAVING v != 0 "
        "ORDER BY device, quantity, h"
    )


async def reference(settings: Settings, events: list[ReadingTaken], database: str) -> list[tuple]:
    """The hours a fresh aggregator makes of ``events`` (in time order) in another database."""
    aggregator = Aggregator(get_store(settings.clickhouse_dsn), database, settings.site)
    await aggregator.start()
    ordered = sorted(events, key=lambda e: e.occurred_at)
    for i in range(0, len(ordered), 1000):
        await aggregator.store_batch(ordered[i : i + 1000])
    return await hourly(settings, database)


async def until(check, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def accounted(nc) -> bool:
    with suppress(Exception):
        info = await nc.jetstream().consumer_info(READINGS.name, DURABLE)
        return (
            rebuild.RebuildMarker.of(info) is None
            and info.num_pending == 0
            and info.num_ack_pending == 0
            and (info.delivered.stream_seq or 0) > 0
        )
    return False


async def test_a_restore_marker_stops_accounting_and_the_rebuild_replaces_the_figures(
    acct_settings: Settings,
) -> None:
    settings = acct_settings
    nc = await connect_fast(settings.nats_url, "test")
    await ensure_streams_with(nc.jetstream())
    task = asyncio.create_task(serve(settings))
    try:
        day = datetime(2025, 5, 12, tzinfo=UTC)
        before = series("m1", day, 96, timedelta(minutes=15), 100.0) + series(
            "e2", day, 96, timedelta(minutes=15), 50.0
        )
        await publish(nc, before)
        await until(lambda: accounted(nc), 30, "the readings to be accounted")
        assert await hourly(settings)

        # a restore begins: the marker stops the aggregator's deliveries
        cut = utcnow()
        marker = rebuild.RebuildMarker("r1", cut, time.time() + rebuild.LEASE)
        js = nc.jetstream()
        await rebuild.mark(js, SITE, marker)
        figures = await hourly(settings)
        await publish(nc, series("m1", day + timedelta(days=1), 4, timedelta(hours=1), 999.0, base=9600.0))
        await asyncio.sleep(1.5)
        assert await hourly(settings) == figures  # not accounted while the marker is there

        # the restorer replaces the site's readings by others, while live readings keep arriving
        for kind in READINGS.kinds:
            await js.purge_stream(READINGS.name, subject=pattern(SITE, kind))
        restored = series("m1", day, 4 * 96, timedelta(minutes=15), 70.0) + series(
            "e2", day, 4 * 96, timedelta(minutes=15), 20.0
        )
        now = utcnow().replace(microsecond=0)
        live = series("m1", now, 3, timedelta(seconds=2), 5.0, base=4 * 96 * 70.0 + 1000.0)
        await republish(nc, restored[:200])
        await publish(nc, live[:2])  # newer than the cut, in the middle of the restored ones
        await republish(nc, restored[200:])
        # the restorer is done: the marker is due, and the aggregator is asked
        await rebuild.renew(js, SITE, rebuild.RebuildMarker("r1", cut, 0.0))
        answer = await rebuild.request_rebuild(nc, SITE, "r1")
        assert answer is not None and answer.state == "rebuilding" and answer.restore == "r1"

        async def done():
            status = await rebuild.rebuild_status(nc, SITE)
            return (
                status if status is not None and status.state == "idle" and status.restore == "r1" else None
            )

        status = await until(done, 60, "the rebuild")
        assert status.done == len(restored) + 2
        info = await js.consumer_info(READINGS.name, DURABLE)
        assert rebuild.RebuildMarker.of(info) is None
        assert info.config.deliver_subject and info.config.deliver_policy == DeliverPolicy.BY_START_SEQUENCE
        # the durable consumer resumes after what the rebuild read: a later live reading is accounted
        await publish(nc, live[2:])
        await until(lambda: accounted(nc), 30, "the live reading")
        assert await hourly(settings) == await reference(
            settings, restored + live, settings.clickhouse_database + "_ref"
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await nc.close()


async def test_a_due_marker_is_rebuilt_when_the_aggregator_starts(acct_settings: Settings) -> None:
    """The restore happened while the aggregator was stopped (`ews restore` with the stack down)."""
    settings = acct_settings
    nc = await connect_fast(settings.nats_url, "test")
    js = nc.jetstream()
    await ensure_streams_with(js)
    day = datetime(2025, 2, 3, tzinfo=UTC)
    events = series("water", day, 50, timedelta(minutes=15), 0.0) + series(
        "m1", day, 50, timedelta(minutes=15), 40.0
    )
    events = [
        e.model_copy(update={"values": {"pulse_count": 3.0 * k}, "profile": "pulse-concentrator-004687"})
        if e.device == "water"
        else e
        for k, e in zip([*range(50), *range(50)], events, strict=True)
    ]
    await publish(nc, events)
    # a stale projection in the database, which the rebuild must drop
    stale = Aggregator(get_store(settings.clickhouse_dsn), settings.clickhouse_database, settings.site)
    await stale.start()
    await stale.store_batch(series("e2", day, 10, timedelta(hours=1), 500.0))
    await rebuild.mark(js, SITE, rebuild.RebuildMarker("r2", utcnow(), 0.0))
    task = asyncio.create_task(serve(settings))
    try:

        async def done():
            status = await rebuild.rebuild_status(nc, SITE)
            return (
                status if status is not None and status.state == "idle" and status.restore == "r2" else None
            )

        await until(done, 60, "the rebuild at start-up")
        await until(lambda: accounted(nc), 30, "the consumer")
        assert await hourly(settings) == await reference(
            settings, events, settings.clickhouse_database + "_ref"
        )
        assert not [row for row in await hourly(settings) if row[0] == "e2"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await nc.close()


async def test_a_marker_not_due_waits_for_the_restorer(acct_settings: Settings) -> None:
    settings = acct_settings
    nc = await connect_fast(settings.nats_url, "test")
    js = nc.jetstream()
    await ensure_streams_with(js)
    await rebuild.mark(js, SITE, rebuild.RebuildMarker("r3", utcnow(), time.time() + 600))
    await publish(nc, series("m1", datetime(2025, 2, 3, tzinfo=UTC), 20, timedelta(minutes=15), 40.0))
    task = asyncio.create_task(serve(settings))
    try:
        status = await until(lambda: rebuild.rebuild_status(nc, SITE), 30, "the aggregator")
        assert status.state == "waiting" and status.restore == "r3"
        await asyncio.sleep(1.0)
        assert await hourly(settings) == []
        assert rebuild.RebuildMarker.of(await js.consumer_info(READINGS.name, DURABLE)) is not None
        # the request comes (the restorer made the marker due): rebuilt
        await rebuild.renew(js, SITE, rebuild.RebuildMarker("r3", utcnow(), 0.0))
        assert (await rebuild.request_rebuild(nc, SITE, "r3")) is not None
        await until(lambda: accounted(nc), 30, "the rebuild")
        assert len(await hourly(settings)) == 5  # 20 quarter-hours of m1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await nc.close()


async def test_ensure_consumer_keeps_a_marker(nats_url: str) -> None:
    """A marker is a pull consumer: ensure_consumer must not take it for an old one and replace it."""
    from ews_aggregator.service import MarkerPresent, ensure_consumer

    nc = await connect_fast(nats_url, "test")
    try:
        js = nc.jetstream()
        await ensure_streams_with(js)
        await rebuild.mark(js, SITE, rebuild.RebuildMarker("x", utcnow(), 0.0))
        with pytest.raises(MarkerPresent):
            await ensure_consumer(js, SITE)
        assert (await rebuild.current_marker(js)) == rebuild.RebuildMarker.of(
            await js.consumer_info(READINGS.name, DURABLE)
        )
        assert (await rebuild.current_marker(js)).restore == "x"
    finally:
        await nc.close()
