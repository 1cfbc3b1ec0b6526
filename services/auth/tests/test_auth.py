"""Auth: hashed codes, PIN/PUK login, Logout vs Lock, progressive delay — against a real redis-server;
the request/reply and audit side against a real nats-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import nats
import pytest
import redis.asyncio as aioredis
from argon2 import PasswordHasher
from ews_auth import service as auth_service
from ews_auth.codes import UNLOCK_TTL, CodeFormatError, CodeStore, check_puk, token_digest
from ews_auth.service import FREE_FAILURES, AuthService, serve
from ews_contracts.bus import make_broker
from ews_contracts.events import AuditRecorded, LoginReply, LoginRequest, RevokeUnlockRequest
from ews_contracts.roles import DEFAULT_CODES, Role
from ews_contracts.settings import Settings
from ews_contracts.subjects import auth_rpc

pytestmark = pytest.mark.integration

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)  # real argon2id, cheap for tests
ADMIN_PIN, ADMIN_PUK = "99999", "00000 9999 00000"


@pytest.fixture
async def redis(redis_clean: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_clean)
    yield client
    await client.aclose()


@pytest.fixture
async def auth(redis: aioredis.Redis, tmp_path) -> AuthService:
    svc = AuthService(Settings(EWS_DATA_DIR=str(tmp_path)), redis=redis, hasher=FAST)
    await svc.codes.ensure_defaults()
    return svc


def test_puk_format() -> None:
    assert check_puk("00000 9999 00000") == check_puk("00000999900000") == "00000999900000"
    with pytest.raises(CodeFormatError, match="14 digits"):
        check_puk("0000 9999 00000")


async def test_codes_are_stored_hashed_and_created_once(redis: aioredis.Redis) -> None:
    store = CodeStore(redis, "demo", FAST)
    assert sorted(await store.ensure_defaults()) == sorted(Role)
    assert await store.ensure_defaults() == []  # second start: nothing overwritten
    for role, (pin, puk) in DEFAULT_CODES.items():
        raw = (await redis.get(f"ews:demo:auth:codes:{role}")).decode()
        assert pin not in raw and puk not in raw
        record = json.loads(raw)
        assert record["pin"].startswith("$argon2id$") and record["puk"].startswith("$argon2id$")
        assert record["default"] is True
        assert (await store.role_for_pin(pin)).role == role
    assert await store.role_for_pin("12345") is None


async def test_changed_codes_are_not_default_and_pins_stay_unique(redis: aioredis.Redis) -> None:
    store = CodeStore(redis, "demo", FAST)
    await store.ensure_defaults()
    with pytest.raises(ValueError, match="already used by another role"):
        await store.set_codes(Role.USER, "99999", "12345678901234")
    await store.set_codes(Role.USER, "24680", "1357924 6801357")
    codes = await store.role_for_pin("24680")
    assert codes.role == Role.USER and codes.default is False
    assert await store.role_for_pin("11111") is None
    assert await store.check_puk(codes, "13579246801357")


async def test_first_login_needs_the_puk_then_issues_an_unlock_token(auth: AuthService, redis) -> None:
    reply = await auth.login(LoginRequest(pin=ADMIN_PIN, client="c1"))
    assert (reply.ok, reply.puk_required, reply.role, reply.unlock_token) == (False, True, None, None)

    reply = await auth.login(LoginRequest(pin=ADMIN_PIN, puk=ADMIN_PUK, client="c1"))
    assert reply.ok and reply.role == "administrator" and reply.default_codes is True
    token = reply.unlock_token
    assert token and len(token) >= 40
    # stored hashed, with a long TTL
    assert await redis.get(f"ews:demo:auth:unlock:{token}") is None
    key = f"ews:demo:auth:unlock:{token_digest(token)}"
    assert (await redis.get(key)) == b"administrator"
    assert UNLOCK_TTL - 10 < await redis.ttl(key) <= UNLOCK_TTL


async def test_pin_only_after_logout_puk_after_lock(auth: AuthService) -> None:
    token = (await auth.login(LoginRequest(pin=ADMIN_PIN, puk=ADMIN_PUK))).unlock_token
    assert (await auth.revoke(RevokeUnlockRequest(unlock_token=token, role="administrator", mode="logout")))[
        "revoked"
    ] is False
    reply = await auth.login(LoginRequest(pin=ADMIN_PIN, unlock_token=token))
    assert reply.ok and reply.role == "administrator" and reply.unlock_token is None

    # the unlock is per role: another role's PIN on this browser still needs its PUK
    reply = await auth.login(LoginRequest(pin="11111", unlock_token=token))
    assert not reply.ok and reply.puk_required

    assert (await auth.revoke(RevokeUnlockRequest(unlock_token=token, role="administrator", mode="lock")))[
        "revoked"
    ] is True
    reply = await auth.login(LoginRequest(pin=ADMIN_PIN, unlock_token=token))
    assert not reply.ok and reply.puk_required
    assert (await auth.login(LoginRequest(pin=ADMIN_PIN, puk="00000999900000", unlock_token=token))).ok


async def test_wrong_codes_and_progressive_delay(auth: AuthService) -> None:
    reply = await auth.login(LoginRequest(pin="12345", client="guesser"))
    assert (reply.ok, reply.error, reply.retry_after) == (False, "wrong PIN", None)
    reply = await auth.login(LoginRequest(pin=ADMIN_PIN, puk="00000 0000 00000", client="guesser"))
    assert (reply.ok, reply.error, reply.puk_required) == (False, "wrong PUK", False)
    # malformed codes are refused without counting as guesses
    reply = await auth.login(LoginRequest(pin="12", client="guesser"))
    assert (reply.ok, reply.error) == (False, "the PIN has 5 digits")
    for _ in range(FREE_FAILURES - 2):
        assert (await auth.login(LoginRequest(pin="12345", client="guesser"))).retry_after is None
    reply = await auth.login(LoginRequest(pin="12345", client="guesser"))
    assert reply.retry_after == 1.0 and "too many wrong codes" in reply.error
    # blocked: even the right codes wait; another client is not affected
    reply = await auth.login(LoginRequest(pin=ADMIN_PIN, puk=ADMIN_PUK, client="guesser"))
    assert not reply.ok and 0 < reply.retry_after <= 1.0
    assert (await auth.login(LoginRequest(pin=ADMIN_PIN, puk=ADMIN_PUK, client="other"))).ok
    await asyncio.sleep(1.05)
    reply = await auth.login(LoginRequest(pin="12345", client="guesser"))
    assert reply.retry_after == 2.0  # doubled
    await asyncio.sleep(2.05)
    assert (await auth.login(LoginRequest(pin=ADMIN_PIN, puk=ADMIN_PUK, client="guesser"))).ok
    # a success clears the count
    assert (await auth.login(LoginRequest(pin="12345", client="guesser"))).retry_after is None


async def test_serve_answers_over_nats_and_audits(settings: Settings, redis_url: str, monkeypatch) -> None:
    r = aioredis.from_url(redis_url)
    await r.flushdb()
    await r.aclose()
    monkeypatch.setattr(
        auth_service, "CodeStore", lambda redis, site, hasher=None: CodeStore(redis, site, FAST)
    )
    task = asyncio.create_task(serve(settings))
    broker = make_broker(settings.nats_url, "test-client")
    await broker.connect()
    try:
        subject = auth_rpc("demo", "login")
        reply = None
        for _ in range(100):
            try:
                msg = await broker.request(
                    LoginRequest(pin=ADMIN_PIN, client="t").model_dump(), subject, timeout=2
                )
                reply = LoginReply.model_validate_json(msg.body)
                break
            except Exception:
                await asyncio.sleep(0.05)
        assert reply is not None and reply.puk_required
        msg = await broker.request(
            LoginRequest(pin=ADMIN_PIN, puk=ADMIN_PUK, client="t").model_dump(), subject, timeout=2
        )
        reply = LoginReply.model_validate_json(msg.body)
        assert reply.ok and reply.role == "administrator"
        msg = await broker.request(b"{not json", subject, timeout=2)
        bad = LoginReply.model_validate_json(msg.body)
        assert not bad.ok and bad.error.startswith("malformed login request")
        msg = await broker.request(
            RevokeUnlockRequest(
                unlock_token=reply.unlock_token, role="administrator", mode="lock"
            ).model_dump(),
            auth_rpc("demo", "revoke-unlock"),
            timeout=2,
        )
        assert json.loads(msg.body) == {"ok": True, "revoked": True}

        nc = await nats.connect(settings.nats_url)
        try:
            js = nc.jetstream()
            sub = await js.pull_subscribe("ews.demo.audit.*", stream="EWS_AUDIT")
            msgs = await sub.fetch(10, timeout=2)
            events = [AuditRecorded.model_validate_json(m.data) for m in msgs]
        finally:
            await nc.close()
        assert [(e.action, e.role) for e in events] == [
            ("login-succeeded", "administrator"),
            ("lock", "administrator"),
        ]
    finally:
        await broker.stop()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
