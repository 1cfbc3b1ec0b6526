"""Machine tokens of the JSON API, kept by the auth service (the one writer of credentials).

Redis: the hash ``ews:<site>:auth:tokens`` (``ews_contracts.tokens.tokens_key``), id -> ``TokenRecord``
JSON with the SHA-256 of the token — never the token, which is returned once, by :meth:`TokenStore.create`.
The gateway-api reads that hash to check a bearer token (one ``HGET``); only this module writes it.
"""

from __future__ import annotations

from typing import Any

from ews_contracts.roles import Role
from ews_contracts.tokens import (
    MAX_TOKENS,
    TokenInfo,
    TokenRecord,
    clean_name,
    new_token,
    token_digest,
    tokens_key,
    utcnow,
)


class TokenError(ValueError):
    """A token that cannot be created or revoked; ``reason`` is a ``TokenRefusal``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class TokenStore:
    def __init__(self, redis: Any, site: str) -> None:
        self.redis = redis
        self.key = tokens_key(site)

    async def records(self) -> list[TokenRecord]:
        raw = await self.redis.hgetall(self.key)
        records = [TokenRecord.model_validate_json(value) for value in raw.values()]
        return sorted(records, key=lambda r: (r.created_at, r.id))

    async def list(self) -> list[TokenInfo]:
        return [r.info() for r in await self.records()]

    async def create(self, name: str, role: str, by: str) -> tuple[TokenRecord, str]:
        """A new token: its record (stored) and the token itself (shown once, stored nowhere)."""
        try:
            name = clean_name(name)
        except ValueError as exc:
            raise TokenError("bad-request", str(exc)) from None
        try:
            chosen = Role(role)
        except ValueError:
            raise TokenError("bad-request", f"unknown role {role!r}: use one of {', '.join(Role)}") from None
        existing = await self.records()
        if any(r.name.casefold() == name.casefold() for r in existing):
            raise TokenError("name-in-use", f"a token is already called {name!r}: choose another name")
        if len(existing) >= MAX_TOKENS:
            raise TokenError("too-many", f"at most {MAX_TOKENS} tokens: revoke one first")
        token_id, token = new_token()
        while await self.redis.hexists(self.key, token_id):  # 48 random bits: practically never
            token_id, token = new_token()
        record = TokenRecord(
            id=token_id,
            name=name,
            role=chosen,
            created_at=utcnow(),
            created_by=by,
            digest=token_digest(token),
        )
        await self.redis.hset(self.key, token_id, record.model_dump_json())
        return record, token

    async def revoke(self, token_id: str) -> TokenRecord:
        raw = await self.redis.hget(self.key, token_id)
        if raw is None or not await self.redis.hdel(self.key, token_id):
            raise TokenError("unknown-token", f"no token {token_id!r}: it may have been revoked already")
        return TokenRecord.model_validate_json(raw)
