"""Decoding one device poll from its register blocks, through the device profile (no I/O)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from ews_contracts.profiles import DATA_TYPES, Profile, decode_raw, scaled
from ews_contracts.quantities import Quantity
from ews_contracts.site import Device

from .plan import ALL_TIERS, ReadBlock

# what a pulse meter's pulses measure, in canonical units (pulse_count × pulse_weight)
MEDIUM_QUANTITY: dict[str, Quantity] = {
    "electricity": Quantity.ENERGY_ACTIVE_IMPORT,
    "water": Quantity.WATER_VOLUME,
    "gas": Quantity.GAS_VOLUME,
}


class MissingRegisters(LookupError):
    pass


class RegisterImage:
    """The registers read in one poll, addressable by (function code, address)."""

    def __init__(self, blocks: Mapping[ReadBlock, list[int]]) -> None:
        self._words: dict[tuple[int, int], int] = {}
        for block, words in blocks.items():
            if len(words) != block.count:
                raise ValueError(f"block {block}: {len(words)} registers instead of {block.count}")
            for i, word in enumerate(words):
                if not 0 <= word <= 0xFFFF:
                    raise ValueError(f"block {block}: register {block.address + i} = {word} is not 16-bit")
                self._words[(block.fc, block.address + i)] = word

    def words(self, fc: int, address: int, count: int) -> list[int]:
        try:
            return [self._words[(fc, a)] for a in range(address, address + count)]
        except KeyError:
            raise MissingRegisters(
                f"FC{fc} registers {address}..{address + count - 1} were not read"
            ) from None


@dataclass
class DecodedPoll:
    values: dict[str, float] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # one line each; the rest of the poll is still valid


def decode_device(
    profile: Profile, device: Device, image: RegisterImage, tiers: frozenset[str] = ALL_TIERS
) -> DecodedPoll:
    """Values in canonical units (invalid markers left out) and named states of one device poll (of the
    registers in ``tiers``; states belong to the fast tier)."""
    out = DecodedPoll()
    for reg in profile.registers:
        if reg.tier not in tiers:
            continue
        try:
            address = profile.address_of(reg, device.position)
            raw = decode_raw(image.words(profile.fc(reg), address, reg.count), reg.type, profile.order(reg))
            derived = None
            if reg.scale_from is not None:
                sf = reg.scale_from
                scale_words = image.words(profile.fc(sf), sf.address, DATA_TYPES[sf.type][0])
                derived = sf.scale_for(decode_raw(scale_words, sf.type, profile.word_order))
            negative = False
            if reg.sign_from is not None:
                sign = reg.sign_from
                (sign_word,) = image.words(profile.fc(sign), sign.address, 1)
                negative = sign.is_negative(sign_word)
            value = scaled(raw, reg, derived, negative)
        except (MissingRegisters, ValueError) as exc:
            out.problems.append(f"{reg.quantity}: {exc}")
            continue
        if value is None:
            continue  # the device says "not available"
        if not math.isfinite(value):
            out.problems.append(f"{reg.quantity}: not a finite number ({value})")
            continue
        out.values[str(reg.quantity)] = float(value)
    for state in profile.states if "fast" in tiers else ():
        try:
            (word,) = image.words(profile.fc(state), state.address, 1)
        except MissingRegisters as exc:
            out.problems.append(f"state {state.name}: {exc}")
            continue
        out.states[state.name] = state.label(word)
    pulses = out.values.get(str(Quantity.PULSE_COUNT))
    if pulses is not None and device.pulse_weight is not None and device.medium is not None:
        out.values.setdefault(str(MEDIUM_QUANTITY[device.medium]), pulses * device.pulse_weight)
    return out


def fault_states(profile: Profile) -> dict[str, frozenset[str]]:
    """State name -> the values that mean the device is in fault."""
    return {s.name: frozenset(s.fault) for s in profile.states if s.fault}
