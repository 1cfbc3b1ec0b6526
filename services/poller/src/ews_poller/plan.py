"""Read planning: a device's registers coalesced into the fewest block reads per function code."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ews_contracts.profiles import DATA_TYPES, Profile
from ews_contracts.site import Device

MAX_REGISTERS = 125  # Modbus limit of one FC3/FC4 read
MAX_GAP = 16  # unused registers a read may bridge (≈ the cost of one extra transaction on RS485)
TYPICAL_REPLY_DELAY = 0.02  # s: a device's turnaround on RS485 (5–60 ms in makers' documents)


@dataclass(frozen=True, order=True)
class Span:
    """Registers one item needs: ``count`` registers from ``address``, read with ``fc``."""

    fc: int
    address: int
    count: int

    @property
    def end(self) -> int:
        return self.address + self.count


@dataclass(frozen=True, order=True)
class ReadBlock(Span):
    """One Modbus read request (covering one or more spans)."""


ALL_TIERS: frozenset[str] = frozenset({"fast", "counter"})


def device_spans(
    profile: Profile, position: int | None = None, tiers: frozenset[str] = ALL_TIERS
) -> list[Span]:
    """Every register span the profile decodes in ``tiers``: measurements, their scale and sign registers,
    and (with the fast tier) states."""
    spans: set[Span] = set()
    for reg in profile.registers:
        if reg.tier not in tiers:
            continue
        spans.add(Span(profile.fc(reg), profile.address_of(reg, position), reg.count))
        if reg.scale_from is not None:
            sf = reg.scale_from
            spans.add(Span(profile.fc(sf), sf.address, DATA_TYPES[sf.type][0]))
        if reg.sign_from is not None:
            spans.add(Span(profile.fc(reg.sign_from), reg.sign_from.address, 1))
    if "fast" in tiers:
        for state in profile.states:
            spans.add(Span(profile.fc(state), state.address, 1))
    return sorted(spans)


def gap_worth_bridging(baudrate: int, reply_delay: float = TYPICAL_REPLY_DELAY) -> int:
    """Unused registers a read may bridge on a bus: reading them costs less wire time than one more
    transaction (8-byte request + 5-byte response overhead + the device's reply delay + two silences)."""
    char = 11 / baudrate
    silence = 3.5 * char if baudrate <= 19200 else 0.00175
    extra_transaction = 13 * char + reply_delay + silence
    return max(0, int(extra_transaction / (2 * char)))


def coalesce(
    spans: Iterable[Span], *, max_registers: int = MAX_REGISTERS, max_gap: int = MAX_GAP
) -> list[ReadBlock]:
    """Merge spans of one function code into blocks of at most ``max_registers`` registers, bridging gaps
    of at most ``max_gap`` unused registers. Overlapping spans share their registers."""
    blocks: list[ReadBlock] = []
    by_fc: dict[int, list[Span]] = {}
    for span in spans:
        if not 1 <= span.count <= max_registers:
            raise ValueError(f"span {span} cannot be read in one request")
        by_fc.setdefault(span.fc, []).append(span)
    for fc in sorted(by_fc):
        start = end = None
        for span in sorted(by_fc[fc]):
            if start is not None and end is not None:
                new_end = max(end, span.end)
                if span.address - end <= max_gap and new_end - start <= max_registers:
                    end = new_end
                    continue
                blocks.append(ReadBlock(fc, start, end - start))
            start, end = span.address, span.end
        if start is not None and end is not None:
            blocks.append(ReadBlock(fc, start, end - start))
    return blocks


def plan_reads(
    profile: Profile,
    device: Device,
    *,
    max_registers: int = MAX_REGISTERS,
    max_gap: int = MAX_GAP,
    tiers: frozenset[str] = ALL_TIERS,
) -> list[ReadBlock]:
    """The reads of one device poll (of the given tiers)."""
    return coalesce(
        device_spans(profile, device.position, tiers), max_registers=max_registers, max_gap=max_gap
    )
