"""The site file: gateways, devices, panels, zones, circuits, tariffs, currency, time zone, language."""

from __future__ import annotations

import logging
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .profiles import RegisterOverride
from .yamlfile import LocatedError, load_yaml_model

MAX_DEVICES = 255
RECOMMENDED_DEVICES = 128
MAX_ADDRESSES_PER_GATEWAY = 32
ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
RESERVED_SITE_ID = "hub"  # the hub's own identity (Settings.identity): its codes, sessions and audit


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SerialLine(_Strict):
    """An RS485 line on a local serial port (``transport: rtu``)."""

    port: str = Field(min_length=1, description="/dev/ttyUSB0, COM3, or a pyserial URL (socket://host:port).")
    baudrate: int = Field(default=19200, ge=1200, le=115200)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8


class Gateway(_Strict):
    """A Modbus TCP ⇄ RS485 gateway (``tcp``, ``rtu-over-tcp``) or a local RS485 line (``rtu``)."""

    id: str = Field(pattern=ID_PATTERN)
    name: str = ""
    transport: Literal["tcp", "rtu-over-tcp", "rtu"] = "tcp"
    host: str | None = Field(default=None, description="Gateway host (tcp, rtu-over-tcp).")
    port: int = Field(default=502, ge=1, le=65535)
    serial: SerialLine | None = Field(default=None, description="The serial line (rtu).")
    timeout: float = Field(default=1.0, gt=0, le=30, description="Response timeout, seconds.")
    retries: int = Field(default=1, ge=0, le=5)
    inter_frame_delay: float = Field(
        default=0.0, ge=0, le=5, description="Silence kept between two transactions on the bus, seconds."
    )
    baudrate: int = Field(
        default=19200, ge=1200, le=115200, description="RS485 side speed (plans reads; rtu: serial.baudrate)."
    )
    fast_period: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="Seconds between reads of fast values (default EWS_POLL_INTERVAL).",
    )
    counter_period: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="Seconds between reads of counters (default EWS_POLL_INTERVAL).",
    )

    @model_validator(mode="after")
    def _link(self) -> Gateway:
        if self.transport == "rtu":
            if self.serial is None:
                raise ValueError("transport 'rtu' needs 'serial: {port, baudrate, parity, stopbits}'")
        elif not self.host:
            raise ValueError(f"transport {self.transport!r} needs 'host' (and 'port')")
        elif self.serial is not None:
            raise ValueError("'serial' is only for transport 'rtu'")
        return self

    @property
    def bus_baudrate(self) -> int:
        return self.serial.baudrate if self.serial is not None else self.baudrate

    @property
    def endpoint(self) -> str:
        return self.serial.port if self.serial is not None else f"{self.host}:{self.port}"

    @property
    def line(self) -> str:
        """What a connection opens, whatever the transport: ``tcp <host>:<port>`` (tcp, rtu-over-tcp, and
        an rtu line reached through a pyserial ``socket://`` URL) or ``serial <port>``. Two gateways on one
        line would open it twice (one owner per bus): a site refuses them."""
        if self.serial is None:
            return f"tcp {(self.host or '').lower()}:{self.port}"
        port = self.serial.port
        if port.lower().startswith("socket://"):
            return f"tcp {port[len('socket://') :].split('?')[0].rstrip('/').lower()}"
        return f"serial {port}"


class Panel(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    name: str


class Zone(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    name: str


class Circuit(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    name: str
    zone: str | None = None


class Device(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    name: str
    profile: str
    gateway: str
    address: int = Field(
        ge=1, le=247, description="Modbus unit id (modular range: 10 × interface + module, see below)."
    )
    interface: int | None = Field(
        default=None,
        ge=1,
        le=24,
        description="Modular range: RS485 interface address (address = 10 × it + module).",
    )
    module: int | None = Field(
        default=None, ge=1, le=9, description="Modular range: module address wheel 1–9."
    )
    modules: list[str] = Field(
        default_factory=list,
        description="Profiles of the other modules at the same address: one device with all their functions.",
    )
    ea_register: RegisterOverride | None = Field(
        default=None, description="Generic meter: where its Ea+ (positive active energy) is read."
    )
    position: int | None = Field(default=None, ge=1, le=32, description="Input of a pulse concentrator.")
    side: Literal["A", "B"] | None = Field(default=None, description="Side of a double EV station.")
    medium: Literal["electricity", "water", "gas"] | None = Field(
        default=None, description="What a pulse meter counts."
    )
    pulse_weight: float | None = Field(default=None, gt=0, description="Wh or dm³ per pulse.")
    panel: str | None = None
    zone: str | None = None
    circuit: str | None = None
    enabled: bool = True
    exclude_from_total: bool = False

    @model_validator(mode="before")
    @classmethod
    def _modular_address(cls, data: Any) -> Any:
        if isinstance(data, dict) and (data.get("interface") is not None or data.get("module") is not None):
            interface, module = data.get("interface"), data.get("module")
            if not isinstance(interface, int) or not isinstance(module, int):
                raise ValueError("a modular device needs both 'interface' (1–24) and 'module' (1–9)")
            computed = 10 * interface + module
            if data.get("address") is None:
                data = {**data, "address": computed}
            elif data["address"] != computed:
                raise ValueError(
                    f"address {data['address']} differs from 10 × interface {interface} + module {module} "
                    f"= {computed}; give one or the other"
                )
        return data

    @model_validator(mode="after")
    def _pulse(self) -> Device:
        if (self.position is None) != (self.pulse_weight is None):
            raise ValueError("a pulse meter needs both 'position' and 'pulse_weight'")
        if self.position is not None and self.medium is None:
            raise ValueError("a pulse meter needs 'medium' (electricity, water or gas)")
        return self


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOUR_OF_DAY = r"^([01]\d|2[0-4]):00$"


class TimeOfUse(_Strict):
    """A price window in local time, e.g. off-peak ``{days: [mon, …], start: "22:00", end: "06:00"}``.

    An hour is in the window when its local start time is in ``[start, end)`` (``end`` before ``start``
    wraps over midnight; ``start == end`` is the whole day) on one of ``days`` (the hour's own weekday).
    Whole hours only: buckets are hourly. Prices not given fall back to the tariff's base price.
    """

    name: str = ""
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        default_factory=lambda: list(WEEKDAYS), min_length=1
    )
    start: str = Field(pattern=_HOUR_OF_DAY, description="Local time HH:00 the window opens.")
    end: str = Field(pattern=_HOUR_OF_DAY, description="Local time HH:00 the window closes (24:00 allowed).")
    electricity_per_kwh: float | None = Field(default=None, ge=0)
    water_per_m3: float | None = Field(default=None, ge=0)
    gas_per_m3: float | None = Field(default=None, ge=0)

    def covers(self, weekday: int, hour: int) -> bool:
        """Whether the local hour starting at ``hour`` o'clock on ``weekday`` (0 = Monday) is in the window."""
        if WEEKDAYS[weekday] not in self.days:
            return False
        lo, hi = int(self.start[:2]) % 24, int(self.end[:2]) % 24
        if lo == hi:
            return True
        return lo <= hour < hi if lo < hi else (hour >= lo or hour < hi)


class Tariff(_Strict):
    """Prices in force from ``effective_from`` (local date) until the next tariff.

    Base prices per kWh and m³, optional time-of-use windows (windows pricing one medium never share an
    hour) and daily
    standing charges (money per local day, counted in the site totals).
    """

    effective_from: date
    electricity_per_kwh: float = Field(ge=0)
    water_per_m3: float = Field(default=0, ge=0)
    gas_per_m3: float = Field(default=0, ge=0)
    time_of_use: list[TimeOfUse] = []
    electricity_standing_per_day: float = Field(default=0, ge=0)
    water_standing_per_day: float = Field(default=0, ge=0)
    gas_standing_per_day: float = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _windows_do_not_overlap(self) -> Tariff:
        """Two windows that price the same medium in the same local hour would make the price depend on
        their order: refused, naming both and the first hour they share."""
        media = ("electricity_per_kwh", "water_per_m3", "gas_per_m3")
        for j, later in enumerate(self.time_of_use):
            for i, earlier in enumerate(self.time_of_use[:j]):
                shared = [
                    m for m in media if getattr(earlier, m) is not None and getattr(later, m) is not None
                ]
                if not shared:
                    continue
                for weekday in range(7):
                    for hour in range(24):
                        if earlier.covers(weekday, hour) and later.covers(weekday, hour):
                            raise LocatedError(
                                ("time_of_use", j),
                                f"window {later.name or j + 1!r} overlaps window {earlier.name or i + 1!r} "
                                f"({WEEKDAYS[weekday]} {hour:02d}:00, {shared[0].split('_per_')[0]}); "
                                "windows of one medium must not share an hour",
                            )
        return self

    def price(self, field: str, weekday: int, hour: int) -> float:
        """Price of ``field`` (electricity_per_kwh, water_per_m3, gas_per_m3) for a local hour."""
        for window in self.time_of_use:
            special = getattr(window, field)
            if special is not None and window.covers(weekday, hour):
                return float(special)
        return float(getattr(self, field))


class VirtualDevice(_Strict):
    """A master/slave virtual meter (D12): ``master`` minus the sum of ``slaves`` ("rest of the consumption").

    Master and slaves are devices (or virtual devices declared earlier) of the same medium.
    """

    id: str = Field(pattern=ID_PATTERN)
    name: str
    master: str
    slaves: list[str] = Field(min_length=1)
    panel: str | None = None
    zone: str | None = None
    circuit: str | None = None
    exclude_from_total: bool = False


class RetiredDevice(_Strict):
    """A device removed from the site: no longer polled or listed, but its history still counts in the
    totals and scopes it belonged to (a removal never rewrites past figures). The Configuration pages and
    ``PUT /api/v1/site/config`` add it when a device is removed; re-adding the id brings it back."""

    id: str = Field(pattern=ID_PATTERN)
    name: str
    medium: Literal["electricity", "water", "gas"] = "electricity"
    gateway: str | None = None
    panel: str | None = None
    zone: str | None = None
    circuit: str | None = None
    exclude_from_total: bool = False
    retired_on: date | None = Field(default=None, description="Local date it was removed.")


class Site(_Strict):
    site: str = Field(pattern=ID_PATTERN, description="Site id, used in subjects (ews.<site>.…).")
    name: str
    timezone: str = "Europe/Paris"
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    language: str = "en"
    gas_wh_per_dm3: float = Field(default=11.2, gt=0, description="Gas 'Wh equivalent' per dm³.")
    tariffs: list[Tariff] = Field(min_length=1)
    gateways: list[Gateway] = Field(min_length=1)
    panels: list[Panel] = []
    zones: list[Zone] = []
    circuits: list[Circuit] = []
    devices: list[Device] = Field(min_length=1)
    virtual_devices: list[VirtualDevice] = Field(
        default_factory=list, description="Master/slave virtual meters (D12): master minus its slaves."
    )
    retired_devices: list[RetiredDevice] = Field(
        default_factory=list, description="Removed devices whose history still counts (not polled)."
    )

    @field_validator("site")
    @classmethod
    def _not_the_hub(cls, value: str) -> str:
        if value == RESERVED_SITE_ID:
            raise ValueError(
                f"{RESERVED_SITE_ID!r} names the hub of a multi-site installation (its codes, its audit): "
                "choose another site id"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Europe/Paris") from None
        return value

    @model_validator(mode="after")
    def _references(self) -> Site:
        def unique(kind: str, items: list) -> set[str]:
            seen: set[str] = set()
            for n, item in enumerate(items):
                if item.id in seen:
                    raise LocatedError((f"{kind}s", n, "id"), f"duplicate {kind} id {item.id!r}")
                seen.add(item.id)
            return seen

        gateways = unique("gateway", self.gateways)
        lines: dict[str, str] = {}
        for n, g in enumerate(self.gateways):
            other = lines.setdefault(g.line, g.id)
            if other != g.id:
                raise LocatedError(
                    ("gateways", n, "serial", "port") if g.serial is not None else ("gateways", n, "port"),
                    f"gateway {g.id!r} is on {g.endpoint}, already gateway {other!r}'s: one bus, one "
                    f"gateway (it would be opened twice); put the devices of both on {other!r}",
                )
        panels = unique("panel", self.panels)
        zones = unique("zone", self.zones)
        circuits = unique("circuit", self.circuits)
        unique("device", self.devices)
        live_ids = {d.id for d in self.devices} | {v.id for v in self.virtual_devices}
        for n, r in enumerate(self.retired_devices):
            if r.id in live_ids:
                raise LocatedError(
                    ("retired_devices", n, "id"),
                    f"retired device {r.id!r} is also a device of the site; remove one of them",
                )
        if len(self.devices) > MAX_DEVICES:
            raise LocatedError(
                ("devices", MAX_DEVICES),
                f"{len(self.devices)} devices: a site manages at most {MAX_DEVICES}; split it into two sites",
            )
        for n, c in enumerate(self.circuits):
            if c.zone and c.zone not in zones:
                raise LocatedError(("circuits", n, "zone"), f"circuit {c.id!r}: unknown zone {c.zone!r}")
        per_gateway: dict[str, set[tuple[int, int | None, str | None]]] = {}
        for n, d in enumerate(self.devices):
            for kind, ref, known in (
                ("gateway", d.gateway, gateways),
                ("panel", d.panel, panels),
                ("zone", d.zone, zones),
                ("circuit", d.circuit, circuits),
            ):
                if ref is not None and ref not in known:
                    raise LocatedError(
                        ("devices", n, kind),
                        f"device {d.id!r}: unknown {kind} {ref!r}; declare it under '{kind}s'",
                    )
            slots = per_gateway.setdefault(d.gateway, set())
            slot = (d.address, d.position, d.side)
            if slot in slots:
                raise LocatedError(
                    ("devices", n, "address"),
                    f"device {d.id!r}: address {d.address} is already used on gateway {d.gateway!r}",
                )
            slots.add(slot)
            # S2: at most 32 Modbus addresses, and at most 32 pulse meters, per gateway
            addresses = {a for a, _, _ in slots}
            pulse_meters = sum(1 for _, position, _ in slots if position is not None)
            if len(addresses) > MAX_ADDRESSES_PER_GATEWAY:
                raise LocatedError(
                    ("devices", n, "address"),
                    f"gateway {d.gateway!r}: more than {MAX_ADDRESSES_PER_GATEWAY} addresses (device "
                    f"{d.id!r} is the {len(addresses)}th); move devices to another gateway",
                )
            if pulse_meters > MAX_ADDRESSES_PER_GATEWAY:
                raise LocatedError(
                    ("devices", n, "position"),
                    f"gateway {d.gateway!r}: more than {MAX_ADDRESSES_PER_GATEWAY} pulse meters (device "
                    f"{d.id!r} is the {pulse_meters}th); move pulse meters to another gateway",
                )
        if len(self.devices) > RECOMMENDED_DEVICES:
            logging.getLogger("ews.site").warning(
                "site %s: %d devices: more than the %d recommended (at most %d); polling may slow down",
                self.site,
                len(self.devices),
                RECOMMENDED_DEVICES,
                MAX_DEVICES,
            )
        dates = [t.effective_from for t in self.tariffs]
        if dates != sorted(set(dates)):
            raise LocatedError(
                ("tariffs",), "tariffs must be in increasing 'effective_from' order, one per date"
            )
        return self

    @model_validator(mode="after")
    def _virtual_devices(self) -> Site:
        """Virtual devices: unique ids, known master/slaves of one medium (declared before), known refs."""
        medium = {d.id: d.medium or "electricity" for d in self.devices}
        panels, zones = {p.id for p in self.panels}, {z.id for z in self.zones}
        circuits = {c.id for c in self.circuits}
        for n, v in enumerate(self.virtual_devices):
            if v.id in medium:
                raise LocatedError(
                    ("virtual_devices", n, "id"), f"virtual device id {v.id!r} is already used by a device"
                )
            members = [("master", v.master), *(("slaves", s) for s in v.slaves)]
            for field, ref in members:
                if ref not in medium:
                    raise LocatedError(
                        ("virtual_devices", n, field),
                        f"virtual device {v.id!r}: unknown device {ref!r}; use a device id "
                        "(or a virtual device declared above it)",
                    )
            if v.master in v.slaves or len(set(v.slaves)) != len(v.slaves):
                raise LocatedError(
                    ("virtual_devices", n, "slaves"),
                    f"virtual device {v.id!r}: a device appears twice in master/slaves",
                )
            kinds = {medium[ref] for _, ref in members}
            if len(kinds) > 1:
                raise LocatedError(
                    ("virtual_devices", n, "slaves"),
                    f"virtual device {v.id!r}: master and slaves must meter the same medium (got "
                    f"{', '.join(sorted(kinds))})",
                )
            for kind, ref, known in (
                ("panel", v.panel, panels),
                ("zone", v.zone, zones),
                ("circuit", v.circuit, circuits),
            ):
                if ref is not None and ref not in known:
                    raise LocatedError(
                        ("virtual_devices", n, kind),
                        f"virtual device {v.id!r}: unknown {kind} {ref!r}; declare it under '{kind}s'",
                    )
            medium[v.id] = medium[v.master]
        return self

    def virtual_device(self, device_id: str) -> VirtualDevice | None:
        return next((v for v in self.virtual_devices if v.id == device_id), None)

    @cached_property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def device(self, device_id: str) -> Device | None:
        return next((d for d in self.devices if d.id == device_id), None)

    def gateway(self, gateway_id: str) -> Gateway:
        return next(g for g in self.gateways if g.id == gateway_id)

    def tariff_on(self, day: date) -> Tariff:
        """The tariff of a local date (the first one also for earlier dates). Pricing goes through
        ``ews_analytics.costs.tariff_in_force``: nothing is priced before the first tariff."""
        current = self.tariffs[0]
        for t in self.tariffs:
            if t.effective_from <= day:
                current = t
        return current


def load_site(path: Path) -> Site:
    """Load and validate a site file; raises ConfigFileError naming the line and field."""
    return load_yaml_model(path, Site, "site file")
