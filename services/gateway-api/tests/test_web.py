"""domain/web.py: the page, its static files, and the offline rule (nothing loaded from another host).

Fast unit tests: a minimal Litestar app with only the web router, no servers. One integration test runs
the real app (create_app, real auth service) and checks the API fields the page's JavaScript relies on.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ews_gateway_api.domain import web
from ews_gateway_api.guards import public
from litestar import Litestar
from litestar.testing import AsyncTestClient, TestClient

WEB_DIR = web.WEB_DIR
VENDOR_DIR = WEB_DIR / "static" / "vendor"
ECHARTS = VENDOR_DIR / "echarts" / "echarts.min.js"
APP_JS = WEB_DIR / "static" / "js" / "app.js"
TEMPLATE = WEB_DIR / "templates" / "index.html"

# XML namespace names are identifiers, never fetched.
XML_NAMESPACES = {
    "http://www.w3.org/2000/svg",
    "http://www.w3.org/1999/xlink",
    "http://www.w3.org/2000/xmlns/",
    "http://www.w3.org/XML/1998/namespace",
}
URL = re.compile(r"""https?://[^\s"'`)<>]*""", re.IGNORECASE)


@pytest.fixture(scope="module")
def web_client():
    with TestClient(app=Litestar(route_handlers=[web.router])) as test_client:
        yield test_client


def _assets(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)="(/static/[^"]+)\"""", html)


def test_index_is_the_login_page(web_client: TestClient) -> None:
    response = web_client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert '<form id="login-form"' in html
    assert re.search(r'<input id="pin"[^>]*inputmode="numeric"[^>]*maxlength="5"', html)
    assert re.search(r'<input id="puk"[^>]*inputmode="numeric"', html)
    assert re.search(r'<script src="/static/vendor/echarts/echarts\.min\.js\?v=[0-9a-f]{12}"', html)
    assert re.search(r'<script src="/static/js/app\.js\?v=[0-9a-f]{12}"', html)
    assert re.search(r'<link rel="stylesheet" href="/static/css/app\.css\?v=[0-9a-f]{12}"', html)
    for page in ("installation", "consumption", "greenup"):
        assert f'id="page-{page}"' in html
    assert response.headers["cache-control"] == "no-cache"
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp


def test_assets_are_served_with_their_types_and_cached(web_client: TestClient) -> None:
    html = web_client.get("/").text
    expected = {
        "/static/vendor/echarts/echarts.min.js": "javascript",
        "/static/js/app.js": "javascript",
        "/static/css/app.css": "text/css",
        "/static/img/favicon.svg": "image/svg+xml",
    }
    served = {url.split("?")[0]: url for url in _assets(html)}
    assert set(expected) <= set(served)
    for path, content_type in expected.items():
        response = web_client.get(served[path])
        assert response.status_code == 200, path
        assert content_type in response.headers["content-type"], (path, response.headers["content-type"])
        assert f"max-age={web.STATIC_MAX_AGE}" in response.headers["cache-control"]
        on_disk = (web.STATIC_DIR / path.removeprefix("/static/")).read_bytes()
        assert response.content == on_disk
        # the version in the URL is the content's hash: a changed file gets a new URL
        assert served[path].endswith("?v=" + hashlib.sha256(on_disk).hexdigest()[:12])


def test_static_url_changes_with_the_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web, "STATIC_DIR", tmp_path)
    asset = tmp_path / "a.js"
    asset.write_text("one")
    first = web.static_url("a.js")
    asset.write_text("two!")
    assert web.static_url("a.js") != first
    with pytest.raises(FileNotFoundError):
        web.static_url("missing.js")


def test_missing_and_outside_files_are_not_served(web_client: TestClient) -> None:
    assert web_client.get("/static/nope.js").status_code == 404
    assert web_client.get("/static/../templates/index.html").status_code == 404
    assert web_client.get("/static/%2e%2e/templates/index.html").status_code == 404


def test_every_route_is_public() -> None:
    app = Litestar(route_handlers=[web.router])
    ours = [route for route in app.routes if not route.path.startswith("/schema")]
    assert {route.path for route in ours} == {"/", "/static/{file_path:path}"}
    handlers = [
        handler
        for route in ours
        for handler in route.route_handlers  # type: ignore[attr-defined]
        if handler.http_methods != {"OPTIONS"}  # Litestar's own CORS preflight answer
    ]
    assert len(handlers) == 3  # GET /, GET and HEAD of the static files
    for handler in handlers:
        assert public in [getattr(guard, "func", guard) for guard in handler.resolve_guards()], handler


def _own_files() -> list[Path]:
    return [p for p in WEB_DIR.rglob("*") if p.is_file() and VENDOR_DIR not in p.parents]


def test_no_url_to_another_host_in_our_files() -> None:
    files = _own_files()
    assert TEMPLATE in files and APP_JS in files
    for path in files:
        text = path.read_text(encoding="utf-8")
        for url in URL.findall(text):
            assert url in XML_NAMESPACES, f"{path.relative_to(WEB_DIR)}: external URL {url}"
        assert not re.search(
            r"""<(?:script|link|img|iframe)[^>]+(?:src|href)=["']?(?:https?:)?//""", text, re.I
        )
        assert not re.search(r"""fetch\(\s*["'`](?:https?:)?//""", text), path
        assert not re.search(r"""url\(\s*["']?(?:https?:)?//""", text), path
        assert not re.search(r"""@import\s+(?:url\()?["']?(?:https?:)?//""", text), path


def test_vendored_echarts_fetches_nothing() -> None:
    code = re.sub(r"/\*[\s\S]*?\*/", "", ECHARTS.read_text(encoding="utf-8"))
    assert set(URL.findall(code)) <= XML_NAMESPACES


def test_vendored_echarts_has_its_license_and_notice() -> None:
    folder = ECHARTS.parent
    assert "Apache License" in (folder / "LICENSE").read_text()
    notice = (folder / "NOTICE").read_text()
    assert "echarts 5.6.0" in notice
    assert hashlib.sha256(ECHARTS.read_bytes()).hexdigest() in notice
    assert "BSD 3-Clause" in (folder / "LICENSE-zrender").read_text()


def test_every_text_key_is_in_the_strings_object() -> None:
    js = APP_JS.read_text(encoding="utf-8")
    block = js[js.index("const STRINGS = {") : js.index("let lang =")]
    defined = set(re.findall(r"""^\s*"?([\w-]+)"?:\s""", block, re.M))
    html = TEMPLATE.read_text(encoding="utf-8")
    used = set(re.findall(r'data-i18n(?:-title)?="([\w-]+)"', html))
    used |= set(re.findall(r"""\bt\(\s*"([\w-]+)"\s*[,)]""", js))
    used |= {f"role_{r}" for r in ("administrator", "greenUp", "installer", "user")}
    used |= {f"page_{p}" for p in ("installation", "consumption", "greenup")}
    used |= {f"state_{s}" for s in ("on", "off", "comm-error", "fault", "unknown")}
    assert used - defined == set()


def test_app_js_is_valid_javascript() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    result = subprocess.run([node, "--check", str(APP_JS)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_app_js_calls_only_the_documented_api() -> None:
    js = APP_JS.read_text(encoding="utf-8")
    paths = set(re.findall(r"""["'](/api/v1/[\w/.-]*)""", js))
    assert paths == {
        "/api/v1/auth/login",
        "/api/v1/auth/logout",
        "/api/v1/me",
        "/api/v1/consumption",
        "/api/v1/devices",
        "/api/v1/commands",
        "/api/v1/commands/",
        "/api/v1/language",  # the language picker (login page too)
        "/api/v1/auth/codes/",  # the code-change form
    }


# --- the page in the real app, and the API fields app.js reads ---------------------------------------

ME_FIELDS = {"role", "pages", "permissions", "language", "default_codes_in_use", "timezone"}
DEVICE_FIELDS = {"id", "name", "profile", "state", "values", "states", "updated_at", "address", "zone"}


@pytest.mark.integration
async def test_real_app_serves_the_page_and_the_fields_it_reads(client: AsyncTestClient) -> None:
    page = await client.get("/")  # anonymous: the page is public, the API is not
    assert page.status_code == 200 and '<form id="login-form"' in page.text
    for url in _assets(page.text):
        assert (await client.get(url)).status_code == 200, url
    assert (await client.get("/api/v1/me")).status_code == 401

    # login: the PIN alone -> 401 with puk_required at the top level of the JSON; then PIN + PUK
    refused = await client.post("/api/v1/auth/login", json={"pin": "88888"})
    assert refused.status_code == 401 and refused.json()["puk_required"] is True
    assert (
        await client.post("/api/v1/auth/login", json={"pin": "88888", "puk": "00000 8888 00000"})
    ).is_success

    me = (await client.get("/api/v1/me")).json()
    assert ME_FIELDS <= set(me)
    assert me["role"] == "greenUp" and me["pages"] == ["installation", "consumption", "greenup"]
    assert {"greenup-management", "command-devices"} <= set(me["permissions"])
    assert me["default_codes_in_use"] is True

    devices = (await client.get("/api/v1/devices")).json()["devices"]
    assert devices and all(DEVICE_FIELDS <= set(d) for d in devices)
    assert any(d["profile"].startswith("ev-station") for d in devices)

    day = (await client.get("/api/v1/consumption?scope=total-electricity&period=day&date=2025-06-02")).json()
    assert day["unit"] == "Wh" and isinstance(day["buckets"], list) and day["currency"]
    assert {"value", "unit", "cost", "currency"} <= set(day["total"])
    assert {"value", "cost"} <= set(day["previous"]["total"])
    if day["buckets"]:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", day["buckets"][0]["start"])

    locked = await client.post("/api/v1/auth/logout", json={"mode": "lock"})
    assert locked.is_success and locked.json()["puk_required_next"] is True
    assert (await client.get("/api/v1/me")).status_code == 401
