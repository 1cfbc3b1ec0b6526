"""GET /api/v1/consumption, /compare and /datalogger.csv on hour rows written straight into chDB."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
from ews_contracts.settings import Settings
from ews_contracts.store import get_store
from httpx import AsyncClient

from .conftest import CODES

pytestmark = pytest.mark.integration

EA, WATER = "energy_active_import", "water_volume"
H = datetime(2025, 6, 1, 8, tzinfo=UTC)  # 10:00 in Paris, a Sunday


async def hour_rows(settings: Settings, rows: list[tuple[str, str, datetime, float, float, float]]) -> None:
    store = get_store(settings.clickhouse_dsn)
    tz = settings.site.tz
    await store.insert(
        f"{settings.clickhouse_database}.consumption_hourly",
        [
            ("demo", d, q, h, h.astimezone(tz).date(), round(v * 1000), round(e * 1000), c)
            for d, q, h, v, c, e in rows
        ],
        ["site", "device", "quantity", "hour", "day", "value_milli", "estimated_milli", "cost"],
    )


async def test_consumption_compare_and_csv(client: AsyncClient, settings: Settings) -> None:
    await hour_rows(
        settings,
        [
            ("e2", EA, H, 1200.0, 0.3, 0.0),
            ("m1", EA, H, 800.0, 0.2, 200.0),
            ("water", WATER, H, 500.0, 2.0, 0.0),
        ],
    )
    await client.post("/api/v1/auth/login", json=CODES["user"])
    params = {"period": "day", "date": "2025-06-01"}

    resp = await client.get("/api/v1/consumption", params={**params, "scope": "device:m1"})
    assert resp.status_code == 200, resp.text
    bucket = resp.json()["buckets"][10]
    assert bucket == {
        "start": "2025-06-01T10:00:00+02:00",
        "value": 800.0,
        "unit": "Wh",
        "cost": 0.2,
        "estimated": 200.0,  # only where part of the value was spread over a gap
    }
    # the main board holds electricity, water and gas meters: in money, per medium, like total-global
    resp = await client.get("/api/v1/consumption", params={**params, "scope": "panel:main"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    # (e2, m1 and the virtual hvac-rest = m1 − gen1 are on the board: m1 counts twice, as in Wh)
    assert (body["unit"], body["total"]["value"], body["total"]["cost"]) == ("EUR", 2.7, 2.7)
    assert [(p["medium"], p["value"], p["unit"], p["cost"]) for p in body["parts"]] == [
        ("electricity", 2800.0, "Wh", 0.7),
        ("gas", 0.0, "dm³", 0.0),
        ("water", 500.0, "dm³", 2.0),
    ]
    assert body["parts"][1]["wh_equivalent"] == 0.0 and body["priced_from"] == "2020-01-01"
    resp = await client.get("/api/v1/consumption", params={**params, "scope": "zone:parking"})
    assert resp.json()["unit"] == "Wh" and resp.json()["parts"] == []  # one medium keeps its unit

    resp = await client.get(
        "/api/v1/consumption/compare", params={**params, "a": "device:e2", "b": "device:m1"}
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["mode"], body["unit"], body["detail"]) == ("units", "Wh", "detailed")
    assert (body["a"]["total"]["value"], body["b"]["total"]["value"]) == (1200.0, 800.0)
    assert len(body["a"]["buckets"]) == 24

    resp = await client.get(
        "/api/v1/consumption/compare",
        params={**params, "a": "device:e2", "b": "device:water", "detail": "total"},
    )
    body = resp.json()
    assert (body["mode"], body["unit"], body["a"]["buckets"]) == ("currency", "EUR", [])
    assert (body["a"]["total"]["value"], body["b"]["total"]["value"]) == (0.3, 2.0)

    for query, fragment in [
        ({"a": "device:e2", "b": "zone:mars"}, "unknown zone 'mars'"),
        ({"a": "device:e2", "b": "device:m1", "detail": "all"}, "unknown detail 'all'"),
        ({"a": "device:e2", "b": "device:m1", "period": "week"}, "unknown period 'week'"),
    ]:
        resp = await client.get("/api/v1/consumption/compare", params={**params, **query})
        assert resp.status_code == 400 and fragment in resp.json()["detail"], resp.text
    resp = await client.get("/api/v1/consumption/compare", params=params)  # a and b are required
    assert resp.status_code == 400

    resp = await client.get("/api/v1/consumption/datalogger.csv", params={**params, "scope": "device:water"})
    rows = list(csv.reader(io.StringIO(resp.text)))
    assert rows[0] == ["start", "quantity", "unit", "value", "cost", "currency", "unpriced"]
    assert rows[11] == ["2025-06-01T10:00:00+02:00", "water_volume", "dm³", "500.0", "2.0", "EUR", "false"]
    resp = await client.get("/api/v1/consumption/datalogger.csv", params={**params, "scope": "panel:main"})
    rows = list(csv.reader(io.StringIO(resp.text)))
    assert rows[11] == ["2025-06-01T10:00:00+02:00", "cost", "EUR", "2.7", "2.7", "EUR", "false"]
    resp = await client.get(
        "/api/v1/consumption/datalogger.csv", params={"scope": "total-global", "period": "decade"}
    )
    rows = list(csv.reader(io.StringIO(resp.text)))
    assert len(rows) == 11 and rows[1][1:3] == ["cost", "EUR"]


async def test_consumption_before_the_first_tariff_is_unpriced(
    client: AsyncClient, settings: Settings
) -> None:
    """The demo site's first tariff starts on 2020-01-01: the aggregator stored the hours before it with
    cost 0, and the API, the comparison and datalogger.csv say they are unpriced."""
    before = datetime(2019, 12, 31, 22, tzinfo=UTC)  # 23:00 on Dec 31st in Paris: the last unpriced hour
    after = datetime(2019, 12, 31, 23, tzinfo=UTC)  # 00:00 on Jan 1st: the first priced hour
    await hour_rows(settings, [("m1", EA, before, 300.0, 0.0, 0.0), ("m1", EA, after, 100.0, 0.025, 0.0)])
    await client.post("/api/v1/auth/login", json=CODES["user"])
    resp = await client.get("/api/v1/consumption", params={"scope": "device:m1", "date": "2019-12-31"})
    body = resp.json()
    assert body["buckets"][23] == {
        "start": "2019-12-31T23:00:00+01:00",
        "value": 300.0,
        "unit": "Wh",
        "cost": 0.0,
        "unpriced": True,
    }
    assert "unpriced" not in body["buckets"][22] and body["total"]["unpriced"] is True
    assert body["priced_from"] == "2020-01-01"
    resp = await client.get("/api/v1/consumption", params={"scope": "total-global", "date": "2020-01-01"})
    body = resp.json()
    assert "unpriced" not in body["total"] and body["previous"]["total"]["unpriced"] is True
    assert body["previous"]["total"]["cost"] == 0.0  # no standing charge before the first tariff either
    resp = await client.get(
        "/api/v1/consumption", params={"scope": "total-electricity", "period": "decade", "date": "2025-01-01"}
    )
    body = resp.json()
    assert [b.get("unpriced") for b in body["buckets"][3:5]] == [True, None]  # 2019, 2020
    assert body["total"]["unpriced"] is True and body["total"]["value"] == 400.0
    resp = await client.get(
        "/api/v1/consumption/compare",
        params={"a": "device:m1", "b": "device:water", "period": "year", "date": "2019-06-01"},
    )
    body = resp.json()
    assert body["a"]["total"]["unpriced"] is True and "unpriced" not in body["b"]["total"]
    resp = await client.get(
        "/api/v1/consumption/datalogger.csv",
        params={"scope": "device:m1", "period": "month", "date": "2019-12-01"},
    )
    rows = list(csv.reader(io.StringIO(resp.text)))
    assert rows[31] == [
        "2019-12-31T00:00:00+01:00",
        "energy_active_import",
        "Wh",
        "300.0",
        "0.0",
        "EUR",
        "true",
    ]
    assert rows[30][-1] == "false"


async def test_compare_needs_the_consumption_permission(client: AsyncClient) -> None:
    resp = await client.get("/api/v1/consumption/compare", params={"a": "device:e2", "b": "device:m1"})
    assert resp.status_code == 401


async def test_no_data_previous_buckets_and_split(client: AsyncClient, settings: Settings) -> None:
    await hour_rows(settings, [("e2", EA, H, 1200.0, 0.3, 0.0), ("m1", EA, H, 800.5, 0.2, 0.0)])
    await client.post("/api/v1/auth/login", json=CODES["user"])
    params = {"period": "day", "date": "2025-06-01", "scope": "total-electricity"}
    resp = await client.get("/api/v1/consumption", params={**params, "split": "circuit"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["has_data"] is True and body["buckets"][0]["no_data"] is True
    assert "no_data" not in body["buckets"][10] and body["buckets"][10]["value"] == 2000.5
    assert len(body["previous"]["buckets"]) == 24 and body["previous"]["total"]["no_data"] is True
    series = {s["key"]: s for s in body["series"]}
    assert series["circuit:hvac-lighting"]["values"][10] == 800.5
    assert series["circuit:offices"]["values"][10] == 1200.0
    assert series["circuit:offices"]["values"][0] is None
    for i, bucket in enumerate(body["buckets"]):
        if not bucket.get("no_data"):
            assert sum(round(s["values"][i] * 1000) for s in body["series"]) == round(bucket["value"] * 1000)
    assert set(series["circuit:offices"]) == {"key", "name", "values", "total", "cost"}
    resp = await client.get("/api/v1/consumption", params=params)
    assert resp.json()["series"] == []

    for query, fragment in [
        ({"split": "zone"}, "unknown split 'zone': use circuit"),
        ({"split": "circuit", "scope": "total-global"}, "split=circuit needs a scope in units"),
        ({"date": "0001-01-01"}, "date 0001-01-01 is out of range: use a date from 1970-01-01 to 2200-12-31"),
        ({"date": "9999-12-31"}, "date 9999-12-31 is out of range"),
        ({"period": "month", "date": "0001-01-01"}, "date 0001-01-01 is out of range"),  # month of year 1
        ({"period": "year", "date": "9999-12-31"}, "date 9999-12-31 is out of range"),
        ({"date": "1975-01-01", "period": "decade"}, "the decade of date 1975-01-01"),
        ({"date": "2025-13-01"}, "invalid date '2025-13-01'"),
        ({"period": "week"}, "unknown period 'week'"),
    ]:
        resp = await client.get("/api/v1/consumption", params={**params, **query})
        assert resp.status_code == 400, resp.text
        assert fragment in resp.json()["detail"] and "\n" not in resp.json()["detail"], resp.text
    resp = await client.get(
        "/api/v1/consumption/compare", params={"a": "device:e2", "b": "device:m1", "date": "9999-12-31"}
    )
    assert resp.status_code == 400 and "out of range" in resp.json()["detail"]
    resp = await client.get("/api/v1/consumption/datalogger.csv", params={**params, "date": "0001-01-01"})
    assert resp.status_code == 400


async def test_summary_api(client: AsyncClient, settings: Settings) -> None:
    await hour_rows(settings, [("e2", EA, H, 1200.0, 0.3, 0.0), ("water", WATER, H, 500.0, 2.0, 0.0)])
    resp = await client.get("/api/v1/consumption/summary", params={"scope": "device:e2"})
    assert resp.status_code == 401
    await client.post("/api/v1/auth/login", json=CODES["user"])
    resp = await client.get(
        "/api/v1/consumption/summary", params={"scope": "device:e2", "date": "2025-06-02"}
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["unit"], body["day"]) == ("Wh", "2025-06-02")
    assert body["today"] == {"value": 0.0, "unit": "Wh", "cost": 0.0, "currency": "EUR", "no_data": True}
    assert body["yesterday"]["value"] == 1200.0 and "no_data" not in body["yesterday"]
    assert body["this_month"]["value"] == 1200.0 and body["last_month"]["no_data"] is True
    assert body["this_year"]["value"] == 1200.0 and body["last_year"]["no_data"] is True
    resp = await client.get("/api/v1/consumption/summary", params={"scope": "zone:mars"})
    assert resp.status_code == 400 and "unknown zone 'mars'" in resp.json()["detail"]


async def test_quantities_api(client: AsyncClient, settings: Settings) -> None:
    store = get_store(settings.clickhouse_dsn)
    await store.insert(
        f"{settings.clickhouse_database}.readings",
        [
            ("demo", "m1", "power_active", H, 1000.0, "multifunction-meter-412045", "a"),
            ("demo", "m1", "power_active", H.replace(minute=30), 3000.0, "multifunction-meter-412045", "b"),
            ("demo", "m1", "power_reactive", H, -200.0, "multifunction-meter-412045", "c"),
        ],
        ["site", "device", "quantity", "ts", "value", "profile", "event_id"],
    )
    url = "/api/v1/consumption/quantities"
    params = {
        "device": "m1",
        "quantity": ["power_active", "power_reactive"],
        "period": "day",
        "date": "2025-06-01",
    }
    assert (await client.get(url, params=params)).status_code == 401
    await client.post("/api/v1/auth/login", json=CODES["user"])
    resp = await client.get(url, params=params)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["device"] == "m1" and len(body["starts"]) == 24 and body["has_data"] is True
    assert body["starts"][10] == "2025-06-01T10:00:00+02:00"
    active, reactive = body["series"]
    assert (active["quantity"], active["unit"], active["values"][10]) == ("power_active", "W", 2000.0)
    assert (active["min"][10], active["max"][10], active["values"][9]) == (1000.0, 3000.0, None)
    assert reactive["values"][10] == -200.0
    for query, fragment in [
        ({"device": "nope"}, "unknown device 'nope'"),
        ({"device": "hvac-rest"}, "device 'hvac-rest' is virtual"),
        ({"quantity": ["power_active", "watts"]}, "unknown quantity 'watts'"),
        ({"period": "week"}, "unknown period 'week'"),
        ({"date": "0001-01-01"}, "out of range"),
    ]:
        resp = await client.get(url, params={**params, **query})
        assert resp.status_code == 400 and fragment in resp.json()["detail"], resp.text
    resp = await client.get(url, params={"device": "m1"})  # quantity is required
    assert resp.status_code == 400


async def test_load_functions_work_without_a_request(app, client: AsyncClient, settings: Settings) -> None:
    from datetime import date

    from ews_gateway_api.domain.consumption import load_consumption, load_quantity_series, load_summary
    from litestar.exceptions import HTTPException

    await hour_rows(settings, [("e2", EA, H, 1200.0, 0.3, 0.0)])
    state = app.state
    c = await load_consumption(state, "circuit:offices", "month", date(2025, 6, 1), split="circuit")
    assert c.buckets[0].value == 1200.0 and c.series[0].key == "circuit:offices"
    s = await load_summary(state, "device:e2", "2025-06-01")
    assert s.today.value == 1200.0
    q = await load_quantity_series(state, "m1", ["power_active"], "day", None)
    assert len(q.series) == 1
    with pytest.raises(HTTPException) as err:
        await load_consumption(state, "total-global", "day", "2025-06-01", split="circuit")
    assert err.value.status_code == 400 and "split=circuit" in err.value.detail
