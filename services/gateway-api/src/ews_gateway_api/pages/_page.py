"""What every page shares: rendering in the person's language, the navigation, homes and error pages.

``render(request, template, **context)`` gives the template, besides ``context``: the gettext
callables of the page's language (``_``, ``{% trans %}``), ``fmt`` (``i18n.Formats``: numbers, units,
money, dates in that language with the site's currency and time zone), ``role``, ``may(permission)``
(the role has it), ``nav`` (the role's main navigation), ``lang``/``languages``, ``site``, ``path`` and
``static_url``; at a hub with several sites, ``sites`` (the site picker's choices), ``site_id`` (the chosen
one), ``site_query`` (``site=<id>``, kept by the navigation's links) and ``with_site(href)``.

Errors on pages are pages too (``error_page``): a person who follows a bad link, or whose session
ended, gets a page in their language that names the problem and leads on (to sign in, or home) —
never a JSON body or a blank page. API paths keep their JSON errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC
from typing import Any
from urllib.parse import quote, urlencode

from ews_contracts.roles import PAGES, Page, Permission, Role, allowed
from litestar import MediaType, Request, Response
from litestar.datastructures import Cookie
from litestar.exceptions import HTTPException
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_401_UNAUTHORIZED, HTTP_500_INTERNAL_SERVER_ERROR

from ..domain.language import LANGUAGES, language_of
from ..errors import ApiError, reader_language
from ..guards import current_role
from ..i18n import N_, Formats, gettext_callables
from ..sessions import browser_cookie
from ..sites import SITE_COOKIE, all_site_states, is_hub, optional_site_state, site_query
from ..web import PAGE_HEADERS, static_url

# The main navigation: page -> (URL, English label). Labels are msgids translated at render time.
NAV: dict[Page, tuple[str, str]] = {
    Page.INSTALLATION: ("/installation", N_("My installation")),
    Page.CONSUMPTION: ("/consumption/total-electricity", N_("Consumptions")),
    Page.GREENUP: ("/greenup/management", N_("Green'Up")),
    Page.CONFIGURATION: ("/configuration", N_("Configuration")),
}

ALL_SITES = N_("All sites")  # the header of a hub's page while no site is chosen
SITE_COOKIE_AGE = 30 * 24 * 3600  # seconds the chosen site is remembered on a browser (a hub's pages)

# Each role's home (A2): the page it lands on after signing in.
HOMES: dict[Role, str] = {
    Role.ADMINISTRATOR: "/installation",
    Role.INSTALLER: "/installation",
    Role.GREENUP: "/greenup/management",
    Role.USER: "/consumption/total-electricity",
}

LANGUAGE_NAMES: dict[str, str] = {
    "zh": "中文",
    "de": "Deutsch",
    "en": "English",
    "es": "Español",
    "fr": "Français",
    "fr-BE": "Français (Belgique)",
    "el": "Ελληνικά",
    "it": "Italiano",
    "nl-BE": "Nederlands (België)",
    "nl": "Nederlands",
    "pl": "Polski",
    "pt": "Português",
    "ru": "Русский",
}


@dataclass(frozen=True)
class NavItem:
    href: str
    label: str
    current: bool


def home_of(role: str | None) -> str:
    try:
        return HOMES[Role(role)] if role else "/login"
    except ValueError:
        return "/login"


def may(request: Request[Any, Any, Any], permission: Permission) -> bool:
    return allowed(current_role(request), permission)


def formats(request: Request[Any, Any, Any], language: str) -> Formats:
    one = optional_site_state(request)
    if one is None:  # a hub with several sites and none chosen yet (its sign-in or error page)
        return Formats(language, "EUR", UTC)
    return Formats(language, one.site.currency, one.site.tz)


@dataclass(frozen=True)
class SiteChoice:
    """A site of the picker (``sites``): what the header shows."""

    id: str
    name: str


@dataclass(frozen=True)
class NoSiteChosen:
    """The ``site`` of a page at a hub where no site is chosen yet: only its name is shown."""

    name: str
    site: str = ""


def _with_site(href: str, query: str) -> str:
    if not query:
        return href
    return href + ("&" if "?" in href else "?") + query


def site_cookie(request: Request[Any, Any, Any]) -> Cookie | None:
    """The ``ews_site`` cookie (``sites`` module doc) when the page was opened with a valid ``?site=`` at a hub:
    the links, forms and HTMX requests of the pages that do not carry it keep the chosen site."""
    asked = request.query_params.get("site")
    if not asked or not is_hub(request.app.state) or request.cookies.get(SITE_COOKIE) == asked:
        return None
    one = optional_site_state(request)
    if one is None or one.site.site != asked:
        return None
    return browser_cookie(request, SITE_COOKIE, asked, SITE_COOKIE_AGE)


def _nav(role: str | None, path: str, translate: Any, query: str = "") -> list[NavItem]:
    if role is None:
        return []
    items = []
    for page in PAGES[Role(role)]:
        href, label = NAV[page]
        section = "/" + href.strip("/").split("/")[0]
        current = path == section or path.startswith(section + "/")
        items.append(NavItem(_with_site(href, query), translate(label), current))
    return items


def _context(request: Request[Any, Any, Any], language: str, context: dict[str, Any]) -> dict[str, Any]:
    role = current_role(request)
    callables = gettext_callables(language)
    session = request.scope.get("session") or {}
    one = optional_site_state(request)
    query = site_query(request)  # site=<id> at a hub with several sites: the links keep the chosen site
    sites = [SiteChoice(s.site.site, s.site.name) for s in all_site_states(request.app.state)]
    return {
        **callables,
        "fmt": formats(request, language),
        "lang": language,
        "languages": [(code, LANGUAGE_NAMES[code]) for code in LANGUAGES],
        "role": role,
        "may": lambda permission: allowed(role, Permission(permission)),  # may("manage-tokens")
        "home": _with_site(home_of(role), query),
        "nav": _nav(role, request.url.path, callables["_"], query),
        "default_codes": bool(session.get("default_codes")) and allowed(role, Permission.MANAGE_CODES),
        "site": one.site if one is not None else NoSiteChosen(callables["_"](ALL_SITES)),
        # the site picker (base.html), shown when the server serves several sites (a hub)
        "sites": sites if len(sites) > 1 else [],
        "site_id": one.site.site if one is not None and len(sites) > 1 else "",
        "site_query": query,
        "with_site": lambda href: _with_site(href, query),
        "path": request.url.path,
        "here": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        "static_url": static_url,
        "urlencode": urlencode,
        **context,
    }


async def render(
    request: Request[Any, Any, Any], template: str, *, status_code: int = 200, **context: Any
) -> Template:
    language = await language_of(request)
    cookie = site_cookie(request)
    return Template(
        template_name=template,
        context=_context(request, language, context),
        cookies=[cookie] if cookie is not None else None,
        status_code=status_code,
        headers={**PAGE_HEADERS, "Content-Language": language},
        media_type=MediaType.HTML,
    )


async def translator(request: Request[Any, Any, Any]) -> Any:
    """``_`` in the request's language, for words a handler puts in a page's data (chart labels)."""
    return gettext_callables(await language_of(request))["_"]


def redirect(path: str) -> Redirect:
    return Redirect(path=path, status_code=303, headers={"Cache-Control": "no-store"})


def error_page(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """An error on a page, as a page: 401 shows the sign-in form (then back to this page), 403 leads
    home, 400/404 name the problem, 5xx say to try again."""
    status = exc.status_code if isinstance(exc, HTTPException) else HTTP_500_INTERNAL_SERVER_ERROR
    language = reader_language(request)
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if status == HTTP_401_UNAUTHORIZED:
        context = _context(request, language, {"next": here, "message": "", "puk_required": False})
        return Template(
            template_name="auth/login.html",
            context=context,
            status_code=401,
            headers=PAGE_HEADERS,
            media_type=MediaType.HTML,
        )
    detail = (
        exc.translated(language)
        if isinstance(exc, ApiError)
        else exc.detail
        if isinstance(exc, HTTPException)
        else ""
    )
    if status >= 500:
        detail = ""
    headers = dict(PAGE_HEADERS)
    if isinstance(exc, HTTPException) and exc.headers:
        headers.update(exc.headers)
    context = _context(request, language, {"status": status, "detail": detail, "back": here})
    return Template(
        template_name="error.html",
        context=context,
        status_code=status,
        headers=headers,
        media_type=MediaType.HTML,
    )


def login_url(next_path: str) -> str:
    return "/login?next=" + quote(next_path, safe="/")
