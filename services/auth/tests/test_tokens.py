"""Machine tokens in the auth service: created with a role (user by default), the secret returned once and
stored as its SHA-256, listed, revoked, only by a role with manage-tokens, every creation and revocation
audited — against a real redis-server; the request/reply and audit side against a real nats-server."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator

import nats
import pytest
import redis.asyncio as aioredis
from argon2 import PasswordHasher
from ews_auth import service as auth_service
from ews_auth import tokens as auth_tokens
from ews_auth.codes import CodeStore
from ews_auth.service import AuthService, serve
from ews_auth.tokens import TokenError, TokenStore
from ews_contracts.bus import make_broker
from ews_contracts.events import AuditRecorded
from ews_contracts.settings import Settings
from ews_contracts.subjects import auth_rpc
from ews_contracts.tokens import (
    TOKEN_RE,
    TokenCreateReply,
    TokenCreateRequest,
    TokenListReply,
    TokenRevokeReply,
    TokenRevokeRequest,
    digest_matches,
    token_allowed,
    token_id_of,
    tokens_key,
)

pytestmark = pytest.mark.integration

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
async def redis(redis_clean: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_clean)
    yield client
    await client.aclose()


@pytest.fixture
async def auth(redis: aioredis.Redis, tmp_path) -> AuthService:
    svc = AuthService(Settings(EWS_DATA_DIR=str(tmp_path)), redis=redis, hasher=FAST)
    svc.audited = []  # type: ignore[attr-defined]
    original = svc.audit

    async def audit(action, role, client, detail=""):
        svc.audited.append((action, role, client, detail))  # type: ignore[attr-defined]
        await original(action, role, client, detail)

    svc.audit = audit  # type: ignore[method-assign]
    return svc


def test_token_format_and_permissions() -> None:
    from ews_contracts.tokens import new_token, token_digest

    token_id, token = new_token()
    assert TOKEN_RE.match(token) and token_id_of(token) == token_id and len(token) == 4 + 12 + 1 + 43
    assert new_token()[1] != token
    assert digest_matches(token_digest(token), token) and not digest_matches(token_digest(token), token + "x")
    for bad in ("", "ews_", "Bearer x", f"ews_{token_id}_short", token.upper(), token + "=", f"xyz{token[3:]}"):
        assert token_id_of(bad) is None, bad
    # a token never manages codes or tokens, whatever its role; otherwise its role's permissions
    assert not token_allowed("administrator", "manage-codes") and not token_allowed("administrator", "manage-tokens")
    assert token_allowed("administrator", "configure-site") and token_allowed("user", "view-consumption")
    assert not token_allowed("user", "command-devices") and not token_allowed(None, "view-consumption")


async def test_store_keeps_the_digest_only(redis: aioredis.Redis) -> None:
    store = TokenStore(redis, "demo")
    record, token = await store.create("  Grafana\n", "user", "administrator")
    assert record.name == "Grafana" and record.role == "user" and record.created_by == "administrator"
    assert token.startswith(f"ews_{record.id}_")
    raw = await redis.hget(tokens_key("demo"), record.id)
    stored = json.loads(raw)
    assert stored["digest"] == hashlib.sha256(token.encode()).hexdigest()
    for key in await redis.keys("*"):
        assert token.encode() not in key
        if (await redis.type(key)) == b"hash":
            assert all(token.encode() not in v for v in (await redis.hgetall(key)).values())
    listed = await store.list()
    assert [t.id for t in listed] == [record.id] and "digest" not in listed[0].model_dump()
    with pytest.raises(TokenError, match="already called") as exc:
        await store.create("grafana", "installer", "administrator")
    assert exc.value.reason == "name-in-use"
    for name, role in (("", "user"), ("x" * 65, "user"), ("tab\x07bell", "user"), ("ok", "root")):
        with pytest.raises(TokenError) as exc:
            await store.create(name, role, "administrator")
        assert exc.value.reason == "bad-request"
    revoked = await store.revoke(record.id)
    assert revoked.id == record.id and await store.list() == []
    with pytest.raises(TokenError) as exc:
        await store.revoke(record.id)
    assert exc.value.reason == "unknown-token"


async def test_at_most_max_tokens(redis: aioredis.Redis, monkeypatch) -> None:
    monkeypatch.setattr(auth_tokens, "MAX_TOKENS", 3)
    store = TokenStore(redis, "demo")
    for n in range(3):
        await store.create(f"t{n}", "user", "administrator")
    with pytest.raises(TokenError) as exc:
        await store.create("t3", "user", "administrator")
    assert exc.value.reason == "too-many"


async def test_service_create_and_revoke_are_for_manage_tokens_and_audited(auth: AuthService) -> None:
    for role in ("installer", "greenUp", "user", "", "nobody"):
        reply = await auth.create_token(TokenCreateRequest(name="x", by_role=role, client="c"))
        assert not reply.ok and reply.reason == "forbidden" and reply.secret is None
    reply = await auth.create_token(TokenCreateRequest(name="Home Assistant", by_role="administrator", client="c"))
    assert reply.ok and reply.token.role == "user" and TOKEN_RE.match(reply.secret)  # read-only by default
    other = await auth.create_token(
        TokenCreateRequest(name="Backups", role="installer", by_role="administrator", client="c")
    )
    assert other.ok and other.token.role == "installer"
    dupe = await auth.create_token(TokenCreateRequest(name="home assistant", by_role="administrator"))
    assert not dupe.ok and dupe.reason == "name-in-use"
    assert [t.name for t in (await auth.list_tokens()).tokens] == ["Home Assistant", "Backups"]
    refused = await auth.revoke_token(TokenRevokeRequest(id=reply.token.id, by_role="installer"))
    assert not refused.ok and refused.reason == "forbidden"
    revoked = await auth.revoke_token(TokenRevokeRequest(id=reply.token.id, by_role="administrator", client="c"))
    assert revoked.ok and revoked.token.id == reply.token.id
    again = await auth.revoke_token(TokenRevokeRequest(id=reply.token.id, by_role="administrator"))
    assert not again.ok and again.reason == "unknown-token"
    assert auth.audited == [  # type: ignore[attr-defined]
        ("token-created", "administrator", "c", f"token {reply.token.id} 'Home Assistant' with the user role"),
        ("token-created", "administrator", "c", f"token {other.token.id} 'Backups' with the installer role"),
        ("token-revoked", "administrator", "c", f"token {reply.token.id} 'Home Assistant' with the user role"),
    ]
    assert all(reply.secret not in detail for *_, detail in auth.audited)  # type: ignore[attr-defined]


async def test_token_operations_over_nats_are_audited(settings: Settings, redis_url: str, monkeypatch) -> None:
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
        create = TokenCreateRequest(name="Grafana", role="greenUp", by_role="administrator", client="t")
        reply = None
        for _ in range(100):
            try:
                msg = await broker.request(create.model_dump(), auth_rpc("demo", "token-create"), timeout=2)
                reply = TokenCreateReply.model_validate_json(msg.body)
                break
            except Exception:
                await asyncio.sleep(0.05)
        assert reply is not None and reply.ok and reply.token.role == "greenUp" and reply.secret
        msg = await broker.request(b"{}", auth_rpc("demo", "token-list"), timeout=2)
        listed = TokenListReply.model_validate_json(msg.body)
        assert [t.name for t in listed.tokens] == ["Grafana"] and reply.secret.encode() not in msg.body
        msg = await broker.request(b"{not json", auth_rpc("demo", "token-create"), timeout=2)
        assert TokenCreateReply.model_validate_json(msg.body).reason == "bad-request"
        revoke = TokenRevokeRequest(id=reply.token.id, by_role="administrator", client="t")
        msg = await broker.request(revoke.model_dump(), auth_rpc("demo", "token-revoke"), timeout=2)
        assert TokenRevokeReply.model_validate_json(msg.body).ok
        msg = await broker.request(b"{}", auth_rpc("demo", "token-revoke"), timeout=2)
        assert TokenRevokeReply.model_validate_json(msg.body).reason == "bad-request"

        nc = await nats.connect(settings.nats_url)
        try:
            sub = await nc.jetstream().pull_subscribe("ews.demo.audit.*", stream="EWS_AUDIT")
            events = [AuditRecorded.model_validate_json(m.data) for m in await sub.fetch(10, timeout=2)]
        finally:
            await nc.close()
        assert [(e.action, e.role, e.client) for e in events] == [
            ("token-created", "administrator", "t"),
            ("token-revoked", "administrator", "t"),
        ]
        assert events[0].subject == "ews.demo.audit.administrator"
        assert "'Grafana' with the greenUp role" in events[0].detail
    finally:
        await broker.stop()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
