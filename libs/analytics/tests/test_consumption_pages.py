"""What the pages need from ews_analytics: no-data buckets, the previous period's buckets, the split by
circuit (exact, virtual devices included), the summary, raw quantity series and the date span."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
import yaml
from ews_analytics import (
    MAX_DATE,
    MIN_DATE,
    check_day,
    check_quantities,
    check_split,
    compare,
    consumption,
    migrate,
    quantity_series,
    summary,
)
from ews_contracts.site import Site
from ews_contracts.store import get_store

EA, WATER = "energy_active_import", "water_volume"
PARIS = ZoneInfo("Europe/Paris")

SITE = """
site: demo
name: Pages test site
timezone: Europe/Paris
currency: EUR
tariffs:
  - {effective_from: 2020-01-01, electricity_per_kwh: 0.25, water_per_m3: 4.0, gas_per_m3: 1.2,
     electricity_standing_per_day: 0.5}
gateways: [{id: gw1, host: 127.0.0.1}]
zones: [{id: building, name: Building}, {id: empty, name: Nothing here}]
circuits:
  - {id: light, name: Lighting, zone: building}
  - {id: offices, name: Offices, zone: building}
  - {id: ev, name: EV chargers}
devices:
  - {id: m1, name: M1, profile: multifunction-meter-412045, gateway: gw1, address: 1, circuit: light}
  - {id: e2, name: E2, profile: energy-meter-rs485-3ph, gateway: gw1, address: 2, circuit: offices}
  - {id: sub1, name: Sub, profile: energy-meter-rs485-3ph, gateway: gw1, address: 3, circuit: offices,
     exclude_from_total: true}
  - {id: pv, name: Pulse kWh, profile: pulse-concentrator-004687, gateway: gw1, address: 5, position: 3,
     medium: electricity, pulse_weight: 1}
  - {id: water, name: Water, profile: pulse-concentrator-004687, gateway: gw1, address: 5, position: 1,
     medium: water, pulse_weight: 10, circuit: offices}
  - {id: gas, name: Gas, profile: pulse-concentrator-004687, gateway: gw1, address: 5, position: 2,
     medium: gas, pulse_weight: 10}
# sub1 − e2, counted in the total, in another circuit than e2: e2 cancels out of the total (coefficient 0)
# but not out of the circuits (offices +e2, ev −e2)
virtual_devices:
  - {id: rest, name: Rest, master: sub1, slaves: [e2], circuit: ev}
"""


@pytest.fixture(scope="module")
def site() -> Site:
    return Site.model_validate(yaml.safe_load(SITE))


def milli(x: float | None) -> int:
    assert x is not None
    return round(x * 1000)


async def _hours(store, db, rows) -> None:
    await store.insert(
        f"{db}.consumption_hourly",
        [
            ("demo", d, q, h, h.astimezone(PARIS).date(), round(v * 1000), 0, v / 1000 * 0.25)
            for d, q, h, v in rows
        ],
        ["site", "device", "quantity", "hour", "day", "value_milli", "estimated_milli", "cost"],
    )


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# 2026-10-25 in Paris: 25 hours, local midnight = 2026-10-24 22:00 UTC, bucket i = 22:00Z + i hours
FALL_ROWS = [
    ("m1", EA, utc(2026, 10, 25, 0), 100.001),  # 02:00 CEST (bucket 2)
    ("m1", EA, utc(2026, 10, 25, 1), 200.002),  # 02:00 CET (bucket 3)
    ("e2", EA, utc(2026, 10, 25, 0), 50.5),
    ("sub1", EA, utc(2026, 10, 25, 0), 80.25),
    ("e2", EA, utc(2026, 10, 25, 3), 20.0),  # bucket 5: only e2, which cancels out of the total
    ("sub1", EA, utc(2026, 10, 25, 5), 10.0),  # bucket 7
    ("pv", EA, utc(2026, 10, 25, 5), 3.333),
    ("m1", EA, utc(2026, 10, 24, 10), 7.0),  # the day before, 12:00 CEST
    ("m1", EA, utc(2026, 9, 30, 10), 1.5),  # September
    ("water", WATER, utc(2026, 10, 25, 5), 12.0),
]


@pytest.fixture
async def store_db(chdb_dsn: str, clickhouse_database: str):
    store, db = get_store(chdb_dsn), clickhouse_database
    await migrate(store, db)
    await _hours(store, db, FALL_ROWS)
    return store, db


@pytest.mark.integration
async def test_dst_day_no_data_previous_buckets_and_split(site: Site, store_db):
    store, db = store_db
    day = date(2026, 10, 25)
    c = await consumption(store, db, site, "total-electricity", "day", day, today=day, split="circuit")
    assert len(c.buckets) == 25 and len(c.previous.buckets) == 24 and c.has_data
    with_data = [i for i, b in enumerate(c.buckets) if not b.no_data]
    assert with_data == [2, 3, 5, 7]
    assert [c.buckets[i].value for i in with_data] == [180.251, 200.002, 0.0, 13.333]
    assert c.total.value == 393.586 and c.total.no_data is None
    # JSON: no_data only where it applies; previous period's buckets with their own local starts
    data = c.model_dump(mode="json")
    assert data["buckets"][0]["no_data"] is True and "no_data" not in data["buckets"][2]
    assert data["buckets"][2]["start"] == "2026-10-25T02:00:00+02:00"
    assert data["buckets"][3]["start"] == "2026-10-25T02:00:00+01:00"
    assert data["previous"]["buckets"][12]["start"] == "2026-10-24T12:00:00+02:00"
    assert c.previous.buckets[12].value == 7.0 and c.previous.total.value == 7.0
    assert sum(1 for b in c.previous.buckets if not b.no_data) == 1

    # split by circuit: declared order, then devices without a circuit
    series = {s.key: s for s in c.series}
    assert list(series) == ["circuit:light", "circuit:offices", "circuit:ev", "none"]
    assert [s.name for s in c.series] == ["Lighting", "Offices", "EV chargers", ""]
    assert series["circuit:offices"].values[2] == 50.5
    assert series["circuit:ev"].values[2] == 29.75  # sub1 − e2 (negative coefficient)
    assert series["circuit:offices"].values[5] == 20.0 and series["circuit:ev"].values[5] == -20.0
    assert series["none"].values[7] == 3.333 and series["none"].values[2] == 0.0  # data in the bucket
    for i, bucket in enumerate(c.buckets):
        values = [s.values[i] for s in c.series]
        if bucket.no_data:
            assert values == [None] * 4
        else:  # exact, in milli-units
            assert sum(milli(v) for v in values) == milli(bucket.value)
    assert sum(milli(s.total) for s in c.series) == milli(c.total.value)
    standing = c.total.standing_charge or 0.0
    assert sum(s.cost for s in c.series) + standing == pytest.approx(c.total.cost)

    # the day after the DST change: 24 buckets, the previous day's 25
    after = await consumption(store, db, site, "total-electricity", "day", date(2026, 10, 26))
    assert len(after.buckets) == 24 and len(after.previous.buckets) == 25
    assert after.previous.total.value == 393.586 and after.total.no_data and not after.has_data
    # without split: same buckets, no series
    plain = await consumption(store, db, site, "total-electricity", "day", day, today=day)
    assert plain.series == [] and [b.value for b in plain.buckets] == [b.value for b in c.buckets]
    assert [b.no_data for b in plain.buckets] == [b.no_data for b in c.buckets]


@pytest.mark.integration
async def test_spring_day_and_month_split(site: Site, store_db):
    store, db = store_db
    await _hours(store, db, [("e2", EA, utc(2026, 3, 29, 1), 5.0), ("rest", EA, utc(2026, 3, 29, 1), 99.0)])
    spring = await consumption(store, db, site, "device:e2", "day", date(2026, 3, 29), split="circuit")
    assert len(spring.buckets) == 23 and [b.value for b in spring.buckets if not b.no_data] == [5.0]
    assert spring.buckets[2].start.isoformat() == "2026-03-29T03:00:00+02:00"
    assert [s.key for s in spring.series] == ["circuit:offices"]
    # the offices circuit also holds the water meter: water is not summed with Wh, the circuit is in money
    offices = await consumption(store, db, site, "circuit:offices", "day", date(2026, 3, 29), split="medium")
    assert offices.unit == "EUR" and [p.medium for p in offices.parts] == ["electricity", "water"]
    assert [s.key for s in offices.series] == ["medium:electricity"]  # no water that day

    # month: the previous month has its own length; month buckets split exactly too
    month = await consumption(
        store, db, site, "total-electricity", "month", date(2026, 10, 5), split="circuit"
    )
    assert len(month.buckets) == 31 and len(month.previous.buckets) == 30
    assert month.previous.buckets[29].value == 1.5 and month.previous.total.value == 1.5
    assert month.buckets[23].value == 7.0 and month.buckets[24].value == 393.586
    assert [i for i, b in enumerate(month.buckets) if not b.no_data] == [23, 24]  # Oct 24 and 25 (local)
    for i, bucket in enumerate(month.buckets):
        if not bucket.no_data:
            assert sum(milli(s.values[i]) for s in month.series) == milli(bucket.value)
    dec = await consumption(store, db, site, "device:rest", "decade", date(2026, 1, 1), split="circuit")
    assert [s.key for s in dec.series] == ["circuit:ev"] and dec.series[0].values[-1] == dec.buckets[-1].value
    assert dec.series[0].values[0] is None and len(dec.previous.buckets) == 10


@pytest.mark.integration
async def test_no_data_scopes(site: Site, store_db):
    store, db = store_db
    empty = await consumption(store, db, site, "zone:empty", "year", date(2026, 10, 25), split="circuit")
    assert not empty.has_data and all(b.no_data for b in empty.buckets) and empty.series == []
    assert empty.total.no_data and empty.previous.total.no_data
    gas = await consumption(store, db, site, "device:gas", "month", date(2026, 10, 25))
    assert not gas.has_data and gas.total.value == 0.0
    # money scopes: no_data follows the readings even though standing charges are drawn
    glob = await consumption(
        store, db, site, "total-global", "day", date(2026, 10, 20), today=date(2026, 10, 25)
    )
    assert glob.buckets[0].no_data and glob.buckets[0].cost > 0
    future = await consumption(store, db, site, "total-electricity", "year", date(2026, 10, 25))
    assert [b.no_data for b in future.buckets[9:]] == [None, True, True]  # Oct has data; Nov, Dec to come


@pytest.mark.integration
async def test_split_is_for_scopes_in_units(site: Site, store_db):
    store, db = store_db
    with pytest.raises(ValueError, match=r"split=circuit needs a scope in units .* 'total-global'"):
        await consumption(store, db, site, "total-global", "day", date(2026, 10, 25), split="circuit")
    with pytest.raises(ValueError, match="unknown split 'zone': use circuit"):
        await consumption(store, db, site, "total-electricity", "day", date(2026, 10, 25), split="zone")
    check_split(site, "device:water", "circuit")  # water alone is in dm³
    check_split(site, "total-global", None)
    with pytest.raises(ValueError, match=r"split=medium needs a scope summed in money"):
        check_split(site, "total-electricity", "medium")


@pytest.mark.integration
async def test_medium_split_of_total_global(site: Site, store_db):
    """split=medium: each bucket's money per medium; with the standing charge they make the bucket."""
    store, db = store_db
    h = utc(2026, 9, 13, 10)
    await _hours(
        store, db, [("m1", EA, h, 4000.0), ("gas", "gas_volume", h, 100.0), ("water", WATER, h, 50.0)]
    )
    await store.insert(  # gas and water priced as the aggregator would (per m³)
        f"{db}.consumption_hourly",
        [("demo", "gas", "gas_volume", h, h.astimezone(PARIS).date(), 0, 0, 0.12),
         ("demo", "water", WATER, h, h.astimezone(PARIS).date(), 0, 0, 0.2)],
        ["site", "device", "quantity", "hour", "day", "value_milli", "estimated_milli", "cost"],
    )  # fmt: skip
    result = await consumption(
        store, db, site, "total-global", "day", date(2026, 9, 13), today=date(2026, 9, 14), split="medium"
    )
    assert [s.key for s in result.series] == ["medium:electricity", "medium:gas", "medium:water"]
    hour = next(i for i, b in enumerate(result.buckets) if b.start.hour == 12)
    by_medium = {s.name: s.values[hour] for s in result.series}
    assert by_medium["electricity"] == pytest.approx(1.0)  # 4 kWh × 0.25
    standing = result.total.standing_charge or 0.0
    per_hour_standing = standing / len(result.buckets)
    assert sum(by_medium.values()) + per_hour_standing == pytest.approx(result.buckets[hour].value)
    assert sum(s.total for s in result.series) + standing == pytest.approx(result.total.cost)


@pytest.mark.integration
async def test_summary(site: Site, store_db):
    store, db = store_db
    s = await summary(store, db, site, "total-electricity", today=date(2026, 10, 25))
    assert (s.unit, s.currency, s.day) == ("Wh", "EUR", date(2026, 10, 25))
    assert (s.today.value, s.yesterday.value) == (393.586, 7.0)
    assert (s.this_month.value, s.last_month.value, s.this_year.value) == (400.586, 1.5, 402.086)
    assert s.last_year.no_data and s.last_year.value == 0.0 and s.today.no_data is None
    assert s.today.standing_charge == 0.5  # the day's standing charge (site totals)
    water = await summary(store, db, site, "device:water", today=date(2026, 10, 25))
    assert (water.unit, water.today.value, water.yesterday.no_data) == ("dm³", 12.0, True)
    assert "no_data" not in water.model_dump(mode="json")["today"]


@pytest.mark.integration
async def test_compare_carries_previous_buckets(site: Site, store_db):
    store, db = store_db
    day = date(2026, 10, 25)
    same = await compare(store, db, site, "device:m1", "device:rest", "day", day)
    assert len(same.a.previous.buckets) == 24 and same.a.previous.buckets[12].value == 7.0
    mixed = await compare(store, db, site, "device:m1", "device:water", "day", day)
    assert mixed.mode == "currency" and mixed.a.previous.buckets[12].unit == "EUR"
    assert mixed.a.previous.buckets[12].value == pytest.approx(7.0 / 1000 * 0.25)
    totals = await compare(store, db, site, "device:m1", "device:water", "day", day, "total")
    assert totals.a.buckets == [] and totals.a.previous.buckets == []


async def _readings(store, db, rows) -> None:
    await store.insert(
        f"{db}.readings",
        [
            ("demo", d, q, ts, v, "multifunction-meter-412045", f"ev{n}")
            for n, (d, q, ts, v) in enumerate(rows)
        ],
        ["site", "device", "quantity", "ts", "value", "profile", "event_id"],
    )


@pytest.mark.integration
async def test_quantity_series(site: Site, store_db):
    store, db = store_db
    rows = [
        ("m1", "power_active", utc(2026, 3, 29, 1, 10), 100.0),  # 03:10 CEST: bucket 2 of a 23-hour day
        ("m1", "power_active", utc(2026, 3, 29, 1, 40), 200.0),
        ("m1", "power_reactive", utc(2026, 3, 29, 22, 30), -5.0),  # 00:30 on the 30th: next day
        ("m1", "power_active", utc(2026, 3, 28, 22, 59), 1.0),  # 23:59 on the 28th
        ("e2", "power_active", utc(2026, 3, 29, 1, 10), 999.0),  # another device
    ]
    await _readings(store, db, rows)
    await _readings(store, db, rows[:1])  # a duplicate (redelivery): counted once
    day = date(2026, 3, 29)
    q = await quantity_series(store, db, site, "m1", ["power_active", "power_reactive"], "day", day)
    assert len(q.starts) == 23 and q.starts[2].isoformat() == "2026-03-29T03:00:00+02:00" and q.has_data
    active, reactive = q.series
    assert (active.quantity, active.unit, reactive.unit) == ("power_active", "W", "var")
    assert [(i, v) for i, v in enumerate(active.values) if v is not None] == [(2, 150.0)]
    assert (active.min[2], active.max[2]) == (100.0, 200.0)
    assert reactive.values == [None] * 23
    month = await quantity_series(store, db, site, "m1", ["power_reactive", "power_active"], "month", day)
    assert len(month.starts) == 31 and month.series[0].values[29] == -5.0
    assert month.series[1].values[27:29] == [1.0, 150.0]
    year = await quantity_series(store, db, site, "m1", ["power_active"], "year", day)
    assert year.series[0].values[2] == pytest.approx(301.0 / 3) and year.series[0].values[3] is None
    decade = await quantity_series(store, db, site, "m1", ["power_active"], "decade", day)
    assert decade.series[0].max[-1] == 200.0 and len(decade.starts) == 10
    nothing = await quantity_series(store, db, site, "pv", ["power_active"], "day", day)
    assert not nothing.has_data and nothing.series[0].values == [None] * 23


def test_quantity_checks(site: Site):
    assert check_quantities(site, "m1", ["power_active", "voltage_l1", "power_active"]) == [
        "power_active",
        "voltage_l1",
    ]
    with pytest.raises(ValueError, match="device 'rest' is virtual"):
        check_quantities(site, "rest", ["power_active"])
    with pytest.raises(ValueError, match="unknown device 'nope': use one of m1, e2"):
        check_quantities(site, "nope", ["power_active"])
    with pytest.raises(ValueError, match="unknown quantity 'watts'"):
        check_quantities(site, "m1", ["power_active", "watts"])
    with pytest.raises(ValueError, match="no quantity"):
        check_quantities(site, "m1", [])


@pytest.mark.parametrize(
    ("period", "day", "message"),
    [
        ("day", date(1, 1, 1), "date 0001-01-01 is out of range: use a date from 1970-01-01 to 2200-12-31"),
        ("day", date(9999, 12, 31), "date 9999-12-31 is out of range"),
        ("day", date(1969, 12, 31), "date 1969-12-31 is out of range"),
        ("decade", date(1975, 6, 1), "the decade of date 1975-06-01 (1966-01-01 to 1975-12-31) leaves"),
        ("month", date(2201, 1, 1), "date 2201-01-01 is out of range"),
        ("week", date(2026, 1, 1), "unknown period 'week'"),
    ],
)
def test_dates_out_of_range(period: str, day: date, message: str):
    with pytest.raises(ValueError) as err:
        check_day(period, day)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.integration
async def test_edges_of_the_date_span(site: Site, store_db):
    store, db = store_db
    assert (MIN_DATE, MAX_DATE) == (date(1970, 1, 1), date(2200, 12, 31))
    check_day("decade", date(1979, 12, 31))
    # the previous period (1969 …) or the whole period (beyond what the store holds) simply has no data
    for period, day in [
        ("day", MIN_DATE),
        ("month", MIN_DATE),
        ("year", MIN_DATE),
        ("decade", date(1979, 1, 1)),
        ("day", MAX_DATE),
        ("month", MAX_DATE),
        ("year", MAX_DATE),
        ("decade", MAX_DATE),
        ("day", date(2106, 2, 7)),
        ("month", date(2149, 6, 6)),
    ]:
        c = await consumption(store, db, site, "total-electricity", period, day, today=date(2026, 10, 25))
        assert not c.has_data and c.previous.total.no_data, (period, day)
        q = await quantity_series(store, db, site, "m1", ["power_active"], period, day)
        assert not q.has_data
    with pytest.raises(ValueError, match="out of range"):
        await consumption(store, db, site, "total-electricity", "day", date(1, 1, 1))


@pytest.mark.integration
async def test_split_when_a_device_cancels_out_of_every_circuit(store_db):
    """e2 is a slave of a virtual device in its own circuit: +1 and −1 in 'offices', nothing left."""
    store, db = store_db
    variant = Site.model_validate(
        yaml.safe_load(SITE.replace("circuit: ev}", "circuit: offices}"))  # rest = sub1 − e2, in offices
    )
    result = await consumption(
        store, db, variant, "total-electricity", "day", date(2026, 10, 25), split="circuit"
    )
    for i, bucket in enumerate(result.buckets):
        if bucket.no_data:
            continue
        assert milli(sum(s.values[i] or 0 for s in result.series)) == milli(bucket.value), i
    assert "circuit:offices" in {s.key for s in result.series}
