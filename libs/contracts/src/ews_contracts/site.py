"""The site file: gateways, devices, panels, zones, circuits, tariffs, currency, time zone, language."""

from __future__ import annotations

from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .yamlfile import LocatedError, load_yaml_model

MAX_DEVICES = 255
RECOMMENDED_DEVICES = 128
MAX_ADDRESSES_PER_GATEWAY = 32
ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Gateway(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    name: str = ""
    transport: Literal["tcp", "rtu-over-tcp"] = "tcp"
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    timeout: float = Field(default=1.0, gt=0, le=30, description="Response timeout, seconds.")
    retries: int = Field(default=1, ge=0, le=5)


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
    address: int = Field(ge=1, le=247, description="Modbus unit id.")
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

    @model_validator(mode="after")
    def _pulse(self) -> Device:
        if (self.position is None) != (self.pulse_weight is None):
            raise ValueError("a pulse meter needs both 'position' and 'pulse_weight'")
        if self.position is not None and self.medium is None:
            raise ValueError("a pulse meter needs 'medium' (electricity, water or gas)")
        return self


class Tariff(_Strict):
    """Prices in force from ``effective_from`` (local date) until the next tariff."""

    effective_from: date
    electricity_per_kwh: float = Field(ge=0)
    water_per_m3: float = Field(default=0, ge=0)
    gas_per_m3: float = Field(default=0, ge=0)


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
        panels = unique("panel", self.panels)
        zones = unique("zone", self.zones)
        circuits = unique("circuit", self.circuits)
        unique("device", self.devices)
        if len(self.devices) > MAX_DEVICES:
            raise LocatedError(
                ("devices",), f"{len(self.devices)} devices: a site manages at most {MAX_DEVICES}"
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
            if len(slots) > MAX_ADDRESSES_PER_GATEWAY:
                raise LocatedError(
                    ("devices", n, "gateway"),
                    f"gateway {d.gateway!r}: more than {MAX_ADDRESSES_PER_GATEWAY} addresses or pulse meters",
                )
        dates = [t.effective_from for t in self.tariffs]
        if dates != sorted(set(dates)):
            raise LocatedError(
                ("tariffs",), "tariffs must be in increasing 'effective_from' order, one per date"
            )
        return self

    @cached_property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def device(self, device_id: str) -> Device | None:
        return next((d for d in self.devices if d.id == device_id), None)

    def gateway(self, gateway_id: str) -> Gateway:
        return next(g for g in self.gateways if g.id == gateway_id)

    def tariff_on(self, day: date) -> Tariff:
        """The tariff in force on a local date (the first one also covers earlier dates)."""
        current = self.tariffs[0]
        for t in self.tariffs:
            if t.effective_from <= day:
                current = t
        return current


def load_site(path: Path) -> Site:
    """Load and validate a site file; raises ConfigFileError naming the line and field."""
    return load_yaml_model(path, Site, "site file")
