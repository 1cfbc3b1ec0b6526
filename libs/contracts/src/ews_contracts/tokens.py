"""Machine tokens of the JSON API: the format, where they are kept, what they may do, and the auth
service's request/reply models that manage them.

A machine token is a named, revocable credential an administrator gives a program (Grafana, Home
Assistant, a script) instead of a person's PIN and PUK. It is sent as ``Authorization: Bearer <token>`` to
``/api/v1/…`` only — never to the pages, never to ``/metrics``.

- **Format:** ``ews_<id>_<secret>``: ``id`` 12 hex digits (shown in lists, used to revoke), ``secret`` 32
  random bytes, URL-safe base64 (43 characters) — 256 bits, so guessing is hopeless and the prefix lets
  secret scanners recognise a leaked token.
- **At rest** (Redis, written by the auth service only): the hash ``ews:<site>:auth:tokens`` maps each id
  to a :class:`TokenRecord` (JSON) holding the **SHA-256 of the whole token**, never the token: the
  secret is shown once, when it is created. A fast hash is enough for 256 random bits (argon2 is for
  5-digit PINs) and keeps the check of every API request to one Redis ``HGET`` and a constant-time compare.
- **Revocation** deletes the record: the next request with that token is refused (no cache anywhere).
- **Roles:** one of the four roles (``user``, view-only, by default); whatever the role, a token never
  has :data:`TOKEN_EXCLUDED` (codes and tokens are managed by a person signed in with PIN and PUK).

The auth service answers ``ews.<site>.rpc-auth.token-create`` / ``token-list`` / ``token-revoke``
(:data:`TOKEN_OPERATIONS`) and records ``AuditRecorded`` ``token-created`` / ``token-revoked``; the
gateway-api reads the records (read-only) to check a bearer token and records ``token-refused``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from .roles import Permission, Role, allowed

TOKEN_PREFIX = "ews_"
ID_HEX = 12  # hex digits of a token's id
SECRET_BYTES = 32
TOKEN_RE = re.compile(r"^ews_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
ID_RE = r"^[0-9a-f]{12}$"
NAME_MAX = 64
MAX_TOKENS = 100  # per site
DEFAULT_TOKEN_ROLE = Role.USER  # read-only unless the administrator picks another role

TOKEN_EXCLUDED: frozenset[Permission] = frozenset({Permission.MANAGE_CODES, Permission.MANAGE_TOKENS})
"""Permissions a machine token never has, whatever its role."""


def tokens_key(site: str) -> str:
    """Redis hash of a site's tokens: id -> :class:`TokenRecord` JSON (written by the auth service only)."""
    return f"ews:{site}:auth:tokens"


def token_used_key(site: str) -> str:
    """Redis hash id -> the time (ISO 8601, UTC) a token was last used, kept by the gateway-api (at most one
    write a minute per token and process). Not a credential: deleting it loses nothing but the dates."""
    return f"ews:{site}:gateway:token-used"


def new_token() -> tuple[str, str]:
    """A fresh ``(id, token)``."""
    token_id = secrets.token_hex(ID_HEX // 2)
    return token_id, f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(SECRET_BYTES)}"


def token_id_of(token: str) -> str | None:
    """The id a well-formed token names; None when it cannot be a token of this product."""
    match = TOKEN_RE.match(token)
    return match.group(1) if match else None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def digest_matches(digest: str, token: str) -> bool:
    """Whether ``token`` hashes to ``digest`` (constant time)."""
    return hmac.compare_digest(digest.encode(), token_digest(token).encode())


def token_allowed(role: str | None, permission: Permission) -> bool:
    """What a token of ``role`` may do: the role's permissions without :data:`TOKEN_EXCLUDED`."""
    return permission not in TOKEN_EXCLUDED and allowed(role, permission)


def clean_name(name: str) -> str:
    """A token's name as stored: whitespace folded; ValueError when empty, too long or not printable."""
    folded = " ".join(name.split())
    if not folded:
        raise ValueError("the name is empty")
    if len(folded) > NAME_MAX:
        raise ValueError(f"the name is longer than {NAME_MAX} characters")
    if not folded.isprintable():
        raise ValueError("the name holds characters that cannot be shown")
    return folded


def utcnow() -> datetime:
    return datetime.now(UTC)


class TokenInfo(BaseModel):
    """A token as it is listed: everything but its secret."""

    id: str = Field(pattern=ID_RE, examples=["3f9a1c07b2e4"])
    name: str = Field(min_length=1, max_length=NAME_MAX, examples=["Grafana"])
    role: Role = Field(description="What the token may do (without managing codes or tokens).")
    created_at: datetime = Field(description="UTC.")
    created_by: str = Field(description="Role that created it.", examples=["administrator"])


class TokenRecord(TokenInfo):
    """A token as the auth service stores it (Redis ``tokens_key``): with the SHA-256 of the token."""

    digest: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 (hex) of the whole token.")

    def info(self) -> TokenInfo:
        return TokenInfo.model_validate(self.model_dump(exclude={"digest"}))


TokenRefusal = Literal["bad-request", "forbidden", "name-in-use", "too-many", "unknown-token"]


class TokenCreateRequest(BaseModel):
    name: str = Field(max_length=4 * NAME_MAX, examples=["Grafana"])
    role: str = Field(default=str(DEFAULT_TOKEN_ROLE), examples=["user"])
    by_role: str = Field(description="Role of the session asking (needs manage-tokens).")
    client: str = Field(default="", description="Client address, for the audit record.")


class TokenCreateReply(BaseModel):
    ok: bool
    token: TokenInfo | None = None
    secret: str | None = Field(default=None, description="The token itself: in this reply only, never again.")
    reason: TokenRefusal | None = None
    error: str | None = None


class TokenListRequest(BaseModel):
    """No field: ``{}``."""


class TokenListReply(BaseModel):
    tokens: list[TokenInfo] = Field(description="Oldest first; no secret.")


class TokenRevokeRequest(BaseModel):
    id: str = Field(max_length=64, examples=["3f9a1c07b2e4"])
    by_role: str = Field(description="Role of the session asking (needs manage-tokens).")
    client: str = ""


class TokenRevokeReply(BaseModel):
    ok: bool
    token: TokenInfo | None = Field(default=None, description="The token revoked.")
    reason: TokenRefusal | None = None
    error: str | None = None


TOKEN_OPERATIONS: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    "token-create": (TokenCreateRequest, TokenCreateReply),
    "token-list": (TokenListRequest, TokenListReply),
    "token-revoke": (TokenRevokeRequest, TokenRevokeReply),
}
"""The auth service's machine-token operations (part of ``events.AUTH_OPERATIONS``)."""
