"""Device profiles: data files that map Modbus registers to canonical quantities, states and commands.

A new device model is one YAML file in ``device_profiles/`` (or ``EWS_PROFILES_DIR``); no code change.
Decode order (fixed): word order -> unpack -> invalid-value check -> scale x + offset.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .quantities import Quantity
from .yamlfile import ConfigFileError, load_yaml_model

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

FunctionCode = Literal[3, 4]
WordOrder = Literal["big", "little"]
Function = Literal["measure", "status", "command", "function", "link"]


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


class Register(_Strict):
    quantity: Quantity
    address: int = Field(ge=0, le=65535, description="0-based address sent on the wire.")
    type: DataType = DataType.UINT16
    function_code: FunctionCode | None = None
    word_order: WordOrder | None = None
    scale: float = 1.0
    offset: float = 0.0
    scale_from: DerivedScale | None = None
    invalid: list[int] = Field(default_factory=list, description="Raw values meaning 'not available'.")
    tier: Literal["fast", "counter"] = "fast"
    position_stride: int | None = Field(
        default=None, description="Pulse concentrator: address += stride × (position − 1)."
    )

    @property
    def count(self) -> int:
        return DATA_TYPES[self.type][0]


class StateRegister(_Strict):
    """A register whose raw value names a state (breaker, charger, input …)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    address: int = Field(ge=0, le=65535)
    function_code: FunctionCode | None = None
    values: dict[int, str] = Field(min_length=1)
    fault: list[str] = Field(default_factory=list, description="States that mean the device is in fault.")


class Command(_Strict):
    """A command the device accepts: write ``values[value]`` to ``address`` (FC6), then read it back."""

    action: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    label: str = ""
    address: int = Field(ge=0, le=65535)
    values: dict[str, int] = Field(min_length=1)
    readback: bool = True


class Profile(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    name: str
    family: str = Field(description="Requirement family, e.g. D1 power-meter.")
    source: str = Field(description="Where the register map comes from, or 'assumed'.")
    functions: list[Function] = Field(min_length=1)
    function_code: FunctionCode = 3
    word_order: WordOrder = "big"
    registers: list[Register] = []
    states: list[StateRegister] = []
    commands: list[Command] = []

    @model_validator(mode="after")
    def _unique(self) -> Profile:
        names = [r.quantity for r in self.registers]
        if len(names) != len(set(names)):
            raise ValueError("a quantity is mapped twice")
        actions = [c.action for c in self.commands]
        if len(actions) != len(set(actions)):
            raise ValueError("a command action is declared twice")
        return self

    def fc(self, item: Register | StateRegister | DerivedScale) -> int:
        return item.function_code or self.function_code

    def order(self, reg: Register) -> WordOrder:
        return reg.word_order or self.word_order

    def address_of(self, reg: Register, position: int | None) -> int:
        if reg.position_stride and position:
            return reg.address + reg.position_stride * (position - 1)
        return reg.address

    def command(self, action: str) -> Command | None:
        return next((c for c in self.commands if c.action == action), None)


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


def scaled(raw: int | float, reg: Register, derived_scale: float | None = None) -> float | None:
    """Apply invalid check, scale and offset. ``None`` when the raw value is an invalid marker."""
    if reg.invalid and raw in reg.invalid:
        return None
    scale = derived_scale if derived_scale is not None else reg.scale
    return raw * scale + reg.offset


def unscaled(value: float, reg: Register, derived_scale: float | None = None) -> int | float:
    """Inverse of ``scaled`` for integer types (rounded to the register's resolution)."""
    scale = derived_scale if derived_scale is not None else reg.scale
    raw = (value - reg.offset) / scale
    if reg.type in (DataType.FLOAT32, DataType.FLOAT64):
        return raw
    return int(round(raw))


# --- discovery -------------------------------------------------------------------------------------


def load_profile(path: Path) -> Profile:
    profile = load_yaml_model(path, Profile, "device profile")
    if profile.id != path.stem:
        raise ConfigFileError(f"device profile {path}:1: field 'id': {profile.id!r} must equal the file name")
    return profile


@lru_cache(maxsize=8)
def load_profiles(extra_dir: Path | None = None) -> dict[str, Profile]:
    """Every profile of the bundled folder, then of ``extra_dir`` (which may replace bundled ones)."""
    found: dict[str, Profile] = {}
    for folder in (BUNDLED_PROFILES, extra_dir):
        if folder is None:
            continue
        for path in sorted(Path(folder).glob("*.yaml")):
            profile = load_profile(path)
            found[profile.id] = profile
    return found
