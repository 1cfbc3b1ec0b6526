"""The gateway-api app (create_app) with the real auth service, nats-server, redis-server and chDB."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest
from ews_analytics import migrate
from ews_contracts.live import LiveDevice, live_key
from ews_contracts.settings import Settings
from ews_contracts.store import get_store
from ews_gateway_api.app import create_app, discover
from ews_gateway_api.sessions import SESSION_COOKIE
from ews_gateway_api.testing import app_client
from httpx import AsyncClient
from litestar import Litestar

from .conftest import ADMIN, CODES, session_for

pytestmark = pytest.mark.integration


def test_domains_are_discovered() -> None:
    names = {m.__name__.rsplit(".", 1)[-1] for m in discover()}
    assert {"auth", "commands", "consumption", "devices", "health"} <= names


async def test_login_logout_lock(client: AsyncClient, app: Litestar) -> None:
    # first login on this browser: the PIN alone is not enough
    resp = await client.post("/api/v1/auth/login", json={"pin": ADMIN["pin"]})
    assert resp.status_code == 401
    body = resp.json()
    assert body["puk_required"] is True and body["detail"]
    assert SESSION_COOKIE not in resp.cookies

    resp = await client.post("/api/v1/auth/login", json=ADMIN)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "role": "administrator",
        "pages": ["installation", "consumption", "configuration"],
        "default_codes": True,
    }
    set_cookies = resp.headers.get_list("set-cookie")
    session_cookie = next(c for c in set_cookies if c.startswith(f"{SESSION_COOKIE}="))
    unlock_cookie = next(c for c in set_cookies if c.startswith("ews_unlock="))
    for cookie in (session_cookie, unlock_cookie):
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert "secure" not in cookie.lower()
    assert "Max-Age=34560000" in unlock_cookie

    me = await client.get("/api/v1/me")
    assert me.status_code == 200
    assert me.json()["role"] == "administrator"
    assert me.json()["pages"] == ["installation", "consumption", "configuration"]
    assert me.json()["language"] == "en" and me.json()["default_codes_in_use"] is True
    assert me.json()["timezone"] == "Europe/Paris"  # the UI takes "today" in the site's zone
    assert "command-devices" in me.json()["permissions"] and "greenup-details" not in me.json()["permissions"]

    # Logout: session gone, PIN alone is enough on this browser
    resp = await client.post("/api/v1/auth/logout", json={"mode": "logout"})
    assert resp.status_code == 200 and resp.json() == {"mode": "logout", "puk_required_next": False}
    assert (await client.get("/api/v1/me")).status_code == 401
    resp = await client.post("/api/v1/auth/login", json={"pin": ADMIN["pin"]})
    assert resp.status_code == 200 and resp.json()["role"] == "administrator"
    assert (await client.get("/api/v1/me")).status_code == 200

    # Lock: session gone and the PUK is required again
    resp = await client.post("/api/v1/auth/logout", json={"mode": "lock"})
    assert resp.status_code == 200 and resp.json()["puk_required_next"] is True
    assert (await client.get("/api/v1/me")).status_code == 401
    resp = await client.post("/api/v1/auth/login", json={"pin": ADMIN["pin"]})
    assert resp.status_code == 401 and resp.json()["puk_required"] is True
    # the unlock token of the locked browser is revoked, not just forgotten by the browser
    resp = await client.post("/api/v1/auth/login", json={"pin": "99999", "puk": "00000999900000"})
    assert resp.status_code == 200
    # no body: a plain Logout
    resp = await client.post("/api/v1/auth/logout")
    assert resp.status_code == 200 and resp.json() == {"mode": "logout", "puk_required_next": False}
    resp = await client.post("/api/v1/auth/logout", json={"mode": "sleep"})
    assert resp.status_code == 401  # already logged out: the guard answers before the body is read


async def test_session_id_changes_at_login(client: AsyncClient, app: Litestar) -> None:
    client.cookies.set(SESSION_COOKIE, "a" * 64)  # planted by someone else
    resp = await client.post("/api/v1/auth/login", json=CODES["user"])
    assert resp.status_code == 200
    new = resp.cookies.get(SESSION_COOKIE)
    assert new and new != "a" * 64
    assert await app.stores.get("sessions").get("a" * 64) is None
    # logging in again (another role) rotates again and drops the old session
    resp = await client.post("/api/v1/auth/login", json=CODES["installer"])
    assert resp.status_code == 200 and resp.json()["role"] == "installer"
    newer = resp.cookies.get(SESSION_COOKIE)
    assert newer != new and await app.stores.get("sessions").get(new) is None


async def test_wrong_codes_and_retry_after(client: AsyncClient) -> None:
    # without a PUK step on this browser every PIN is answered alike: the PUK is asked for
    for pin in ("12345", ADMIN["pin"]):
        resp = await client.post("/api/v1/auth/login", json={"pin": pin})
        assert resp.status_code == 401
        assert resp.json()["detail"] == "enter the PUK as well" and resp.json()["puk_required"] is True
    resp = await client.post("/api/v1/auth/login", json={"pin": "99999", "puk": "12345 1234 12345"})
    assert resp.status_code == 401 and resp.json()["detail"] == "wrong PIN or PUK"
    assert resp.json()["puk_required"] is False
    resp = await client.post("/api/v1/auth/login", json={"pin": "9"})
    assert resp.status_code == 401 and resp.json()["detail"] == "the PIN has 5 digits"
    resp = await client.post("/api/v1/auth/login", json={"puk": "1"})
    assert resp.status_code == 400 and "pin" in resp.json()["detail"]
    statuses = [
        (await client.post("/api/v1/auth/login", json={"pin": "12345", "puk": "1" * 14})).status_code
        for _ in range(4)
    ]
    assert statuses == [401, 401, 401, 429]
    resp = await client.post("/api/v1/auth/login", json=ADMIN)
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "1"
    assert resp.json()["retry_after"] > 0


async def test_language_per_session(client: AsyncClient) -> None:
    await client.post("/api/v1/auth/login", json=CODES["user"])
    resp = await client.put("/api/v1/me/language", json={"language": "fr-BE"})
    assert resp.status_code == 200 and resp.json()["language"] == "fr-BE"
    assert (await client.get("/api/v1/me")).json()["language"] == "fr-BE"
    resp = await client.put("/api/v1/me/language", json={"language": "xx"})
    # the session reads French (fr-BE): the detail is French, the code stable
    assert resp.status_code == 400 and resp.json()["code"] == "unknown-language"
    assert "'xx'" in resp.json()["detail"]
    resp = await client.post("/api/v1/auth/logout", json={"mode": "sleep"})
    assert resp.status_code == 400, resp.text
    detail = resp.json()["detail"]
    assert detail.startswith("Validation failed for POST /api/v1/auth/logout: mode") and "\n" not in detail
    assert (await client.get("/api/v1/me")).status_code == 200  # still logged in


async def test_devices_merge_site_and_live_state(client: AsyncClient, app: Litestar) -> None:
    await client.post("/api/v1/auth/login", json=CODES["user"])
    now = datetime(2025, 6, 1, 10, 0, tzinfo=UTC)
    live = LiveDevice(
        device="ev1",
        state="on",
        updated_at=now,
        values={"power_active": 7200.0},
        states={"charger": "charging"},
    )
    await app.state.redis.set(live_key("demo", "ev1"), live.model_dump_json())
    await app.state.redis.set(live_key("demo", "m1"), "{not json")

    resp = await client.get("/api/v1/devices")
    assert resp.status_code == 200
    devices = {d["id"]: d for d in resp.json()["devices"]}
    site = app.state.site
    assert list(devices) == [d.id for d in site.devices] + [v.id for v in site.virtual_devices]
    assert {"m1", "e2", "water", "gas", "ev1"} <= set(devices)
    assert devices["m1"]["state"] == "unknown"  # unreadable live state is ignored
    assert devices["water"] == {
        "id": "water",
        "name": "Water main",
        "kind": "device",
        "virtual": None,
        "profile": "pulse-concentrator-004687",
        "gateway": "gw1",
        "address": 5,
        "position": 1,
        "side": None,
        "medium": "water",
        "panel": "main",
        "zone": "building",
        "circuit": "utilities",
        "enabled": True,
        "exclude_from_total": False,
        "state": "unknown",
        "reason": "",
        "values": {},
        "states": {},
        "updated_at": None,
        "age_s": None,
        "stale": False,
        "address_label": "5-1",
        "functions": ["measure", "link"],  # shares address 5 with the gas meter
        "breaker": None,
        "tables": [],
        "commands": [],
    }

    one = (await client.get("/api/v1/devices/ev1")).json()
    assert one["states"]["charger"] == "charging"
    assert one["values"] == {"power_active": 7200.0} and one["state"] == "on"
    assert one["updated_at"] == "2025-06-01T10:00:00Z"
    assert one == devices["ev1"] | {"age_s": one["age_s"]}  # age_s: seconds since updated_at, at each call

    resp = await client.get("/api/v1/devices/nope")
    assert resp.status_code == 404 and resp.json()["detail"] == "unknown device 'nope'"


@pytest.mark.parametrize(
    ("day", "hours", "first"),
    [
        ("2025-06-01", 24, "2025-06-01T00:00:00+02:00"),
        ("2025-03-30", 23, "2025-03-30T00:00:00+01:00"),
        ("2025-10-26", 25, "2025-10-26T00:00:00+02:00"),
    ],
)
async def test_consumption_of_an_empty_database(
    client: AsyncClient, day: str, hours: int, first: str
) -> None:
    await client.post("/api/v1/auth/login", json=CODES["user"])
    resp = await client.get(
        "/api/v1/consumption", params={"scope": "total-electricity", "period": "day", "date": day}
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert len(body["buckets"]) == hours
    assert body["buckets"][0] == {"start": first, "value": 0.0, "unit": "Wh", "cost": 0.0, "no_data": True}
    assert body["total"] == {"value": 0.0, "unit": "Wh", "cost": 0.0, "currency": "EUR", "no_data": True}
    assert body["has_data"] is False
    assert body["previous"]["total"] == {
        "value": 0.0,
        "unit": "Wh",
        "cost": 0.0,
        "currency": "EUR",
        "no_data": True,
    }
    assert all(b["no_data"] for b in body["previous"]["buckets"])

    resp = await client.get("/api/v1/consumption/datalogger.csv", params={"date": day})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/csv")
    assert "attachment" in resp.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(resp.text)))
    assert rows[0] == ["start", "quantity", "unit", "value", "cost", "currency", "unpriced"]
    assert rows[1] == [first, "energy_active_import", "Wh", "0.0", "0.0", "EUR", "false"]
    assert len(rows) == hours + 1


async def test_consumption_defaults_and_bad_parameters(client: AsyncClient) -> None:
    await client.post("/api/v1/auth/login", json=CODES["installer"])
    resp = await client.get("/api/v1/consumption")  # total-electricity, today
    assert resp.status_code == 200 and resp.json()["period"] == "day"
    assert len(resp.json()["buckets"]) in (23, 24, 25)
    resp = await client.get("/api/v1/consumption", params={"scope": "total-global", "period": "year"})
    assert resp.status_code == 200 and len(resp.json()["buckets"]) == 12 and resp.json()["unit"] == "EUR"
    for params, fragment in [
        ({"scope": "nope"}, "unknown scope 'nope'"),
        ({"scope": "zone:mars"}, "unknown zone 'mars'"),
        ({"period": "week"}, "unknown period 'week'"),
        ({"date": "01/06/2025"}, "invalid date '01/06/2025'"),
    ]:
        for path in ("/api/v1/consumption", "/api/v1/consumption/datalogger.csv"):
            resp = await client.get(path, params=params)
            assert resp.status_code == 400, (path, params, resp.text)
            assert fragment in resp.json()["detail"] and "\n" not in resp.json()["detail"]


async def test_health_and_consumption_before_the_schema_exists(settings: Settings, fresh_redis: str) -> None:
    app = create_app(settings)
    async with app_client(app) as client:
        resp = await client.get("/health")
        assert resp.status_code == 200
        assert resp.json() == {
            "status": "ok",
            "site": "demo",
            "nats": "connected",
            "redis": "ok",
            "analytics": "not-migrated",
        }
        cookies = await session_for(app, "user")
        client.cookies.update(cookies)
        resp = await client.get("/api/v1/consumption")
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "10"
        assert "not ready yet" in resp.json()["detail"]
        await migrate(get_store(settings.clickhouse_dsn), settings.clickhouse_database)
        assert (await client.get("/api/v1/consumption")).status_code == 200
        assert (await client.get("/health")).json()["analytics"] == "ready"


async def test_openapi_documents_the_api(client: AsyncClient) -> None:
    resp = await client.get("/schema/openapi.json")
    assert resp.status_code == 200
    paths = resp.json()["paths"]
    for path in (
        "/health",
        "/api/v1/auth/login",
        "/api/v1/auth/logout",
        "/api/v1/me",
        "/api/v1/devices",
        "/api/v1/devices/{device_id}",
        "/api/v1/consumption",
        "/api/v1/consumption/datalogger.csv",
        "/api/v1/commands",
    ):
        assert path in paths, path
    assert "401" in paths["/api/v1/auth/login"]["post"]["responses"]
