"""HTTP hardening (issue 12, items 3 and 6): cross-site requests refused (Origin, else Referer, must be
this server or EWS_ALLOWED_ORIGINS), the JSON API takes JSON only (or the types a route declares),
security headers on every response, the API documentation served offline, no factory code in the
OpenAPI document, and error bodies that match their content type (the CSV endpoints answer errors in
JSON, labelled so)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest
from ews_contracts.roles import DEFAULT_CODES, format_puk
from ews_contracts.settings import Settings, normalize_origin
from ews_gateway_api import storage, web
from ews_gateway_api.app import create_app
from ews_gateway_api.security import CONTENT_TYPES, check_request
from ews_gateway_api.testing import BASE_URL, app_client
from httpx import AsyncClient
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute
from pydantic import ValidationError

from .conftest import session_for
from .test_web import URL, XML_NAMESPACES

EVIL = "http://evil.example"
OWN = BASE_URL  # the test client's Host is testserver.local: the app's own origin is http://testserver.local
COMMAND = {"device": "ev2a", "action": "priority", "value": "normal"}
COMMAND_JSON = b'{"device":"ev2a","action":"priority","value":"normal"}'
SWAGGER = web.STATIC_DIR / "vendor" / "swagger-ui"


# --- the setting -----------------------------------------------------------------------------------


def test_allowed_origins_are_read_comma_separated_and_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "EWS_ALLOWED_ORIGINS", " https://EWS.example.org:443/, http://[::1]:8080 ,,http://a.b:80"
    )
    assert Settings().allowed_origins == ("https://ews.example.org", "http://[::1]:8080", "http://a.b")
    monkeypatch.delenv("EWS_ALLOWED_ORIGINS")
    assert Settings().allowed_origins == ()
    for wrong in ("ews.example.org", "ftp://ews.example.org", "https://ews.example.org/app", "null", "*"):
        monkeypatch.setenv("EWS_ALLOWED_ORIGINS", wrong)
        with pytest.raises(ValidationError, match="is not an origin"):
            Settings()


def test_origins_compare_as_browsers_write_them() -> None:
    assert normalize_origin("HTTP://Box.Local:80") == "http://box.local"
    assert normalize_origin("https://box.local:443/some/page?x=1") == "https://box.local"
    assert normalize_origin("http://box.local:8081") == "http://box.local:8081"
    for nothing in ("null", "", "box.local", "http://box.local:99999", "file:///etc/passwd"):
        assert normalize_origin(nothing) is None


# --- the one place the checks are made ---------------------------------------------------------------


def handlers(app: Litestar) -> list[tuple[str, str, HTTPRouteHandler]]:
    return [
        (method, route.path, handler)
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for handler in route.route_handlers
        for method in handler.http_methods
    ]


def test_every_route_goes_through_the_check_and_only_three_api_routes_take_other_types(tmp_path) -> None:
    app = create_app(Settings(EWS_DATA_DIR=tmp_path))  # nothing is connected before the lifespan
    found = handlers(app)
    assert len(found) > 30
    for method, path, handler in found:
        # a handler (or router) with its own before_request would replace the app's: no check at all
        assert handler.resolve_before_request() is check_request, f"{method} {path}"
    declared = {
        (method, path): handler.opt[CONTENT_TYPES]
        for method, path, handler in found
        if CONTENT_TYPES in handler.opt and method in ("POST", "PUT", "PATCH", "DELETE")
    }
    assert set(declared) == {
        ("PUT", "/api/v1/site/config"),
        ("POST", "/api/v1/readings/import"),
        ("POST", "/api/v1/restore"),
    }
    assert {"application/json", "application/yaml"} <= set(declared[("PUT", "/api/v1/site/config")])
    assert {"text/csv", "multipart/form-data"} <= set(declared[("POST", "/api/v1/readings/import")])
    assert {"application/gzip", "application/octet-stream", "multipart/form-data"} <= set(
        declared[("POST", "/api/v1/restore")]
    )


# --- cross-site requests -----------------------------------------------------------------------------


@pytest.mark.integration
async def test_the_reproduction_a_cross_origin_text_plain_command_is_refused(
    client: AsyncClient, app: Litestar
) -> None:
    admin = await session_for(app, "administrator")
    resp = await client.post(
        "/api/v1/commands",
        content=COMMAND_JSON,
        headers={"origin": EVIL, "content-type": "text/plain"},
        cookies=admin,
    )
    assert resp.status_code == 403, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["code"] == "cross-origin"
    assert EVIL in body["detail"] and "\n" not in body["detail"]
    # the same command as JSON from another site: refused too; from this server's page: accepted
    assert (
        await client.post("/api/v1/commands", json=COMMAND, headers={"origin": EVIL}, cookies=admin)
    ).status_code == 403
    assert (
        await client.post("/api/v1/commands", json=COMMAND, headers={"origin": OWN}, cookies=admin)
    ).status_code == 202


@pytest.mark.integration
async def test_origin_then_referer_must_name_this_server(client: AsyncClient, app: Litestar) -> None:
    admin = await session_for(app, "administrator")

    async def put(headers: dict[str, str]) -> int:
        resp = await client.put(
            "/api/v1/me/language", json={"language": "de"}, headers=headers, cookies=admin
        )
        assert resp.status_code in (200, 403), resp.text
        assert resp.status_code == 200 or resp.json()["code"] == "cross-origin"
        return resp.status_code

    assert await put({}) == 200  # curl, scripts: neither header
    assert await put({"origin": OWN}) == 200
    assert await put({"origin": "HTTP://TESTSERVER.LOCAL:80"}) == 200  # the same origin, written otherwise
    assert await put({"referer": f"{OWN}/consumption/total-global?period=day"}) == 200
    assert await put({"origin": EVIL}) == 403
    assert await put({"origin": "null"}) == 403  # sandboxed frames, data: pages …
    assert await put({"origin": "https://testserver.local"}) == 403  # another scheme
    assert await put({"origin": "http://testserver.local:8081"}) == 403  # same site, another port
    assert await put({"origin": "http://testserver.local.evil.example"}) == 403
    assert await put({"referer": f"{EVIL}/page"}) == 403
    assert await put({"referer": "not a url"}) == 403
    assert await put({"origin": OWN, "referer": f"{EVIL}/page"}) == 200  # Origin, when sent, decides
    assert await put({"origin": EVIL, "referer": f"{OWN}/x"}) == 403
    # reading is never refused (GET changes nothing)
    assert (await client.get("/api/v1/me", headers={"origin": EVIL}, cookies=admin)).status_code == 200


@pytest.mark.integration
async def test_cross_origin_forms_get_a_403_page_and_change_nothing(
    client: AsyncClient, app: Litestar
) -> None:
    # sign-in from another site's form (login CSRF): refused, no session
    client.cookies.clear()
    resp = await client.post(
        "/login", data={"pin": "99999", "puk": "00000 9999 00000"}, headers={"origin": EVIL}
    )
    assert resp.status_code == 403 and resp.headers["content-type"].startswith("text/html")
    assert "evil.example" in resp.text and "ews_session" not in resp.headers.get("set-cookie", "")
    # Logout from another site's page: refused, the session still works
    user = await session_for(app, "user")
    resp = await client.post("/session", data={"mode": "logout"}, headers={"origin": EVIL}, cookies=user)
    assert resp.status_code == 403 and resp.headers["content-type"].startswith("text/html")
    assert (await client.get("/api/v1/me", cookies=user)).status_code == 200
    resp = await client.post(
        "/commands",
        data={"device": "ev1", "action": "charge", "value": "start"},
        headers={"referer": f"{EVIL}/x"},
        cookies=await session_for(app, "greenUp"),
    )
    assert resp.status_code == 403
    # this server's own form (browsers send Origin with every POST): as before
    resp = await client.post("/session", data={"mode": "logout"}, headers={"origin": OWN}, cookies=user)
    assert resp.status_code == 303
    assert (await client.get("/api/v1/me", cookies=user)).status_code == 401


@pytest.mark.integration
async def test_allowed_origins_are_accepted_besides_the_own(
    settings: Settings, fresh_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EWS_ALLOWED_ORIGINS", "https://ews.example.org,http://10.1.2.3:8080")
    app = create_app(Settings())
    async with app_client(app) as c:
        for origin, status in [
            ("https://ews.example.org", 200),  # e.g. the address behind an HTTPS proxy
            ("https://EWS.example.org:443", 200),
            ("http://10.1.2.3:8080", 200),
            (OWN, 200),
            ("http://ews.example.org", 403),
            ("https://ews.example.org:8443", 403),
            (EVIL, 403),
        ]:
            resp = await c.put("/api/v1/language", json={"language": "de"}, headers={"origin": origin})
            assert resp.status_code == status, (origin, resp.text)


# --- content types of the JSON API -------------------------------------------------------------------


@pytest.mark.integration
async def test_the_json_api_takes_json_only(client: AsyncClient, app: Litestar) -> None:
    admin = await session_for(app, "administrator")
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ):
        resp = await client.post(
            "/api/v1/commands", content=COMMAND_JSON, headers={"content-type": content_type}, cookies=admin
        )
        assert resp.status_code == 415, (content_type, resp.text)
        body = resp.json()
        assert body["code"] == "unsupported-media-type"
        assert "application/json" in body["detail"] and content_type.split(";")[0] in body["detail"]
        assert "\n" not in body["detail"]
    resp = await client.post("/api/v1/commands", content=COMMAND_JSON, cookies=admin)  # no content type
    assert resp.status_code == 415 and "application/json" in resp.json()["detail"], resp.text
    assert "content-type" not in resp.request.headers
    resp = await client.post("/api/v1/commands", data=COMMAND, cookies=admin)  # a form
    assert resp.status_code == 415
    # anonymous sign-in too (another site cannot post codes as a simple form)
    resp = await client.post(
        "/api/v1/auth/login", content=b'{"pin": "99999"}', headers={"content-type": "text/plain"}
    )
    assert resp.status_code == 415
    # JSON, with or without a charset, passes
    resp = await client.post(
        "/api/v1/commands",
        content=COMMAND_JSON,
        headers={"content-type": "application/json; charset=utf-8"},
        cookies=admin,
    )
    assert resp.status_code == 202, resp.text
    # the guards answer first: anonymous 401, a role without the permission 403, whatever the type
    text = {"content-type": "text/plain"}
    client.cookies.clear()
    assert (await client.post("/api/v1/commands", content=COMMAND_JSON, headers=text)).status_code == 401
    user = await session_for(app, "user")
    assert (
        await client.post("/api/v1/commands", content=COMMAND_JSON, headers=text, cookies=user)
    ).status_code == 403


@pytest.mark.integration
async def test_a_post_without_a_body_needs_no_content_type(client: AsyncClient, app: Litestar) -> None:
    user = await session_for(app, "user")
    resp = await client.post("/api/v1/auth/logout", cookies=user)
    assert resp.status_code == 200, resp.text
    assert resp.json()["mode"] == "logout"


@pytest.mark.integration
async def test_routes_that_read_other_types_declare_them(client: AsyncClient, app: Litestar) -> None:
    admin = await session_for(app, "administrator")
    resp = await client.put(
        "/api/v1/site/config", content=b"site: demo\n", headers={"content-type": "text/plain"}, cookies=admin
    )
    assert resp.status_code == 415 and "application/yaml" in resp.json()["detail"], resp.text
    resp = await client.put(
        "/api/v1/site/config", content=b"{", headers={"content-type": "application/yaml"}, cookies=admin
    )
    assert resp.status_code not in (403, 415), resp.text  # YAML reaches the handler (which checks it)
    resp = await client.post("/api/v1/readings/import", json={"device": "m1"}, cookies=admin)
    assert resp.status_code == 415 and "text/csv" in resp.json()["detail"], resp.text
    resp = await client.post(
        "/api/v1/readings/import", content=b"", headers={"content-type": "text/csv"}, cookies=admin
    )
    assert resp.status_code == 400  # reaches the handler: an empty file
    resp = await client.post(
        "/api/v1/restore", content=b"x", headers={"content-type": "text/plain"}, cookies=admin
    )
    assert resp.status_code == 415 and "application/gzip" in resp.json()["detail"], resp.text
    resp = await client.post(
        "/api/v1/restore",
        content=b"not an archive",
        headers={"content-type": "application/gzip", "origin": EVIL},
        cookies=admin,
    )
    assert resp.status_code == 403 and resp.json()["code"] == "cross-origin"


# --- headers on every response -----------------------------------------------------------------------

SECURITY = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}


def assert_secured(resp: Any, what: str) -> None:
    for name, value in SECURITY.items():
        assert resp.headers.get(name) == value, (what, resp.status_code, name, dict(resp.headers))
    assert "frame-ancestors 'none'" in resp.headers.get("content-security-policy", ""), what


@pytest.mark.integration
async def test_every_response_carries_the_security_headers(client: AsyncClient, app: Litestar) -> None:
    admin = await session_for(app, "administrator")
    gets = [
        ("/health", {}, 200),
        ("/api/v1/me", admin, 200),
        ("/api/v1/me", {}, 401),
        ("/api/v1/nothing-here", {}, 404),
        ("/api/v1/consumption?period=decade-ish", admin, 400),
        ("/api/v1/consumption/datalogger.csv", admin, 200),
        ("/api/v1/site/config.yaml", admin, 200),
        (web.static_url("js/pages.js"), {}, 200),
        (web.static_url("vendor/echarts/echarts.min.js"), {}, 200),  # compressed on the way
        ("/static/nothing.js", {}, 404),
        ("/schema", {}, 200),
        ("/schema/openapi.json", {}, 200),
        ("/schema/openapi.yaml", {}, 200),
        ("/schema/redoc", {}, 404),
        ("/", {}, 303),
        ("/login", {}, 200),
        ("/no-such-page", admin, 404),
    ]
    for url, cookies, status in gets:
        client.cookies.clear()
        resp = await client.get(url, cookies=cookies, headers={"accept-encoding": "gzip"})
        assert resp.status_code == status, (url, resp.status_code)
        assert_secured(resp, url)
    # the pages keep their own policy and caching
    page = await client.get("/consumption/total-global", cookies=admin)
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == web.CONTENT_SECURITY_POLICY
    assert page.headers["cache-control"] == "no-cache"
    # refusals and wrong methods too
    for resp in (
        await client.post("/api/v1/commands", json=COMMAND, headers={"origin": EVIL}, cookies=admin),
        await client.post(
            "/api/v1/commands", content=b"x", headers={"content-type": "text/plain"}, cookies=admin
        ),
        await client.delete("/api/v1/me", cookies=admin),
    ):
        assert resp.status_code in (403, 405, 415)
        assert_secured(resp, resp.request.url.path)


# --- the API documentation ---------------------------------------------------------------------------


def assert_no_other_host(text: str, what: str) -> None:
    """The rule of test_web.test_no_url_to_another_host_in_our_files, for a served page."""
    for url in URL.findall(text):
        assert url in XML_NAMESPACES, f"{what}: external URL {url}"
    assert not re.search(r"""<(?:script|link|img|iframe)[^>]+(?:src|href)=["']?(?:https?:)?//""", text, re.I)


@pytest.mark.integration
async def test_the_api_documentation_works_offline(client: AsyncClient) -> None:
    for viewer in ("/schema/redoc", "/schema/elements", "/schema/rapidoc", "/schema/scalar"):
        resp = await client.get(viewer)
        assert resp.status_code == 404, viewer
        assert_no_other_host(resp.text, viewer)
    for path in ("/schema", "/schema/swagger"):
        resp = await client.get(path)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html"), path
        assert_no_other_host(resp.text, path)
        assert "<script>" not in resp.text  # the CSP allows no inline script
        assets = re.findall(r"""(?:src|href)="([^"]+)\"""", resp.text)
        assert {a.split("?")[0] for a in assets} == {
            "/static/img/favicon.svg",
            "/static/vendor/swagger-ui/swagger-ui.css",
            "/static/vendor/swagger-ui/swagger-ui-bundle.js",
            "/static/js/api-docs.js",
        }
        for asset in assets:
            assert (await client.get(asset)).status_code == 200, asset
        assert 'data-spec="/schema/openapi.json"' in resp.text
    spec = await client.get("/schema/openapi.json")
    assert spec.status_code == 200 and spec.json()["openapi"].startswith("3.")
    yaml_spec = await client.get("/schema/openapi.yaml")
    assert yaml_spec.status_code == 200 and "openapi:" in yaml_spec.text


def test_the_vendored_viewer_is_recorded_and_asks_no_other_host() -> None:
    notice = (SWAGGER / "NOTICE").read_text()
    assert "swagger-ui-dist 5." in notice
    for name in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert hashlib.sha256((SWAGGER / name).read_bytes()).hexdigest() in notice, name
    assert "Apache License" in (SWAGGER / "LICENSE").read_text()
    assert (SWAGGER / "LICENSE-bundled.txt").exists()
    start = (web.STATIC_DIR / "js" / "api-docs.js").read_text()
    # Swagger UI's validator badge is an image from validator.swagger.io unless it is switched off
    assert re.search(r"validatorUrl:\s*null", start)
    assert_no_other_host(start, "api-docs.js")


@pytest.mark.integration
async def test_the_openapi_document_shows_no_factory_code(client: AsyncClient) -> None:
    for path in ("/schema/openapi.json", "/schema/openapi.yaml"):
        text = (await client.get(path)).text
        for role, (pin, puk) in DEFAULT_CODES.items():
            assert not re.search(rf"(?<!\d){pin}(?!\d)", text), (path, role, "PIN")
            assert puk not in text and format_puk(puk) not in text, (path, role, "PUK")
    login = (await client.get("/schema/openapi.json")).json()["components"]["schemas"]["LoginBody"]
    assert login["properties"]["pin"]["examples"] == ["12345"]


# --- error bodies match their content type -----------------------------------------------------------


@pytest.mark.integration
async def test_csv_endpoints_answer_errors_as_json(
    client: AsyncClient, app: Litestar, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = await session_for(app, "administrator")
    user = await session_for(app, "user")
    datalogger, readings = "/api/v1/consumption/datalogger.csv", "/api/v1/readings.csv"
    ok = await client.get(datalogger, cookies=admin)
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/csv")
    cases: list[tuple[str, dict[str, str], int, str]] = [
        (datalogger, {}, 401, "login-required"),
        (f"{datalogger}?period=fortnight", admin, 400, "unknown-period"),
        (f"{datalogger}?date=0001-01-01", admin, 400, "date-out-of-range"),
        (f"{datalogger}?scope=zone:nowhere", admin, 400, "unknown-zone"),
        (readings, {}, 401, "login-required"),
        (readings, user, 403, "forbidden"),
        (readings, admin, 400, "invalid-request"),  # device missing
        (f"{readings}?device=ghost", admin, 400, "unknown-device"),
        (f"{readings}?device=m1&from=yesterday-ish", admin, 400, "invalid-date"),
    ]
    for url, cookies, status, code in cases:
        client.cookies.clear()
        resp = await client.get(url, cookies=cookies, headers={"accept": "text/csv"})
        assert resp.status_code == status, (url, resp.text)
        assert resp.headers["content-type"].startswith("application/json"), (
            url,
            resp.headers["content-type"],
        )
        assert resp.json()["code"] == code, (url, resp.text)
    # the analytics database unreachable: 503 in JSON as well
    monkeypatch.setattr(app.state, "store", None)

    async def unreachable(_settings: Settings) -> None:
        return None

    monkeypatch.setattr(storage, "open_store", unreachable)
    for url in (datalogger, f"{readings}?device=m1"):
        resp = await client.get(url, cookies=admin, headers={"accept": "text/csv"})
        assert resp.status_code == 503, (url, resp.text)
        assert resp.headers["content-type"].startswith("application/json")
        assert resp.json()["code"] == "analytics-unreachable"
    for url in (datalogger, readings):
        resp = await client.post(url, json={}, cookies=admin)
        assert resp.status_code == 405 and resp.headers["content-type"].startswith("application/json")


async def test_options_lists_every_method_of_the_path(client: AsyncClient, app: Litestar) -> None:
    """OPTIONS names every method a path takes (and OPTIONS), also where two modules serve one path
    (Litestar 2 listed only the handlers registered before its automatic OPTIONS handler: litestar#4169);
    the 405 of a method the path does not take names the same ones."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or "{" in route.path:
            continue
        resp = await client.options(route.path)
        assert resp.status_code == 204, (route.path, resp.status_code)
        allowed = {m.strip() for m in resp.headers["allow"].split(",")}
        assert allowed == set(route.methods), (route.path, allowed, set(route.methods))
    resp = await client.delete("/api/v1/commands", headers={"origin": OWN})
    assert resp.status_code == 405
    assert {m.strip() for m in resp.headers["allow"].split(",")} == {"GET", "POST", "OPTIONS"}
