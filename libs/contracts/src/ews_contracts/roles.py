"""The four predefined roles (requirement A2): their pages and default codes."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    ADMINISTRATOR = "administrator"
    GREENUP = "greenUp"
    INSTALLER = "installer"
    USER = "user"


class Page(StrEnum):
    INSTALLATION = "installation"  # My installation
    CONSUMPTION = "consumption"  # Consumptions
    GREENUP = "greenup"  # Green'Up


PAGES: dict[Role, tuple[Page, ...]] = {
    Role.ADMINISTRATOR: (Page.INSTALLATION, Page.CONSUMPTION),
    Role.GREENUP: (Page.INSTALLATION, Page.CONSUMPTION, Page.GREENUP),
    Role.INSTALLER: (Page.INSTALLATION, Page.CONSUMPTION),
    Role.USER: (Page.CONSUMPTION,),
}

# (PIN, PUK) on first start; PUK shown as 5+4+5 digits.
DEFAULT_CODES: dict[Role, tuple[str, str]] = {
    Role.ADMINISTRATOR: ("99999", "00000999900000"),
    Role.GREENUP: ("88888", "00000888800000"),
    Role.INSTALLER: ("55555", "00000555500000"),
    Role.USER: ("11111", "00000111100000"),
}


def format_puk(puk: str) -> str:
    """'00000999900000' -> '00000 9999 00000'."""
    digits = puk.replace(" ", "")
    return f"{digits[:5]} {digits[5:9]} {digits[9:]}"


def normalize_puk(puk: str) -> str:
    """Accept the PUK with or without its spaces."""
    return "".join(puk.split())
