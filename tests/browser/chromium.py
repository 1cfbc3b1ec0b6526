"""Debian's Chromium under Playwright (never a downloaded browser), the two viewports, and a watcher
that collects what a person would call "the page is broken": console errors, uncaught exceptions,
failed requests and 5xx answers."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Playwright, Request, Response

CHROMIUM = os.environ.get("EWS_CHROMIUM", "/usr/bin/chromium")
# This machine's network is closed: without these Chromium keeps trying to reach Google's services.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

VIEWPORTS: dict[str, dict[str, Any]] = {
    "phone": {
        "viewport": {"width": 375, "height": 667},
        "is_mobile": True,
        "has_touch": True,
        "device_scale_factor": 2,
    },
    "desktop": {"viewport": {"width": 1366, "height": 900}},
}


def launch(playwright: Playwright) -> Browser:
    if not os.path.exists(CHROMIUM):
        raise RuntimeError(
            f"{CHROMIUM} is missing: run `scripts/setup.sh --browser` (as root: installs Debian's chromium)"
        )
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def new_context(browser: Browser, kind: str, base_url: str | None = None) -> BrowserContext:
    return browser.new_context(**VIEWPORTS[kind], base_url=base_url, accept_downloads=True, locale="en-GB")


# "Failed to load resource: … status of 401": the browser's own note for an expected refusal (a wrong
# PIN, the PUK step, a probe of /me before sign-in). Any other status stays an error (a 404 asset is a bug).
EXPECTED_CONSOLE = [re.compile(r"Failed to load resource: the server responded with a status of 401\b")]


@dataclass
class ProblemWatcher:
    """Attach to a page; ``problems`` lists every console error, page error, failed request and 5xx."""

    problems: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=lambda: list(EXPECTED_CONSOLE))
    _navigations: int = 0
    _issued_at: dict[int, int] = field(default_factory=dict)
    _aborted: list[tuple[str, int]] = field(default_factory=list)

    def watch(self, page: Page) -> Page:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"pageerror on {page.url}: {exc}"))
        page.on("request", self._request)
        page.on("requestfailed", self._failed)
        page.on("response", self._response)
        page.on("framenavigated", self._navigated)
        return page

    def allow(self, pattern: str) -> None:
        """Expect a message matching ``pattern`` (regex) in this test, e.g. a deliberate wrong code."""
        self.allowed.append(re.compile(pattern))

    def _ok(self, text: str) -> bool:
        return any(p.search(text) for p in self.allowed)

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            text = f"console error: {msg.text} ({msg.location.get('url', '')})"
            if not self._ok(text):
                self.problems.append(text)

    def _navigated(self, frame: Any) -> None:
        if frame.parent_frame is None:
            self._navigations += 1

    def _request(self, request: Request) -> None:
        self._issued_at[id(request)] = self._navigations

    def _failed(self, request: Request) -> None:
        failure = request.failure or ""
        text = f"request failed: {request.method} {request.url} ({failure})"
        if self._ok(text):
            return
        if "ERR_ABORTED" in failure:
            # Cancelled because the page navigated away (an open event stream, a poll) or because the
            # answer became a download: not a failure the person sees. The navigation may be reported
            # after the cancellation, so this is decided in report().
            if request.resource_type in ("eventsource", "document"):
                return
            self._aborted.append((text, self._issued_at.get(id(request), self._navigations)))
            return
        self.problems.append(text)

    def report(self) -> list[str]:
        """Every problem seen so far (an aborted request counts unless the page navigated after it)."""
        late = [text for text, issued in self._aborted if self._navigations <= issued]
        return [*self.problems, *late]

    def _response(self, response: Response) -> None:
        if response.status >= 500:
            text = f"HTTP {response.status}: {response.request.method} {response.url}"
            if not self._ok(text):
                self.problems.append(text)
