"""Every route of the app, generated from ``app.routes``, × anonymous, every role's session and every
role's machine token.

Each route handler must carry an explicit access decision (a guard from ``guards.py``: ``requires(...)``,
``authenticated``, ``session_only`` or ``public``, on the handler or a router above it) — a new route
without one fails here. Then: anonymous -> 401 on every non-public route; a role without the permission
-> 403; an allowed role -> neither 401 nor 403 (nor 500). With a machine token (``Authorization:
Bearer``, no cookie): outside ``/api/v1`` (pages, ``/metrics``) the token is ignored — anonymous; on
``/api/v1`` a ``session_only`` route or a permission of ``TOKEN_EXCLUDED`` -> 403, otherwise as the
token's role. Litestar's automatic OPTIONS handlers (they answer with the Allow header only) are the one
exception.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from ews_contracts.roles import Role, allowed
from ews_contracts.tokens import token_allowed
from ews_gateway_api.guards import authenticated, public, session_only
from httpx import AsyncClient
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute

from .conftest import session_for, token_for

pytestmark = pytest.mark.integration

PATH_PARAMS = {
    "device_id": "ev1",
    "command_id": "0123456789abcdef",
    "file_path": "no-such-file.js",
    "version": "1",
}
BODIES: dict[str, Any] = {"POST": {}, "PUT": {}, "PATCH": {}}


def decision(handler: HTTPRouteHandler) -> tuple[str, Any]:
    """("public" | "authenticated" | "session" | "permission", permission) from the handler's guards;
    AssertionError if none."""
    guards = [g for layer in handler.ownership_layers for g in (getattr(layer, "guards", None) or [])]
    permissions = [g.permission for g in guards if getattr(g, "permission", None) is not None]
    if permissions:
        assert len(permissions) == 1, f"{handler}: several permissions {permissions}"
        return "permission", permissions[0]
    if session_only in guards:
        return "session", None
    if authenticated in guards:
        return "authenticated", None
    if public in guards:
        return "public", None
    raise AssertionError(
        f"route handler {handler.handler_name} ({sorted(handler.http_methods)} {handler.paths}) has no access "
        "decision: add guards=[requires(Permission...)], [authenticated], [session_only] or [public]"
    )


def is_automatic_options(handler: HTTPRouteHandler) -> bool:
    return handler.http_methods == {"OPTIONS"} and handler.handler_name == "options_handler"


def cases(app: Litestar) -> list[tuple[str, str, HTTPRouteHandler]]:
    out = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        path = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: PATH_PARAMS.get(m.group(1), "x"), route.path)
        for handler in route.route_handlers:
            if is_automatic_options(handler):
                continue
            for method in sorted(handler.http_methods):
                out.append((method, path, handler))
    return out


def test_every_route_handler_has_an_access_decision(app: Litestar) -> None:
    found = cases(app)
    assert len(found) > 10
    for _, _, handler in found:
        decision(handler)
    # and the decisions of the fixed API are the intended ones
    by_path = {(m, p): decision(h) for m, p, h in found}
    assert by_path[("GET", "/health")] == ("public", None)
    assert by_path[("POST", "/api/v1/auth/login")] == ("public", None)
    assert by_path[("POST", "/api/v1/auth/logout")] == ("session", None)
    assert by_path[("GET", "/api/v1/me")] == ("authenticated", None)
    assert by_path[("GET", "/api/v1/devices")] == ("authenticated", None)
    assert by_path[("GET", "/api/v1/consumption")] == ("permission", "view-consumption")
    assert by_path[("POST", "/api/v1/commands")] == ("permission", "command-devices")
    assert by_path[("GET", "/api/v1/auth/codes")] == ("permission", "manage-codes")
    # own codes: any role (with its current codes); another role's: checked in the handler (manage-codes)
    assert by_path[("PUT", "/api/v1/auth/codes/x")] == ("session", None)
    assert by_path[("PUT", "/api/v1/me/language")] == ("session", None)
    for method in ("GET", "POST"):
        assert by_path[(method, "/api/v1/tokens")] == ("permission", "manage-tokens")
    assert by_path[("DELETE", "/api/v1/tokens/x")] == ("permission", "manage-tokens")
    assert by_path[("GET", "/api/v1/site")] == ("authenticated", None)
    assert by_path[("GET", "/configuration/tokens")] == ("permission", "manage-tokens")
    assert by_path[("PUT", "/api/v1/site/language")] == ("permission", "configure-site")
    assert by_path[("GET", "/api/v1/language")] == ("public", None)  # the login page's language picker
    assert by_path[("PUT", "/api/v1/language")] == ("public", None)


def test_a_route_without_a_guard_fails_the_check() -> None:
    from litestar import get

    @get("/forgotten")
    async def forgotten() -> str:
        return "oops"

    with pytest.raises(AssertionError, match="no access decision"):
        decision(forgotten)


async def test_route_matrix(client: AsyncClient, app: Litestar) -> None:
    problems = []
    checked = 0
    for method, path, handler in cases(app):
        kind, permission = decision(handler)
        for role in [None, *Role]:
            cookies = await session_for(app, str(role)) if role else {}
            client.cookies.clear()
            resp = await client.request(method, path, json=BODIES.get(method), cookies=cookies)
            checked += 1
            status = resp.status_code
            if kind == "public":
                ok = status not in (401, 403)
            elif role is None:
                ok = status == 401
            elif kind in ("authenticated", "session") or allowed(str(role), permission):
                ok = status not in (401, 403)
            else:
                ok = status == 403
            if status >= 500 and status != 503:
                ok = False
            if not ok:
                problems.append(f"{method} {path} as {role or 'anonymous'}: {status} {resp.text[:120]}")
    assert not problems, "\n".join(problems)
    assert checked >= 5 * 15


def token_expectation(path: str, kind: str, permission: Any, role: Role) -> str:
    """What a request with a machine token of ``role`` (and no cookie) must get: "ok" (neither 401 nor
    403), "401" or "403"."""
    if kind == "public":
        return "ok"
    if not path.startswith("/api/v1/"):
        return "401"  # pages and /metrics never take a token: anonymous
    if kind == "session":
        return "403"
    if kind == "authenticated" or token_allowed(str(role), permission):
        return "ok"
    return "403"


async def test_route_matrix_with_machine_tokens(client: AsyncClient, app: Litestar) -> None:
    headers = {role: await token_for(app, str(role)) for role in Role}
    problems = []
    checked = 0
    for method, path, handler in cases(app):
        kind, permission = decision(handler)
        for role in Role:
            client.cookies.clear()
            resp = await client.request(method, path, json=BODIES.get(method), headers=headers[role])
            checked += 1
            status = resp.status_code
            expected = token_expectation(path, kind, permission, role)
            ok = status not in (401, 403) if expected == "ok" else status == int(expected)
            if status >= 500 and status != 503:
                ok = False
            if "set-cookie" in resp.headers and "ews_session" in resp.headers["set-cookie"]:
                ok = False  # a token never opens a session
            if not ok:
                problems.append(f"{method} {path} with a {role} token: {status} {resp.text[:120]}")
    assert not problems, "\n".join(problems)
    assert checked >= 4 * 15
    # the token-only exclusions, by name: an administrator's token may not manage codes or tokens
    admin = headers[Role.ADMINISTRATOR]
    for method, path in (("GET", "/api/v1/tokens"), ("GET", "/api/v1/auth/codes")):
        resp = await client.request(method, path, headers=admin)
        assert resp.status_code == 403 and resp.json()["code"] == "token-forbidden", (path, resp.text)
    resp = await client.post("/api/v1/auth/logout", json={}, headers=admin)
    assert resp.status_code == 403 and resp.json()["code"] == "session-only"
