"""ews_analytics: scopes, periods, buckets (unit) and consumption() on chDB with hand-written hour rows."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
import yaml
from ews_analytics import consumption, migrate, period_range, previous_day, resolve_scope
from ews_analytics.queries import bucket_starts
from ews_contracts.settings import BUNDLED_DEMO_SITE
from ews_contracts.site import Site
from ews_contracts.store import get_store

EA, WATER, GAS = "energy_active_import", "water_volume", "gas_volume"


@pytest.fixture(scope="module")
def site() -> Site:
    """The demo site plus an excluded electricity meter and a zone without devices."""
    data = yaml.safe_load(BUNDLED_DEMO_SITE.read_text())
    data["devices"].append(
        {
            "id": "sub1",
            "name": "Sub-meter",
            "profile": "energy-meter-rs485-3ph",
            "gateway": "gw1",
            "address": 3,
            "zone": "building",
            "circuit": "offices",
            "exclude_from_total": True,
        }
    )
    data["devices"].append(
        {
            "id": "pv",
            "name": "Pulse kWh meter",
            "profile": "pulse-concentrator-004687",
            "gateway": "gw1",
            "address": 5,
            "position": 3,
            "medium": "electricity",
            "pulse_weight": 1,
        }
    )
    data["zones"].append({"id": "empty", "name": "Nothing here"})
    data["tariffs"].append({"effective_from": "2026-06-01", "electricity_per_kwh": 0.30})
    return Site.model_validate(data)


def test_scopes(site: Site):
    sel = resolve_scope(site, "total-electricity")
    assert (sel.unit, sel.in_currency, sel.groups) == ("Wh", False, {EA: ("m1", "e2", "ev1", "pv")})
    sel = resolve_scope(site, "total-global")
    assert (sel.unit, sel.in_currency) == ("EUR", True)
    assert sel.groups == {EA: ("m1", "e2", "ev1", "pv"), WATER: ("water",), GAS: ("gas",)}
    assert resolve_scope(site, "zone:building").groups == {EA: ("m1", "e2", "sub1")}
    assert resolve_scope(site, "circuit:offices").groups == {EA: ("e2", "sub1")}
    utilities = resolve_scope(site, "circuit:utilities")  # water + gas only: in money
    assert (utilities.unit, utilities.in_currency) == ("EUR", True)
    assert resolve_scope(site, "zone:empty").groups == {}
    assert resolve_scope(site, "device:water").groups == {WATER: ("water",)}
    assert resolve_scope(site, "device:water").unit == "dm³"
    assert resolve_scope(site, "device:pv").groups == {EA: ("pv",)}


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        ("everything", "unknown scope 'everything': use total-electricity"),
        ("zone:", "unknown scope 'zone:'"),
        ("panel:main", "unknown scope 'panel:main'"),
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
    with pytest.raises(ValueError, match="unknown period 'week': use day, month, year or decade"):
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


async def _hour(store, db, device, quantity, hour, value, cost, last_minute=59):
    await store.insert(
        f"{db}.energy_hourly",
        [("demo", device, quantity, hour, value, cost, hour.replace(minute=last_minute))],
        ["site", "device", "quantity", "hour", "value", "cost", "last_end"],
    )


@pytest.mark.integration
async def test_consumption_on_chdb(site: Site, chdb_dsn: str, clickhouse_database: str):
    store, db = get_store(chdb_dsn), clickhouse_database
    await migrate(store, db)
    h = datetime(2026, 5, 4, 8, tzinfo=UTC)  # 10:00 in Paris
    await _hour(store, db, "e2", EA, h, 100.0, 0.02, last_minute=10)
    await _hour(store, db, "e2", EA, h, 400.0, 0.08, last_minute=50)  # newer version of the same hour
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

    with pytest.raises(ValueError, match="unknown period"):
        await consumption(store, db, site, "device:e2", "hour", date(2026, 5, 20))
    with pytest.raises(ValueError, match="unknown device"):
        await consumption(store, db, site, "device:nope", "day", date(2026, 5, 20))
