"""Read planning: a device's registers coalesced into the fewest block reads per function code."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ews_contracts.profiles import DATA_TYPES, Profile
from ews_contracts.site import Device

MAX_REGISTERS = 125  # Modbus limit of one FC3/FC4 read
MAX_GAP = 16  # unused registers a read may bridge (≈ the cost of one extra transaction on RS485)


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
class ReadBlock:
    """One Modbus read request."""

    fc: int
    address: int
    count: int

    @property
    def end(self) -> int:
        return self.address + self.count


def device_spans(profile: Profile, position: int | None = None) -> list[Span]:
    """Every register span the profile decodes: measurements, their scale registers, states."""
    spans: set[Span] = set()
    for reg in profile.registers:
        spans.add(Span(profile.fc(reg), profile.address_of(reg, position), reg.count))
        if reg.scale_from is not None:
            sf = reg.scale_from
            spans.add(Span(profile.fc(sf), sf.address, DATA_TYPES[sf.type][0]))
    for state in profile.states:
        spans.add(Span(profile.fc(state), state.address, 1))
    return sorted(spans)


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
    profile: Profile, device: Device, *, max_registers: int = MAX_REGISTERS, max_gap: int = MAX_GAP
) -> list[ReadBlock]:
    """The reads of one device poll."""
    return coalesce(device_spans(profile, device.position), max_registers=max_registers, max_gap=max_gap)
