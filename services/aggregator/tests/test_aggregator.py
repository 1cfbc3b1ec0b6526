"""Integration: real nats-server + chDB. Readings published on JetStream -> aggregator -> consumption()."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, date, datetime, timedelta

import pytest
from ews_aggregator.aggregator import Aggregator
from ews_aggregator.intervals import hour_totals
from ews_aggregator.service import serve
from ews_analytics import consumption
from ews_contracts.bus import ensure_streams, make_broker, publish_event
from ews_contracts.events import ReadingTaken, new_id
from ews_contracts.settings import Settings
from ews_contracts.store import get_store
from faststream.nats import NatsBroker

pytestmark = pytest.mark.integration

PRICE_KWH, PRICE_WATER_M3, PRICE_GAS_M3 = 0.20, 4.0, 1.0  # accounting test site, before June 2026
SITE = "acct"


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


def reading(device: str, ts: datetime, site: str = SITE, **values: float) -> ReadingTaken:
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


T = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)  # 12:00 in Paris (CEST), a Monday
DAY = date(2026, 5, 4)


async def test_readings_become_exact_energy_and_cost(
    acct_settings: Settings, caplog: pytest.LogCaptureFixture
):
    settings = acct_settings
    caplog.set_level("WARNING", logger="ews.aggregator")
    async with publisher(settings) as broker, aggregator(settings) as task:
        await publish(
            broker,
            [
                reading("m1", T, energy_active_import=1_000_000.0, power_active=500.0),
                reading("water", T, pulse_count=100.0),
                reading("gas", T, pulse_count=40.0),
            ],
        )
        # a bad message on the readings subject is dead-lettered and logged, never stops the consumer
        await broker.publish(b"{not json", subject="ews.acct.reading.m1", stream="EWS_READINGS")
        await broker.publish(
            {"site": SITE, "device": "m1"}, subject="ews.acct.reading.m1", stream="EWS_READINGS"
        )
        await publish(
            broker,
            [
                reading("m1", T + timedelta(minutes=10), energy_active_import=1_000_200.0),
                reading("m1", T + timedelta(minutes=20), energy_active_import=1_000_350.0),
                reading("m1", T + timedelta(minutes=30), energy_active_import=1_000_500.0),
                reading("m1", T + timedelta(minutes=40), energy_active_import=1_000_700.0),
                reading("m1", T + timedelta(minutes=50), energy_active_import=1_000_800.0),
                reading("m1", T + timedelta(minutes=60), energy_active_import=1_001_000.0),
                reading("m1", T + timedelta(minutes=70), energy_active_import=1_001_200.0),
                reading("m1", T + timedelta(minutes=80), energy_active_import=1_001_400.0),
                reading("m1", T + timedelta(minutes=90), energy_active_import=1_001_500.0),
                reading("water", T + timedelta(minutes=30), pulse_count=150.0),  # 50 pulses x 10 dm³, a gap
                reading("gas", T + timedelta(minutes=15), pulse_count=60.0),  # 20 pulses x 10 dm³
            ],
        )
        # the main incomer sees the lighting (m1) plus 300 Wh of the rest of the building
        await publish(
            broker,
            [
                reading("main", T + timedelta(minutes=10 * i), energy_active_import=50_000.0 + 200 * i)
                for i in range(10)
            ],
        )
        result = await eventually(task, lambda: total_is(settings, "device:m1", DAY, 1500.0))
        await eventually(task, lambda: total_is(settings, "total-electricity", DAY, 1800.0))
        # a reading of another site on this site's subject is refused too
        await broker.publish(
            reading("m1", T + timedelta(hours=2), site="other", energy_active_import=9e9).model_dump(
                mode="json"
            ),
            subject="ews.acct.reading.m1",
            stream="EWS_READINGS",
        )

        async def other_site_dropped() -> bool:
            return "site 'other'" in caplog.text

        await eventually(task, other_site_dropped)

    dropped = [r.getMessage() for r in caplog.records if "rejected a message on" in r.getMessage()]
    assert len(dropped) == 3 and all("\n" not in m for m in dropped), dropped  # one line per cause
    causes = [m.split("(")[1].split(")")[0] for m in dropped]
    assert causes == ["malformed", "missing-field", "subject-mismatch"]
    assert result.unit == "Wh" and result.currency == "EUR" and len(result.buckets) == 24
    # D12: total = lighting + sockets + rest (= main − lighting − sockets) = main; main itself is excluded
    total = await query(settings, "total-electricity", "day", DAY)
    assert total.total.value == 1800.0 and total.total.cost == pytest.approx(1.8 * PRICE_KWH)
    rest = await query(settings, "device:rest", "day", DAY)
    assert [b.value for b in rest.buckets if b.value] == [200.0, 100.0]  # main 1200/600, m1 1000/500
    assert (await query(settings, "circuit:rest", "day", DAY)).total.value == 300.0
    by_hour = {b.start.hour: b for b in result.buckets if b.value}
    assert {h: b.value for h, b in by_hour.items()} == {12: 1000.0, 13: 500.0}
    assert by_hour[12].cost == pytest.approx(1.0 * PRICE_KWH)
    assert by_hour[12].start.isoformat() == "2026-05-04T12:00:00+02:00"
    assert by_hour[12].estimated is None  # 10-minute polls: measured, not estimated
    assert result.total.cost == pytest.approx(1.5 * PRICE_KWH)
    assert result.previous.total.value == 0.0

    water = await query(settings, "device:water", "day", DAY)
    assert (water.unit, water.total.value, water.total.estimated) == ("dm³", 500.0, 500.0)  # 30 min gap
    assert water.total.cost == pytest.approx(0.5 * PRICE_WATER_M3)
    gas = await query(settings, "device:gas", "day", DAY)
    assert (gas.unit, gas.total.value, gas.total.wh_equivalent) == ("dm³", 200.0, pytest.approx(2240.0))

    glob = await query(settings, "total-global", "day", DAY)
    expected = 1.8 * PRICE_KWH + 0.5 * PRICE_WATER_M3 + 0.2 * PRICE_GAS_M3
    assert glob.unit == "EUR"
    assert glob.total.value == pytest.approx(expected) and glob.total.cost == pytest.approx(expected)
    assert {p.medium: p.value for p in glob.parts} == {"electricity": 1800.0, "gas": 200.0, "water": 500.0}

    circuit = await query(settings, "circuit:lighting", "day", DAY)
    assert (circuit.unit, circuit.total.value) == ("Wh", 1500.0)
    assert (await query(settings, "zone:parking", "day", DAY)).total.value == 0.0
    gw1 = await query(settings, "gateway:gw1", "day", DAY)  # main + m1, water and gas: in money
    assert (gw1.unit, {p.medium: p.value for p in gw1.parts}) == (
        "EUR",
        {"electricity": 3300.0, "gas": 200.0, "water": 500.0},
    )
    assert gw1.total.value == pytest.approx(3.3 * PRICE_KWH + 0.5 * PRICE_WATER_M3 + 0.2 * PRICE_GAS_M3)
    assert (await query(settings, "gateway:gw2", "day", DAY)).total.value == 0.0  # e2
    assert (await query(settings, "panel:sub", "day", DAY)).total.value == 1500.0  # m1 + e2
    building = await query(settings, "zone:building", "day", DAY)  # m1 + e2 + rest, water and gas
    assert building.unit == "EUR" and building.parts[0].value == 1800.0
    assert building.total.value == pytest.approx(expected)  # the site's total-global (no standing charge)

    month = await query(settings, "total-electricity", "month", DAY)
    assert len(month.buckets) == 31 and month.buckets[3].value == 1800.0 and month.total.value == 1800.0
    next_day = await query(settings, "total-electricity", "day", DAY + timedelta(days=1))
    assert next_day.total.value == 0.0 and next_day.previous.total.value == 1800.0
    decade = await query(settings, "total-electricity", "decade", DAY)
    assert [b.start.year for b in decade.buckets] == list(range(2017, 2027))
    assert decade.buckets[-1].value == 1800.0


async def test_duplicates_and_republished_events_do_not_double_count(acct_settings: Settings):
    settings = acct_settings
    first = [
        reading("e2", T + timedelta(minutes=10 * i), energy_active_import=5000.0 + 100 * i) for i in range(7)
    ]
    again_new_ids = [e.model_copy(update={"event_id": new_id()}) for e in first]
    async with publisher(settings) as broker, aggregator(settings) as task:
        await publish(broker, first)
        await eventually(task, lambda: total_is(settings, "device:e2", DAY, 600.0))
        await publish(broker, first)  # same event ids: JetStream dedupe
        await publish(broker, list(reversed(again_new_ids)))  # new ids, reversed: must not count again
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
    """Readings every 15 minutes; the consumption of hour i is 100 × (i + 1)."""
    events, value, used = [], base, []
    for i in range(hours):
        used.append(100.0 * (i + 1))
        for q in range(4):
            events.append(
                reading(device, start + timedelta(hours=i, minutes=15 * q), energy_active_import=value)
            )
            value += used[-1] / 4
    events.append(reading(device, start + timedelta(hours=hours), energy_active_import=value))
    return events, used


async def test_dst_days_have_25_and_23_hourly_buckets(acct_settings: Settings):
    settings = acct_settings
    autumn, autumn_used = hourly_readings("m1", datetime(2026, 10, 24, 22, tzinfo=UTC), 25, 10_000.0)
    spring, spring_used = hourly_readings("e2", datetime(2026, 3, 28, 23, tzinfo=UTC), 23, 50_000.0)
    mains = [e.model_copy(update={"device": "main", "event_id": new_id()}) for e in autumn + spring]
    async with publisher(settings) as broker, aggregator(settings) as task:
        await publish(broker, autumn + spring + mains)
        await eventually(task, lambda: total_is(settings, "device:main", date(2026, 3, 29), sum(spring_used)))
        await eventually(task, lambda: total_is(settings, "device:m1", date(2026, 10, 25), sum(autumn_used)))
        await eventually(task, lambda: total_is(settings, "device:e2", date(2026, 3, 29), sum(spring_used)))

    day = await query(settings, "total-electricity", "day", date(2026, 10, 25))
    assert len(day.buckets) == 25
    assert [b.value for b in day.buckets] == autumn_used
    assert day.total.value == sum(b.value for b in day.buckets)
    assert day.total.cost == pytest.approx(sum(b.cost for b in day.buckets))
    assert day.total.standing_charge == pytest.approx(0.48)  # spread over the 25 hours of the day
    assert day.buckets[0].cost == pytest.approx(100 / 1000 * 0.10 + 0.48 / 25)
    starts = [b.start.isoformat() for b in day.buckets]
    assert starts[0] == "2026-10-25T00:00:00+02:00"
    assert starts[2:4] == ["2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00"]
    assert starts[-1] == "2026-10-25T23:00:00+01:00"

    day = await query(settings, "total-electricity", "day", date(2026, 3, 29))
    assert len(day.buckets) == 23
    assert [b.value for b in day.buckets] == spring_used
    assert day.total.value == sum(b.value for b in day.buckets)
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
    # 2026-10-25 is a Sunday: the weekend window (0.10/kWh) prices every hour
    weekend = await query(settings, "device:m1", "day", date(2026, 10, 25))
    assert weekend.total.cost == pytest.approx(sum(autumn_used) / 1000 * 0.10)


async def test_restart_continues_without_loss_or_double_count(acct_settings: Settings):
    settings = acct_settings
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
    assert [b.value for b in result.buckets if b.value] == [160.0, 160.0]


async def test_migrate_is_idempotent_and_recorded(acct_settings: Settings):
    from ews_analytics import migrate, migrations

    store = get_store(acct_settings.clickhouse_dsn)
    first = await migrate(store, acct_settings.clickhouse_database)
    assert first == [m.version for m in migrations()]
    assert await migrate(store, acct_settings.clickhouse_database) == []
    rows = await store.query(f"SELECT version FROM {acct_settings.clickhouse_database}.schema_migrations")
    assert sorted(r[0] for r in rows) == first


class CrashOn:
    """The real store, except that inserting into one table fails (a crash between two inserts)."""

    def __init__(self, store, suffix: str) -> None:
        self.store, self.suffix = store, suffix

    async def query(self, *args, **kwargs):
        return await self.store.query(*args, **kwargs)

    async def command(self, *args, **kwargs):
        return await self.store.command(*args, **kwargs)

    async def insert(self, table, rows, column_names, column_oriented=False):
        if table.endswith(self.suffix):
            raise ConnectionError("connection lost")
        await self.store.insert(table, rows, column_names, column_oriented=column_oriented)

    async def insert_table(self, table, data):
        if table.endswith(self.suffix):
            raise ConnectionError("connection lost")
        await self.store.insert_table(table, data)


@pytest.mark.parametrize("crash_on", [".consumption_hourly", ".aggregator_checkpoints"])
async def test_crash_between_inserts_then_restart_counts_once(acct_settings: Settings, crash_on: str):
    store, db, site = (
        get_store(acct_settings.clickhouse_dsn),
        acct_settings.clickhouse_database,
        acct_settings.site,
    )
    events = [reading("e2", T + timedelta(minutes=10 * i), energy_active_import=100.0 * i) for i in range(9)]

    first = Aggregator(store, db, site)
    await first.start()
    await first.store_batch(events[:3])
    first.store = CrashOn(store, crash_on)  # type: ignore[assignment]
    with pytest.raises(ConnectionError):
        await first.store_batch(events[3:6])  # counter readings written, then the crash: not acked

    restarted = Aggregator(store, db, site)
    await restarted.start()  # reconciles the interrupted batch
    plan = await restarted.store_batch(events[3:])  # JetStream redelivers the unacked messages, then more
    assert plan.outcomes == {"duplicate": 3, "interval": 3}
    result = await query(acct_settings, "device:e2", "day", DAY)
    assert [b.value for b in result.buckets if b.value] == [600.0, 200.0]  # 10:00-11:00, 11:00-11:20
    assert result.total.value == 800.0

    # the same aggregator object recovers by itself after a failed write
    restarted.store = CrashOn(store, ".consumption_hourly")  # type: ignore[assignment]
    more = [
        reading("e2", T + timedelta(minutes=10 * i), energy_active_import=100.0 * i) for i in range(9, 12)
    ]
    with pytest.raises(ConnectionError):
        await restarted.store_batch(more)
    restarted.store = store
    await restarted.store_batch(more)
    assert (await query(acct_settings, "device:e2", "day", DAY)).total.value == 1100.0


async def test_readings_older_than_the_window_are_reconciled_through_the_store(acct_settings: Settings):
    store, db, site = (
        get_store(acct_settings.clickhouse_dsn),
        acct_settings.clickhouse_database,
        acct_settings.site,
    )
    agg = Aggregator(store, db, site)
    await agg.start()
    agg.book.window = 2
    values = [0, 100, 250, 400, 400, 700, 900, 1000, 1500, 1600]
    events = [
        reading("m1", T + timedelta(minutes=7 * i), energy_active_import=float(v))
        for i, v in enumerate(values)
    ]
    late = events[1::2]
    await agg.store_batch(events[0::2])
    plan = await agg.store_batch(late)  # every one of them is older than the 2-reading window or inside it
    assert plan.outcomes.get("old", 0) >= 1
    expected = hour_totals(
        [
            (int(e.occurred_at.timestamp() * 1000), int(e.values["energy_active_import"] * 1000), 0)
            for e in events
        ]
    )
    result = await query(acct_settings, "device:m1", "day", DAY)
    got = {int(b.start.timestamp() * 1000): b.value for b in result.buckets if b.value}
    assert got == {h: v[0] / 1000 for h, v in expected.items() if v[0]}
    assert result.total.value == 1600.0
    # a restart (window reloaded from the store) sees the same state: a replay of everything is a no-op
    again = Aggregator(store, db, site)
    await again.start()
    plan = await again.store_batch(events)
    assert set(plan.outcomes) == {"duplicate"}
    assert (await query(acct_settings, "device:m1", "day", DAY)).total.value == 1600.0
