"""GET /api/v1/devices[/{id}]: what "My installation" shows (M1–M5) from the site file, the device profile
and the live state in Redis — filters, address labels, functions, breaker state, measured tables."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from ews_contracts.live import LiveDevice, live_key
from httpx import AsyncClient
from litestar import Litestar

from .conftest import CODES

pytestmark = pytest.mark.integration

NOW = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)


async def ids(client: AsyncClient, **params: str) -> list[str]:
    resp = await client.get("/api/v1/devices", params=params)
    assert resp.status_code == 200, resp.text
    return [d["id"] for d in resp.json()["devices"]]


async def test_filters_by_gateway_panel_zone_circuit(client: AsyncClient) -> None:
    await client.post("/api/v1/auth/login", json=CODES["installer"])
    everything = await ids(client)
    assert len(everything) == 23 and everything[:5] == ["m1", "e2", "water", "gas", "ev1"]
    assert everything[-1] == "hvac-rest"  # the virtual devices come after the devices
    assert await ids(client, gateway="gw1") == everything
    assert await ids(client, panel="floor1") == ["f1-light", "f1-sockets", "f1-signals"]
    assert await ids(client, zone="parking") == ["ev1", "ev2a", "ev2b"]
    assert await ids(client, circuit="kitchen") == ["pm-access", "rcd-kitchen"]
    assert await ids(client, zone="building", circuit="it-room") == ["pm-premium", "mccb-it"]
    assert await ids(client, circuit="hvac-lighting") == ["m1", "gen1", "hvac-rest"]
    resp = await client.get("/api/v1/devices", params={"panel": "attic"})
    assert resp.status_code == 400
    detail = resp.json()["detail"]
    assert detail.startswith("unknown panel 'attic'; known: floor1, main") and "\n" not in detail


async def test_device_buttons_and_measure_tables(client: AsyncClient, app: Litestar) -> None:
    await client.post("/api/v1/auth/login", json=CODES["user"])
    live = LiveDevice(
        device="f1-light",
        state="on",
        updated_at=NOW,
        values={
            "energy_active_import": 1234.0,
            "power_active": 560.5,
            "voltage_l1": 231.2,
            "current_l1": 2.5,
        },
        states={"breaker": "tripped", "relay": "closed"},
    )
    await app.state.redis.set(live_key("demo", "f1-light"), live.model_dump_json())

    one = (await client.get("/api/v1/devices/f1-light")).json()
    assert one["address"] == 15 and one["address_label"] == "15"  # interface 1, module 5
    # three modules, one device at one address: reached through the interface (link)
    assert one["functions"] == ["measure", "status", "command", "link"]
    assert one["breaker"] == "tripped" and one["state"] == "on"
    assert [t["group"] for t in one["tables"]] == ["energy", "power", "voltage", "current"]
    assert one["tables"][2]["rows"] == [{"quantity": "voltage_l1", "value": 231.2, "unit": "V"}]
    assert one["tables"][0]["rows"][0]["unit"] == "Wh"
    assert one["commands"] == [
        {"action": "relay", "label": "Relay / contactor", "values": ["open", "close"], "state": "relay"}
    ]

    devices = {d["id"]: d for d in (await client.get("/api/v1/devices")).json()["devices"]}
    assert devices["water"]["address_label"] == "5-1"  # address-position of a pulse meter
    assert devices["ev2b"]["address_label"] == "10-B"  # address-side of a two-sided charger
    assert devices["acb-tie"]["functions"] == ["status"] and devices["acb-tie"]["state"] == "unknown"
    assert devices["io2"]["commands"][0]["values"] == ["off", "on"]
    assert devices["m1"]["breaker"] is None and devices["m1"]["tables"] == []
