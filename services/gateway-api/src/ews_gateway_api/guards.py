"""Route guards: every route declares the permission it needs (see ews_contracts.roles.PERMISSIONS).

The session (server-side, in Redis, see ``sessions.py``: idle and absolute timeouts, revoked on Logout, Lock
and code change) holds ``role`` once logged in. Anonymous -> 401, wrong role -> 403. The route x role
matrix test (tests/test_route_matrix.py) fails for a route without one of these guards.
"""

from __future__ import annotations

from ews_contracts.roles import Permission, Role, allowed
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from .errors import ApiError
from .i18n import N_

SESSION_ROLE = "role"
LOGIN_FIRST = N_("log in first (POST /api/v1/auth/login)")


_ROLES = frozenset(str(r) for r in Role)


def current_role(connection: ASGIConnection) -> str | None:
    """The session's role; None when anonymous (or the session holds no known role)."""
    session = connection.scope.get("session") or {}
    role = session.get(SESSION_ROLE)
    return role if role in _ROLES else None


def requires(permission: Permission):
    """Guard factory: ``@get(..., guards=[requires(Permission.VIEW_CONSUMPTION)])``."""

    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        role = current_role(connection)
        if role is None:
            raise ApiError(401, "login-required", LOGIN_FIRST)
        if not allowed(role, permission):
            raise ApiError(
                403,
                "forbidden",
                N_("the %(role)s role may not do this (%(permission)s)"),
                role=role,
                permission=str(permission),
            )

    guard.permission = permission  # type: ignore[attr-defined]  # read by the route x role test matrix
    return guard


def authenticated(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard for routes every logged-in role may use (e.g. /me, logout)."""
    if current_role(connection) is None:
        raise ApiError(401, "login-required", LOGIN_FIRST)


def public(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Explicit 'no permission needed' decision (health, login, the login page, static files)."""
