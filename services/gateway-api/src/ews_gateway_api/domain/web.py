"""The web UI: ``GET /`` (the single page: login, then the role's pages) and ``/static/`` (its files).

Everything the browser loads comes from this server — the product runs on an offline LAN, so there is
no CDN and no external URL (ECharts is vendored under ``web/static/vendor/echarts``). The page is
rendered here with Jinja (no TemplateConfig needed on the app); static URLs carry a content hash
(``?v=…``) so they can be cached for a week and still change at once on upgrade.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Response, Router, get
from litestar.datastructures import CacheControlHeader
from litestar.enums import MediaType
from litestar.static_files import create_static_files_router

from ..guards import public

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
STATIC_DIR = WEB_DIR / "static"
TEMPLATES_DIR = WEB_DIR / "templates"
STATIC_PATH = "/static"
STATIC_MAX_AGE = 7 * 86_400  # versioned URLs (?v=<hash>): a week in the browser cache is safe

# Script/style sources: this server only. Inline styles are allowed because ECharts sets them on the
# elements it creates; scripts never inline. connect-src 'self': the JS only calls this API.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_jinja = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


@lru_cache(maxsize=64)
def _digest(path: Path, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def static_url(name: str) -> str:
    """``/static/<name>?v=<content hash>`` (raises FileNotFoundError for a missing file)."""
    path = STATIC_DIR / name
    stat = path.stat()
    return f"{STATIC_PATH}/{name}?v={_digest(path, stat.st_mtime_ns, stat.st_size)}"


def render_index() -> str:
    return _jinja.get_template("index.html").render(static_url=static_url)


@get(
    "/",
    guards=[public],
    operation_id="webIndex",
    summary="The web UI (login page, then the role's pages)",
    include_in_schema=False,
    media_type=MediaType.HTML,
    tags=["web"],
)
async def index() -> Response[str]:
    return Response(render_index(), media_type=MediaType.HTML, headers=PAGE_HEADERS)


static_files = create_static_files_router(
    path=STATIC_PATH,
    directories=[STATIC_DIR],
    name="web-static",
    guards=[public],
    cache_control=CacheControlHeader(public=True, max_age=STATIC_MAX_AGE),
    include_in_schema=False,
    tags=["web"],
)

router = Router(path="/", route_handlers=[index, static_files])
