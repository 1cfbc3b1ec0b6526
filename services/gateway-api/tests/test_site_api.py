"""GET /api/v1/site and the virtual devices of GET /api/v1/devices through the real app, with the live
state written to the real Redis as the poller writes it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from ews_contracts.live import LiveDevice, live_key
from httpx import AsyncClient
from litestar import Litestar

from .conftest import CODES
from .test_route_matrix import cases, decision

pytestmark = pytest.mark.integration


async def put(app: Litestar, device: str, state: str = "on", reason: str = "", **values: float) -> None:
    live = LiveDevice(
        device=device,
        state=state,
        reason=reason,
        updated_at=datetime.now(UTC) - timedelta(seconds=1),
        values=values,
    )
    await app.state.redis.set(live_key("demo", device), live.model_dump_json())


async def test_site_route_is_for_any_logged_in_role(app: Litestar) -> None:
    by_path = {(m, p): decision(h) for m, p, h in cases(app)}
    assert by_path[("GET", "/api/v1/site")] == ("authenticated", None)
    schema = app.openapi_schema.to_schema()
    operation = schema["paths"]["/api/v1/site"]["get"]
    assert operation["operationId"] == "getSite" and operation["tags"] == ["site"]


async def test_site_structure(client: AsyncClient, app: Litestar) -> None:
    assert (await client.get("/api/v1/site")).status_code == 401
    await client.post("/api/v1/auth/login", json=CODES["user"])
    resp = await client.get("/api/v1/site")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {
        "site", "name", "timezone", "currency", "language",
        "gateways", "panels", "zones", "circuits", "virtual_devices", "devices",
    }  # fmt: skip
    assert body["gateways"] == [
        {
            "id": "gw1",
            "name": "Gateway TCP/RS485 – main board",
            "endpoint": "127.0.0.1:5020",
            "status": "ok",
            "reason": "",
            "devices": 23,
        }
    ]
    assert body["panels"] == [
        {"id": "main", "name": "Main low-voltage board", "devices": 20},
        {"id": "floor1", "name": "Floor 1 distribution board", "devices": 3},
    ]
    assert body["virtual_devices"] == [
        {
            "id": "hvac-rest",
            "name": "HVAC and lighting without heat pump",
            "master": "m1",
            "slaves": ["gen1"],
            "exclude_from_total": True,
        }
    ]
    assert {"id": "ev", "name": "EV charging", "zone": "parking"} in body["circuits"]

    # the gateway unreachable: every enabled device in comm-error -> the fault once, on the gateway
    for device in app.state.site.devices:
        await put(app, device.id, "comm-error", "connection refused by 127.0.0.1:5020")
    gateway = (await client.get("/api/v1/site")).json()["gateways"][0]
    assert gateway["status"] == "comm-error"
    assert gateway["reason"] == "connection refused by 127.0.0.1:5020"
    await put(app, "m1", "on", energy_active_import=1.0)
    gateway = (await client.get("/api/v1/site")).json()["gateways"][0]
    assert gateway["status"] == "ok" and gateway["reason"] == ""


async def test_virtual_device_over_http(client: AsyncClient, app: Litestar) -> None:
    await client.post("/api/v1/auth/login", json=CODES["installer"])
    await put(app, "m1", energy_active_import=52_000.0, power_active=1_200.0)
    await put(app, "gen1", energy_active_import=12_000.25)
    resp = await client.get("/api/v1/devices/hvac-rest")
    assert resp.status_code == 200, resp.text
    one = resp.json()
    assert one["kind"] == "virtual"
    assert one["virtual"] == {"type": "master-slave", "master": "m1", "slaves": ["gen1"]}
    assert one["address_label"] == "1-V" and one["gateway"] == "gw1"
    assert one["functions"] == ["measure", "function"]
    assert one["state"] == "on" and one["stale"] is False and one["age_s"] >= 0
    assert one["values"] == {"energy_active_import": 39_999.75}
    assert one["exclude_from_total"] is True

    listed = (await client.get("/api/v1/devices", params={"circuit": "hvac-lighting"})).json()["devices"]
    assert [d["id"] for d in listed] == ["m1", "gen1", "hvac-rest"]
    assert listed[-1] == one | {"age_s": listed[-1]["age_s"]}
    assert listed[0]["kind"] == "device" and listed[0]["functions"] == ["measure", "function"]

    await put(app, "gen1", "comm-error", "timeout (no response)")
    one = (await client.get("/api/v1/devices/hvac-rest")).json()
    assert one["state"] == "comm-error" and one["reason"] == "gen1: timeout (no response)"
    assert one["values"] == {} and one["stale"] is True


@pytest.mark.parametrize(
    ("name", "value", "known"),
    [
        ("gateway", "gw9", "gw1"),
        ("panel", "attic", "floor1, main"),
        ("zone", "moon", "building, parking"),
        ("circuit", "nope", "ev, floor1-lighting"),
    ],
)
async def test_unknown_filters_are_400(client: AsyncClient, name: str, value: str, known: str) -> None:
    await client.post("/api/v1/auth/login", json=CODES["user"])
    resp = await client.get("/api/v1/devices", params={name: value})
    assert resp.status_code == 400
    assert resp.json()["detail"].startswith(f"unknown {name} {value!r}; known: {known}")
