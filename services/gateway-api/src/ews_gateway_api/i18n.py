"""Translations and formats: the one place every string a person reads goes through.

- ``translations(language)``: gettext catalogues (``locale/<lang>/LC_MESSAGES/messages.mo``, compiled
  from the committed ``.po`` files) loaded through Babel; a language without a catalogue falls back
  to its parent (``fr-BE`` → ``fr``) and then to the English message ids.
- ``Formats``: dates, times, numbers, units and money for the chosen language, the site's currency
  and time zone, through ``babel.dates`` / ``babel.numbers`` (never formatted by hand).
- ``N_`` marks a string for extraction where it is defined (a table of labels) and translated later.

Templates get ``_``, ``gettext``, ``ngettext`` and ``pgettext`` in their context (``jinja2.ext.i18n``
resolves ``{% trans %}`` through them), so one page render uses one language.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from functools import lru_cache
from pathlib import Path

from babel import Locale, UnknownLocaleError
from babel import dates as babel_dates
from babel import numbers as babel_numbers
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DOMAIN = "messages"


def N_(message: str) -> str:  # noqa: N802 — the gettext convention for "mark, translate later"
    return message


def babel_locale(language: str) -> Locale:
    """The Babel locale of a UI language tag (``fr-BE`` → ``fr_BE``); English when unknown."""
    try:
        return Locale.parse(language.replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        return Locale.parse("en")


def _catalogue(code: str) -> Translations | None:
    """The committed ``locale/<code>/LC_MESSAGES/messages.po``, compiled in memory (no build step, and
    no .mo file to fall out of date); None when there is none."""
    path = LOCALE_DIR / code / "LC_MESSAGES" / f"{DOMAIN}.po"
    if not path.is_file():
        return None
    with path.open("rb") as source:
        catalog = read_po(source, locale=code, domain=DOMAIN)
    # An untranslated plural entry would be compiled as English (write_mo fills empty forms with the
    # msgid): drop it, so fr-BE falls back to fr for it like for any message it leaves empty.
    for message in list(catalog):
        if message.id and isinstance(message.string, tuple) and not any(message.string):
            catalog.delete(message.id, message.context)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(fp=compiled, domain=DOMAIN)


@lru_cache(maxsize=32)
def translations(language: str) -> NullTranslations:
    """The catalogue of ``language`` with its parent language as fallback (``nl-BE`` → ``nl``), then
    the English message ids."""
    chain = [language.replace("-", "_")]
    if "-" in language:
        chain.append(language.split("-")[0])
    result: NullTranslations | None = None
    for code in chain:
        found = _catalogue(code)
        if found is None:
            continue
        if result is None:
            result = found
        else:
            result.add_fallback(found)
    return result or NullTranslations()


def gettext_callables(language: str) -> dict[str, object]:
    """What a template context needs for ``_()`` and ``{% trans %}`` in ``language``.

    New-style gettext (as ``jinja2.ext.i18n`` with ``newstyle_gettext``): variables are keyword
    arguments, ``_("%(n)s ago", n=3)``, and ``ngettext`` always has ``num``."""
    t = translations(language)

    def gettext(message: str, **variables: object) -> str:
        text = t.gettext(message)
        return text % variables if variables else text

    def ngettext(singular: str, plural: str, num: int, **variables: object) -> str:
        return t.ngettext(singular, plural, num) % {"num": num, **variables}

    def pgettext(context: str, message: str, **variables: object) -> str:
        text = t.pgettext(context, message)
        return text % variables if variables else text

    return {"_": gettext, "gettext": gettext, "ngettext": ngettext, "pgettext": pgettext}


# Units: the canonical unit and the larger ones a value is shown in (Wh → kWh → MWh, dm³ → m³).
_SCALES: dict[str, tuple[tuple[float, str], ...]] = {
    "Wh": ((1e6, "MWh"), (1e3, "kWh"), (1.0, "Wh")),
    "varh": ((1e6, "Mvarh"), (1e3, "kvarh"), (1.0, "varh")),
    "VAh": ((1e6, "MVAh"), (1e3, "kVAh"), (1.0, "VAh")),
    "W": ((1e6, "MW"), (1e3, "kW"), (1.0, "W")),
    "var": ((1e6, "Mvar"), (1e3, "kvar"), (1.0, "var")),
    "VA": ((1e6, "MVA"), (1e3, "kVA"), (1.0, "VA")),
    "dm³": ((1e3, "m³"), (1.0, "dm³")),
}


def scale_for(unit: str, magnitude: float) -> tuple[float, str]:
    """(divisor, unit) that shows ``magnitude`` (in ``unit``) with at most three integer digits
    before moving up: 12 500 Wh → kWh, 950 Wh → Wh."""
    for divisor, name in _SCALES.get(unit, ((1.0, unit),)):
        if abs(magnitude) >= divisor:
            return divisor, name
    scales = _SCALES.get(unit)
    return scales[-1] if scales else (1.0, unit)


@dataclass(frozen=True)
class Formats:
    """Numbers, units, money, dates and times for one language, currency and time zone."""

    language: str
    currency: str
    tz: tzinfo

    @property
    def locale(self) -> Locale:
        return babel_locale(self.language)

    def number(self, value: float | None, digits: int = 2, min_digits: int = 0) -> str:
        if value is None:
            return "–"
        pattern = "#,##0" + ("." + "0" * min_digits + "#" * (digits - min_digits) if digits else "")
        return babel_numbers.format_decimal(value, format=pattern, locale=self.locale)

    def percent(self, fraction: float) -> str:
        return babel_numbers.format_percent(fraction, format="#,##0.#%", locale=self.locale)

    def money(self, value: float | None) -> str:
        if value is None:
            return "–"
        return babel_numbers.format_currency(value, self.currency, locale=self.locale)

    def quantity(self, value: float | None, unit: str, digits: int = 3) -> str:
        """A value with its unit, scaled to a readable multiple (Wh → kWh → MWh, dm³ → m³).

        ``digits`` is the most decimals shown after scaling (instruments give Wh or dm³: a value in
        kWh keeps three decimals, so no recorded Wh is hidden)."""
        if value is None:
            return "–"
        divisor, shown = scale_for(unit, value)
        decimals = 0 if divisor == 1.0 and unit in _SCALES else min(digits, len(str(int(divisor))) - 1)
        if unit not in _SCALES:
            decimals = digits
        text = self.number(value / divisor, decimals)
        return f"{text} {shown}".strip()

    def date(self, value: date | datetime, form: str = "medium") -> str:
        if isinstance(value, datetime):
            value = value.astimezone(self.tz)
        return babel_dates.format_date(value, format=form, locale=self.locale)

    def time(self, value: datetime, form: str = "short") -> str:
        return babel_dates.format_time(value.astimezone(self.tz), format=form, locale=self.locale)

    def datetime(self, value: datetime, form: str = "short") -> str:
        return babel_dates.format_datetime(value.astimezone(self.tz), format=form, locale=self.locale)

    def skeleton(self, value: date | datetime, skeleton: str) -> str:
        """A date by CLDR skeleton (``yMMMM`` → "March 2026", ``MMMd`` …) in the locale's order."""
        return babel_dates.format_skeleton(skeleton, value, locale=self.locale)

    def age(self, seconds: float) -> str:
        """How old a value is, in words of the locale ("3 minutes")."""
        return babel_dates.format_timedelta(seconds, threshold=1.0, locale=self.locale)
