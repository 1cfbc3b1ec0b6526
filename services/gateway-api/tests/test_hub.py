"""The hub's gateway-api (EWS_HUB=1): every site whose streams reach the hub's nats-server, chosen with ?site=.

Two sites' streams are created straight in a test nats-server as an edge's sourcing creates them at the hub
(``EWS_READINGS_<site>``, ``EWS_CONFIG_<site>``; here with subjects, so the test can publish into them), each
with a ``SiteConfigured``; their figures are rows in ``hub_database(site)`` of the hub's chDB, as the hub's
aggregators write them. The hub's own auth service answers with the hub's codes (identity ``hub``)."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import nats
import pytest
import redis.asyncio as aioredis
from argon2 import PasswordHasher
from ews_analytics import migrate
from ews_auth import codes as auth_codes
from ews_auth.codes import CodeStore
from ews_auth.service import serve as auth_serve
from ews_contracts.events import CommandRequested
from ews_contracts.hub import hub_database
from ews_contracts.roles import Role
from ews_contracts.settings import Settings
from ews_contracts.site import Site, load_site
from ews_contracts.siteconfig import ConfigStore
from ews_contracts.store import get_store
from ews_contracts.streamnames import streams_for
from ews_contracts.streams import COMMANDS
from ews_gateway_api.app import create_app
from ews_gateway_api.testing import app_client
from httpx import AsyncClient
from litestar import Litestar
from nats.js.api import StreamConfig

from .conftest import ADMIN, CODES

pytestmark = pytest.mark.integration

EA = "energy_active_import"
H = datetime(2025, 6, 1, 8, tzinfo=UTC)  # 10:00 in Paris
CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def site_named(site_id: str, name: str) -> Site:
    demo = load_site(Settings().site_path)
    return Site.model_validate({**demo.model_dump(), "site": site_id, "name": name})


async def put_site_streams(nats_url: str, site: Site) -> None:
    """What an edge's hub-link creates at the hub (with subjects here: the test publishes into them)."""
    names = streams_for(site.site, hub=True)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=names.readings, subjects=[f"ews.{site.site}.reading.*"]))
        await js.add_stream(StreamConfig(name=names.config, subjects=[f"ews.{site.site}.site-configured.*"]))
        await js.add_stream(StreamConfig(name=names.of(COMMANDS), subjects=COMMANDS.subjects_of(site.site)))
        requested = CommandRequested(
            site=site.site, device="ev1", action="charge", value="wait", requested_by="user", deadline=H
        )
        await js.publish(requested.subject, requested.model_dump_json().encode(), stream=names.of(COMMANDS))
        await ConfigStore(js, site.site, names.config).put(
            site, expected=0, changed_by="test", how="site-file"
        )
    finally:
        await nc.close()


async def put_rows(settings: Settings, site: Site, rows: list[tuple[str, float]]) -> None:
    store = get_store(settings.clickhouse_dsn)
    database = hub_database(site.site)
    await migrate(store, database)
    await store.insert(
        f"{database}.consumption_hourly",
        [(site.site, d, EA, H, H.astimezone(site.tz).date(), round(v * 1000), 0, 0.0) for d, v in rows],
        ["site", "device", "quantity", "hour", "day", "value_milli", "estimated_milli", "cost"],
    )


@pytest.fixture
async def hub_settings(settings: Settings, fresh_redis: str, monkeypatch) -> Settings:
    monkeypatch.setenv("EWS_HUB", "1")
    monkeypatch.setattr(auth_codes, "PasswordHasher", lambda: CHEAP)
    return Settings()


@pytest.fixture
async def two_sites(hub_settings: Settings) -> tuple[Site, Site]:
    tag = secrets.token_hex(3)  # the chDB of the session is shared: each test its own databases
    alpha, beta = site_named(f"alpha{tag}", "Alpha building"), site_named(f"beta{tag}", "Beta building")
    alpha = Site.model_validate(  # a smaller site: three devices, no virtual ones
        {**alpha.model_dump(), "devices": [d.model_dump() for d in alpha.devices[:3]], "virtual_devices": []}
    )
    for site in (alpha, beta):
        await put_site_streams(hub_settings.nats_url, site)
    await put_rows(hub_settings, alpha, [("m1", 1000.0)])
    await put_rows(hub_settings, beta, [("m1", 2500.0)])
    return alpha, beta


@pytest.fixture
async def hub(
    hub_settings: Settings, two_sites: tuple[Site, Site]
) -> AsyncIterator[tuple[Litestar, AsyncClient]]:
    task = asyncio.create_task(auth_serve(hub_settings))
    app = create_app(hub_settings)
    try:
        async with app_client(app) as client:
            for _ in range(200):  # the auth service answers
                if (await client.post("/api/v1/auth/login", json={"pin": "00000"})).status_code != 503:
                    break
                await asyncio.sleep(0.05)
            for key in await app.state.redis.keys("ews:hub:auth:limits:*"):
                await app.state.redis.delete(key)
            yield app, client
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_hub_lists_and_serves_each_site(
    hub: tuple[Litestar, AsyncClient], two_sites: tuple[Site, Site]
) -> None:
    app, client = hub
    alpha, beta = two_sites
    assert (await client.get("/api/v1/sites")).status_code == 401
    assert (await client.post("/api/v1/auth/login", json=CODES["user"])).status_code == 200

    resp = await client.get("/api/v1/sites")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["hub"] is True
    listed = {s["id"]: s for s in body["sites"]}
    assert set(listed) == {alpha.site, beta.site}
    assert listed[alpha.site]["name"] == "Alpha building" and listed[alpha.site]["devices"] == 3
    assert listed[beta.site]["devices"] == len(beta.devices)
    assert (listed[beta.site]["timezone"], listed[beta.site]["currency"]) == ("Europe/Paris", "EUR")
    assert listed[alpha.site]["version"] == 1 and listed[alpha.site]["configured_at"]

    params = {"scope": "device:m1", "period": "day", "date": "2025-06-01"}
    for site, wh in ((alpha, 1000.0), (beta, 2500.0)):
        resp = await client.get("/api/v1/consumption", params={**params, "site": site.site})
        assert resp.status_code == 200, resp.text
        assert resp.json()["total"]["value"] == wh
        resp = await client.get("/api/v1/devices", params={"site": site.site})
        assert resp.status_code == 200, resp.text
        devices = resp.json()["devices"]
        assert len([d for d in devices if d["kind"] == "device"]) == len(site.devices)
        assert {d["state"] for d in devices if d["kind"] == "device"} <= {
            "unknown"
        }  # no live state at the hub
        one = await client.get(f"/api/v1/devices/{site.devices[0].id}", params={"site": site.site})
        assert one.status_code == 200, one.text
        resp = await client.get("/api/v1/site", params={"site": site.site})
        assert resp.status_code == 200 and resp.json()["site"] == site.site

    # several sites and none chosen: 400 naming them; an unknown one: 404; a malformed one: 400
    resp = await client.get("/api/v1/consumption", params=params)
    assert resp.status_code == 400 and resp.json()["code"] == "site-required"
    assert alpha.site in resp.json()["detail"] and beta.site in resp.json()["detail"]
    resp = await client.get("/api/v1/devices", params={"site": "nowhere"})
    assert resp.status_code == 404 and resp.json()["code"] == "unknown-site"
    assert "\n" not in resp.json()["detail"] and alpha.site in resp.json()["detail"]
    assert (await client.get("/api/v1/devices", params={"site": "Bad Site!"})).status_code == 400

    # the hub changes no site: that is done on the site's own server
    await client.post("/api/v1/auth/logout", json={"mode": "logout"})
    await client.post("/api/v1/auth/login", json=ADMIN)
    resp = await client.put(
        f"/api/v1/devices/{alpha.devices[0].id}/enabled", params={"site": alpha.site}, json={"enabled": False}
    )
    assert resp.status_code == 409 and resp.json()["code"] == "read-only-at-hub"
    # a command is sent to the site (here the hub's EWS_COMMANDS_<site> stores it, as the edge's would)
    resp = await client.post(
        "/api/v1/commands",
        params={"site": beta.site},
        json={"device": "ev1", "action": "charge", "value": "wait"},
    )
    assert resp.status_code == 202 and resp.json()["status"] == "requested", resp.text
    sent = resp.json()["id"]
    resp = await client.get(f"/api/v1/commands/{sent}", params={"site": beta.site})
    assert resp.status_code == 200 and resp.json()["status"] == "requested", resp.text
    resp = await client.post(
        "/api/v1/commands", params={"site": beta.site}, json={"device": "nowhere", "action": "charge"}
    )
    assert resp.status_code == 404
    resp = await client.get("/api/v1/site/config", params={"site": beta.site})
    assert resp.status_code == 200 and resp.json()["name"] == "Beta building"  # reading it is fine
    resp = await client.put(
        "/api/v1/site/config", params={"site": beta.site}, json=resp.json(), headers={"If-Match": '"1"'}
    )
    assert resp.status_code == 409 and resp.json()["code"] == "read-only-at-hub"
    resp = await client.get("/api/v1/commands", params={"site": beta.site})  # read from EWS_COMMANDS_<site>
    assert resp.status_code == 200, resp.text
    listed = [(c["id"], c["device"], c["status"]) for c in resp.json()["commands"]]
    assert listed[0] == (sent, "ev1", "requested") and [c[1:] for c in listed[1:]] == [("ev1", "expired")]

    health = (await client.get("/health")).json()
    assert health["site"] == "hub"


async def test_hub_finds_a_new_site(hub: tuple[Litestar, AsyncClient], hub_settings: Settings) -> None:
    app, client = hub
    await client.post("/api/v1/auth/login", json=CODES["user"])
    gamma = site_named(f"gamma{secrets.token_hex(3)}", "Gamma building")
    await put_site_streams(hub_settings.nats_url, gamma)
    await app.state.hub_sites.refresh()  # what the registry does every 10 s
    ids = [s["id"] for s in (await client.get("/api/v1/sites")).json()["sites"]]
    assert gamma.site in ids and len(ids) == 3


async def test_hub_command_to_an_unreachable_site_expires(
    hub: tuple[Litestar, AsyncClient], hub_settings: Settings, monkeypatch
) -> None:
    """No edge takes the site's subject (its link is cut): 202 all the same; sent again until its deadline
    and never after it; requested until the deadline (and the grace), then expired, listed all along."""
    from ews_gateway_api.domain import commands

    app, client = hub
    await client.post("/api/v1/auth/login", json=ADMIN)
    gamma = site_named(f"gamma{secrets.token_hex(3)}", "Gamma building")
    await put_site_streams(hub_settings.nats_url, gamma)
    nc = await nats.connect(hub_settings.nats_url)
    try:  # as the hub holds it: sourced from the edge, no subjects of its own
        names = streams_for(gamma.site, hub=True)
        await nc.jetstream().update_stream(StreamConfig(name=names.of(COMMANDS), subjects=[]))
    finally:
        await nc.close()
    await app.state.hub_sites.refresh()
    monkeypatch.setattr(commands, "EXPIRY_GRACE", 0.5)
    resp = await client.post(
        "/api/v1/commands",
        params={"site": gamma.site},
        json={"device": "ev1", "action": "charge", "value": "wait", "deadline_seconds": 1.5},
        headers={"Idempotency-Key": "k1"},
    )
    assert resp.status_code == 202 and resp.json()["status"] == "requested", resp.text
    sent = resp.json()["id"]
    again = await client.post(
        "/api/v1/commands",
        params={"site": gamma.site},
        json={"device": "ev1", "action": "charge", "value": "wait", "deadline_seconds": 1.5},
        headers={"Idempotency-Key": "k1"},
    )
    assert again.status_code == 202 and again.json()["id"] == sent
    assert len(app.state.command_retries) == 1  # sent again in the background
    resp = await client.get(f"/api/v1/commands/{sent}", params={"site": gamma.site})
    assert resp.status_code == 200 and resp.json()["status"] == "requested", resp.text
    listed = (await client.get("/api/v1/commands", params={"site": gamma.site})).json()["commands"]
    assert [(c["id"], c["status"]) for c in listed][0] == (sent, "requested")
    await asyncio.sleep(1.6)
    assert not app.state.command_retries  # the deadline passed: no more sends
    await asyncio.sleep(0.6)
    resp = await client.get(f"/api/v1/commands/{sent}", params={"site": gamma.site})
    assert resp.json()["status"] == "expired" and "reached" in resp.json()["error"], resp.text
    listed = (await client.get("/api/v1/commands", params={"site": gamma.site})).json()["commands"]
    assert [(c["id"], c["status"]) for c in listed][0] == (sent, "expired")
    assert (await client.get("/api/v1/commands/nope", params={"site": gamma.site})).status_code == 404


async def test_hub_site_picker_keeps_the_site(
    hub: tuple[Litestar, AsyncClient], two_sites: tuple[Site, Site]
) -> None:
    app, client = hub
    alpha, beta = two_sites
    await client.post("/api/v1/auth/login", json=CODES["installer"])
    # no site chosen yet (just signed in): a page shows the first site, named beside the picker
    resp = await client.get("/installation")
    assert resp.status_code == 200 and "Alpha building" in resp.text.split("<main", 1)[0]
    assert f'<option value="{alpha.site}" selected>' in resp.text
    resp = await client.get("/consumption/total-electricity", params={"site": beta.site})
    assert resp.status_code == 200, resp.text
    html = resp.text
    picker = re.search(
        r'<label[^>]*for="site-select"[^>]*>([^<]*)</label>\s*<select id="site-select" name="site"', html
    )
    assert picker is not None and picker.group(1).strip() == "Site"  # the accessible name
    assert f'<option value="{beta.site}" selected>Beta building</option>' in html
    assert f'<option value="{alpha.site}" >Alpha building</option>' in html
    nav = html.split('class="mainnav"', 1)[1].split("</nav>", 1)[0]
    links = re.findall(r'href="([^"]+)"', nav)
    assert links and all(link.endswith(f"?site={beta.site}") for link in links), (
        links
    )  # the navigation keeps it
    assert f'<meta name="ews-site" content="{beta.site}">' in html  # pages.js adds it to HTMX requests
    assert "Beta building" in html.split("<main", 1)[0]
    # the browser remembers the choice: a link without ?site= stays on Beta
    assert client.cookies.get("ews_site") == beta.site
    resp = await client.get("/installation")
    assert resp.status_code == 200 and "Beta building" in resp.text.split("<main", 1)[0]
    # a redirect keeps the site of the request
    resp = await client.get("/consumption", params={"site": beta.site})
    assert resp.status_code == 303 and resp.headers["location"].endswith(f"site={beta.site}")
    # ?site= wins over the cookie
    resp = await client.get("/installation", params={"site": alpha.site})
    assert resp.status_code == 200 and "Alpha building" in resp.text.split("<main", 1)[0]
    assert client.cookies.get("ews_site") == alpha.site


async def test_hub_has_its_own_codes(
    hub: tuple[Litestar, AsyncClient], two_sites: tuple[Site, Site], hub_settings: Settings
) -> None:
    app, client = hub
    alpha, _ = two_sites
    # a site's own codes (as its edge stores them) open nothing at the hub
    redis = aioredis.from_url(hub_settings.redis_url)
    try:
        site_codes = CodeStore(redis, alpha.site, CHEAP)
        await site_codes.ensure_defaults()
        await site_codes.set_codes(Role.ADMINISTRATOR, "24680", "13579 2468 13579")
        resp = await client.post("/api/v1/auth/login", json={"pin": "24680", "puk": "13579 2468 13579"})
        assert resp.status_code == 401, resp.text
        # the hub's factory administrator codes do
        resp = await client.post("/api/v1/auth/login", json=ADMIN)
        assert resp.status_code == 200, resp.text
        assert resp.json()["role"] == "administrator"
        assert await redis.keys("ews:hub:auth:*") and await redis.keys("ews:hub:session*")
        me = await client.get("/api/v1/me")
        assert me.status_code == 200 and me.json()["role"] == "administrator"
        for site in two_sites:  # the hub's roles see every site
            assert (await client.get("/api/v1/site", params={"site": site.site})).status_code == 200
        # the hub's logins are recorded as events in its own audit stream (its subjects only)
        nc = await nats.connect(hub_settings.nats_url)
        try:
            js = nc.jetstream()
            info = await js.stream_info("EWS_AUDIT")
            assert info.config.subjects == ["ews.hub.audit.*"]
            events = [
                json.loads((await js.get_msg("EWS_AUDIT", seq)).data)
                for seq in range(info.state.first_seq, info.state.last_seq + 1)
            ]
        finally:
            await nc.close()
        actions = {(e["site"], e["action"], e["role"]) for e in events}
        assert ("hub", "login-succeeded", "administrator") in actions
        assert any(site == "hub" and action == "login-failed" for site, action, _ in actions)  # the site's codes
    finally:
        await redis.aclose()


async def test_box_takes_its_own_site(client: AsyncClient) -> None:
    """On a box: the one site, ?site= optional; another id is 404; GET /api/v1/sites lists the one site."""
    await client.post("/api/v1/auth/login", json=CODES["user"])
    body = (await client.get("/api/v1/sites")).json()
    assert body["hub"] is False and [s["id"] for s in body["sites"]] == ["demo"]
    assert body["sites"][0]["version"] >= 1
    assert (await client.get("/api/v1/devices", params={"site": "demo"})).status_code == 200
    resp = await client.get("/api/v1/devices", params={"site": "other"})
    assert resp.status_code == 404 and resp.json()["code"] == "unknown-site"
    page = await client.get("/consumption/total-electricity")
    assert page.status_code == 200 and 'id="site-select"' not in page.text  # no picker for one site
    assert 'href="/installation"' in page.text or "?site=" not in page.text


async def test_every_page_and_read_route_answers_at_the_hub(
    hub: tuple[Litestar, AsyncClient], two_sites: tuple[Site, Site]
) -> None:
    """No page or JSON read of the hub fails (no live state, no commands, no site file there): each GET
    route without a path parameter, for each site, as the administrator (who may open every one)."""
    app, client = hub
    await client.post("/api/v1/auth/login", json=ADMIN)
    paths = sorted(
        {
            route.path
            for route in app.routes
            if "GET" in getattr(route, "methods", ())
            and "{" not in route.path
            and not route.path.startswith(("/static", "/schema", "/metrics"))
            and route.path not in ("/api/v1/backup", "/login")
        }
    )
    assert "/installation" in paths and "/api/v1/sites" in paths
    failed = []
    for site in two_sites:
        for path in paths:
            resp = await client.get(path, params={"site": site.site})
            if resp.status_code >= 500 and resp.status_code != 503:
                failed.append((site.site, path, resp.status_code))
    assert failed == []
    resp = await client.get("/configuration/admin/history", params={"site": two_sites[1].site})
    assert resp.status_code in (200, 404)
