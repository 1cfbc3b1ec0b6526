"""Green'Up (G1–G3): EV charging stations, for the greenUp role.

- ``/greenup/details?by=zones|all&station=<id>&tab=charger|charge|information`` — stations by zone or
  all, and one station's tabs Charger (state, mode, errors), Charge (current charge, power, energy,
  charge error) and Information (rated current, address, model).
- ``/greenup/management?by=priority|zones|all`` — Start / Wait and Normal / Priority of the *current*
  charge of each station (side): the commands ``charge`` and ``priority`` of its profile, which never
  change the station's default settings.
- ``/greenup/stations/{id}/button`` — a station button's live part (state, charge, priority mark),
  refreshed at the poll period.

Stations are the devices whose profile declares a ``charger`` state; the data comes from
``domain.devices`` like ``/api/v1/devices``.
"""

from __future__ import annotations

from typing import Any

from ews_contracts.roles import Permission
from ews_contracts.site import Site
from litestar import Request, Router, get
from litestar.response import Template

from .. import vocabulary as _labels
from ..domain.devices import DeviceView, device_views
from ..errors import ApiError, unknown
from ..guards import requires
from ..i18n import N_
from ..sites import site_state
from ._page import may, redirect, render, translator
from .commands import command_key
from .installation import poll_seconds

DETAILS = [requires(Permission.GREENUP_DETAILS)]
MANAGEMENT = [requires(Permission.GREENUP_MANAGEMENT)]
DETAIL_LISTS = {"zones": N_("Zones"), "all": N_("All")}
MANAGEMENT_LISTS = {"priority": N_("Priority"), "zones": N_("Zones"), "all": N_("All")}
STATION_TABS = {"charger": N_("Charger"), "charge": N_("Charge"), "information": N_("Information")}


def is_station(device: DeviceView) -> bool:
    return (
        any(c.action == "charge" for c in device.commands)
        or "charger" in device.states
        or (device.profile.startswith("ev-station"))
    )


async def stations(request: Request[Any, Any, Any]) -> list[DeviceView]:
    return [d for d in await device_views(site_state(request)) if d.kind == "device" and is_station(d)]


def zone_name(site: Site, device: DeviceView) -> str:
    zone = device.zone or next((c.zone for c in site.circuits if c.id == device.circuit), None)
    return next((z.name for z in site.zones if z.id == zone), "")


def grouped(
    site: Site, items: list[DeviceView], by: str, translate: Any
) -> list[tuple[str, list[DeviceView]]]:
    if by == "zones":
        out: dict[str, list[DeviceView]] = {}
        for d in items:
            out.setdefault(zone_name(site, d) or translate("No zone"), []).append(d)
        return list(out.items())
    if by == "priority":
        first = [d for d in items if d.states.get("priority") == "priority"]
        rest = [d for d in items if d.states.get("priority") != "priority"]
        return [(translate("Priority"), first), (translate("Normal"), rest)]
    return [("", items)]


UNKNOWN_STATION = N_("unknown charging station %(station)s")


def _check(value: str, allowed: dict[str, str], what: str) -> str:
    messages = {
        "list": N_("unknown list %(value)s: use %(choices)s"),
        "tab": N_("unknown tab %(value)s: use %(choices)s"),
    }
    if value not in allowed:
        raise unknown(f"unknown-{what}", messages[what], value, allowed)
    return value


def _common(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return {
        "labels": _labels,
        "poll": poll_seconds(request),
        "zone_of": lambda d: zone_name(site_state(request).site, d),
        "can_command": may(request, Permission.COMMAND_DEVICES),
        "command_key": command_key,  # each command form's own key (pages/commands.py)
    }


@get("/greenup", guards=DETAILS, operation_id="pageGreenupHome", include_in_schema=False, tags=["pages"])
async def greenup_home(request: Request[Any, Any, Any]) -> Any:
    target = "/greenup/management" if may(request, Permission.GREENUP_MANAGEMENT) else "/greenup/details"
    return redirect(target)


@get(
    "/greenup/details",
    guards=DETAILS,
    operation_id="pageGreenupDetails",
    include_in_schema=False,
    tags=["pages"],
)
async def greenup_details(
    request: Request[Any, Any, Any], by: str = "zones", station: str | None = None, tab: str = "charger"
) -> Template:
    _check(by, DETAIL_LISTS, "list")
    _check(tab, STATION_TABS, "tab")
    items = await stations(request)
    chosen = None
    if station is not None:
        chosen = next((d for d in items if d.id == station), None)
        if chosen is None:
            raise ApiError(404, "unknown-station", UNKNOWN_STATION, station=repr(station))
    elif items:
        chosen = items[0]
    t = await translator(request)
    return await render(
        request,
        "greenup/details.html",
        lists=DETAIL_LISTS,
        by=by,
        groups=grouped(site_state(request).site, items, by, t),
        chosen=chosen,
        tabs=STATION_TABS,
        tab=tab,
        **_common(request),
    )


@get(
    "/greenup/management",
    guards=MANAGEMENT,
    operation_id="pageGreenupManagement",
    include_in_schema=False,
    tags=["pages"],
)
async def greenup_management(request: Request[Any, Any, Any], by: str = "priority") -> Template:
    _check(by, MANAGEMENT_LISTS, "list")
    items = await stations(request)
    t = await translator(request)
    return await render(
        request,
        "greenup/management.html",
        lists=MANAGEMENT_LISTS,
        by=by,
        groups=grouped(site_state(request).site, items, by, t),
        **_common(request),
    )


@get(
    "/greenup/stations/{device_id:str}/button",
    guards=DETAILS,
    operation_id="pageGreenupStation",
    include_in_schema=False,
    tags=["pages"],
)
async def station_button(request: Request[Any, Any, Any], device_id: str) -> Template:
    station = next((d for d in await stations(request) if d.id == device_id), None)
    if station is None:
        raise ApiError(404, "unknown-station", UNKNOWN_STATION, station=repr(device_id))
    return await render(request, "greenup/_station.html", d=station, **_common(request))


router = Router(path="/", route_handlers=[greenup_home, greenup_details, greenup_management, station_button])
