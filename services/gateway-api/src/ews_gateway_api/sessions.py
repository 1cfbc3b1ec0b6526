"""Server-side sessions in Redis (Litestar's ServerSideSessionBackend on the app's "sessions" RedisStore).

On top of Litestar's backend:

- **a fresh session id at every login** (no session fixation): a handler that authenticates calls
  :func:`rotate_session`; the response stores the session under a new random id and deletes the old one.
  A cookie naming no stored session is never reused either, and a request without session data
  (anonymous) neither creates a store entry nor gets a cookie.
- **idle timeout** ``IDLE_TIMEOUT``: the store entry's TTL, renewed by each request (``renew_on_access``).
- **absolute timeout** ``ABSOLUTE_TIMEOUT``: the login time (``login_at``, epoch seconds) is kept in the
  session; a session older than that, or without one, is deleted when it is next presented.
- **no session id in clear in Redis**: the store is wrapped in :class:`HashedKeyStore`, so the Redis key of
  a session is ``ews:<site>:session:<sha256 of its id>``; the role index below holds those hashes too.
  Whoever reads Redis cannot take over a session.
- **revocation per role**: each login adds its session id's hash to a Redis set per role
  (``ews:<site>:gateway:role-sessions:<role>``, expiring with the absolute timeout);
  :func:`revoke_role_sessions` deletes every session of a role (after a change of its codes).
- an unchanged session is not written back: the load already renewed its TTL (one Redis round trip
  per authenticated request instead of two).

Cookie: HttpOnly, SameSite=Strict, Secure when ``EWS_SECURE_COOKIES`` is set (behind HTTPS).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie, MutableScopeHeaders
from litestar.middleware.session.server_side import ServerSideSessionBackend, ServerSideSessionConfig
from litestar.stores.base import Store
from litestar.types import Empty, Message, ScopeSession
from litestar.utils.dataclass import extract_dataclass_items

SESSION_COOKIE = "ews_session"
IDLE_TIMEOUT = 3600  # seconds without a request before a session ends (renewed on every request)
ABSOLUTE_TIMEOUT = 12 * 3600  # seconds after the login when a session ends whatever its use
LOGIN_AT = "login_at"
SESSION_ID_BYTES = 32
_ROTATE = "ews.rotate_session"
_NEW_ID = "ews.new_session_id"
_KNOWN = "ews.session_known"
_LOADED = "ews.session_loaded"

now: Callable[[], float] = time.time  # the sessions' clock (tests may replace it)


def rotate_session(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """Store this request's session under a new id (call after a successful login); returns that id."""
    state = connection.scope.setdefault("state", {})
    state[_ROTATE] = True
    if _NEW_ID not in state:
        state[_NEW_ID] = secrets.token_hex(SESSION_ID_BYTES)
    return state[_NEW_ID]


def hashed_id(session_id: str) -> str:
    """The name a session is stored under: the SHA-256 of its id (hex)."""
    return hashlib.sha256(session_id.encode()).hexdigest()


class HashedKeyStore(Store):
    """A store whose keys are the SHA-256 of the keys it is given (Litestar calls get/set/delete with the
    session id): the session ids never appear in Redis."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    async def set(self, key: str, value: str | bytes, expires_in: int | timedelta | None = None) -> None:
        await self.inner.set(hashed_id(key), value, expires_in)

    async def get(self, key: str, renew_for: int | timedelta | None = None) -> bytes | None:
        return await self.inner.get(hashed_id(key), renew_for)

    async def delete(self, key: str) -> None:
        await self.inner.delete(hashed_id(key))

    async def delete_hashed(self, digest: str) -> None:
        """Delete the entry stored under ``digest`` (a :func:`hashed_id`)."""
        await self.inner.delete(digest)

    async def delete_all(self) -> None:
        await self.inner.delete_all()

    async def exists(self, key: str) -> bool:
        return await self.inner.exists(hashed_id(key))

    async def expires_in(self, key: str) -> int | None:
        return await self.inner.expires_in(hashed_id(key))


def role_sessions_key(site: str, role: str) -> str:
    return f"ews:{site}:gateway:role-sessions:{role}"


async def index_session(redis: Any, site: str, role: str, session_id: str) -> None:
    """Remember that ``session_id`` belongs to ``role`` (for :func:`revoke_role_sessions`; by its hash)."""
    key = role_sessions_key(site, role)
    pipe = redis.pipeline(transaction=False)
    pipe.sadd(key, hashed_id(session_id))
    pipe.expire(key, ABSOLUTE_TIMEOUT + 60)  # every indexed session is dead by then
    await pipe.execute()


async def unindex_session(redis: Any, site: str, role: str, session_id: str) -> None:
    await redis.srem(role_sessions_key(site, role), hashed_id(session_id))


async def revoke_role_sessions(redis: Any, store: Any, site: str, role: str) -> int:
    """Delete every session of ``role`` (``store``: a :class:`HashedKeyStore`); returns how many were indexed."""
    key = role_sessions_key(site, role)
    digests = [i.decode() if isinstance(i, bytes) else i for i in await redis.smembers(key)]
    for digest in digests:
        await store.delete_hashed(digest)
    await redis.delete(key)
    return len(digests)


class RotatingSessionBackend(ServerSideSessionBackend):
    async def load_from_connection(self, connection: ASGIConnection) -> dict[str, Any]:
        data = await super().load_from_connection(connection)
        state = connection.scope.setdefault("state", {})
        state[_KNOWN] = bool(data)
        if data:
            login_at = data.get(LOGIN_AT)
            if not isinstance(login_at, int | float) or now() - login_at > ABSOLUTE_TIMEOUT:
                return {}  # known but over: store_in_message deletes it and clears the cookie
            state[_LOADED] = dict(data)
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
        rotate = state.get(_ROTATE)
        if not rotate and scope_session is not Empty and scope_session == state.get(_LOADED):
            # unchanged: the load renewed the TTL already; only the cookie's max-age is renewed
            params = dict(
                extract_dataclass_items(self.config, exclude_none=True, include=Cookie.__dict__.keys())
            )
            cookie = Cookie(value=self.get_session_id(connection), key=self.config.key, **params)
            MutableScopeHeaders.from_message(message).add("Set-Cookie", cookie.to_header(header=""))
            return
        old = connection.cookies.get(self.config.key)
        if rotate and old and old != "null" and scope_session is not Empty:
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
        session_id_bytes=SESSION_ID_BYTES,
    )


def browser_cookie(
    connection: ASGIConnection[Any, Any, Any, Any], key: str, value: str, max_age: int
) -> Cookie:
    """A long-lived cookie of this browser (unlock, language) with the session cookie's protections."""
    return Cookie(
        key=key,
        value=value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=connection.app.state.settings.secure_cookies,
    )
