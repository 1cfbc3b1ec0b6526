"""Login, Logout / Lock, ``/me`` and the roles' codes (requirements A1–A4, L2), via the auth service (NATS).

Two levels, as in the requirements:

- the **browser unlock** (the PUK step): after a PIN + PUK login the browser holds an unlock token in
  its own long-lived HttpOnly cookie (``ews_unlock``). With it the PIN alone logs in (after Logout).
  Without it (first time, after Lock, after a change of the role's codes) the answer to a PIN is 401
  with ``"puk_required": true`` — for any PIN, so the answer never tells whether a PIN is right.
- the **session** (the PIN step): server-side in Redis (see ``sessions.py``), a fresh id at each login.

Logout clears the session and keeps the unlock; Lock also revokes the unlock in the auth service and
deletes the cookie. ``PUT /api/v1/auth/codes/{role}`` changes a role's PIN/PUK (its own with the current
codes; any role's with ``manage-codes``), which revokes every session and unlock of that role.
Wrong codes: 401; too many: 429 with ``Retry-After``; auth service not answering: 503.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any, Literal

from ews_contracts.events import (
    ChangeCodesReply,
    ChangeCodesRequest,
    CodesStatusReply,
    LoginReply,
    LoginRequest,
    RevokeUnlockRequest,
)
from ews_contracts.roles import PAGES, PERMISSIONS, Permission, Role, allowed
from ews_contracts.subjects import auth_rpc
from ews_contracts.tokens import TOKEN_EXCLUDED
from litestar import Request, Response, Router, get, post, put
from litestar.datastructures import Cookie, State
from litestar.exceptions import (
    HTTPException,
)
from litestar.openapi.datastructures import ResponseSpec
from nats.errors import NoRespondersError
from pydantic import BaseModel, Field

from .. import sessions
from ..bearer import token_of
from ..errors import ApiError
from ..guards import SESSION_ROLE, authenticated, current_role, public, requires, session_only
from ..i18n import N_
from ..openapi import error
from ..sessions import (
    LOGIN_AT,
    SESSION_COOKIE,
    browser_cookie,
    index_session,
    revoke_role_sessions,
    rotate_session,
    unindex_session,
)
from ..sites import optional_site_state
from .language import (
    LANGUAGES,
    SESSION_LANGUAGE,
    Language,
    LanguageBody,
    check_language,
    choose_language,
    chosen_language,
    language_of,
)

log = logging.getLogger("ews.gateway-api.auth")

UNLOCK_COOKIE = "ews_unlock"
UNLOCK_MAX_AGE = 400 * 86_400  # browsers keep a cookie at most 400 days
AUTH_TIMEOUT = 10.0  # seconds for an auth request/reply (argon2 checks take a fraction of a second)
DEFAULT_CODES = "default_codes"


class LoginBody(BaseModel):
    pin: str = Field(min_length=1, max_length=16, description="5-digit PIN.", examples=["12345"])
    puk: str | None = Field(
        default=None,
        max_length=32,
        description="14-digit PUK, with or without its spaces; needed when the browser has no valid PUK step.",
        examples=["12345 6789 01234"],
    )


class LoginResult(BaseModel):
    role: Role
    pages: list[str] = Field(description="Pages of the role, the first one is its home page.")
    default_codes: bool = Field(description="The role still uses its factory codes: ask to change them.")


class LoginRefused(BaseModel):
    status_code: int = 401
    detail: str
    puk_required: bool = Field(description="Send the PIN again with the PUK.")
    retry_after: float | None = Field(default=None, description="Seconds to wait (429).")


class LogoutBody(BaseModel):
    mode: Literal["logout", "lock"] = Field(
        default="logout",
        description="logout: the next login on this browser needs the PIN only; lock: PIN + PUK.",
    )


class LogoutResult(BaseModel):
    mode: Literal["logout", "lock"]
    puk_required_next: bool = Field(description="Whether the next login on this browser needs the PUK.")


class TokenRef(BaseModel):
    id: str = Field(examples=["3f9a1c07b2e4"])
    name: str = Field(examples=["Grafana"])


class Me(BaseModel):
    role: Role
    pages: list[str] = Field(description="Pages of the role (none for a machine token: pages take no token).")
    permissions: list[str]
    language: Language = Field(description="UI language of this session (the site default until changed).")
    languages: list[Language] = Field(description="Languages the UI offers.")
    default_codes_in_use: bool = Field(description="This role still uses its factory codes.")
    timezone: str = Field(description="The site's time zone: days, months and years are in it.")
    token: TokenRef | None = Field(
        default=None, description="The machine token this request was made with (None: a session)."
    )


class CodesBody(BaseModel):
    pin: str = Field(min_length=1, max_length=16, description="New 5-digit PIN, unique across roles.")
    puk: str = Field(min_length=1, max_length=32, description="New 14-digit PUK (spaces optional).")
    current_pin: str | None = Field(
        default=None, max_length=16, description="Needed to change one's own codes."
    )
    current_puk: str | None = Field(
        default=None, max_length=32, description="Needed to change one's own codes."
    )


class CodesChanged(BaseModel):
    role: Role
    sessions_revoked: int = Field(description="Sessions of that role ended (its unlocks are revoked too).")
    signed_out: bool = Field(description="This session was one of them (own codes changed): log in again.")


class RoleCodesStatus(BaseModel):
    role: Role
    default_codes: bool


class CodesStatus(BaseModel):
    roles: list[RoleCodesStatus]


class _NoBody(BaseModel):
    pass


def client_of(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else ""


def _unlock_cookie(request: Request[Any, Any, Any], value: str, max_age: int) -> Cookie:
    return browser_cookie(request, UNLOCK_COOKIE, value, max_age)


async def auth_call(state: State, operation: str, body: BaseModel) -> bytes:
    """Request/reply to the auth service; 503 when it does not answer within ``AUTH_TIMEOUT``. Nobody
    listening yet (the service starting: on a first start it hashes the factory codes first) is waited for
    within that time, so a sign-in right after ``/ready`` does not fail."""
    deadline = asyncio.get_running_loop().time() + AUTH_TIMEOUT
    try:
        while True:
            try:
                msg = await state.broker.request(
                    body.model_dump(mode="json"),
                    subject=auth_rpc(state.identity, operation),
                    timeout=max(0.1, deadline - asyncio.get_running_loop().time()),
                )
                break
            except NoRespondersError:
                if asyncio.get_running_loop().time() + 0.2 >= deadline:
                    raise
                await asyncio.sleep(0.2)
    except Exception as exc:
        log.warning("auth %s: no answer: %s", operation, " ".join(str(exc).split()) or type(exc).__name__)
        raise ApiError(
            503,
            "auth-unavailable",
            N_("the auth service is not answering; try again shortly"),
            headers={"Retry-After": "5"},
        ) from None
    return msg.body


def _retry_headers(retry_after: float | None) -> dict[str, str] | None:
    return {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after else None


@post(
    "/auth/login",
    guards=[public],
    operation_id="login",
    summary="Log in with the PIN (and the PUK when needed)",
    description="200 with the role and its pages, and the session cookie. 401 with puk_required=true when "
    "this browser must also give the PUK (first login, after Lock, after a code change) — whatever the PIN; "
    "401 with puk_required=false for a wrong PIN/PUK pair; 429 with Retry-After after repeated failures.",
    status_code=200,
    security=[{}],
    tags=["auth"],
    responses={
        401: ResponseSpec(LoginRefused, description="Wrong codes, or PUK required"),
        429: ResponseSpec(LoginRefused, description="Too many wrong codes: wait Retry-After seconds"),
    },
)
async def login(request: Request[Any, Any, State], data: LoginBody) -> Response[Any]:
    outcome, cookies = await sign_in(request, data.pin, data.puk)
    if isinstance(outcome, LoginRefused):
        return Response(
            outcome.model_dump(), status_code=outcome.status_code, headers=_retry_headers(outcome.retry_after)
        )
    return Response(outcome.model_dump(mode="json"), status_code=200, cookies=cookies)


async def sign_in(
    request: Request[Any, Any, State], pin: str, puk: str | None
) -> tuple[LoginResult | LoginRefused, list[Cookie]]:
    """Check the codes with the auth service and open a session (the login of the API and of the page).

    Returns the result and the cookies to set (the browser unlock), or the refusal (401 wrong codes or
    PUK required, 429 too many attempts)."""
    state = request.app.state
    body = LoginRequest(
        pin=pin,
        puk=puk or None,
        unlock_token=request.cookies.get(UNLOCK_COOKIE),
        client=client_of(request),
    )
    try:
        reply = LoginReply.model_validate_json(await auth_call(state, "login", body))
    except ValueError:
        raise ApiError(503, "auth-unreadable", N_("the auth service gave an unreadable answer")) from None
    if reply.unavailable:
        raise ApiError(
            503,
            "auth-unavailable",
            N_("the codes cannot be checked right now (their store is unavailable); try again shortly"),
            headers={"Retry-After": "5"},
        )
    if not reply.ok or reply.role is None:
        if reply.retry_after:
            refusal = LoginRefused(
                status_code=429,
                detail=reply.error or "too many wrong codes",
                puk_required=False,
                retry_after=reply.retry_after,
            )
        elif reply.puk_required:
            refusal = LoginRefused(detail=reply.error or "enter the PUK as well", puk_required=True)
        else:
            refusal = LoginRefused(detail=reply.error or "wrong code", puk_required=False)
        return refusal, []
    role = Role(reply.role)
    session: dict[str, Any] = {
        SESSION_ROLE: str(role),
        DEFAULT_CODES: reply.default_codes,
        LOGIN_AT: sessions.now(),
    }
    if language := chosen_language(request):  # chosen on the login page (cookie) or in the last session
        session[SESSION_LANGUAGE] = language
    request.set_session(session)
    session_id = rotate_session(request)
    await index_session(state.redis, state.identity, str(role), session_id)
    result = LoginResult(role=role, pages=[str(p) for p in PAGES[role]], default_codes=reply.default_codes)
    cookies = [_unlock_cookie(request, reply.unlock_token, UNLOCK_MAX_AGE)] if reply.unlock_token else []
    return result, cookies


@post(
    "/auth/logout",
    guards=[session_only],
    operation_id="logout",
    summary="Logout (PIN only next time) or Lock (PIN + PUK next time)",
    status_code=200,
    tags=["auth"],
)
async def logout(request: Request[Any, Any, State], data: LogoutBody | None = None) -> Response[LogoutResult]:
    result, cookies = await sign_out(request, (data or LogoutBody()).mode)
    return Response(result, cookies=cookies)


async def sign_out(
    request: Request[Any, Any, State], mode: Literal["logout", "lock"]
) -> tuple[LogoutResult, list[Cookie]]:
    """Logout (the PIN alone signs in again) or Lock (PIN + PUK): the API's and the page's."""
    state = request.app.state
    role = current_role(request) or ""
    token = request.cookies.get(UNLOCK_COOKIE) or ""
    try:
        await auth_call(
            state,
            "revoke-unlock",
            RevokeUnlockRequest(unlock_token=token, role=role, mode=mode, client=client_of(request)),
        )
    except HTTPException as exc:  # the auth service did not answer (503)
        if mode == "logout" or exc.status_code != 503:
            raise
        # Lock still works on this browser: its cookie is deleted below; the token just expires unused.
        log.warning("lock: the auth service did not answer; the unlock cookie is deleted anyway")
    if session_id := request.cookies.get(SESSION_COOKIE):
        await unindex_session(state.redis, state.identity, role, session_id)
    request.clear_session()
    cookies = [_unlock_cookie(request, "", 0)] if mode == "lock" else []
    return LogoutResult(mode=mode, puk_required_next=mode == "lock" or not token), cookies


@get(
    "/me",
    guards=[authenticated],
    operation_id="me",
    summary="The logged-in role, its pages and permissions, and the UI language",
    tags=["auth"],
)
async def me(request: Request[Any, Any, State]) -> Me:
    return await _me(request)


async def _me(request: Request[Any, Any, State], language: str | None = None) -> Me:
    role = Role(current_role(request))
    token = token_of(request)
    permissions = PERMISSIONS[role] - TOKEN_EXCLUDED if token else PERMISSIONS[role]
    return Me(
        role=role,
        pages=[] if token else [str(p) for p in PAGES[role]],
        permissions=sorted(str(p) for p in permissions),
        language=language or await language_of(request),
        languages=list(LANGUAGES),
        default_codes_in_use=False if token else bool(request.session.get(DEFAULT_CODES)),
        timezone=one.site.timezone if (one := optional_site_state(request)) else "UTC",
        token=TokenRef(id=token.id, name=token.name) if token else None,
    )


@put(
    "/me/language",
    guards=[session_only],
    operation_id="setLanguage",
    summary="Change this session's UI language (the site's default language is unchanged)",
    tags=["auth"],
)
async def set_language(request: Request[Any, Any, State], data: LanguageBody) -> Response[Me]:
    language = check_language(data.language)
    cookie = choose_language(request, language)
    return Response(await _me(request, language), cookies=[cookie])


# The auth service's refusals, in words the catalogues translate (its own text stays in its log).
_CODE_MESSAGES = {
    "bad-request": N_("the new codes are not valid: the PIN has 5 digits, the PUK 14"),
    "wrong-current-codes": N_("the current PIN or PUK is wrong"),
    "pin-in-use": N_("this PIN is already used by another role: choose another one"),
    "too-many-attempts": N_("too many attempts: wait a moment, then try again"),
    "forbidden": N_("your role may not change these codes"),
}
_CODE_ERRORS = {
    "bad-request": 400,
    "forbidden": 403,
    "wrong-current-codes": 403,
    "pin-in-use": 409,
    "too-many-attempts": 429,
}


@put(
    "/auth/codes/{role:str}",
    guards=[session_only],  # and, in the handler: one's own role, or any role with manage-codes
    operation_id="changeCodes",
    summary="Change a role's PIN and PUK",
    description="A role changes its own codes by giving its current PIN and PUK; a role with the "
    "manage-codes permission (administrator) changes any other role's codes without them. PINs are unique "
    "across roles (409 otherwise). Every session and browser unlock of that role is revoked: its next "
    "login needs the new PIN + PUK. 403 for another role without manage-codes or wrong current codes.",
    tags=["auth"],
    responses={
        409: error("The new PIN is another role's (pin-in-use)."),
        429: error("Too many wrong current codes (too-many-attempts): wait Retry-After seconds."),
    },
)
async def change_codes(
    request: Request[Any, Any, State], role: str, data: CodesBody
) -> Response[CodesChanged]:
    result, cookies = await change_role_codes(request, role, data)
    return Response(result, cookies=cookies)


async def change_role_codes(
    request: Request[Any, Any, State], role: str, data: CodesBody
) -> tuple[CodesChanged, list[Cookie]]:
    """Change a role's codes (one's own with the current codes; any role's with manage-codes)."""
    state = request.app.state
    mine = current_role(request) or ""
    try:
        target = Role(role)
    except ValueError:
        raise ApiError(
            404,
            "unknown-role",
            N_("unknown role %(value)s: use one of %(choices)s"),
            value=repr(role),
            choices=", ".join(Role),
        ) from None
    if target != mine and not allowed(mine, Permission.MANAGE_CODES):
        raise ApiError(
            403, "own-codes-only", N_("the %(role)s role may change its own codes only"), role=mine
        )
    body = ChangeCodesRequest(
        role=str(target),
        pin=data.pin,
        puk=data.puk,
        current_pin=data.current_pin,
        current_puk=data.current_puk,
        by_role=mine,
        client=client_of(request),
    )
    try:
        reply = ChangeCodesReply.model_validate_json(await auth_call(state, "change-codes", body))
    except ValueError:
        raise ApiError(503, "auth-unreadable", N_("the auth service gave an unreadable answer")) from None
    if not reply.ok:
        status = _CODE_ERRORS.get(reply.reason or "", 503)
        message = _CODE_MESSAGES.get(reply.reason or "")
        if message is None:  # a reason this version does not know: the auth service's own words
            raise HTTPException(
                status_code=status,
                detail=reply.error or "the codes were not changed",
                headers=_retry_headers(reply.retry_after),
            )
        raise ApiError(
            status, reply.reason or "codes-refused", message, headers=_retry_headers(reply.retry_after)
        )
    store = request.app.stores.get("sessions")
    revoked = await revoke_role_sessions(state.redis, store, state.identity, str(target))
    cookies = []
    if target == mine:  # this session was revoked with the others: end it on this browser too
        request.clear_session()
        cookies.append(_unlock_cookie(request, "", 0))
    return CodesChanged(role=target, sessions_revoked=revoked, signed_out=target == mine), cookies


@get(
    "/auth/codes",
    guards=[requires(Permission.MANAGE_CODES)],
    operation_id="codesStatus",
    summary="Which roles still use their factory codes",
    tags=["auth"],
)
async def codes_status(request: Request[Any, Any, State]) -> CodesStatus:
    return await roles_codes_status(request.app.state)


async def roles_codes_status(state: State) -> CodesStatus:
    """Which roles still use their factory codes (the API's and the codes page's)."""
    reply = CodesStatusReply.model_validate_json(await auth_call(state, "codes-status", _NoBody()))
    return CodesStatus(
        roles=[
            RoleCodesStatus(role=Role(r), default_codes=reply.default_codes.get(str(r), False)) for r in Role
        ]
    )


router = Router(path="/api/v1", route_handlers=[login, logout, me, set_language, change_codes, codes_status])
