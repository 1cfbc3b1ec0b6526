"""The site's structure for the "My installation" pages and third parties: ``GET /api/v1/site``.

Gateways (with a fault summary), electrical panels, zones, circuits and virtual devices, each with what
the filter buttons need (how many devices ``GET /api/v1/devices?gateway=…`` / ``?panel=…`` lists); and,
for programs (a machine token with the ``user`` role reads it), every device and virtual device with its
place (gateway, panel, zone, circuit), its profile and family, and the quantities it measures with their
units — what to ask ``GET /api/v1/consumption?scope=device:<id>`` and ``…/consumption/quantities`` for.

A gateway is in ``comm-error`` when every enabled device on it is in communication error: the gateway
itself (or its link) is unreachable, so a page shows the fault once on the gateway instead of on every
device card; ``reason`` is the devices' shared reason (the most frequent one when they differ).

Guard: any logged-in role, session or machine token (the same as the device list, whose filters it
describes).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from ews_contracts.profiles import Profile, ProfileError, resolve
from ews_contracts.quantities import COUNTERS, group_of, unit_of
from ews_contracts.site import Device, Site
from litestar import Request, Router, get
from litestar.datastructures import State
from pydantic import BaseModel, Field

from ..guards import authenticated
from ..sites import SITE_PARAMETER, site_state
from .devices import MEDIUM_QUANTITY, VIRTUAL_PROFILE, DeviceView, device_views


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


class QuantityView(BaseModel):
    quantity: str = Field(
        examples=["energy_active_import"], description="Canonical name (a key of `values`)."
    )
    unit: str = Field(examples=["Wh"], description="Its fixed unit ('' for a ratio or a count).")
    group: str = Field(examples=["energy"], description="energy, power, voltage, current, frequency, thd, …")
    counter: bool = Field(
        description="A cumulative counter: its consumption is in GET /api/v1/consumption (scope device:<id>)."
    )


class SiteDeviceView(BaseModel):
    id: str = Field(examples=["m1"])
    name: str
    kind: Literal["device", "virtual"] = Field(description="device, or virtual (master − Σ slaves).")
    profile: str = Field(
        examples=["multifunction-meter-412045"], description="'virtual' for a virtual device."
    )
    profile_name: str = Field(default="", examples=["Multifunction meter 4 120 45"])
    family: str = Field(
        default="", examples=["D1 power-meter"], description="Requirement family of the profile."
    )
    medium: Literal["electricity", "water", "gas"]
    gateway: str = Field(description="Gateway (of its master for a virtual device).")
    address_label: str = Field(examples=["5-1", "9-A", "1-V"])
    panel: str | None = None
    zone: str | None = None
    circuit: str | None = None
    enabled: bool
    exclude_from_total: bool
    quantities: list[QuantityView] = Field(description="What it measures, in the order of its profile.")
    commands: list[str] = Field(default_factory=list, examples=[["charge"]], description="Command actions.")


def _quantity(name: str) -> QuantityView:
    try:
        unit = unit_of(name)
    except KeyError:
        unit = ""
    return QuantityView(quantity=name, unit=unit, group=group_of(name), counter=name in COUNTERS)


def describe_devices(
    site: Site, devices: list[DeviceView], profiles: dict[str, Profile]
) -> list[SiteDeviceView]:
    """Every device and virtual device of ``devices`` with its profile, family and measured quantities."""
    by_id: dict[str, Device] = {d.id: d for d in site.devices}
    out = []
    for d in devices:
        common: dict[str, Any] = {
            "id": d.id,
            "name": d.name,
            "kind": d.kind,
            "medium": d.medium,
            "gateway": d.gateway,
            "address_label": d.address_label,
            "panel": d.panel,
            "zone": d.zone,
            "circuit": d.circuit,
            "enabled": d.enabled,
            "exclude_from_total": d.exclude_from_total,
        }
        device = by_id.get(d.id)
        if d.kind == "virtual" or device is None:
            quantity = str(MEDIUM_QUANTITY[d.medium])
            out.append(
                SiteDeviceView(
                    **common, profile=VIRTUAL_PROFILE, family="virtual", quantities=[_quantity(quantity)]
                )
            )
            continue
        try:
            profile: Profile | None = resolve(device, profiles)
        except ProfileError:
            profile = None
        names = [str(r.quantity) for r in profile.registers] if profile else []
        if "pulse_count" in names and device.pulse_weight is not None and device.medium is not None:
            # the poller publishes pulse_count × pulse_weight as the medium's counter (ews_poller.decode)
            counted = str(MEDIUM_QUANTITY[device.medium])
            if counted not in names:
                names.append(counted)
        out.append(
            SiteDeviceView(
                **common,
                profile=device.profile,
                profile_name=profile.name if profile else "",
                family=profile.family if profile else "",
                quantities=[_quantity(name) for name in names],
                commands=[c.action for c in profile.commands] if profile else [],
            )
        )
    return out


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
    devices: list[SiteDeviceView] = Field(
        default_factory=list,
        description="Every device, then every virtual device: profile, family, quantities with their units.",
    )


async def site_structure(
    state: State, *, devices: list[DeviceView] | None = None, with_devices: bool = False
) -> SiteView:
    """The structure of ``state.site`` with each gateway's status from the live state (one Redis MGET).

    ``devices``: the unfiltered ``device_views(state)`` when the caller already has them (no second read);
    ``with_devices``: also describe every device (``SiteView.devices``; the pages do not need it).
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
        devices=describe_devices(site, devices, state.profiles) if with_devices else [],
    )


@get(
    "/site",
    guards=[authenticated],
    operation_id="getSite",
    summary="The site's structure: gateways (with their status), panels, zones, circuits, virtual devices, "
    "and every device with its profile, family and quantities (with units)",
    tags=["site"],
)
async def get_site(request: Request[Any, Any, State]) -> SiteView:
    return await site_structure(site_state(request), with_devices=True)


router = Router(path="/api/v1", parameters=SITE_PARAMETER, route_handlers=[get_site])
