"""Auth: hashed codes, PIN/PUK login, Logout vs Lock, guessing limits (fake clock), code changes — against
a real redis-server; the request/reply and audit side against a real nats-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import nats
import pytest
import redis.asyncio as aioredis
from argon2 import PasswordHasher
from ews_auth import service as auth_service
from ews_auth.clock import FakeClock
from ews_auth.codes import UNLOCK_TTL, CodeFormatError, CodeStore, PinInUseError, check_puk, token_digest
from ews_auth.limits import (
    FREE_FAILURES,
    MAX_DELAY,
    ROLE_PIN_LIMIT,
    ROLE_SUSPENSION,
    TOKEN_PIN_LIMIT,
    client_delay,
)
from ews_auth.service import AuthService, serve
from ews_contracts.bus import make_broker
from ews_contracts.events import (
    AuditRecorded,
    ChangeCodesReply,
    ChangeCodesRequest,
    CodesStatusReply,
    LoginReply,
    LoginRequest,
    RevokeUnlockRequest,
)
from ews_contracts.roles import DEFAULT_CODES, Role
from ews_contracts.settings import Settings
from ews_contracts.subjects import auth_rpc

pytestmark = pytest.mark.integration

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)  # real argon2id, cheap for tests
ADMIN_PIN, ADMIN_PUK = "99999", "00000 9999 00000"
USER_PIN, USER_PUK = "11111", "00000 1111 00000"


@pytest.fixture
async def redis(redis_clean: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_clean)
    yield client
    await client.aclose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def auth(redis: aioredis.Redis, tmp_path, clock: FakeClock) -> AuthService:
    svc = AuthService(Settings(EWS_DATA_DIR=str(tmp_path)), redis=redis, hasher=FAST, clock=clock)
    await svc.codes.ensure_defaults()
    svc.audited = []  # type: ignore[attr-defined]
    original = svc.audit

    async def audit(action, role, client, detail=""):
        svc.audited.append((action, role, client, detail))  # type: ignore[attr-defined]
        await original(action, role, client, detail)

    svc.audit = audit  # type: ignore[method-assign]
    return svc


async def unlocked(auth: AuthService, pin: str = ADMIN_PIN, puk: str = ADMIN_PUK, client: str = "") -> str:
    reply = await auth.login(LoginRequest(pin=pin, puk=puk, client=client))
    assert reply.ok and reply.unlock_token
    return reply.unlock_token


def test_puk_format_and_delays() -> None:
    assert check_puk("00000 9999 00000") == check_puk("00000999900000") == "00000999900000"
    with pytest.raises(CodeFormatError, match="14 digits"):
        check_puk("0000 9999 00000")
    assert [client_delay(n) for n in range(FREE_FAILURES + 4)][FREE_FAILURES:] == [0.0, 1.0, 2.0, 4.0]
    assert client_delay(10_000) == MAX_DELAY  # no float overflow on very long attacks


async def test_codes_are_stored_hashed_and_created_once(redis: aioredis.Redis) -> None:
    store = CodeStore(redis, "demo", FAST)
    assert sorted(await store.ensure_defaults()) == sorted(Role)
    assert await store.ensure_defaults() == []  # second start: nothing overwritten
    for role, (pin, puk) in DEFAULT_CODES.items():
        raw = (await redis.get(f"ews:demo:auth:codes:{role}")).decode()
        assert pin not in raw and puk not in raw
        record = json.loads(raw)
        assert record["pin"].startswith("$argon2id$") and record["puk"].startswith("$argon2id$")
        assert record["default"] is True and record["stamp"]
        assert (await store.role_for_pin(pin)).role == role
    assert await store.role_for_pin("12345") is None


async def test_changed_codes_are_not_default_and_pins_stay_unique(redis: aioredis.Redis) -> None:
    store = CodeStore(redis, "demo", FAST)
    await store.ensure_defaults()
    with pytest.raises(PinInUseError, match="already used by another role"):
        await store.set_codes(Role.USER, "99999", "12345678901234")
    await store.set_codes(Role.USER, "24680", "1357924 6801357")
    codes = await store.role_for_pin("24680")
    assert codes.role == Role.USER and codes.default is False
    assert await store.role_for_pin("11111") is None
    assert await store.check_puk(codes, "13579246801357")
    await store.set_codes(Role.USER, "11111", "00000111100000")  # back to the factory codes
    assert (await store.get(Role.USER)).default is True


async def test_first_login_needs_the_puk_whatever_the_pin(auth: AuthService, redis) -> None:
    right = await auth.login(LoginRequest(pin=ADMIN_PIN, client="c1"))
    wrong = await auth.login(LoginRequest(pin="12345", client="c1"))
    # the same answer: a browser without a PUK step learns nothing about the PIN
    assert right == wrong == LoginReply(ok=False, puk_required=True, error="enter the PUK as well")

    reply = await auth.login(LoginRequest(pin=ADMIN_PIN, puk=ADMIN_PUK, client="c1"))
    assert reply.ok and reply.role == "administrator" and reply.default_codes is True
    token = reply.unlock_token
    assert token and len(token) >= 40
    # stored hashed, bound to the role's current codes, with a long TTL
    assert await redis.get(f"ews:demo:auth:unlock:{token}") is None
    key = f"ews:demo:auth:unlock:{token_digest(token)}"
    stamp = (await auth.codes.get(Role.ADMINISTRATOR)).stamp
    assert (await redis.get(key)) == f"administrator {stamp}".encode()
    assert UNLOCK_TTL - 10 < await redis.ttl(key) <= UNLOCK_TTL
    # a wrong pair does not say which of the two codes is wrong
    for pin, puk in ((ADMIN_PIN, "00000 0000 00000"), ("12345", ADMIN_PUK)):
        reply = await auth.login(LoginRequest(pin=pin, puk=puk, client="c1"))
        assert (reply.ok, reply.error, reply.puk_required) == (False, "wrong PIN or PUK", False)
    # malformed codes are refused without counting as guesses
    assert (await auth.login(LoginRequest(pin="12", client="c1"))).error == "the PIN has 5 digits"


async def test_pin_only_after_logout_puk_after_lock(auth: AuthService) -> None:
    token = await unlocked(auth)
    revoked = await auth.revoke(RevokeUnlockRequest(unlock_token=token, role="administrator", mode="logout"))
    assert revoked["revoked"] is False
    reply = await auth.login(LoginRequest(pin=ADMIN_PIN, unlock_token=token))
    assert reply.ok and reply.role == "administrator" and reply.unlock_token is None

    # the unlock is per role: another role's PIN on this browser still needs its PUK
    reply = await auth.login(LoginRequest(pin=USER_PIN, unlock_token=token))
    assert not reply.ok and reply.puk_required

    revoked = await auth.revoke(RevokeUnlockRequest(unlock_token=token, role="administrator", mode="lock"))
    assert revoked["revoked"] is True
    reply = await auth.login(LoginRequest(pin=ADMIN_PIN, unlock_token=token))
    assert not reply.ok and reply.puk_required
    assert (await auth.login(LoginRequest(pin=ADMIN_PIN, puk="00000999900000", unlock_token=token))).ok
    assert [a[0] for a in auth.audited] == [
        "login-succeeded",
        "logout",
        "login-succeeded",
        "login-failed",
        "lock",
        "login-succeeded",
    ]


async def test_progressive_delay_per_client(auth: AuthService, clock: FakeClock) -> None:
    for _ in range(FREE_FAILURES):
        reply = await auth.login(LoginRequest(pin="12345", puk="12345678901234", client="guesser"))
        assert reply.error == "wrong PIN or PUK" and reply.retry_after is None
    reply = await auth.login(LoginRequest(pin="12345", puk="12345678901234", client="guesser"))
    assert reply.error == "wrong PIN or PUK"  # this failure imposes the first delay
    reply = await auth.login(LoginRequest(pin=ADMIN_PIN, puk=ADMIN_PUK, client="guesser"))
    assert not reply.ok and reply.retry_after == 1.0 and "too many wrong codes" in reply.error
    assert ("locked-out", None, "guesser", "client delayed: next try in 1 s") in auth.audited
    # another client is not affected
    assert (await auth.login(LoginRequest(pin=ADMIN_PIN, puk=ADMIN_PUK, client="other"))).ok
    clock.advance(1.0)
    await auth.login(LoginRequest(pin="12345", puk="12345678901234", client="guesser"))
    assert (await auth.login(LoginRequest(pin=ADMIN_PIN, client="guesser"))).retry_after == 2.0  # doubled
    clock.advance(2.0)
    assert (await auth.login(LoginRequest(pin=ADMIN_PIN, puk=ADMIN_PUK, client="guesser"))).ok
    # a success clears the count
    reply = await auth.login(LoginRequest(pin="12345", puk="12345678901234", client="guesser"))
    assert reply.retry_after is None
    assert (await auth.login(LoginRequest(pin="12345", client="guesser"))).puk_required
    # and so does time: an hour after the last failure the count starts again
    for _ in range(FREE_FAILURES + 3):
        clock.advance(400)
        await auth.login(LoginRequest(pin="12345", client="slow"))
    clock.advance(3601)
    assert (await auth.login(LoginRequest(pin="12345", client="slow"))).retry_after is None
    assert (await auth.login(LoginRequest(pin="12345", client="slow"))).retry_after is None


async def test_parallel_attempts_of_one_client_do_not_race_past_the_delay(auth: AuthService) -> None:
    replies = await asyncio.gather(
        *(auth.login(LoginRequest(pin="12345", puk="12345678901234", client="burst")) for _ in range(20))
    )
    counted = [r for r in replies if r.error == "wrong PIN or PUK"]
    assert len(counted) <= FREE_FAILURES + 1  # the others waited (busy) or were delayed
    assert all(r.retry_after for r in replies if r not in counted)


async def test_a_thousand_wrong_pins_take_hours_and_the_real_user_still_gets_in(
    auth: AuthService, clock: FakeClock
) -> None:
    """1,000 wrong PINs from one client holding a (stolen) unlock token of the administrator."""
    stolen = await unlocked(auth, client="office-pc")
    imposed = 0.0
    replies = []
    for i in range(1000):
        request = LoginRequest(pin=f"{20000 + i:05d}", unlock_token=stolen, client="attacker")
        reply = await auth.login(request)
        while reply.retry_after:  # the attacker waits exactly as long as told, then tries
            clock.advance(reply.retry_after)
            imposed += reply.retry_after
            reply = await auth.login(request)
        assert not reply.ok
        replies.append(reply)
    # lockout: the unlock token is revoked after a few wrong PINs ...
    assert replies[TOKEN_PIN_LIMIT - 1].error.startswith(
        f"{TOKEN_PIN_LIMIT} wrong PINs: this browser is locked"
    )
    assert await auth.codes.unlocked_role(stolen) is None
    assert all(r.puk_required for r in replies)
    # ... and every further guess costs the client a growing delay: far more than an hour in total
    assert imposed > 3600, imposed
    assert any(a[0] == "locked-out" and "browser locked" in a[3] for a in auth.audited)
    # the real user, on another browser, gets in with PIN + PUK; the attacker still waits
    assert (await auth.login(LoginRequest(pin=ADMIN_PIN, puk=ADMIN_PUK, client="real-user"))).ok
    assert (await auth.login(LoginRequest(pin=ADMIN_PIN, puk=ADMIN_PUK, client="attacker"))).retry_after


async def test_many_browsers_guessing_a_role_suspend_pin_only_but_not_pin_and_puk(
    auth: AuthService, clock: FakeClock
) -> None:
    real = await unlocked(auth, USER_PIN, USER_PUK, client="real")
    for n in range(ROLE_PIN_LIMIT):  # a distributed guesser: each stolen browser tries a couple of PINs
        token = await unlocked(auth, USER_PIN, USER_PUK, client=f"bot{n}")
        reply = await auth.login(LoginRequest(pin="54321", unlock_token=token, client=f"bot{n}"))
        assert not reply.ok and reply.puk_required
    assert any(a[0] == "locked-out" and "PIN-only sign-in suspended" in a[3] for a in auth.audited)
    reply = await auth.login(LoginRequest(pin=USER_PIN, unlock_token=real, client="real"))
    assert not reply.ok and reply.puk_required and "suspended" in reply.error
    # PIN + PUK still works, on any browser; other roles are not affected
    assert (await auth.login(LoginRequest(pin=USER_PIN, puk=USER_PUK, unlock_token=real, client="real"))).ok
    admin = await unlocked(auth, client="admin-pc")
    assert (await auth.login(LoginRequest(pin=ADMIN_PIN, unlock_token=admin, client="admin-pc"))).ok
    clock.advance(ROLE_SUSPENSION)
    assert (await auth.login(LoginRequest(pin=USER_PIN, unlock_token=real, client="real"))).ok


async def test_code_changes(auth: AuthService) -> None:
    admin_token = await unlocked(auth)
    user_token = await unlocked(auth, USER_PIN, USER_PUK)
    # another role's codes: the user may not, the administrator may (without the user's codes)
    reply = await auth.change_codes(
        ChangeCodesRequest(role="installer", pin="12121", puk="1" * 14, by_role="user")
    )
    assert (reply.ok, reply.reason) == (False, "forbidden")
    reply = await auth.change_codes(
        ChangeCodesRequest(role="user", pin="99999", puk="1" * 14, by_role="administrator")
    )
    assert (reply.ok, reply.reason) == (False, "pin-in-use")
    reply = await auth.change_codes(
        ChangeCodesRequest(role="user", pin="1234", puk="1" * 14, by_role="administrator")
    )
    assert (reply.ok, reply.reason) == (False, "bad-request")
    reply = await auth.change_codes(
        ChangeCodesRequest(
            role="user", pin="24680", puk="13579 2468 13579", by_role="administrator", client="a"
        )
    )
    assert reply.ok
    assert ("code-changed", "user", "a", "by administrator") in auth.audited
    # old codes stop working, the user's unlocks are revoked, the new codes work
    assert not (await auth.login(LoginRequest(pin=USER_PIN, puk=USER_PUK))).ok
    assert await auth.codes.unlocked_role(user_token) is None
    assert (await auth.login(LoginRequest(pin="24680", unlock_token=user_token))).puk_required
    new_token = (await auth.login(LoginRequest(pin="24680", puk="13579246813579"))).unlock_token
    assert (await auth.login(LoginRequest(pin="24680", unlock_token=new_token))).ok
    assert await auth.codes.unlocked_role(admin_token) == "administrator"  # other roles untouched
    assert (await auth.codes_status()).default_codes == {
        "administrator": True,
        "greenUp": True,
        "installer": True,
        "user": False,
    }
    # one's own codes: only with the current ones
    own = ChangeCodesRequest(role="user", pin="13131", puk="2" * 14, by_role="user", client="u")
    assert (await auth.change_codes(own)).reason == "wrong-current-codes"
    wrong = own.model_copy(update={"current_pin": "24680", "current_puk": "0" * 14})
    assert (await auth.change_codes(wrong)).reason == "wrong-current-codes"
    right = own.model_copy(update={"current_pin": "24680", "current_puk": "13579 2468 13579"})
    assert (await auth.change_codes(right)).ok
    assert (await auth.login(LoginRequest(pin="13131", puk="2" * 14))).ok
    # the administrator's own codes need the current ones too
    admin_own = ChangeCodesRequest(role="administrator", pin="97531", puk="3" * 14, by_role="administrator")
    assert (await auth.change_codes(admin_own)).reason == "wrong-current-codes"


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
        change = ChangeCodesRequest(role="greenUp", pin="70707", puk="7" * 14, by_role="administrator")
        msg = await broker.request(change.model_dump(), auth_rpc("demo", "change-codes"), timeout=2)
        assert ChangeCodesReply.model_validate_json(msg.body).ok
        msg = await broker.request(b"{}", auth_rpc("demo", "change-codes"), timeout=2)
        assert ChangeCodesReply.model_validate_json(msg.body).reason == "bad-request"
        msg = await broker.request(b"{}", auth_rpc("demo", "codes-status"), timeout=2)
        assert CodesStatusReply.model_validate_json(msg.body).default_codes["greenUp"] is False

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
            ("code-changed", "greenUp"),
        ]
        assert events[-1].detail == "by administrator" and events[-1].subject == "ews.demo.audit.greenUp"
    finally:
        await broker.stop()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_sign_in_while_redis_is_down_is_unavailable_not_a_wrong_code(nats_url: str, tmp_path) -> None:
    """The codes cannot be checked: the reply says so (the gateway answers 503 "try again"), never 401."""
    from ews_runtime.servers import free_port

    dead = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    service = AuthService(Settings(EWS_DATA_DIR=str(tmp_path), NATS_URL=nats_url), redis=dead, hasher=FAST)
    broker = make_broker(nats_url, "auth")
    service.attach(broker)
    client = make_broker(nats_url, "test-client")
    try:
        await broker.connect()
        await broker.start()
        await client.connect()
        msg = await client.request(
            LoginRequest(pin=ADMIN_PIN, puk=ADMIN_PUK, client="t").model_dump(), auth_rpc("demo", "login"), timeout=5
        )
        reply = LoginReply.model_validate_json(msg.body)
        assert reply.unavailable and not reply.ok and not reply.puk_required
    finally:
        await client.stop()
        await broker.stop()
        await dead.aclose()
