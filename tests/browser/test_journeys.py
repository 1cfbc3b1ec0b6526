"""Each role's day with the product, on a phone and on a computer: sign in, visit every page, mode,
period and tab the navigation offers, download datalogger.csv and check it against the JSON API,
command a charging station (Green'Up), keep the layout usable at 375 and 320 px, then Logout
(PIN alone signs in again) and Lock (the PUK is asked again).

And the commands as a new user sends them while the stack polls: a relay output (installer) and a
station's Start / Wait (Green'Up), one of each double-clicked, then the Command log: one entry per
intended command, done, and one write each in the poller's log."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, expect

from .chromium import ProblemWatcher, new_context
from .pages import (
    ACCOUNTS,
    COMMAND_TIMEOUT,
    CONSUMPTION_MODES,
    DEVICE_FILTERS,
    DEVICE_TABS,
    GREENUP_PAGES,
    GREENUP_TABS,
    MEASURE_GROUPS,
    NAV_LINKS,
    PAGE_TIMEOUT,
    PERIODS,
    Account,
    LoggedCommand,
    command_log,
    compare_csv_with_json,
    control,
    csv_rows,
    layout_problems,
    lock,
    login_as,
    logout,
    navigation,
    open_control,
    pin_field,
    puk_field,
    query_of,
    send_command,
    sign_in_button,
    submit_codes,
)

pytestmark = pytest.mark.e2e

# pm-premium measures every group (THD and harmonics too); the breaker also has Status/Command
DEVICES = (re.compile(r"IT room power quality meter"), re.compile(r"IT room breaker"))
CHART_CONTROLS = ("Previous", "Next", "Choose a date", "Full screen", "Download datalogger.csv", "Data")
OUTCOME = re.compile(r"completed|done|executed|succeeded", re.IGNORECASE)


class Journey:
    """One person on one page; layout problems are collected and reported together at the end."""

    def __init__(self, page: Page, base: str, account: Account, phone: bool) -> None:
        self.page, self.base, self.account, self.phone = page, base, account, phone
        self.layout: list[str] = []
        self.seen: list[str] = []

    def check(self) -> None:
        where = urlsplit(self.page.url)
        self.seen.append(where.path + (f"?{where.query}" if where.query else ""))
        self.layout += layout_problems(self.page, self.phone)

    def open(self, name: str) -> None:
        open_control(self.page, name)
        self.check()

    def nav(self, name: str) -> None:
        link = navigation(self.page).get_by_role("link", name=name, exact=True)
        if not link.is_visible():  # a phone may fold the navigation behind a menu button
            control(self.page, "Menu").click()
        link.click()
        self.page.wait_for_load_state("load")
        self.check()


def visit_installation(j: Journey) -> None:
    j.nav("My installation")
    for name in DEVICE_FILTERS:
        j.open(name)
    tabs_seen: set[str] = set()
    for device in DEVICES:
        j.nav("My installation")
        j.open("All devices")
        j.page.get_by_role("main").get_by_role("link", name=device).first.click()
        j.page.wait_for_url(re.compile(r"/installation/devices/"))
        for tab in DEVICE_TABS:  # the tabs this device has
            if not control(j.page, tab).count():
                continue
            tabs_seen.add(tab)
            j.open(tab)
            if tab == "Measure":
                for group in MEASURE_GROUPS:
                    if group in tabs_seen:
                        continue
                    j.open(group)
                    tabs_seen.add(group)
    assert tabs_seen >= {*DEVICE_TABS, *MEASURE_GROUPS}, f"device pages offered only {sorted(tabs_seen)}"


def visit_consumption(j: Journey) -> None:
    j.nav("Consumptions")
    for mode in CONSUMPTION_MODES:
        j.open(mode)
        for period in PERIODS:
            j.open(period)
    # the chart controls on Total – Electricity, by day
    j.open("Total – Electricity")
    j.open("Day")
    for name in CHART_CONTROLS:
        expect(control(j.page, name)).to_be_visible()
    j.open("Previous")
    j.open("Next")
    check_download(j)


def check_download(j: Journey) -> None:
    """datalogger.csv has the rows of GET /api/v1/consumption for the same scope, period and date."""
    page = j.page
    link = control(page, "Download datalogger.csv")
    href = link.get_attribute("href")

    def params(url: str) -> dict[str, str]:
        q = query_of(url)
        if "scope" not in q:  # a page route: /consumption/<mode>/… names the scope
            parts = urlsplit(page.url).path.strip("/").split("/")
            q["scope"] = parts[1] if len(parts) > 1 else "total-electricity"
        return {k: v for k, v in q.items() if k in ("scope", "period", "date")}

    def api(q: dict[str, str]) -> dict:
        r = page.request.get(j.base + "/api/v1/consumption", params=q)
        assert r.ok, f"GET /api/v1/consumption {q}: {r.status} {r.text()[:300]}"
        return r.json()

    before = api(params(href)) if href else None
    with page.expect_download() as info:
        link.click()
    download = info.value
    q = params(download.url)
    assert download.suggested_filename.endswith(".csv"), download.suggested_filename
    rows = csv_rows(Path(download.path()).read_text(encoding="utf-8"))
    after = api(q)
    assert rows, "datalogger.csv has no rows"
    problems = compare_csv_with_json(rows, before, after)
    assert not problems, f"datalogger.csv vs /api/v1/consumption {q}:\n  " + "\n  ".join(problems)


def visit_greenup(j: Journey, command: str) -> None:
    j.nav("Green'Up")
    for name in GREENUP_PAGES:
        j.open(name)
        if name == "Details":
            for tab in GREENUP_TABS:  # station tabs, where the page shows them
                if control(j.page, tab).count():
                    j.open(tab)
    # Management: the first station's Start or Wait, and its outcome on the page
    main = j.page.get_by_role("main")
    main.get_by_role("button", name=command, exact=True).first.click()
    expect(main.get_by_text(OUTCOME).first).to_be_visible(timeout=COMMAND_TIMEOUT)
    j.check()


def leave_and_return(j: Journey) -> None:
    page, account = j.page, j.account
    logout(page)  # header "Logout" -> /session -> Logout
    assert not submit_codes(page, account.pin, None)
    expect(pin_field(page)).to_be_hidden(timeout=PAGE_TIMEOUT)
    expect(puk_field(page)).to_have_count(0)

    lock(page)  # header "Logout" -> /session -> Lock
    pin_field(page).fill(account.pin)
    sign_in_button(page).click()
    expect(puk_field(page)).to_be_visible(timeout=PAGE_TIMEOUT)
    puk_field(page).fill(account.puk)  # finish signing in (clears this client's failure count)
    sign_in_button(page).click()
    expect(pin_field(page)).to_be_hidden(timeout=PAGE_TIMEOUT)


@pytest.mark.parametrize("role", list(ACCOUNTS))
def test_role_journey(ui_page: Page, ews_base: str, viewport: str, role: str):
    account = ACCOUNTS[role]
    j = Journey(ui_page, ews_base, account, phone=viewport == "phone")

    assert login_as(ui_page, ews_base, account), "a fresh browser must be asked for the PUK"
    j.check()
    nav = navigation(ui_page)
    for name in NAV_LINKS:
        expect(nav.get_by_role("link", name=name, exact=True)).to_have_count(1 if name in account.nav else 0)

    if "My installation" in account.nav:
        visit_installation(j)
    visit_consumption(j)
    if "Green'Up" in account.nav:
        visit_greenup(j, "Start" if j.phone else "Wait")
    leave_and_return(j)

    assert not j.layout, f"layout problems on {viewport}:\n  " + "\n  ".join(dict.fromkeys(j.layout))


# a relay: io2 (programmable-outputs) declares output-1 on/off; a station: ev2b's charge start/wait
RELAY = ("Load-shedding outputs", "Outputs", "Relay output 1", "io2")
STATION = ("Visitors charger (side B)", "ev2b")


def open_command_log(page: Page) -> list[LoggedCommand]:
    navigation(page).get_by_role("link", name="Configuration", exact=True).click()
    page.wait_for_load_state("load")
    open_control(page, "Command log")
    return command_log(page)


def poller_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`ews up`'s output (conftest's ews_base keeps it in its ews-up folder)."""
    (log,) = tmp_path_factory.getbasetemp().glob("ews-up[0-9]*/ews-up.log")  # not the -current link
    return log


def test_page_commands_run_once_each_and_the_command_log_shows_them(
    chromium: Browser, ews_base: str, problems: ProblemWatcher, tmp_path_factory: pytest.TempPathFactory
):
    installer = problems.watch(new_context(chromium, "desktop", ews_base).new_page())
    login_as(installer, ews_base, ACCOUNTS["installer"])
    before = {c.id for c in open_command_log(installer)}

    # installer: a relay output On (double-clicked), then Off
    device, tab, output, relay_id = RELAY
    installer.goto(ews_base + "/installation?by=all")
    installer.get_by_role("main").get_by_role("link", name=device).first.click()
    installer.wait_for_url(re.compile(r"/installation/devices/"))
    open_control(installer, tab)
    group = installer.get_by_role("main").get_by_role("group", name=output, exact=True)
    send_command(group, installer.get_by_role("main"), "On", double=True)
    send_command(group, installer.get_by_role("main"), "Off")

    # Green'Up: a station's Start (double-clicked), then Wait
    greenup = problems.watch(new_context(chromium, "desktop", ews_base).new_page())
    login_as(greenup, ews_base, ACCOUNTS["greenUp"])
    name, station_id = STATION
    station = greenup.get_by_role("main").get_by_role("group", name=name, exact=True)
    send_command(station, station, "Start", double=True)
    send_command(station, station, "Wait")
    greenup.context.close()

    # the Command log: one entry per intended command, each done
    new = [c for c in open_command_log(installer) if c.id not in before]
    got = sorted((c.device.split()[-1], c.command, c.outcome.split(" (")[0]) for c in new)
    assert got == sorted(
        [
            (relay_id, f"{output} → On", "Done"),
            (relay_id, f"{output} → Off", "Done"),
            (station_id, "Current charge → Start", "Done"),
            (station_id, "Current charge → Wait", "Done"),
        ]
    ), "\n".join(map(str, new))
    assert {c.who for c in new if c.device.endswith(relay_id)} == {"Installer"}
    # the bus owner wrote each command once
    text = poller_log(tmp_path_factory).read_text(errors="replace")
    writes = {c.id: len(re.findall(rf"command {c.id}: wrote ", text)) for c in new}
    assert set(writes.values()) == {1}, writes
    installer.context.close()
    found = problems.report()
    assert not found, "the pages reported problems:\n  " + "\n  ".join(found)
