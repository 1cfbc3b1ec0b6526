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
    CONFIGURATION = "configuration"  # Configuration (S4, F1)


PAGES: dict[Role, tuple[Page, ...]] = {
    Role.ADMINISTRATOR: (Page.INSTALLATION, Page.CONSUMPTION, Page.CONFIGURATION),
    Role.GREENUP: (Page.INSTALLATION, Page.CONSUMPTION, Page.GREENUP),
    Role.INSTALLER: (Page.INSTALLATION, Page.CONSUMPTION, Page.CONFIGURATION),
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


class Permission(StrEnum):
    VIEW_CONSUMPTION = "view-consumption"
    VIEW_INSTALLATION = "view-installation"
    GREENUP_DETAILS = "greenup-details"
    GREENUP_MANAGEMENT = "greenup-management"
    COMMAND_DEVICES = "command-devices"
    CONFIGURE_SITE = "configure-site"
    MANAGE_CODES = "manage-codes"
    MANAGE_TOKENS = "manage-tokens"  # machine tokens of the JSON API (ews_contracts.tokens)
    BACKUP_RESTORE = "backup-restore"


_ALL = frozenset(Permission)
PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMINISTRATOR: _ALL - {Permission.GREENUP_DETAILS, Permission.GREENUP_MANAGEMENT},
    Role.INSTALLER: _ALL
    - {
        Permission.GREENUP_DETAILS,
        Permission.GREENUP_MANAGEMENT,
        Permission.MANAGE_CODES,
        Permission.MANAGE_TOKENS,
    },
    Role.GREENUP: frozenset(
        {
            Permission.VIEW_CONSUMPTION,
            Permission.VIEW_INSTALLATION,
            Permission.GREENUP_DETAILS,
            Permission.GREENUP_MANAGEMENT,
            Permission.COMMAND_DEVICES,
        }
    ),
    Role.USER: frozenset({Permission.VIEW_CONSUMPTION}),
}


def allowed(role: str | None, permission: Permission) -> bool:
    try:
        return role is not None and permission in PERMISSIONS[Role(role)]
    except ValueError:
        return False
