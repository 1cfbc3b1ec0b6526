"""Integration: real nats-server + chDB. Readings published on JetStream -> aggregator -> consumption()."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, date, datetime, timedelta

import pytest
from ews_aggregator.service import serve
from ews_analytics import consumption
from ews_contracts.bus import ensure_streams, make_broker, publish_event
from ews_contracts.events import ReadingTaken, new_id
from ews_contracts.settings import Settings
from ews_contracts.store import get_store
from faststream.nats import NatsBroker

pytestmark = pytest.mark.integration

PRICE_KWH, PRICE_WATER_M3, PRICE_GAS_M3 = 0.2516, 4.15, 1.21  # demo site tariff


@asynccontextmanager
async def aggregator(settings: Settings) -> AsyncIterator[asyncio.Task]:
    task = asyncio.create_task(serve(settings))
    try:
        yield task
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


@asynccontextmanager
async def publisher(settings: Settings) -> AsyncIterator[NatsBroker]:
    broker = make_broker(settings.nats_url, "test-publisher")
    await broker.connect()
    await ensure_streams(broker)
    try:
        yield broker
    finally:
        await broker.stop()


def reading(device: str, ts: datetime, site: str = "demo", **values: float) -> ReadingTaken:
    profile = "pulse-concentrator-004687" if device in ("water", "gas") else "energy-meter-rs485-3ph"
    return ReadingTaken(
        event_id=ReadingTaken.id_for(site, device, ts),
        site=site,
        device=device,
        profile=profile,
        occurred_at=ts,
        values=values,
    )


async def publish(broker: NatsBroker, events: list[ReadingTaken]) -> None:
    for event in events:
        await publish_event(broker, event)


async def query(settings: Settings, scope: str, period: str, day: date):
    return await consumption(
        get_store(settings.clickhouse_dsn), settings.clickhouse_database, settings.site, scope, period, day
    )


async def eventually(task: asyncio.Task, check: Callable, within: float = 15.0):
    """Poll ``check()`` (async, returns a truthy result when done) while the aggregator runs."""
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        if task.done():
            task.result()  # raises the aggregator's failure
            raise AssertionError("aggregator stopped")
        with suppress(Exception):  # tables may not exist before the first migration
            last = await check()
            if last:
                return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out; last result: {last!r}")


async def total_is(settings: Settings, scope: str, day: date, value: float, period: str = "day"):
    result = await query(settings, scope, period, day)
    return result if result.total.value == pytest.approx(value, abs=1e-6) else None


T = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)  # 12:00 in Paris (CEST)
DAY = date(2026, 5, 4)


async def test_readings_become_exact_energy_and_cost(settings: Settings, caplog: pytest.LogCaptureFixture):
    caplog.set_level("WARNING", logger="ews.aggregator")
    async with publisher(settings) as broker, aggregator(settings) as task:
        await publish(
            broker,
            [
                reading("e2", T, energy_active_import=1_000_000.0, power_active=500.0),
                reading("water", T, pulse_count=100.0),
                reading("gas", T, pulse_count=40.0),
            ],
        )
        # a bad message on the readings subject is logged and dropped, never stops the consumer
        await broker.publish(b"{not json", subject="ews.demo.reading.e2", stream="EWS_READINGS")
        await broker.publish(
            {"site": "demo", "device": "e2"}, subject="ews.demo.reading.e2", stream="EWS_READINGS"
        )
        await publish(
            broker,
            [
                reading("e2", T + timedelta(minutes=30), energy_active_import=1_000_500.0),
                reading("e2", T + timedelta(minutes=90), energy_active_import=1_001_500.0),
                reading("water", T + timedelta(minutes=30), pulse_count=150.0),  # 50 pulses x 10 dm³
                reading("gas", T + timedelta(minutes=45), pulse_count=60.0),  # 20 pulses x 10 dm³
            ],
        )
        result = await eventually(task, lambda: total_is(settings, "total-electricity", DAY, 1500.0))
        # a reading of another site on this site's subject is refused too
        await broker.publish(
            reading("e2", T + timedelta(hours=2), site="other", energy_active_import=9e9).model_dump(
                mode="json"
            ),
            subject="ews.demo.reading.e2",
            stream="EWS_READINGS",
        )

        async def other_site_dropped() -> bool:
            return "site 'other'" in caplog.text

        await eventually(task, other_site_dropped)

    dropped = [r.getMessage() for r in caplog.records if "dropped bad reading" in r.getMessage()]
    assert len(dropped) == 3 and all("\n" not in m for m in dropped), dropped
    assert result.unit == "Wh" and result.currency == "EUR" and len(result.buckets) == 24
    by_hour = {b.start.hour: b for b in result.buckets if b.value}
    # 10:00-10:30 500 Wh, 10:30-11:30 1000 Wh split 500/500 -> local 12:00 = 1000, 13:00 = 500
    assert {h: b.value for h, b in by_hour.items()} == {12: 1000.0, 13: 500.0}
    assert by_hour[12].cost == pytest.approx(1.0 * PRICE_KWH)
    assert by_hour[12].start.isoformat() == "2026-05-04T12:00:00+02:00"
    assert result.total.cost == pytest.approx(1.5 * PRICE_KWH)
    assert result.previous.total.value == 0.0

    water = await query(settings, "device:water", "day", DAY)
    assert (water.unit, water.total.value) == ("dm³", 500.0)
    assert water.total.cost == pytest.approx(0.5 * PRICE_WATER_M3)
    gas = await query(settings, "device:gas", "day", DAY)
    assert (gas.unit, gas.total.value) == ("dm³", 200.0)

    glob = await query(settings, "total-global", "day", DAY)
    expected = 1.5 * PRICE_KWH + 0.5 * PRICE_WATER_M3 + 0.2 * PRICE_GAS_M3
    assert glob.unit == "EUR"
    assert glob.total.value == pytest.approx(expected) and glob.total.cost == pytest.approx(expected)

    circuit = await query(settings, "circuit:offices", "day", DAY)
    assert (circuit.unit, circuit.total.value) == ("Wh", 1500.0)
    zone = await query(settings, "zone:parking", "day", DAY)
    assert zone.total.value == 0.0

    month = await query(settings, "total-electricity", "month", DAY)
    assert len(month.buckets) == 31 and month.buckets[3].value == 1500.0 and month.total.value == 1500.0
    next_day = await query(settings, "total-electricity", "day", DAY + timedelta(days=1))
    assert next_day.total.value == 0.0 and next_day.previous.total.value == 1500.0
    decade = await query(settings, "total-electricity", "decade", DAY)
    assert [b.start.year for b in decade.buckets] == list(range(2017, 2027))
    assert decade.buckets[-1].value == 1500.0


async def test_duplicates_and_republished_events_do_not_double_count(settings: Settings):
    first = [
        reading("e2", T + timedelta(minutes=10 * i), energy_active_import=5000.0 + 100 * i) for i in range(7)
    ]
    again_new_ids = [e.model_copy(update={"event_id": new_id()}) for e in first]
    async with publisher(settings) as broker, aggregator(settings) as task:
        await publish(broker, first)
        await eventually(task, lambda: total_is(settings, "device:e2", DAY, 600.0))
        await publish(broker, first)  # same event ids: JetStream dedupe
        await publish(broker, again_new_ids)  # new ids: reach the aggregator, must not count again
        # a marker reading after the duplicates: once it is counted, the duplicates were processed
        await publish(broker, [reading("e2", T + timedelta(minutes=70), energy_active_import=5650.0)])
        result = await eventually(task, lambda: total_is(settings, "device:e2", DAY, 650.0))
    assert [b.value for b in result.buckets if b.value] == [600.0, 50.0]
    store = get_store(settings.clickhouse_dsn)
    raw = await store.query(
        f"SELECT count() FROM {settings.clickhouse_database}.readings FINAL WHERE device = 'e2'"
    )
    assert raw[0][0] == 8  # every distinct reading once, duplicates replaced


def hourly_readings(
    device: str, start: datetime, hours: int, base: float
) -> tuple[list[ReadingTaken], list[float]]:
    """One reading per UTC hour; the consumption of hour i is 100 × (i + 1)."""
    events, value, used = [], base, []
    for i in range(hours + 1):
        events.append(reading(device, start + timedelta(hours=i), energy_active_import=value))
        used.append(100.0 * (i + 1))
        value += used[-1]
    return events, used[:hours]


async def test_dst_days_have_25_and_23_hourly_buckets(settings: Settings):
    autumn, autumn_used = hourly_readings("m1", datetime(2026, 10, 24, 22, tzinfo=UTC), 25, 10_000.0)
    spring, spring_used = hourly_readings("e2", datetime(2026, 3, 28, 23, tzinfo=UTC), 23, 50_000.0)
    async with publisher(settings) as broker, aggregator(settings) as task:
        await publish(broker, autumn + spring)
        await eventually(task, lambda: total_is(settings, "device:m1", date(2026, 10, 25), sum(autumn_used)))
        await eventually(task, lambda: total_is(settings, "device:e2", date(2026, 3, 29), sum(spring_used)))

    day = await query(settings, "total-electricity", "day", date(2026, 10, 25))
    assert len(day.buckets) == 25
    assert [b.value for b in day.buckets] == autumn_used
    assert day.total.value == pytest.approx(sum(b.value for b in day.buckets))
    assert day.total.cost == pytest.approx(sum(b.cost for b in day.buckets))
    starts = [b.start.isoformat() for b in day.buckets]
    assert starts[0] == "2026-10-25T00:00:00+02:00"
    assert starts[2:4] == ["2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00"]
    assert starts[-1] == "2026-10-25T23:00:00+01:00"

    day = await query(settings, "total-electricity", "day", date(2026, 3, 29))
    assert len(day.buckets) == 23
    assert [b.value for b in day.buckets] == spring_used
    assert day.total.value == pytest.approx(sum(b.value for b in day.buckets))
    assert [b.start.isoformat() for b in day.buckets[1:3]] == [
        "2026-03-29T01:00:00+01:00",
        "2026-03-29T03:00:00+02:00",
    ]

    month = await query(settings, "total-electricity", "month", date(2026, 10, 25))
    assert (
        month.buckets[24].value == sum(autumn_used)
        and month.buckets[24].start.isoformat() == "2026-10-25T00:00:00+02:00"
    )
    year = await query(settings, "total-electricity", "year", date(2026, 10, 25))
    assert year.buckets[2].value == sum(spring_used) and year.buckets[9].value == sum(autumn_used)


async def test_restart_continues_without_loss_or_double_count(settings: Settings):
    events = [
        reading("e2", T + timedelta(minutes=15 * i), energy_active_import=1000.0 + 40 * i) for i in range(9)
    ]
    async with publisher(settings) as broker:
        async with aggregator(settings) as task:
            await publish(broker, events[:4])  # 10:00 .. 10:45 -> 120 Wh in hour 10
            await eventually(task, lambda: total_is(settings, "device:e2", DAY, 120.0))
        await publish(broker, events[4:7])  # published while the aggregator is down
        async with aggregator(settings) as task:
            await eventually(task, lambda: total_is(settings, "device:e2", DAY, 240.0))
            await publish(broker, events[7:] + events[2:5])  # new readings and some replays
            result = await eventually(task, lambda: total_is(settings, "device:e2", DAY, 320.0))
    # UTC hours 10 and 11 (local 12:00 and 13:00)
    assert [b.value for b in result.buckets if b.value] == [160.0, 160.0]


async def test_migrate_is_idempotent_and_recorded(settings: Settings):
    from ews_analytics import migrate, migrations

    store = get_store(settings.clickhouse_dsn)
    first = await migrate(store, settings.clickhouse_database)
    assert first == [m.version for m in migrations()]
    assert await migrate(store, settings.clickhouse_database) == []
    rows = await store.query(f"SELECT version FROM {settings.clickhouse_database}.schema_migrations")
    assert sorted(r[0] for r in rows) == first


class CrashBeforeState:
    """The real store, except that writing the counter state fails (a crash between two inserts)."""

    def __init__(self, store) -> None:
        self.store = store

    async def insert(self, table, rows, column_names):
        if table.endswith(".counter_state"):
            raise ConnectionError("connection lost")
        await self.store.insert(table, rows, column_names)


async def test_crash_between_inserts_then_restart_counts_once(settings: Settings):
    from ews_aggregator.aggregator import Aggregator

    store, db, site = get_store(settings.clickhouse_dsn), settings.clickhouse_database, settings.site
    events = [reading("e2", T + timedelta(minutes=20 * i), energy_active_import=100.0 * i) for i in range(6)]

    first = Aggregator(store, db, site)
    await first.start()
    await first.store_batch(events[:2])
    first.store = CrashBeforeState(store)  # type: ignore[assignment]
    with pytest.raises(ConnectionError):
        await first.store_batch(events[2:4])  # hour rows written, counter state not: messages not acked

    restarted = Aggregator(store, db, site)
    await restarted.start()
    assert restarted.book.counters[("e2", "energy_active_import")].value == 100.0  # behind the hour rows
    plan = await restarted.store_batch(events[2:])  # JetStream redelivers the unacked messages, then more
    assert plan.outcomes == {"already-counted": 2, "interval": 2}
    result = await query(settings, "device:e2", "day", DAY)
    assert [b.value for b in result.buckets if b.value] == [300.0, 200.0]  # 10:00-11:00, 11:00-11:40
    assert result.total.value == 500.0
