"""HTTP hardening in one place: cross-site requests refused, the JSON API's content types, and the
security headers of every response.

- **Cross-site requests** (:func:`check_request`, the app's ``before_request`` hook, so after the route's
  guards and before its body is read): a state-changing request (POST, PUT, PATCH, DELETE) whose
  ``Origin`` — or, without one, whose ``Referer`` — is neither the server's own origin (the request's
  scheme, from ``X-Forwarded-Proto`` only via ``EWS_TRUSTED_PROXIES``, and its ``Host`` header) nor one
  of ``EWS_ALLOWED_ORIGINS`` is refused with 403 ``cross-origin`` (a page for the pages); ``Origin: null``
  too. Browsers send ``Origin`` with every POST, so a page of another site — or of another port of this
  host, which SameSite=Strict counts as the same site — cannot act with a person's session. A request
  with neither header (curl, scripts) carries no browser's cookies by accident and passes. A request
  authenticated by a machine token (``Authorization: Bearer``, ``bearer.py``) and carrying no cookie is
  not checked either: a browser never adds that header by itself (another site's page cannot send it
  without a CORS preflight, which this server never grants), so it is no ambient credential; with a
  cookie as well, the check applies as to any browser request.
- **Content types**: under ``/api/`` a state-changing request with a body must be ``application/json``
  (else 415 ``unsupported-media-type`` naming the accepted types): a JSON body sent as text/plain or as a
  form — what another site's page can send without asking — never reaches a handler. A handler that
  reads other types declares them: ``opt={CONTENT_TYPES: ("text/csv", …)}``. A request without a body
  (Logout) needs no type. The pages' forms (urlencoded, multipart) stay accepted on the page routes.
- **Headers** (:func:`security_headers`, a ``before_send`` hook: every response, API, static files,
  schema, errors, redirects): ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``,
  ``Referrer-Policy: same-origin`` and, unless the response has its own, the pages'
  Content-Security-Policy (this server only, ``frame-ancestors 'none'``).
"""

from __future__ import annotations

from typing import Any

from ews_contracts.settings import normalize_origin
from litestar import Request
from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope

from .bearer import token_of
from .errors import ApiError
from .i18n import N_
from .web import CONTENT_SECURITY_POLICY, SECURITY_HEADERS

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CONTENT_TYPES = "content_types"  # key of a handler's ``opt``: the media types its body may have
JSON_ONLY = ("application/json",)
API_PREFIX = "/api/"

RESPONSE_HEADERS = {**SECURITY_HEADERS, "Content-Security-Policy": CONTENT_SECURITY_POLICY}


def own_origin(request: Request[Any, Any, Any]) -> str | None:
    """This server's origin as the browser reached it: the request's scheme and ``Host`` header."""
    host = request.headers.get("host")
    if not host:
        server = request.scope.get("server")
        if not server:
            return None
        host = f"{server[0]}:{server[1]}" if server[1] else str(server[0])
    return normalize_origin(f"{request.scope.get('scheme', 'http')}://{host}")


def check_origin(request: Request[Any, Any, Any]) -> None:
    """403 ``cross-origin`` when ``Origin`` (else ``Referer``) names another site."""
    if token_of(request) is not None and "cookie" not in request.headers:
        return  # a machine token without cookies: nothing a browser sends on its own
    origin = request.headers.get("origin")
    if origin is None:
        referer = request.headers.get("referer")
        if referer is None:
            return  # not sent by a browser's page: nothing to check
        claimed, shown = normalize_origin(referer), referer
    else:
        claimed, shown = normalize_origin(origin), origin
    if claimed is not None and (
        claimed == own_origin(request) or claimed in request.app.state.settings.allowed_origins
    ):
        return
    raise ApiError(
        403,
        "cross-origin",
        N_(
            "refused: this request comes from %(origin)s, not from a page of this server "
            "(EWS_ALLOWED_ORIGINS lists other addresses allowed to send it)"
        ),
        origin=repr(claimed or shown[:200]),
    )


def has_body(request: Request[Any, Any, Any]) -> bool:
    length = request.headers.get("content-length")
    if request.headers.get("transfer-encoding"):
        return True
    return length is not None and length.strip() not in ("", "0")


def accepted_types(request: Request[Any, Any, Any]) -> tuple[str, ...]:
    return tuple(request.route_handler.opt.get(CONTENT_TYPES) or JSON_ONLY)


def check_content_type(request: Request[Any, Any, Any]) -> None:
    """415 ``unsupported-media-type`` for a body of a type the API route does not declare."""
    if not has_body(request):
        return
    accepted = accepted_types(request)
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type in accepted:
        return
    types = ", ".join(accepted)
    if not media_type:
        raise ApiError(
            415,
            "unsupported-media-type",
            N_("the body has no Content-Type: send it as %(types)s"),
            types=types,
        )
    raise ApiError(
        415,
        "unsupported-media-type",
        N_("Content-Type %(given)s is not accepted here: send the body as %(types)s"),
        given=media_type[:100],
        types=types,
    )


async def check_request(request: Request[Any, Any, Any]) -> None:
    """The app's ``before_request`` hook (no route handler may set its own: a test checks it)."""
    if request.method not in STATE_CHANGING:
        return
    check_origin(request)
    if request.url.path.startswith(API_PREFIX):
        check_content_type(request)


async def security_headers(message: Message, scope: Scope) -> None:  # noqa: ARG001
    """The app's ``before_send`` hook: the security headers on every response that lacks them."""
    if message["type"] != "http.response.start":
        return
    headers = MutableScopeHeaders.from_message(message)
    for name, value in RESPONSE_HEADERS.items():
        if name not in headers:
            headers[name] = value


async def complete_allow(message: Message, scope: Scope) -> None:
    """The app's ``before_send`` hook: an OPTIONS answer's ``Allow`` names every method of its path.
    Litestar 2 builds its automatic OPTIONS handler from the handlers registered before it, so a path served
    by two modules (``GET`` in one, ``POST`` in the other) answered half of them (litestar#4169, fixed in
    Litestar 3 only); the route itself knows them all."""
    if message["type"] != "http.response.start" or scope.get("method") != "OPTIONS":
        return
    template = scope.get("path_template")
    app = scope.get("litestar_app") or scope.get("app")
    if not template or app is None:
        return
    methods = _methods_of(app, template)
    if methods:
        MutableScopeHeaders.from_message(message)["allow"] = ", ".join(methods)


def _methods_of(app: Any, template: str) -> list[str]:
    """The methods of the app's route at ``template``, sorted; computed once per app and path."""
    cache: dict[str, list[str]] = app.state.setdefault("route_methods", {})
    if template not in cache:
        cache[template] = sorted(
            {m for route in app.routes if route.path == template for m in getattr(route, "methods", ())}
        )
    return cache[template]
