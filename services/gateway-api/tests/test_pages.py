"""The web pages through the real app (create_app, the real auth service, Redis, chDB): sign-in as a
person does it (forms, redirects), each role's pages, errors as pages, and the page helpers.

The browser journeys (tests/browser) drive the same pages in Chromium; these run without a browser.
"""

from __future__ import annotations

import re
from datetime import date
from html.parser import HTMLParser
from zoneinfo import ZoneInfo

import pytest
from babel.messages.pofile import read_po
from ews_gateway_api import vocabulary as _labels
from ews_gateway_api.domain.language import LANGUAGES
from ews_gateway_api.i18n import LOCALE_DIR, Formats, scale_for, translations
from ews_gateway_api.pages.consumption import shift
from httpx import AsyncClient
from litestar import Litestar

from .conftest import session_for

HOMES = {
    "administrator": "/installation",
    "installer": "/installation",
    "greenUp": "/greenup/management",
    "user": "/consumption/total-electricity",
}
PAGES = {
    "administrator": ["/installation", "/installation?by=panels", "/installation?by=all", "/consumption/total-electricity",
                      "/codes", "/session", "/installation/devices/m1", "/installation/devices/io1",
                      "/installation/devices/io1?tab=outputs", "/installation/devices/hvac-rest"],
    "installer": ["/installation", "/consumption/total-global", "/installation/devices/f1-light?tab=status"],
    "greenUp": ["/greenup/management", "/greenup/management?by=zones", "/greenup/details",
                "/greenup/details?station=ev2a&tab=information", "/installation/devices/ev1?tab=commands",
                "/installation/devices/ev1?tab=charger-error"],
    "user": ["/consumption/total-electricity", "/consumption/partial", "/consumption/comparison",
             "/consumption/details?by=circuits", "/codes", "/session"],
}  # fmt: skip

pytestmark = pytest.mark.integration


async def test_sign_in_with_pin_then_puk_lands_on_the_home_and_lock_asks_the_puk_again(
    client: AsyncClient,
) -> None:
    assert (await client.get("/")).headers["location"] == "/login"
    page = await client.get("/login")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'name="pin"' in page.text and 'name="puk"' not in page.text
    # the PIN alone: this browser has no PUK step yet -> the PUK field appears, the PIN kept
    step = await client.post("/login", data={"pin": "99999"})
    assert step.status_code == 200 and 'name="puk"' in step.text
    done = await client.post("/login", data={"pin": "99999", "puk": "00000 9999 00000"})
    assert done.status_code == 303 and done.headers["location"] == "/installation"
    home = await client.get("/installation")
    assert home.status_code == 200 and "My installation" in home.text
    assert 'href="/codes"' in home.text  # the factory-codes banner says where to change them
    # leaving: the session page offers Logout and Lock
    leave = await client.get("/session")
    assert ">Logout</button>" in leave.text and ">Lock</button>" in leave.text
    out = await client.post("/session", data={"mode": "logout"})
    assert out.status_code == 303 and out.headers["location"] == "/login?done=logout"
    assert (await client.get("/installation")).status_code == 401
    # after Logout the PIN alone signs in again
    again = await client.post("/login", data={"pin": "99999", "next": "/consumption/total-global"})
    assert again.status_code == 303 and again.headers["location"] == "/consumption/total-global"
    await client.post("/session", data={"mode": "lock"})
    asked = await client.post("/login", data={"pin": "99999"})
    assert 'name="puk"' in asked.text


async def test_wrong_codes_and_bad_pins_are_named_in_the_page(client: AsyncClient) -> None:
    bad = await client.post("/login", data={"pin": "12"})
    assert bad.status_code == 400 and "The PIN is 5 digits." in bad.text
    wrong = await client.post("/login", data={"pin": "12345", "puk": "00000 0000 00000"})
    assert wrong.status_code == 401 and "Wrong PIN or PUK." in wrong.text
    # a next that leaves the site is ignored
    done = await client.post(
        "/login", data={"pin": "11111", "puk": "00000 1111 00000", "next": "//evil.example/x"}
    )
    assert done.headers["location"] == "/consumption/total-electricity"


@pytest.mark.parametrize("role", list(PAGES))
async def test_every_page_of_each_role_renders(client: AsyncClient, app: Litestar, role: str) -> None:
    cookies = await session_for(app, role)
    landing = await client.get("/", cookies=cookies)
    assert landing.headers["location"] == HOMES[role]
    for url in [HOMES[role], *PAGES[role]]:
        response = await client.get(url, cookies=cookies)
        assert response.status_code == 200, (url, response.text[:300])
        assert response.headers["content-type"].startswith("text/html")
        assert "<main" in response.text and "Traceback" not in response.text


async def test_consumption_pages_every_mode_and_period(client: AsyncClient, app: Litestar) -> None:
    cookies = await session_for(app, "user")
    for mode in ("total-electricity", "total-global", "partial", "comparison", "details"):
        for period in ("day", "month", "year", "decade"):
            for view in ("chart", "data"):
                url = f"/consumption/{mode}?period={period}&date=2025-03-30&view={view}"
                response = await client.get(url, cookies=cookies)
                assert response.status_code == 200, (url, response.text[:300])
                # an empty database: the page says so instead of drawing zeros
                assert "No data recorded for this period." in response.text, url
                for name in ("Previous", "Next", "Choose a date", "Full screen", "Data"):
                    assert name in response.text, (url, name)
    page = await client.get("/consumption/total-electricity?period=month&date=2025-03-30", cookies=cookies)
    assert re.search(
        r'href="/api/v1/consumption/datalogger\.csv\?scope=total-electricity&amp;period=month&amp;date=2025-03-30"',
        page.text,
    )


async def test_bad_input_gets_a_page_naming_it(client: AsyncClient, app: Litestar) -> None:
    cookies = await session_for(app, "administrator")
    cases = {
        "/installation/devices/ghost": (404, "ghost"),
        "/installation?by=floors": (400, "floors"),
        "/consumption/total-electricity?date=2025-13-45": (400, "2025-13-45"),
        "/consumption/total-electricity?date=0001-01-01": (400, "0001-01-01"),
        "/consumption/nowhere": (404, "nowhere"),
        "/consumption/partial?circuit=ghost": (400, "ghost"),
        "/consumption/comparison?a=device:ghost&b=zone:building": (400, "ghost"),
        "/installation/devices/m1?tab=measure&group=nothing": (400, "nothing"),
    }
    for url, (status, named) in cases.items():
        response = await client.get(url, cookies=cookies)
        assert response.status_code == status, (url, response.status_code, response.text[:200])
        assert response.headers["content-type"].startswith("text/html"), url
        assert named in response.text and 'href="/installation"' in response.text, url
    # a command the profile does not declare: refused with its reason in the page
    refused = await client.post("/commands", data={"device": "ev1", "action": "explode"}, cookies=cookies)
    assert refused.status_code == 200 and "Refused" in refused.text and "explode" in refused.text


async def test_pages_are_guarded_like_the_api(client: AsyncClient, app: Litestar) -> None:
    user = await session_for(app, "user")
    assert (await client.get("/installation", cookies=user)).status_code == 403
    assert (await client.get("/greenup/management", cookies=user)).status_code == 403
    assert (
        await client.post(
            "/commands", data={"device": "ev1", "action": "charge", "value": "start"}, cookies=user
        )
    ).status_code == 403
    client.cookies.clear()
    anonymous = await client.get("/consumption/total-global")
    assert anonymous.status_code == 401 and 'name="pin"' in anonymous.text  # the sign-in form, then back here
    assert 'value="/consumption/total-global"' in anonymous.text


def test_formats_scale_units_and_keep_the_instruments_precision() -> None:
    fmt = Formats("fr", "EUR", ZoneInfo("Europe/Paris"))
    assert fmt.quantity(950, "Wh") == "950 Wh"
    assert fmt.quantity(12_500.5, "Wh") == "12,5 kWh"  # 12,500.5 Wh: the 0.5 Wh is below the instrument's Wh
    assert fmt.quantity(1_234_567, "dm³") == "1\u202f234,567 m³"  # French groups with a narrow no-break space
    assert scale_for("Wh", 2_000_000) == (1e6, "MWh")
    assert fmt.money(12.3456).startswith("12,35")
    en = Formats("en", "EUR", ZoneInfo("Europe/Paris"))
    assert en.number(1234.5) == "1,234.5"


def test_labels_read_profile_identifiers() -> None:
    t = str
    assert _labels.quantity_label("energy_active_import", t) == "Active energy imported (Ea+)"
    assert _labels.quantity_label("voltage_l1", t) == "Voltage L1"
    assert _labels.quantity_label("harmonic_current_l2_h5", t) == "H5"
    assert _labels.state_label("output_3", t) == "Relay output 3"
    assert _labels.value_label("charging", t) == "Charging"
    assert _labels.value_label("some-new-state", t) == "Some new state"
    groups = _labels.group_tables(
        {
            "voltage_l1": 230,
            "current_l1": 5,
            "frequency": 50,
            "harmonic_voltage_l1_h3": 1,
            "harmonic_voltage_l1_h11": 2,
        }
    )
    assert [g.key for g, _ in groups] == ["voltage", "harmonics"]
    assert [t.key for t, _ in groups[0][1]] == ["voltage", "current", "frequency"]
    assert groups[1][1][0][1] == ["harmonic_voltage_l1_h3", "harmonic_voltage_l1_h11"]


def test_shift_steps_whole_periods() -> None:
    assert shift("day", date(2025, 3, 1), -1) == date(2025, 2, 28)
    assert shift("month", date(2025, 1, 31), -1) == date(2024, 12, 1)
    assert shift("year", date(2025, 6, 5), 1) == date(2026, 1, 1)
    assert shift("decade", date(2025, 6, 5), -1) == date(2015, 1, 1)


LANGUAGE_PAGES = {
    "administrator": ["/installation", "/installation/devices/pm-premium?tab=measure&group=voltage",
                      "/installation/devices/mccb-it?tab=status", "/installation/devices/io1?tab=outputs",
                      "/session", "/codes"],
    "greenUp": ["/greenup/management", "/greenup/details?tab=information", "/installation/devices/ev1?tab=commands"],
    "user": [f"/consumption/{m}?date=2025-03-30" for m in
             ("total-electricity", "total-global", "partial", "comparison", "details")]
             + ["/consumption/total-electricity?view=data&date=2025-03-30"],
}  # fmt: skip


class _Texts(HTMLParser):
    """Whole text nodes and the attributes a person reads (aria-label, title, placeholder)."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []
        self.lang: str | None = None
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        values = dict(attrs)
        if tag == "html":
            self.lang = values.get("lang")
        for name in ("aria-label", "title", "placeholder"):
            if values.get(name):
                self.texts.append(str(values[name]).strip())

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.texts.append(" ".join(data.split()))


@pytest.mark.parametrize("language", [code for code in LANGUAGES if code != "en"])
async def test_pages_speak_the_chosen_language(client: AsyncClient, app: Litestar, language: str) -> None:
    """Every page in every language: <html lang> and Content-Language follow the choice, and no text a
    person reads is a catalogue's English message left untranslated."""
    catalogue = translations(language)
    english = {
        m.id for m in read_po((LOCALE_DIR / "messages.pot").open("rb"))
        if isinstance(m.id, str) and m.id and "%(" not in m.id and catalogue.gettext(m.id) != m.id
    }  # fmt: skip
    translated = {catalogue.gettext(m) for m in english}  # Italian "Zone" (zones) is not English "Zone"
    for role, urls in LANGUAGE_PAGES.items():
        cookies = {**await session_for(app, role), "ews_lang": language}
        for url in urls:
            client.cookies.clear()
            response = await client.get(url, cookies=cookies)
            assert response.status_code == 200, (language, url, response.text[:200])
            assert response.headers["content-language"] == language
            parser = _Texts()
            parser.feed(response.text)
            assert parser.lang == language, url
            left = sorted({t for t in parser.texts if t in english and t not in translated})
            assert not left, f"{language} {url}: untranslated {left}"
