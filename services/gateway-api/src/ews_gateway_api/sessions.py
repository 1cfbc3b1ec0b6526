"""Server-side sessions in Redis, with a fresh session id at every login (no session fixation).

Litestar's server-side backend keeps whatever id the browser's cookie carries. Here a handler that
authenticates calls :func:`rotate_session`: the response then stores the session under a new random id
and deletes the old one. A cookie naming no stored session is never reused either, and a request without session data
(anonymous) neither creates a store entry nor gets a cookie.
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.middleware.session.server_side import ServerSideSessionBackend, ServerSideSessionConfig
from litestar.types import Empty, Message, ScopeSession

SESSION_COOKIE = "ews_session"
IDLE_TIMEOUT = 3600  # seconds without a request before a session ends (renewed on every request)
_ROTATE = "ews.rotate_session"
_NEW_ID = "ews.new_session_id"
_KNOWN = "ews.session_known"


def rotate_session(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """Store this request's session under a new id (call after a successful login)."""
    connection.scope.setdefault("state", {})[_ROTATE] = True


class RotatingSessionBackend(ServerSideSessionBackend):
    async def load_from_connection(self, connection: ASGIConnection) -> dict[str, Any]:
        data = await super().load_from_connection(connection)
        connection.scope.setdefault("state", {})[_KNOWN] = bool(data)
        return data

    def get_session_id(self, connection: ASGIConnection) -> str:
        state = connection.scope.setdefault("state", {})
        if state.get(_ROTATE) or not state.get(_KNOWN, True):
            if _NEW_ID not in state:
                state[_NEW_ID] = self.generate_session_id()
            return state[_NEW_ID]
        return super().get_session_id(connection)

    async def store_in_message(
        self, scope_session: ScopeSession, message: Message, connection: ASGIConnection
    ) -> None:
        state = connection.scope.setdefault("state", {})
        if scope_session is not Empty and not scope_session:
            # nothing to keep: no store entry and no cookie for anonymous requests; an emptied session ends
            if not state.get(_KNOWN):
                return
            scope_session = Empty
        old = connection.cookies.get(self.config.key)
        if state.get(_ROTATE) and old and old != "null" and scope_session is not Empty:
            await self.delete(old, store=self.config.get_store_from_app(connection.scope["app"]))
        await super().store_in_message(scope_session, message, connection)


class SessionConfig(ServerSideSessionConfig):
    _backend_class = RotatingSessionBackend  # type: ignore[assignment]


def session_config(secure: bool) -> SessionConfig:
    return SessionConfig(
        key=SESSION_COOKIE,
        max_age=IDLE_TIMEOUT,
        renew_on_access=True,
        httponly=True,
        samesite="strict",
        secure=secure,
        path="/",
        exclude=["^/health$", "^/schema", "^/static/"],
        store="sessions",
    )
