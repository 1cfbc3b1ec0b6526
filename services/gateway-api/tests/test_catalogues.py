"""The translation catalogues (L1): the extracted strings are current, every language is complete
(fr-BE and nl-BE through their parent), placeholders and plural forms survive translation, and a
page renders in every language with its ``lang``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.checkers import python_format
from babel.messages.pofile import read_po
from ews_gateway_api.domain.language import LANGUAGES
from ews_gateway_api.i18n import LOCALE_DIR, translations

ROOT = Path(__file__).resolve().parents[1]
REGIONAL = {"fr-BE": "fr", "nl-BE": "nl"}


def catalogue(language: str):
    path = LOCALE_DIR / language.replace("-", "_") / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as f:
        return read_po(f, locale=language.replace("-", "_"))


def filled(string: str | tuple[str, ...]) -> bool:
    return all(string) if isinstance(string, tuple) else bool(string)


def template():
    with (LOCALE_DIR / "messages.pot").open("rb") as f:
        return read_po(f)


def test_messages_pot_is_current(tmp_path: Path) -> None:
    """Every string of the Python code and templates is in messages.pot (run `make messages`)."""
    out = tmp_path / "messages.pot"
    subprocess.run(
        [sys.executable, "-m", "babel.messages.frontend", "extract", "-F", "babel.cfg", "-k", "N_", "-k", "_",
         "-k", "pgettext:1c,2", "-k", "NP_:1c,2", "--no-location", "--sort-output", "--omit-header", "-o", str(out), ".",
         "../../libs/analytics/src"],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    with out.open("rb") as f:
        fresh = {(m.context, m.id) for m in read_po(f) if m.id}
    committed = {(m.context, m.id) for m in template() if m.id}
    assert fresh - committed == set(), "strings missing from messages.pot: run `make messages`"
    assert committed - fresh == set(), "strings no longer used are still in messages.pot: run `make messages`"


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_language_translates_every_message(language: str) -> None:
    ids = [(m.context, m.id) for m in template() if m.id]
    own = {(m.context, m.id): m for m in catalogue(language) if m.id}
    parent = (
        {(m.context, m.id): m for m in catalogue(REGIONAL[language]) if m.id} if language in REGIONAL else {}
    )
    missing = []
    for msgid in ids:
        message = own.get(msgid)
        if message is None or not (
            all(message.string) if isinstance(message.string, tuple) else message.string
        ):
            fallback = parent.get(msgid)
            if fallback is None or not fallback.string:
                missing.append(msgid[1] if isinstance(msgid[1], str) else msgid[1][0])
    assert not missing, f"{language}: {len(missing)} untranslated, e.g. {missing[:5]}"


@pytest.mark.parametrize("language", LANGUAGES)
def test_placeholders_and_plural_forms_survive(language: str) -> None:
    cat = catalogue(language)
    for message in cat:
        if not message.id:
            continue
        assert not message.fuzzy, f"{language}: fuzzy entry {message.id!r} (check and clear the flag)"
        if not message.string:
            continue
        python_format(cat, message)  # raises TranslationError when a %(name)s is lost or changed
        if message.pluralizable:
            assert len(message.string) == cat.num_plurals, (language, message.id)


def test_regional_catalogues_differ_from_their_parent_only_where_usage_does() -> None:
    for regional, parent in REGIONAL.items():
        base = {(m.context, m.id): m.string for m in catalogue(parent) if m.id}
        same = [
            m.id
            for m in catalogue(regional)
            if m.id and filled(m.string) and m.string == base.get((m.context, m.id))
        ]
        assert not same, f"{regional} repeats {parent} instead of falling back: {same[:5]}"


def test_translations_follow_the_language_chain() -> None:
    assert translations("en").gettext("Total – Electricity") == "Total – Electricity"
    french = translations("fr").gettext("Total – Electricity")
    assert french == "Totale – Électricité"
    assert translations("fr-BE").gettext("Total – Electricity") == french  # fr-BE does not differ here
    own = {m.id: m.string for m in catalogue("nl-BE") if m.id and m.string}
    assert translations("nl-BE").gettext("Day") == translations("nl").gettext("Day") != "Day"  # falls back
    assert (
        "Total – Global" in own and translations("nl-BE").gettext("Total – Global") == own["Total – Global"]
    )
