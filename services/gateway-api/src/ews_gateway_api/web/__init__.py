"""The web pages' files: Jinja templates (one folder per domain) and static assets (vendored: the
product runs on an offline LAN, so nothing comes from a CDN).

Static URLs carry a content hash (``?v=…``) so they are cached for a week and still change at once
on upgrade; pages themselves are never cached. The Content-Security-Policy allows this server only.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

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
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
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
