"""Login, Logout / Lock and ``/me`` (requirements A1–A4, L2), talking to the auth service over NATS.

- The PIN identifies the role. A browser that completed a PUK step holds an **unlock token** in its own
  long-lived HttpOnly cookie (``ews_unlock``); with it the PIN alone logs in (after Logout). Without it
  (first time, or after Lock) the answer is 401 with ``"puk_required": true`` next to ``detail``.
- Success rotates the server-side session id (sessions in Redis) and stores ``role`` in it.
- Logout clears the session and keeps the unlock token; Lock also revokes the token in the auth service
  and deletes the cookie, so the next login on this browser needs PIN + PUK.
- Wrong codes: 401; too many: 429 with ``Retry-After``; auth service not answering: 503.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from typing import Any, Literal

from ews_contracts.events import LoginReply, LoginRequest, RevokeUnlockRequest
from ews_contracts.roles import PAGES, PERMISSIONS, Role
from ews_contracts.subjects import auth_rpc
from litestar import Request, Response, Router, get, post, put
from litestar.datastructures import Cookie, State
from litestar.exceptions import ServiceUnavailableException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from pydantic import BaseModel, Field

from ..guards import SESSION_ROLE, authenticated, current_role, public
from ..sessions import rotate_session

log = logging.getLogger("ews.gateway-api.auth")

UNLOCK_COOKIE = "ews_unlock"
UNLOCK_MAX_AGE = 400 * 86_400  # browsers keep a cookie at most 400 days
AUTH_TIMEOUT = 10.0  # seconds for an auth request/reply (argon2 checks take a fraction of a second)
# L1: the 13 UI languages (BCP 47 tags)
LANGUAGES: tuple[str, ...] = (
    "zh", "de", "en", "es", "fr", "fr-BE", "el", "it", "nl-BE", "nl", "pl", "pt", "ru",
)  # fmt: skip


class LoginBody(BaseModel):
    pin: str = Field(min_length=1, max_length=16, description="5-digit PIN.", examples=["99999"])
    puk: str | None = Field(
        default=None,
        max_length=32,
        description="14-digit PUK, with or without its spaces; needed when the browser has no valid PUK step.",
        examples=["00000 9999 00000"],
    )


class LoginResult(BaseModel):
    role: Role
    pages: list[str] = Field(description="Pages of the role, the first one is its home page.")
    default_codes: bool = Field(description="The role still uses its factory codes: ask to change them.")


class LoginRefused(BaseModel):
    status_code: int = 401
    detail: str
    puk_required: bool = Field(description="The PIN is right; send it again with the PUK.")
    retry_after: float | None = Field(default=None, description="Seconds to wait (429).")


class LogoutBody(BaseModel):
    mode: Literal["logout", "lock"] = Field(
        default="logout",
        description="logout: the next login on this browser needs the PIN only; lock: PIN + PUK.",
    )


class LogoutResult(BaseModel):
    mode: Literal["logout", "lock"]
    puk_required_next: bool = Field(description="Whether the next login on this browser needs the PUK.")


class Me(BaseModel):
    role: Role
    pages: list[str]
    permissions: list[str]
    language: str = Field(description="UI language of this session (the site default until changed).")
    languages: list[str] = Field(description="Languages the UI offers.")
    default_codes_in_use: bool


class LanguageBody(BaseModel):
    language: str = Field(examples=["fr"])


def client_of(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else ""


def _unlock_cookie(request: Request[Any, Any, Any], value: str, max_age: int) -> Cookie:
    return Cookie(
        key=UNLOCK_COOKIE,
        value=value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.app.state.settings.secure_cookies,
    )


async def auth_call(state: State, operation: str, body: BaseModel) -> bytes:
    """Request/reply to the auth service; 503 when it does not answer."""
    try:
        msg = await state.broker.request(
            body.model_dump(mode="json"), subject=auth_rpc(state.site.site, operation), timeout=AUTH_TIMEOUT
        )
    except Exception as exc:
        log.warning("auth %s: no answer: %s", operation, " ".join(str(exc).split()) or type(exc).__name__)
        raise ServiceUnavailableException(
            "the auth service is not answering; try again shortly", headers={"Retry-After": "5"}
        ) from None
    return msg.body


def _refused(status: int, detail: str, puk_required: bool = False, retry_after: float | None = None):
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after else None
    body = LoginRefused(status_code=status, detail=detail, puk_required=puk_required, retry_after=retry_after)
    return Response(body.model_dump(), status_code=status, headers=headers)


def session_language(request: Request[Any, Any, Any]) -> str:
    return (request.session or {}).get("language") or request.app.state.site.language


@post(
    "/auth/login",
    guards=[public],
    operation_id="login",
    summary="Log in with the PIN (and the PUK when needed)",
    description="200 with the role and its pages, and the session cookie. 401 with puk_required=true when "
    "the PIN is right but this browser must also give the PUK (first login, or after Lock); 401 with "
    "puk_required=false for a wrong code; 429 with Retry-After after repeated wrong codes.",
    status_code=200,
    security=[{}],
    tags=["auth"],
    responses={
        401: ResponseSpec(LoginRefused, description="Wrong code, or PUK required"),
        429: ResponseSpec(LoginRefused, description="Too many wrong codes: wait Retry-After seconds"),
    },
)
async def login(request: Request[Any, Any, State], data: LoginBody) -> Response[Any]:
    state = request.app.state
    body = LoginRequest(
        pin=data.pin,
        puk=data.puk or None,
        unlock_token=request.cookies.get(UNLOCK_COOKIE),
        client=client_of(request),
    )
    try:
        reply = LoginReply.model_validate_json(await auth_call(state, "login", body))
    except ValueError:
        raise ServiceUnavailableException("the auth service gave an unreadable answer") from None
    if not reply.ok or reply.role is None:
        if reply.retry_after:
            return _refused(429, reply.error or "too many wrong codes", retry_after=reply.retry_after)
        if reply.puk_required:
            return _refused(401, reply.error or "enter the PUK as well", puk_required=True)
        return _refused(401, reply.error or "wrong code")
    role = Role(reply.role)
    language = session_language(request)
    request.set_session(
        {
            SESSION_ROLE: str(role),
            "default_codes": reply.default_codes,
            "language": language,
            "login_at": datetime.now(UTC).isoformat(),
        }
    )
    rotate_session(request)
    result = LoginResult(role=role, pages=[str(p) for p in PAGES[role]], default_codes=reply.default_codes)
    cookies = [_unlock_cookie(request, reply.unlock_token, UNLOCK_MAX_AGE)] if reply.unlock_token else []
    return Response(result.model_dump(mode="json"), status_code=200, cookies=cookies)


@post(
    "/auth/logout",
    guards=[authenticated],
    operation_id="logout",
    summary="Logout (PIN only next time) or Lock (PIN + PUK next time)",
    status_code=200,
    tags=["auth"],
)
async def logout(request: Request[Any, Any, State], data: LogoutBody | None = None) -> Response[LogoutResult]:
    data = data or LogoutBody()
    state = request.app.state
    role = current_role(request) or ""
    token = request.cookies.get(UNLOCK_COOKIE) or ""
    try:
        await auth_call(
            state,
            "revoke-unlock",
            RevokeUnlockRequest(unlock_token=token, role=role, mode=data.mode, client=client_of(request)),
        )
    except ServiceUnavailableException:
        if data.mode == "logout":
            raise
        # Lock still works on this browser: its cookie is deleted below; the token just expires unused.
        log.warning("lock: the auth service did not answer; the unlock cookie is deleted anyway")
    request.clear_session()
    cookies = [_unlock_cookie(request, "", 0)] if data.mode == "lock" else []
    result = LogoutResult(mode=data.mode, puk_required_next=data.mode == "lock" or not token)
    return Response(result, cookies=cookies)


@get(
    "/me",
    guards=[authenticated],
    operation_id="me",
    summary="The logged-in role, its pages and permissions, and the UI language",
    tags=["auth"],
)
async def me(request: Request[Any, Any, State]) -> Me:
    return _me(request)


def _me(request: Request[Any, Any, State]) -> Me:
    role = Role(current_role(request))
    return Me(
        role=role,
        pages=[str(p) for p in PAGES[role]],
        permissions=sorted(str(p) for p in PERMISSIONS[role]),
        language=session_language(request),
        languages=list(LANGUAGES),
        default_codes_in_use=bool(request.session.get("default_codes")),
    )


@put(
    "/me/language",
    guards=[authenticated],
    operation_id="setLanguage",
    summary="Change this session's UI language (the site's default language is unchanged)",
    tags=["auth"],
)
async def set_language(request: Request[Any, Any, State], data: LanguageBody) -> Me:
    if data.language not in LANGUAGES:
        raise ValidationException(f"unknown language {data.language!r}: use one of {', '.join(LANGUAGES)}")
    request.set_session({**request.session, "language": data.language})
    return _me(request)


router = Router(path="/api/v1", route_handlers=[login, logout, me, set_language])
