"""What every page shares: rendering in the person's language, the navigation, homes and error pages.

``render(request, template, **context)`` gives the template, besides ``context``: the gettext
callables of the page's language (``_``, ``{% trans %}``), ``fmt`` (``i18n.Formats``: numbers, units,
money, dates in that language with the site's currency and time zone), ``role``, ``may(permission)``
(the role has it), ``nav`` (the role's main navigation), ``lang``/``languages``, ``site``, ``path`` and
``static_url``.

Errors on pages are pages too (``error_page``): a person who follows a bad link, or whose session
ended, gets a page in their language that names the problem and leads on (to sign in, or home) —
never a JSON body or a blank page. API paths keep their JSON errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from ews_contracts.roles import PAGES, Page, Permission, Role, allowed
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_401_UNAUTHORIZED, HTTP_500_INTERNAL_SERVER_ERROR

from ..domain.language import LANGUAGES, language_of
from ..errors import ApiError, reader_language
from ..guards import current_role
from ..i18n import N_, Formats, gettext_callables
from ..web import PAGE_HEADERS, static_url

# The main navigation: page -> (URL, English label). Labels are msgids translated at render time.
NAV: dict[Page, tuple[str, str]] = {
    Page.INSTALLATION: ("/installation", N_("My installation")),
    Page.CONSUMPTION: ("/consumption/total-electricity", N_("Consumptions")),
    Page.GREENUP: ("/greenup/management", N_("Green'Up")),
    Page.CONFIGURATION: ("/configuration", N_("Configuration")),
}

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
    site = request.app.state.site
    return Formats(language, site.currency, site.tz)


def _nav(role: str | None, path: str, translate: Any) -> list[NavItem]:
    if role is None:
        return []
    items = []
    for page in PAGES[Role(role)]:
        href, label = NAV[page]
        section = "/" + href.strip("/").split("/")[0]
        items.append(NavItem(href, translate(label), path == section or path.startswith(section + "/")))
    return items


def _context(request: Request[Any, Any, Any], language: str, context: dict[str, Any]) -> dict[str, Any]:
    role = current_role(request)
    callables = gettext_callables(language)
    session = request.scope.get("session") or {}
    return {
        **callables,
        "fmt": formats(request, language),
        "lang": language,
        "languages": [(code, LANGUAGE_NAMES[code]) for code in LANGUAGES],
        "role": role,
        "may": lambda permission: allowed(role, Permission(permission)),  # may("manage-tokens")
        "home": home_of(role),
        "nav": _nav(role, request.url.path, callables["_"]),
        "default_codes": bool(session.get("default_codes")) and allowed(role, Permission.MANAGE_CODES),
        "site": request.app.state.site,
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
    return Template(
        template_name=template,
        context=_context(request, language, context),
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
