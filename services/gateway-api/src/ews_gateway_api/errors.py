"""Errors a person reads: a stable ``code`` for programs and a ``detail`` in the reader's language.

``ApiError(status, code, message, **params)``: ``message`` is an English catalogue msgid with
``%(name)s`` placeholders (marked with ``N_`` where it is written, so ``make messages`` extracts it);
it is translated when answered — into the session's language (or the browser's choice), else the
request's ``Accept-Language``, else the site default — then filled with ``params`` (identifiers such as
a device id stay as they are). Any other HTTP error still gets a ``code`` from its status.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from babel import UnknownLocaleError, negotiate_locale
from litestar import Request
from litestar.exceptions import HTTPException

from .i18n import N_, translations

CODES_BY_STATUS = {
    400: "bad-request",
    401: "login-required",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "too-large",
    415: "unsupported-media-type",
    429: "too-many-requests",
    500: "internal-error",
    503: "unavailable",
}


class ApiError(HTTPException):
    def __init__(
        self, status_code: int, code: str, message: str, headers: dict[str, str] | None = None, **params: Any
    ) -> None:
        self.code = code
        self.message = message
        self.params = params
        super().__init__(
            status_code=status_code, detail=message % params if params else message, headers=headers
        )

    def translated(self, language: str) -> str:
        text = translations(language).gettext(self.message)
        try:
            return text % self.params if self.params else text
        except (KeyError, ValueError, TypeError):  # a catalogue that lost a placeholder: English, never a 500
            return self.detail


def error_code(exc: Exception) -> str:
    if isinstance(exc, ApiError):
        return exc.code
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    return CODES_BY_STATUS.get(status, f"http-{status}")


def _accepted(request: Request[Any, Any, Any]) -> str | None:
    from .domain.language import LANGUAGES  # the guards import this module; the domain imports the guards

    header = request.headers.get("accept-language")
    if not header:
        return None
    wanted = []
    for part in header.split(","):
        tag, _, q = part.strip().partition(";q=")
        try:
            weight = float(q) if q else 1.0
        except ValueError:
            weight = 0.0
        if tag and tag != "*":
            wanted.append((weight, tag.strip()))
    available = [code.replace("-", "_") for code in LANGUAGES]
    for _, tag in sorted(wanted, key=lambda w: -w[0]):
        try:
            found = negotiate_locale([tag.replace("-", "_")], available, sep="_")
        except (UnknownLocaleError, ValueError):
            found = None
        if found:
            return found.replace("_", "-")
    return None


def reader_language(request: Request[Any, Any, Any]) -> str:
    """The language an error is answered in (synchronous: exception handlers cannot await Redis)."""
    from .domain.language import LANGUAGES, chosen_language

    chosen = chosen_language(request)
    if chosen:
        return chosen
    accepted = _accepted(request)
    if accepted:
        return accepted
    from .sites import optional_site_state

    one = optional_site_state(request)  # None at a hub with several sites and none chosen: no site's default
    site_language = one.site.language if one is not None else "en"
    return site_language if site_language in LANGUAGES else "en"


# Litestar's own errors (an unknown path, a wrong method …) carry the HTTP reason phrase: said in words
GENERIC = {
    404: N_("there is nothing at this address"),
    405: N_("this method is not allowed here"),
    413: N_("the request is too large"),
    415: N_("this content type is not accepted here"),
}


def detail_for(request: Request[Any, Any, Any], exc: Exception) -> str:
    language = reader_language(request)
    if isinstance(exc, ApiError):
        return exc.translated(language)
    if not isinstance(exc, HTTPException):
        return ""
    generic = GENERIC.get(exc.status_code)
    if generic is not None and exc.detail in (HTTPStatus(exc.status_code).phrase, ""):
        return translations(language).gettext(generic)
    return exc.detail


def unknown(code: str, message: str, value: object, choices: Any = (), status: int = 400) -> ApiError:
    """``unknown … 'x': use a, b, c`` — ``message`` a msgid with ``%(value)s`` (and ``%(choices)s``)."""
    listed = choices if isinstance(choices, str) else ", ".join(str(c) for c in choices)
    return ApiError(status, code, message, value=repr(value), choices=listed)
