"""API errors: a stable ``code`` for programs, a ``detail`` in the reader's language (the session's or
the browser's choice, else Accept-Language), the identifiers left as they are; pages say the same."""

from __future__ import annotations

import logging

import pytest
from ews_gateway_api.domain import devices
from ews_gateway_api.errors import ApiError, error_code
from ews_gateway_api.i18n import translations
from ews_gateway_api.pages import installation
from httpx import AsyncClient
from litestar import Litestar
from litestar.exceptions import HTTPException

from .conftest import session_for

pytestmark = pytest.mark.integration


async def test_codes_and_details_follow_the_reader(client: AsyncClient, app: Litestar) -> None:
    client.cookies.clear()
    english = await client.get("/api/v1/me")
    assert english.status_code == 401
    assert english.json()["code"] == "login-required"
    assert english.json()["detail"] == "log in first (POST /api/v1/auth/login)"
    french = await client.get("/api/v1/me", headers={"accept-language": "fr-FR,fr;q=0.9,en;q=0.5"})
    assert french.json()["code"] == "login-required"
    assert french.json()["detail"] == translations("fr").gettext("log in first (POST /api/v1/auth/login)")
    assert french.json()["detail"] != english.json()["detail"]
    assert french.headers["content-language"] == "fr"

    cookies = await session_for(app, "user")
    ghost = await client.get("/api/v1/devices/ghost", cookies=cookies, headers={"accept-language": "de"})
    assert ghost.status_code == 404 and ghost.json()["code"] == "unknown-device"
    assert "'ghost'" in ghost.json()["detail"] and ghost.json()["detail"] != "unknown device 'ghost'"

    scope = await client.get(
        "/api/v1/consumption?scope=zone:nowhere", cookies=cookies, headers={"accept-language": "fr"}
    )
    assert scope.status_code == 400 and scope.json()["code"] == "unknown-zone"  # the analytics' Problem
    assert "'nowhere'" in scope.json()["detail"] and not scope.json()["detail"].startswith("unknown zone")
    bad = await client.get("/api/v1/consumption?date=2025-13-45", cookies=cookies)
    assert bad.status_code == 400 and bad.json()["code"] == "invalid-date"
    forbidden = await client.get("/api/v1/auth/codes", cookies=cookies)
    assert forbidden.status_code == 403 and forbidden.json()["code"] == "forbidden"
    invalid = await client.post(
        "/api/v1/commands", json={"device": ""}, cookies=await session_for(app, "greenUp")
    )
    assert invalid.status_code == 400 and invalid.json()["code"] == "invalid-request"


async def test_an_error_page_names_the_problem_in_the_page_language(
    client: AsyncClient, app: Litestar
) -> None:
    cookies = {**await session_for(app, "administrator"), "ews_lang": "fr"}
    page = await client.get("/installation/devices/ghost", cookies=cookies)
    assert page.status_code == 404 and 'lang="fr"' in page.text
    assert translations("fr").gettext("unknown device %(device)s") % {
        "device": "'ghost'"
    } in page.text.replace("&#39;", "'")


async def test_litestar_errors_are_said_in_words(client: AsyncClient) -> None:
    nowhere = await client.get("/api/v1/nowhere", headers={"accept-language": "de"})
    assert nowhere.status_code == 404 and nowhere.json()["code"] == "not-found"
    assert nowhere.json()["detail"] == translations("de").gettext("there is nothing at this address")


def test_codes_without_an_api_error_come_from_the_status() -> None:
    assert error_code(HTTPException(status_code=404)) == "not-found"
    assert error_code(ApiError(400, "invalid-date", "invalid date %(date)s", date="'x'")) == "invalid-date"
    broken = ApiError(400, "x", "unknown device %(device)s", device="'a'")
    assert broken.detail == "unknown device 'a'"


async def test_command_labels_follow_the_reader_and_states_stay_identifiers(
    client: AsyncClient, app: Litestar
) -> None:
    cookies = await session_for(app, "greenUp")
    client.cookies.clear()
    french = (
        await client.get("/api/v1/devices/ev1", cookies=cookies, headers={"accept-language": "fr"})
    ).json()
    english = (await client.get("/api/v1/devices/ev1", cookies=cookies)).json()
    labels = {c["action"]: c["label"] for c in french["commands"]}
    assert labels["charge"] == translations("fr").gettext("Current charge") != "Current charge"
    assert {c["action"]: c["label"] for c in english["commands"]}["charge"] == "Current charge"
    assert [c["values"] for c in french["commands"]] == [c["values"] for c in english["commands"]]


async def test_hostile_requests_get_a_client_error_not_a_500(client: AsyncClient) -> None:
    nested = await client.post(
        "/api/v1/auth/login", content="[" * 1000 + "]" * 1000, headers={"content-type": "application/json"}
    )
    assert nested.status_code == 400 and nested.json()["code"] == "invalid-request"
    assert (await client.get("/static/app.js%00.png")).status_code == 404
    assert (await client.get("/static/" + "a" * 300)).status_code == 404
    assert (await client.get("/static/css/app.css")).status_code == 200  # real files still served


async def test_an_unhandled_exception_is_one_log_line_and_a_bare_500(
    client: AsyncClient, app: Litestar, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in a route: the API answers a JSON 500 (a page: the error page) that reveals nothing of it; the
    log has one line at ERROR naming the exception and the route, the traceback only at DEBUG."""
    secret = "password=hunter2 in /srv/ews/secret.db\nsecond line"

    async def broken(*args: object, **kwargs: object) -> None:
        raise LookupError(secret)

    monkeypatch.setattr(devices, "device_views", broken)
    monkeypatch.setattr(installation, "device_views", broken)
    cookies = await session_for(app, "administrator")

    def own(level: int) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name.startswith("ews") and r.levelno == level]

    caplog.set_level(logging.INFO)
    resp = await client.get("/api/v1/devices", cookies=cookies)
    assert resp.status_code == 500 and resp.headers["content-type"].startswith("application/json")
    assert resp.json()["code"] == "internal-error"
    for word in ("hunter2", "secret", "LookupError", "Traceback", "device_views"):
        assert word not in resp.text
    errors = own(logging.ERROR)
    assert len(errors) == 1, [r.getMessage() for r in errors]
    line = caplog.handler.format(errors[0])  # as the process's handler writes it
    assert "\n" not in line and "Traceback" not in line, line
    assert "GET /api/v1/devices" in line and "LookupError" in line and "hunter2" in line
    assert not [r for r in caplog.records if r.exc_info or r.levelno > logging.ERROR]

    caplog.clear()
    caplog.set_level(logging.DEBUG)
    resp = await client.get("/api/v1/devices", cookies=cookies)
    assert resp.status_code == 500
    assert len(own(logging.ERROR)) == 1
    traced = [r for r in caplog.records if r.exc_info and r.exc_info[1] is not None]
    assert [r.levelno for r in traced] == [logging.DEBUG]
    assert "Traceback" in caplog.handler.format(traced[0]) and "broken" in caplog.handler.format(traced[0])

    caplog.clear()
    caplog.set_level(logging.INFO)
    page = await client.get("/installation", cookies=cookies)
    assert page.status_code == 500 and page.headers["content-type"].startswith("text/html")
    assert "hunter2" not in page.text and "LookupError" not in page.text
    assert len(own(logging.ERROR)) == 1 and "GET /installation:" in own(logging.ERROR)[0].getMessage()
