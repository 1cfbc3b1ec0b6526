"""Route guards: every route declares the permission it needs (see ews_contracts.roles.PERMISSIONS).

The session (server-side, in Redis) holds ``role`` once logged in. Anonymous -> 401, wrong role -> 403.
"""

from __future__ import annotations

from ews_contracts.roles import Permission, allowed
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

SESSION_ROLE = "role"


def current_role(connection: ASGIConnection) -> str | None:
    session = connection.scope.get("session") or {}
    return session.get(SESSION_ROLE)


def requires(permission: Permission):
    """Guard factory: ``@get(..., guards=[requires(Permission.VIEW_CONSUMPTION)])``."""

    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        role = current_role(connection)
        if role is None:
            raise NotAuthorizedException("log in first (POST /api/v1/auth/login)")
        if not allowed(role, permission):
            raise PermissionDeniedException(f"the {role} role may not do this ({permission})")

    guard.permission = permission  # type: ignore[attr-defined]  # read by the route x role test matrix
    return guard


def authenticated(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard for routes every logged-in role may use (e.g. /me, logout)."""
    if current_role(connection) is None:
        raise NotAuthorizedException("log in first (POST /api/v1/auth/login)")


def public(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Explicit 'no permission needed' decision (health, login, the login page, static files)."""
