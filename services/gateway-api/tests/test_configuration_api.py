"""GET/PUT /api/v1/site/config, the YAML export, the history and device On/Off (real NATS, Redis, chDB)."""

from __future__ import annotations

import pytest
import yaml
from httpx import AsyncClient
from litestar import Litestar

from .conftest import session_for

pytestmark = pytest.mark.integration


async def as_role(client: AsyncClient, app: Litestar, role: str = "installer") -> AsyncClient:
    client.cookies.update(await session_for(app, role))
    return client


async def test_read_change_and_export_the_configuration(client: AsyncClient, app: Litestar):
    c = await as_role(client, app)
    got = await c.get("/api/v1/site/config")
    assert got.status_code == 200
    doc = got.json()
    assert doc["version"] == 1 and doc["site"] == "demo" and got.headers["etag"] == '"1"'

    doc["name"] = "Renamed from the API"
    doc["devices"].append(
        {"id": "new1", "name": "New meter", "profile": "power-meter-access", "gateway": doc["gateways"][0]["id"], "address": 200}
    )
    put = await c.put("/api/v1/site/config", json=doc, headers={"If-Match": '"1"'})
    assert put.status_code == 200, put.text
    assert put.json()["version"] == 2
    assert "devices.new1: added" in put.json()["changes"]
    # applied in this process at once: the site API and the device list know it
    assert app.state.site.name == "Renamed from the API"
    assert (await c.get("/api/v1/site")).json()["name"] == "Renamed from the API"

    # a stale If-Match: 409, nothing applied
    doc["name"] = "Lost update"
    stale = await c.put("/api/v1/site/config", json=doc, headers={"If-Match": '"1"'})
    assert stale.status_code == 409 and stale.json()["code"] == "version-conflict"
    assert app.state.site.name == "Renamed from the API"

    exported = await c.get("/api/v1/site/config.yaml")
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("application/yaml")
    again = yaml.safe_load(exported.text)
    assert again["name"] == "Renamed from the API" and any(d["id"] == "new1" for d in again["devices"])

    # a YAML body is accepted too (the exported file, changed)
    again["name"] = "From YAML"
    put = await c.put(
        "/api/v1/site/config",
        content=yaml.safe_dump(again),
        headers={"content-type": "application/yaml", "If-Match": "2"},
    )
    assert put.status_code == 200, put.text

    hist = (await c.get("/api/v1/site/config/history")).json()
    assert [h["version"] for h in hist] == [3, 2, 1]
    assert hist[0]["changed_by"] == "installer" and hist[-1]["how"] == "site-file"
    v2 = (await c.get("/api/v1/site/config/history/2")).json()
    assert v2["name"] == "Renamed from the API"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["devices"][3].update(address=300), "devices[3].address"),
        (lambda d: d["devices"][0].update(profile="no-such-profile"), "devices[0].profile"),
        (lambda d: d.update(site="elsewhere"), "site"),
        (lambda d: d["gateways"][0].update(transport="rtu", serial={"port": "/dev/ttyUSB0", "parity": "X"}), "gateways[0].serial.parity"),
    ],
)
async def test_invalid_configuration_names_the_field_and_changes_nothing(client, app, change, field):
    c = await as_role(client, app)
    doc = (await c.get("/api/v1/site/config")).json()
    change(doc)
    resp = await c.put("/api/v1/site/config", json=doc)
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["code"] == "invalid-configuration"
    assert body["extra"]["field"] == field
    assert f": {field}: " in body["detail"]
    assert (await c.get("/api/v1/site/config")).json()["version"] == 1


async def test_bad_bodies_get_one_line(client, app):
    c = await as_role(client, app)
    for content in (b"", b"{not: [valid", b"- a list\n- of things\n"):
        resp = await c.put("/api/v1/site/config", content=content, headers={"content-type": "application/yaml"})
        assert resp.status_code == 400 and "\n" not in resp.json()["detail"], content
    resp = await c.put("/api/v1/site/config", json={"site": "demo"}, headers={"If-Match": "abc"})
    assert resp.status_code == 400 and "If-Match" in resp.json()["detail"]


async def test_device_off_and_on(client, app):
    c = await as_role(client, app, "administrator")
    device = app.state.site.devices[0].id
    off = await c.put(f"/api/v1/devices/{device}/enabled", json={"enabled": False})
    assert off.status_code == 200, off.text
    assert off.json() == {"device": device, "enabled": False, "version": 2}
    assert app.state.site.device(device).enabled is False
    same = await c.put(f"/api/v1/devices/{device}/enabled", json={"enabled": False})
    assert same.json()["version"] == 2  # already Off: no new version
    on = await c.put(f"/api/v1/devices/{device}/enabled", json={"enabled": True})
    assert on.json()["version"] == 3 and app.state.site.device(device).enabled is True
    hist = (await c.get("/api/v1/site/config/history")).json()
    assert hist[1]["how"] == "device-enabled" and hist[1]["changes"] == [f"devices.{device}.enabled: true → false"]
    assert (await c.put("/api/v1/devices/ghost/enabled", json={"enabled": False})).status_code == 404
    virtual = app.state.site.virtual_devices[0].id
    assert (await c.put(f"/api/v1/devices/{virtual}/enabled", json={"enabled": False})).status_code == 400


async def test_only_configuring_roles(client, app):
    for role in ("user", "greenUp"):
        client.cookies.clear()
        c = await as_role(client, app, role)
        assert (await c.get("/api/v1/site/config")).status_code == 403
        assert (await c.put("/api/v1/devices/m1/enabled", json={"enabled": False})).status_code == 403


async def test_a_removed_device_keeps_its_history(client, app):
    c = await as_role(client, app)
    doc = (await c.get("/api/v1/site/config")).json()
    removed = doc["devices"][1]
    doc["devices"] = [d for d in doc["devices"] if d["id"] != removed["id"]]
    resp = await c.put("/api/v1/site/config", json=doc)
    assert resp.status_code == 200, resp.text
    assert f"retired_devices.{removed['id']}: added" in resp.json()["changes"]
    assert app.state.site.device(removed["id"]) is None
    retired = [r for r in app.state.site.retired_devices if r.id == removed["id"]]
    assert retired and retired[0].name == removed["name"]
    # not listed, no longer polled, but its figures stay reachable
    listed = (await c.get("/api/v1/devices")).json()
    assert removed["id"] not in [d["id"] for d in listed["devices"]]
    assert (await c.get(f"/api/v1/consumption?scope=device:{removed['id']}&period=day")).status_code == 200
    # added again with the same id: a device again, no longer retired
    doc = (await c.get("/api/v1/site/config")).json()
    doc["devices"].append(removed)
    resp = await c.put("/api/v1/site/config", json=doc)
    assert resp.status_code == 200, resp.text
    assert app.state.site.device(removed["id"]) is not None
    assert not app.state.site.retired_devices
