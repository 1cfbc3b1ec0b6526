"""Device profiles: data files that map Modbus registers to canonical quantities, states and commands.

A new device model is one YAML file in ``device_profiles/`` (or ``EWS_PROFILES_DIR``); no code change:
the poller plans and decodes from it, the simulator builds the device's twin from it (its dynamics are
chosen by the ``simulation:`` hint), and the profile test suite polls every profile of the folder.

Decode order (fixed): word order -> unpack -> invalid-value check -> sign (read from another register,
when ``sign_from`` is given) -> scale (or derived scale) x + offset.
A state is a bit field of one register: ``(word >> bit) & (2**bits - 1)``, named by ``values``.
A site device may combine several profiles at one Modbus address (``modules:``, the modular range's
10 × interface + module rule) and override its Ea+ register (``ea_register:``, generic meters):
``resolve()`` gives the one effective profile of a device.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .quantities import Quantity
from .yamlfile import ConfigFileError, load_yaml_model

if TYPE_CHECKING:
    from .site import Device

BUNDLED_PROFILES = Path(__file__).parent / "device_profiles"


class DataType(StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"


# type -> (register count, struct code) — like Home Assistant modbus's DataType table
DATA_TYPES: dict[DataType, tuple[int, str]] = {
    DataType.INT16: (1, "h"),
    DataType.UINT16: (1, "H"),
    DataType.INT32: (2, "i"),
    DataType.UINT32: (2, "I"),
    DataType.INT64: (4, "q"),
    DataType.UINT64: (4, "Q"),
    DataType.FLOAT32: (2, "f"),
    DataType.FLOAT64: (4, "d"),
}


def integer_range(dtype: DataType) -> tuple[int, int] | None:
    """(lowest, highest) raw value an integer register type holds; None for floats."""
    count, code = DATA_TYPES[dtype]
    if code in "fd":
        return None
    bits = 16 * count
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if code.islower() else (0, 2**bits - 1)


FunctionCode = Literal[3, 4]
WordOrder = Literal["big", "little"]
Function = Literal["measure", "status", "command", "function", "link"]
Tier = Literal["fast", "counter"]
TwinKind = Literal["meter", "pulse", "ev-charger", "breaker", "io", "static"]
LoadShape = Literal["feeder", "sub-circuit", "small", "none"]

_FAMILY_TWIN: dict[str, TwinKind] = {
    "D1": "meter",
    "D2": "meter",
    "D3": "pulse",
    "D4": "meter",
    "D5": "breaker",
    "D6": "meter",
    "D7": "meter",
    "D8": "meter",
    "D9": "meter",
    "D10": "io",
    "D11": "ev-charger",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScaleStep(_Strict):
    below: float | None = Field(
        default=None, description="Applies while the scale register's value is below this."
    )
    scale: float


class DerivedScale(_Strict):
    """Scale read from another register (e.g. the CT ratio of the 4 120 45 meter)."""

    address: int = Field(ge=0, le=65535)
    type: DataType = DataType.UINT16
    function_code: FunctionCode | None = None
    steps: list[ScaleStep] = Field(min_length=1)

    def scale_for(self, raw: float) -> float:
        for step in self.steps:
            if step.below is None or raw < step.below:
                return step.scale
        return self.steps[-1].scale


class SignRegister(_Strict):
    """Sign of a value held in another 16-bit register, the value's own register holding its magnitude
    (e.g. the 4 120 45 meter's unsigned P and Q: 0 = positive, 1 = negative)."""

    address: int = Field(ge=0, le=65535)
    function_code: FunctionCode | None = None
    positive: int = Field(default=0, ge=0, le=65535, description="Raw value meaning positive.")
    negative: int = Field(default=1, ge=0, le=65535, description="Raw value meaning negative.")

    @model_validator(mode="after")
    def _distinct(self) -> SignRegister:
        if self.positive == self.negative:
            raise ValueError(f"positive and negative are both {self.positive}")
        return self

    def is_negative(self, word: int) -> bool:
        """True for the negative marker; ValueError for a word that is neither marker."""
        if word == self.negative:
            return True
        if word == self.positive:
            return False
        raise ValueError(
            f"sign register {self.address} holds {word} "
            f"(expected {self.positive} positive or {self.negative} negative)"
        )

    def word(self, negative: bool) -> int:
        """The raw value of the sign register for a value of that sign (used by the simulator)."""
        return self.negative if negative else self.positive


def _quantity(value: Any) -> Quantity:
    try:
        return Quantity(value)
    except ValueError:
        raise ValueError(
            f"unknown quantity {value!r}; use a canonical name from ews_contracts.quantities "
            "(e.g. energy_active_import, power_active, voltage_l1)"
        ) from None


class Register(_Strict):
    quantity: Quantity
    address: int = Field(ge=0, le=65535, description="0-based address sent on the wire.")
    type: DataType = DataType.UINT16
    function_code: FunctionCode | None = None
    word_order: WordOrder | None = None
    scale: float = Field(default=1.0, description="Canonical unit per count (Wh per count, V per count …).")
    offset: float = 0.0
    scale_from: DerivedScale | None = None
    sign_from: SignRegister | None = Field(
        default=None, description="The register holds a magnitude; its sign is read from this register."
    )
    invalid: list[int] = Field(default_factory=list, description="Raw values meaning 'not available'.")
    tier: Tier = "fast"
    position_stride: int | None = Field(
        default=None, description="Pulse meter inputs: address += stride × (position − 1)."
    )

    @field_validator("quantity", mode="before")
    @classmethod
    def _known_quantity(cls, value: Any) -> Quantity:
        return _quantity(value)

    @field_validator("scale")
    @classmethod
    def _nonzero(cls, value: float) -> float:
        if value == 0:
            raise ValueError("scale 0 would lose every value; use the unit per count (e.g. 0.1)")
        return value

    @property
    def count(self) -> int:
        return DATA_TYPES[self.type][0]


class StateRegister(_Strict):
    """A bit field of a register whose value names a state (breaker, charger, input, output …)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    address: int = Field(ge=0, le=65535)
    function_code: FunctionCode | None = None
    bit: int = Field(default=0, ge=0, le=15, description="Lowest bit of the field.")
    bits: int = Field(default=16, ge=1, le=16, description="Width of the field.")
    values: dict[int, str] = Field(min_length=1)
    fault: list[str] = Field(default_factory=list, description="States that mean the device is in fault.")

    @model_validator(mode="after")
    def _fits(self) -> StateRegister:
        if self.bit + self.bits > 16:
            raise ValueError(f"bits {self.bit}..{self.bit + self.bits - 1} do not fit in a 16-bit register")
        too_big = [v for v in self.values if not 0 <= v <= self.mask]
        if too_big:
            raise ValueError(f"values {too_big} do not fit in {self.bits} bit(s)")
        unknown = set(self.fault) - set(self.values.values())
        if unknown:
            raise ValueError(f"fault states {sorted(unknown)} are not among the values")
        return self

    @property
    def mask(self) -> int:
        return (1 << self.bits) - 1

    def field(self, word: int) -> int:
        return (word >> self.bit) & self.mask

    def label(self, word: int) -> str:
        raw = self.field(word)
        return self.values.get(raw, f"unknown-{raw}")

    def raw_of(self, label: str) -> int | None:
        return next((raw for raw, name in self.values.items() if name == label), None)


class Command(_Strict):
    """A command the device accepts: write ``values[value]`` to ``address`` (FC6), then read it back."""

    action: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    label: str = Field(default="", description="A note for people reading the profile; the pages and API name commands from the catalogues.")
    address: int = Field(ge=0, le=65535)
    values: dict[str, int] = Field(min_length=1)
    readback: bool = True
    state: str | None = Field(
        default=None,
        description="The state that shows the command's effect (default: the state at its address).",
    )


class Simulation(_Strict):
    """How the simulator animates this profile's twin (no per-model code)."""

    twin: TwinKind | None = Field(default=None, description="Default: from the family (D1 -> meter …).")
    load: LoadShape = Field(default="sub-circuit", description="Daily load curve of a meter's feeder.")
    tan_phi: float = Field(default=0.3, ge=0, le=3)
    trips_per_day: float = Field(
        default=0.0, ge=0, le=48, description="Breaker twins trip at random this often (then re-close)."
    )
    reclose_minutes: float = Field(default=20.0, gt=0)
    toggles_per_hour: float = Field(default=2.0, ge=0, description="I/O twins: input changes per hour.")


class Profile(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.+-]*$")
    name: str
    family: str = Field(description="Requirement family, e.g. 'D1 power-meter' (picks the default twin).")
    source: str = Field(min_length=1, description="Where the register map comes from, or 'assumed'.")
    functions: list[Function] = Field(min_length=1)
    function_code: FunctionCode = 3
    word_order: WordOrder = "big"
    inputs: int | None = Field(
        default=None, ge=1, le=32, description="Pulse inputs: a device on it needs a position 1..inputs."
    )
    registers: list[Register] = []
    states: list[StateRegister] = []
    commands: list[Command] = []
    simulation: Simulation = Simulation()

    @model_validator(mode="after")
    def _unique(self) -> Profile:
        names = [r.quantity for r in self.registers]
        twice = sorted({str(n) for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"quantity {twice[0]!r} is mapped twice")
        states = [s.name for s in self.states]
        if len(states) != len(set(states)):
            raise ValueError("a state name is declared twice")
        actions = [c.action for c in self.commands]
        if len(actions) != len(set(actions)):
            raise ValueError("a command action is declared twice")
        for c in self.commands:
            if c.state is not None and self.state(c.state) is None:
                raise ValueError(f"command {c.action!r}: unknown state {c.state!r}")
        fields: dict[int, int] = {}
        for s in self.states:
            bits = s.mask << s.bit
            if fields.get(s.address, 0) & bits:
                raise ValueError(f"state {s.name!r}: its bits overlap another state of register {s.address}")
            fields[s.address] = fields.get(s.address, 0) | bits
        return self

    @property
    def twin_kind(self) -> TwinKind:
        if self.simulation.twin is not None:
            return self.simulation.twin
        return _FAMILY_TWIN.get(self.family.split()[0], "static")

    def fc(self, item: Register | StateRegister | DerivedScale | SignRegister) -> int:
        return item.function_code or self.function_code

    def order(self, reg: Register) -> WordOrder:
        return reg.word_order or self.word_order

    def address_of(self, reg: Register, position: int | None) -> int:
        if reg.position_stride and position:
            return reg.address + reg.position_stride * (position - 1)
        return reg.address

    def command(self, action: str) -> Command | None:
        return next((c for c in self.commands if c.action == action), None)

    def state(self, name: str) -> StateRegister | None:
        return next((s for s in self.states if s.name == name), None)

    def command_state(self, command: Command) -> StateRegister | None:
        """The state that shows a command's effect: the one it names, else a whole-register state at its
        address."""
        if command.state is not None:
            return self.state(command.state)
        return next((s for s in self.states if s.address == command.address and s.bits == 16), None)

    def register(self, quantity: Quantity | str) -> Register | None:
        return next((r for r in self.registers if r.quantity == quantity), None)


# --- raw <-> value ---------------------------------------------------------------------------------


def decode_raw(words: Iterable[int], dtype: DataType, word_order: WordOrder) -> int | float:
    """Registers (16-bit words, as read) -> the unscaled number."""
    words = list(words)
    count, code = DATA_TYPES[dtype]
    if len(words) != count:
        raise ValueError(f"{dtype} needs {count} registers, got {len(words)}")
    if word_order == "little":
        words.reverse()
    return struct.unpack(">" + code, struct.pack(f">{count}H", *words))[0]


def encode_raw(number: int | float, dtype: DataType, word_order: WordOrder) -> list[int]:
    """The unscaled number -> registers (inverse of ``decode_raw``); used by the simulator."""
    count, code = DATA_TYPES[dtype]
    if code in "fd":
        packed = struct.pack(">" + code, float(number))
    else:
        packed = struct.pack(">" + code, int(number))
    words = list(struct.unpack(f">{count}H", packed))
    if word_order == "little":
        words.reverse()
    return words


def scaled(
    raw: int | float, reg: Register, derived_scale: float | None = None, negative: bool = False
) -> float | None:
    """Apply invalid check, sign (``negative``: from the register's ``sign_from``), scale and offset.
    ``None`` when the raw value is an invalid marker."""
    if reg.invalid and raw in reg.invalid:
        return None
    if negative:
        raw = -raw
    scale = derived_scale if derived_scale is not None else reg.scale
    return raw * scale + reg.offset


def unscaled(value: float, reg: Register, derived_scale: float | None = None) -> int | float:
    """Inverse of ``scaled`` for integer types (rounded to the register's resolution). Signed: a register
    with ``sign_from`` holds the magnitude, and its sign register ``word(result < 0)``."""
    scale = derived_scale if derived_scale is not None else reg.scale
    raw = (value - reg.offset) / scale
    if reg.type in (DataType.FLOAT32, DataType.FLOAT64):
        return raw
    return int(round(raw))


def resolution(reg: Register, derived_scale: float | None = None) -> float:
    """The declared precision of a register's value: one count (float types: ~7 significant digits)."""
    if reg.type in (DataType.FLOAT32, DataType.FLOAT64):
        return 0.0
    return abs(derived_scale if derived_scale is not None else reg.scale)


# --- one device's effective profile ----------------------------------------------------------------


class RegisterOverride(_Strict):
    """A register given in the site file (the generic meter's Ea+)."""

    address: int = Field(ge=0, le=65535)
    type: DataType = DataType.UINT32
    word_order: WordOrder = "big"
    scale: float = Field(default=1.0, description="Wh per count.")
    function_code: FunctionCode = 3

    @field_validator("scale")
    @classmethod
    def _nonzero(cls, value: float) -> float:
        if value == 0:
            raise ValueError("scale 0 would lose every value; give Wh per count (e.g. 10 for 0.01 kWh)")
        return value


class ProfileError(ValueError):
    """A device cannot be resolved against the profiles; ``str()`` is one line naming the fix."""


def resolve(device: Device, profiles: Mapping[str, Profile]) -> Profile:
    """The effective profile of a site device: its profile, merged with its ``modules`` (one device at
    one Modbus address) and with its ``ea_register`` override. Raises ProfileError (one line)."""
    base = profiles.get(device.profile)
    if base is None:
        raise ProfileError(
            f"device {device.id!r}: unknown device profile {device.profile!r}; known: {', '.join(sorted(profiles))}"
        )
    modules: list[str] = list(getattr(device, "modules", []) or [])
    override: RegisterOverride | None = getattr(device, "ea_register", None)
    if not modules and override is None:
        return base
    parts = [base]
    for module in modules:
        extra = profiles.get(module)
        if extra is None:
            raise ProfileError(f"device {device.id!r}: unknown module profile {module!r} in 'modules'")
        parts.append(extra)
    key = (tuple(id(p) for p in parts), override, device.id)
    hit = _MERGED.get(key)
    if hit is None:
        hit = _MERGED[key] = (tuple(parts), _merge(tuple(parts), override, device.id))
    return hit[1]


def _merge(parts: tuple[Profile, ...], override: RegisterOverride | None, device_id: str) -> Profile:
    base = parts[0]
    registers: list[Register] = []
    states: list[StateRegister] = []
    commands: list[Command] = []
    functions: list[str] = []
    for part in parts:
        for reg in part.registers:
            registers.append(
                reg.model_copy(update={"function_code": part.fc(reg), "word_order": part.order(reg)})
            )
        states.extend(s.model_copy(update={"function_code": part.fc(s)}) for s in part.states)
        commands.extend(part.commands)
        functions.extend(f for f in part.functions if f not in functions)
    if override is not None:
        ea = Register(
            quantity=Quantity.ENERGY_ACTIVE_IMPORT,
            address=override.address,
            type=override.type,
            function_code=override.function_code,
            word_order=override.word_order,
            scale=override.scale,
            tier="counter",
        )
        registers = [r for r in registers if r.quantity != Quantity.ENERGY_ACTIVE_IMPORT] + [ea]
    name = base.id + "".join(f"+{p.id}" for p in parts[1:]) + ("+ea" if override else "")
    data = base.model_dump()
    data["simulation"]["trips_per_day"] = max(p.simulation.trips_per_day for p in parts)
    data.update(
        id=name,
        name=" + ".join(p.name for p in parts),
        source="; ".join(dict.fromkeys(p.source for p in parts)),
        functions=functions,
        registers=[r.model_dump() for r in registers],
        states=[s.model_dump() for s in states],
        commands=[c.model_dump() for c in commands],
    )
    try:
        return Profile.model_validate(data)
    except ValueError as exc:
        first = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)  # type: ignore[attr-defined]
        raise ProfileError(
            f"device {device_id!r}: its profile and modules cannot be combined: "
            f"{first.removeprefix('Value error, ')}"
        ) from None


_MERGED: dict[tuple[Any, ...], tuple[tuple[Profile, ...], Profile]] = {}


def check_device(device: Device, profiles: Mapping[str, Profile]) -> Profile:
    """Resolve a device and check what its profile needs from the site file (position, pulse weight)."""
    profile = resolve(device, profiles)
    strided = any(r.position_stride for r in profile.registers)
    if profile.inputs is not None or strided:
        if device.position is None:
            raise ProfileError(
                f"device {device.id!r}: profile {profile.id!r} is a pulse input: give 'position', "
                "'pulse_weight' and 'medium'"
            )
        if profile.inputs is not None and device.position > profile.inputs:
            raise ProfileError(
                f"device {device.id!r}: position {device.position} but profile {profile.id!r} has "
                f"{profile.inputs} input(s)"
            )
    elif device.position is not None:
        raise ProfileError(
            f"device {device.id!r}: 'position' is for pulse meters, profile {profile.id!r} has no pulse input"
        )
    return profile


# --- discovery -------------------------------------------------------------------------------------


def load_profile(path: Path) -> Profile:
    profile = load_yaml_model(path, Profile, "device profile")
    if profile.id != path.stem:
        raise ConfigFileError(f"device profile {path}:1: field 'id': {profile.id!r} must equal the file name")
    return profile


@lru_cache(maxsize=8)
def load_profiles(extra_dir: Path | None = None) -> dict[str, Profile]:
    """Every profile of the bundled folder, then of ``extra_dir`` (which may replace bundled ones).

    Read and validated once per process and folder (``ews`` checks the site's devices at start-up, then
    the service loads them again); each caller gets its own dict of the (immutable) profiles."""
    return dict(_load_profiles(None if extra_dir is None else Path(extra_dir).resolve()))


@lru_cache(maxsize=8)
def _load_profiles(extra_dir: Path | None) -> dict[str, Profile]:
    found: dict[str, Profile] = {}
    for folder in (BUNDLED_PROFILES, extra_dir):
        if folder is None:
            continue
        for path in sorted(Path(folder).glob("*.yaml")):
            profile = load_profile(path)
            found[profile.id] = profile
    return found
