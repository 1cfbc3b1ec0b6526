"""Scopes holding several media answer in money with ``parts`` (like total-global); consumption before
the first tariff is unpriced (cost 0, ``unpriced: true``, no standing charge), in every period."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
import yaml
from ews_analytics import PriceBook, compare, consumption, migrate, resolve_scope, scope_kind
from ews_analytics.queries import check_split
from ews_contracts.site import Site
from ews_contracts.store import get_store

EA, WATER, GAS = "energy_active_import", "water_volume", "gas_volume"
PERIODS = ("day", "month", "year", "decade")

SITE = """
site: demo
name: Mixed scopes and the first tariff
timezone: Europe/Paris
currency: EUR
gas_wh_per_dm3: 11.2
tariffs:
  - {effective_from: 2026-05-04, electricity_per_kwh: 0.20, water_per_m3: 4.0, gas_per_m3: 1.0,
     electricity_standing_per_day: 0.5, water_standing_per_day: 0.1,
     time_of_use: [{name: night, start: "22:00", end: "06:00", electricity_per_kwh: 0.10}]}
  - {effective_from: 2026-06-01, electricity_per_kwh: 0.30, water_per_m3: 5.0, gas_per_m3: 1.5}
gateways: [{id: gw1, host: 127.0.0.1}, {id: gw2, host: 127.0.0.2}]
panels: [{id: main, name: Main}, {id: floor, name: Floor}]
zones: [{id: building, name: Building}, {id: plant, name: Plant room}]
circuits:
  - {id: light, name: Lighting, zone: building}
  - {id: boiler, name: Boiler, zone: plant}
devices:
  - {id: m1, name: M1, profile: multifunction-meter-412045, gateway: gw1, address: 1, panel: main,
     zone: building, circuit: light}
  - {id: e2, name: E2, profile: energy-meter-rs485-3ph, gateway: gw2, address: 2, panel: floor,
     zone: building}
  - {id: water, name: Water, profile: pulse-concentrator-004687, gateway: gw1, address: 5, position: 1,
     medium: water, pulse_weight: 10, panel: main, zone: plant, circuit: boiler}
  - {id: gas, name: Gas, profile: pulse-concentrator-004687, gateway: gw1, address: 5, position: 2,
     medium: gas, pulse_weight: 10, panel: main, zone: plant, circuit: boiler}
"""

MEDIUM = {"m1": "electricity", "e2": "electricity", "water": "water", "gas": "gas"}
QUANTITY = {"m1": EA, "e2": EA, "water": WATER, "gas": GAS}
DEVICE = {"electricity": "m1", "water": "water", "gas": "gas"}  # panel:main's meter of each medium


@pytest.fixture(scope="module")
def site() -> Site:
    return Site.model_validate(yaml.safe_load(SITE))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# (device, UTC hour, value in Wh or dm³): before the first tariff (2026-05-04) and after it, over two
# tariffs, two years and a DST day
ROWS = [
    ("m1", utc(2025, 12, 31, 10), 100.0),  # last year: unpriced
    ("m1", utc(2026, 4, 10, 8), 250.0),  # April: unpriced
    ("water", utc(2026, 5, 2, 10), 40.0),  # May 2nd: unpriced
    ("m1", utc(2026, 5, 3, 21), 300.0),  # 23:00 on May 3rd: the last unpriced hour
    ("m1", utc(2026, 5, 3, 22), 400.0),  # 00:00 on May 4th: the first priced hour (night window)
    ("m1", utc(2026, 5, 4, 10), 1000.0),  # 12:00: base price
    ("water", utc(2026, 5, 4, 10), 70.0),
    ("gas", utc(2026, 5, 5, 10), 30.0),  # the gas meter only counts once priced
    ("e2", utc(2026, 5, 5, 10), 500.0),  # floor panel (electricity only)
    ("m1", utc(2026, 6, 2, 10), 2000.0),  # the second tariff
    ("gas", utc(2026, 6, 2, 10), 20.0),
    ("water", utc(2026, 10, 25, 1), 15.0),  # 02:00 CET on the 25-hour day
    ("m1", utc(2026, 10, 25, 0), 123.456),  # 02:00 CEST on the 25-hour day
]


async def write_rows(store, db, site: Site, rows) -> None:
    """Hour rows priced as the aggregator prices them at ingest (PriceBook)."""
    book = PriceBook(site)
    await store.insert(
        f"{db}.consumption_hourly",
        [
            (
                "demo",
                dev,
                QUANTITY[dev],
                h,
                h.astimezone(site.tz).date(),
                round(v * 1000),
                0,
                v * book.per_unit(QUANTITY[dev], int(h.timestamp())),
            )
            for dev, h, v in rows
        ],
        ["site", "device", "quantity", "hour", "day", "value_milli", "estimated_milli", "cost"],
    )


@pytest.fixture
async def store_db(site: Site, chdb_dsn: str, clickhouse_database: str):
    store, db = get_store(chdb_dsn), clickhouse_database
    await migrate(store, db)
    await write_rows(store, db, site, ROWS)
    return store, db


def test_scopes_mixing_media_are_in_money(site: Site):
    main = resolve_scope(site, "panel:main")  # electricity, water and gas
    assert (main.unit, main.in_currency, main.standing) == ("EUR", True, ())
    assert main.groups == {EA: {"m1": 1}, WATER: {"water": 1}, GAS: {"gas": 1}}
    assert main.media == ("electricity", "gas", "water")
    assert scope_kind(main) == "money"
    gw1 = resolve_scope(site, "gateway:gw1")
    assert (gw1.unit, gw1.media) == ("EUR", ("electricity", "gas", "water"))
    building = resolve_scope(site, "zone:building")  # m1 + e2: one medium keeps its unit
    assert (building.unit, building.in_currency, building.groups) == ("Wh", False, {EA: {"m1": 1, "e2": 1}})
    plant = resolve_scope(site, "zone:plant")  # water + gas
    assert (plant.unit, plant.media) == ("EUR", ("gas", "water"))
    assert resolve_scope(site, "panel:floor").unit == "Wh"
    boiler = resolve_scope(site, "circuit:boiler")
    assert boiler.in_currency and boiler.groups == {WATER: {"water": 1}, GAS: {"gas": 1}}
    check_split(site, "panel:main", "medium")
    with pytest.raises(ValueError, match=r"split=circuit needs a scope in units .* 'panel:main'"):
        check_split(site, "panel:main", "circuit")


def cents(x: float) -> int:
    return round(x * 1e6)


@pytest.mark.integration
@pytest.mark.parametrize("period", PERIODS)
@pytest.mark.parametrize("day", [date(2026, 5, 4), date(2026, 6, 2), date(2026, 10, 25)])
async def test_a_mixed_panel_costs_the_sum_of_its_meters(site: Site, store_db, period: str, day: date):
    store, db = store_db
    panel = await consumption(store, db, site, "panel:main", period, day, today=date(2026, 12, 31))
    meters = {
        d: await consumption(store, db, site, f"device:{d}", period, day, today=date(2026, 12, 31))
        for d in ("m1", "water", "gas")
    }
    assert (panel.unit, panel.currency) == ("EUR", "EUR")
    assert panel.total.standing_charge is None  # standing charges belong to the site totals only
    for which in ("current", "previous"):
        buckets = panel.buckets if which == "current" else panel.previous.buckets
        for i, bucket in enumerate(buckets):
            parts = [(m.buckets if which == "current" else m.previous.buckets)[i] for m in meters.values()]
            assert cents(bucket.cost) == cents(sum(p.cost for p in parts)), (which, i)
            assert bucket.value == bucket.cost and bucket.unit == "EUR"
            assert bucket.no_data == (True if all(p.no_data for p in parts) else None)
            assert bucket.unpriced == (True if any(p.unpriced for p in parts) else None)
        total = panel.total if which == "current" else panel.previous.total
        totals = [(m.total if which == "current" else m.previous.total) for m in meters.values()]
        assert cents(total.cost) == cents(sum(t.cost for t in totals)) and total.value == total.cost
    # parts per medium, like total-global: units, cost, gas Wh equivalent
    assert [p.medium for p in panel.parts] == ["electricity", "gas", "water"]
    by_medium = {p.medium: p for p in panel.parts}
    for device, medium in (("m1", "electricity"), ("gas", "gas"), ("water", "water")):
        part, meter = by_medium[medium], meters[device].total
        assert (part.value, part.unit, cents(part.cost)) == (meter.value, meter.unit, cents(meter.cost))
    assert by_medium["gas"].wh_equivalent == pytest.approx(by_medium["gas"].value * 11.2)
    assert by_medium["electricity"].wh_equivalent is None
    # split=medium draws the money per medium, summing to the buckets (no standing charges here)
    split = await consumption(
        store, db, site, "panel:main", period, day, today=date(2026, 12, 31), split="medium"
    )
    keys = [f"medium:{p.medium}" for p in panel.parts if meters[DEVICE[p.medium]].has_data]
    assert [s.key for s in split.series] == keys  # the media with data in the period
    for i, bucket in enumerate(split.buckets):
        if not bucket.no_data:
            assert cents(sum(s.values[i] or 0.0 for s in split.series)) == cents(bucket.cost)


@pytest.mark.integration
async def test_single_medium_scopes_keep_their_unit(site: Site, store_db):
    store, db = store_db
    floor = await consumption(store, db, site, "panel:floor", "month", date(2026, 5, 5))
    assert (floor.unit, floor.total.value, floor.parts) == ("Wh", 500.0, [])
    assert floor.total.cost == pytest.approx(0.1)
    building = await consumption(store, db, site, "zone:building", "day", date(2026, 5, 4))
    assert (building.unit, building.total.value) == ("Wh", 1400.0)
    plant = await consumption(store, db, site, "zone:plant", "month", date(2026, 5, 4))
    assert plant.unit == "EUR" and [p.medium for p in plant.parts] == ["gas", "water"]
    assert plant.total.cost == pytest.approx(0.07 * 4.0 + 0.03 * 1.0)
    # a mixed scope and a single-medium one: compared in money
    both = await compare(store, db, site, "panel:main", "panel:floor", "month", date(2026, 5, 4))
    assert (both.mode, both.unit, both.a.kind, both.b.kind) == ("currency", "EUR", "money", "electricity")
    assert both.b.total.value == pytest.approx(0.1)
    # two money scopes: compared in money too
    two = await compare(store, db, site, "panel:main", "total-global", "month", date(2026, 5, 4))
    assert (two.mode, two.unit) == ("currency", "EUR")


@pytest.mark.integration
async def test_hours_before_the_first_tariff_are_unpriced(site: Site, store_db):
    store, db = store_db
    today = date(2026, 12, 31)

    day = await consumption(store, db, site, "device:m1", "day", date(2026, 5, 3), today=today)
    assert day.priced_from == date(2026, 5, 4)
    assert [(i, b.value, b.cost) for i, b in enumerate(day.buckets) if not b.no_data] == [(23, 300.0, 0.0)]
    assert day.buckets[23].unpriced is True and day.buckets[22].unpriced is None  # no data there
    assert day.total.unpriced is True and day.total.cost == 0.0
    data = day.model_dump(mode="json")
    assert data["buckets"][23]["unpriced"] is True and "unpriced" not in data["buckets"][22]
    assert data["priced_from"] == "2026-05-04"

    first = await consumption(store, db, site, "device:m1", "day", date(2026, 5, 4), today=today)
    assert first.buckets[0].cost == pytest.approx(0.04) and first.buckets[0].unpriced is None  # night
    assert first.total.unpriced is None and "unpriced" not in first.model_dump(mode="json")["total"]
    assert first.previous.total.unpriced is True  # May 3rd

    # the site total: no standing charge before the first tariff either
    glob = await consumption(store, db, site, "total-global", "month", date(2026, 5, 4), today=today)
    assert [b.unpriced for b in glob.buckets[1:4]] == [True, True, None]  # May 2, 3, 4
    assert glob.buckets[1].cost == 0.0 and glob.buckets[2].cost == 0.0  # no standing charge
    assert glob.buckets[3].cost == pytest.approx(0.04 + 0.2 + 0.28 + 0.6)  # energy, water, standing
    assert glob.total.unpriced is True and glob.previous.total.unpriced is True  # April
    assert glob.total.standing_charge == pytest.approx(28 * 0.6)  # May 4th … 31st
    elec = await consumption(store, db, site, "total-electricity", "month", date(2026, 4, 1), today=today)
    assert elec.total.standing_charge is None and elec.total.cost == 0.0 and elec.total.unpriced is True

    # a year: the month of the first tariff is unpriced when it has data before the 4th
    year = await consumption(store, db, site, "panel:main", "year", date(2026, 5, 4), today=today)
    assert [b.unpriced for b in year.buckets[3:6]] == [True, True, None]  # April, May, June
    assert year.previous.buckets[11].unpriced is True and year.previous.total.unpriced is True
    gas = await consumption(store, db, site, "device:gas", "year", date(2026, 5, 4), today=today)
    assert gas.buckets[4].unpriced is None and gas.total.unpriced is None  # counted from the 5th only
    water = await consumption(store, db, site, "device:water", "year", date(2026, 5, 4), today=today)
    assert water.buckets[4].unpriced is True and water.buckets[9].unpriced is None
    decade = await consumption(store, db, site, "total-global", "decade", date(2026, 5, 4), today=today)
    assert [b.unpriced for b in decade.buckets[-2:]] == [True, True]  # 2025 and 2026
    gas10 = await consumption(store, db, site, "device:gas", "decade", date(2026, 5, 4), today=today)
    assert gas10.total.unpriced is None

    # the comparison carries the flags (and, in money, keeps them)
    both = await compare(store, db, site, "device:m1", "device:gas", "month", date(2026, 5, 4), today=today)
    assert both.a.total.unpriced is True and both.b.total.unpriced is None
    assert both.a.buckets[2].unpriced is True and both.priced_from == date(2026, 5, 4)


@pytest.mark.integration
async def test_a_first_tariff_in_the_future(site: Site, store_db):
    store, db = store_db
    future = Site.model_validate(
        {**site.model_dump(mode="json"), "tariffs": [{**site.tariffs[0].model_dump(mode="json"),
                                                      "effective_from": "2027-01-01"}]}
    )  # fmt: skip
    await write_rows(store, db, future, [("e2", utc(2026, 7, 1, 10), 1000.0)])
    today = date(2026, 7, 2)
    glob = await consumption(store, db, future, "total-global", "month", today, today=today)
    assert glob.total.cost == 0.0 and glob.total.standing_charge is None and glob.total.unpriced is True
    assert glob.buckets[0].unpriced is True and glob.buckets[1].unpriced is None  # July 2nd: no data
    assert glob.priced_from == date(2027, 1, 1)
