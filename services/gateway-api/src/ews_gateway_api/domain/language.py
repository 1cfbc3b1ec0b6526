"""UI language (requirements L1, L2): per browser, without changing the site's default; the default is set
by a role with ``configure-site``.

- ``GET /api/v1/language`` (public, the login page uses it): this browser's language, the default, the 13.
- ``PUT /api/v1/language`` (public): choose this browser's language — kept in the ``ews_lang`` cookie
  (so the login page and the next login follow it) and, when logged in, in the session.
- ``PUT /api/v1/site/language`` (``configure-site``): the site default, the configuration's ``language``
  (a new version of the configuration, as the Configuration page's Site form makes).

A session's language is the one chosen on this browser, else the site default (so a change of the
default reaches every session that did not choose).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from ews_contracts.roles import Permission
from litestar import Request, Response, Router, get, put
from litestar.datastructures import Cookie, State
from pydantic import BaseModel, Field

from ..guards import SESSION_ROLE, current_role, public, requires
from ..i18n import N_
from ..openapi import error
from ..sessions import browser_cookie

# L1: the 13 UI languages (BCP 47 tags)
Language = Literal["zh", "de", "en", "es", "fr", "fr-BE", "el", "it", "nl-BE", "nl", "pl", "pt", "ru"]
LANGUAGES: tuple[str, ...] = get_args(Language)
LANGUAGE_COOKIE = "ews_lang"
LANGUAGE_COOKIE_MAX_AGE = 400 * 86_400
SESSION_LANGUAGE = "language"


def language_enum() -> dict[str, Any]:
    """``json_schema_extra`` of a request's language: the OpenAPI document lists the 13, while the handler
    still reads any string, so that another one gets the 400 ``unknown-language`` naming them."""
    return {"enum": list(LANGUAGES)}


class LanguageBody(BaseModel):
    language: str = Field(
        examples=["fr"],
        description="One of the 13 UI languages (BCP 47 tag).",
        json_schema_extra=language_enum(),
    )


class LanguageInfo(BaseModel):
    language: Language = Field(description="This browser's language (its choice, else the site default).")
    default: Language = Field(description="The site's default language.")
    languages: list[Language] = Field(description="Languages the UI offers.")


def check_language(value: str) -> str:
    if value not in LANGUAGES:
        from ..errors import ApiError  # errors reads this module's language choice

        raise ApiError(
            400,
            "unknown-language",
            N_("unknown language %(language)s: use one of %(languages)s"),
            language=repr(value),
            languages=", ".join(LANGUAGES),
        )
    return value


async def default_language(state: Any) -> str:
    """The site default (``state``: a request, or a site's ``sites.SiteState``): the configuration's
    ``language`` (changed from the Configuration pages or ``PUT /api/v1/site/language``); English when it
    names no language of the product."""
    from ..sites import optional_site_state

    one = optional_site_state(state) if isinstance(state, Request) else state
    value = one.site.language if one is not None else "en"  # a hub with several sites, none chosen: English
    return value if value in LANGUAGES else "en"


def chosen_language(request: Request[Any, Any, Any]) -> str | None:
    """The language chosen on this browser (session, else cookie), if any."""
    session = request.scope.get("session") or {}
    chosen = session.get(SESSION_LANGUAGE) or request.cookies.get(LANGUAGE_COOKIE)
    return chosen if chosen in LANGUAGES else None


async def language_of(request: Request[Any, Any, Any]) -> str:
    return chosen_language(request) or await default_language(request)


def language_cookie(request: Request[Any, Any, Any], language: str) -> Cookie:
    return browser_cookie(request, LANGUAGE_COOKIE, language, LANGUAGE_COOKIE_MAX_AGE)


def choose_language(request: Request[Any, Any, Any], language: str) -> Cookie:
    """Record this browser's choice: in the session when logged in; returns the cookie to set."""
    session = request.scope.get("session") or {}
    if session.get(SESSION_ROLE):
        request.set_session({**session, SESSION_LANGUAGE: language})
    return language_cookie(request, language)


async def _info(request: Request[Any, Any, Any], chosen: str | None = None) -> LanguageInfo:
    default = await default_language(request)
    return LanguageInfo(
        language=chosen or chosen_language(request) or default, default=default, languages=list(LANGUAGES)
    )


@get(
    "/language",
    guards=[public],
    operation_id="getLanguage",
    summary="This browser's UI language, the site default and the languages offered",
    security=[{}],
    tags=["language"],
)
async def get_language(request: Request[Any, Any, State]) -> LanguageInfo:
    return await _info(request)


@put(
    "/language",
    guards=[public],
    operation_id="chooseLanguage",
    summary="Choose this browser's UI language (login page too); the site default is unchanged",
    security=[{}],
    tags=["language"],
)
async def put_language(request: Request[Any, Any, State], data: LanguageBody) -> Response[LanguageInfo]:
    language = check_language(data.language)
    cookie = choose_language(request, language)
    return Response(await _info(request, language), cookies=[cookie])


@put(
    "/site/language",
    guards=[requires(Permission.CONFIGURE_SITE)],
    operation_id="setSiteLanguage",
    summary="Set the site's default UI language (overrides the site file's)",
    tags=["language"],
    responses={409: error("The configuration changed meanwhile (version-conflict): try again.")},
)
async def put_site_language(request: Request[Any, Any, State], data: LanguageBody) -> LanguageInfo:
    from ..sites import site_state
    from .configuration import apply_document, config_document

    language = check_language(data.language)
    state = site_state(request)
    document = config_document(state)
    version = document.pop("version")
    document["language"] = language
    await apply_document(state, document, version, current_role(request) or "unknown")
    return await _info(request)


router = Router(path="/api/v1", route_handlers=[get_language, put_language, put_site_language])
