"""Command buttons' answers: ``POST /commands`` (a form: device, action, value) sends the command with
the same function as ``POST /api/v1/commands`` and answers with its progress, a fragment that asks
``GET /commands/{id}`` again every second until the outcome (completed with the read-back, failed with
the reason, or expired) is known. Only roles with ``command-devices`` reach them; a command the profile
does not declare is refused with its reason in the page.

Exactly one command per click: each command form carries a hidden ``key``, new at each render
(``command_key()``, given to the pages that show command buttons), sent as the command's
``Idempotency-Key`` (with the value: Start and Wait of one form are two commands). The same rendered form
sent twice (a double click, a resubmit) answers the first command. The fragment that shows the command
finished (or refused) gives its form a new key (``hx-swap-oob``, input ``command-key-<device>-<action>``):
a click after that is a new command. The buttons are disabled while the request runs
(``hx-disabled-elt``)."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from ews_contracts.roles import Permission
from litestar import Request, Router, get, post
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException
from litestar.params import Body
from litestar.response import Template
from pydantic import BaseModel, Field

from .. import vocabulary as _labels
from ..domain.commands import CommandBody, command_status, submit_command
from ..guards import current_role, requires
from ..sites import site_state
from ._page import render

COMMAND = [requires(Permission.COMMAND_DEVICES)]


KEY_BYTES = 16  # random bytes of a command form's key


def command_key() -> str:
    """A command form's key (a template calls it once per rendered form)."""
    return secrets.token_urlsafe(KEY_BYTES)


class CommandForm(BaseModel):
    device: str = ""
    action: str = ""
    value: str = ""
    key: str = Field(default="", max_length=64)


@post(
    "/commands",
    guards=COMMAND,
    operation_id="pageCommand",
    include_in_schema=False,
    tags=["pages"],
    status_code=200,
)
async def command_submit(
    request: Request[Any, Any, Any],
    data: Annotated[CommandForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Template:
    once = f"page:{data.key}:{data.value}" if data.key else None  # this form's click on this value
    try:
        body = CommandBody(device=data.device, action=data.action, value=data.value or None)
        status = await submit_command(site_state(request), current_role(request) or "", body, once)
    except HTTPException as exc:
        return await _fragment(request, refused=exc.detail, command=data)
    except ValueError as exc:  # the form's fields out of bounds (pydantic)
        return await _fragment(request, refused=str(exc).splitlines()[0], command=data)
    return await _fragment(request, status=status)


async def _fragment(request: Request[Any, Any, Any], **context: Any) -> Template:
    return await render(request, "partials/command.html", labels=_labels, command_key=command_key, **context)


@get(
    "/commands/{command_id:str}",
    guards=COMMAND,
    operation_id="pageCommandStatus",
    include_in_schema=False,
    tags=["pages"],
)
async def command_progress(request: Request[Any, Any, Any], command_id: str) -> Template:
    status = await command_status(site_state(request), command_id)
    return await _fragment(request, status=status)


router = Router(path="/", route_handlers=[command_submit, command_progress])
