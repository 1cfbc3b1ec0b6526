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
    resp = await client.get("/api/v1/consumption", params={**params, "scope": "panel:main"})
    assert resp.status_code == 200 and resp.json()["total"]["value"] >= 2000.0

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
    assert rows[0] == ["start", "quantity", "unit", "value", "cost", "currency"]
    assert rows[11] == ["2025-06-01T10:00:00+02:00", "water_volume", "dm³", "500.0", "2.0", "EUR"]
    resp = await client.get(
        "/api/v1/consumption/datalogger.csv", params={"scope": "total-global", "period": "decade"}
    )
    rows = list(csv.reader(io.StringIO(resp.text)))
    assert len(rows) == 11 and rows[1][1:3] == ["cost", "EUR"]


async def test_compare_needs_the_consumption_permission(client: AsyncClient) -> None:
    resp = await client.get("/api/v1/consumption/compare", params={"a": "device:e2", "b": "device:m1"})
    assert resp.status_code == 401
