"""Machine tokens of the JSON API (administrator only: ``manage-tokens``; never with a token itself).

- ``POST /api/v1/tokens`` ``{name, role?}`` -> 201 with the token itself (``token``), **shown this once**:
  the auth service keeps its SHA-256 only. ``role`` defaults to ``user`` (view-only).
- ``GET /api/v1/tokens`` -> every token without its secret, with ``last_used_at``.
- ``DELETE /api/v1/tokens/{id}`` -> 204; the token is refused from the next request on.

The auth service creates, lists and revokes (NATS request/reply ``ews.<site>.rpc-auth.token-*``: it owns
the credentials and records ``token-created`` / ``token-revoked`` audit events); ``bearer.py`` checks a
token on each request. The Configuration page "Machine tokens" calls the same functions.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from ews_contracts.roles import Permission, Role
from ews_contracts.tokens import (
    DEFAULT_TOKEN_ROLE,
    ID_RE,
    MAX_TOKENS,
    NAME_MAX,
    TokenCreateReply,
    TokenCreateRequest,
    TokenInfo,
    TokenListReply,
    TokenListRequest,
    TokenRevokeReply,
    TokenRevokeRequest,
    clean_name,
    token_used_key,
)
from litestar import Request, Response, Router, delete, get, post
from litestar.datastructures import State
from pydantic import BaseModel, Field, field_validator

from ..errors import ApiError
from ..guards import current_role, requires
from ..i18n import N_
from ..openapi import error
from .auth import auth_call, client_of

MANAGE = [requires(Permission.MANAGE_TOKENS)]
NO_STORE = {"Cache-Control": "no-store"}

TOKEN_ID = re.compile(ID_RE)

# the auth service's refusals: (status, code, words the catalogues translate)
_REFUSALS: dict[str, tuple[int, str, str]] = {
    "bad-request": (400, "invalid-token-request", N_("the token's name or role is not valid")),
    "forbidden": (403, "forbidden", N_("your role may not manage machine tokens")),
    "name-in-use": (409, "token-name-in-use", N_("a token already has this name: choose another one")),
    "too-many": (
        409,
        "too-many-tokens",
        N_("there are already %(count)s tokens: revoke one first"),
    ),
    "unknown-token": (404, "unknown-token", N_("no token %(id)s: it may have been revoked already")),
}


class TokenBody(BaseModel):
    name: str = Field(
        min_length=1,
        max_length=NAME_MAX,
        description="What the token is for, unique (case aside).",
        examples=["Grafana"],
    )
    role: Role = Field(
        default=DEFAULT_TOKEN_ROLE,
        description="What the token may do (its role's permissions, never managing codes or tokens). "
        "Default: user (view-only).",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return clean_name(value)


class TokenView(TokenInfo):
    last_used_at: datetime | None = Field(
        default=None, description="Last request made with it (UTC, to the minute); null: never used."
    )


class TokenCreated(TokenInfo):
    token: str = Field(
        description="The token itself, shown this once (only its SHA-256 is kept): send it as "
        "'Authorization: Bearer <token>'.",
        examples=["ews_3f9a1c07b2e4_Q2hhbmdlIG1lOiB0aGlzIGlzIGFuIGV4YW1wbGUgdG9rZW4"],
    )


class TokenList(BaseModel):
    tokens: list[TokenView]


def _refused(reason: str | None, error_text: str | None, **params: Any) -> ApiError:
    known = _REFUSALS.get(reason or "")
    if known is None:  # a reason this version does not know, or the auth service failed
        return ApiError(
            503,
            "auth-unavailable",
            N_("the auth service could not do this: %(error)s"),
            error=error_text or "?",
        )
    status, code, message = known
    return ApiError(status, code, message, **({"count": MAX_TOKENS} | params))


def _unreadable() -> ApiError:
    return ApiError(503, "auth-unreadable", N_("the auth service gave an unreadable answer"))


async def create_token(request: Request[Any, Any, State], name: str, role: Role) -> TokenCreated:
    """A new token (the API's and the page's): the token itself is in the answer, this once."""
    state = request.app.state
    body = TokenCreateRequest(
        name=name, role=str(role), by_role=current_role(request) or "", client=client_of(request)
    )
    try:
        reply = TokenCreateReply.model_validate_json(await auth_call(state, "token-create", body))
    except ValueError:
        raise _unreadable() from None
    if not reply.ok or reply.token is None or not reply.secret:
        raise _refused(reply.reason, reply.error)
    return TokenCreated(**reply.token.model_dump(), token=reply.secret)


async def list_tokens(state: State) -> list[TokenView]:
    """Every token, oldest first, with when it was last used (no secret)."""
    try:
        reply = TokenListReply.model_validate_json(await auth_call(state, "token-list", TokenListRequest()))
    except ValueError:
        raise _unreadable() from None
    used = await state.redis.hgetall(token_used_key(state.identity))
    last: dict[str, str] = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in used.items()
    }
    return [
        TokenView(**t.model_dump(), last_used_at=datetime.fromisoformat(last[t.id]) if t.id in last else None)
        for t in reply.tokens
    ]


async def revoke_token(request: Request[Any, Any, State], token_id: str) -> TokenInfo:
    """Revoke a token (the API's and the page's); 404 ``unknown-token`` when there is none by that id."""
    state = request.app.state
    body = TokenRevokeRequest(id=token_id, by_role=current_role(request) or "", client=client_of(request))
    try:
        reply = TokenRevokeReply.model_validate_json(await auth_call(state, "token-revoke", body))
    except ValueError:
        raise _unreadable() from None
    if not reply.ok or reply.token is None:
        raise _refused(reply.reason, reply.error, id=repr(token_id))
    await state.redis.hdel(token_used_key(state.identity), token_id)
    return reply.token


@post(
    "/tokens",
    guards=MANAGE,
    operation_id="createToken",
    summary="Create a machine token (the token is in this answer only)",
    description="A named token with a role (default user: view-only) for a program — Grafana, Home Assistant, "
    "a script — sent as 'Authorization: Bearer <token>' to /api/v1. The answer holds the token itself, "
    "shown this once: only its SHA-256 is kept. A token has its role's permissions except manage-codes and "
    "manage-tokens. Administrator only, signed in with PIN (never with a token). Audited (token-created).",
    status_code=201,
    tags=["tokens"],
    responses={
        409: error(
            f"A token already has this name (token-name-in-use), or there are {MAX_TOKENS} (too-many-tokens)."
        )
    },
)
async def post_token(request: Request[Any, Any, State], data: TokenBody) -> Response[TokenCreated]:
    created = await create_token(request, data.name, data.role)
    return Response(created, status_code=201, headers=NO_STORE)


@get(
    "/tokens",
    guards=MANAGE,
    operation_id="listTokens",
    summary="The machine tokens (never their secrets), oldest first",
    tags=["tokens"],
)
async def get_tokens(request: Request[Any, Any, State]) -> TokenList:
    return TokenList(tokens=await list_tokens(request.app.state))


@delete(
    "/tokens/{token_id:str}",
    guards=MANAGE,
    operation_id="revokeToken",
    summary="Revoke a machine token: refused from the next request on",
    description="Audited (token-revoked). 404 unknown-token when no token has this id (revoked already).",
    tags=["tokens"],
    status_code=204,
)
async def delete_token(request: Request[Any, Any, State], token_id: str) -> None:
    if not TOKEN_ID.match(token_id):
        raise _refused("unknown-token", None, id=repr(token_id[:64]))
    await revoke_token(request, token_id)


router = Router(path="/api/v1", route_handlers=[post_token, get_tokens, delete_token])
