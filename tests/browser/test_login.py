"""The login page on a phone and a computer: it loads cleanly, asks for the PIN, says so when the
codes are wrong, and signs in with the right ones."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from .pages import (
    ACCOUNTS,
    error_message,
    layout_problems,
    pin_field,
    puk_field,
    sign_in_button,
)

pytestmark = pytest.mark.e2e

WRONG_PIN = "12340"


@pytest.mark.parametrize("path", ["/login", "/"])
def test_login_page(ui_page: Page, ews_base: str, viewport: str, path: str):
    page = ui_page
    page.goto(ews_base + path)
    expect(pin_field(page)).to_be_visible()
    expect(pin_field(page)).to_be_editable()
    expect(sign_in_button(page)).to_be_enabled()

    # a wrong PIN: a fresh browser is asked for the PUK first (whatever the PIN), then refused
    pin_field(page).fill(WRONG_PIN)
    sign_in_button(page).click()
    user = ACCOUNTS["user"]
    expect(puk_field(page).or_(error_message(page))).to_be_visible()
    if puk_field(page).is_visible():
        if not pin_field(page).input_value():
            pin_field(page).fill(WRONG_PIN)
        puk_field(page).fill(user.puk)
        sign_in_button(page).click()
    expect(error_message(page)).to_be_visible()

    # the right codes sign in (and clear this client's failure count for the next tests)
    pin_field(page).fill(user.pin)
    if puk_field(page).is_visible():
        puk_field(page).fill(user.puk)
    sign_in_button(page).click()
    expect(pin_field(page)).to_be_hidden()
    expect(page.get_by_role("main").get_by_role("heading").first).to_be_visible()


def test_login_page_layout(ui_page: Page, ews_base: str, viewport: str):
    """No horizontal scroll at 375 and 320 px, header at most 64 px, touch targets of 44 px on a phone."""
    ui_page.goto(ews_base + "/login")
    expect(pin_field(ui_page)).to_be_visible()
    problems = layout_problems(ui_page, phone=viewport == "phone")
    assert not problems, "\n".join(problems)
