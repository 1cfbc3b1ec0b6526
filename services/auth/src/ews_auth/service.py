"""Auth service: answers login and unlock-revocation requests over NATS request/reply.

Subjects (core NATS, queue group ``auth`` so several instances share the work):

- ``ews.<site>.rpc-auth.login`` — ``LoginRequest`` -> ``LoginReply``.
- ``ews.<site>.rpc-auth.revoke-unlock`` — ``RevokeUnlockRequest`` -> ``{"ok": bool, "revoked": bool}``.

Login model (requirements A1–A4): the PIN identifies the role. A browser holding a valid unlock token
for that role (issued by an earlier PIN + PUK login, kept across Logout) needs the PIN only; any other
browser must also give the PUK (the reply says ``puk_required``). A PIN + PUK login issues a new unlock
token. Logout keeps the token; Lock deletes it.

Guessing: every wrong code counts against the client (address); after ``FREE_FAILURES`` failures within
``FAILURE_WINDOW`` each further failure blocks the client for a doubling delay (``retry_after``, capped at
``MAX_DELAY``); a success clears the count. Every login, failure, lockout, Logout and Lock is published
as ``AuditRecorded`` on JetStream.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis
from argon2 import PasswordHasher
from ews_contracts.bus import ensure_streams, make_broker, publish_event
from ews_contracts.events import AuditAction, AuditRecorded, LoginReply, LoginRequest, RevokeUnlockRequest
from ews_contracts.settings import Settings
from ews_contracts.subjects import auth_rpc
from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from pydantic import ValidationError

from .codes import CodeFormatError, CodeStore, check_pin, check_puk

log = logging.getLogger("ews.auth")

FREE_FAILURES = 3  # wrong codes a client may enter before being slowed down
BASE_DELAY = 1.0  # seconds of the first block, doubled by each further failure
MAX_DELAY = 300.0
FAILURE_WINDOW = 900  # seconds a failure is remembered


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return str(exc).splitlines()[0]
    first = errors[0]
    return f"{'.'.join(map(str, first.get('loc', ()))) or 'body'}: {first.get('msg', '')}"


class Throttle:
    """Progressive delay per client after repeated wrong codes (Redis, shared by auth instances)."""

    def __init__(self, redis: Any, site: str) -> None:
        self.redis = redis
        self.prefix = f"ews:{site}:auth"

    def _keys(self, client: str) -> tuple[str, str]:
        who = client or "-"
        return f"{self.prefix}:failures:{who}", f"{self.prefix}:blocked:{who}"

    async def blocked_for(self, client: str) -> float:
        """Seconds this client must still wait (0 when it may try)."""
        ms = await self.redis.pttl(self._keys(client)[1])
        return ms / 1000 if ms and ms > 0 else 0.0

    async def failed(self, client: str) -> float:
        """Count a failure; returns the delay imposed now (0 while the client is within its free tries)."""
        failures, blocked = self._keys(client)
        count = await self.redis.incr(failures)
        await self.redis.expire(failures, FAILURE_WINDOW)
        if count <= FREE_FAILURES:
            return 0.0
        delay = min(MAX_DELAY, BASE_DELAY * 2 ** (count - FREE_FAILURES - 1))
        await self.redis.set(blocked, "1", px=int(delay * 1000))
        return delay

    async def succeeded(self, client: str) -> None:
        await self.redis.delete(*self._keys(client))


class AuthService:
    def __init__(
        self,
        settings: Settings,
        *,
        redis: Any | None = None,
        broker: NatsBroker | None = None,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self.settings = settings
        self.site = settings.site.site
        self.redis = redis if redis is not None else aioredis.from_url(settings.redis_url)
        self._own_redis = redis is None
        self.codes = CodeStore(self.redis, self.site, hasher)
        self.throttle = Throttle(self.redis, self.site)
        self.broker = broker  # None: audit events are only logged (unit tests)

    # --- audit -----------------------------------------------------------------------------------------

    async def audit(self, action: AuditAction, role: str | None, client: str, detail: str = "") -> None:
        event = AuditRecorded(
            site=self.site, action=action, role=role or "unknown", client=client, detail=detail
        )
        log.info("audit: %s role=%s client=%s %s", action, event.role, client, detail)
        if self.broker is None:
            return
        try:
            await publish_event(self.broker, event)
        except Exception as exc:  # the login itself must not fail because the audit stream is unreachable
            log.warning(
                "audit event %s not published: %s", action, " ".join(str(exc).split()) or type(exc).__name__
            )

    # --- login -----------------------------------------------------------------------------------------

    async def _failure(self, client: str, error: str, role: str | None = None) -> LoginReply:
        delay = await self.throttle.failed(client)
        await self.audit("login-failed", role, client, error)
        if delay:
            await self.audit("locked-out", role, client, f"next try in {delay:.0f} s")
            return LoginReply(ok=False, error=f"{error}; too many wrong codes", retry_after=delay)
        return LoginReply(ok=False, error=error)

    async def login(self, request: LoginRequest) -> LoginReply:
        client = request.client
        wait = await self.throttle.blocked_for(client)
        if wait:
            return LoginReply(
                ok=False, error=f"too many wrong codes: try again in {wait:.0f} s", retry_after=wait
            )
        try:
            pin = check_pin(request.pin)
            puk = check_puk(request.puk) if request.puk else None
        except CodeFormatError as exc:  # not a guess of a real code: refused without counting
            return LoginReply(ok=False, error=str(exc))
        codes = await self.codes.role_for_pin(pin)
        if codes is None:
            return await self._failure(client, "wrong PIN")
        role = codes.role
        token: str | None = None
        if puk is not None:
            if not await self.codes.check_puk(codes, puk):
                return await self._failure(client, "wrong PUK", role)
            token = await self.codes.issue_unlock(role)
        elif await self.codes.unlocked_role(request.unlock_token) != role:
            # the PIN is right, but this browser has not done (or has Locked) its PUK step
            return LoginReply(ok=False, puk_required=True, error="enter the PUK as well")
        await self.throttle.succeeded(client)
        await self.audit("login-succeeded", role, client, "PIN + PUK" if token else "PIN (unlocked browser)")
        return LoginReply(ok=True, role=str(role), unlock_token=token, default_codes=codes.default)

    async def revoke(self, request: RevokeUnlockRequest) -> dict[str, Any]:
        revoked = False
        if request.mode == "lock":
            revoked = await self.codes.revoke_unlock(request.unlock_token)
        await self.audit(request.mode, request.role, request.client)
        return {"ok": True, "revoked": revoked}

    # --- NATS ------------------------------------------------------------------------------------------

    def attach(self, broker: NatsBroker) -> None:
        """Register the request/reply handlers on ``broker`` (which also publishes the audit events)."""
        self.broker = broker

        async def on_login(msg: NatsMessage) -> dict[str, Any]:
            try:
                request = LoginRequest.model_validate_json(msg.body)
            except ValidationError as exc:
                return LoginReply(
                    ok=False, error=f"malformed login request: {_first_error(exc)}"
                ).model_dump()
            try:
                return (await self.login(request)).model_dump()
            except Exception as exc:
                log.exception("login failed unexpectedly")
                return LoginReply(ok=False, error=f"auth error: {type(exc).__name__}").model_dump()

        async def on_revoke(msg: NatsMessage) -> dict[str, Any]:
            try:
                request = RevokeUnlockRequest.model_validate_json(msg.body)
            except ValidationError as exc:
                return {"ok": False, "revoked": False, "error": f"malformed request: {_first_error(exc)}"}
            try:
                return await self.revoke(request)
            except Exception as exc:
                log.exception("revoke-unlock failed unexpectedly")
                return {"ok": False, "revoked": False, "error": f"auth error: {type(exc).__name__}"}

        broker.subscriber(
            auth_rpc(self.site, "login"),
            queue="auth",
            title="auth:login",
            description="LoginRequest -> LoginReply",
        )(on_login)
        broker.subscriber(
            auth_rpc(self.site, "revoke-unlock"),
            queue="auth",
            title="auth:revoke-unlock",
            description="RevokeUnlockRequest (Logout / Lock) -> {ok, revoked}",
        )(on_revoke)

    async def close(self) -> None:
        if self._own_redis:
            await self.redis.aclose()


async def serve(settings: Settings) -> None:
    service = AuthService(settings)
    broker = make_broker(settings.nats_url, "auth")
    service.attach(broker)
    try:
        created = await service.codes.ensure_defaults()
        if created:
            log.info("created the factory codes of %s (change them in Configuration)", ", ".join(created))
        await broker.connect()
        await ensure_streams(broker)
        await broker.start()
        log.info("auth: answering %s", auth_rpc(service.site, "*"))
        await asyncio.Event().wait()  # until cancelled
    finally:
        try:
            await broker.stop()
        finally:
            await service.close()
