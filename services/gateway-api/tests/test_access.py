"""Access control over HTTP (requirements A1–A4, L1–L2): two browsers = two cookie-carrying clients with
different addresses, in front of the real auth service, nats-server and redis-server."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import nats
import pytest
from ews_contracts.events import AuditRecorded
from ews_contracts.settings import Settings
from ews_gateway_api import sessions
from ews_gateway_api.app import create_app
from ews_gateway_api.sessions import (
    ABSOLUTE_TIMEOUT,
    IDLE_TIMEOUT,
    SESSION_COOKIE,
    hashed_id,
    role_sessions_key,
)
from ews_gateway_api.testing import BASE_URL, app_client
from httpx import AsyncClient
from litestar import Litestar

from .conftest import ADMIN, CODES, session_for

pytestmark = pytest.mark.integration

USER = CODES["user"]
LOGIN = "/api/v1/auth/login"


@asynccontextmanager
async def browser(app: Litestar, address: str) -> AsyncIterator[AsyncClient]:
    """Another browser (own cookie jar, own address) on the app already started by ``client``."""
    transport = httpx.ASGITransport(app=app, client=(address, 50000))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as c:
        yield c


async def audit_events(settings: Settings) -> list[AuditRecorded]:
    nc = await nats.connect(settings.nats_url)
    try:
        sub = await nc.jetstream().pull_subscribe("ews.demo.audit.*", stream="EWS_AUDIT")
        msgs = await sub.fetch(200, timeout=1)
        return [AuditRecorded.model_validate_json(m.data) for m in msgs]
    finally:
        await nc.close()


async def test_logout_and_lock_with_two_browsers(client: AsyncClient, app: Litestar) -> None:
    async with browser(app, "10.0.0.2") as other:
        # A3: PIN, then the PUK; the role's home page comes back
        resp = await client.post(LOGIN, json={"pin": USER["pin"]})
        assert resp.status_code == 401 and resp.json()["puk_required"] is True
        resp = await client.post(LOGIN, json=USER)
        assert resp.status_code == 200 and resp.json()["pages"] == ["consumption"]
        # A4 Logout: this browser needs the PIN only; the other browser needs PIN + PUK
        assert (await client.post("/api/v1/auth/logout", json={"mode": "logout"})).status_code == 200
        assert (await client.get("/api/v1/me")).status_code == 401
        assert (await client.post(LOGIN, json={"pin": USER["pin"]})).status_code == 200
        resp = await other.post(LOGIN, json={"pin": USER["pin"]})
        assert resp.status_code == 401 and resp.json()["puk_required"] is True
        assert (await other.post(LOGIN, json=USER)).status_code == 200
        # both sessions live side by side
        assert (await client.get("/api/v1/me")).json()["role"] == "user"
        assert (await other.get("/api/v1/me")).json()["role"] == "user"
        # A4 Lock on the first browser: PIN + PUK there; the other browser keeps its session and unlock
        resp = await client.post("/api/v1/auth/logout", json={"mode": "lock"})
        assert resp.json() == {"mode": "lock", "puk_required_next": True}
        assert 'ews_unlock=""' in resp.headers["set-cookie"] or "ews_unlock=;" in resp.headers["set-cookie"]
        resp = await client.post(LOGIN, json={"pin": USER["pin"]})
        assert resp.status_code == 401 and resp.json()["puk_required"] is True
        assert (await other.get("/api/v1/me")).status_code == 200
        assert (await other.post("/api/v1/auth/logout")).status_code == 200
        assert (await other.post(LOGIN, json={"pin": USER["pin"]})).status_code == 200


async def test_guessing_from_one_browser_does_not_lock_out_the_real_user(
    client: AsyncClient, app: Litestar
) -> None:
    statuses = []
    for n in range(10):
        resp = await client.post(LOGIN, json={"pin": f"{30000 + n}", "puk": "1" * 14})
        statuses.append(resp.status_code)
    assert statuses[:6] == [401] * 6 and set(statuses[6:]) == {429}
    assert int(resp.headers["Retry-After"]) >= 1
    async with browser(app, "10.0.0.3") as real:
        resp = await real.post(LOGIN, json=ADMIN)
        assert resp.status_code == 200 and resp.json()["role"] == "administrator"


async def test_session_cookie_and_timeouts(client: AsyncClient, app: Litestar) -> None:
    resp = await client.post(LOGIN, json=USER)
    sid = resp.cookies[SESSION_COOKIE]
    cookie = next(c for c in resp.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE))
    assert (
        "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and f"Max-Age={IDLE_TIMEOUT}" in cookie
    )
    redis = app.state.redis
    key = f"ews:demo:session:{hashed_id(sid)}"
    assert 0 < await redis.ttl(key) <= IDLE_TIMEOUT  # idle timeout: the store entry's TTL
    stored = json.loads(await redis.get(key))
    assert stored["role"] == "user" and abs(stored["login_at"] - time.time()) < 5
    assert await redis.sismember(role_sessions_key("demo", "user"), hashed_id(sid))
    await redis.expire(key, 100)
    resp = await client.get("/api/v1/me")
    assert resp.status_code == 200 and await redis.ttl(key) > 100  # renewed by use
    # absolute timeout: 12 h after the login the session is over, however busy it is
    stored["login_at"] = time.time() - ABSOLUTE_TIMEOUT - 1
    await redis.set(key, json.dumps(stored), ex=600)
    resp = await client.get("/api/v1/me")
    assert resp.status_code == 401 and await redis.get(key) is None
    # a session without a login time is not accepted either
    await redis.set(key, json.dumps({"role": "administrator"}), ex=600)
    client.cookies.set(SESSION_COOKIE, sid)
    assert (await client.get("/api/v1/me")).status_code == 401


async def test_redis_never_holds_a_session_id(client: AsyncClient, app: Litestar) -> None:
    """Whoever reads Redis (keys and values) finds no session id to present as a cookie."""
    resp = await client.post(LOGIN, json=USER)
    assert resp.status_code == 200
    sid = resp.cookies[SESSION_COOKIE]
    redis = app.state.redis
    keys = [k.decode() for k in await redis.keys("*")]
    assert f"ews:demo:session:{hashed_id(sid)}" in keys
    assert not [k for k in keys if sid in k]
    for key in keys:
        kind = (await redis.type(key)).decode()
        if kind == "string":
            assert sid.encode() not in await redis.get(key)
        elif kind == "set":
            assert not [m for m in await redis.smembers(key) if sid.encode() in m]
    assert (await client.get("/api/v1/me")).status_code == 200  # the session works all the same


async def test_secure_cookies_behind_https(settings: Settings, fresh_redis: str, monkeypatch) -> None:
    monkeypatch.setenv("EWS_SECURE_COOKIES", "true")
    app = create_app(Settings())
    async with app_client(app) as c:
        cookies = await session_for(app, "user")
        resp = await c.put("/api/v1/language", json={"language": "de"}, cookies=cookies)
        assert resp.status_code == 200
        for cookie in resp.headers.get_list("set-cookie"):
            assert "Secure" in cookie, cookie


async def test_code_change_revokes_sessions_and_unlocks(
    client: AsyncClient, app: Litestar, settings: Settings
) -> None:
    async with browser(app, "10.0.0.4") as user_pc, browser(app, "10.0.0.5") as admin_pc:
        assert (await client.post(LOGIN, json=USER)).status_code == 200
        assert (await user_pc.post(LOGIN, json=USER)).status_code == 200
        assert (await admin_pc.post(LOGIN, json=ADMIN)).status_code == 200
        assert (await client.get("/api/v1/me")).json()["default_codes_in_use"] is True
        status = (await admin_pc.get("/api/v1/auth/codes")).json()["roles"]
        assert {r["role"]: r["default_codes"] for r in status} == dict.fromkeys(CODES, True)

        # the user may not change another role's codes, nor its own without the current ones
        resp = await client.put("/api/v1/auth/codes/installer", json={"pin": "12121", "puk": "1" * 14})
        assert resp.status_code == 403
        resp = await client.put("/api/v1/auth/codes/user", json={"pin": "12121", "puk": "1" * 14})
        assert resp.status_code == 403 and resp.json()["detail"] == "the current PIN or PUK is wrong"
        assert (await client.get("/api/v1/auth/codes")).status_code == 403
        # PINs stay unique; unknown role
        resp = await admin_pc.put("/api/v1/auth/codes/user", json={"pin": "55555", "puk": "1" * 14})
        assert resp.status_code == 409 and "another role" in resp.json()["detail"]
        resp = await admin_pc.put("/api/v1/auth/codes/guest", json={"pin": "12121", "puk": "1" * 14})
        assert resp.status_code == 404

        # the administrator changes the user's codes: every user session and unlock ends
        resp = await admin_pc.put("/api/v1/auth/codes/user", json={"pin": "24680", "puk": "13579 2468 13579"})
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"role": "user", "sessions_revoked": 2, "signed_out": False}
        assert (await client.get("/api/v1/me")).status_code == 401
        assert (await user_pc.get("/api/v1/me")).status_code == 401
        assert (await admin_pc.get("/api/v1/me")).status_code == 200  # other roles untouched
        # old codes stop working; the PIN alone is no longer enough on the unlocked browsers
        assert (await client.post(LOGIN, json=USER)).status_code == 401
        resp = await user_pc.post(LOGIN, json={"pin": "24680"})
        assert resp.status_code == 401 and resp.json()["puk_required"] is True
        resp = await user_pc.post(LOGIN, json={"pin": "24680", "puk": "13579246813579"})
        assert resp.status_code == 200 and resp.json()["default_codes"] is False
        assert (await user_pc.get("/api/v1/me")).json()["default_codes_in_use"] is False

        # the user changes its own codes with the current ones: signed out, the new codes work
        resp = await user_pc.put(
            "/api/v1/auth/codes/user",
            json={"current_pin": "24680", "current_puk": "13579 2468 13579", "pin": "86420", "puk": "2" * 14},
        )
        assert resp.status_code == 200 and resp.json()["signed_out"] is True
        assert (await user_pc.get("/api/v1/me")).status_code == 401
        assert (await user_pc.post(LOGIN, json={"pin": "86420"})).json()["puk_required"] is True
        assert (await user_pc.post(LOGIN, json={"pin": "86420", "puk": "2" * 14})).status_code == 200

    events = await audit_events(settings)
    changes = [(e.role, e.detail) for e in events if e.action == "code-changed"]
    assert changes == [("user", "by administrator"), ("user", "by user")]
    assert any(
        e.action == "login-failed" and e.detail == "wrong current codes in a code change" for e in events
    )


async def test_language_per_browser_and_site_default(client: AsyncClient, app: Litestar) -> None:
    # anonymous, on the login page: the site default, then this browser's choice (a cookie)
    resp = await client.get("/api/v1/language")
    assert resp.json() == {"language": "en", "default": "en", "languages": resp.json()["languages"]}
    assert len(resp.json()["languages"]) == 13 and {"zh", "fr-BE", "nl-BE", "el"} <= set(
        resp.json()["languages"]
    )
    resp = await client.put("/api/v1/language", json={"language": "nl-BE"})
    assert resp.status_code == 200 and resp.json()["language"] == "nl-BE" and resp.json()["default"] == "en"
    assert SESSION_COOKIE not in resp.cookies  # no session for anonymous visitors
    assert (await client.put("/api/v1/language", json={"language": "xx"})).status_code == 400
    # the choice follows into the session
    await client.post(LOGIN, json=USER)
    assert (await client.get("/api/v1/me")).json()["language"] == "nl-BE"
    assert (await client.put("/api/v1/site/language", json={"language": "de"})).status_code == 403

    async with browser(app, "10.0.0.6") as admin_pc:
        await admin_pc.post(LOGIN, json=ADMIN)
        assert (await admin_pc.get("/api/v1/me")).json()["language"] == "en"
        resp = await admin_pc.put("/api/v1/site/language", json={"language": "fr"})
        assert resp.status_code == 200 and resp.json()["default"] == "fr"
        assert app.state.site.language == "fr"  # a new version of the configuration
        assert (await admin_pc.get("/api/v1/site/config/history")).json()[0]["changes"] == ["language: en → fr"]
        # sessions that did not choose follow the new default; a choice is kept
        assert (await admin_pc.get("/api/v1/me")).json()["language"] == "fr"
        assert (await client.get("/api/v1/me")).json()["language"] == "nl-BE"
        # a session's choice does not change the default
        resp = await admin_pc.put("/api/v1/me/language", json={"language": "pl"})
        assert resp.json()["language"] == "pl"
        assert (await admin_pc.get("/api/v1/language")).json() == {
            "language": "pl",
            "default": "fr",
            "languages": resp.json()["languages"],
        }
        assert (await admin_pc.put("/api/v1/site/language", json={"language": "xx"})).status_code == 400


async def test_the_session_clock_is_used(client: AsyncClient, app: Litestar, monkeypatch) -> None:
    await client.post(LOGIN, json=USER)
    assert (await client.get("/api/v1/me")).status_code == 200
    monkeypatch.setattr(sessions, "now", lambda: time.time() + ABSOLUTE_TIMEOUT + 1)
    assert (await client.get("/api/v1/me")).status_code == 401
