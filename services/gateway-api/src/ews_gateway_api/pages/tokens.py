"""Configuration, administration half: ``/configuration/tokens``, the JSON API's machine tokens.

The administrator (``manage-tokens``) lists the tokens (name, role, created when and by whom, last used),
creates one (a name and a role, ``user`` — view-only — preselected) and sees its secret **once**, on the
answer to the form (never in a URL, ``Cache-Control: no-store``), with a hint to copy it now and how to
use it; revokes one after a confirmation page. Plain forms (post, then a page): they work before any
script loads; ``pages.js`` adds a Copy button where the browser allows it. The same functions as
``/api/v1/tokens`` (``domain.tokens``), so the auth service audits every creation and revocation.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from ews_contracts.roles import Permission, Role
from ews_contracts.tokens import DEFAULT_TOKEN_ROLE, NAME_MAX, clean_name
from litestar import Request, Router, get, post
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException
from litestar.params import Body
from litestar.response import Template
from pydantic import BaseModel

from ..domain.language import language_of
from ..domain.tokens import TOKEN_ID, create_token, list_tokens, revoke_token
from ..errors import ApiError
from ..guards import requires
from ..i18n import N_
from ._page import redirect, render, translator
from .administration import role_label

MANAGE = [requires(Permission.MANAGE_TOKENS)]
PAGE = {"include_in_schema": False, "tags": ["pages"]}
FORM = Body(media_type=RequestEncodingType.URL_ENCODED)
URL = "/configuration/tokens"

# what each role lets a token do, for the role choice (a token never manages codes or tokens)
ROLE_HINTS = {
    Role.USER: N_("User (view-only)"),
    Role.GREENUP: N_("Green'Up (charging stations)"),
    Role.INSTALLER: N_("Installer (configuration, commands)"),
    Role.ADMINISTRATOR: N_("Administrator (no codes, no tokens)"),
}
ROLE_ORDER = (Role.USER, Role.GREENUP, Role.INSTALLER, Role.ADMINISTRATOR)


class TokenForm(BaseModel):
    name: str = ""
    role: str = str(DEFAULT_TOKEN_ROLE)


async def _page(request: Request[Any, Any, Any], *, status_code: int = 200, **context: Any) -> Template:
    _ = await translator(request)
    tokens = await list_tokens(request.app.state)
    context.setdefault("form", {"name": "", "role": str(DEFAULT_TOKEN_ROLE)})
    context.setdefault("errors", {})
    return await render(
        request,
        "configuration/admin_tokens.html",
        status_code=status_code,
        tokens=tokens,
        role_options=[(str(r), _(ROLE_HINTS[r])) for r in ROLE_ORDER],
        role_names={str(r): role_label(str(r), _) for r in Role},
        name_max=NAME_MAX,
        api_base=str(request.base_url).rstrip("/"),
        **context,
    )


@get(URL, guards=MANAGE, operation_id="pageTokens", **PAGE)
async def tokens_page(request: Request[Any, Any, Any], revoked: str | None = None) -> Template:
    return await _page(request, revoked=(revoked or "")[:NAME_MAX] or None)


@post(URL, guards=MANAGE, operation_id="pageTokensCreate", **PAGE)
async def tokens_create(request: Request[Any, Any, Any], data: Annotated[TokenForm, FORM]) -> Template:
    _ = await translator(request)
    form = {"name": data.name, "role": data.role}
    errors: dict[str, str] = {}
    try:
        name = clean_name(data.name)
    except ValueError:
        errors["name"] = _("Give the token a name of 1 to %(max)s characters.", max=NAME_MAX)
    try:
        role = Role(data.role)
    except ValueError:
        errors["role"] = _("Choose one of the roles.")
    if errors:
        return await _page(request, status_code=400, form=form, errors=errors)
    try:
        created = await create_token(request, name, role)
    except ApiError as exc:
        if exc.status_code >= 500:
            raise
        where = "name" if exc.code in ("token-name-in-use", "invalid-token-request") else "form"
        message = exc.translated(await language_of(request))
        return await _page(request, status_code=exc.status_code, form=form, errors={where: message})
    page = await _page(request, status_code=201, created=created)
    page.headers["Cache-Control"] = "no-store"  # the secret is in this answer only
    return page


async def _token_or_404(request: Request[Any, Any, Any], token_id: str) -> Any:
    if TOKEN_ID.match(token_id):
        for token in await list_tokens(request.app.state):
            if token.id == token_id:
                return token
    raise ApiError(
        404, "unknown-token", N_("no token %(id)s: it may have been revoked already"), id=repr(token_id[:64])
    )


@get(f"{URL}/{{token_id:str}}/revoke", guards=MANAGE, operation_id="pageTokenRevoke", **PAGE)
async def revoke_form(request: Request[Any, Any, Any], token_id: str) -> Template:
    token = await _token_or_404(request, token_id)
    _ = await translator(request)
    return await render(
        request,
        "configuration/admin_token_revoke.html",
        token=token,
        role_names={str(r): role_label(str(r), _) for r in Role},
    )


@post(f"{URL}/{{token_id:str}}/revoke", guards=MANAGE, operation_id="pageTokenRevokeSubmit", **PAGE)
async def revoke_submit(request: Request[Any, Any, Any], token_id: str) -> Any:
    token = await _token_or_404(request, token_id)
    try:
        await revoke_token(request, token.id)
    except HTTPException as exc:
        if exc.status_code != 404:  # 404: revoked meanwhile (another tab): the list says so
            raise
    return redirect(f"{URL}?revoked={quote(token.name, safe='')}")


router = Router(path="/", route_handlers=[tokens_page, tokens_create, revoke_form, revoke_submit])
