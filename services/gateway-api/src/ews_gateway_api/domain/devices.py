"""Devices: the site file merged with the live state the poller keeps in Redis (``ews_contracts.live``).

Guard: any logged-in role. The ``user`` role has no "My installation" page, but its Consumptions
pages (Details, Partial, Comparison) list devices by zone and circuit, so the list is not restricted to
``view-installation``; values are read-only here and commands have their own permission.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

from ews_contracts.live import LiveDevice, live_key
from ews_contracts.site import Device, Site
from litestar import Request, Router, get
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from pydantic import BaseModel, Field, ValidationError

from ..guards import authenticated

log = logging.getLogger("ews.gateway-api.devices")

DeviceStateView = Literal["on", "off", "comm-error", "fault", "unknown"]


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


def view(device: Device, live: LiveDevice | None) -> DeviceView:
    base = {
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
    }
    if not device.enabled:
        return DeviceView(**base, state="off")
    if live is None:
        return DeviceView(**base, state="unknown")
    return DeviceView(
        **base,
        state=live.state,
        reason=live.reason,
        values=live.values,
        states=live.states,
        updated_at=live.updated_at,
    )


async def views(redis: Any, site: Site, devices: list[Device]) -> list[DeviceView]:
    if not devices:
        return []
    raws = await redis.mget([live_key(site.site, d.id) for d in devices])
    return [view(d, _live(raw, d.id)) for d, raw in zip(devices, raws, strict=True)]


@get(
    "/devices",
    guards=[authenticated],
    operation_id="listDevices",
    summary="Every device of the site with its live state",
    tags=["devices"],
)
async def list_devices(request: Request[Any, Any, State]) -> DeviceList:
    state = request.app.state
    return DeviceList(devices=await views(state.redis, state.site, list(state.site.devices)))


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
    (one,) = await views(state.redis, state.site, [device])
    return one


router = Router(path="/api/v1", route_handlers=[list_devices, get_device])
