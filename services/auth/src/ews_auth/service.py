"""Auth service: answers login, unlock-revocation and code-change requests over NATS request/reply.

Subjects (core NATS, queue group ``auth`` so several instances share the work); ``<site>`` is
``Settings.identity``: the site's id on a box or an edge, ``hub`` at the hub (its own four roles and codes,
which see every site; Redis keys ``ews:hub:auth…``):

- ``ews.<site>.rpc-auth.login`` — ``LoginRequest`` -> ``LoginReply``.
- ``ews.<site>.rpc-auth.revoke-unlock`` — ``RevokeUnlockRequest`` -> ``{"ok": bool, "revoked": bool}``.
- ``ews.<site>.rpc-auth.change-codes`` — ``ChangeCodesRequest`` -> ``ChangeCodesReply``.
- ``ews.<site>.rpc-auth.codes-status`` — ``{}`` -> ``CodesStatusReply``.
- ``ews.<site>.rpc-auth.token-create`` / ``token-list`` / ``token-revoke`` — the JSON API's machine tokens
  (``ews_contracts.tokens``; stored as SHA-256 in Redis by :mod:`ews_auth.tokens`, the secret returned once).

Login model (requirements A1–A4), two levels:

- the **browser unlock** (the PUK step): a PIN + PUK login issues an unlock token for that role, kept by
  the browser for up to 400 days across Logouts. Lock deletes it; a code change of the role (new stamp)
  invalidates every unlock of that role.
- the **session** (the PIN step, kept by the gateway in Redis): a browser holding a valid unlock for the
  role of the PIN needs the PIN only.

A browser without a valid unlock gets ``puk_required`` for *any* well-formed PIN: the PIN is only checked
together with the PUK, and a wrong pair is "wrong PIN or PUK" — so the answer (and its timing) never
tells a guesser that a PIN is right. Guessing limits: see :mod:`ews_auth.limits`. Every login, failure,
lockout, Logout, Lock, code change and token creation or revocation is published as ``AuditRecorded`` on
JetStream.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from argon2 import PasswordHasher
from ews_contracts.bus import ensure_hub_streams, ensure_streams, make_broker, publish_event
from ews_contracts.events import (
    AuditAction,
    AuditRecorded,
    ChangeCodesReply,
    ChangeCodesRequest,
    CodesStatusReply,
    LoginReply,
    LoginRequest,
    RevokeUnlockRequest,
)
from ews_contracts.roles import Permission, Role, allowed
from ews_contracts.settings import Settings
from ews_contracts.subjects import auth_rpc
from ews_contracts.tokens import (
    TokenCreateReply,
    TokenCreateRequest,
    TokenListReply,
    TokenRevokeReply,
    TokenRevokeRequest,
)
from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from prometheus_client import Counter
from pydantic import ValidationError

from .clock import Clock
from .codes import CodeFormatError, CodeStore, PinInUseError, check_pin, check_puk, token_digest
from .limits import FREE_FAILURES, ROLE_PIN_LIMIT, TOKEN_PIN_LIMIT, Limits
from .tokens import TokenError, TokenStore

log = logging.getLogger("ews.auth")

__all__ = ["FREE_FAILURES", "AuthService", "serve"]

BUSY_REPLY = "another sign-in from this address is in progress; try again in a moment"


SIGN_INS = Counter(
    "ews_auth_sign_ins_total",
    "Sign-in requests by outcome: succeeded, puk-asked, refused, delayed (guessing limit), unavailable",
    ["outcome"],
)


def _outcome(reply: LoginReply) -> str:
    if reply.ok:
        return "succeeded"
    if reply.unavailable:
        return "unavailable"
    if reply.puk_required:
        return "puk-asked"
    if reply.retry_after:
        return "delayed"
    return "refused"


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return str(exc).splitlines()[0]
    first = errors[0]
    return f"{'.'.join(map(str, first.get('loc', ()))) or 'body'}: {first.get('msg', '')}"


def _wait_text(seconds: float) -> str:
    return f"too many wrong codes: try again in {max(1, round(seconds))} s"


class AuthService:
    def __init__(
        self,
        settings: Settings,
        *,
        redis: Any | None = None,
        broker: NatsBroker | None = None,
        hasher: PasswordHasher | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        # whose codes these are: the site's on a box or an edge, the hub's own at the hub (Settings.identity)
        self.site = settings.identity
        self.redis = redis if redis is not None else aioredis.from_url(settings.redis_url)
        self._own_redis = redis is None
        self.codes = CodeStore(self.redis, self.site, hasher)
        self.limits = Limits(self.redis, self.site, clock)
        self.tokens = TokenStore(self.redis, self.site)
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

    async def _client_failure(
        self, client: str, reply: LoginReply, role: str | None, detail: str
    ) -> LoginReply:
        """Count an unsuccessful attempt of ``client``; audit it (and the delay it now imposes)."""
        delay = await self.limits.client_failed(client)
        if detail:
            await self.audit("login-failed", role, client, detail)
        if delay:
            await self.audit("locked-out", role, client, f"client delayed: next try in {delay:.0f} s")
        return reply

    async def login(self, request: LoginRequest) -> LoginReply:
        client = request.client
        try:
            pin = check_pin(request.pin)
            puk = check_puk(request.puk) if request.puk else None
        except CodeFormatError as exc:  # not a guess of a real code: refused without counting
            return LoginReply(ok=False, error=str(exc))
        if not await self.limits.acquire(client):
            return LoginReply(ok=False, error=BUSY_REPLY, retry_after=1.0)
        try:
            return await self._login(request, pin, puk)
        finally:
            await self.limits.release(client)

    async def _login(self, request: LoginRequest, pin: str, puk: str | None) -> LoginReply:
        client, token = request.client, request.unlock_token
        records = await self.codes.load()
        unlocked = await self.codes.unlocked_role(token, records) if token else None
        if puk is None and unlocked is not None and token:
            return await self._pin_only(client, pin, token, next(r for r in records if r.role == unlocked))
        wait = await self.limits.client_wait(client)
        if wait:
            return LoginReply(ok=False, error=_wait_text(wait), retry_after=wait)
        if puk is None:
            # no valid PUK step on this browser: the PUK is asked for whatever the PIN, so the answer says
            # nothing about the PIN; the step counts as an unsuccessful attempt until the login succeeds
            reply = LoginReply(ok=False, puk_required=True, error="enter the PUK as well")
            return await self._client_failure(client, reply, None, "")
        pin_owner, codes = await self.codes.check_both(pin, puk)
        if codes is None:
            role = pin_owner.role if pin_owner else None
            reply = LoginReply(ok=False, error="wrong PIN or PUK")
            return await self._client_failure(client, reply, role, "wrong PUK" if role else "wrong PIN")
        new_token = await self.codes.issue_unlock(codes)
        await self.limits.client_succeeded(client)
        await self.audit("login-succeeded", codes.role, client, "PIN + PUK")
        return LoginReply(ok=True, role=str(codes.role), unlock_token=new_token, default_codes=codes.default)

    async def _pin_only(self, client: str, pin: str, token: str, codes: Any) -> LoginReply:
        """PIN-only login on a browser whose PUK step for ``codes.role`` is valid."""
        role = codes.role
        suspended = await self.limits.role_pin_wait(role)
        if suspended:
            return LoginReply(
                ok=False,
                puk_required=True,
                error="PIN-only sign-in of this role is suspended after repeated wrong PINs: "
                "enter the PUK as well",
            )
        digest = token_digest(token)
        if await self.codes.verify_pin(codes, pin):
            await self.limits.token_succeeded(digest)
            await self.limits.client_succeeded(client)
            await self.audit("login-succeeded", role, client, "PIN (unlocked browser)")
            return LoginReply(ok=True, role=str(role), default_codes=codes.default)
        # not this browser's role's PIN (a typo, a guess, or another role's PIN): the PUK decides
        await self.audit("login-failed", role, client, "wrong PIN on an unlocked browser")
        reply = LoginReply(
            ok=False,
            puk_required=True,
            error="not the PIN of the role unlocked on this browser: try again, or enter the PUK as well",
        )
        if await self.limits.token_failed(digest) >= TOKEN_PIN_LIMIT:
            await self.codes.revoke_unlock(token)
            await self.limits.token_succeeded(digest)  # forget the count with the token
            await self.audit("locked-out", role, client, f"browser locked after {TOKEN_PIN_LIMIT} wrong PINs")
            reply.error = f"{TOKEN_PIN_LIMIT} wrong PINs: this browser is locked, enter the PIN and the PUK"
        if suspension := await self.limits.role_pin_failed(role):
            await self.audit(
                "locked-out",
                role,
                client,
                f"{ROLE_PIN_LIMIT} wrong PINs for this role: PIN-only sign-in suspended for "
                f"{suspension:.0f} s (PIN + PUK still works)",
            )
        return reply

    async def revoke(self, request: RevokeUnlockRequest) -> dict[str, Any]:
        revoked = False
        if request.mode == "lock":
            revoked = await self.codes.revoke_unlock(request.unlock_token)
        await self.audit(request.mode, request.role, request.client)
        return {"ok": True, "revoked": revoked}

    # --- codes -----------------------------------------------------------------------------------------

    async def change_codes(self, request: ChangeCodesRequest) -> ChangeCodesReply:
        try:
            role, by = Role(request.role), Role(request.by_role)
        except ValueError:
            roles = ", ".join(Role)
            return ChangeCodesReply(ok=False, reason="bad-request", error=f"unknown role: use one of {roles}")
        if by != role and not allowed(by, Permission.MANAGE_CODES):
            return ChangeCodesReply(
                ok=False, reason="forbidden", error=f"the {by} role may change its own codes only"
            )
        try:
            pin, puk = check_pin(request.pin), check_puk(request.puk)
        except CodeFormatError as exc:
            return ChangeCodesReply(ok=False, reason="bad-request", error=f"new codes: {exc}")
        client = request.client
        if not await self.limits.acquire(client):
            return ChangeCodesReply(ok=False, reason="too-many-attempts", error=BUSY_REPLY, retry_after=1.0)
        try:
            wait = await self.limits.client_wait(client)
            if wait:
                return ChangeCodesReply(
                    ok=False, reason="too-many-attempts", error=_wait_text(wait), retry_after=wait
                )
            if by == role:  # changing one's own codes: prove them first
                codes = await self.codes.get(role)
                ok = False
                if codes is not None and request.current_pin and request.current_puk:
                    try:
                        current_pin, current_puk = (
                            check_pin(request.current_pin),
                            check_puk(request.current_puk),
                        )
                        ok = await self.codes.verify_pin(codes, current_pin) and await self.codes.check_puk(
                            codes, current_puk
                        )
                    except CodeFormatError:
                        ok = False
                if not ok:
                    await self.limits.client_failed(client)
                    await self.audit("login-failed", role, client, "wrong current codes in a code change")
                    return ChangeCodesReply(
                        ok=False, reason="wrong-current-codes", error="the current PIN or PUK is wrong"
                    )
            try:
                await self.codes.set_codes(role, pin, puk)
            except PinInUseError as exc:
                await self.limits.client_failed(client)  # probing other roles' PINs costs like a guess
                return ChangeCodesReply(ok=False, reason="pin-in-use", error=str(exc))
        finally:
            await self.limits.release(client)
        await self.audit("code-changed", role, client, f"by {by}")
        return ChangeCodesReply(ok=True)

    async def codes_status(self) -> CodesStatusReply:
        return CodesStatusReply(default_codes={str(r.role): r.default for r in await self.codes.load()})

    # --- machine tokens ----------------------------------------------------------------------------------

    def _may_manage_tokens(self, by_role: str) -> str | None:
        if allowed(by_role, Permission.MANAGE_TOKENS):
            return None
        return f"the {by_role or 'anonymous'} role may not manage machine tokens"

    async def create_token(self, request: TokenCreateRequest) -> TokenCreateReply:
        if refusal := self._may_manage_tokens(request.by_role):
            return TokenCreateReply(ok=False, reason="forbidden", error=refusal)
        try:
            record, secret = await self.tokens.create(request.name, request.role, request.by_role)
        except TokenError as exc:
            return TokenCreateReply(ok=False, reason=exc.reason, error=str(exc))  # type: ignore[arg-type]
        await self.audit(
            "token-created",
            request.by_role,
            request.client,
            f"token {record.id} {record.name!r} with the {record.role} role",
        )
        return TokenCreateReply(ok=True, token=record.info(), secret=secret)

    async def list_tokens(self) -> TokenListReply:
        return TokenListReply(tokens=await self.tokens.list())

    async def revoke_token(self, request: TokenRevokeRequest) -> TokenRevokeReply:
        if refusal := self._may_manage_tokens(request.by_role):
            return TokenRevokeReply(ok=False, reason="forbidden", error=refusal)
        try:
            record = await self.tokens.revoke(request.id)
        except TokenError as exc:
            return TokenRevokeReply(ok=False, reason=exc.reason, error=str(exc))  # type: ignore[arg-type]
        await self.audit(
            "token-revoked",
            request.by_role,
            request.client,
            f"token {record.id} {record.name!r} with the {record.role} role",
        )
        return TokenRevokeReply(ok=True, token=record.info())

    # --- NATS ------------------------------------------------------------------------------------------

    def attach(self, broker: NatsBroker) -> None:
        """Register the request/reply handlers on ``broker`` (which also publishes the audit events)."""
        self.broker = broker

        async def on_login(msg: NatsMessage) -> dict[str, Any]:
            reply = await answer_login(msg.body)
            SIGN_INS.labels(_outcome(reply)).inc()
            return reply.model_dump()

        async def answer_login(body: bytes) -> LoginReply:
            try:
                request = LoginRequest.model_validate_json(body)
            except ValidationError as exc:
                return LoginReply(ok=False, error=f"malformed login request: {_first_error(exc)}")
            try:
                return await self.login(request)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                # the codes cannot be checked: say so (the gateway answers 503 "try again"), never "wrong code"
                log.warning("login: the code store (Redis) is unavailable: %s", " ".join(str(exc).split()))
                return LoginReply(ok=False, unavailable=True, error="the code store is unavailable")
            except Exception as exc:
                log.exception("login failed unexpectedly")
                return LoginReply(ok=False, unavailable=True, error=f"auth error: {type(exc).__name__}")

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

        async def on_change_codes(msg: NatsMessage) -> dict[str, Any]:
            try:
                request = ChangeCodesRequest.model_validate_json(msg.body)
            except ValidationError as exc:
                return ChangeCodesReply(
                    ok=False, reason="bad-request", error=f"malformed request: {_first_error(exc)}"
                ).model_dump()
            try:
                return (await self.change_codes(request)).model_dump()
            except Exception as exc:
                log.exception("change-codes failed unexpectedly")
                return ChangeCodesReply(ok=False, error=f"auth error: {type(exc).__name__}").model_dump()

        async def on_codes_status(msg: NatsMessage) -> dict[str, Any]:
            return (await self.codes_status()).model_dump()

        async def on_token_create(msg: NatsMessage) -> dict[str, Any]:
            try:
                request = TokenCreateRequest.model_validate_json(msg.body)
            except ValidationError as exc:
                return TokenCreateReply(
                    ok=False, reason="bad-request", error=f"malformed request: {_first_error(exc)}"
                ).model_dump(mode="json")
            try:
                return (await self.create_token(request)).model_dump(mode="json")
            except Exception as exc:
                log.exception("token-create failed unexpectedly")
                return TokenCreateReply(ok=False, error=f"auth error: {type(exc).__name__}").model_dump()

        async def on_token_list(msg: NatsMessage) -> dict[str, Any]:
            return (await self.list_tokens()).model_dump(mode="json")

        async def on_token_revoke(msg: NatsMessage) -> dict[str, Any]:
            try:
                request = TokenRevokeRequest.model_validate_json(msg.body)
            except ValidationError as exc:
                return TokenRevokeReply(
                    ok=False, reason="bad-request", error=f"malformed request: {_first_error(exc)}"
                ).model_dump(mode="json")
            try:
                return (await self.revoke_token(request)).model_dump(mode="json")
            except Exception as exc:
                log.exception("token-revoke failed unexpectedly")
                return TokenRevokeReply(ok=False, error=f"auth error: {type(exc).__name__}").model_dump()

        for operation, handler, description in (
            ("login", on_login, "LoginRequest -> LoginReply"),
            ("revoke-unlock", on_revoke, "RevokeUnlockRequest (Logout / Lock) -> {ok, revoked}"),
            ("change-codes", on_change_codes, "ChangeCodesRequest -> ChangeCodesReply"),
            ("codes-status", on_codes_status, "{} -> CodesStatusReply"),
            ("token-create", on_token_create, "TokenCreateRequest -> TokenCreateReply (the secret, once)"),
            ("token-list", on_token_list, "{} -> TokenListReply"),
            ("token-revoke", on_token_revoke, "TokenRevokeRequest -> TokenRevokeReply"),
        ):
            broker.subscriber(
                auth_rpc(self.site, operation),
                queue="auth",
                title=f"auth:{operation}",
                description=description,
            )(handler)

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
        if settings.hub:  # the hub's own audit stream; its other streams are the edges' (streamnames)
            await ensure_hub_streams(broker.connection.jetstream())
        else:
            await ensure_streams(broker)
        await broker.start()
        log.info("auth: answering %s", auth_rpc(service.site, "*"))
        await asyncio.Event().wait()  # until cancelled
    finally:
        try:
            await broker.stop()
        finally:
            await service.close()
