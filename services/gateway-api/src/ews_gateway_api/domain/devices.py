"""Devices: the site file merged with the live state the poller keeps in Redis (``ews_contracts.live``)
and with the device's profile (its functions, its measured tables) — what "My installation" shows (M1–M5)
without touching ClickHouse. ``GET /devices`` filters by gateway, panel, zone and circuit.

The list holds the site's devices (``kind: "device"``), then its master/slave virtual devices (D12,
``kind: "virtual"``): master − Σ slaves, computed from the members' live values (see ``virtual_view``).

Pages call the same functions as the JSON API: ``device_views(site_state(request), …)`` (filters checked,
virtual devices included) or ``views(redis, site, devices, profiles)`` for a given list of devices.

Guard: any logged-in role. The ``user`` role has no "My installation" page, but its Consumptions
pages (Details, Partial, Comparison) list devices by zone and circuit, so the list is not restricted to
``view-installation``; values are read-only here and commands have their own permission.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from ews_contracts.live import LiveDevice, live_key
from ews_contracts.profiles import Function, Profile, ProfileError, resolve
from ews_contracts.quantities import GROUPS, Quantity, group_of, unit_of
from ews_contracts.site import ID_PATTERN, Device, Site, VirtualDevice
from litestar import Request, Router, get
from litestar.datastructures import State
from litestar.exceptions import ValidationException
from litestar.params import Parameter
from pydantic import BaseModel, Field, ValidationError

from .. import vocabulary
from ..errors import ApiError
from ..guards import authenticated
from ..i18n import N_, translations
from ..sites import SITE_PARAMETER, site_state

if TYPE_CHECKING:
    from .site import SiteView, site_structure  # noqa: F401 (re-exported lazily, see __getattr__)

log = logging.getLogger("ews.gateway-api.devices")

DeviceStateView = Literal["on", "off", "comm-error", "fault", "unknown"]
FUNCTIONS: tuple[Function, ...] = ("measure", "status", "command", "function", "link")
VIRTUAL_PROFILE = "virtual"
VIRTUAL_FUNCTIONS: list[Function] = ["measure", "function"]
# the counter a virtual device computes, per medium (its Measure tab: Ea+ or the volume only, M3)
MEDIUM_QUANTITY: dict[str, str] = {
    "electricity": Quantity.ENERGY_ACTIVE_IMPORT,
    "water": Quantity.WATER_VOLUME,
    "gas": Quantity.GAS_VOLUME,
}
DEFAULT_POLL_INTERVAL = 2.0  # EWS_POLL_INTERVAL's default, when no settings are at hand
STALE_PERIODS = 3  # a reading older than this many poll periods of its gateway is stale …
MIN_STALE_S = 30.0  # … and never before this many seconds (a long bus cycle is not a fault)


class MeasureRow(BaseModel):
    quantity: str = Field(examples=["voltage_l1"])
    value: float
    unit: str = Field(examples=["V"])


class MeasureTable(BaseModel):
    group: str = Field(examples=["voltage"], description="energy, power, voltage, current, frequency, thd, …")
    rows: list[MeasureRow]


class CommandView(BaseModel):
    action: str = Field(examples=["charge"])
    label: str = Field(default="", description="The command's name in the reader's language.")
    values: list[str] = Field(examples=[["start", "wait"]])
    state: str | None = Field(default=None, description="The state that shows the command's effect.")


class VirtualMembers(BaseModel):
    """What a virtual device is computed from (D12): ``master`` − Σ ``slaves``."""

    type: Literal["master-slave"] = "master-slave"
    master: str = Field(examples=["m1"])
    slaves: list[str] = Field(examples=[["gen1"]])


class DeviceView(BaseModel):
    id: str = Field(examples=["ev1"])
    name: str
    kind: Literal["device", "virtual"] = Field(
        default="device", description="device, or virtual (a master/slave virtual device, D12)."
    )
    virtual: VirtualMembers | None = Field(default=None, description="Members of a virtual device.")
    profile: str = Field(examples=["ev-station-greenup"], description="Device profile ('virtual' for one).")
    gateway: str = Field(description="Gateway of the device (of its master for a virtual device).")
    address: int = Field(description="Modbus unit id (of its master for a virtual device).")
    position: int | None = Field(default=None, description="Input of a pulse concentrator.")
    side: Literal["A", "B"] | None = Field(default=None, description="Side of a double EV station.")
    medium: Literal["electricity", "water", "gas"] = "electricity"
    panel: str | None = None
    zone: str | None = None
    circuit: str | None = None
    enabled: bool = Field(default=True, description="Polled (a virtual device: all its members are).")
    exclude_from_total: bool = False
    state: DeviceStateView = Field(
        description="on, off (disabled / not polled), comm-error, fault, or unknown before the first poll."
    )
    reason: str = Field(default="", description="Cause of a comm-error or fault.")
    values: dict[str, float] = Field(default_factory=dict, description="Latest values, canonical units.")
    states: dict[str, str] = Field(default_factory=dict, examples=[{"charger": "charging"}])
    updated_at: datetime | None = Field(default=None, description="Time of the latest reading (UTC).")
    age_s: float | None = Field(default=None, description="Seconds since updated_at (when known).")
    stale: bool = Field(
        default=False,
        description="The values are not current: communication error, or the latest reading is older than "
        f"{STALE_PERIODS} poll periods of the gateway (at least {MIN_STALE_S:g} s).",
    )
    address_label: str = Field(
        default="",
        examples=["5-1", "9-A", "1-V"],
        description="Modbus address as shown on the device button: address-position for pulse meters, "
        "address-side for two-sided chargers, <master's label>-V for virtual devices.",
    )
    functions: list[Function] = Field(
        default_factory=list,
        description="Function symbols, in this order: measure, status, command, function, link "
        "(see ews_gateway_api.domain.devices.device_functions).",
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


def _profile(device: Device, profiles: Mapping[str, Profile]) -> Profile | None:
    try:
        return resolve(device, profiles)
    except ProfileError:
        return None


# --- function symbols (M2) -------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteLinks:
    """Who takes part in a site function and who is reached through a link (see ``device_functions``)."""

    in_function: frozenset[str]
    linked: frozenset[str]

    @classmethod
    def of(cls, site: Site) -> SiteLinks:
        in_function = {v.id for v in site.virtual_devices}
        for v in site.virtual_devices:
            in_function.update([v.master, *v.slaves])
        at: dict[tuple[str, int], list[Device]] = {}
        for d in site.devices:
            at.setdefault((d.gateway, d.address), []).append(d)
        linked = {d.id for same in at.values() if len(same) > 1 for d in same}
        linked.update(d.id for d in site.devices if d.modules)
        return cls(frozenset(in_function), frozenset(linked))


def device_functions(
    device: Device | VirtualDevice,
    site: Site | None,
    profile: Profile | None,
    links: SiteLinks | None = None,
) -> list[Function]:
    """The function symbols of a device button (M2), derived from its profile and the site file.

    In this order, each at most once:

    - **measure**: the profile maps at least one measured quantity (a register: energy, power, pulses …);
    - **status**: the profile has state registers (breaker, contact, charger, input or output states);
    - **command**: the profile declares commands;
    - **function**: the device takes part in a site function: it is the master or a slave of a virtual
      device (the D12 master/slave function), or is itself a virtual device;
    - **link**: the device is reached through a link with another device: it shares its Modbus address
      (on its gateway) with other devices of the site — pulse meters on one concentrator or on a
      meter's pulse input — or combines several modules at one address (``modules:``, the modular
      range's interface + module).

    A virtual device (no profile of its own) shows measure and function. The ``functions:`` a profile
    file lists are documentation only; the symbols come from what the profile maps.
    """
    if isinstance(device, VirtualDevice):
        return list(VIRTUAL_FUNCTIONS)
    if links is None:
        links = SiteLinks.of(site) if site is not None else SiteLinks(frozenset(), frozenset())
    found: set[Function] = set()
    if profile is not None:
        if profile.registers:
            found.add("measure")
        if profile.states:
            found.add("status")
        if profile.commands:
            found.add("command")
    if device.id in links.in_function:
        found.add("function")
    if device.id in links.linked or device.modules:
        found.add("link")
    return [f for f in FUNCTIONS if f in found]


# --- freshness -------------------------------------------------------------------------------------


def max_age(site: Site, gateway_id: str, poll_interval: float | None = None) -> float:
    """Seconds after which a device's latest reading is stale: ``STALE_PERIODS`` × its gateway's slowest
    poll period (``fast_period`` / ``counter_period``, default EWS_POLL_INTERVAL), at least
    ``MIN_STALE_S``."""
    default = poll_interval or DEFAULT_POLL_INTERVAL
    gateway = next((g for g in site.gateways if g.id == gateway_id), None)
    periods = (
        [default] if gateway is None else [gateway.fast_period or default, gateway.counter_period or default]
    )
    return max(STALE_PERIODS * max(periods), MIN_STALE_S)


def _age(updated_at: datetime | None, now: datetime) -> float | None:
    if updated_at is None:
        return None
    if updated_at.tzinfo is None:
        updated_at = updated_at.replace(tzinfo=UTC)
    return round(max((now - updated_at).total_seconds(), 0.0), 1)


# --- one device ------------------------------------------------------------------------------------


def view(
    device: Device,
    live: LiveDevice | None,
    profiles: Mapping[str, Profile] | None = None,
    *,
    site: Site | None = None,
    links: SiteLinks | None = None,
    now: datetime | None = None,
    stale_after: float | None = None,
) -> DeviceView:
    """One device's button and pages. ``site`` (or ``links``) adds the function and link symbols;
    ``stale_after`` (seconds, see ``max_age``) marks an old reading as stale."""
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
        "functions": device_functions(device, site, profile, links),
    }
    if profile is not None:
        base["commands"] = [
            CommandView(
                action=c.action,
                label=vocabulary.command_label(c.action, str),
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
    age = _age(live.updated_at, now or datetime.now(UTC))
    stale = live.state == "comm-error" or (age is not None and stale_after is not None and age > stale_after)
    return DeviceView(
        **base,
        state=live.state,
        reason=live.reason,
        values=live.values,
        states=live.states,
        updated_at=live.updated_at,
        age_s=age,
        stale=stale,
        breaker=breaker if breaker in ("open", "closed", "tripped") else None,
        tables=tables(live.values),
    )


def _fresh(member: DeviceView) -> bool:
    return member.state in ("on", "fault") and not member.stale and member.updated_at is not None


def _why(member: DeviceView) -> str:
    if member.state == "unknown":
        return f"{member.id}: no reading yet"
    if member.state == "comm-error":
        return f"{member.id}: {member.reason or 'communication error'}"
    if member.stale:
        return f"{member.id}: no reading for {member.age_s:.0f} s" if member.age_s is not None else member.id
    if member.state == "fault":
        return f"{member.id}: {member.reason or 'fault'}"
    return member.id


def virtual_view(
    v: VirtualDevice, members: Mapping[str, DeviceView], *, now: datetime | None = None
) -> DeviceView:
    """A master/slave virtual device (D12) from the views of its members (devices or virtual devices
    declared before it).

    Value: ``master − Σ slaves`` of the medium's counter (``energy_active_import``, ``water_volume`` or
    ``gas_volume``), only when every member has it and is fresh (on or fault, reading not stale).
    State: off when a member is off (not polled); on when every member is on and fresh; unknown before
    any member's first reading; comm-error naming the members without a fresh reading; fault naming
    the members in fault. ``updated_at`` is the oldest member reading.
    """
    master = members[v.master]
    group = [master, *(members[s] for s in v.slaves)]
    quantity = MEDIUM_QUANTITY[master.medium]
    base: dict[str, Any] = {
        "id": v.id,
        "name": v.name,
        "kind": "virtual",
        "virtual": VirtualMembers(master=v.master, slaves=list(v.slaves)),
        "profile": VIRTUAL_PROFILE,
        "gateway": master.gateway,
        "address": master.address,
        "medium": master.medium,
        "panel": v.panel,
        "zone": v.zone,
        "circuit": v.circuit,
        "enabled": all(m.enabled for m in group),
        "exclude_from_total": v.exclude_from_total,
        "address_label": f"{master.address_label}-V",
        "functions": list(VIRTUAL_FUNCTIONS),
    }
    off = [m.id for m in group if m.state == "off"]
    if off:
        return DeviceView(**base, state="off", reason=f"{', '.join(off)} off (not polled)")
    if all(m.state == "unknown" for m in group):
        return DeviceView(**base, state="unknown")
    stamps = [m.updated_at for m in group if m.updated_at is not None]
    updated_at = min(stamps) if stamps else None
    not_fresh = [m for m in group if not _fresh(m)]
    values: dict[str, float] = {}
    if not not_fresh and all(quantity in m.values for m in group):
        total = master.values[quantity] - sum(m.values[quantity] for m in group[1:])
        values = {quantity: round(total, 6)}
    if not_fresh:
        state, reason = "comm-error", "; ".join(_why(m) for m in not_fresh)
    elif faults := [m for m in group if m.state == "fault"]:
        state, reason = "fault", "; ".join(_why(m) for m in faults)
    else:
        state, reason = "on", ""
    return DeviceView(
        **base,
        state=state,
        reason=reason,
        values=values,
        updated_at=updated_at,
        age_s=_age(updated_at, now or datetime.now(UTC)),
        stale=bool(not_fresh),
        tables=tables(values),
    )


# --- many devices ----------------------------------------------------------------------------------


def _needed(site: Site, wanted: Sequence[Device | VirtualDevice]) -> tuple[list[Device], list[VirtualDevice]]:
    """The real devices whose live state is needed (those given, then the members of the virtual
    devices given) and the virtual devices to compute, members before the devices made of them."""
    real: dict[str, Device] = {w.id: w for w in wanted if isinstance(w, Device)}
    by_virtual = {v.id: v for v in site.virtual_devices}
    virtual_ids: set[str] = set()
    stack = [w.id for w in wanted if isinstance(w, VirtualDevice)]
    while stack:
        ident = stack.pop()
        if ident in by_virtual:
            if ident not in virtual_ids:
                virtual_ids.add(ident)
                stack.extend([by_virtual[ident].master, *by_virtual[ident].slaves])
        elif ident not in real and (device := site.device(ident)) is not None:
            real[ident] = device
    return list(real.values()), [v for v in site.virtual_devices if v.id in virtual_ids]


async def views(
    redis: Any,
    site: Site,
    devices: Sequence[Device | VirtualDevice],
    profiles: Mapping[str, Profile] | None = None,
    *,
    poll_interval: float | None = None,
    now: datetime | None = None,
) -> list[DeviceView]:
    """The views of ``devices`` (devices and virtual devices of ``site``), in the given order, from one
    Redis MGET of the live state they need (a virtual device reads its members')."""
    if not devices:
        return []
    now = now or datetime.now(UTC)
    real, virtual = _needed(site, devices)
    links = SiteLinks.of(site)
    raws = await redis.mget([live_key(site.site, d.id) for d in real]) if real else []
    computed: dict[str, DeviceView] = {
        d.id: view(
            d,
            _live(raw, d.id),
            profiles,
            links=links,
            now=now,
            stale_after=max_age(site, d.gateway, poll_interval),
        )
        for d, raw in zip(real, raws, strict=True)
    }
    for v in virtual:
        computed[v.id] = virtual_view(v, computed, now=now)
    return [computed[d.id] for d in devices]


def virtual_gateway(site: Site, v: VirtualDevice) -> str | None:
    """The gateway of a virtual device's master (followed through virtual masters)."""
    seen: set[str] = set()
    master = v.master
    while (inner := site.virtual_device(master)) is not None and master not in seen:
        seen.add(master)
        master = inner.master
    device = site.device(master)
    return device.gateway if device is not None else None


def _check_filter(kind: str, value: str | None, known: list[Any]) -> None:
    if value is not None and value not in {item.id for item in known}:
        raise ValidationException(
            f"unknown {kind} {value!r}; known: {', '.join(sorted(item.id for item in known)) or 'none'}"
        )


def select(
    site: Site,
    *,
    gateway: str | None = None,
    panel: str | None = None,
    zone: str | None = None,
    circuit: str | None = None,
    include_virtual: bool = True,
) -> list[Device | VirtualDevice]:
    """The devices (then the virtual devices) that pass the filters; an unknown filter value raises
    ``ValidationException`` (400) naming the known ones. A virtual device is on its master's gateway."""
    _check_filter("gateway", gateway, site.gateways)
    _check_filter("panel", panel, site.panels)
    _check_filter("zone", zone, site.zones)
    _check_filter("circuit", circuit, site.circuits)

    def keep(item: Device | VirtualDevice, on_gateway: str | None) -> bool:
        return (
            (gateway is None or on_gateway == gateway)
            and (panel is None or item.panel == panel)
            and (zone is None or item.zone == zone)
            and (circuit is None or item.circuit == circuit)
        )

    chosen: list[Device | VirtualDevice] = [d for d in site.devices if keep(d, d.gateway)]
    if include_virtual:
        chosen += [v for v in site.virtual_devices if keep(v, virtual_gateway(site, v))]
    return chosen


def _poll_interval(state: State) -> float | None:
    settings = getattr(state, "settings", None)
    return getattr(settings, "poll_interval", None)


async def device_views(
    state: State,
    *,
    gateway: str | None = None,
    panel: str | None = None,
    zone: str | None = None,
    circuit: str | None = None,
    include_virtual: bool = True,
) -> list[DeviceView]:
    """The devices of "My installation" for ``site_state(request)`` (its ``site``, ``redis``, ``profiles``
    and ``settings``): filtered like ``GET /api/v1/devices`` (``ValidationException`` on an unknown
    filter value), devices in site order then virtual devices."""
    site: Site = state.site
    chosen = select(
        site, gateway=gateway, panel=panel, zone=zone, circuit=circuit, include_virtual=include_virtual
    )
    return await views(
        state.redis, site, chosen, getattr(state, "profiles", None), poll_interval=_poll_interval(state)
    )


async def device_view(state: State, device_id: str) -> DeviceView | None:
    """One device or virtual device by id; None when the site has no such id."""
    site: Site = state.site
    device: Device | VirtualDevice | None = site.device(device_id) or site.virtual_device(device_id)
    if device is None:
        return None
    (one,) = await views(
        state.redis, site, [device], getattr(state, "profiles", None), poll_interval=_poll_interval(state)
    )
    return one


def in_language(found: list[DeviceView], request: Request[Any, Any, State]) -> list[DeviceView]:
    """Command labels in the reader's language (session, else Accept-Language); states, values and
    actions stay identifiers (``charging``, ``ev-socket``) for programs."""
    from ..errors import reader_language

    translate = translations(reader_language(request)).gettext
    return [
        d.model_copy(
            update={
                "commands": [
                    c.model_copy(update={"label": vocabulary.command_label(c.action, translate)})
                    for c in d.commands
                ]
            }
        )
        if d.commands
        else d
        for d in found
    ]


# the filters in the OpenAPI document: an id of the site's configuration (``select`` checks it: 400 unknown)
FILTER_SCHEMA = {"pattern": ID_PATTERN, "max_length": 32}


@get(
    "/devices",
    guards=[authenticated],
    operation_id="listDevices",
    summary="Every device of the site (then its virtual devices) with its live state",
    tags=["devices"],
)
async def list_devices(
    request: Request[Any, Any, State],
    gateway: str | None = Parameter(
        default=None, description="Only the devices of this gateway.", schema_extra=FILTER_SCHEMA
    ),
    panel: str | None = Parameter(
        default=None, description="Only the devices of this electrical panel.", schema_extra=FILTER_SCHEMA
    ),
    zone: str | None = Parameter(
        default=None, description="Only the devices of this measurement zone.", schema_extra=FILTER_SCHEMA
    ),
    circuit: str | None = Parameter(
        default=None, description="Only the devices of this circuit.", schema_extra=FILTER_SCHEMA
    ),
) -> DeviceList:
    found = await device_views(site_state(request), gateway=gateway, panel=panel, zone=zone, circuit=circuit)
    return DeviceList(devices=in_language(found, request))


@get(
    "/devices/{device_id:str}",
    guards=[authenticated],
    operation_id="getDevice",
    summary="One device or virtual device with its live state",
    tags=["devices"],
)
async def get_device(request: Request[Any, Any, State], device_id: str) -> DeviceView:
    one = await device_view(site_state(request), device_id)
    if one is None:
        raise ApiError(404, "unknown-device", N_("unknown device %(device)s"), device=repr(device_id))
    return in_language([one], request)[0]


router = Router(path="/api/v1", parameters=SITE_PARAMETER, route_handlers=[list_devices, get_device])


def __getattr__(name: str) -> Any:
    """``site_structure`` and ``SiteView`` (defined in ``domain.site``, which imports this module) are
    importable from here too, for the pages that take everything from ``domain.devices``."""
    if name in ("site_structure", "SiteView"):
        from . import site

        return getattr(site, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
