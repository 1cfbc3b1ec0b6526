"""Sign-in, leaving (Logout / Lock), codes and the language choice, as pages (A1–A4, L2).

They call the same functions as ``/api/v1/auth/*`` (``domain.auth.sign_in``, ``sign_out``,
``change_role_codes``) and plain HTML forms (post, then redirect): they work before any script loads.
"""

from __future__ import annotations

from typing import Annotated, Any

from ews_contracts.roles import Permission, Role, allowed
from litestar import Request, Response, Router, get, post
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException
from litestar.params import Body
from litestar.response import Redirect, Template
from pydantic import BaseModel

from ..domain.auth import (
    CodesBody,
    LoginRefused,
    change_role_codes,
    roles_codes_status,
    sign_in,
    sign_out,
)
from ..domain.language import LANGUAGES, choose_language, language_of
from ..errors import ApiError
from ..guards import authenticated, current_role, public
from ..i18n import N_
from ._page import home_of, redirect, render

FORM = Body(media_type=RequestEncodingType.URL_ENCODED)

ROLE_NAMES = {
    Role.ADMINISTRATOR: N_("Administrator"),
    Role.GREENUP: N_("Green'Up"),
    Role.INSTALLER: N_("Installer"),
    Role.USER: N_("User"),
}


class LoginForm(BaseModel):
    pin: str = ""
    puk: str = ""
    next: str = ""


class LeaveForm(BaseModel):
    mode: str = "logout"


class CodesForm(BaseModel):
    role: str = ""
    current_pin: str = ""
    current_puk: str = ""
    pin: str = ""
    puk: str = ""


class LanguageForm(BaseModel):
    language: str = ""
    next: str = ""


def safe_next(value: str | None) -> str | None:
    """A local path to go back to after signing in (never another site: no scheme, no '//')."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return None


@get("/login", guards=[public], operation_id="pageLogin", include_in_schema=False, tags=["pages"])
async def login_page(
    request: Request[Any, Any, Any], next: str | None = None, done: str | None = None
) -> Any:
    role = current_role(request)
    if role is not None:
        return redirect(safe_next(next) or home_of(role))
    notices = {
        "logout": N_("You are logged out. Your PIN alone signs you in again on this browser."),
        "lock": N_("The application is locked on this browser. Sign in with your PIN and PUK."),
        "codes": N_("Your codes were changed. Sign in with the new PIN and PUK."),
    }
    return await render(
        request,
        "auth/login.html",
        next=safe_next(next),
        notice_id=notices.get(done or ""),
        puk_required=False,
    )


@post("/login", guards=[public], operation_id="pageLoginSubmit", include_in_schema=False, tags=["pages"])
async def login_submit(request: Request[Any, Any, Any], data: Annotated[LoginForm, FORM]) -> Any:
    pin = data.pin.strip()
    puk = data.puk.strip()
    target = safe_next(data.next)
    if not pin.isdigit() or len(pin) != 5:
        return await render(
            request,
            "auth/login.html",
            status_code=400,
            next=target,
            message_id=N_("The PIN is 5 digits."),
            puk_required=bool(puk),
        )
    outcome, cookies = await sign_in(request, pin, puk or None)
    if isinstance(outcome, LoginRefused):
        if outcome.puk_required and not puk:
            return await render(
                request,
                "auth/login.html",
                next=target,
                pin=pin,
                puk_required=True,
                message_id=N_("This browser needs your PUK too."),
            )
        if outcome.status_code == 429:
            return await render(
                request,
                "auth/login.html",
                status_code=429,
                next=target,
                message_id=N_("Too many wrong codes. Wait a moment, then try again."),
                puk_required=bool(puk),
            )
        return await render(
            request,
            "auth/login.html",
            status_code=401,
            next=target,
            puk_required=bool(puk),
            message_id=N_("Wrong PIN or PUK.") if puk else N_("Wrong PIN."),
        )
    home = home_of(str(outcome.role))
    return Redirect(
        path=target or home, status_code=303, cookies=cookies, headers={"Cache-Control": "no-store"}
    )


@get("/session", guards=[authenticated], operation_id="pageSession", include_in_schema=False, tags=["pages"])
async def session_page(request: Request[Any, Any, Any]) -> Template:
    return await render(request, "auth/session.html")


@post("/session", guards=[public], operation_id="pageSessionLeave", include_in_schema=False, tags=["pages"])
async def session_leave(request: Request[Any, Any, Any], data: Annotated[LeaveForm, FORM]) -> Any:
    mode = "lock" if data.mode == "lock" else "logout"
    if current_role(request) is None:  # already signed out (another tab, expired): nothing to end
        return redirect(f"/login?done={mode}")
    _, cookies = await sign_out(request, mode)
    return Redirect(
        path=f"/login?done={mode}", status_code=303, cookies=cookies, headers={"Cache-Control": "no-store"}
    )


async def _codes_context(request: Request[Any, Any, Any]) -> dict[str, Any]:
    role = current_role(request) or ""
    manages = allowed(role, Permission.MANAGE_CODES)
    statuses = []
    if manages:
        try:
            statuses = (await roles_codes_status(request.app.state)).roles
        except HTTPException:  # the auth service is not answering: the form still works, the list is left out
            statuses = []
    return {
        "roles": [str(r) for r in Role] if manages else [role],
        "statuses": statuses,
        "role_names_ids": {str(r): ROLE_NAMES[r] for r in Role},
    }


@get("/codes", guards=[authenticated], operation_id="pageCodes", include_in_schema=False, tags=["pages"])
async def codes_page(request: Request[Any, Any, Any]) -> Template:
    return await render(
        request, "auth/codes.html", target=current_role(request), **await _codes_context(request)
    )


@post(
    "/codes", guards=[authenticated], operation_id="pageCodesSubmit", include_in_schema=False, tags=["pages"]
)
async def codes_submit(request: Request[Any, Any, Any], data: Annotated[CodesForm, FORM]) -> Any:
    mine = current_role(request) or ""
    target = data.role or mine
    own = target == mine
    body = CodesBody(
        pin=data.pin.strip() or "-",
        puk=data.puk.strip() or "-",
        current_pin=(data.current_pin.strip() or None) if own else None,
        current_puk=(data.current_puk.strip() or None) if own else None,
    )
    try:
        result, cookies = await change_role_codes(request, target, body)
    except HTTPException as exc:
        if exc.status_code >= 500:
            raise
        context = await _codes_context(request)
        language = await language_of(request)
        return await render(
            request,
            "auth/codes.html",
            status_code=exc.status_code,
            target=target,
            message=exc.translated(language) if isinstance(exc, ApiError) else exc.detail,
            **context,
        )
    if result.signed_out:
        return Redirect(path="/login?done=codes", status_code=303, cookies=cookies)
    context = await _codes_context(request)
    return await render(
        request, "auth/codes.html", target=target, notice_id=N_("The codes were changed."), **context
    )


@post("/language", guards=[public], operation_id="pageLanguage", include_in_schema=False, tags=["pages"])
async def language_submit(
    request: Request[Any, Any, Any], data: Annotated[LanguageForm, FORM]
) -> Response[Any]:
    back = safe_next(data.next) or home_of(current_role(request))
    if data.language not in LANGUAGES:
        return redirect(back)
    cookie = choose_language(request, data.language)
    return Redirect(path=back, status_code=303, cookies=[cookie], headers={"Cache-Control": "no-store"})


router = Router(
    path="/",
    route_handlers=[
        login_page,
        login_submit,
        session_page,
        session_leave,
        codes_page,
        codes_submit,
        language_submit,
    ],
)
