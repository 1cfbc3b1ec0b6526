"""The Configuration pages of the site's structure (gateways, devices, virtual devices, panels, zones,
circuits): real app, real NATS (the stored configuration), Redis and chDB; no poller running."""

from __future__ import annotations

import html
import re

import pytest
from ews_gateway_api.domain.configuration import config_document
from httpx import AsyncClient
from litestar import Litestar

from .conftest import session_for

pytestmark = pytest.mark.integration

PAGES = [
    "/configuration",
    "/configuration/gateways",
    "/configuration/gateways/new",
    "/configuration/gateways/gw1/edit",
    "/configuration/gateways/gw1/remove",
    "/configuration/devices",
    "/configuration/devices/new",
    "/configuration/devices/f1-light/edit",
    "/configuration/devices/gen1/edit",
    "/configuration/devices/m1/remove",
    "/configuration/virtual-devices",
    "/configuration/virtual-devices/new",
    "/configuration/virtual-devices/hvac-rest/edit",
    "/configuration/structure",
    "/configuration/structure/panels/new",
    "/configuration/structure/circuits/kitchen/edit",
    "/configuration/structure/zones/parking/remove",
]


async def as_role(client: AsyncClient, app: Litestar, role: str = "installer") -> AsyncClient:
    client.cookies.clear()
    client.cookies.update(await session_for(app, role))
    return client


def version_in(page: str) -> str:
    found = re.search(r'name="version" value="(\d+)"', page)
    assert found, "the form carries the version it was shown with"
    return found.group(1)


def input_tag(page: str, input_id: str) -> str:
    found = re.search(rf'<(?:input|select)[^>]*\bid="{re.escape(input_id)}"[^>]*>', page, re.S)
    assert found, f"no control {input_id}"
    return found.group(0)


def problems(page: str) -> str:
    """The error messages of a page (for assertion messages)."""
    found = re.findall(
        r'class="(?:field-error|message message-error)[^"]*"[^>]*>(.*?)</(?:span|div|p)>', page, re.S
    )
    return (
        " | ".join(" ".join(html.unescape(re.sub(r"<[^>]+>", " ", f)).split()) for f in found) or page[:300]
    )


def device_form(version: str, **fields: str) -> dict[str, object]:
    form: dict[str, object] = {
        "version": version,
        "id": "new1",
        "name": "Bakery meter",
        "profile": "power-meter-access",
        "gateway": "gw1",
        "address": "40",
        "panel": "main",
        "zone": "building",
        "circuit": "kitchen",
        "enabled": "1",
    }
    form.update(fields)
    return form


@pytest.mark.parametrize("role", ["administrator", "installer"])
async def test_every_page_renders_for_the_roles_that_configure(client: AsyncClient, app: Litestar, role: str):
    c = await as_role(client, app, role)
    for path in PAGES:
        resp = await c.get(path)
        assert resp.status_code == 200, f"{path}: {resp.status_code} {resp.text[:300]}"
        body = resp.text
        assert 'aria-label="Configuration sections"' in body, path
        # the sub-navigation, in its order, the current section marked
        labels = re.findall(r'<nav class="tabs config-sections[^"]*".*?</nav>', body, re.S)[0]
        hrefs = re.findall(r'href="([^"]+)"', labels)
        assert hrefs == [
            "/configuration/gateways",
            "/configuration/devices",
            "/configuration/virtual-devices",
            "/configuration/structure",
            "/configuration/tariffs",
            "/configuration/site",
            "/codes",
            *(["/configuration/tokens"] if role == "administrator" else []),  # manage-tokens only
            "/configuration/network",
            "/configuration/database",
            "/configuration/files",
            "/configuration/history",
            "/configuration/commands",
        ]
        current = re.findall(r'<a href="([^"]+)" aria-current="page">', labels)
        if path == "/configuration":
            assert current == []
        else:
            assert current and path.startswith(current[0]), (path, current)
        # every control has a name: each input/select of a form has a label for= it
        for control in re.findall(r"<(?:input|select)\b[^>]*>", body):
            if 'type="hidden"' in control or 'id="lang-select"' in control:
                continue
            cid = re.search(r'\bid="([^"]+)"', control)
            assert cid, f"{path}: a control without id: {control}"
            assert f'for="{cid.group(1)}"' in body or "aria-label=" in control, (
                f"{path}: no label for {control}"
            )


async def test_the_index_summarises_the_version_in_force(client: AsyncClient, app: Litestar):
    c = await as_role(client, app, "administrator")
    body = (await c.get("/configuration")).text
    assert "Configuration in force" in body
    assert re.search(r"<dt>Version</dt><dd>1</dd>", body)
    assert "site file" in body  # version 1 was seeded from the site file
    count = len(config_document(app.state)["devices"])
    assert re.search(
        rf'<span class="stat-label">Devices</span>\s*<span class="stat-value">{count}</span>', body
    )


@pytest.mark.parametrize("role", ["user", "greenUp"])
async def test_other_roles_get_403(client: AsyncClient, app: Litestar, role: str):
    c = await as_role(client, app, role)
    for path in [
        "/configuration",
        "/configuration/devices",
        "/configuration/structure",
        "/configuration/devices/new",
    ]:
        resp = await c.get(path)
        assert resp.status_code == 403, path
        assert "<html" in resp.text  # a page, not JSON
    resp = await c.post("/configuration/devices/new", data=device_form("1"))
    assert resp.status_code == 403
    assert not any(d["id"] == "new1" for d in config_document(app.state)["devices"])
    resp = await c.post("/configuration/devices/m1/enabled", data={"enabled": "off"})
    assert resp.status_code == 403


async def test_add_a_device_through_the_form(client: AsyncClient, app: Litestar):
    c = await as_role(client, app)
    form = await c.get("/configuration/devices/new")
    version = version_in(form.text)
    # the profile select has one optgroup per family
    assert '<optgroup label="D1 – Power meters">' in form.text
    assert '<optgroup label="D11 – EV charging stations">' in form.text

    resp = await c.post("/configuration/devices/new", data=device_form(version))
    assert resp.status_code == 303, problems(resp.text)
    assert resp.headers["location"] == "/configuration/devices?saved=2"

    doc = config_document(app.state)
    assert doc["version"] == 2
    new = next(d for d in doc["devices"] if d["id"] == "new1")
    assert new == {
        "id": "new1",
        "name": "Bakery meter",
        "profile": "power-meter-access",
        "gateway": "gw1",
        "address": 40,
        "panel": "main",
        "zone": "building",
        "circuit": "kitchen",
    }
    listing = await c.get(resp.headers["location"])
    assert "Saved: version 2" in listing.text
    assert "devices.new1: added" in listing.text
    assert "Bakery meter" in listing.text
    installation = await c.get("/installation?by=all")
    assert installation.status_code == 200 and "Bakery meter" in installation.text


async def test_fields_the_profile_does_not_use_are_ignored(client: AsyncClient, app: Litestar):
    c = await as_role(client, app)
    version = version_in((await c.get("/configuration/devices/new")).text)
    form = device_form(
        version,
        id="water2",
        name="Water (second)",
        profile="pulse-concentrator-004687",
        address="5",
        position="3",
        pulse_weight="10",
        medium="water",
        side="A",  # not a charging station: ignored
        **{"ea_register.address": "100"},  # not a generic meter: ignored
    )
    form.pop("enabled")  # unchecked: Off
    resp = await c.post("/configuration/devices/new", data=form)
    assert resp.status_code == 303, problems(resp.text)
    new = next(d for d in config_document(app.state)["devices"] if d["id"] == "water2")
    assert new["position"] == 3 and new["pulse_weight"] == 10 and new["medium"] == "water"
    assert "side" not in new and "ea_register" not in new
    assert new["enabled"] is False


async def test_a_modular_device_is_given_by_interface_and_module(client: AsyncClient, app: Litestar):
    c = await as_role(client, app)
    page = (await c.get("/configuration/devices/f1-light/edit")).text
    assert 'value="1"' in input_tag(page, "f-interface") and 'value="5"' in input_tag(page, "f-module")
    assert 'value=""' in input_tag(page, "f-address")  # the address follows from interface and module
    assert re.search(r'value="modular-aux-contact" checked', page)
    form = {
        "version": version_in(page),
        "name": "Floor 1 lighting",
        "profile": "modular-measure-3ph",
        "gateway": "gw1",
        "address": "",
        "interface": "3",
        "module": "3",
        "modules": ["modular-aux-contact", "modular-state-command"],
        "panel": "floor1",
        "zone": "building",
        "circuit": "floor1-lighting",
        "enabled": "1",
        "exclude_from_total": "1",
    }
    resp = await c.post("/configuration/devices/f1-light/edit", data=form)
    assert resp.status_code == 303, problems(resp.text)
    device = next(d for d in config_document(app.state)["devices"] if d["id"] == "f1-light")
    assert (device["address"], device["interface"], device["module"]) == (33, 3, 3)
    assert device["modules"] == ["modular-aux-contact", "modular-state-command"]
    assert device["exclude_from_total"] is True


async def test_a_bad_address_is_shown_next_to_its_field_with_the_input_kept(
    client: AsyncClient, app: Litestar
):
    c = await as_role(client, app)
    version = version_in((await c.get("/configuration/devices/new")).text)
    resp = await c.post(
        "/configuration/devices/new", data=device_form(version, address="300", name="Kept name")
    )
    assert resp.status_code == 400
    page = resp.text
    address = input_tag(page, "f-address")
    assert 'value="300"' in address and 'aria-invalid="true"' in address
    described = re.search(r'aria-describedby="([^"]+)"', address).group(1).split()
    assert "f-address-error" in described
    error = re.search(r'<span class="field-error" id="f-address-error">(.*?)</span>', page, re.S).group(1)
    assert "247" in html.unescape(error)  # the schema's bound, next to the field
    assert "devices[" not in error  # the path is for programs: the message sits at its field
    assert 'value="Kept name"' in input_tag(page, "f-name")
    assert "aria-invalid" not in input_tag(page, "f-name")
    assert re.search(r'<option value="power-meter-access"[^>]*selected', page)
    # nothing was applied
    assert config_document(app.state)["version"] == int(version)


async def test_an_error_without_a_field_of_the_form_shows_at_the_top(client: AsyncClient, app: Litestar):
    c = await as_role(client, app)
    version = version_in((await c.get("/configuration/devices/new")).text)
    # m1 is at address 1 on gw1: the new device may not take it
    resp = await c.post("/configuration/devices/new", data=device_form(version, address="1"))
    assert resp.status_code == 400
    assert 'aria-invalid="true"' in input_tag(resp.text, "f-address")  # named field: next to it
    # an unknown gateway is named by its field too
    resp = await c.post("/configuration/devices/new", data=device_form(version, gateway="nowhere"))
    assert resp.status_code == 400
    assert 'aria-invalid="true"' in input_tag(resp.text, "f-gateway")
    # a form without its version: told to reload
    resp = await c.post(
        "/configuration/devices/new", data={k: v for k, v in device_form(version).items() if k != "version"}
    )
    assert resp.status_code == 400 and "reload the page" in resp.text


async def test_a_stale_version_says_someone_else_changed_it(client: AsyncClient, app: Litestar):
    c = await as_role(client, app)
    page = (await c.get("/configuration/gateways/gw1/edit")).text
    old = version_in(page)
    # someone else changes the configuration meanwhile
    other = (await c.get("/configuration/structure/panels/new")).text
    resp = await c.post(
        "/configuration/structure/panels/new",
        data={"version": version_in(other), "id": "p9", "name": "Annex"},
    )
    assert resp.status_code == 303
    form = {
        "version": old,
        "name": "Renamed gateway",
        "transport": "tcp",
        "host": "127.0.0.1",
        "port": "5020",
        "timeout": "2",
    }
    resp = await c.post("/configuration/gateways/gw1/edit", data=form)
    assert resp.status_code == 409
    assert "changed by someone else meanwhile" in resp.text
    assert 'value="Renamed gateway"' in input_tag(resp.text, "f-name")  # the form is kept
    assert 'href="/configuration/gateways/gw1/edit">Reload' in resp.text
    assert config_document(app.state)["gateways"][0].get("name") != "Renamed gateway"


async def test_edit_a_gateway_keeps_only_what_its_transport_uses(client: AsyncClient, app: Litestar):
    c = await as_role(client, app, "administrator")
    page = (await c.get("/configuration/gateways/gw1/edit")).text
    form = {
        "version": version_in(page),
        "name": "Main board gateway",
        "transport": "tcp",
        "host": "127.0.0.1",
        "port": "5020",
        "baudrate": "",
        "serial.port": "/dev/ttyUSB0",  # not for tcp: ignored
        "serial.parity": "E",
        "timeout": "1,5",  # a decimal comma is understood
        "retries": "2",
        "inter_frame_delay": "",
        "fast_period": "5",
        "counter_period": "60",
    }
    resp = await c.post("/configuration/gateways/gw1/edit", data=form)
    assert resp.status_code == 303, problems(resp.text)
    gateway = config_document(app.state)["gateways"][0]
    assert gateway["name"] == "Main board gateway" and gateway["timeout"] == 1.5 and gateway["retries"] == 2
    assert gateway["fast_period"] == 5 and gateway["counter_period"] == 60
    assert "serial" not in gateway
    listing = (await c.get("/configuration/gateways?saved=2")).text
    assert "Saved: version 2" in listing and "Main board gateway" in listing

    # rtu without a serial port: named at the serial port
    form.update(version="2", transport="rtu", **{"serial.port": "", "serial.parity": "X"})
    resp = await c.post("/configuration/gateways/gw1/edit", data=form)
    assert resp.status_code == 400
    assert 'aria-invalid="true"' in input_tag(resp.text, "f-serial-port")


async def test_a_device_off_then_on(client: AsyncClient, app: Litestar):
    c = await as_role(client, app)
    resp = await c.post("/configuration/devices/m1/enabled", data={"enabled": "off"})
    assert resp.status_code == 303
    assert resp.headers["location"].startswith("/configuration/devices?saved=2")
    m1 = next(d for d in config_document(app.state)["devices"] if d["id"] == "m1")
    assert m1["enabled"] is False
    page = (await c.get("/configuration/devices")).text
    row = re.search(r'<tr role="row" id="device-m1".*?</tr>', page, re.S).group(0)
    assert 'aria-pressed="false"' in row and 'name="enabled" value="on"' in row and "is-off" in row

    resp = await c.post("/configuration/devices/m1/enabled", data={"enabled": "on"})
    assert resp.status_code == 303
    m1 = next(d for d in config_document(app.state)["devices"] if d["id"] == "m1")
    assert m1.get("enabled", True) is True
    row = re.search(
        r'<tr role="row" id="device-m1".*?</tr>', (await c.get("/configuration/devices")).text, re.S
    ).group(0)
    assert 'aria-pressed="true"' in row

    resp = await c.post("/configuration/devices/m1/enabled", data={})
    assert resp.status_code == 400  # neither On nor Off: nothing changes
    resp = await c.post("/configuration/devices/hvac-rest/enabled", data={"enabled": "off"})
    assert resp.status_code == 400  # a virtual device is computed, never polled


async def test_add_rename_and_remove_a_panel(client: AsyncClient, app: Litestar):
    c = await as_role(client, app)
    page = (await c.get("/configuration/structure")).text
    resp = await c.post(
        "/configuration/structure/panels/new",
        data={"version": version_in(page), "id": "annex", "name": "Annex board"},
    )
    assert resp.status_code == 303
    assert resp.headers["location"] == "/configuration/structure?saved=2#panels"
    assert {"id": "annex", "name": "Annex board"} in config_document(app.state)["panels"]

    page = (await c.get("/configuration/structure/panels/annex/edit")).text
    resp = await c.post(
        "/configuration/structure/panels/annex/edit", data={"version": version_in(page), "name": "Annex"}
    )
    assert resp.status_code == 303
    assert {"id": "annex", "name": "Annex"} in config_document(app.state)["panels"]

    confirm = await c.get("/configuration/structure/panels/annex/remove")
    assert confirm.status_code == 200 and "Remove Annex (annex) from the configuration?" in confirm.text
    resp = await c.post(
        "/configuration/structure/panels/annex/remove", data={"version": version_in(confirm.text)}
    )
    assert resp.status_code == 303
    assert all(p["id"] != "annex" for p in config_document(app.state)["panels"])

    # a panel in use cannot go: the page says by what, and nothing changes
    version = config_document(app.state)["version"]
    confirm = await c.get("/configuration/structure/panels/main/remove")
    assert "still used" in confirm.text and "/configuration/devices/m1/edit" in confirm.text
    assert 'action="/configuration/structure/panels/main/remove"' not in confirm.text
    resp = await c.post("/configuration/structure/panels/main/remove", data={"version": str(version)})
    assert resp.status_code == 400
    assert config_document(app.state)["version"] == version

    # an id that breaks the pattern: named next to the id field of the add form
    resp = await c.post(
        "/configuration/structure/zones/new", data={"version": str(version), "id": "Bad Id", "name": "Roof"}
    )
    assert resp.status_code == 400
    assert 'aria-invalid="true"' in input_tag(resp.text, "f-id") and 'value="Bad Id"' in input_tag(
        resp.text, "f-id"
    )


async def test_remove_a_device_says_its_history_stays(client: AsyncClient, app: Litestar):
    c = await as_role(client, app)
    confirm = await c.get("/configuration/devices/pm-access/remove")
    assert "history stays" in confirm.text
    resp = await c.post("/configuration/devices/pm-access/remove", data={"version": version_in(confirm.text)})
    assert resp.status_code == 303
    assert all(d["id"] != "pm-access" for d in config_document(app.state)["devices"])
    listing = (await c.get(resp.headers["location"])).text
    assert "devices.pm-access: removed" in listing
    # a master of a virtual device is in use
    confirm = await c.get("/configuration/devices/m1/remove")
    assert "still used" in confirm.text and "/configuration/virtual-devices/hvac-rest/edit" in confirm.text


async def test_add_a_virtual_device(client: AsyncClient, app: Litestar):
    c = await as_role(client, app)
    page = (await c.get("/configuration/virtual-devices/new")).text
    form = {
        "version": version_in(page),
        "id": "offices-rest",
        "name": "Offices without the flat",
        "master": "e2",
        "slaves": ["e3"],
        "zone": "building",
        "exclude_from_total": "1",
    }
    resp = await c.post("/configuration/virtual-devices/new", data=form)
    assert resp.status_code == 303, problems(resp.text)
    virtual = next(v for v in config_document(app.state)["virtual_devices"] if v["id"] == "offices-rest")
    assert virtual == {
        "id": "offices-rest",
        "name": "Offices without the flat",
        "master": "e2",
        "slaves": ["e3"],
        "zone": "building",
        "exclude_from_total": True,
    }
    # a slave of another medium: named at the slaves
    form.update(id="mixed", version=str(config_document(app.state)["version"]), slaves=["water"])
    resp = await c.post("/configuration/virtual-devices/new", data=form)
    assert resp.status_code == 400
    assert 'id="f-slaves-error"' in resp.text and "same medium" in html.unescape(resp.text)
    assert re.search(r'value="water" checked', resp.text)


async def test_the_test_button_without_a_poller_says_so(client: AsyncClient, app: Litestar):
    c = await as_role(client, app)
    version = version_in((await c.get("/configuration/devices/new")).text)
    form = device_form(version, id="", original="")
    resp = await c.post("/configuration/devices/test", data=form, headers={"HX-Request": "true"})
    assert resp.status_code == 200
    assert "<html" not in resp.text  # a fragment for htmx
    assert "did not answer; is it running?" in html.unescape(resp.text)
    assert 'role="alert"' in resp.text
    # checked here first when the form cannot describe a device at all
    resp = await c.post(
        "/configuration/devices/test",
        data=device_form(version, address="300"),
        headers={"HX-Request": "true"},
    )
    assert "address" in resp.text and "247" in resp.text
    # without script: the whole form again, the person's input kept, the result inside
    resp = await c.post("/configuration/devices/test", data=device_form(version, name="Kept"))
    assert resp.status_code == 200 and "<html" in resp.text
    assert 'value="Kept"' in input_tag(resp.text, "f-name")
    assert 'action="/configuration/devices/new"' in resp.text
    assert "did not answer; is it running?" in html.unescape(resp.text)
    assert config_document(app.state)["version"] == int(version)  # a test saves nothing


async def test_a_stale_removal_asks_again_with_the_version_in_force(client: AsyncClient, app: Litestar):
    c = await as_role(client, app)
    confirm = (await c.get("/configuration/structure/zones/parking/remove")).text
    assert "still used" in confirm  # circuit ev and the chargers
    confirm = (await c.get("/configuration/devices/io2/remove")).text
    old = version_in(confirm)
    resp = await c.post("/configuration/devices/m1/enabled", data={"enabled": "off"})  # someone else
    assert resp.status_code == 303
    resp = await c.post("/configuration/devices/io2/remove", data={"version": old})
    assert resp.status_code == 409
    assert "changed by someone else meanwhile" in resp.text
    assert version_in(resp.text) == str(config_document(app.state)["version"])
    assert any(d["id"] == "io2" for d in config_document(app.state)["devices"])
    resp = await c.post("/configuration/devices/io2/remove", data={"version": version_in(resp.text)})
    assert resp.status_code == 303
    assert all(d["id"] != "io2" for d in config_document(app.state)["devices"])
