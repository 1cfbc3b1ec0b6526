"""Command buttons' answers: ``POST /commands`` (a form: device, action, value) sends the command with
the same function as ``POST /api/v1/commands`` and answers with its progress, a fragment that asks
``GET /commands/{id}`` again every second until the outcome (completed with the read-back, failed with
the reason, or expired) is known. Only roles with ``command-devices`` reach them; a command the profile
does not declare is refused with its reason in the page."""

from __future__ import annotations

from typing import Annotated, Any

from ews_contracts.roles import Permission
from litestar import Request, Router, get, post
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException
from litestar.params import Body
from litestar.response import Template
from pydantic import BaseModel

from .. import vocabulary as _labels
from ..domain.commands import CommandBody, command_status, submit_command
from ..guards import current_role, requires
from ..sites import site_state
from ._page import render

COMMAND = [requires(Permission.COMMAND_DEVICES)]


class CommandForm(BaseModel):
    device: str = ""
    action: str = ""
    value: str = ""


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
    try:
        body = CommandBody(device=data.device, action=data.action, value=data.value or None)
        status = await submit_command(site_state(request), current_role(request) or "", body)
    except HTTPException as exc:
        return await render(
            request, "partials/command.html", refused=exc.detail, labels=_labels, command=data
        )
    except ValueError as exc:  # the form's fields out of bounds (pydantic)
        return await render(
            request, "partials/command.html", refused=str(exc).splitlines()[0], labels=_labels, command=data
        )
    return await render(request, "partials/command.html", status=status, labels=_labels)


@get(
    "/commands/{command_id:str}",
    guards=COMMAND,
    operation_id="pageCommandStatus",
    include_in_schema=False,
    tags=["pages"],
)
async def command_progress(request: Request[Any, Any, Any], command_id: str) -> Template:
    status = await command_status(site_state(request), command_id)
    return await render(request, "partials/command.html", status=status, labels=_labels)


router = Router(path="/", route_handlers=[command_submit, command_progress])
