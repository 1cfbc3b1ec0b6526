"""The error answers of the API in its OpenAPI document, decided once for every operation.

Litestar documents a route's success answer and, for a route with parameters or a body, its 400. The other
errors come from layers every route shares — the guards (401, 403), the cross-site and content-type checks
(``security.py``: 403, 415), the body limit (413), the stores behind the sessions and the data (503) — so
they are added here from what each route handler declares, rather than repeated on ~30 routes:

========  ==========================================================================================
status    documented on
========  ==========================================================================================
400       a route with parameters or a body, and every state-changing route (its body is read)
401       every route that is not ``public`` (guards.py): no session or token, or an invalid machine token
403       every route guarded by a permission (``requires``) or ``session_only``, and every state-changing
          route (cross-origin)
404       every route with a path parameter (an unknown id, or a value the path cannot hold), and every
          site-scoped route (``?site=`` of an unknown site)
409       every state-changing site-scoped route: a hub changes no site (read-only-at-hub); a route's own
          409 (e.g. version-conflict) replaces this description
413, 415  every state-changing route (the body's size and Content-Type are checked before the handler)
429       every route that is not ``public``: repeated wrong machine tokens from one address (bearer.py)
503       every route: Redis (the sessions), the bus, the analytics database or the auth service may be
          unavailable; the answer says which, and when to try again (``Retry-After``)
========  ==========================================================================================

Every error body is :class:`ErrorBody` (``app.http_error``); a route documents its own special answers
(409, 429, a different body) with ``responses={...}``, which win over these defaults. 500 is never
documented: it is a bug.

Credentials: the document's ``security`` accepts the session cookie or a machine token (``bearer``); the
routes a token may never use (``session_only``, and the permissions of ``tokens.TOKEN_EXCLUDED``) say
``session`` only.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterable
from datetime import date
from typing import Any

from ews_contracts.tokens import TOKEN_EXCLUDED
from litestar import Litestar
from litestar.constants import RESERVED_KWARGS
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.routes import HTTPRoute
from pydantic import BaseModel, Field

from .guards import authenticated, session_only
from .security import STATE_CHANGING


class ErrorBody(BaseModel):
    """The JSON body of every error the API answers (``app.http_error``, ``errors.ApiError``)."""

    status_code: int = Field(description="The HTTP status, repeated.")
    code: str = Field(
        description="Stable, for programs: e.g. invalid-request, login-required, forbidden, cross-origin, "
        "unknown-device, too-large, unsupported-media-type, store-unavailable."
    )
    detail: str = Field(description="One line for a person, in the reader's language.")
    extra: dict[str, Any] | list[Any] | None = Field(
        default=None,
        description="Details when there are any: the invalid fields (invalid-request), the current version "
        "(version-conflict) …",
    )


def error(description: str) -> ResponseSpec:
    """An error answer with the :class:`ErrorBody` body, for a route's ``responses``."""
    return ResponseSpec(ErrorBody, description=description, generate_examples=False)


DEFAULTS: dict[int, str] = {
    400: "The request is invalid: `code` says why (invalid-request names the field), `detail` in words.",
    401: "Not logged in (login-required): log in with POST /api/v1/auth/login first; or the machine token "
    "(Authorization: Bearer) is malformed, unknown or revoked (invalid-token).",
    403: "The role lacks the permission (forbidden), a machine token may not do this (token-forbidden, "
    "session-only), or the request comes from a page of another site (cross-origin).",
    404: "Nothing with this identifier (e.g. unknown-device, unknown-site), or no such address.",
    409: "At a hub: a site is changed on its own server, not from the hub (read-only-at-hub).",
    413: "The body is larger than this route accepts (too-large).",
    415: "The body's Content-Type is not one this route reads (unsupported-media-type).",
    429: "Too many requests with a wrong machine token from this address (too-many-attempts): wait "
    "Retry-After seconds.",
    503: "A service this request needs is unavailable — Redis (the sessions), the bus, the analytics database "
    "or the auth service: `code` says which; try again (Retry-After).",
}


# --- parameter schemas ----------------------------------------------------------------------------
# What a query parameter's OpenAPI schema says the server accepts, when the handler checks the value itself
# (with its own error code and message: unknown-period, invalid-date …) rather than Litestar: these go in a
# ``Parameter``'s ``schema_extra``, which documents without validating.


def enum_schema(values: Iterable[str]) -> dict[str, Any]:
    """``schema_extra`` of a parameter taking one of ``values`` (the constant the handler checks with)."""
    return {"enum": list(values)}


def _years(years: Iterable[int]) -> str:
    """A regular expression matching exactly these four-digit years, grouped by decade."""
    decades: dict[str, str] = {}
    for year in sorted(years):
        decades[str(year)[:3]] = decades.get(str(year)[:3], "") + str(year)[3]
    parts = [
        prefix + (r"\d" if last == "0123456789" else f"[{last}]" if len(last) > 1 else last)
        for prefix, last in decades.items()
    ]
    return "(?:" + "|".join(parts) + ")"


def date_regex(first: date, last: date, accepted: Callable[[date], bool] = lambda d: True) -> str:
    """An unanchored regular expression of the calendar dates YYYY-MM-DD of the whole years from
    ``first.year`` to ``last.year`` whose first and last day are ``accepted`` (29 February in leap years
    only)."""
    years = [
        y
        for y in range(first.year, last.year + 1)
        if first <= date(y, 1, 1)
        and date(y, 12, 31) <= last
        and accepted(date(y, 1, 1))
        and accepted(date(y, 12, 31))
    ]
    common = r"(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1\d|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
    leap = [y for y in years if calendar.isleap(y)]
    return f"(?:{_years(years)}-{common}|{_years(leap)}-02-29)"


def date_schema(regex: str, *, empty: bool) -> dict[str, Any]:
    """``schema_extra`` of a date parameter (``date_regex``), where ``empty`` (``date=``) means the default."""
    return {"pattern": f"^(?:{regex})?$" if empty else f"^{regex}$"}


def _guards(handler: HTTPRouteHandler) -> list[Any]:
    return [g for layer in handler.ownership_layers for g in (getattr(layer, "guards", None) or [])]


def access_of(handler: HTTPRouteHandler) -> str:
    """``public``, ``authenticated``, ``session`` or ``permission``: the handler's access decision."""
    guards = _guards(handler)
    if any(getattr(g, "permission", None) is not None for g in guards):
        return "permission"
    if session_only in guards:
        return "session"
    if authenticated in guards:
        return "authenticated"
    return "public"


def session_required(handler: HTTPRouteHandler) -> bool:
    """A route no machine token may use: ``session_only``, or a permission a token never has."""
    guards = _guards(handler)
    return session_only in guards or any(getattr(g, "permission", None) in TOKEN_EXCLUDED for g in guards)


def takes_site(handler: HTTPRouteHandler) -> bool:
    """A site-scoped route: it takes ``?site=`` (``sites.SITE_PARAMETER``; 400 malformed, 404 unknown)."""
    return "site" in handler.resolve_layered_parameters()


def takes_input(handler: HTTPRouteHandler, path: str) -> bool:
    names = set(handler.parsed_fn_signature.parameters) - (RESERVED_KWARGS - {"data"})
    return bool(names) or "{" in path or takes_site(handler)


def error_statuses(handler: HTTPRouteHandler, path: str) -> list[int]:
    access = access_of(handler)
    changing = bool(handler.http_methods & STATE_CHANGING)
    statuses = [503]
    if changing or takes_input(handler, path):
        statuses.append(400)
    if access != "public":
        statuses += [401, 429]
    if access in ("permission", "session") or changing:
        statuses.append(403)
    if re.search(r"\{\w+", path) or takes_site(handler):
        statuses.append(404)
    if changing:
        statuses += [413, 415]
    if changing and takes_site(handler):
        statuses.append(409)
    return sorted(statuses)


def document_errors(app: Litestar) -> None:
    """Add the shared error answers to every documented route handler (before the schema is built)."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if not handler.resolve_include_in_schema():
                continue
            own = dict(handler.responses or {})
            defaults = {status: error(DEFAULTS[status]) for status in error_statuses(handler, route.path)}
            handler.responses = {**defaults, **own}
            if handler.security is None and session_required(handler):
                handler.security = [{"session": []}]
