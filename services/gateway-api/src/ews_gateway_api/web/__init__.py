"""The web pages' files: Jinja templates (one folder per domain) and static assets (vendored: the
product runs on an offline LAN, so nothing comes from a CDN), and the API documentation page
(``ApiDocs``: the vendored Swagger UI at ``/schema``).

Static URLs carry a content hash (``?v=…``) so they are cached for a week and still change at once
on upgrade; pages themselves are never cached. The Content-Security-Policy allows this server only.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from html import escape
from pathlib import Path
from typing import Any

from litestar import Request
from litestar.openapi.plugins import OpenAPIRenderPlugin

WEB_DIR = Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"
TEMPLATES_DIR = WEB_DIR / "templates"
STATIC_PATH = "/static"
STATIC_MAX_AGE = 7 * 86_400  # versioned URLs (?v=<hash>): a week in the browser cache is safe

# Script/style sources: this server only. Inline styles are allowed because ECharts and htmx set them
# on the elements they create; scripts are never inline (page data travels in
# <script type="application/json">, which is not executed).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Every response also carries these (security.security_headers; the CSP there unless a response has its own)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    **SECURITY_HEADERS,
    "Vary": "Cookie",
}


@lru_cache(maxsize=64)
def _digest(path: Path, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def static_url(name: str) -> str:
    """``/static/<name>?v=<content hash>`` (raises FileNotFoundError for a missing file)."""
    path = STATIC_DIR / name
    stat = path.stat()
    return f"{STATIC_PATH}/{name}?v={_digest(path, stat.st_mtime_ns, stat.st_size)}"


API_DOCS_PATH = "/schema"
OPENAPI_JSON = f"{API_DOCS_PATH}/openapi.json"


class ApiDocs(OpenAPIRenderPlugin):
    """The API documentation at ``/schema`` (and ``/schema/swagger``): the vendored Swagger UI
    (``static/vendor/swagger-ui``, see its NOTICE) started by ``static/js/api-docs.js``. Nothing from
    another host, no inline script: the pages' Content-Security-Policy applies."""

    def __init__(self) -> None:
        super().__init__(path=["/", "/swagger"], favicon="", style="")

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        title = escape(str(openapi_schema.get("info", {}).get("title", "API")))
        icon, css = static_url("img/favicon.svg"), static_url("vendor/swagger-ui/swagger-ui.css")
        bundle, start = static_url("vendor/swagger-ui/swagger-ui-bundle.js"), static_url("js/api-docs.js")
        return (
            '<!doctype html>\n<html lang="en">\n<head>\n'
            '  <meta charset="utf-8">\n'
            '  <meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"  <title>{title}</title>\n"
            f'  <link rel="icon" type="image/svg+xml" href="{icon}">\n'
            f'  <link rel="stylesheet" href="{css}">\n'
            "</head>\n<body>\n"
            f'  <div id="swagger-ui" data-spec="{OPENAPI_JSON}"></div>\n'
            f'  <script src="{bundle}"></script>\n'
            f'  <script src="{start}"></script>\n'
            "</body>\n</html>\n"
        ).encode()
