"""The language picker (L1, L2) on a phone: chosen on the login page, the pages after sign-in speak
it (``<html lang>``, the navigation, device states), long German and Greek words never make a page
scroll sideways at 375 or 320 px, and choosing English again brings English back — all without
changing the site's default language."""

from __future__ import annotations

import httpx
import pytest
from ews_gateway_api.i18n import translations
from playwright.sync_api import BrowserContext, expect

from .pages import ACCOUNTS, layout_problems

pytestmark = pytest.mark.e2e

PAGES = (
    "/greenup/management",
    "/greenup/details?tab=information",
    "/installation?by=all",
    "/installation/devices/pm-premium?tab=measure&group=voltage",
    "/installation/devices/io1?tab=outputs",
    "/consumption/total-electricity?period=month",
    "/consumption/total-global?period=year",
    "/consumption/partial",
    "/consumption/comparison",
    "/consumption/details?by=circuits",
    "/session",
)


@pytest.mark.parametrize("language", ["de", "el"])
def test_long_words_fit_and_the_choice_is_the_browsers(
    phone_context: BrowserContext, problems, ews_base: str, language: str
):
    t = translations(language).gettext
    page = problems.watch(phone_context.new_page())
    page.set_default_timeout(15_000)
    default_before = httpx.get(ews_base + "/api/v1/language").json()["default"]

    page.goto(ews_base + "/login")
    page.get_by_label("Language").select_option(language)  # submits itself, back to /login
    expect(page.locator("html")).to_have_attribute("lang", language)
    expect(page.get_by_role("button", name=t("Sign in"))).to_be_visible()

    account = ACCOUNTS["greenUp"]
    page.get_by_label(t("PIN")).fill(account.pin)
    page.get_by_role("button", name=t("Sign in")).click()
    page.get_by_label(t("PUK")).fill(account.puk)
    page.get_by_role("button", name=t("Sign in")).click()
    expect(page.get_by_role("navigation", name=t("Main navigation"))).to_be_visible()

    layout: list[str] = []
    for path in PAGES:
        page.goto(ews_base + path)
        page.wait_for_load_state("load")
        expect(page.locator("html")).to_have_attribute("lang", language)
        layout += layout_problems(page, phone=True)
    nav = page.get_by_role("navigation", name=t("Main navigation"))
    for label in ("My installation", "Consumptions", "Green'Up"):
        expect(nav.get_by_role("link", name=t(label), exact=True)).to_be_visible()
    page.goto(ews_base + "/greenup/management")
    expect(page.get_by_role("main").get_by_text(t("Waiting")).first).to_be_visible()  # a station's state
    assert not layout, f"{language} at 375/320 px:\n  " + "\n  ".join(layout)

    page.get_by_label(t("Language")).select_option("en")  # back to English, from a page after sign-in
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.get_by_role("navigation", name="Main navigation")).to_be_visible()
    assert httpx.get(ews_base + "/api/v1/language").json()["default"] == default_before  # site default kept
