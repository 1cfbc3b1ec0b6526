"""Browser tests: the real product (`ews up`, once for the package) seen through Debian's Chromium.

Fixtures:
- ``ews_base``: the running product (fresh data folder, free ports), stopped with SIGINT at the end.
- ``chromium``: one headless Chromium (/usr/bin/chromium, flags for a closed network) for the package.
- ``phone_context`` / ``desktop_context``: a fresh browser (cookies and all) per test, 375×667 touch ×2
  or 1366×900, downloads accepted; ``ui_context`` is either, parametrized by ``viewport``.
- ``ui_page``: a page of ``ui_context`` watched for console errors, page errors, failed requests and 5xx
  answers; the test fails at teardown listing them (``problems.allow(regex)`` for an expected one).

Plain Playwright fixtures with their own names (pytest-playwright's ``browser``/``context``/``page``/
``base_url`` are left alone: they would pick Playwright's own browser build and parametrize by
browser_name). Package scope, not session: the sync Playwright loop is gone before the asyncio tests
of other packages run. Test modules mark themselves ``e2e``.
"""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import Browser, BrowserContext, expect, sync_playwright

from .chromium import CHROMIUM, ProblemWatcher, launch, new_context
from .product import running_product

# a 2-core machine runs the whole product beside the browser: give pages and answers some slack
expect.set_options(timeout=15_000)


@pytest.fixture(scope="package")
def ews_base(tmp_path_factory: pytest.TempPathFactory):
    """`.venv/bin/ews up` like `make run`, on free ports with a fresh data folder; its base URL."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (scripts/setup.sh --browser, as root)")
    with running_product(tmp_path_factory.mktemp("ews-up")) as base:
        yield base


@pytest.fixture(scope="package")
def chromium():
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def phone_context(chromium: Browser, ews_base: str):
    context = new_context(chromium, "phone", ews_base)
    yield context
    context.close()


@pytest.fixture
def desktop_context(chromium: Browser, ews_base: str):
    context = new_context(chromium, "desktop", ews_base)
    yield context
    context.close()


@pytest.fixture(params=["phone", "desktop"])
def viewport(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def ui_context(request: pytest.FixtureRequest, viewport: str) -> BrowserContext:
    return request.getfixturevalue(f"{viewport}_context")


@pytest.fixture
def problems() -> ProblemWatcher:
    return ProblemWatcher()


@pytest.fixture
def ui_page(ui_context: BrowserContext, problems: ProblemWatcher):
    page = problems.watch(ui_context.new_page())
    page.set_default_timeout(15_000)
    yield page
    found = problems.report()
    assert not found, "the page reported problems:\n  " + "\n  ".join(found)
