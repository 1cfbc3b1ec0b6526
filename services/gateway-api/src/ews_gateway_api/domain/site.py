"""The site's structure for the "My installation" pages and third parties: ``GET /api/v1/site``.

Gateways (with a fault summary), electrical panels, zones, circuits and virtual devices, each with what
the filter buttons need (how many devices ``GET /api/v1/devices?gateway=…`` / ``?panel=…`` lists).

A gateway is in ``comm-error`` when every enabled device on it is in communication error: the gateway
itself (or its link) is unreachable, so a page shows the fault once on the gateway instead of on every
device card; ``reason`` is the devices' shared reason (the most frequent one when they differ).

Guard: any logged-in role (the same as the device list, whose filters it describes).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from ews_contracts.site import Site
from litestar import Request, Router, get
from litestar.datastructures import State
from pydantic import BaseModel, Field

from ..guards import authenticated
from .devices import DeviceView, device_views


class GatewayView(BaseModel):
    id: str = Field(examples=["gw1"])
    name: str = ""
    endpoint: str = Field(examples=["192.168.1.50:502"], description="host:port, or the serial port.")
    status: Literal["ok", "comm-error"] = Field(
        description="comm-error when every enabled device of the gateway is in communication error."
    )
    reason: str = Field(default="", description="The devices' shared reason of a comm-error.")
    devices: int = Field(description="Devices listed under this gateway (virtual ones: their master's).")


class PanelView(BaseModel):
    id: str
    name: str
    devices: int = Field(description="Devices (and virtual devices) of this electrical panel.")


class ZoneView(BaseModel):
    id: str
    name: str


class CircuitView(BaseModel):
    id: str
    name: str
    zone: str | None = None


class VirtualDeviceView(BaseModel):
    id: str = Field(examples=["hvac-rest"])
    name: str
    master: str = Field(examples=["m1"])
    slaves: list[str] = Field(examples=[["gen1"]])
    exclude_from_total: bool = False


class SiteView(BaseModel):
    site: str = Field(examples=["demo"])
    name: str
    timezone: str = Field(examples=["Europe/Paris"])
    currency: str = Field(examples=["EUR"])
    language: str = Field(examples=["en"])
    gateways: list[GatewayView]
    panels: list[PanelView]
    zones: list[ZoneView]
    circuits: list[CircuitView]
    virtual_devices: list[VirtualDeviceView]


async def site_structure(state: State, *, devices: list[DeviceView] | None = None) -> SiteView:
    """The structure of ``state.site`` with each gateway's status from the live state (one Redis MGET).

    ``devices``: the unfiltered ``device_views(state)`` when the caller already has them (no second read).
    """
    site: Site = state.site
    if devices is None:
        devices = await device_views(state)
    gateways = []
    for g in site.gateways:
        listed = [d for d in devices if d.gateway == g.id]
        polled = [d for d in listed if d.kind == "device" and d.enabled]
        down = bool(polled) and all(d.state == "comm-error" for d in polled)
        reason = Counter(d.reason for d in polled).most_common(1)[0][0] if down else ""
        gateways.append(
            GatewayView(
                id=g.id,
                name=g.name,
                endpoint=g.endpoint,
                status="comm-error" if down else "ok",
                reason=reason,
                devices=len(listed),
            )
        )
    return SiteView(
        site=site.site,
        name=site.name,
        timezone=site.timezone,
        currency=site.currency,
        language=site.language,
        gateways=gateways,
        panels=[
            PanelView(id=p.id, name=p.name, devices=sum(1 for d in devices if d.panel == p.id))
            for p in site.panels
        ],
        zones=[ZoneView(id=z.id, name=z.name) for z in site.zones],
        circuits=[CircuitView(id=c.id, name=c.name, zone=c.zone) for c in site.circuits],
        virtual_devices=[
            VirtualDeviceView(
                id=v.id,
                name=v.name,
                master=v.master,
                slaves=list(v.slaves),
                exclude_from_total=v.exclude_from_total,
            )
            for v in site.virtual_devices
        ],
    )


@get(
    "/site",
    guards=[authenticated],
    operation_id="getSite",
    summary="The site's structure: gateways (with their status), panels, zones, circuits, virtual devices",
    tags=["site"],
)
async def get_site(request: Request[Any, Any, State]) -> SiteView:
    return await site_structure(request.app.state)


router = Router(path="/api/v1", route_handlers=[get_site])
