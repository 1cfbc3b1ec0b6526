"""What a person waits for in the web UI, measured in headless Chromium on the real product.

(a) bytes transferred per page: the sum of encoded response sizes (compressed as sent, headers
    included) for one load with an empty cache — the login page and each page of every role;
(b) sign-in to first chart: from the click on "Sign in" (PIN only, on a browser that already gave its
    PUK) to the first ``canvas``/``svg`` drawn inside a ``[data-chart]`` element on the user's home
    (Total – Electricity), median over --runs runs;
(c) server time per page: --requests sequential GETs of each page with the session cookie (httpx,
    keep-alive), p50 and p99.

    .venv/bin/python benchmarks/bench_pages.py [--base http://127.0.0.1:8080] [--runs 10] [--requests 200]

Without --base it starts `ews up` on free ports with a fresh data folder (stopped at the end).
A page that answers an error shows "n/a (HTTP …)" in the table instead of stopping the run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import Browser, Request, sync_playwright  # noqa: E402

from tests.browser.chromium import launch, new_context  # noqa: E402
from tests.browser.pages import ACCOUNTS, login, pin_field, sign_in_button  # noqa: E402
from tests.browser.product import running_product  # noqa: E402

# (label, path, role signed in or None)
PAGES: list[tuple[str, str, str | None]] = [
    ("login", "/login", None),
    ("installation (all devices)", "/installation?by=all", "administrator"),
    (
        "device: measure / energy",
        "/installation/devices/pm-premium?tab=measure&group=energy",
        "administrator",
    ),
    (
        "device: measure / harmonics",
        "/installation/devices/pm-premium?tab=measure&group=harmonics",
        "administrator",
    ),
    ("total – electricity, day", "/consumption/total-electricity?period=day", "user"),
    ("total – electricity, year", "/consumption/total-electricity?period=year", "user"),
    ("total – global, month", "/consumption/total-global?period=month", "user"),
    ("partial, day", "/consumption/partial?period=day", "user"),
    ("comparison, month", "/consumption/comparison?period=month", "user"),
    ("details, day", "/consumption/details?period=day", "user"),
    ("green'up details", "/greenup/details", "greenUp"),
    ("green'up management", "/greenup/management", "greenUp"),
]
CHART_DRAWN = "[data-chart] canvas, [data-chart] svg"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def page_bytes(browser: Browser, base: str, path: str, role: str | None) -> tuple[int | None, str]:
    """Encoded bytes (bodies + headers) of every response while loading ``path`` with an empty cache."""
    context = new_context(browser, "desktop", base)
    try:
        page = context.new_page()
        if role:
            login(page, base, ACCOUNTS[role].pin, ACCOUNTS[role].puk)
            page.wait_for_load_state("networkidle")  # the home page's own loads must not count here
        # an empty cache: the sign-in page must not have cached this page's scripts and styles
        context.new_cdp_session(page).send("Network.clearBrowserCache")
        finished: list[Request] = []
        page.on("requestfinished", lambda request: finished.append(request))
        response = page.goto(base + path)
        page.wait_for_load_state("load")
        if response is None or response.status >= 400:
            return None, f"n/a (HTTP {response.status if response else '?'})"
        if page.locator("[data-chart]").count():
            page.locator(CHART_DRAWN).first.wait_for(state="visible", timeout=15_000)
        total = 0
        for request in finished:
            sizes = request.sizes()
            total += sizes["responseBodySize"] + sizes["responseHeadersSize"]
        return total, f"{total / 1024:.1f}"
    finally:
        context.close()


def signin_to_chart(browser: Browser, base: str, runs: int) -> list[float]:
    """Seconds from the "Sign in" click (PIN only) to the first chart drawn on the user's home."""
    user = ACCOUNTS["user"]
    context = new_context(browser, "desktop", base)
    try:
        page = context.new_page()
        login(page, base, user.pin, user.puk)  # this browser gives its PUK once
        times = []
        for _ in range(runs):
            page.request.post(base + "/api/v1/auth/logout", data={"mode": "logout"})
            page.goto(base + "/login")
            pin_field(page).fill(user.pin)
            start = time.perf_counter()
            sign_in_button(page).click()
            page.locator(CHART_DRAWN).first.wait_for(state="visible", timeout=30_000)
            times.append(time.perf_counter() - start)
        return times
    finally:
        context.close()


def server_times(base: str, path: str, role: str | None, n: int) -> tuple[list[float], int]:
    with httpx.Client(base_url=base, timeout=30) as client:
        if role:
            account = ACCOUNTS[role]
            r = client.post("/api/v1/auth/login", json={"pin": account.pin, "puk": account.puk})
            r.raise_for_status()
        status = client.get(path).status_code  # warm-up (templates, caches)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            r = client.get(path)
            times.append(time.perf_counter() - start)
            status = max(status, r.status_code)
        return times, status


def run(base: str, runs: int, requests: int) -> None:
    rows = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            for label, path, role in PAGES:
                try:
                    _, size = page_bytes(browser, base, path, role)
                except Exception as exc:  # noqa: BLE001 — e.g. the page or the sign-in is not there yet
                    size = f"n/a ({' '.join(str(exc).split())[:60]})"
                times, status = server_times(base, path, role, requests)
                if status >= 400:
                    p50 = p99 = f"n/a (HTTP {status})"
                else:
                    p50 = f"{percentile(times, 0.50) * 1000:.1f}"
                    p99 = f"{percentile(times, 0.99) * 1000:.1f}"
                rows.append((label, role or "-", size, p50, p99))
                print(f"  {label}: {size} KiB, p50 {p50} ms", file=sys.stderr)
            try:
                chart = f"{statistics.median(signin_to_chart(browser, base, runs)) * 1000:.0f} ms"
            except Exception as exc:  # noqa: BLE001 — the home page or its chart is not there yet
                chart = f"n/a ({' '.join(str(exc).split())[:120]})"
        finally:
            browser.close()

    print(f"\nWeb pages in headless Chromium ({requests} GETs per page for server time)\n")
    print("| page | role | transferred (KiB) | server p50 (ms) | server p99 (ms) |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nSign-in click to first chart drawn (user, PIN only), median of {runs}: {chart}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", help="URL of a running product (default: start `ews up` on free ports)")
    parser.add_argument("--runs", type=int, default=10, help="sign-in to chart runs (median)")
    parser.add_argument("--requests", type=int, default=200, help="GETs per page for the server time")
    args = parser.parse_args()
    with ExitStack() as stack:
        base = args.base
        if not base:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ews-bench-pages-")))
            print("starting `ews up`…", file=sys.stderr)
            base = stack.enter_context(running_product(folder))
        run(base.rstrip("/"), args.runs, args.requests)


if __name__ == "__main__":
    main()
