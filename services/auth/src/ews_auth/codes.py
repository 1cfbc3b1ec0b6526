"""The four roles' PIN/PUK codes, hashed with argon2 in Redis, and the browsers' unlock tokens.

Redis keys (``<p>`` = ``ews:<site>:auth``):

- ``<p>:codes:<role>`` — JSON ``{"pin": <argon2>, "puk": <argon2>, "default": bool, "stamp": <random>}``;
  created with the factory codes of requirement A2 on first start (``SET NX``: never overwrites changed
  codes). ``stamp`` changes with every code change.
- ``<p>:unlock:<sha256(token)>`` — ``"<role> <stamp>"``: the role a browser's unlock token (its completed
  PUK step) is valid for, with a long TTL. A token is valid only while its role's ``stamp`` is unchanged,
  so a code change revokes every unlock of that role at once. Tokens are 256-bit random strings, so a
  fast hash is enough to keep a Redis dump from being usable; only the browser holds the token itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from ews_contracts.roles import DEFAULT_CODES, Role, normalize_puk

UNLOCK_TTL = 400 * 86_400  # seconds: browsers keep cookies at most 400 days
PIN_RE = re.compile(r"^\d{5}$")
PUK_RE = re.compile(r"^\d{14}$")
HASH_CONCURRENCY = 2  # argon2 runs at most this many at once (each uses 64 MiB by default)


class CodeFormatError(ValueError):
    """A PIN or PUK that cannot be a code (wrong length, not digits)."""


class PinInUseError(ValueError):
    """The new PIN is another role's PIN (the PIN identifies the role, so PINs are unique)."""


def check_pin(pin: str) -> str:
    pin = pin.strip()
    if not PIN_RE.match(pin):
        raise CodeFormatError("the PIN has 5 digits")
    return pin


def check_puk(puk: str) -> str:
    digits = normalize_puk(puk)
    if not PUK_RE.match(digits):
        raise CodeFormatError("the PUK has 14 digits (5 4 5)")
    return digits


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class RoleCodes:
    role: Role
    pin_hash: str
    puk_hash: str
    default: bool
    stamp: str = ""


class CodeStore:
    """Roles' hashed codes and unlock tokens of one site in Redis."""

    def __init__(self, redis: Any, site: str, hasher: PasswordHasher | None = None) -> None:
        self.redis = redis
        self.prefix = f"ews:{site}:auth"
        self.hasher = hasher or PasswordHasher()
        self._slots = asyncio.Semaphore(HASH_CONCURRENCY)
        self._dummy: str | None = None  # a hash to verify against when no role matched (same timing)

    def codes_key(self, role: Role | str) -> str:
        return f"{self.prefix}:codes:{role}"

    def unlock_key(self, token: str) -> str:
        return f"{self.prefix}:unlock:{token_digest(token)}"

    # --- codes ---------------------------------------------------------------------------------------

    async def _hash(self, secret: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self.hasher.hash, secret)

    async def _verify(self, hashed: str, secret: str) -> bool:
        def verify() -> bool:
            try:
                return self.hasher.verify(hashed, secret)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        async with self._slots:
            return await asyncio.to_thread(verify)

    async def _record(self, pin: str, puk: str, role: Role) -> str:
        pin_hash, puk_hash = await asyncio.gather(self._hash(pin), self._hash(puk))
        default = DEFAULT_CODES[role] == (pin, puk)
        return json.dumps(
            {"pin": pin_hash, "puk": puk_hash, "default": default, "stamp": secrets.token_hex(8)}
        )

    async def ensure_defaults(self) -> list[Role]:
        """Create the factory codes of every role that has none yet; returns the roles created."""
        created = []
        for role, (pin, puk) in DEFAULT_CODES.items():
            if await self.redis.exists(self.codes_key(role)):
                continue
            if await self.redis.set(self.codes_key(role), await self._record(pin, puk, role), nx=True):
                created.append(role)
        return created

    async def load(self) -> list[RoleCodes]:
        roles = list(Role)
        raws = await self.redis.mget([self.codes_key(r) for r in roles])
        out = []
        for role, raw in zip(roles, raws, strict=True):
            if raw is None:
                continue
            record = json.loads(raw)
            out.append(
                RoleCodes(
                    role, record["pin"], record["puk"], bool(record.get("default")), record.get("stamp", "")
                )
            )
        return out

    async def get(self, role: Role | str) -> RoleCodes | None:
        return next((r for r in await self.load() if r.role == role), None)

    async def role_for_pin(self, pin: str) -> RoleCodes | None:
        """The role whose PIN this is (PINs are unique per site), checked against every role at once."""
        records = await self.load()
        matches = await asyncio.gather(*(self._verify(r.pin_hash, pin) for r in records))
        return next((r for r, ok in zip(records, matches, strict=True) if ok), None)

    async def verify_pin(self, codes: RoleCodes, pin: str) -> bool:
        return await self._verify(codes.pin_hash, pin)

    async def check_puk(self, codes: RoleCodes, puk: str) -> bool:
        return await self._verify(codes.puk_hash, puk)

    async def check_both(self, pin: str, puk: str) -> tuple[RoleCodes | None, RoleCodes | None]:
        """(the role whose PIN this is, the role whose PIN *and* PUK these are). Takes the same time
        whether the PIN matched or not, so the answer time does not tell a guesser that a PIN is right."""
        codes = await self.role_for_pin(pin)
        if codes is None:
            if self._dummy is None:
                self._dummy = await self._hash(secrets.token_hex(7))
            await self._verify(self._dummy, puk)
            return None, None
        return codes, (codes if await self.check_puk(codes, puk) else None)

    async def set_codes(self, role: Role, pin: str, puk: str) -> None:
        """Change a role's codes; every unlock of that role is revoked (new stamp). PINs stay unique."""
        pin, puk = check_pin(pin), check_puk(puk)
        owner = await self.role_for_pin(pin)
        if owner is not None and owner.role != role:
            raise PinInUseError("this PIN is already used by another role; choose another one")
        await self.redis.set(self.codes_key(role), await self._record(pin, puk, role))

    # --- unlock tokens -------------------------------------------------------------------------------

    async def issue_unlock(self, codes: RoleCodes) -> str:
        token = secrets.token_urlsafe(32)
        await self.redis.set(self.unlock_key(token), f"{codes.role} {codes.stamp}", ex=UNLOCK_TTL)
        return token

    async def unlocked_role(self, token: str | None, records: list[RoleCodes] | None = None) -> str | None:
        """The role this token unlocks, if it is still valid (not Locked, codes unchanged since)."""
        if not token:
            return None
        raw = await self.redis.get(self.unlock_key(token))
        if raw is None:
            return None
        role, _, stamp = (raw.decode() if isinstance(raw, bytes) else raw).partition(" ")
        if records is None:
            records = await self.load()
        current = next((r for r in records if r.role == role), None)
        return role if current is not None and current.stamp == stamp else None

    async def revoke_unlock(self, token: str) -> bool:
        if not token:
            return False
        return bool(await self.redis.delete(self.unlock_key(token)))
