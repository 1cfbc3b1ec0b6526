"""My installation (M1–M6): the device list by gateway, panel or all, and a page per device.

- ``/installation?by=gateways|panels|all`` — device buttons (M2); ``/installation/list`` is the part
  that refreshes itself at the poll period (htmx).
- ``/installation/devices/{id}?tab=…`` — tabs by device kind: Measure (groups and tables, M3),
  Status/Command (M4); power-supervision I/O: Inputs and Outputs (M5); charging stations for the
  greenUp role: Charger error, Charge error, Commands (M6). ``…/{id}/live`` is the tab's live part.

Everything comes from ``domain.devices`` (the same functions as ``/api/v1/devices``) behind the
``view-installation`` permission; command buttons appear only for roles that may command.
"""

from __future__ import annotations

import json
from typing import Any

from ews_contracts.profiles import Profile, ProfileError, resolve
from ews_contracts.roles import Permission, Role
from litestar import Request, Router, get
from litestar.response import Template

from .. import vocabulary as _labels
from ..domain.devices import DeviceView, device_views
from ..domain.site import site_structure
from ..errors import ApiError, unknown
from ..guards import current_role, requires
from ..i18n import N_
from ..sites import site_state
from ._page import may, render
from .commands import command_key

VIEW = [requires(Permission.VIEW_INSTALLATION)]
FILTERS = {"gateways": N_("Gateways"), "panels": N_("Electrical panels"), "all": N_("All devices")}

TABS = {
    "measure": N_("Measure"),
    "status": N_("Status/Command"),
    "inputs": N_("Inputs"),
    "outputs": N_("Outputs"),
    "charger-error": N_("Charger error"),
    "charge-error": N_("Charge error"),
    "commands": N_("Commands"),
}


def poll_seconds(request: Request[Any, Any, Any]) -> float:
    return max(1.0, float(site_state(request).settings.poll_interval))


def _check_by(by: str) -> str:
    if by not in FILTERS:
        raise unknown("unknown-list", N_("unknown list %(value)s: use %(choices)s"), by, FILTERS)
    return by


async def _groups(request: Request[Any, Any, Any], by: str) -> dict[str, Any]:
    state = site_state(request)
    devices = await device_views(state)
    structure = await site_structure(state, devices=devices)
    groups: list[dict[str, Any]] = []
    if by == "gateways":
        faults = {g.id: g for g in structure.gateways if g.status != "ok"}
        for g in structure.gateways:
            members = [d for d in devices if d.gateway == g.id]
            groups.append(
                {"title": g.name or g.id, "sub": g.endpoint, "devices": members, "fault": faults.get(g.id)}
            )
        loose = [d for d in devices if d.gateway not in {g.id for g in structure.gateways}]
        if loose:
            groups.append({"title": N_("Virtual devices"), "translate": True, "devices": loose})
    elif by == "panels":
        for p in structure.panels:
            groups.append({"title": p.name, "devices": [d for d in devices if d.panel == p.id]})
        loose = [d for d in devices if d.panel not in {p.id for p in structure.panels}]
        if loose:
            groups.append({"title": N_("Not in a panel"), "translate": True, "devices": loose})
    else:
        groups.append({"title": "", "devices": devices})
    down = {g.id for g in structure.gateways if g.status != "ok"}
    return {"groups": groups, "down_gateways": down, "by": by}


@get("/installation", guards=VIEW, operation_id="pageInstallation", include_in_schema=False, tags=["pages"])
async def installation(request: Request[Any, Any, Any], by: str = "gateways") -> Template:
    by = _check_by(by)
    return await render(
        request,
        "installation/list.html",
        filters=FILTERS,
        poll=poll_seconds(request),
        **await _groups(request, by),
        labels=_labels,
    )


@get(
    "/installation/list",
    guards=VIEW,
    operation_id="pageInstallationList",
    include_in_schema=False,
    tags=["pages"],
)
async def installation_list(request: Request[Any, Any, Any], by: str = "gateways") -> Template:
    by = _check_by(by)
    return await render(
        request,
        "installation/_groups.html",
        poll=poll_seconds(request),
        **await _groups(request, by),
        labels=_labels,
    )


def profile_of(request: Request[Any, Any, Any], device: DeviceView) -> Profile | None:
    """The device's resolved profile (modules merged); None for a virtual device."""
    real = site_state(request).site.device(device.id)
    if real is None:
        return None
    try:
        return resolve(real, site_state(request).profiles)
    except ProfileError:
        return None


def tabs_for(device: DeviceView, profile: Profile | None, role: str | None) -> list[str]:
    """The tabs of a device page, by what its profile declares (and, for chargers, who looks)."""
    states = {s.name for s in profile.states} if profile else set(device.states)
    measured = bool(profile.registers) if profile else bool(device.values)
    if "charger" in states and role == Role.GREENUP:
        return ["measure", "charger-error", "charge-error", "commands"]
    inputs = any(s.startswith("input_") for s in states)
    outputs = any(s.startswith("output_") for s in states)
    if inputs or outputs:
        return (["inputs"] if inputs or measured else []) + (
            ["outputs"] if outputs or device.commands else []
        )
    tabs = []
    if measured or device.kind == "virtual":
        tabs.append("measure")
    if states or device.commands:
        tabs.append("status")
    return tabs or ["measure"]


async def _device(request: Request[Any, Any, Any], device_id: str) -> DeviceView:
    for d in await device_views(site_state(request)):
        if d.id == device_id:
            return d
    raise ApiError(404, "unknown-device", N_("unknown device %(device)s"), device=repr(device_id))


def _measure(device: DeviceView, profile: Profile | None, group: str | None, page: int) -> dict[str, Any]:
    """The Measure tab: the groups of what the profile measures (values not read yet show as –)."""
    quantities = {str(r.quantity): 0.0 for r in profile.registers} if profile else {}
    quantities.update(device.values)
    groups = _labels.group_tables(quantities)
    if not groups:
        return {"groups": [], "group": None, "tables": [], "page": 0}
    keys = [g.key for g, _ in groups]
    if group is None:
        group = keys[0]
    if group not in keys:
        raise unknown("unknown-group", N_("unknown measure group %(value)s: use %(choices)s"), group, keys)
    chosen, tables = groups[keys.index(group)]
    page = min(max(page, 1), len(tables))
    table, names = tables[page - 1]
    chart = None
    if chosen.chart:
        chart = {
            "type": "bar",
            "categories": [n.rsplit("_", 1)[-1].upper() for n in names],
            "series": [{"name": "%", "values": [device.values.get(n) for n in names]}],
            "unit": "%",
        }
    return {
        "groups": [g for g, _ in groups],
        "group": chosen,
        "table": table,
        "names": names,
        "page": page,
        "pages": len(tables),
        "chart_json": json.dumps(chart) if chart else None,
    }


async def _tab_context(
    request: Request[Any, Any, Any], device_id: str, tab: str | None, group: str | None, page: int
) -> dict[str, Any]:
    device = await _device(request, device_id)
    role = current_role(request)
    profile = profile_of(request, device)
    tabs = tabs_for(device, profile, role)
    tab = tab or tabs[0]
    if tab not in tabs:
        raise unknown("unknown-tab", N_("unknown tab %(value)s for this device: use %(choices)s"), tab, tabs)
    context: dict[str, Any] = {
        "device": device,
        "tabs": [(t, TABS[t]) for t in tabs],
        "tab": tab,
        "can_command": may(request, Permission.COMMAND_DEVICES),
        "command_key": command_key,  # each command form's own key (pages/commands.py)
        "labels": _labels,
        "poll": poll_seconds(request),
        "group_key": group,
    }
    if tab == "measure":
        context.update(_measure(device, profile, group, page))
    return context


@get(
    ["/installation/devices/{device_id:str}", "/installation/devices/{device_id:str}/live"],
    guards=VIEW,
    operation_id="pageDevice",
    include_in_schema=False,
    tags=["pages"],
)
async def device_page(
    request: Request[Any, Any, Any],
    device_id: str,
    tab: str | None = None,
    group: str | None = None,
    page: int = 1,
) -> Template:
    """The device page, or (``…/live``) the live part of its tab that htmx asks for at the poll period."""
    context = await _tab_context(request, device_id, tab, group, page)
    live = request.url.path.endswith("/live")
    return await render(request, "installation/_tab.html" if live else "installation/device.html", **context)


router = Router(path="/", route_handlers=[installation, installation_list, device_page])
