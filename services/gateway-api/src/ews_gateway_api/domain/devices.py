"""Devices: the site file merged with the live state the poller keeps in Redis (``ews_contracts.live``)
and with the device's profile (its functions, its measured tables) — what "My installation" shows (M1–M5)
without touching ClickHouse. ``GET /devices`` filters by gateway, panel, zone and circuit.

Guard: any logged-in role. The ``user`` role has no "My installation" page, but its Consumptions
pages (Details, Partial, Comparison) list devices by zone and circuit, so the list is not restricted to
``view-installation``; values are read-only here and commands have their own permission.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

from ews_contracts.live import LiveDevice, live_key
from ews_contracts.profiles import Profile, ProfileError, resolve
from ews_contracts.quantities import GROUPS, group_of, unit_of
from ews_contracts.site import Device, Site
from litestar import Request, Router, get
from litestar.datastructures import State
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import Parameter
from pydantic import BaseModel, Field, ValidationError

from ..guards import authenticated

log = logging.getLogger("ews.gateway-api.devices")

DeviceStateView = Literal["on", "off", "comm-error", "fault", "unknown"]


class MeasureRow(BaseModel):
    quantity: str = Field(examples=["voltage_l1"])
    value: float
    unit: str = Field(examples=["V"])


class MeasureTable(BaseModel):
    group: str = Field(examples=["voltage"], description="energy, power, voltage, current, frequency, thd, …")
    rows: list[MeasureRow]


class CommandView(BaseModel):
    action: str = Field(examples=["charge"])
    label: str = ""
    values: list[str] = Field(examples=[["start", "wait"]])
    state: str | None = Field(default=None, description="The state that shows the command's effect.")


class DeviceView(BaseModel):
    id: str = Field(examples=["ev1"])
    name: str
    profile: str = Field(examples=["ev-station-greenup"])
    gateway: str
    address: int = Field(description="Modbus unit id.")
    position: int | None = Field(default=None, description="Input of a pulse concentrator.")
    side: Literal["A", "B"] | None = Field(default=None, description="Side of a double EV station.")
    medium: Literal["electricity", "water", "gas"] = "electricity"
    panel: str | None = None
    zone: str | None = None
    circuit: str | None = None
    enabled: bool = True
    exclude_from_total: bool = False
    state: DeviceStateView = Field(
        description="on, off (disabled / not polled), comm-error, fault, or unknown before the first poll."
    )
    reason: str = Field(default="", description="Cause of a comm-error or fault.")
    values: dict[str, float] = Field(default_factory=dict, description="Latest values, canonical units.")
    states: dict[str, str] = Field(default_factory=dict, examples=[{"charger": "charging"}])
    updated_at: datetime | None = Field(default=None, description="Time of the latest reading (UTC).")
    address_label: str = Field(
        default="",
        examples=["5-1", "9-A"],
        description="Modbus address as shown on the device button: address-position for pulse meters, "
        "address-side for two-sided chargers.",
    )
    functions: list[Literal["measure", "status", "command", "function", "link"]] = Field(
        default_factory=list, description="Function symbols (from the device profile)."
    )
    breaker: Literal["open", "closed", "tripped"] | None = Field(
        default=None, description="Breaker state, when the device has a protection status."
    )
    tables: list[MeasureTable] = Field(
        default_factory=list, description="Measure tab: latest values grouped by quantity (M3)."
    )
    commands: list[CommandView] = Field(default_factory=list, description="Declared commands (M4, M5).")


class DeviceList(BaseModel):
    devices: list[DeviceView]


def _live(raw: Any, device_id: str) -> LiveDevice | None:
    if raw is None:
        return None
    try:
        return LiveDevice.model_validate_json(raw)
    except ValidationError as exc:
        log.warning("ignoring unreadable live state of %s: %s", device_id, exc.errors()[0].get("msg", ""))
        return None


def address_label(device: Device) -> str:
    if device.position is not None:
        return f"{device.address}-{device.position}"
    if device.side is not None:
        return f"{device.address}-{device.side}"
    return str(device.address)


def tables(values: dict[str, float]) -> list[MeasureTable]:
    """Values grouped into the Measure tab's tables, in display order."""
    order = list(GROUPS) + ["other"]
    grouped: dict[str, list[MeasureRow]] = {}
    for quantity, value in values.items():
        try:
            unit = unit_of(quantity)
        except KeyError:
            unit = ""
        grouped.setdefault(group_of(quantity), []).append(
            MeasureRow(quantity=quantity, value=value, unit=unit)
        )
    return [
        MeasureTable(group=g, rows=sorted(grouped[g], key=lambda r: r.quantity))
        for g in sorted(grouped, key=order.index)
    ]


def _profile(device: Device, profiles: dict[str, Profile]) -> Profile | None:
    try:
        return resolve(device, profiles)
    except ProfileError:
        return None


def view(device: Device, live: LiveDevice | None, profiles: dict[str, Profile] | None = None) -> DeviceView:
    profile = _profile(device, profiles) if profiles is not None else None
    base: dict[str, Any] = {
        "id": device.id,
        "name": device.name,
        "profile": device.profile,
        "gateway": device.gateway,
        "address": device.address,
        "position": device.position,
        "side": device.side,
        "medium": device.medium or "electricity",
        "panel": device.panel,
        "zone": device.zone,
        "circuit": device.circuit,
        "enabled": device.enabled,
        "exclude_from_total": device.exclude_from_total,
        "address_label": address_label(device),
    }
    if profile is not None:
        base["functions"] = list(profile.functions)
        base["commands"] = [
            CommandView(
                action=c.action,
                label=c.label,
                values=list(c.values),
                state=(shown.name if (shown := profile.command_state(c)) else None),
            )
            for c in profile.commands
        ]
    if not device.enabled:
        return DeviceView(**base, state="off")
    if live is None:
        return DeviceView(**base, state="unknown")
    breaker = live.states.get("breaker")
    return DeviceView(
        **base,
        state=live.state,
        reason=live.reason,
        values=live.values,
        states=live.states,
        updated_at=live.updated_at,
        breaker=breaker if breaker in ("open", "closed", "tripped") else None,
        tables=tables(live.values),
    )


async def views(
    redis: Any, site: Site, devices: list[Device], profiles: dict[str, Profile] | None = None
) -> list[DeviceView]:
    if not devices:
        return []
    raws = await redis.mget([live_key(site.site, d.id) for d in devices])
    return [view(d, _live(raw, d.id), profiles) for d, raw in zip(devices, raws, strict=True)]


def _check_filter(kind: str, value: str | None, known: list[Any]) -> None:
    if value is not None and value not in {item.id for item in known}:
        raise ValidationException(
            f"unknown {kind} {value!r}; known: {', '.join(sorted(item.id for item in known)) or 'none'}"
        )


@get(
    "/devices",
    guards=[authenticated],
    operation_id="listDevices",
    summary="Every device of the site with its live state",
    tags=["devices"],
)
async def list_devices(
    request: Request[Any, Any, State],
    gateway: str | None = Parameter(default=None, description="Only the devices of this gateway."),
    panel: str | None = Parameter(default=None, description="Only the devices of this electrical panel."),
    zone: str | None = Parameter(default=None, description="Only the devices of this measurement zone."),
    circuit: str | None = Parameter(default=None, description="Only the devices of this circuit."),
) -> DeviceList:
    state = request.app.state
    site: Site = state.site
    _check_filter("gateway", gateway, site.gateways)
    _check_filter("panel", panel, site.panels)
    _check_filter("zone", zone, site.zones)
    _check_filter("circuit", circuit, site.circuits)
    devices = [
        d
        for d in site.devices
        if (gateway is None or d.gateway == gateway)
        and (panel is None or d.panel == panel)
        and (zone is None or d.zone == zone)
        and (circuit is None or d.circuit == circuit)
    ]
    return DeviceList(devices=await views(state.redis, site, devices, state.profiles))


@get(
    "/devices/{device_id:str}",
    guards=[authenticated],
    operation_id="getDevice",
    summary="One device with its live state",
    tags=["devices"],
)
async def get_device(request: Request[Any, Any, State], device_id: str) -> DeviceView:
    state = request.app.state
    device = state.site.device(device_id)
    if device is None:
        raise NotFoundException(f"unknown device {device_id!r}")
    (one,) = await views(state.redis, state.site, [device], state.profiles)
    return one


router = Router(path="/api/v1", route_handlers=[list_devices, get_device])
