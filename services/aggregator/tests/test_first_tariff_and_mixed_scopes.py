"""Through the real aggregator (NATS + chDB): hours before the first tariff are stored with cost 0 and
answered as unpriced, without standing charges; a panel mixing media costs the sum of its meters; and
`ews replay` rebuilds exactly the same answers."""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from ews_aggregator.aggregator import Aggregator
from ews_aggregator.replay import replay
from ews_aggregator.service import serve
from ews_analytics import consumption
from ews_contracts.events import ReadingTaken
from ews_contracts.settings import Settings
from ews_contracts.site import Site
from ews_contracts.store import get_store

from .chdb_dump import dump
from .conftest import SITE_FILE
from .test_replay_and_crash import consumer_state, ensure, publish_all

pytestmark = pytest.mark.integration

EA = "energy_active_import"
TODAY = date(2026, 11, 30)
FIRST = date(2026, 5, 4)  # the first tariff: mid-history (readings start on May 3rd), a Monday


def variant(tmp_path: Path, first: str) -> Path:
    """The accounting site with its first tariff from ``first`` (with a standing charge; the second
    one, from 2026-06-01, kept when it comes later) and the sub panel holding the water and gas meters
    next to two electricity meters (a mixed panel)."""
    doc = yaml.safe_load(SITE_FILE.read_text())
    doc["tariffs"][0].update(effective_from=first, electricity_standing_per_day=0.3, gas_standing_per_day=0.1)
    doc["tariffs"] = [t for t in doc["tariffs"] if str(t["effective_from"]) >= first]
    for device in doc["devices"]:
        if device["id"] in ("water", "gas"):
            device["panel"] = "sub"
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def reading(device: str, ts: datetime, **values: float) -> ReadingTaken:
    profile = "pulse-concentrator-004687" if device in ("water", "gas") else "energy-meter-rs485-3ph"
    return ReadingTaken(
        event_id=ReadingTaken.id_for("acct", device, ts),
        site="acct",
        device=device,
        profile=profile,
        occurred_at=ts,
        values=values,
    )


def history() -> list[ReadingTaken]:
    """Every 15 minutes from 21:00 on May 3rd to 05:00 on May 4th (local), and two hours in June:
    m1 400 Wh, e2 200 Wh, water 80 dm³ and gas 40 dm³ an hour."""
    events = []
    for start, n in ((datetime(2026, 5, 3, 19, tzinfo=UTC), 33), (datetime(2026, 6, 2, 10, tzinfo=UTC), 9)):
        for i in range(n):
            t = start + timedelta(minutes=15 * i)
            events += [
                reading("m1", t, energy_active_import=10_000.0 + 100 * i),
                reading("e2", t, energy_active_import=20_000.0 + 50 * i),
                reading("main", t, energy_active_import=90_000.0 + 160 * i),
                reading("water", t, pulse_count=100.0 + 2 * i),
                reading("gas", t, pulse_count=500.0 + i),
            ]
    return events


async def answers(store, db: str, site: Site) -> dict:
    out = {}
    for scope in ("device:m1", "device:water", "panel:sub", "total-global", "total-electricity"):
        for period in ("day", "month", "year", "decade"):
            for day in (date(2026, 5, 3), FIRST, date(2026, 6, 2)):
                result = await consumption(store, db, site, scope, period, day, today=TODAY)
                out[(scope, period, day)] = result.model_dump(mode="json")
    return out


async def test_unpriced_hours_mixed_panel_and_replay(settings: Settings, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("EWS_SITE_FILE", str(variant(tmp_path, FIRST.isoformat())))
    settings = Settings()
    site = settings.site
    events = history()
    await ensure(settings.nats_url)
    await publish_all(settings.nats_url, events)
    task = asyncio.create_task(serve(settings))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            floor, pending, ack_pending = await consumer_state(settings.nats_url)
            if floor >= len(events) and pending == 0 and ack_pending == 0:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the aggregator did not drain the stream")
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    store, db = get_store(settings.clickhouse_dsn), settings.clickhouse_database

    # stored at ingest: cost 0 for every hour before the first tariff's local midnight
    rows = await store.query(
        f"SELECT day < toDate('2026-05-04'), countIf(cost != 0), count() FROM {db}.consumption_hourly "
        "GROUP BY 1 ORDER BY 1"
    )
    assert [(bool(before), int(priced) > 0) for before, priced, _ in rows] == [(False, True), (True, False)]

    m1 = await consumption(store, db, site, "device:m1", "day", date(2026, 5, 3), today=TODAY)
    assert [(b.start.hour, b.value, b.cost, b.unpriced) for b in m1.buckets if not b.no_data] == [
        (21, 400.0, 0.0, True),
        (22, 400.0, 0.0, True),
        (23, 400.0, 0.0, True),
    ]
    assert m1.total.unpriced is True and m1.priced_from == FIRST
    first = await consumption(store, db, site, "device:m1", "day", FIRST, today=TODAY)
    assert [(b.start.hour, b.cost) for b in first.buckets if not b.no_data] == [
        (h, pytest.approx(0.08)) for h in range(5)
    ]
    assert first.total.unpriced is None and first.previous.total.unpriced is True

    # standing charges start with the first tariff too
    before = await consumption(store, db, site, "total-electricity", "day", date(2026, 5, 3), today=TODAY)
    assert before.total.standing_charge is None and before.total.cost == 0.0 and before.total.unpriced
    glob = await consumption(store, db, site, "total-global", "day", FIRST, today=TODAY)
    assert glob.total.standing_charge == pytest.approx(0.4)  # electricity 0.3 + gas 0.1
    month = await consumption(store, db, site, "total-global", "month", FIRST, today=TODAY)
    assert month.buckets[2].cost == 0.0 and month.buckets[2].unpriced is True  # May 3rd
    assert month.total.standing_charge == pytest.approx(28 * 0.4)  # May 4th … 31st
    year = await consumption(store, db, site, "total-global", "year", FIRST, today=TODAY)
    assert [b.unpriced for b in year.buckets[4:6]] == [True, None]  # May (from the 3rd), June

    # the mixed panel (m1, e2, water, gas): money, the sum of its meters' costs, per medium
    for period in ("day", "month", "year", "decade"):
        for day in (date(2026, 5, 3), FIRST, date(2026, 6, 2)):
            panel = await consumption(store, db, site, "panel:sub", period, day, today=TODAY)
            meters = [
                await consumption(store, db, site, f"device:{d}", period, day, today=TODAY)
                for d in ("m1", "e2", "water", "gas")
            ]
            assert panel.unit == "EUR" and panel.total.standing_charge is None
            for i, bucket in enumerate(panel.buckets):
                assert bucket.cost == pytest.approx(sum(m.buckets[i].cost for m in meters), abs=1e-9)
                assert bucket.unpriced == (True if any(m.buckets[i].unpriced for m in meters) else None)
            parts = {p.medium: p for p in panel.parts}
            assert list(parts) == ["electricity", "gas", "water"]
            assert parts["electricity"].value == meters[0].total.value + meters[1].total.value
            assert (
                parts["water"].value == meters[2].total.value and parts["gas"].value == meters[3].total.value
            )
            for medium, of in (("electricity", meters[:2]), ("water", meters[2:3]), ("gas", meters[3:])):
                assert parts[medium].cost == pytest.approx(sum(m.total.cost for m in of), abs=1e-9)
            assert parts["gas"].wh_equivalent == pytest.approx(parts["gas"].value * 11.2)
    june = await consumption(store, db, site, "panel:sub", "day", date(2026, 6, 2), today=TODAY)
    # the second tariff (Tuesday, 12:00 and 13:00 local): 0.30/kWh, 5/m³ water, 1.5/m³ gas
    assert june.total.cost == pytest.approx(2 * (0.6 * 0.30 + 0.08 * 5.0 + 0.04 * 1.5))

    # `ews replay` rebuilds the same figures, unpriced hours and flags included
    live = await answers(store, db, site)
    result = await replay(settings, database=f"{db}_replay", batch_size=300, progress=None)
    assert result.readings == len(events)
    assert await answers(store, f"{db}_replay", site) == live
    assert await asyncio.to_thread(dump, settings.clickhouse_dsn, f"{db}_replay") == await asyncio.to_thread(
        dump, settings.clickhouse_dsn, db
    )
    costs = [
        await store.query(
            f"SELECT day, round(sum(cost), 9) FROM {d}.consumption_daily GROUP BY day ORDER BY day"
        )
        for d in (db, f"{db}_replay")
    ]
    assert costs[0] == costs[1]


async def test_a_first_tariff_in_the_future_prices_nothing(settings: Settings, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("EWS_SITE_FILE", str(variant(tmp_path, "2027-01-01")))
    settings = Settings()
    store, db, site = get_store(settings.clickhouse_dsn), settings.clickhouse_database, settings.site
    agg = Aggregator(store, db, site)
    await agg.start()
    await agg.store_batch(history())
    glob = await consumption(store, db, site, "total-global", "year", FIRST, today=TODAY)
    assert glob.has_data and glob.total.cost == 0.0 and glob.total.standing_charge is None
    assert glob.total.unpriced is True and glob.priced_from == date(2027, 1, 1)
    assert [b.unpriced for b in glob.buckets[3:7]] == [None, True, True, None]  # April … July
    m1 = await consumption(store, db, site, "device:m1", "month", date(2026, 6, 2), today=TODAY)
    assert m1.total.value == 800.0 and m1.total.cost == 0.0 and m1.buckets[1].unpriced is True
    rows = await store.query(f"SELECT countIf(cost != 0) FROM {db}.consumption_hourly")
    assert rows[0][0] == 0
