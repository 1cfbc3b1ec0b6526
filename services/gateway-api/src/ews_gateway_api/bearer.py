"""Machine tokens on the JSON API: ``Authorization: Bearer ews_<id>_<secret>`` (``ews_contracts.tokens``).

The auth service creates, lists and revokes tokens (NATS request/reply) and is the only writer of their
records; this module only *reads* them to check a request, straight from Redis — one ``HGET`` of the
token's id and a constant-time compare of SHA-256 digests, about as much as loading a session — so a token
costs no NATS round trip and a revocation takes effect on the very next request (nothing is cached).

:func:`bearer_middleware` (in the app's middleware, after the session's) looks at requests to ``/api/v1/…``
only — the pages and ``/metrics`` never take a token — and not at ``public`` routes (the login, the
language), which need no credential. It puts in the scope's state either a :class:`TokenPrincipal` (the
token's id, name and role: ``guards.current_role`` answers that role, the session is not consulted) or a
:class:`BearerRefusal`, which the route's guard raises:

- 401 ``invalid-token`` (with ``WWW-Authenticate: Bearer error="invalid_token"``): malformed, unknown or
  revoked. Counted per client address (``ews:<site>:gateway:bearer-failures:<address>``, a window of
  ``FAILURE_WINDOW``): the first refusal of a window and the one that reaches ``FAILURE_LIMIT`` are
  recorded as ``AuditRecorded`` ``token-refused`` (so a misconfigured script or a guesser shows up in the
  audit stream without flooding it);
- 429 ``too-many-attempts`` (``Retry-After``): ``FAILURE_LIMIT`` refusals within the window — every bearer
  request of that address waits for the window's end, as wrong PINs do (a 256-bit secret cannot be
  guessed; this keeps a broken client from hammering Redis and the logs).

A valid token's use is noted (``ews_contracts.tokens.token_used_key``, at most once a minute per token and
process) for the token list's ``last_used_at``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ews_contracts.bus import publish_event
from ews_contracts.events import AuditRecorded
from ews_contracts.roles import Role
from ews_contracts.text import one_line
from ews_contracts.tokens import TokenRecord, digest_matches, token_id_of, token_used_key, tokens_key
from litestar.connection import ASGIConnection
from litestar.types import ASGIApp, Receive, Scope, Send
from pydantic import ValidationError

from .errors import ApiError
from .i18n import N_

log = logging.getLogger("ews.gateway-api.bearer")

API_PATH = "/api/v1/"
BEARER = "ews.bearer"  # key of the scope's state: a TokenPrincipal or a BearerRefusal
FAILURE_LIMIT = 20  # refused bearer requests of one address within FAILURE_WINDOW before it must wait
FAILURE_WINDOW = 600  # seconds
USED_EVERY = 60.0  # seconds between two notes of one token's use (per process)


@dataclass(frozen=True)
class TokenPrincipal:
    id: str
    name: str
    role: Role


@dataclass(frozen=True)
class BearerRefusal:
    status: int
    retry_after: int = 0

    def error(self) -> ApiError:
        if self.status == 429:
            return ApiError(
                429,
                "too-many-attempts",
                N_("too many requests with a wrong token from this address: try again in %(seconds)s s"),
                headers={"Retry-After": str(self.retry_after)},
                seconds=self.retry_after,
            )
        return ApiError(
            401,
            "invalid-token",
            N_("this token is not valid (mistyped, or revoked): ask the administrator for a new one"),
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


def bearer_token(scope: Scope) -> str | None:
    """The token of an ``Authorization: Bearer …`` header ("" for an empty one), else None."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer":
                return credentials.strip()
            return None
    return None


def principal(
    connection: ASGIConnection[Any, Any, Any, Any] | Scope,
) -> TokenPrincipal | BearerRefusal | None:
    """What the request's bearer token resolved to (None: no token, or not looked at)."""
    scope = connection if isinstance(connection, dict) else connection.scope
    return (scope.get("state") or {}).get(BEARER)


def token_of(connection: ASGIConnection[Any, Any, Any, Any]) -> TokenPrincipal | None:
    """The machine token that authenticated this request, if one did."""
    found = principal(connection)
    return found if isinstance(found, TokenPrincipal) else None


def failures_key(site: str, client: str) -> str:
    return f"ews:{site}:gateway:bearer-failures:{client or '-'}"


def _is_public(scope: Scope) -> bool:
    from .guards import public  # guards imports this module

    handler = scope.get("route_handler")
    if handler is None:
        return False
    return any(public in (getattr(layer, "guards", None) or []) for layer in handler.ownership_layers)


async def audit_refusal(state: Any, client: str, role: str, detail: str) -> None:
    event = AuditRecorded(
        site=state.identity, action="token-refused", role=role, client=client, detail=detail
    )
    log.info("audit: token-refused role=%s client=%s %s", role, client, detail)
    if state.broker is None:
        return
    try:
        await publish_event(state.broker, event)
    except Exception as exc:  # the answer (401/429) does not depend on the audit stream
        log.warning("audit event token-refused not published: %s", one_line(exc))


async def resolve(state: Any, token: str, client: str) -> TokenPrincipal | BearerRefusal:
    """Check ``token`` (sent from ``client``) against the auth service's records."""
    site = state.identity  # the tokens' owner: the site, or the hub
    redis = state.redis
    key = failures_key(site, client)
    token_id = token_id_of(token)
    pipe = redis.pipeline(transaction=False)
    pipe.get(key)
    if token_id is not None:
        pipe.hget(tokens_key(site), token_id)
    answers = await pipe.execute()
    failures = int(answers[0] or 0)
    if failures >= FAILURE_LIMIT:
        return BearerRefusal(429, retry_after=max(1, int(await redis.ttl(key))))
    raw = answers[1] if token_id is not None else None
    record = None
    if raw is not None:
        try:
            record = TokenRecord.model_validate_json(raw)
        except ValidationError:
            log.warning("token %s: unreadable record ignored", token_id)
    if record is not None and digest_matches(record.digest, token):
        await _note_use(state, record.id)
        return TokenPrincipal(id=record.id, name=record.name, role=record.role)
    pipe = redis.pipeline(transaction=False)
    pipe.set(key, 0, ex=FAILURE_WINDOW, nx=True)
    pipe.incr(key)
    _, failures = await pipe.execute()
    if failures in (1, FAILURE_LIMIT):
        if token_id is None:
            what = "a malformed token"
        elif raw is None:
            what = f"token {token_id}: unknown or revoked"
        else:
            what = f"token {token_id}: wrong secret"
        detail = f"{what}; refusal {failures} from this address within {FAILURE_WINDOW} s"
        if failures == FAILURE_LIMIT:
            detail += f": its bearer requests wait until the window ends (limit {FAILURE_LIMIT})"
        await audit_refusal(state, client, str(record.role) if record else "unknown", detail)
    return BearerRefusal(401)


async def _note_use(state: Any, token_id: str) -> None:
    noted: dict[str, float] = state.token_use_noted
    now = time.monotonic()
    if now - noted.get(token_id, -USED_EVERY) < USED_EVERY:
        return
    noted[token_id] = now
    with contextlib.suppress(Exception):  # a lost date must never refuse a request
        when = datetime.now(UTC).isoformat(timespec="seconds")
        await state.redis.hset(token_used_key(state.identity), token_id, when)


def bearer_middleware(app: ASGIApp) -> ASGIApp:
    """Resolve the bearer token of a request to ``/api/v1/…`` (see the module's docstring)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(API_PATH):
            token = bearer_token(scope)
            if token is not None and not _is_public(scope):
                client = scope.get("client")
                host = client[0] if client else ""
                resolved = await resolve(scope["app"].state, token, host)
                scope.setdefault("state", {})[BEARER] = resolved  # type: ignore[typeddict-unknown-key]
        await app(scope, receive, send)

    return middleware
