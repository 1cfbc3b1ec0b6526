"""Configuration pages, administration half (S4, F1): tariffs, site, network, database, files, history.

- ``/configuration/tariffs`` — the tariff history; add a tariff from a future date, edit or remove a
  future one (``?edit=new`` / ``?edit=YYYY-MM-DD``); tariffs in force or past are read-only (their costs
  are counted and never rewritten). Time-of-use windows are rows of the form (``Add a window`` and
  ``Remove`` re-render the form without saving, so it works before any script loads).
- ``/configuration/site`` — name, currency, time zone, default language, gas conversion factor.
- ``/configuration/network`` — where the server listens and the address a phone on the LAN opens.
- ``/configuration/database`` — where the data lives, its size on disk, the readings stored.
- ``/configuration/files`` — backup and restore, readings CSV export and import, the configuration as
  YAML (download and upload).
- ``/configuration/history`` — every version of the configuration; ``/configuration/history/{n}`` one
  version's document as YAML.

Forms post to ``/configuration/tariffs`` (save, or add/remove a window row), ``/configuration/tariffs/remove``,
``/configuration/site``, ``/configuration/files/config`` (a YAML upload), and — through the handlers of
``POST /api/v1/readings/import`` and ``POST /api/v1/restore`` with the same request —
``/configuration/files/import`` (field ``file``) and ``/configuration/files/restore`` (field ``archive``);
those two answer an htmx fragment (always 200: htmx swaps only 2xx) or, without scripts, the whole page.

Every save builds the whole new document (the one in force with one change) and calls
``domain.configuration.apply_document`` with the version the form was rendered with, as
``PUT /api/v1/site/config`` does: a 400 is shown next to the field its path names, a 409 asks to
reload, a success goes back to the page (303) with ``?saved=<version>`` ("Saved: version N" and what
changed). Guards: ``configure-site``; backup, restore and the readings import ``backup-restore``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import available_timezones

from babel import numbers as babel_numbers
from babel import units as babel_units
from ews_analytics import READINGS, table
from ews_contracts.roles import Permission, Role
from ews_contracts.site import WEEKDAYS, Site, Tariff
from ews_contracts.siteconfig import ConfigInvalid, parse_text, to_yaml
from ews_contracts.text import one_line
from litestar import Request, Router, get, post
from litestar.datastructures import State, UploadFile
from litestar.exceptions import HTTPException
from litestar.response import Template

from ..domain import backup as backup_api
from ..domain import readings as readings_api
from ..domain.configuration import apply_document, config_document, history
from ..domain.language import LANGUAGES, default_language, language_of
from ..errors import ApiError
from ..guards import current_role, requires
from ..i18n import N_, Formats
from ..sites import site_state
from ._page import LANGUAGE_NAMES, formats, may, redirect, render, translator

CONFIGURE = [requires(Permission.CONFIGURE_SITE)]
BACKUP = [requires(Permission.BACKUP_RESTORE)]
PAGE = {"include_in_schema": False, "tags": ["pages"]}

UPLOAD_LIMIT = 2 * 1024 * 1024  # a YAML configuration (the API's limit too)

# --- labels ------------------------------------------------------------------------------------------

ROLE_LABELS = {
    Role.ADMINISTRATOR: N_("Administrator"),
    Role.GREENUP: N_("Green'Up"),
    Role.INSTALLER: N_("Installer"),
    Role.USER: N_("User"),
    "site file": N_("site file"),
    "ews site import": N_("ews site import"),
    "restore": N_("restore"),
}
HOW_LABELS = {
    "site-file": N_("site file"),
    "import": N_("ews site import"),
    "api": N_("API or web page"),
    "device-enabled": N_("device On/Off"),
    "restore": N_("restore from a backup"),
}

# (field, label, unit): the base prices of a tariff and the prices of a time-of-use window
PRICES = (
    ("electricity_per_kwh", N_("Electricity"), "kWh"),
    ("water_per_m3", N_("Water"), "m³"),
    ("gas_per_m3", N_("Gas"), "m³"),
)
STANDING = (
    ("electricity_standing_per_day", N_("Electricity")),
    ("water_standing_per_day", N_("Water")),
    ("gas_standing_per_day", N_("Gas")),
)
START_HOURS = [f"{h:02d}:00" for h in range(24)]
END_HOURS = [f"{h:02d}:00" for h in range(25)]


def role_label(who: str, _: Callable[..., str]) -> str:
    label = ROLE_LABELS.get(who)
    return _(label) if label else who


def how_label(how: str, _: Callable[..., str]) -> str:
    label = HOW_LABELS.get(how)
    return _(label) if label else how


def unit_price(fmt: Formats, value: float | None) -> str:
    """A price per kWh or m³ in the site's currency and the locale's pattern, with every decimal it was
    given (up to 6): 0.2516 € stays 0.2516 €, where the currency's 2 digits would show 0.25 €."""
    if value is None:
        return "–"
    return babel_numbers.format_currency(
        round(value, 6), fmt.currency, locale=fmt.locale, decimal_quantization=False
    )


def size_text(fmt: Formats, size: int | None) -> str:
    """Bytes as kB/MB/GB in the locale (``babel.units``)."""
    if size is None:
        return "–"
    for unit, scale in (("gigabyte", 1e9), ("megabyte", 1e6), ("kilobyte", 1e3)):
        if size >= scale:
            return babel_units.format_unit(
                size / scale, f"digital-{unit}", length="short", format="#,##0.#", locale=fmt.locale
            )
    return babel_units.format_unit(size, "digital-byte", length="short", locale=fmt.locale)


def input_number(value: float | None) -> str:
    """A number as an <input> value (dot decimal, no exponent, no trailing zeros)."""
    if value is None:
        return ""
    text = f"{value:.10f}".rstrip("0").rstrip(".")
    return text or "0"


def without_password(url: str | None) -> str:
    """A URL with its password left out (``redis://:secret@host:6379/0`` → ``redis://host:6379/0``)."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = (f"{parts.username}@" if parts.username else "") + host
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        return re.sub(r"//[^@/]*@", "//", url)


# --- the shared save ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a save gave: the version stored, or the messages to show (by field key) and the status."""

    version: int | None = None
    errors: dict[str, str] = field(default_factory=dict)
    status: int = 200
    conflict: bool = False


def form_version(raw: Any) -> int | None:
    try:
        value = int(str(raw).strip())
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


def current_document(state: State) -> tuple[dict[str, Any], int]:
    """The document in force (without ``version``) and its version."""
    document = config_document(state)
    version = int(document.pop("version"))
    return document, version


async def save(
    request: Request[Any, Any, Any],
    document: dict[str, Any],
    expected: int | None,
    field_of: Callable[[str], str],
) -> Outcome:
    """Apply ``document`` (the whole new configuration) as ``expected`` + 1: the version, or the message
    for the field ``field_of(path)`` names (400), the conflict (409), or why it could not be stored."""
    _ = await translator(request)
    if expected is None:
        return Outcome(
            errors={"form": _("This form is incomplete (no version): reload the page.")}, status=400
        )
    language = await language_of(request)
    try:
        event = await apply_document(
            site_state(request), document, expected, current_role(request) or "unknown"
        )
    except ApiError as exc:
        if exc.status_code == 409 and exc.code == "version-conflict":  # (not read-only-at-hub: said as is)
            return Outcome(
                errors={
                    "form": _(
                        "The configuration was changed by someone else meanwhile (now version %(version)s): "
                        "reload the page, then apply your change again.",
                        version=(exc.extra or {}).get("version", "?"),
                    )
                },
                status=409,
                conflict=True,
            )
        where = field_of(str((exc.extra or {}).get("field") or "")) if exc.status_code == 400 else "form"
        return Outcome(errors={where: exc.translated(language)}, status=exc.status_code)
    return Outcome(version=event.version)


async def saved_notice(state: State, saved: int | None) -> dict[str, Any] | None:
    """The "Saved: version N" notice and its change lines, for the page a save redirected to."""
    if saved is None:
        return None
    live = state.live
    if live is not None and live.version == saved:
        return {"version": saved, "changes": list(live.event.changes)}
    with contextlib.suppress(HTTPException):
        for event in await history(state):
            if event.version == saved:
                return {"version": saved, "changes": list(event.changes)}
    return {"version": saved, "changes": []}


def saved_param(raw: str | None) -> int | None:
    return form_version(raw) if raw else None


def site_today(site: Site) -> date:
    return datetime.now(site.tz).date()


# --- tariffs -----------------------------------------------------------------------------------------


@dataclass
class WindowRow:
    """One time-of-use window as the form shows it (strings as typed)."""

    name: str = ""
    days: list[str] = field(default_factory=lambda: list(WEEKDAYS))
    start: str = ""
    end: str = ""
    prices: dict[str, str] = field(default_factory=lambda: {f: "" for f, _, _ in PRICES})

    @property
    def blank(self) -> bool:
        return not (
            self.name.strip() or self.start or self.end or any(v.strip() for v in self.prices.values())
        )


@dataclass
class TariffForm:
    """The tariff form's input (kept as typed when it is shown again with a message)."""

    original: str = ""  # the effective_from of the tariff edited; "" for a new one
    effective_from: str = ""
    prices: dict[str, str] = field(default_factory=lambda: {f: "" for f, _, _ in PRICES})
    standing: dict[str, str] = field(default_factory=lambda: {f: "" for f, _ in STANDING})
    windows: list[WindowRow] = field(default_factory=list)

    @classmethod
    def of(cls, tariff: Tariff, original: str = "", effective_from: date | None = None) -> TariffForm:
        return cls(
            original=original,
            effective_from=(effective_from or tariff.effective_from).isoformat(),
            prices={f: input_number(getattr(tariff, f)) for f, _, _ in PRICES},
            standing={f: input_number(getattr(tariff, f)) for f, _ in STANDING},
            windows=[
                WindowRow(
                    name=w.name,
                    days=list(w.days),
                    start=w.start,
                    end=w.end,
                    prices={f: input_number(getattr(w, f)) for f, _, _ in PRICES},
                )
                for w in tariff.time_of_use
            ],
        )

    @classmethod
    def parse(cls, form: Any) -> TariffForm:
        count = form_version(form.get("rows")) or 0
        windows = []
        for n in range(min(count, 50)):
            windows.append(
                WindowRow(
                    name=str(form.get(f"tou-{n}-name", "")),
                    days=[d for d in WEEKDAYS if d in form.getall(f"tou-{n}-days", [])],
                    start=str(form.get(f"tou-{n}-start", "")),
                    end=str(form.get(f"tou-{n}-end", "")),
                    prices={f: str(form.get(f"tou-{n}-{f}", "")) for f, _, _ in PRICES},
                )
            )
        return cls(
            original=str(form.get("original", "")),
            effective_from=str(form.get("effective_from", "")).strip(),
            prices={f: str(form.get(f, "")) for f, _, _ in PRICES},
            standing={f: str(form.get(f, "")) for f, _ in STANDING},
            windows=windows,
        )

    def keys(self) -> set[str]:
        """Every field key a message can be shown next to."""
        keys = {"form", "effective_from", "windows", *(f for f, _, _ in PRICES), *(f for f, _ in STANDING)}
        for n in range(len(self.windows)):
            keys |= {f"tou-{n}", f"tou-{n}-name", f"tou-{n}-days", f"tou-{n}-start", f"tou-{n}-end"}
            keys |= {f"tou-{n}-{f}" for f, _, _ in PRICES}
        return keys


def _number(
    raw: str, key: str, errors: dict[str, str], _: Callable[..., str], required: bool = False
) -> float | None:
    text = raw.strip().replace("\u00a0", "").replace(" ", "").replace(",", ".")
    if not text:
        if required:
            errors[key] = _("Enter a price (0 when there is none).")
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        errors[key] = _("Enter a number, 0 or more (for example 0.2516).")
        return None
    return value


def tariff_of(form: TariffForm, _: Callable[..., str]) -> tuple[dict[str, Any], list[int], dict[str, str]]:
    """The tariff document of the form, the form row of each window kept (blank rows are left out) and
    the messages of what could not be read."""
    errors: dict[str, str] = {}
    tariff: dict[str, Any] = {"effective_from": form.effective_from}
    try:
        date.fromisoformat(form.effective_from)
    except ValueError:
        errors["effective_from"] = _("Enter a date (YYYY-MM-DD).")
    for f, _label, _unit in PRICES:
        value = _number(form.prices.get(f, ""), f, errors, _, required=f == "electricity_per_kwh")
        if value is not None:
            tariff[f] = value
    for f, _label in STANDING:
        value = _number(form.standing.get(f, ""), f, errors, _)
        if value is not None:
            tariff[f] = value
    windows: list[dict[str, Any]] = []
    rows: list[int] = []
    for n, row in enumerate(form.windows):
        if row.blank:
            continue
        window: dict[str, Any] = {"days": [d for d in WEEKDAYS if d in row.days]}
        if row.name.strip():
            window["name"] = row.name.strip()
        if not window["days"]:
            errors[f"tou-{n}-days"] = _("Tick at least one day.")
        for key in ("start", "end"):
            value = getattr(row, key)
            if value not in (START_HOURS if key == "start" else END_HOURS):
                errors[f"tou-{n}-{key}"] = _("Choose an hour.")
            window[key] = value
        for f, _label, _unit in PRICES:
            value = _number(row.prices.get(f, ""), f"tou-{n}-{f}", errors, _)
            if value is not None:
                window[f] = value
        windows.append(window)
        rows.append(n)
    if windows:
        tariff["time_of_use"] = windows
    return tariff, rows, errors


_TARIFF_PATH = re.compile(r"^tariffs\[(\d+)\](?:\.(\w+)(?:\[(\d+)\](?:\.(\w+))?)?)?")


def tariff_field(path: str, index: int, rows: list[int], known: set[str]) -> str:
    """The form key of a field path of the tariff at ``index`` (``tariffs[2].time_of_use[1]`` → ``tou-1``
    when window 1 is row 1 of the form); ``form`` for anything else."""
    found = _TARIFF_PATH.match(path)
    if not found or int(found[1]) != index or not found[2]:
        return "form"
    attr, window, sub = found[2], found[3], found[4]
    key = attr
    if attr == "time_of_use":
        if window is None or int(window) >= len(rows):
            key = "windows"
        else:
            row = rows[int(window)]
            key = f"tou-{row}-{sub}" if sub else f"tou-{row}"
            if key not in known:
                key = f"tou-{row}"
    return key if key in known else "form"


def first_of_next_month(day: date) -> date:
    return (day.replace(day=1) + timedelta(days=32)).replace(day=1)


def default_new_date(site: Site, today: date) -> date:
    """First day of next month, or of the month after the last future tariff."""
    day = first_of_next_month(today)
    latest = site.tariffs[-1].effective_from
    if latest >= day:
        day = first_of_next_month(latest)
    return day


def tariff_rows(site: Site, today: date) -> list[dict[str, Any]]:
    """The tariffs, newest first, each with its status (future, in force, past)."""
    in_force = site.tariff_on(today).effective_from
    rows = []
    for tariff in site.tariffs:
        if tariff.effective_from > today:
            status = "future"
        elif tariff.effective_from == in_force:
            status = "in-force"
        else:
            status = "past"
        rows.append({"tariff": tariff, "status": status, "id": tariff.effective_from.isoformat()})
    return list(reversed(rows))


async def tariffs_page(
    request: Request[Any, Any, Any],
    *,
    form: TariffForm | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
    saved: int | None = None,
    notice: str | None = None,
    version: int | None = None,
    conflict: bool = False,
) -> Template:
    state = site_state(request)
    site: Site = state.site
    today = site_today(site)
    document_version = version if version is not None else state.live.version
    fmt = formats(request, await language_of(request))
    return await render(
        request,
        "configuration/admin_tariffs.html",
        status_code=status_code,
        tariffs=tariff_rows(site, today),
        today=today,
        tomorrow=today + timedelta(days=1),
        form=form,
        errors=errors or {},
        version=document_version,
        saved=await saved_notice(state, saved),
        notice=notice,
        prices=PRICES,
        standing=STANDING,
        media=[(f, label, unit, s) for (f, label, unit), (s, _l) in zip(PRICES, STANDING, strict=True)],
        conflict=conflict,
        weekdays=[(d, fmt.locale.days["format"]["abbreviated"][i]) for i, d in enumerate(WEEKDAYS)],
        start_hours=START_HOURS,
        end_hours=END_HOURS,
        price=lambda value: unit_price(fmt, value),
    )


@get("/configuration/tariffs", guards=CONFIGURE, operation_id="pageConfigTariffs", **PAGE)
async def tariffs_get(
    request: Request[Any, Any, Any], edit: str | None = None, saved: str | None = None
) -> Template:
    site: Site = site_state(request).site
    today = site_today(site)
    form = None
    notice = None
    if edit == "new":
        form = TariffForm.of(site.tariffs[-1], effective_from=default_new_date(site, today))
    elif edit:
        tariff = next((t for t in site.tariffs if t.effective_from.isoformat() == edit), None)
        if tariff is None:
            raise ApiError(404, "not-found", N_("no tariff from %(date)s"), date=edit)
        if tariff.effective_from <= today:
            notice = N_(
                "This tariff is in force or past: it is read-only, because the costs already counted with "
                "it are never rewritten. Add a tariff from a future date instead."
            )
        else:
            form = TariffForm.of(tariff, original=edit)
    return await tariffs_page(request, form=form, saved=saved_param(saved), notice=notice)


@post(
    "/configuration/tariffs", guards=CONFIGURE, operation_id="pageConfigTariffsSave", status_code=200, **PAGE
)
async def tariffs_post(request: Request[Any, Any, Any]) -> Any:
    raw = await request.form()
    form = TariffForm.parse(raw)
    expected = form_version(raw.get("version"))
    action = str(raw.get("action", "save"))
    if action == "add-window":
        form.windows.append(WindowRow())
        return await tariffs_page(request, form=form, version=expected)
    if action.startswith("remove-window-"):
        n = form_version(action.removeprefix("remove-window-"))
        if n is not None and n < len(form.windows):
            del form.windows[n]
        return await tariffs_page(request, form=form, version=expected)
    _ = await translator(request)
    tariff, rows, errors = tariff_of(form, _)
    if errors:
        return await tariffs_page(request, form=form, errors=errors, status_code=400, version=expected)
    document, _version = current_document(site_state(request))
    tariffs = [
        t
        for t in document.get("tariffs", [])
        if not (form.original and t.get("effective_from") == form.original)
    ]
    if any(t.get("effective_from") == tariff["effective_from"] for t in tariffs):
        errors["effective_from"] = _(
            "There is already a tariff from this date: edit that one, or choose another date."
        )
        return await tariffs_page(request, form=form, errors=errors, status_code=400, version=expected)
    tariffs.append(tariff)
    tariffs.sort(key=lambda t: str(t.get("effective_from")))
    index = tariffs.index(tariff)
    document["tariffs"] = tariffs
    known = form.keys()
    outcome = await save(request, document, expected, lambda path: tariff_field(path, index, rows, known))
    if outcome.version is None:
        return await tariffs_page(
            request,
            form=form,
            errors=outcome.errors,
            status_code=outcome.status,
            version=expected,
            conflict=outcome.conflict,
        )
    return redirect(f"/configuration/tariffs?saved={outcome.version}")


@post(
    "/configuration/tariffs/remove",
    guards=CONFIGURE,
    operation_id="pageConfigTariffsRemove",
    status_code=200,
    **PAGE,
)
async def tariffs_remove(request: Request[Any, Any, Any]) -> Any:
    raw = await request.form()
    expected = form_version(raw.get("version"))
    which = str(raw.get("effective_from", ""))
    document, _version = current_document(site_state(request))
    tariffs = document.get("tariffs", [])
    if not any(t.get("effective_from") == which for t in tariffs):
        raise ApiError(404, "not-found", N_("no tariff from %(date)s"), date=which or "?")
    document["tariffs"] = [t for t in tariffs if t.get("effective_from") != which]
    outcome = await save(request, document, expected, lambda path: "form")
    if outcome.version is None:
        return await tariffs_page(
            request, errors=outcome.errors, status_code=outcome.status, conflict=outcome.conflict
        )
    return redirect(f"/configuration/tariffs?saved={outcome.version}")


# --- site --------------------------------------------------------------------------------------------

SITE_FIELDS = ("name", "currency", "timezone", "language", "gas_wh_per_dm3")


@dataclass
class SiteForm:
    name: str = ""
    currency: str = ""
    timezone: str = ""
    language: str = ""
    gas_wh_per_dm3: str = ""


def timezones() -> list[str]:
    return sorted(
        z for z in available_timezones() if not z.startswith(("posix/", "right/")) and z != "localtime"
    )


_ZONES: list[str] = []


def zone_list() -> list[str]:
    if not _ZONES:
        _ZONES.extend(timezones())
    return _ZONES


def currencies(fmt: Formats) -> list[tuple[str, str]]:
    names = fmt.locale.currencies
    return sorted((code, names.get(code, code)) for code in babel_numbers.list_currencies())


async def site_page(
    request: Request[Any, Any, Any],
    *,
    form: SiteForm | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
    saved: int | None = None,
    version: int | None = None,
    conflict: bool = False,
) -> Template:
    state = site_state(request)
    site: Site = state.site

    if form is None:
        form = SiteForm(
            name=site.name,
            currency=site.currency,
            timezone=site.timezone,
            language=await default_language(state),
            gas_wh_per_dm3=input_number(site.gas_wh_per_dm3),
        )
    fmt = formats(request, await language_of(request))
    return await render(
        request,
        "configuration/admin_site.html",
        status_code=status_code,
        form=form,
        errors=errors or {},
        version=version if version is not None else state.live.version,
        saved=await saved_notice(state, saved),
        zones=zone_list(),
        currencies=currencies(fmt),
        language_names=LANGUAGE_NAMES,
        site_languages=LANGUAGES,
        conflict=conflict,
    )


@get("/configuration/site", guards=CONFIGURE, operation_id="pageConfigSite", **PAGE)
async def site_get(request: Request[Any, Any, Any], saved: str | None = None) -> Template:
    return await site_page(request, saved=saved_param(saved))


@post("/configuration/site", guards=CONFIGURE, operation_id="pageConfigSiteSave", status_code=200, **PAGE)
async def site_post(request: Request[Any, Any, Any]) -> Any:
    raw = await request.form()
    expected = form_version(raw.get("version"))
    form = SiteForm(**{f: str(raw.get(f, "")).strip() for f in SITE_FIELDS})
    form.currency = form.currency.upper()
    _ = await translator(request)
    errors: dict[str, str] = {}
    if not form.name:
        errors["name"] = _("Enter the site's name.")
    if form.currency not in babel_numbers.list_currencies():
        errors["currency"] = _("Enter an ISO 4217 currency code of three letters (EUR, CHF, GBP …).")
    if form.timezone not in zone_list():
        errors["timezone"] = _("Choose a time zone of the list.")
    if form.language not in LANGUAGES:
        errors["language"] = _("Choose a language of the list.")
    gas: float | None = None
    try:
        gas = float(form.gas_wh_per_dm3.replace(",", "."))
    except ValueError:
        gas = None
    if gas is None or not math.isfinite(gas) or gas <= 0:
        errors["gas_wh_per_dm3"] = _("Enter a number above 0 (for example 11.2).")
    if errors:
        return await site_page(request, form=form, errors=errors, status_code=400, version=expected)
    document, _version = current_document(site_state(request))
    document.update(
        name=form.name,
        currency=form.currency,
        timezone=form.timezone,
        language=form.language,
        gas_wh_per_dm3=gas,
    )
    outcome = await save(request, document, expected, lambda path: path if path in SITE_FIELDS else "form")
    if outcome.version is None:
        return await site_page(
            request,
            form=form,
            errors=outcome.errors,
            status_code=outcome.status,
            version=expected,
            conflict=outcome.conflict,
        )
    return redirect(f"/configuration/site?saved={outcome.version}")


# --- network -----------------------------------------------------------------------------------------

LOCAL_ONLY = {"127.0.0.1", "localhost", "::1"}
ALL_INTERFACES = {"0.0.0.0", "::", ""}


def lan_addresses() -> list[str]:
    """This machine's IPv4 addresses on its networks, found without sending anything: the host name's
    addresses, and the source address the system would use towards private networks (a UDP socket's
    connect only chooses a route; no packet leaves)."""
    found: set[str] = set()
    with contextlib.suppress(OSError, UnicodeError):
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET, socket.SOCK_DGRAM):
            found.add(str(info[4][0]))
    for probe in ("10.255.255.254", "192.168.255.254", "172.31.255.254", "100.64.0.1"):
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.connect((probe, 9))
            found.add(udp.getsockname()[0])
    keep = []
    for text in found:
        try:
            address = ipaddress.IPv4Address(text)
        except ValueError:
            continue
        if address.is_loopback or address.is_unspecified or address.is_link_local:
            continue
        keep.append(address)
    return [str(a) for a in sorted(keep)]


@get("/configuration/network", guards=CONFIGURE, operation_id="pageConfigNetwork", **PAGE)
async def network_get(request: Request[Any, Any, Any]) -> Template:
    settings = site_state(request).settings
    host = settings.http_host.strip()
    port = settings.http_port
    try:
        addresses = await asyncio.wait_for(asyncio.to_thread(lan_addresses), timeout=3.0)
    except TimeoutError:
        addresses = []
    if host in LOCAL_ONLY:
        reach = "local"
        urls: list[str] = []
    elif host in ALL_INTERFACES:
        reach = "all"
        urls = [f"http://{a}:{port}/" for a in addresses]
    else:
        reach = "one"
        shown = f"[{host}]" if ":" in host else host
        urls = [f"http://{shown}:{port}/"]
    return await render(
        request,
        "configuration/admin_network.html",
        host=host,
        port=port,
        reach=reach,
        urls=urls,
        addresses=addresses,
        lan_urls=[f"http://{a}:{port}/" for a in addresses],
        opened=str(request.base_url).rstrip("/") + "/",
        nats_url=without_password(settings.nats_url),
        redis_url=without_password(settings.redis_url),
    )


# --- database ----------------------------------------------------------------------------------------


def folder_size(path: Path) -> int | None:
    """Bytes of the files under ``path`` (None when it does not exist)."""
    if not path.exists():
        return None
    total = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


@dataclass
class ReadingsInfo:
    available: bool
    count: int = 0
    oldest: datetime | None = None
    newest: datetime | None = None
    reason: str = ""


async def readings_info(state: State, wait: float = 5.0) -> ReadingsInfo:
    """How many readings the site has stored, the oldest and the newest (one cheap query); not available
    (with the reason) when the database cannot answer — the page still renders."""
    from ..storage import require_store

    try:
        store = await require_store(state)
        rows = await asyncio.wait_for(
            store.query(
                "SELECT count(), toUnixTimestamp64Milli(min(ts)), toUnixTimestamp64Milli(max(ts)) "
                f"FROM {table(state.database, READINGS)} WHERE site = {{site:String}}",
                {"site": state.site.site},
            ),
            timeout=wait,
        )
    except TimeoutError:
        return ReadingsInfo(False, reason="timeout")
    except Exception as exc:  # unreachable, not migrated yet, any failure: the page says so
        return ReadingsInfo(False, reason=one_line(exc, limit=200))
    count, oldest, newest = rows[0] if rows else (0, 0, 0)
    if not count:
        return ReadingsInfo(True)
    return ReadingsInfo(
        True,
        count=int(count),
        oldest=datetime.fromtimestamp(int(oldest) / 1000, UTC),
        newest=datetime.fromtimestamp(int(newest) / 1000, UTC),
    )


@get("/configuration/database", guards=CONFIGURE, operation_id="pageConfigDatabase", **PAGE)
async def database_get(request: Request[Any, Any, Any]) -> Template:
    state = site_state(request)
    settings = state.settings
    data_dir = settings.data_dir.resolve()
    dsn = settings.clickhouse_dsn
    chdb_path = dsn.removeprefix("chdb://") if settings.uses_chdb else ""
    folders = [("clickhouse", N_("ClickHouse (readings and consumption)")), ("nats", N_("NATS JetStream (events)")),
               ("redis", N_("Redis (live state, sessions)"))]  # fmt: skip

    def sizes() -> tuple[list[tuple[str, str, int | None]], int | None]:
        found = [(name, label, folder_size(data_dir / name)) for name, label in folders]
        if chdb_path and Path(chdb_path).resolve() != (data_dir / "clickhouse"):
            found[0] = ("clickhouse", folders[0][1], folder_size(Path(chdb_path)))
        return found, folder_size(data_dir)

    try:
        sized, total = await asyncio.wait_for(asyncio.to_thread(sizes), timeout=10.0)
    except TimeoutError:
        sized, total = [(name, label, None) for name, label in folders], None
    info = await readings_info(state)
    fmt = formats(request, await language_of(request))
    return await render(
        request,
        "configuration/admin_database.html",
        data_dir=str(data_dir),
        chdb_path=chdb_path,
        clickhouse_url="" if chdb_path else without_password(dsn),
        database=state.database,
        folders=[(name, label, size_text(fmt, size)) for name, label, size in sized],
        total=size_text(fmt, total),
        readings=info,
    )


# --- files -------------------------------------------------------------------------------------------


def is_htmx(request: Request[Any, Any, Any]) -> bool:
    return request.headers.get("hx-request") == "true"


async def files_page(
    request: Request[Any, Any, Any],
    *,
    status_code: int = 200,
    errors: dict[str, str] | None = None,
    saved: int | None = None,
    report: dict[str, Any] | None = None,
    restored: dict[str, Any] | None = None,
) -> Template:
    state = site_state(request)
    site: Site = state.site
    today = site_today(site)
    return await render(
        request,
        "configuration/admin_files.html",
        status_code=status_code,
        errors=errors or {},
        saved=await saved_notice(state, saved),
        version=state.live.version,
        devices=[(d.id, d.name) for d in site.devices],
        export_from=today.replace(day=1).isoformat(),
        export_to=today.isoformat(),
        backup_allowed=may(request, Permission.BACKUP_RESTORE),
        report=report,
        restored=restored,
    )


@get("/configuration/files", guards=CONFIGURE, operation_id="pageConfigFiles", **PAGE)
async def files_get(request: Request[Any, Any, Any], saved: str | None = None) -> Template:
    return await files_page(request, saved=saved_param(saved))


async def uploaded(request: Request[Any, Any, Any], name: str) -> tuple[bytes | None, str]:
    """The bytes and file name of the form's file field ``name`` (None when the form has none)."""
    form = await request.form()
    value = form.get(name)
    if isinstance(value, UploadFile):
        data = await value.read()
        await value.seek(0)  # the API's core reads the same upload again
        return (data if data or value.filename else None), value.filename or ""
    if isinstance(value, str) and value:
        return value.encode(), ""
    return None, ""


@post(
    "/configuration/files/config",
    guards=CONFIGURE,
    operation_id="pageConfigUpload",
    status_code=200,
    request_max_body_size=UPLOAD_LIMIT + 64 * 1024,
    **PAGE,
)
async def config_upload(request: Request[Any, Any, Any]) -> Any:
    """A YAML (or JSON) site document uploaded from the Files page, applied as the next version."""
    _ = await translator(request)
    form = await request.form()
    expected = form_version(form.get("version"))
    data, _name = await uploaded(request, "config")
    if not data or not data.strip():
        return await files_page(
            request, status_code=400, errors={"config": _("Choose a YAML configuration file to upload.")}
        )
    if len(data) > UPLOAD_LIMIT:
        return await files_page(
            request, status_code=413, errors={"config": _("The file is too large (at most 2 MB).")}
        )
    language = await language_of(request)
    try:
        document = parse_text(data)
    except ConfigInvalid as exc:
        from ..domain.configuration import invalid

        return await files_page(
            request, status_code=400, errors={"config": invalid(exc).translated(language)}
        )
    if isinstance(document, dict) and expected is None:
        expected = form_version(document.get("version"))
    outcome = await save(request, document, expected, lambda path: "config")
    if outcome.version is None:
        errors = {"config": next(iter(outcome.errors.values()))}
        return await files_page(request, status_code=outcome.status, errors=errors)
    return redirect(f"/configuration/files?saved={outcome.version}")


REPORT_ROWS = 500  # lines of a report shown in the page (all of them are in the API's answer)


def report_view(report: Any) -> dict[str, Any]:
    """The import report for the page: the counts, and the lines (only those not accepted when the file is
    long, at most ``REPORT_ROWS``)."""
    data = report.model_dump(mode="json") if hasattr(report, "model_dump") else dict(report)
    lines = list(data.get("report") or [])
    only_problems = len(lines) > 50
    if only_problems:
        lines = [item for item in lines if item.get("status") != "accepted"]
    data["only_problems"] = only_problems
    data["shown"] = lines[:REPORT_ROWS]
    data["hidden"] = max(0, len(lines) - REPORT_ROWS)
    return data


@post(
    "/configuration/files/import",
    guards=BACKUP,
    operation_id="pageReadingsImport",
    status_code=200,
    request_max_body_size=readings_api.IMPORT_MAX_BYTES + 64 * 1024,
    **PAGE,
)
async def readings_import(request: Request[Any, Any, Any]) -> Any:
    """The readings CSV upload of the Files page: the same import as ``POST /api/v1/readings/import``
    (its handler, with this request: the form's field ``file``), its report as a table."""
    language = await language_of(request)
    _ = await translator(request)
    status = 200
    report: dict[str, Any]
    content_type, _options = request.content_type
    if content_type != "multipart/form-data":
        report = {"error": _("Choose a CSV file to import."), "status": 400}
    else:
        data, _name = await uploaded(request, "file")
        if data is None:
            report = {"error": _("Choose a CSV file to import."), "status": 400}
        else:
            try:
                result = await readings_api.import_readings.fn(request)
                report = report_view(result)
            except ApiError as exc:
                report = {"error": exc.translated(language), "status": exc.status_code}
            except HTTPException as exc:
                report = {"error": exc.detail, "status": exc.status_code}
    if "error" in report:
        status = int(report["status"])
    if is_htmx(request):  # htmx swaps only 2xx answers: the message is the fragment
        return await render(request, "configuration/_admin_import_report.html", report=report)
    return await files_page(request, status_code=status, report=report)


@post(
    "/configuration/files/restore",
    guards=BACKUP,
    operation_id="pageRestore",
    status_code=200,
    request_max_body_size=backup_api.MAX_ARCHIVE_BYTES,
    **PAGE,
)
async def restore_upload(request: Request[Any, Any, Any]) -> Any:
    """A backup archive uploaded from the Files page (field ``archive``), restored by the handler of
    ``POST /api/v1/restore`` with this request (checked completely first, then applied)."""
    language = await language_of(request)
    _ = await translator(request)
    result: dict[str, Any]
    content_type, _options = request.content_type
    form = await request.form() if content_type == "multipart/form-data" else None
    upload = form.get("archive") if form is not None else None
    if not isinstance(upload, UploadFile) or not upload.filename:
        result = {"error": _("Choose a backup archive (.tar.gz) to restore."), "status": 400}
    elif not form.get("confirm"):
        result = {
            "error": _("Tick the box to confirm: a restore replaces the configuration and the data."),
            "status": 400,
        }
    else:
        try:
            answer = await backup_api.post_restore.fn(request)
            result = answer.model_dump(mode="json")
        except ApiError as exc:
            result = {"error": exc.translated(language), "status": exc.status_code}
        except HTTPException as exc:
            result = {"error": exc.detail, "status": exc.status_code}
    status = int(result.get("status", 200)) if "error" in result else 200
    if is_htmx(request):  # htmx swaps only 2xx answers: the message is the fragment
        return await render(request, "configuration/_admin_restore_result.html", restored=result)
    return await files_page(request, status_code=status, restored=result)


@get(
    "/configuration/files/restore/progress",
    guards=BACKUP,
    operation_id="pageRestoreProgress",
    **PAGE,
)
async def restore_progress(request: Request[Any, Any, Any], restore: str = "") -> Template:
    """The aggregator's rebuild after the restore ``restore``, as a fragment that asks again while it is
    not done."""
    try:
        view = await backup_api.restore_progress.fn(request)
        progress: dict[str, Any] = view.model_dump(mode="json")
    except HTTPException:
        progress = {"aggregator": "unknown"}
    return await render(
        request, "configuration/_admin_restore_progress.html", progress=progress, restore_id=restore
    )


# --- history -----------------------------------------------------------------------------------------


@get("/configuration/history", guards=CONFIGURE, operation_id="pageConfigHistory", **PAGE)
async def history_get(request: Request[Any, Any, Any]) -> Template:
    _ = await translator(request)
    versions = [
        {
            "version": e.version,
            "occurred_at": e.occurred_at,
            "who": role_label(e.changed_by, _),
            "how": how_label(e.how, _),
            "changes": e.changes,
        }
        for e in await history(site_state(request))
    ]
    return await render(request, "configuration/admin_history.html", versions=versions)


@get("/configuration/history/{version:str}", guards=CONFIGURE, operation_id="pageConfigVersion", **PAGE)
async def version_get(request: Request[Any, Any, Any], version: str) -> Template:
    _ = await translator(request)
    events = await history(site_state(request)) if version.isdigit() else []
    for event in events:
        if str(event.version) == version.lstrip("0"):
            return await render(
                request,
                "configuration/admin_version.html",
                event=event,
                who=role_label(event.changed_by, _),
                how=how_label(event.how, _),
                text=to_yaml(event.document),
                current=site_state(request).live.version,
            )
    raise ApiError(404, "not-found", N_("no configuration version %(version)s"), version=version)


router = Router(
    path="/",
    route_handlers=[
        tariffs_get,
        tariffs_post,
        tariffs_remove,
        site_get,
        site_post,
        network_get,
        database_get,
        files_get,
        config_upload,
        readings_import,
        restore_upload,
        restore_progress,
        history_get,
        version_get,
    ],
)
