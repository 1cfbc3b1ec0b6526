"""The register image of one Modbus unit: the profile's twin of its device(s), encoded and decoded with the
same profile code the poller uses (``ews_contracts.profiles``).

A unit holds one device, or several that occupy disjoint registers (the inputs of a pulse concentrator at
one address). Every address between the lowest and highest register of the unit is readable (gaps read
as 0) with the function code the profile gives it; writes are accepted only on a declared command's
register and only with one of its declared values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ews_contracts.profiles import (
    DATA_TYPES,
    DataType,
    DerivedScale,
    Profile,
    Register,
    StateRegister,
    WordOrder,
    decode_raw,
    encode_raw,
    integer_range,
    scaled,
    unscaled,
)
from ews_contracts.site import Device

from .twins import Twin


class ImageError(ValueError):
    """The site cannot be simulated as declared (e.g. two devices on the same registers of one unit)."""


def fit(raw: int | float, dtype: DataType) -> int | float:
    """Clamp a raw number into what the register type can hold."""
    limits = integer_range(dtype)
    if limits is None:
        return raw if math.isfinite(raw) else 0.0
    return int(min(max(raw, limits[0]), limits[1]))


def scale_register_value(scales: list[DerivedScale]) -> int:
    """The raw value the simulator holds in a scale register (e.g. the CT ratio): one that selects the
    finest step of every derived scale reading it."""
    thresholds = [s.steps[0].below for s in scales if s.steps[0].below is not None]
    if not thresholds:
        return 1
    return max(1, int(min(thresholds) // 5))


@dataclass
class Member:
    """One site device inside a unit."""

    device: Device
    profile: Profile
    twin: Twin
    registers: dict[str, tuple[Register, int]] = field(default_factory=dict)  # quantity -> (reg, address)
    states: dict[str, StateRegister] = field(default_factory=dict)  # state name -> its bit field


class UnitImage:
    def __init__(self, unit: int) -> None:
        self.unit = unit
        self.words: dict[int, int] = {}
        self.fcs: dict[int, int] = {}  # address -> read function code
        self._owner: dict[int, str] = {}  # address -> device id
        self.members: dict[str, Member] = {}
        self.default_fc = 3
        # address -> (member, state name, allowed raw values)
        self.writable: dict[int, tuple[Member, str | None, set[int]]] = {}
        self._scales: dict[int, list[DerivedScale]] = {}
        self._scale_order: dict[int, WordOrder] = {}
        self._state_addresses: set[int] = set()

    def _claim(self, device_id: str, address: int, count: int, fc: int, *, shared: bool = False) -> None:
        for a in range(address, address + count):
            owner = self._owner.get(a)
            if owner is not None and owner != device_id and not shared:
                raise ImageError(
                    f"unit {self.unit}: register {a} of device {device_id!r} is already used by {owner!r}"
                )
            if a > 65535:
                raise ImageError(f"unit {self.unit}: device {device_id!r} maps register {a} beyond 65535")
            self._owner[a] = device_id
            self.fcs[a] = fc
            self.words.setdefault(a, 0)

    def add(self, device: Device, profile: Profile, twin: Twin) -> Member:
        member = Member(device, profile, twin)
        self.default_fc = profile.function_code
        for reg in profile.registers:
            address = profile.address_of(reg, device.position)
            self._claim(device.id, address, reg.count, profile.fc(reg))
            member.registers[str(reg.quantity)] = (reg, address)
            if reg.scale_from is not None:
                sf = reg.scale_from
                self._claim(device.id, sf.address, DATA_TYPES[sf.type][0], profile.fc(sf))
                self._scales.setdefault(sf.address, []).append(sf)
                self._scale_order[sf.address] = profile.word_order
            if reg.sign_from is not None:
                self._claim(device.id, reg.sign_from.address, 1, profile.fc(reg.sign_from))
        for state in profile.states:
            self._claim(device.id, state.address, 1, profile.fc(state), shared=True)
            member.states[state.name] = state
            self._state_addresses.add(state.address)
        for command in profile.commands:
            shown = profile.command_state(command)
            if command.address not in self._state_addresses:
                self._claim(device.id, command.address, 1, 3)
            self.writable[command.address] = (
                member,
                shown.name if shown else None,
                set(command.values.values()),
            )
        self.members[device.id] = member
        self.encode()
        return member

    @property
    def span(self) -> tuple[int, int]:
        """(first address, register count) covering every register of the unit."""
        first, last = min(self.words), max(self.words)
        return first, last - first + 1

    # --- encode / decode ----------------------------------------------------------------------------

    def _scale_raw(self, sf: DerivedScale) -> float:
        words = self.read_words(sf.address, DATA_TYPES[sf.type][0])
        return decode_raw(words, sf.type, self._scale_order.get(sf.address, "big"))

    def encode(self) -> None:
        """Twins -> registers."""
        for address, scales in self._scales.items():
            raw = scale_register_value(scales)
            order = self._scale_order.get(address, "big")
            for i, word in enumerate(encode_raw(raw, scales[0].type, order)):
                self.words[address + i] = word
        for member in self.members.values():
            values = member.twin.values()
            for quantity, (reg, address) in member.registers.items():
                value = values.get(quantity)
                derived = (
                    reg.scale_from.scale_for(self._scale_raw(reg.scale_from)) if reg.scale_from else None
                )
                if value is None or not math.isfinite(value):
                    raw: int | float = reg.invalid[0] if reg.invalid else 0
                else:
                    raw = unscaled(value, reg, derived)
                if reg.sign_from is not None:  # magnitude here, sign in its own register
                    self.words[reg.sign_from.address] = reg.sign_from.word(raw < 0)
                    raw = abs(raw)
                words = encode_raw(fit(raw, reg.type), reg.type, member.profile.order(reg))
                for i, word in enumerate(words):
                    self.words[address + i] = word
        packed: dict[int, int] = {}
        for member in self.members.values():
            for name, spec in member.states.items():
                raw = int(member.twin.states.get(name, 0)) & spec.mask
                packed[spec.address] = packed.get(spec.address, 0) | (raw << spec.bit)
        self.words.update(packed)

    def read_words(self, address: int, count: int) -> list[int]:
        return [self.words.get(a, 0) for a in range(address, address + count)]

    def decode(self, device_id: str, quantity: str) -> float | None:
        """The value a poller decodes from the registers now (None for an invalid marker)."""
        member = self.members[device_id]
        reg, address = member.registers[quantity]
        raw = decode_raw(self.read_words(address, reg.count), reg.type, member.profile.order(reg))
        derived = reg.scale_from.scale_for(self._scale_raw(reg.scale_from)) if reg.scale_from else None
        sign = reg.sign_from
        negative = sign.is_negative(self.words.get(sign.address, 0)) if sign is not None else False
        return scaled(raw, reg, derived, negative)

    def state_name(self, device_id: str, name: str) -> str:
        spec = self.members[device_id].states[name]
        return spec.label(self.words.get(spec.address, 0))
