"""Screenshots of every page, on a phone (375×667) and a computer (1366×900), in headless Chromium.

    .venv/bin/python scripts/screenshots.py                 # starts `ews up` on free ports, then stops it
    .venv/bin/python scripts/screenshots.py --base http://127.0.0.1:8080   # a product already running
    .venv/bin/python scripts/screenshots.py --out /tmp/shots --only consumption

Signs in with each role a page needs (default codes, or --codes ROLE=PIN,PUK) and writes
``<out>/<page>-<phone|desktop>.png`` (default out: docs/screenshots). A page that answers an error
is reported and skipped; the exit code is 1 if any page failed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import Page, sync_playwright  # noqa: E402

from tests.browser.chromium import VIEWPORTS, launch, new_context  # noqa: E402
from tests.browser.pages import ACCOUNTS, Account, login  # noqa: E402
from tests.browser.product import running_product  # noqa: E402

MODES = ("total-electricity", "total-global", "partial", "comparison", "details")
GROUPS = ("energy", "power", "voltage", "thd", "harmonics")
DEVICE = "pm-premium"  # IT room power quality meter: every measure group
STATION = "ev1"  # Parking charger

# (file name, path, role signed in or None)
PAGES: list[tuple[str, str, str | None]] = [
    ("login", "/login", None),
    ("session", "/session", "administrator"),
    ("codes", "/codes", "administrator"),
    *[
        (f"installation-{by}", f"/installation?by={by}", "administrator")
        for by in ("gateways", "panels", "all")
    ],
    *[
        (f"device-measure-{g}", f"/installation/devices/{DEVICE}?tab=measure&group={g}", "administrator")
        for g in GROUPS
    ],
    ("device-status-breaker", "/installation/devices/mccb-it?tab=status", "administrator"),
    ("device-status-modules", "/installation/devices/f1-light?tab=status", "installer"),
    ("device-inputs", "/installation/devices/io1?tab=inputs", "administrator"),
    ("device-outputs", "/installation/devices/io1?tab=outputs", "administrator"),
    ("device-virtual", "/installation/devices/hvac-rest", "administrator"),
    *[
        (f"station-{tab}", f"/installation/devices/{STATION}?tab={tab}", "greenUp")
        for tab in ("measure", "charger-error", "charge-error", "commands")
    ],
    *[
        (f"consumption-total-electricity-{p}", f"/consumption/total-electricity?period={p}", "user")
        for p in ("day", "month", "year", "decade")
    ],
    ("consumption-total-electricity-data", "/consumption/total-electricity?period=month&view=data", "user"),
    *[(f"consumption-{m}-month", f"/consumption/{m}?period=month", "user") for m in MODES[1:]],
    ("greenup-details", "/greenup/details", "greenUp"),
    ("greenup-management", "/greenup/management", "greenUp"),
    ("configuration", "/configuration", "installer"),
    *[
        (f"configuration-{section}", f"/configuration/{section}", "installer")
        for section in (
            "gateways",
            "devices",
            "virtual-devices",
            "structure",
            "tariffs",
            "site",
            "network",
            "database",
            "files",
            "history",
            "commands",
        )
    ],
    ("configuration-device", f"/configuration/devices/{DEVICE}/edit", "installer"),
    ("configuration-tariff-new", "/configuration/tariffs?edit=new", "administrator"),
    ("configuration-tokens", "/configuration/tokens", "administrator"),
]


def settle(page: Page) -> None:
    """Loaded, fonts ready, charts drawn when the page has any (live pages never go network-idle)."""
    page.wait_for_load_state("load")
    page.evaluate("() => document.fonts && document.fonts.ready")
    if page.locator("[data-chart]").count():
        try:
            page.locator("[data-chart] canvas, [data-chart] svg").first.wait_for(
                state="visible", timeout=10_000
            )
        except Exception:  # noqa: BLE001 — a chart that never draws still gets its screenshot
            print(f"  note: no chart drawn on {page.url}", file=sys.stderr)
    page.wait_for_timeout(300)  # chart animations


def shoot(base: str, out: Path, only: str | None, accounts: dict[str, Account]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    with sync_playwright() as playwright:
        browser = launch(playwright)
        for kind in VIEWPORTS:
            pages: dict[str | None, Page] = {}  # one signed-in browser per role and viewport
            for name, path, role in PAGES:
                if only and only not in name:
                    continue
                if role not in pages:
                    page = new_context(browser, kind, base).new_page()
                    if role is not None:
                        account = accounts[role]
                        login(page, base, account.pin, account.puk)
                    pages[role] = page
                page = pages[role]
                response = page.goto(base + path)
                status = response.status if response else 0
                if status >= 400:
                    print(f"{name}-{kind}: HTTP {status} for {path}; skipped", file=sys.stderr)
                    failures += 1
                    continue
                settle(page)
                target = out / f"{name}-{kind}.png"
                page.screenshot(path=str(target), full_page=True)
                print(f"{target.relative_to(out.parent) if out.parent in target.parents else target}")
            for page in pages.values():
                page.context.close()
        browser.close()
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", help="URL of a running product (default: start `ews up` on free ports)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--only", help="only pages whose file name contains this text")
    parser.add_argument(
        "--codes", action="append", default=[], metavar="ROLE=PIN,PUK", help="codes other than the defaults"
    )
    args = parser.parse_args()
    accounts = dict(ACCOUNTS)
    for item in args.codes:
        role, _, codes = item.partition("=")
        pin, _, puk = codes.partition(",")
        accounts[role] = Account(role, pin, puk, accounts[role].home, accounts[role].nav)
    with ExitStack() as stack:
        base = args.base
        if not base:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ews-screenshots-")))
            print("starting `ews up`…", file=sys.stderr)
            base = stack.enter_context(running_product(folder))
        return shoot(base.rstrip("/"), args.out.resolve(), args.only, accounts)


if __name__ == "__main__":
    sys.exit(main())
