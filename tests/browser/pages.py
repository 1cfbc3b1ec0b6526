"""The pages as a person uses them: controls found by role and accessible name only (DESIGN.md
"Web UI"), plus the layout checks every page must pass on a phone."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from playwright.sync_api import Locator, Page, expect


@dataclass(frozen=True)
class Account:
    role: str
    pin: str
    puk: str
    home: str  # path prefix of the role's home page (checked loosely)
    nav: tuple[str, ...]  # main navigation links the role has


ACCOUNTS: dict[str, Account] = {
    "administrator": Account(
        "administrator", "99999", "00000 9999 00000", "/installation", ("My installation", "Consumptions")
    ),
    "greenUp": Account(
        "greenUp",
        "88888",
        "00000 8888 00000",
        "/greenup/management",
        ("My installation", "Consumptions", "Green'Up"),
    ),
    "installer": Account(
        "installer", "55555", "00000 5555 00000", "/installation", ("My installation", "Consumptions")
    ),
    "user": Account("user", "11111", "00000 1111 00000", "/consumption", ("Consumptions",)),
}

NAV_LINKS = ("My installation", "Consumptions", "Green'Up")
CONSUMPTION_MODES = {
    "Total – Electricity": "total-electricity",
    "Total – Global": "total-global",
    "Partial – Zones and circuits": "partial",
    "Comparison": "comparison",
    "Details": "details",
}
PERIODS = {"Day": "day", "Month": "month", "Year": "year", "10 years": "decade"}
DEVICE_FILTERS = ("Gateways", "Electrical panels", "All devices")
DEVICE_TABS = ("Measure", "Status/Command")
MEASURE_GROUPS = ("Energy", "Power", "Voltage/Current/Frequency", "THD", "Harmonics")
GREENUP_PAGES = ("Details", "Management")
GREENUP_TABS = ("Information", "Charger error", "Charge error", "Commands")
PAGE_TIMEOUT = 15_000  # ms for a page or a control to appear
COMMAND_TIMEOUT = 30_000  # ms for a command's outcome (the simulated station answers within a few polls)

PIN_LABEL = re.compile(r"^\s*PIN\b")
PUK_LABEL = re.compile(r"^\s*PUK\b")
ERROR_TEXT = re.compile(r"wrong|incorrect|invalid|refused", re.IGNORECASE)


# --- finding controls ------------------------------------------------------------------------------


def control(scope: Page | Locator, name: str) -> Locator:
    """The link, tab or button named exactly ``name`` (pages may render a control as any of them), or
    the form field labelled so (e.g. "Choose a date" as a date input)."""
    return (
        scope.get_by_role("link", name=name, exact=True)
        .or_(scope.get_by_role("tab", name=name, exact=True))
        .or_(scope.get_by_role("button", name=name, exact=True))
        .or_(scope.get_by_label(name, exact=True))
        .first
    )


def navigation(page: Page) -> Locator:
    return page.get_by_role("navigation").filter(has=page.get_by_role("link", name=NAV_LINKS[1], exact=True))


def open_control(page: Page, name: str) -> None:
    """Click ``name`` and wait until the resulting page is loaded."""
    target = control(page, name)
    expect(target).to_be_visible(timeout=PAGE_TIMEOUT)
    target.click()
    page.wait_for_load_state("load")
    expect(page.get_by_role("heading").first).to_be_visible(timeout=PAGE_TIMEOUT)


# --- sign-in and out -------------------------------------------------------------------------------


def pin_field(page: Page) -> Locator:
    return page.get_by_label(PIN_LABEL)


def puk_field(page: Page) -> Locator:
    return page.get_by_label(PUK_LABEL)


def sign_in_button(page: Page) -> Locator:
    return page.get_by_role("button", name="Sign in", exact=True)


def error_message(page: Page) -> Locator:
    return (
        page.get_by_role("alert")
        .filter(has_text=ERROR_TEXT)
        .or_(page.get_by_role("status").filter(has_text=ERROR_TEXT))
        .first
    )


def submit_codes(page: Page, pin: str, puk: str | None) -> bool:
    """Type the PIN, sign in; type the PUK when the page asks for it. Returns whether the PUK was asked."""
    pin_field(page).fill(pin)
    sign_in_button(page).click()
    if puk is None:
        return False
    asked = puk_field(page)
    try:
        # either the PUK field appears, or the browser leaves the login page
        expect(asked.or_(page.get_by_role("navigation").first)).to_be_visible(timeout=PAGE_TIMEOUT)
    except AssertionError:
        return False
    if not asked.is_visible():
        return False
    if pin_field(page).is_visible() and not pin_field(page).input_value():
        pin_field(page).fill(pin)  # a server-rendered page may come back with the PIN field empty
    asked.fill(puk)
    sign_in_button(page).click()
    return True


def login(page: Page, base: str, pin: str, puk: str | None, path: str = "/login") -> bool:
    """Open the login page, sign in (PUK only when asked); wait for the role's home. Returns whether
    the PUK was asked."""
    page.goto(base + path)
    expect(pin_field(page)).to_be_visible(timeout=PAGE_TIMEOUT)
    asked = submit_codes(page, pin, puk)
    expect(pin_field(page)).to_be_hidden(timeout=PAGE_TIMEOUT)
    expect(page.get_by_role("heading").first).to_be_visible(timeout=PAGE_TIMEOUT)
    return asked


def login_as(page: Page, base: str, account: Account) -> bool:
    asked = login(page, base, account.pin, account.puk)
    assert urlsplit(page.url).path.startswith(account.home), f"{account.role} landed on {page.url}"
    return asked


def open_session_page(page: Page) -> None:
    """The header's "Logout" leads to /session (buttons Logout and Lock)."""
    control(page.get_by_role("banner"), "Logout").click()
    page.wait_for_url(re.compile(r"/session\b"), timeout=PAGE_TIMEOUT)
    expect(page.get_by_role("button", name="Lock", exact=True)).to_be_visible()


def logout(page: Page) -> None:
    open_session_page(page)
    page.get_by_role("main").get_by_role("button", name="Logout", exact=True).click()
    expect(pin_field(page)).to_be_visible(timeout=PAGE_TIMEOUT)


def lock(page: Page) -> None:
    open_session_page(page)
    page.get_by_role("button", name="Lock", exact=True).click()
    expect(pin_field(page)).to_be_visible(timeout=PAGE_TIMEOUT)


# --- layout checks ---------------------------------------------------------------------------------

NARROW_WIDTHS = (375, 320)
MAX_HEADER_PX = 64
MIN_TARGET_PX = 44

_SCROLL = "() => [document.documentElement.scrollWidth, window.innerWidth]"
_SMALL_TARGETS = """(min) => {
  const main = document.querySelector('main, [role=main]');
  if (!main) return ['no main element'];
  const out = [];
  for (const el of main.querySelectorAll('a[href], button, [role=button], [role=tab], [role=link], select, input:not([type=hidden])')) {
    const r = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    if (r.width === 0 || r.height === 0 || style.visibility === 'hidden') continue;
    // hidden from people (a visually hidden default button of a form): not a target anyone touches
    if (el.closest('[aria-hidden="true"]')) continue;
    // a link inside a sentence is exempt (WCAG 2.5.8 "inline")
    if (el.tagName === 'A' && getComputedStyle(el).display === 'inline' && el.closest('p, li > span')) continue;
    // a checkbox or radio button is touched through its label too: the larger of the two counts
    const label = ['checkbox', 'radio'].includes(el.type) && el.labels
      ? [...el.labels].map((l) => l.getBoundingClientRect()).find((b) => b.width >= min && b.height >= min)
      : null;
    if (label) continue;
    if (r.width < min || r.height < min) {
      const name = (el.getAttribute('aria-label') || el.textContent || el.name || el.tagName).trim().slice(0, 40);
      out.push(`${name} (${Math.round(r.width)}×${Math.round(r.height)})`);
    }
  }
  return out;
}"""


def layout_problems(page: Page, phone: bool) -> list[str]:
    """Header height on every viewport; on a phone also horizontal scroll at 375 and 320 px and touch
    targets in the main content. Returns the problems found (empty: fine)."""
    where = urlsplit(page.url)
    at = where.path + (f"?{where.query}" if where.query else "")
    problems = []
    box = page.get_by_role("banner").first.bounding_box()
    if box is None:
        problems.append(f"{at}: no visible header")
    elif box["height"] > MAX_HEADER_PX:
        problems.append(f"{at}: header {box['height']:.0f} px high (> {MAX_HEADER_PX})")
    if not phone:
        return problems
    size = page.viewport_size or {"width": 375, "height": 667}
    try:
        for width in NARROW_WIDTHS:
            page.set_viewport_size({"width": width, "height": size["height"]})
            scroll, inner = page.evaluate(_SCROLL)
            if scroll > inner:
                problems.append(f"{at}: horizontal scroll at {width} px (content {scroll} px wide)")
    finally:
        page.set_viewport_size(size)
    small = page.evaluate(_SMALL_TARGETS, MIN_TARGET_PX)
    if small:
        problems.append(f"{at}: touch targets under {MIN_TARGET_PX} px: {', '.join(small)}")
    return problems


# --- datalogger.csv against the JSON API ------------------------------------------------------------


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def query_of(url: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}


def compare_csv_with_json(rows: list[dict[str, str]], before: dict | None, after: dict) -> list[str]:
    """Each CSV row against the JSON buckets fetched just before (when known) and just after the
    download: same starts, units and currency; each value between the two (today's buckets keep
    growing), or at most the later one when no earlier fetch was possible."""
    problems = []
    if len(rows) != len(after["buckets"]):
        return [f"{len(rows)} CSV rows, {len(after['buckets'])} JSON buckets"]
    first = before or after
    for row, b0, b1 in zip(rows, first["buckets"], after["buckets"], strict=True):
        if row["start"] != b1["start"]:
            problems.append(f"start {row['start']} != {b1['start']}")
            continue
        if row["unit"] != b1["unit"] or row["currency"] != after["currency"]:
            problems.append(f"{row['start']}: unit/currency {row['unit']}/{row['currency']}")
        for column in ("value", "cost"):
            low = float(b0[column]) if before else float("-inf")
            high, got = float(b1[column]), float(row[column])
            if not (min(low, high) - 1e-9 <= got <= high + 1e-9):
                problems.append(f"{row['start']}: {column} {got} not within JSON [{low}, {high}]")
    return problems


# --- command buttons and the command log -----------------------------------------------------------


def command_done(scope: Page | Locator, value: str) -> Locator:
    """The outcome line of a command whose button is ``value`` once it is done ("Start" → "… → Start: done")."""
    return scope.get_by_role("status").filter(has_text=re.compile(rf"→ {re.escape(value)}: done\b"))


def send_command(scope: Page | Locator, outcome: Page | Locator, value: str, double: bool = False) -> None:
    """Click (or double-click, fast) the command button ``value`` in ``scope``; wait until ``outcome``
    shows it done."""
    button = scope.get_by_role("button", name=value, exact=True)
    expect(button).to_be_enabled(timeout=PAGE_TIMEOUT)
    if double:
        button.dblclick()
    else:
        button.click()
    expect(command_done(outcome, value)).to_be_visible(timeout=COMMAND_TIMEOUT)


@dataclass(frozen=True)
class LoggedCommand:
    id: str
    device: str  # the device cell: its name and id
    command: str  # "Relay output 1 → On"
    who: str
    outcome: str  # "Done (read back: On)"


def command_log(page: Page) -> list[LoggedCommand]:
    """The rows of the Command log page (open), newest first."""
    table = page.get_by_role("table", name="Commands")
    expect(table).to_be_visible(timeout=PAGE_TIMEOUT)
    out = []
    for row in table.get_by_role("row").all()[1:]:  # the header row first
        cells = [" ".join(c.split()) for c in row.get_by_role("cell").all_inner_texts()]
        if len(cells) == 5:
            out.append(LoggedCommand((row.get_attribute("id") or "").removeprefix("command-"), *cells[1:]))
    return out
