"""The answers kept for past periods (ews_analytics.cache): the same as without them, whatever is written."""

from __future__ import annotations

import inspect
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import yaml
from ews_analytics import consumption, migrate
from ews_analytics.cache import QUERY_CACHE, Part, QueryCache
from ews_contracts.site import Site
from ews_contracts.store import Store, get_store

EA, WATER = "energy_active_import", "water_volume"

SITE = """
site: demo
name: Cache test site
timezone: Europe/Paris
currency: EUR
tariffs:
  - {effective_from: 2020-01-01, electricity_per_kwh: 0.25, water_per_m3: 4.0, electricity_standing_per_day: 0.5}
gateways: [{id: gw1, host: 127.0.0.1}]
zones: [{id: building, name: Building}]
devices:
  - {id: m1, name: M1, profile: energy-meter-rs485-3ph, gateway: gw1, address: 1, zone: building}
  - {id: e2, name: E2, profile: energy-meter-rs485-3ph, gateway: gw1, address: 2, zone: building}
  - {id: water, name: Water, profile: pulse-concentrator-004687, gateway: gw1, address: 5, position: 1,
     medium: water, pulse_weight: 10, zone: building}
virtual_devices:
  - {id: rest, name: Rest, master: m1, slaves: [e2]}
"""
SCOPES = ("total-electricity", "total-global", "zone:building", "device:rest", "device:water")
DAY = date(2025, 1, 10)  # a past day, month, year and decade: their answers are kept


@pytest.fixture
def site() -> Site:
    return Site.model_validate(yaml.safe_load(SITE))


async def _hour(store, db, device, quantity, hour, value, cost=0.0):
    day = hour.astimezone(ZoneInfo("Europe/Paris")).date()
    await store.insert(
        f"{db}.consumption_hourly",
        [("demo", device, quantity, hour, day, round(value * 1000), 0, cost)],
        ["site", "device", "quantity", "hour", "day", "value_milli", "estimated_milli", "cost"],
    )


async def _answers(store, db, site) -> dict:
    return {
        (scope, period): (await consumption(store, db, site, scope, period, DAY)).model_dump(mode="json")
        for scope in SCOPES
        for period in ("day", "month", "year", "decade")
    }


async def _uncached(store, db, site) -> dict:
    QUERY_CACHE.enabled = False
    try:
        return await _answers(store, db, site)
    finally:
        QUERY_CACHE.enabled = True


@pytest.mark.integration
async def test_kept_answers_follow_every_change_of_their_rows(
    site: Site, chdb_dsn: str, clickhouse_database: str
):
    store, db = get_store(chdb_dsn), clickhouse_database
    await migrate(store, db)
    h = datetime(2025, 1, 10, 9, tzinfo=UTC)
    for device, value in (("m1", 500.0), ("e2", 200.0)):
        await _hour(store, db, device, EA, h, value, value / 4000)
    await _hour(store, db, "water", WATER, h, 40.0, 0.16)
    await _hour(store, db, "m1", EA, h - timedelta(days=1), 70.0, 0.0175)  # the previous day

    first = await _answers(store, db, site)
    assert first == await _uncached(store, db, site)
    assert first[("device:rest", "day")]["total"]["value"] == 300.0
    hits = QUERY_CACHE.hits
    assert await _answers(store, db, site) == first  # nothing written: every answer kept
    assert QUERY_CACHE.hits - hits == len(first)

    # the aggregator writing the current hour: outside these periods, the answers stay (and are kept)
    await _hour(store, db, "m1", EA, datetime.now(UTC).replace(minute=0, second=0, microsecond=0), 1.0)
    hits = QUERY_CACHE.hits
    assert await _answers(store, db, site) == first
    assert QUERY_CACHE.hits - hits == len(first)

    # a late reading inside the day, then one in the previous day: every period holding them changes
    await _hour(store, db, "e2", EA, h + timedelta(hours=3), 50.0, 0.0125)
    late = await _answers(store, db, site)
    assert late == await _uncached(store, db, site)
    assert first[("device:rest", "month")]["total"]["value"] == 370.0  # with the 70 Wh of the 9th
    assert late[("device:rest", "day")]["total"]["value"] == 250.0
    assert late[("device:rest", "month")]["total"]["value"] == 320.0
    assert late[("device:rest", "decade")]["total"]["value"] == 320.0
    assert (
        late[("zone:building", "year")]["total"]["value"]
        != first[("zone:building", "year")]["total"]["value"]
    )
    await _hour(store, db, "m1", EA, h - timedelta(days=1), 5.0, 0.00125)
    previous = await _answers(store, db, site)
    assert previous[("device:rest", "day")]["previous"]["total"]["value"] == 75.0
    assert previous == await _uncached(store, db, site)

    # merges (same rows), then TRUNCATE (ews replay, a rebuild): kept answers never outlive their rows
    for table in ("consumption_hourly", "consumption_daily", "consumption_monthly"):
        await store.command(f"OPTIMIZE TABLE {db}.{table} FINAL")
    assert await _answers(store, db, site) == previous
    for table in ("consumption_hourly", "consumption_daily", "consumption_monthly"):
        await store.command(f"TRUNCATE TABLE {db}.{table}")
    empty = await _answers(store, db, site)
    assert empty == await _uncached(store, db, site)
    assert all(a["has_data"] is False for a in empty.values())
    await _hour(store, db, "water", WATER, h, 10.0, 0.04)
    again = await _answers(store, db, site)
    assert again[("device:water", "decade")]["total"]["value"] == 10.0
    assert again == await _uncached(store, db, site)


@pytest.mark.integration
async def test_the_current_period_is_kept_only_while_nothing_is_written(
    site: Site, chdb_dsn: str, clickhouse_database: str
):
    store, db = get_store(chdb_dsn), clickhouse_database
    await migrate(store, db)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    today = now.astimezone(site.tz).date()

    async def answers() -> dict:
        return {
            period: (await consumption(store, db, site, "device:water", period, today)).model_dump(
                mode="json"
            )
            for period in ("day", "month", "year", "decade")
        }

    first = await answers()
    hits = QUERY_CACHE.hits
    assert await answers() == first and QUERY_CACHE.hits > hits  # nothing written: kept
    await _hour(store, db, "water", WATER, now, 7.0, 0.02)  # the aggregator writes the current hour
    misses = QUERY_CACHE.misses
    fresh = await answers()
    assert QUERY_CACHE.misses > misses
    for period in ("day", "month", "year", "decade"):
        assert fresh[period]["total"]["value"] == first[period]["total"]["value"] + 7.0, period
    QUERY_CACHE.enabled = False
    try:
        assert fresh == await answers()
    finally:
        QUERY_CACHE.enabled = True


def test_every_write_of_the_store_is_counted():
    """The kept answers trust Store.writes on chDB: a method that writes must count (``@_writes``)."""
    for name, method in vars(Store).items():
        if inspect.iscoroutinefunction(method) and not name.startswith("_") and name != "query":
            assert hasattr(method, "__wrapped__"), (
                f"Store.{name} writes without counting: decorate it with @_writes"
            )


def _part(name: str, level: int, data_version: int | None = None, table: str = "/store/abc/uuid") -> Part:
    _, low, high, *_ = name.split("_")
    low_block = int(low)
    return Part(
        name, f"{table}/{name}/", "all", low_block, int(high), level, data_version or low_block, 10, 1
    )


def test_only_a_merge_covers_a_part():
    old = _part("all_3_3_0", 0)
    assert _part("all_1_5_1", 1).covers(old)
    assert not _part("all_4_5_1", 1).covers(old)  # other blocks
    assert not _part("all_3_3_0", 0).covers(old)  # not a merge
    assert not _part("all_1_5_1", 1, data_version=7).covers(old)  # rewritten by a mutation
    assert not _part("all_1_5_1", 1, table="/store/def/other").covers(old)  # a table created again


async def test_a_store_without_system_parts_is_read_without_cache():
    class Store:
        dsn = "chdb://nowhere"

        async def query(self, sql, params=None):
            if "system.parts" in sql:
                raise PermissionError("not allowed")
            return [(1,)]

    cache = QueryCache()
    for _ in range(2):
        assert await cache.query(Store(), "db", "t", "SELECT 1", "1", {}) == [(1,)]  # type: ignore[arg-type]
    assert (cache.hits, cache.misses) == (0, 0)
