"""Consumption pages for scopes mixing media (shown like Total – Global) and for consumption from
before the first tariff (a short note says it is not priced)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
from ews_contracts.settings import Settings
from httpx import AsyncClient
from litestar import Litestar

from .conftest import session_for
from .test_consumption_api import EA, WATER, hour_rows

pytestmark = pytest.mark.integration

GAS = "gas_volume"
H = datetime(2025, 6, 1, 8, tzinfo=UTC)  # 10:00 in Paris


def chart_of(html: str, element: str = "main-chart") -> dict:
    match = re.search(rf'<script type="application/json" id="{element}">(.*?)</script>', html, re.S)
    assert match, f"no {element} in the page"
    return json.loads(match.group(1))


async def test_a_circuit_mixing_media_is_shown_like_total_global(
    client: AsyncClient, app: Litestar, settings: Settings
) -> None:
    # the demo site's "utilities" circuit: the water main, the gas boiler (and the caretaker's hot water)
    await hour_rows(
        settings,
        [
            ("water", WATER, H, 500.0, 2.0, 0.0),
            ("gas", GAS, H, 100.0, 0.121, 0.0),
            ("e2", EA, H, 1200.0, 0.3, 0.0),
        ],
    )
    cookies = await session_for(app, "user")
    page = await client.get(
        "/consumption/partial?zone=building&circuit=utilities&date=2025-06-01", cookies=cookies
    )
    assert page.status_code == 200, page.text[:300]
    chart = chart_of(page.text)
    assert chart["unit"] == "EUR"
    stacked = {s["name"]: s["values"][10] for s in chart["series"] if s["stack"] == "current"}
    assert stacked == {"Gas": 0.121, "Water": 2.0}  # money stacked by medium, like Total – Global
    assert "medium-gas" in page.text and "medium-water" in page.text  # each medium's units and money
    assert "€0.12 · 1.12 kWh equivalent" in page.text  # gas: its Wh equivalent
    assert "Not priced" not in page.text
    data = await client.get(
        "/consumption/partial?zone=building&circuit=utilities&date=2025-06-01&view=data", cookies=cookies
    )
    assert data.status_code == 200 and "€2.12" in data.text
    # a circuit of one medium keeps its unit
    page = await client.get("/consumption/partial?circuit=offices&date=2025-06-01", cookies=cookies)
    assert chart_of(page.text)["unit"] in ("Wh", "kWh") and "medium-water" not in page.text
    # two zones mixing media: compared in money
    page = await client.get(
        "/consumption/comparison?a=zone:building&b=circuit:utilities&date=2025-06-01", cookies=cookies
    )
    assert page.status_code == 200 and "Several media: compared in money." in page.text


async def test_consumption_before_the_first_tariff_gets_a_note(
    client: AsyncClient, app: Litestar, settings: Settings
) -> None:
    before = datetime(2019, 12, 31, 22, tzinfo=UTC)  # 23:00 on Dec 31st: the demo tariff starts 2020-01-01
    await hour_rows(settings, [("m1", EA, before, 300.0, 0.0, 0.0)])
    cookies = await session_for(app, "user")
    note = "Not priced: no tariff before Jan 1, 2020."
    for url in (
        "/consumption/total-electricity?date=2019-12-31",
        "/consumption/total-electricity?date=2020-01-01",  # the previous day beside it
        "/consumption/total-global?period=year&date=2019-06-01",
        "/consumption/details?device=m1&period=decade&date=2025-01-01",
        "/consumption/comparison?a=device:m1&b=device:e2&period=month&date=2019-12-01",
    ):
        page = await client.get(url, cookies=cookies)
        assert page.status_code == 200, (url, page.text[:300])
        assert note in page.text, url
    page = await client.get("/consumption/total-electricity?date=2020-01-02", cookies=cookies)
    assert "Not priced" not in page.text
