"""Machine tokens through the real app, the real auth service, nats-server and redis-server: created by the
administrator (shown once, stored hashed), listed, revoked, audited; ``Authorization: Bearer`` on the JSON
API only (never the pages); a third party with only a token reads the site's devices, quantities and
consumption; roles' limits; the Origin check; refused tokens counted, audited and slowed down.
(The route × role matrix with a token of every role is in test_route_matrix.py.)"""

from __future__ import annotations

import hashlib
import re
from datetime import date

import httpx
import pytest
from ews_contracts.settings import Settings
from ews_contracts.tokens import TOKEN_RE, tokens_key
from ews_gateway_api import bearer
from ews_gateway_api.testing import BASE_URL
from httpx import AsyncClient
from litestar import Litestar

from .conftest import ADMIN, session_for, token_for
from .test_access import audit_events

pytestmark = pytest.mark.integration


async def as_admin(client: AsyncClient) -> None:
    client.cookies.clear()
    resp = await client.post("/api/v1/auth/login", json=ADMIN)
    assert resp.status_code == 200, resp.text


def bearer_header(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create(client: AsyncClient, name: str, role: str | None = None) -> dict:
    body = {"name": name} | ({"role": role} if role else {})
    resp = await client.post("/api/v1/tokens", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def third_party(app: Litestar, address: str = "203.0.113.7") -> AsyncClient:
    """A program elsewhere: its own address, no cookie jar shared with the administrator's browser."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(address, 40000)), base_url=BASE_URL)


async def redis_dump(app: Litestar) -> bytes:
    """Every key and value of the Redis database (strings, hashes, sets), concatenated."""
    r = app.state.redis
    out = []
    for key in await r.keys("*"):
        out.append(key)
        kind = (await r.type(key)).decode()
        if kind == "string":
            out.append(await r.get(key) or b"")
        elif kind == "hash":
            for field, value in (await r.hgetall(key)).items():
                out += [field, value]
        elif kind == "set":
            out += list(await r.smembers(key))
    return b"\n".join(out)


async def test_create_list_revoke_shown_once_stored_hashed(client: AsyncClient, app: Litestar) -> None:
    await as_admin(client)
    resp = await client.post("/api/v1/tokens", json={"name": "  Grafana   dashboards "})
    assert resp.status_code == 201, resp.text
    assert resp.headers["cache-control"] == "no-store"
    created = resp.json()
    assert set(created) == {"id", "name", "role", "created_at", "created_by", "token"}
    assert created["name"] == "Grafana dashboards" and created["role"] == "user"  # read-only by default
    assert created["created_by"] == "administrator"
    secret = created["token"]
    assert TOKEN_RE.match(secret) and secret.startswith(f"ews_{created['id']}_")

    # listed without the secret (and never again shown)
    listed = (await client.get("/api/v1/tokens")).json()["tokens"]
    assert listed == [{k: v for k, v in created.items() if k != "token"} | {"last_used_at": None}]
    assert secret not in (await client.get("/api/v1/tokens")).text
    # hashed at rest: the SHA-256 only, nowhere the token itself
    dump = await redis_dump(app)
    secret_part = secret.split("_", 2)[2]  # (the secret itself may contain "_")
    assert len(secret_part) == 43
    assert secret.encode() not in dump and secret_part.encode() not in dump
    stored = await app.state.redis.hget(tokens_key("demo"), created["id"])
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in stored

    # names are unique (case aside), roles are the four, names are not blank
    resp = await client.post("/api/v1/tokens", json={"name": "GRAFANA DASHBOARDS"})
    assert resp.status_code == 409 and resp.json()["code"] == "token-name-in-use"
    resp = await client.post("/api/v1/tokens", json={"name": "x", "role": "root"})
    assert resp.status_code == 400 and resp.json()["code"] == "invalid-request"
    resp = await client.post("/api/v1/tokens", json={"name": "   "})
    assert resp.status_code == 400 and "name" in resp.json()["detail"]
    installer = await create(client, "Home Assistant", "installer")
    assert installer["role"] == "installer"
    assert [t["name"] for t in (await client.get("/api/v1/tokens")).json()["tokens"]] == [
        "Grafana dashboards",
        "Home Assistant",
    ]

    # revoked: refused from the next request on
    async with third_party(app) as program:
        assert (await program.get("/api/v1/site", headers=bearer_header(secret))).status_code == 200
        resp = await client.delete(f"/api/v1/tokens/{created['id']}")
        assert resp.status_code == 204
        resp = await program.get("/api/v1/site", headers=bearer_header(secret))
        assert resp.status_code == 401 and resp.json()["code"] == "invalid-token"
    resp = await client.delete(f"/api/v1/tokens/{created['id']}")
    assert resp.status_code == 404 and resp.json()["code"] == "unknown-token"
    assert (await client.delete("/api/v1/tokens/not-an-id")).status_code == 404
    assert [t["id"] for t in (await client.get("/api/v1/tokens")).json()["tokens"]] == [installer["id"]]


async def test_a_third_party_with_only_a_token(client: AsyncClient, app: Litestar) -> None:
    """Done when: a program holding nothing but a token lists the site's devices and quantities, and reads
    consumption as its role allows."""
    await as_admin(client)
    secret = (await create(client, "Energy dashboard"))["token"]  # role user: view-only
    async with third_party(app) as program:
        auth = bearer_header(secret)
        assert (await program.get("/api/v1/site")).status_code == 401  # nothing without it
        resp = await program.get("/api/v1/site", headers=auth)
        assert resp.status_code == 200, resp.text
        assert "set-cookie" not in resp.headers  # no session, no cookie
        site = resp.json()
        assert [g["id"] for g in site["gateways"]] == ["gw1"]
        devices = {d["id"]: d for d in site["devices"]}
        assert len(devices) == len(app.state.site.devices) + len(app.state.site.virtual_devices)
        m1 = devices["m1"]
        assert m1["kind"] == "device" and m1["profile"] == "multifunction-meter-412045"
        assert m1["family"].startswith("D1") and m1["circuit"] == "hvac-lighting" and m1["zone"] == "building"
        quantities = {q["quantity"]: q for q in m1["quantities"]}
        assert quantities["energy_active_import"] == {
            "quantity": "energy_active_import",
            "unit": "Wh",
            "group": "energy",
            "counter": True,
        }
        assert quantities["power_active"]["unit"] == "W" and quantities["power_active"]["counter"] is False
        assert quantities["voltage_l1"]["unit"] == "V"
        water = {q["quantity"]: q for q in devices["water"]["quantities"]}
        assert water["water_volume"]["unit"] == "dm³" and devices["water"]["medium"] == "water"
        assert devices["hvac-rest"]["kind"] == "virtual" and devices["hvac-rest"]["quantities"] == [
            {"quantity": "energy_active_import", "unit": "Wh", "group": "energy", "counter": True}
        ]
        assert "charge" in devices["ev1"]["commands"]

        assert (await program.get("/api/v1/devices", headers=auth)).status_code == 200
        assert (await program.get("/api/v1/devices/m1", headers=auth)).json()["id"] == "m1"
        today = date.today().isoformat()
        resp = await program.get(
            "/api/v1/consumption",
            params={"scope": "device:m1", "period": "day", "date": today},
            headers=auth,
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["total"]["unit"] == "Wh"
        me = (await program.get("/api/v1/me", headers=auth)).json()
        assert me["role"] == "user" and me["pages"] == [] and me["permissions"] == ["view-consumption"]
        assert me["token"]["name"] == "Energy dashboard"
        # the user role may not command
        resp = await program.post("/api/v1/commands", json={"device": "ev1", "action": "charge"}, headers=auth)
        assert resp.status_code == 403 and resp.json()["code"] == "forbidden"
    listed = (await client.get("/api/v1/tokens")).json()["tokens"]
    assert listed[0]["last_used_at"] is not None


async def test_wrong_and_revoked_tokens_are_401(client: AsyncClient, app: Litestar) -> None:
    good = await token_for(app, "installer")
    token = good["Authorization"].removeprefix("Bearer ")
    token_id = TOKEN_RE.match(token).group(1)
    wrong_secret = f"ews_{token_id}_{'A' * 43}"
    for sent in ("nonsense", "", f"ews_{'0' * 12}_{'B' * 43}", wrong_secret, token[:-1]):
        resp = await client.get("/api/v1/site", headers=bearer_header(sent))
        assert resp.status_code == 401, sent
        assert resp.json()["code"] == "invalid-token"
        assert resp.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert (await client.get("/api/v1/site", headers=good)).status_code == 200
    assert (await client.get("/api/v1/site", headers={"Authorization": f"bearer {token}"})).status_code == 200
    # an explicit token decides, even beside a valid session
    client.cookies.clear()
    cookies = await session_for(app, "administrator")
    resp = await client.get("/api/v1/site", headers=bearer_header(wrong_secret), cookies=cookies)
    assert resp.status_code == 401
    resp = await client.get("/api/v1/backup", headers=await token_for(app, "user"), cookies=cookies)
    assert resp.status_code == 403  # the user token's role, not the administrator's session
    # another scheme is not a token: the session (or nothing) decides
    resp = await client.get("/api/v1/me", headers={"Authorization": "Basic eDp5"}, cookies=cookies)
    assert resp.status_code == 200 and resp.json()["role"] == "administrator"
    # revoked by the auth service: refused at once (no cache)
    await app.state.redis.hdel(tokens_key("demo"), token_id)
    assert (await client.get("/api/v1/site", headers=good)).status_code == 401


async def test_token_role_limits(client: AsyncClient, app: Litestar) -> None:
    admin, user, greenup = [await token_for(app, r) for r in ("administrator", "user", "greenUp")]
    # an administrator's token: everything of the role except codes and tokens, and no session
    assert (await client.get("/api/v1/site/config", headers=admin)).status_code == 200
    for method, path, body in (
        ("GET", "/api/v1/tokens", None),
        ("POST", "/api/v1/tokens", {"name": "escalation", "role": "administrator"}),
        ("DELETE", "/api/v1/tokens/0123456789ab", None),
        ("GET", "/api/v1/auth/codes", None),
    ):
        resp = await client.request(method, path, json=body, headers=admin)
        assert resp.status_code == 403 and resp.json()["code"] == "token-forbidden", (path, resp.text)
    for method, path, body in (
        ("PUT", "/api/v1/auth/codes/user", {"pin": "24680", "puk": "1" * 14}),
        ("PUT", "/api/v1/auth/codes/administrator", {"pin": "24680", "puk": "1" * 14}),
        ("PUT", "/api/v1/me/language", {"language": "fr"}),
        ("POST", "/api/v1/auth/logout", {"mode": "lock"}),
    ):
        resp = await client.request(method, path, json=body, headers=admin)
        assert resp.status_code == 403 and resp.json()["code"] == "session-only", (path, resp.text)
    assert (await client.get("/api/v1/me", headers=admin)).json()["permissions"] == sorted(
        ["view-consumption", "view-installation", "command-devices", "configure-site", "backup-restore"]
    )
    # the user token: view-only
    resp = await client.post("/api/v1/commands", json={"device": "ev1", "action": "charge"}, headers=user)
    assert resp.status_code == 403
    assert (await client.get("/api/v1/site/config", headers=user)).status_code == 403
    # a Green'Up token reads the installation
    assert (await client.get("/api/v1/devices?zone=parking", headers=greenup)).status_code == 200


async def test_pages_never_take_a_token(client: AsyncClient, app: Litestar) -> None:
    admin = await token_for(app, "administrator")
    client.cookies.clear()
    for path in ("/configuration/tokens", "/installation", "/consumption/total-electricity", "/codes"):
        resp = await client.get(path, headers=admin)
        assert resp.status_code == 401, path
        assert resp.headers["content-type"].startswith("text/html") and 'name="pin"' in resp.text
    resp = await client.post("/configuration/tokens", data={"name": "x"}, headers=admin)
    assert resp.status_code == 401
    assert (await client.get("/metrics", headers=admin)).status_code == 401


async def test_bearer_requests_need_no_origin_but_a_cookie_still_does(client: AsyncClient, app: Litestar) -> None:
    admin = await token_for(app, "administrator")
    evil = {"Origin": "https://evil.example"}
    client.cookies.clear()
    # a program: no Origin at all, or whatever Origin — no cookie, so no browser's ambient credential
    resp = await client.put("/api/v1/site/language", json={"language": "de"}, headers=admin)
    assert resp.status_code == 200, resp.text
    resp = await client.put("/api/v1/site/language", json={"language": "en"}, headers=admin | evil)
    assert resp.status_code == 200, resp.text
    # with a session cookie as well, a page of another site is still refused
    cookies = await session_for(app, "administrator")
    resp = await client.put("/api/v1/site/language", json={"language": "fr"}, headers=admin | evil, cookies=cookies)
    assert resp.status_code == 403 and resp.json()["code"] == "cross-origin"
    resp = await client.put("/api/v1/site/language", json={"language": "fr"}, headers=evil, cookies=cookies)
    assert resp.status_code == 403 and resp.json()["code"] == "cross-origin"
    # the JSON API still takes JSON only
    resp = await client.put(
        "/api/v1/site/language", content=b'{"language":"fr"}', headers=admin | {"content-type": "text/plain"}
    )
    assert resp.status_code == 415


async def test_refused_tokens_are_counted_audited_and_slowed(
    client: AsyncClient, app: Litestar, settings: Settings
) -> None:
    good = await token_for(app, "user")
    async with third_party(app, "198.51.100.9") as guesser:
        for n in range(1, bearer.FAILURE_LIMIT + 1):
            resp = await guesser.get("/api/v1/site", headers=bearer_header(f"ews_{n:012x}_{'C' * 43}"))
            assert resp.status_code == 401, n
        resp = await guesser.get("/api/v1/site", headers=bearer_header("guess"))
        assert resp.status_code == 429 and resp.json()["code"] == "too-many-attempts"
        assert 1 <= int(resp.headers["retry-after"]) <= bearer.FAILURE_WINDOW
        assert (await guesser.get("/api/v1/site", headers=good)).status_code == 429  # that address waits
        assert (await guesser.get("/api/v1/language")).status_code == 200  # public routes take no token
    async with third_party(app, "192.0.2.44") as other:  # another address is not slowed down
        assert (await other.get("/api/v1/site", headers=good)).status_code == 200
    refused = [e for e in await audit_events(settings) if e.action == "token-refused"]
    assert [e.client for e in refused] == ["198.51.100.9", "198.51.100.9"]  # the first, and the limit
    assert refused[0].detail.startswith("token 000000000001: unknown or revoked; refusal 1 ")
    assert f"refusal {bearer.FAILURE_LIMIT} " in refused[1].detail and "wait" in refused[1].detail


async def test_creation_and_revocation_are_audited(client: AsyncClient, app: Litestar, settings: Settings) -> None:
    await as_admin(client)
    created = await create(client, "Backup script", "installer")
    assert (await client.delete(f"/api/v1/tokens/{created['id']}")).status_code == 204
    events = [e for e in await audit_events(settings) if e.action.startswith("token-")]
    assert [(e.action, e.role, e.client) for e in events] == [
        ("token-created", "administrator", "testclient"),
        ("token-revoked", "administrator", "testclient"),
    ]
    for e in events:
        assert e.detail == f"token {created['id']} 'Backup script' with the installer role"
        assert created["token"] not in e.model_dump_json()


async def test_only_the_administrator_manages_tokens(client: AsyncClient, app: Litestar) -> None:
    for role in ("installer", "greenUp", "user"):
        client.cookies.clear()
        client.cookies.update(await session_for(app, role))
        assert (await client.get("/api/v1/tokens")).status_code == 403
        assert (await client.post("/api/v1/tokens", json={"name": role})).status_code == 403
        assert (await client.get("/configuration/tokens")).status_code == 403


# --- the page ------------------------------------------------------------------------------------------


async def test_machine_tokens_page(client: AsyncClient, app: Litestar) -> None:
    client.cookies.clear()
    client.cookies.update(await session_for(app, "administrator"))
    resp = await client.get("/configuration/tokens")
    assert resp.status_code == 200, resp.text
    page = resp.text
    assert "<h1>Machine tokens</h1>" in page
    assert '<a href="/configuration/tokens" aria-current="page">Machine tokens</a>' in page
    assert "No token yet." in page
    assert '<option value="user" selected>' in page  # read-only by default
    # the installer's Configuration has no such section
    async with third_party(app) as browser:
        browser.cookies.update(await session_for(app, "installer"))
        installer = (await browser.get("/configuration/site")).text
    assert "Codes" in installer and "/configuration/tokens" not in installer

    # create: the secret on this answer only, with the copy hint
    resp = await client.post("/configuration/tokens", data={"name": "Home Assistant", "role": "greenUp"})
    assert resp.status_code == 201, resp.text
    assert resp.headers["cache-control"] == "no-store"
    secret = re.search(r'<code class="token-secret" id="token-secret">([^<]+)</code>', resp.text).group(1)
    assert TOKEN_RE.match(secret)
    assert "Copy it now: it is shown only this once." in resp.text
    assert 'data-copy="token-secret"' in resp.text
    listed = (await client.get("/configuration/tokens")).text
    assert "Home Assistant" in listed and secret not in listed and "Green&#39;Up" in listed
    async with third_party(app) as program:
        assert (await program.get("/api/v1/devices", headers=bearer_header(secret))).status_code == 200

    # a taken name or none: the form again, the message next to the field
    resp = await client.post("/configuration/tokens", data={"name": "home assistant", "role": "user"})
    assert resp.status_code == 409 and 'id="err-name"' in resp.text and 'value="home assistant"' in resp.text
    resp = await client.post("/configuration/tokens", data={"name": " ", "role": "user"})
    assert resp.status_code == 400 and 'id="err-name"' in resp.text

    # revoke: a confirmation, then the list without it
    token_id = TOKEN_RE.match(secret).group(1)
    resp = await client.get(f"/configuration/tokens/{token_id}/revoke")
    assert resp.status_code == 200 and "Revoke the token “Home Assistant”" in resp.text
    resp = await client.post(f"/configuration/tokens/{token_id}/revoke")
    assert resp.status_code == 303 and resp.headers["location"] == "/configuration/tokens?revoked=Home%20Assistant"
    resp = await client.get(resp.headers["location"])
    assert "Token “Home Assistant” revoked" in resp.text and f"token-{token_id}" not in resp.text
    assert (await client.get(f"/configuration/tokens/{token_id}/revoke")).status_code == 404
    async with third_party(app) as program:
        assert (await program.get("/api/v1/devices", headers=bearer_header(secret))).status_code == 401


async def test_openapi_documents_the_bearer_scheme(app: Litestar) -> None:
    schema = app.openapi_schema.to_schema()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearer"]["type"] == "http" and schemes["bearer"]["scheme"] == "bearer"
    assert schema["security"] == [{"session": []}, {"bearer": []}]
    paths = schema["paths"]
    for path, method in (
        ("/api/v1/tokens", "get"),
        ("/api/v1/tokens", "post"),
        ("/api/v1/tokens/{token_id}", "delete"),
        ("/api/v1/auth/codes", "get"),
        ("/api/v1/auth/logout", "post"),
        ("/api/v1/me/language", "put"),
    ):
        assert paths[path][method]["security"] == [{"session": []}], (path, method)
        assert {"401", "403"} <= set(paths[path][method]["responses"])
    site = paths["/api/v1/site"]["get"]
    assert "security" not in site and {"401", "429"} <= set(site["responses"])
    assert paths["/api/v1/tokens"]["post"]["responses"]["201"]["content"]["application/json"]
