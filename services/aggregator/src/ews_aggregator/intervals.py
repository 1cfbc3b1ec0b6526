"""Cumulative counters -> hourly consumption (pure: no I/O, unit-tested).

For each ``(device, quantity)`` the book keeps the last counter reading it used and the hour row it
is filling. A new reading:

- first reading of a counter: the baseline, no consumption;
- not newer than the last one (duplicate, replay, late): no interval (it is still stored raw);
- counter went down (reset, meter replaced): consumption 0, continue from the new value;
- otherwise the delta is split pro rata over the UTC hours ``[last.ts, reading.ts)`` covers, and
  each touched hour row gets the piece added to its running total.

An hour row records ``last_end``, the end of the last interval included; an interval that ends at
or before it is already counted (redelivery after a crash) and is not added again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum

HOUR = timedelta(hours=1)

Key = tuple[str, str]  # (device, quantity)


def floor_hour(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def split_hours(start: datetime, end: datetime, amount: float) -> list[tuple[datetime, float]]:
    """``amount`` spread over the UTC hours of ``[start, end)`` in proportion to the time in each.

    The pieces add up to ``amount`` exactly (the last piece takes the rounding remainder).
    """
    if end <= start:
        raise ValueError("an interval must end after it starts")
    total = (end - start).total_seconds()
    pieces: list[tuple[datetime, float]] = []
    hour = floor_hour(start)
    given = 0.0
    while hour < end:
        lo, hi = max(start, hour), min(end, hour + HOUR)
        if hi > lo:
            if hi == end:
                piece = amount - given
            else:
                piece = amount * (hi - lo).total_seconds() / total
                given += piece
            pieces.append((hour, piece))
        hour += HOUR
    return pieces


@dataclass(frozen=True)
class CounterReading:
    ts: datetime
    value: float


@dataclass(frozen=True)
class HourRow:
    """Running total of one (device, quantity, UTC hour)."""

    device: str
    quantity: str
    hour: datetime
    value: float
    last_end: datetime


class Outcome(StrEnum):
    BASELINE = "baseline"
    INTERVAL = "interval"
    STALE = "stale"  # not newer than the last reading: duplicate, replay or late
    RESET = "reset"  # the counter went down
    ALREADY_COUNTED = "already-counted"  # interval already in the hour rows (redelivery after a crash)
    INVALID = "invalid"  # not a finite number


@dataclass
class Step:
    outcome: Outcome
    delta: float = 0.0


class CounterBook:
    """Last counter reading and open hour row per (device, quantity).

    ``copy()`` is cheap (immutable values in fresh dicts): process a batch on a copy and keep it only
    once the batch is stored.
    """

    def __init__(
        self,
        counters: dict[Key, CounterReading] | None = None,
        open_hours: dict[Key, HourRow] | None = None,
    ) -> None:
        self.counters: dict[Key, CounterReading] = dict(counters or {})
        self.open_hours: dict[Key, HourRow] = dict(open_hours or {})

    def copy(self) -> CounterBook:
        return CounterBook(self.counters, self.open_hours)

    def apply(
        self, device: str, quantity: str, ts: datetime, value: float, changed: dict[tuple, HourRow]
    ) -> Step:
        """Take one counter reading; hour rows it changes are put in ``changed`` (keyed by device, quantity, hour)."""
        if not math.isfinite(value):
            return Step(Outcome.INVALID)
        key = (device, quantity)
        ts = ts.astimezone(UTC)
        last = self.counters.get(key)
        if last is None:
            self.counters[key] = CounterReading(ts, value)
            return Step(Outcome.BASELINE)
        if ts <= last.ts:
            return Step(Outcome.STALE)
        self.counters[key] = CounterReading(ts, value)
        delta = value - last.value
        if delta < 0:
            return Step(Outcome.RESET, delta)
        row = self.open_hours.get(key)
        if row is not None and ts <= row.last_end:
            return Step(Outcome.ALREADY_COUNTED, delta)
        for hour, piece in split_hours(last.ts, ts, delta):
            if row is not None and row.hour == hour:
                row = replace(row, value=row.value + piece, last_end=ts)
            else:  # a later hour (pieces come in time order, never before the open hour)
                row = HourRow(device, quantity, hour, piece, ts)
            changed[(device, quantity, hour)] = row
        if row is not None:
            self.open_hours[key] = row
        return Step(Outcome.INTERVAL, delta)
