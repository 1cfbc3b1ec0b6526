"""Configuration, administration half: ``/configuration/commands``, the command log (``?device=<id>``).

The most recent device commands, newest first, as ``GET /api/v1/commands`` lists them (the same function:
read from the EWS_COMMANDS stream, the command audit log): when (the site's time zone), the device, the
command and its value in the words of the device pages, who asked (the role) and the outcome with the
value read back or the error. A device filter (a plain GET form: it works without scripts). Guard:
``configure-site`` (administrator and installer), like the API route.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from ews_contracts.profiles import ProfileError, resolve
from ews_contracts.roles import Permission
from ews_contracts.site import Site
from litestar import Request, Router, get
from litestar.response import Template

from .. import vocabulary as _labels
from ..domain.commands import DEVICE_PATTERN, command_log
from ..errors import ApiError
from ..guards import requires
from ..i18n import N_
from ..sites import site_state
from ._page import render, translator
from .administration import role_label

PAGE_LIMIT = 100  # commands the page shows

STATUS_LABELS = {
    "requested": N_("No outcome yet"),
    "completed": N_("Done"),
    "failed": N_("Failed"),
    "expired": N_("Expired, not executed"),
}


def device_names(site: Site) -> dict[str, str]:
    """Every device id the log may name (retired ones too) and its name."""
    names = {d.id: d.name for d in site.retired_devices}
    names.update((d.id, d.name) for d in site.devices)
    return names


def commandable(site: Site, profiles: dict[str, Any]) -> list[tuple[str, str]]:
    """(id, name) of the site's devices whose profile declares commands, by name."""
    found = []
    for device in site.devices:
        with contextlib.suppress(ProfileError):
            if resolve(device, profiles).commands:
                found.append((device.id, device.name))
    return sorted(found, key=lambda item: (item[1].casefold(), item[0]))


@get(
    "/configuration/commands",
    guards=[requires(Permission.CONFIGURE_SITE)],
    operation_id="pageCommandLog",
    include_in_schema=False,
    tags=["pages"],
)
async def command_log_page(request: Request[Any, Any, Any], device: str | None = None) -> Template:
    state = site_state(request)
    _ = await translator(request)
    chosen = (device or "").strip() or None
    if chosen is not None and not re.fullmatch(DEVICE_PATTERN, chosen):
        raise ApiError(404, "unknown-device", N_("unknown device %(device)s"), device=repr(chosen))
    log = await command_log(state, PAGE_LIMIT, chosen)
    names = device_names(state.site)
    options = commandable(state.site, state.profiles)
    if chosen is not None and chosen not in dict(options):
        options.append((chosen, names.get(chosen, chosen)))
    rows = [
        {
            "command": c,
            "device_name": names.get(c.device, c.device),
            "who": role_label(c.requested_by, _) if c.requested_by else "",
            "outcome": _(STATUS_LABELS[c.status]),
        }
        for c in log.commands
    ]
    return await render(
        request,
        "configuration/admin_commands.html",
        rows=rows,
        more=log.more,
        limit=PAGE_LIMIT,
        device=chosen,
        options=options,
        labels=_labels,
    )


router = Router(path="/", route_handlers=[command_log_page])
