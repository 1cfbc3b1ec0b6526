"""ews_analytics: scopes, periods, buckets (unit) and consumption() on chDB with hand-written hour rows."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
import yaml
from ews_analytics import compare, consumption, migrate, period_range, previous_day, resolve_scope
from ews_analytics.queries import bucket_starts
from ews_contracts.site import Site
from ews_contracts.store import get_store

EA, WATER, GAS = "energy_active_import", "water_volume", "gas_volume"


def one(*devices: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in devices:
        out[d] = out.get(d, 0) + 1
    return out


SITE = """
site: demo
name: Analytics test site
timezone: Europe/Paris
currency: EUR
tariffs:
  - {effective_from: 2020-01-01, electricity_per_kwh: 0.2516, water_per_m3: 4.15, gas_per_m3: 1.21}
  - {effective_from: 2026-06-01, electricity_per_kwh: 0.30, electricity_standing_per_day: 0.5,
     gas_standing_per_day: 0.25}
gateways: [{id: gw1, host: 127.0.0.1}]
panels: [{id: main, name: Main}]
zones: [{id: building, name: Building}, {id: parking, name: Parking}, {id: empty, name: Nothing here}]
circuits:
  - {id: hvac-lighting, name: HVAC and lighting, zone: building}
  - {id: offices, name: Offices, zone: building}
  - {id: ev, name: EV, zone: parking}
  - {id: utilities, name: Water and gas, zone: building}
devices:
  - {id: m1, name: M1, profile: multifunction-meter-412045, gateway: gw1, address: 1, panel: main,
     zone: building, circuit: hvac-lighting}
  - {id: e2, name: E2, profile: energy-meter-rs485-3ph, gateway: gw1, address: 2, panel: main,
     zone: building, circuit: offices}
  - {id: water, name: Water, profile: pulse-concentrator-004687, gateway: gw1, address: 5, position: 1,
     medium: water, pulse_weight: 10, zone: building, circuit: utilities}
  - {id: gas, name: Gas, profile: pulse-concentrator-004687, gateway: gw1, address: 5, position: 2,
     medium: gas, pulse_weight: 10, zone: building, circuit: utilities}
  - {id: ev1, name: EV, profile: ev-station-greenup, gateway: gw1, address: 8, panel: main, zone: parking,
     circuit: ev}
  - {id: sub1, name: Sub-meter, profile: energy-meter-rs485-3ph, gateway: gw1, address: 3, zone: building,
     circuit: offices, exclude_from_total: true}
  - {id: pv, name: Pulse kWh meter, profile: pulse-concentrator-004687, gateway: gw1, address: 5,
     position: 3, medium: electricity, pulse_weight: 1}
"""


@pytest.fixture(scope="module")
def site() -> Site:
    """Real and excluded electricity meters, pulse meters of every medium, a zone without devices."""
    return Site.model_validate(yaml.safe_load(SITE))


def test_scopes(site: Site):
    sel = resolve_scope(site, "total-electricity")
    assert (sel.unit, sel.in_currency, sel.groups) == ("Wh", False, {EA: one("m1", "e2", "ev1", "pv")})
    assert sel.standing == ("electricity",)
    sel = resolve_scope(site, "total-global")
    assert (sel.unit, sel.in_currency) == ("EUR", True)
    assert sel.groups == {EA: one("m1", "e2", "ev1", "pv"), WATER: one("water"), GAS: one("gas")}
    building = resolve_scope(site, "zone:building")  # electricity, water and gas: in money, like total-global
    assert (building.unit, building.in_currency, building.standing) == ("EUR", True, ())
    assert building.groups == {EA: one("m1", "e2", "sub1"), WATER: one("water"), GAS: one("gas")}
    assert resolve_scope(site, "zone:parking").groups == {EA: one("ev1")}
    assert resolve_scope(site, "circuit:offices").groups == {EA: one("e2", "sub1")}
    utilities = resolve_scope(site, "circuit:utilities")  # water + gas only: in money
    assert (utilities.unit, utilities.in_currency) == ("EUR", True)
    assert resolve_scope(site, "zone:empty").groups == {}
    assert resolve_scope(site, "device:water").groups == {WATER: one("water")}
    assert resolve_scope(site, "device:water").unit == "dm³"
    assert resolve_scope(site, "device:pv").groups == {EA: one("pv")}
    assert resolve_scope(site, "panel:main").groups[EA] == one("m1", "e2", "ev1")
    assert resolve_scope(site, "gateway:gw1").groups[EA] == one("m1", "e2", "ev1", "sub1", "pv")


def test_virtual_devices_are_linear_combinations(site: Site):
    data = site.model_dump(mode="json")
    data["virtual_devices"] = [
        {"id": "others", "name": "Rest of offices", "master": "sub1", "slaves": ["e2"], "circuit": "offices"},
        {
            "id": "ev-rest",
            "name": "m1 minus others",
            "master": "m1",
            "slaves": ["others"],
            "exclude_from_total": True,
        },
    ]
    virtual = Site.model_validate(data)
    # sub1 (excluded) − e2 counted in the total: e2 + (sub1 − e2) = sub1 in place of e2
    assert resolve_scope(virtual, "total-electricity").groups == {EA: one("m1", "ev1", "pv", "sub1")}
    assert resolve_scope(virtual, "device:others").groups == {EA: {"sub1": 1, "e2": -1}}
    assert resolve_scope(virtual, "device:ev-rest").groups == {EA: {"m1": 1, "sub1": -1, "e2": 1}}
    assert resolve_scope(virtual, "circuit:offices").groups == {EA: {"sub1": 2}}  # e2 + sub1 + (sub1 − e2)
    bad = dict(data, virtual_devices=[{"id": "x", "name": "x", "master": "m1", "slaves": ["water"]}])
    with pytest.raises(ValueError, match="same medium"):
        Site.model_validate(bad)
    bad = dict(data, virtual_devices=[{"id": "x", "name": "x", "master": "m1", "slaves": ["nope"]}])
    with pytest.raises(ValueError, match="unknown device 'nope'"):
        Site.model_validate(bad)


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        ("everything", "unknown scope 'everything': use total-electricity"),
        ("zone:", "unknown scope 'zone:'"),
        ("panel:nope", "unknown panel 'nope' in scope 'panel:nope': use one of main"),
        ("site:main", "unknown scope 'site:main'"),
        ("zone:garden", "unknown zone 'garden' in scope 'zone:garden': use one of building, parking, empty"),
        ("circuit:x", "unknown circuit 'x'"),
        ("device:m99", "unknown device 'm99' in scope 'device:m99': use one of m1, e2"),
    ],
)
def test_bad_scopes_name_the_problem_and_the_fix(site: Site, scope: str, message: str):
    with pytest.raises(ValueError) as err:
        resolve_scope(site, scope)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_periods():
    d = date(2026, 3, 31)
    assert period_range("day", d) == (d, date(2026, 4, 1))
    assert period_range("month", d) == (date(2026, 3, 1), date(2026, 4, 1))
    assert period_range("month", date(2026, 12, 5)) == (date(2026, 12, 1), date(2027, 1, 1))
    assert period_range("year", d) == (date(2026, 1, 1), date(2027, 1, 1))
    assert period_range("decade", d) == (date(2017, 1, 1), date(2027, 1, 1))
    assert previous_day("day", date(2026, 3, 1)) == date(2026, 2, 28)
    assert previous_day("month", date(2026, 1, 15)) == date(2025, 12, 31)
    assert previous_day("year", d) == date(2025, 1, 1)
    assert period_range("decade", previous_day("decade", d)) == (date(2007, 1, 1), date(2017, 1, 1))
    with pytest.raises(ValueError, match="unknown period 'week': use day, month, year, decade"):
        period_range("week", d)


def test_buckets_follow_local_time(site: Site):
    assert len(bucket_starts("day", date(2026, 10, 25), site)) == 25
    assert len(bucket_starts("day", date(2026, 3, 29), site)) == 23
    assert len(bucket_starts("day", date(2026, 5, 4), site)) == 24
    assert len(bucket_starts("month", date(2024, 2, 10), site)) == 29
    months = bucket_starts("year", date(2026, 5, 4), site)
    assert [s.isoformat() for _, s in months[2:4]] == [
        "2026-03-01T00:00:00+01:00",
        "2026-04-01T00:00:00+02:00",
    ]
    years = bucket_starts("decade", date(2026, 5, 4), site)
    assert [k for k, _ in years] == [date(y, 1, 1) for y in range(2017, 2027)]


async def _hour(store, db, device, quantity, hour, value, cost, estimated=0.0):
    day = hour.astimezone(ZoneInfo("Europe/Paris")).date()
    await store.insert(
        f"{db}.consumption_hourly",
        [("demo", device, quantity, hour, day, round(value * 1000), round(estimated * 1000), cost)],
        ["site", "device", "quantity", "hour", "day", "value_milli", "estimated_milli", "cost"],
    )


@pytest.mark.integration
async def test_consumption_on_chdb(site: Site, chdb_dsn: str, clickhouse_database: str):
    store, db = get_store(chdb_dsn), clickhouse_database
    await migrate(store, db)
    h = datetime(2026, 5, 4, 8, tzinfo=UTC)  # 10:00 in Paris
    await _hour(store, db, "e2", EA, h, 100.0, 0.02)
    await _hour(store, db, "e2", EA, h, 300.0, 0.06, estimated=300.0)  # a correction of the same hour adds
    await _hour(store, db, "sub1", EA, h, 999.0, 0.2)  # excluded from totals, counted in its circuit
    await _hour(store, db, "pv", EA, h, 50.0, 0.01)
    await _hour(store, db, "water", WATER, h, 1000.0, 4.15)
    await _hour(store, db, "gas", GAS, h, 10.0, 0.5)
    await _hour(store, db, "e2", EA, datetime(2026, 5, 3, 21, tzinfo=UTC), 7.0, 0.001)  # 23:00 local, May 3rd
    await _hour(store, db, "e2", EA, datetime(2026, 5, 4, 22, tzinfo=UTC), 9.0, 0.002)  # 00:00 local, May 5th

    day = await consumption(store, db, site, "total-electricity", "day", date(2026, 5, 4))
    assert day.total.value == 450.0 and day.total.cost == pytest.approx(0.09)
    assert [(b.start.hour, b.value) for b in day.buckets if b.value] == [(10, 450.0)]
    assert day.previous.total.value == 7.0
    assert day.model_dump(mode="json")["buckets"][10]["start"] == "2026-05-04T10:00:00+02:00"

    glob = await consumption(store, db, site, "total-global", "day", date(2026, 5, 4))
    assert glob.unit == "EUR" and glob.total.value == pytest.approx(0.09 + 4.15 + 0.5)

    circuit = await consumption(store, db, site, "circuit:offices", "day", date(2026, 5, 4))
    assert circuit.total.value == 1399.0
    utilities = await consumption(store, db, site, "circuit:utilities", "day", date(2026, 5, 4))
    assert utilities.unit == "EUR" and utilities.total.value == pytest.approx(4.65)
    empty = await consumption(store, db, site, "zone:empty", "month", date(2026, 5, 4))
    assert len(empty.buckets) == 31 and empty.total.value == 0.0

    month = await consumption(store, db, site, "device:e2", "month", date(2026, 5, 20))
    assert [b.value for b in month.buckets[2:5]] == [7.0, 400.0, 9.0]
    year = await consumption(store, db, site, "device:e2", "year", date(2026, 5, 20))
    assert year.buckets[4].value == 416.0 and year.total.value == 416.0

    assert day.buckets[10].estimated == 300.0 and day.total.estimated == 300.0
    gas = await consumption(store, db, site, "device:gas", "day", date(2026, 5, 4))
    assert gas.total.wh_equivalent == pytest.approx(112.0)  # 10 dm³ × 11.2 Wh/dm³
    assert "estimated" not in gas.model_dump(mode="json")["total"]  # optional fields only when they apply
    assert [p.medium for p in glob.parts] == ["electricity", "gas", "water"]

    # standing charges: from the tariff's date, never in the future, in the site totals only
    june = datetime(2026, 6, 2, 8, tzinfo=UTC)
    await _hour(store, db, "e2", EA, june, 1000.0, 0.3)
    month = await consumption(
        store, db, site, "total-electricity", "month", date(2026, 6, 2), today=date(2026, 6, 3)
    )
    assert [b.cost for b in month.buckets[:4]] == [0.5, pytest.approx(0.8), 0.5, 0.0]
    assert month.total.standing_charge == 1.5 and month.total.cost == pytest.approx(1.8)
    glob = await consumption(store, db, site, "total-global", "day", date(2026, 6, 2), today=date(2026, 6, 3))
    assert glob.total.value == pytest.approx(0.3 + 0.75) and len(glob.buckets) == 24
    assert glob.buckets[0].cost == pytest.approx(0.75 / 24)
    dev = await consumption(store, db, site, "device:e2", "day", date(2026, 6, 2), today=date(2026, 6, 3))
    assert dev.total.cost == pytest.approx(0.3) and dev.total.standing_charge is None

    # comparison (C4): same kind in units, different kinds in money only
    same = await compare(store, db, site, "device:e2", "circuit:offices", "day", date(2026, 5, 4))
    assert (same.mode, same.unit, same.a.total.value, same.b.total.value) == ("units", "Wh", 400.0, 1399.0)
    assert len(same.a.buckets) == 24
    mixed = await compare(store, db, site, "device:e2", "device:water", "day", date(2026, 5, 4), "total")
    assert (mixed.mode, mixed.unit, mixed.a.kind, mixed.b.kind) == ("currency", "EUR", "electricity", "water")
    assert mixed.a.total.value == pytest.approx(0.08) and mixed.b.total.value == pytest.approx(4.15)
    assert mixed.a.buckets == [] and mixed.b.total.unit == "EUR"
    with pytest.raises(ValueError, match="unknown detail 'all': use total, detailed"):
        await compare(store, db, site, "device:e2", "device:water", "day", date(2026, 5, 4), "all")

    with pytest.raises(ValueError, match="unknown period"):
        await consumption(store, db, site, "device:e2", "hour", date(2026, 5, 20))
    with pytest.raises(ValueError, match="unknown device"):
        await consumption(store, db, site, "device:nope", "day", date(2026, 5, 20))
