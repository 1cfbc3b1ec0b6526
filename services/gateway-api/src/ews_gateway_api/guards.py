"""Route guards: every route declares the permission it needs (see ews_contracts.roles.PERMISSIONS).

The session (server-side, in Redis, see ``sessions.py``: idle and absolute timeouts, revoked on Logout, Lock
and code change) holds ``role`` once logged in. On ``/api/v1/…`` a machine token (``Authorization: Bearer``,
resolved by ``bearer.py``) stands for its role instead — never on the pages. Anonymous -> 401, an invalid
token -> 401 ``invalid-token``, wrong role -> 403; a token never has ``ews_contracts.tokens.TOKEN_EXCLUDED``
(codes, tokens) and never uses the ``session_only`` routes (Logout, the session's language, codes): 403.
The route x role matrix test (tests/test_route_matrix.py) fails for a route without one of these guards.
"""

from __future__ import annotations

from ews_contracts.roles import Permission, Role, allowed
from ews_contracts.tokens import TOKEN_EXCLUDED
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from .bearer import BearerRefusal, TokenPrincipal, principal
from .errors import ApiError
from .i18n import N_

SESSION_ROLE = "role"
LOGIN_FIRST = N_("log in first (POST /api/v1/auth/login)")


_ROLES = frozenset(str(r) for r in Role)


def current_role(connection: ASGIConnection) -> str | None:
    """The role of the request's machine token (``/api/v1`` only), else of its session; None when anonymous
    (or the session holds no known role, or the token was refused)."""
    bearer = principal(connection)
    if bearer is not None:
        return str(bearer.role) if isinstance(bearer, TokenPrincipal) else None
    session = connection.scope.get("session") or {}
    role = session.get(SESSION_ROLE)
    return role if role in _ROLES else None


def _role_or_401(connection: ASGIConnection) -> str:
    bearer = principal(connection)
    if isinstance(bearer, BearerRefusal):
        raise bearer.error()
    role = current_role(connection)
    if role is None:
        raise ApiError(401, "login-required", LOGIN_FIRST)
    return role


def requires(permission: Permission):
    """Guard factory: ``@get(..., guards=[requires(Permission.VIEW_CONSUMPTION)])``."""

    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        role = _role_or_401(connection)
        if not allowed(role, permission):
            raise ApiError(
                403,
                "forbidden",
                N_("the %(role)s role may not do this (%(permission)s)"),
                role=role,
                permission=str(permission),
            )
        if permission in TOKEN_EXCLUDED and isinstance(principal(connection), TokenPrincipal):
            raise ApiError(
                403,
                "token-forbidden",
                N_("a machine token may not do this (%(permission)s): sign in with a PIN and PUK"),
                permission=str(permission),
            )

    guard.permission = permission  # type: ignore[attr-defined]  # read by the route x role test matrix
    return guard


def authenticated(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard for routes every logged-in role (session or machine token) may use (e.g. /me, the devices)."""
    _role_or_401(connection)


def session_only(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard for what only a person's session does (Logout, the session's language, changing codes): any
    logged-in role; 403 ``session-only`` for a machine token."""
    _role_or_401(connection)
    if isinstance(principal(connection), TokenPrincipal):
        raise ApiError(
            403,
            "session-only",
            N_("a machine token has no session: this needs a person signed in with a PIN"),
        )


def public(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Explicit 'no permission needed' decision (health, login, the login page, static files)."""
