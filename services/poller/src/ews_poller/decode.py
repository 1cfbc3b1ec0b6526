"""Decoding one device poll from its register blocks, through the device profile (no I/O)."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ews_contracts.profiles import DATA_TYPES, DataType, Profile, Register, decode_raw, scaled
from ews_contracts.quantities import Quantity
from ews_contracts.site import Device

from .plan import ALL_TIERS, ReadBlock

# what a pulse meter's pulses measure, in canonical units (pulse_count × pulse_weight)
MEDIUM_QUANTITY: dict[str, Quantity] = {
    "electricity": Quantity.ENERGY_ACTIVE_IMPORT,
    "water": Quantity.WATER_VOLUME,
    "gas": Quantity.GAS_VOLUME,
}
PULSE_COUNT = str(Quantity.PULSE_COUNT)


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


# --- the same decoding, compiled once per device plan ---------------------------------------------------


class _Straddles(Exception):
    """A span read across two blocks (not what ``plan_reads`` does): decoded the general way."""


def _locate(blocks: Sequence[ReadBlock], fc: int, address: int, count: int) -> tuple[int, int] | None:
    """(block index, offset) of ``count`` registers from ``address`` read with ``fc`` in one block; None
    when they were not read."""
    for n, block in enumerate(blocks):
        if block.fc == fc and block.address <= address and address + count <= block.end:
            return n, address - block.address
    if all(
        any(b.fc == fc and b.address <= a < b.end for b in blocks) for a in range(address, address + count)
    ):
        raise _Straddles
    return None


def _missing(fc: int, address: int, count: int) -> str:
    return str(MissingRegisters(f"FC{fc} registers {address}..{address + count - 1} were not read"))


def _number(
    blocks: Sequence[ReadBlock], at: tuple[int, int], dtype: DataType, word_order: str
) -> tuple[int, int, Callable[[bytes, int], tuple[Any, ...]]]:
    """How ``decode_raw`` reads one number, on the bytes of its block (``CompiledDecoder._bytes``):
    (index in those bytes, byte offset, struct unpack_from). A number in little word order (least
    significant word first) is read from the block's words reversed, where its words are in big order."""
    block, offset = at
    count, code = DATA_TYPES[dtype]
    unpack_from = struct.Struct(">" + code).unpack_from
    if word_order == "little" and count > 1:
        return 2 * block + 1, 2 * (blocks[block].count - offset - count), unpack_from
    return 2 * block, 2 * offset, unpack_from


class CompiledDecoder:
    """``decode_device`` for one device and one plan of reads (``plan_reads``), worked out once: where each
    number sits in the blocks and how its words make it. ``decode(words)`` takes the words of every block in
    the plan's order and returns the same ``DecodedPoll`` (values, states and problem lines) as
    ``decode_device(profile, device, RegisterImage(blocks), tiers)``, and raises the same ``ValueError`` for
    a block of the wrong length or with out-of-range words. Each block becomes bytes once (one
    ``struct.pack``, which also checks every word fits in 16 bits) and each number one ``unpack_from``."""

    def __init__(
        self, profile: Profile, device: Device, blocks: Sequence[ReadBlock], tiers: frozenset[str] = ALL_TIERS
    ) -> None:
        self.profile, self.device, self.tiers = profile, device, tiers
        self.blocks = list(blocks)
        self._packs = [struct.Struct(f">{b.count}H").pack for b in self.blocks]
        self._reversed = False  # a number in little word order: the blocks' words reversed are needed too
        # per measurement: (name, label, number, scale, offset, invalid, scale_from, scale number, sign_from,
        # sign register (block, offset)); a missing span: its problem line instead of the number
        self.items: list[tuple[Any, ...]] = []
        self.states: list[tuple[Any, ...]] = []  # (name, block, offset, bit, mask, labels) or (problem,)
        self.general = False  # decode_device itself (a plan whose spans straddle blocks)
        try:
            for reg in profile.registers:
                if reg.tier in tiers:
                    self.items.append(self._item(profile, reg, device.position))
            for state in profile.states if "fast" in tiers else ():
                fc = profile.fc(state)
                at = _locate(self.blocks, fc, state.address, 1)
                if at is None:
                    self.states.append((f"state {state.name}: {_missing(fc, state.address, 1)}",))
                else:
                    self.states.append((state.name, *at, state.bit, state.mask, state.values))
        except _Straddles:
            self.general = True
        self.pulses: tuple[str, float] | None = None
        if device.pulse_weight is not None and device.medium is not None:
            self.pulses = (str(MEDIUM_QUANTITY[device.medium]), device.pulse_weight)

    def _item(self, profile: Profile, reg: Register, position: int | None) -> tuple[Any, ...]:
        label = f"{reg.quantity}"
        spans = [(profile.fc(reg), profile.address_of(reg, position), reg.count)]
        if reg.scale_from is not None:
            sf = reg.scale_from
            spans.append((profile.fc(sf), sf.address, DATA_TYPES[sf.type][0]))
        if reg.sign_from is not None:
            spans.append((profile.fc(reg.sign_from), reg.sign_from.address, 1))
        at = [_locate(self.blocks, *span) for span in spans]
        for span, found in zip(spans, at, strict=True):
            if found is None:  # decode_device's line for the first span not read
                return (None, f"{label}: {_missing(*span)}")
        order = profile.order(reg)
        if order == "little" and reg.count > 1:
            self._reversed = True
        number = _number(self.blocks, at[0], reg.type, order)
        scale_number = None
        if reg.scale_from is not None:
            scale_number = _number(self.blocks, at[1], reg.scale_from.type, profile.word_order)
            if profile.word_order == "little" and DATA_TYPES[reg.scale_from.type][0] > 1:
                self._reversed = True
        return (
            str(reg.quantity),
            label,
            number,
            reg.scale,
            reg.offset,
            frozenset(reg.invalid),
            reg.scale_from,
            scale_number,
            reg.sign_from,
            at[-1] if reg.sign_from is not None else None,
        )

    def _bytes(self, words: Sequence[list[int]]) -> list[bytes]:
        """Each block as bytes, and (for numbers in little word order) its words reversed: [b0, r0, b1, …].
        ValueError (``RegisterImage``'s) for a block of the wrong length or with words out of 16 bits."""
        if len(words) != len(self.blocks):
            raise ValueError(f"{len(words)} blocks read instead of {len(self.blocks)}")
        try:
            data = []
            for pack, part in zip(self._packs, words, strict=True):
                data.append(pack(*part))
                data.append(pack(*reversed(part)) if self._reversed else b"")
        except struct.error:
            RegisterImage(dict(zip(self.blocks, words, strict=True)))  # raises the line callers know
            raise
        return data

    def decode(self, words: Sequence[list[int]]) -> DecodedPoll:
        data = self._bytes(words)
        if self.general:
            image = RegisterImage(dict(zip(self.blocks, words, strict=True)))
            return decode_device(self.profile, self.device, image, self.tiers)
        out = DecodedPoll()
        values, problems = out.values, out.problems
        isfinite = math.isfinite
        for item in self.items:
            name = item[0]
            if name is None:
                problems.append(item[1])
                continue
            (
                _,
                label,
                (at, offset, unpack_from),
                scale,
                add,
                invalid,
                scale_from,
                scale_number,
                sign,
                sign_at,
            ) = item
            raw = unpack_from(data[at], offset)[0]
            if scale_number is not None:
                s_at, s_offset, s_unpack_from = scale_number
                scale = scale_from.scale_for(s_unpack_from(data[s_at], s_offset)[0])
            negative = False
            if sign is not None:
                try:
                    negative = sign.is_negative(words[sign_at[0]][sign_at[1]])
                except ValueError as exc:
                    problems.append(f"{label}: {exc}")
                    continue
            if invalid and raw in invalid:
                continue  # the device says "not available"
            value = (-raw if negative else raw) * scale + add
            if not isfinite(value):
                problems.append(f"{label}: not a finite number ({value})")
                continue
            values[name] = float(value)
        states = out.states
        for state in self.states:
            if len(state) == 1:
                problems.append(state[0])
                continue
            name, block, offset, bit, mask, labels = state
            raw = (words[block][offset] >> bit) & mask  # StateRegister.label
            label = labels.get(raw)
            states[name] = f"unknown-{raw}" if label is None else label
        if self.pulses is not None:
            pulses = values.get(PULSE_COUNT)
            if pulses is not None:
                values.setdefault(self.pulses[0], pulses * self.pulses[1])
        return out
