"""The web's files and entry points: static assets (typed, cached under content-hashed URLs,
compressed), the offline rule (nothing loaded from another host) and the vendored libraries.

Fast unit tests use a minimal Litestar app with only ``domain/web.py``'s router; the compression test
runs the real app.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from ews_gateway_api import web
from ews_gateway_api.domain import web as web_routes
from ews_gateway_api.guards import public
from litestar import Litestar
from litestar.testing import AsyncTestClient, TestClient

WEB_DIR = web.WEB_DIR
VENDOR_DIR = WEB_DIR / "static" / "vendor"
ECHARTS = VENDOR_DIR / "echarts" / "echarts.min.js"
HTMX = VENDOR_DIR / "htmx" / "htmx.min.js"

# XML namespace names are identifiers, never fetched.
XML_NAMESPACES = {
    "http://www.w3.org/2000/svg",
    "http://www.w3.org/1999/xlink",
    "http://www.w3.org/2000/xmlns/",
    "http://www.w3.org/XML/1998/namespace",
}
URL = re.compile(r"""https?://[^\s"'`)<>]*""", re.IGNORECASE)
ASSETS = {
    "vendor/echarts/echarts.min.js": "javascript",
    "vendor/htmx/htmx.min.js": "javascript",
    "js/pages.js": "javascript",
    "js/charts.js": "javascript",
    "css/app.css": "text/css",
    "img/favicon.svg": "image/svg+xml",
}


@pytest.fixture(scope="module")
def web_client():
    with TestClient(app=Litestar(route_handlers=[web_routes.router])) as test_client:
        yield test_client


def test_assets_are_served_with_their_types_and_cached(web_client: TestClient) -> None:
    for name, content_type in ASSETS.items():
        url = web.static_url(name)
        response = web_client.get(url)
        assert response.status_code == 200, name
        assert content_type in response.headers["content-type"], (name, response.headers["content-type"])
        assert f"max-age={web.STATIC_MAX_AGE}" in response.headers["cache-control"]
        on_disk = (web.STATIC_DIR / name).read_bytes()
        assert response.content == on_disk
        # the version in the URL is the content's hash: a changed file gets a new URL
        assert url.endswith("?v=" + hashlib.sha256(on_disk).hexdigest()[:12])


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
    assert web_client.get("/static/../templates/base.html").status_code == 404
    assert web_client.get("/static/%2e%2e/templates/base.html").status_code == 404


def test_every_web_route_is_public() -> None:
    app = Litestar(route_handlers=[web_routes.router])
    ours = [route for route in app.routes if not route.path.startswith("/schema")]
    assert {route.path for route in ours} == {"/", "/static/{file_path:path}"}
    handlers = [
        handler
        for route in ours
        for handler in route.route_handlers  # type: ignore[attr-defined]
        if handler.http_methods != {"OPTIONS"}
    ]
    for handler in handlers:
        assert public in [getattr(guard, "func", guard) for guard in handler.resolve_guards()], handler


def _own_files() -> list[Path]:
    return [
        p for p in WEB_DIR.rglob("*") if p.is_file() and VENDOR_DIR not in p.parents and p.suffix != ".pyc"
    ]


def test_no_url_to_another_host_in_our_files() -> None:
    files = _own_files()
    assert WEB_DIR / "templates" / "base.html" in files
    for path in files:
        if path.suffix in (".py",):
            continue
        text = path.read_text(encoding="utf-8")
        for url in URL.findall(text):
            assert url in XML_NAMESPACES, f"{path.relative_to(WEB_DIR)}: external URL {url}"
        assert not re.search(
            r"""<(?:script|link|img|iframe)[^>]+(?:src|href)=["']?(?:https?:)?//""", text, re.I
        )
        assert not re.search(r"""fetch\(\s*["'`](?:https?:)?//""", text), path
        assert not re.search(r"""url\(\s*["']?(?:https?:)?//""", text), path


def test_no_inline_script_in_templates() -> None:
    """The CSP forbids inline scripts: templates carry data only in <script type="application/json">."""
    for path in (WEB_DIR / "templates").rglob("*.html"):
        for tag in re.findall(r"<script\b[^>]*>", path.read_text(encoding="utf-8")):
            assert "src=" in tag or 'type="application/json"' in tag, f"{path.name}: {tag}"


def test_vendored_libraries_fetch_nothing_and_have_their_licenses() -> None:
    code = re.sub(r"/\*[\s\S]*?\*/", "", ECHARTS.read_text(encoding="utf-8"))
    assert set(URL.findall(code)) <= XML_NAMESPACES
    folder = ECHARTS.parent
    assert "Apache License" in (folder / "LICENSE").read_text()
    notice = (folder / "NOTICE").read_text()
    assert hashlib.sha256(ECHARTS.read_bytes()).hexdigest() in notice
    assert "BSD 3-Clause" in (folder / "LICENSE-zrender").read_text()
    assert "Zero-Clause BSD" in (HTMX.parent / "LICENSE").read_text()


@pytest.mark.integration
async def test_static_files_are_compressed_by_the_real_app(client: AsyncTestClient) -> None:
    response = await client.get(
        web.static_url("vendor/echarts/echarts.min.js"), headers={"accept-encoding": "gzip"}
    )
    assert response.status_code == 200
    assert response.headers.get("content-encoding") == "gzip"
    assert int(response.headers["content-length"]) < ECHARTS.stat().st_size / 2
