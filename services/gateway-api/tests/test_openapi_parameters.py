"""The query parameters of the JSON API in its OpenAPI document say what the handlers accept (issue 12,
item 10: 0 conformance failures, schemathesis's negative_data_rejection and positive_data_acceptance):
enums and patterns taken from the constants the handlers check with, and the server refusing what the
document refuses — an empty ``?site=`` too."""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Any

import pytest
from ews_analytics import MAX_DATE, MIN_DATE, PERIODS, QUANTITIES, SPLITS
from ews_contracts.site import ID_PATTERN
from httpx import AsyncClient
from litestar import Litestar

from .conftest import CODES

pytestmark = pytest.mark.integration


def parameters(app: Litestar, path: str, method: str = "get") -> dict[str, dict[str, Any]]:
    operation = app.openapi_schema.to_schema()["paths"][path][method]
    return {p["name"]: p["schema"] for p in operation.get("parameters", [])}


async def test_the_document_lists_what_the_consumption_routes_take(app: Litestar) -> None:
    params = parameters(app, "/api/v1/consumption")
    assert params["period"]["enum"] == list(PERIODS)
    assert params["split"]["enum"] == [*SPLITS, ""]
    scope = re.compile(params["scope"]["pattern"])
    for good in ("total-electricity", "total-global", "zone:building", "device:m1", "circuit:hvac-lighting"):
        assert scope.match(good), good
    for bad in ("", "0", "zone:", "room:a", "device:M1", "total"):
        assert not scope.match(bad), bad
    assert parameters(app, "/api/v1/consumption/compare")["detail"]["enum"] == ["total", "detailed"]
    quantity = parameters(app, "/api/v1/consumption/quantities")["quantity"]
    assert quantity["minItems"] == 1 and set(quantity["items"]["enum"]) == QUANTITIES
    for path in ("/api/v1/consumption/quantities", "/api/v1/readings.csv"):
        assert parameters(app, path)["device"]["pattern"] == ID_PATTERN
    for name in ("gateway", "panel", "zone", "circuit"):
        assert parameters(app, "/api/v1/devices")[name]["pattern"] == ID_PATTERN


async def test_the_date_patterns_are_the_analytics_span(app: Litestar) -> None:
    """Every calendar date of MIN_DATE … MAX_DATE (and empty: today) for the summary; not a day outside,
    not 29 February of a common year; with a period, only years whose decade fits the span."""
    summary = re.compile(parameters(app, "/api/v1/consumption/summary")["date"]["pattern"])
    day = MIN_DATE
    while day <= MAX_DATE:
        assert summary.match(day.isoformat()), day
        day += timedelta(days=1)
    for bad in (MIN_DATE - timedelta(days=1), MAX_DATE + timedelta(days=1)):
        assert not summary.match(bad.isoformat()), bad
    for bad in ("2023-02-29", "2025-04-31", "2025-13-01", "2025-1-01", "x"):
        assert not summary.match(bad), bad
    assert summary.match("") and summary.match("2024-02-29")
    period = re.compile(parameters(app, "/api/v1/consumption")["date"]["pattern"])
    assert not period.match(date(MIN_DATE.year + 8, 12, 31).isoformat())
    assert period.match(date(MIN_DATE.year + 9, 1, 1).isoformat()) and period.match(MAX_DATE.isoformat())
    moment = re.compile(parameters(app, "/api/v1/readings.csv")["from"]["pattern"])
    for good in ("", "2025-03-30", "2025-03-30T08:00", "2025-03-30T08:00:00+02:00", "2025-03-30T08:00:00.5Z"):
        assert moment.match(good), good
    for bad in ("2025-03-30T24:00", "1969-12-31", "yesterday"):
        assert not moment.match(bad), bad


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/site",
        "/api/v1/consumption/summary",
        "/api/v1/devices",
        "/api/v1/devices/m1",
        "/api/v1/site/config/history",
    ],
)
async def test_an_empty_site_is_refused_naming_the_parameter(client: AsyncClient, path: str) -> None:
    await client.post("/api/v1/auth/login", json=CODES["administrator"])
    assert (await client.get(path)).status_code == 200
    resp = await client.get(path, params={"site": ""})
    assert resp.status_code == 400, resp.text
    assert resp.json()["code"] == "invalid-request" and resp.json()["detail"].startswith("site:")
    assert (await client.get(path, params={"site": "demo"})).status_code == 200


async def test_the_documented_values_are_accepted(client: AsyncClient) -> None:
    await client.post("/api/v1/auth/login", json=CODES["administrator"])
    for period in PERIODS:
        resp = await client.get(
            "/api/v1/consumption", params={"period": period, "date": f"{MIN_DATE.year + 9}-01-01"}
        )
        assert resp.status_code == 200, resp.text
    for day in ("", MIN_DATE.isoformat(), MAX_DATE.isoformat()):
        resp = await client.get("/api/v1/consumption/summary", params={"date": day})
        assert resp.status_code == 200, resp.text
    for bad in ((MIN_DATE - timedelta(days=1)).isoformat(), "2023-02-29"):
        assert (await client.get("/api/v1/consumption/summary", params={"date": bad})).status_code == 400
    resp = await client.get("/api/v1/consumption", params={"scope": "total-global", "split": "medium"})
    assert resp.status_code == 200, resp.text
    assert (await client.get("/api/v1/consumption", params={"split": ""})).status_code == 200
