"""Cumulative counters -> hourly consumption (pure: no I/O, property-tested against a reference).

Consumption is a function of the **set** of readings of a counter, never of their arrival order:

- readings are ``(ts ms, value milli-units, wrap milli-units)``; at equal ``ts`` the larger value wins
  (an exact duplicate changes nothing);
- consecutive readings ``a < b`` (by time) make an interval whose delta is ``b − a``; when the counter
  went down it is a **rollover** if the raw register wraps (``wrap > 0``) and the wrapped delta
  ``b + wrap − a`` is at most ``wrap / WRAP_FRACTION`` (the counter was near the top and is near 0
  again), otherwise a **reset** (meter reset or replaced): 0, never a negative bar or a spike;
- an interval's delta is spread over the UTC hours it covers, pro rata to the time in each, with
  integer arithmetic (cumulative floor: the pieces add up to the delta exactly);
- an interval longer than the gap threshold is **estimated** (its pieces also count in ``estimated``).

The book keeps the most recent readings of each counter (a window). A reading inside the window is
inserted at its place: when it splits an interval ``a → c``, the pieces of ``a → c`` are subtracted
and those of ``a → b`` and ``b → c`` added, so the hour totals are always those of the sorted set.
A reading older than the window is returned as ``Outcome.OLD`` for the store-backed path
(``Aggregator.reconcile``), which applies the same rules to the readings kept in ClickHouse.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

HOUR_MS = 3_600_000
GAP_MS = 15 * 60_000  # an interval longer than this is a gap: spread pro rata and marked estimated
WRAP_FRACTION = 100  # a decrease is a rollover when the wrapped delta is at most 1 % of the wrap range
WINDOW = 64  # readings kept per counter (trimmed to this when it reaches twice as many)

Key = tuple[str, str]  # (device, quantity)
HourKey = tuple[str, str, int]  # (device, quantity, hour start in epoch ms)


class Outcome(StrEnum):
    BASELINE = "baseline"  # first reading of a counter (or earlier than every known one)
    INTERVAL = "interval"
    ROLLOVER = "rollover"  # the raw register wrapped: the wrapped delta counts
    RESET = "reset"  # the counter went down (reset, meter replaced): counted 0
    LATE = "late"  # inserted between two known readings (out of order)
    DUPLICATE = "duplicate"  # same time, not a larger value: nothing changes
    REPLACED = "replaced"  # same time, larger value: replaces the reading
    OLD = "old"  # older than the window: the store-backed path applies it
    INVALID = "invalid"  # not a finite number


def interval_delta(before: int, after: int, wrap: int) -> tuple[int, Outcome]:
    """Consumption between two consecutive counter values (milli-units)."""
    delta = after - before
    if delta >= 0:
        return delta, Outcome.INTERVAL
    if wrap > 0 and delta + wrap <= wrap // WRAP_FRACTION:
        return delta + wrap, Outcome.ROLLOVER
    return 0, Outcome.RESET


def split_hours(start_ms: int, end_ms: int, amount: int) -> list[tuple[int, int]]:
    """``amount`` spread over the UTC hours of ``[start, end)`` pro rata to the time in each.

    Integer cumulative floor: piece i = floor(amount × elapsed_i / total) − floor(amount × elapsed_{i−1} /
    total), so the pieces add up to ``amount`` exactly and the split is deterministic.
    """
    if end_ms <= start_ms:
        raise ValueError("an interval must end after it starts")
    first, last = start_ms // HOUR_MS, (end_ms - 1) // HOUR_MS
    if first == last:
        return [(first * HOUR_MS, amount)]
    total = end_ms - start_ms
    pieces: list[tuple[int, int]] = []
    given = 0
    for h in range(first, last + 1):
        hi = min(end_ms, (h + 1) * HOUR_MS)
        cumulative = amount * (hi - start_ms) // total
        pieces.append((h * HOUR_MS, cumulative - given))
        given = cumulative
    return pieces


def interval_pieces(
    a_ts: int, a_value: int, b_ts: int, b_value: int, b_wrap: int, gap_ms: int = GAP_MS
) -> tuple[Outcome, list[tuple[int, int]], bool]:
    """(outcome, hour pieces, estimated) of the interval between consecutive readings a and b."""
    delta, outcome = interval_delta(a_value, b_value, b_wrap)
    if delta == 0:
        return outcome, [], False
    return outcome, split_hours(a_ts, b_ts, delta), (b_ts - a_ts) > gap_ms


def hour_totals(readings: Iterable[tuple[int, int, int]], gap_ms: int = GAP_MS) -> dict[int, list[int]]:
    """Hour -> [value, estimated] of a whole set of readings ``(ts, value, wrap)`` (any order, duplicates:
    the larger value at a time wins). The store-backed path and recovery use it."""
    best: dict[int, tuple[int, int]] = {}
    for ts, value, wrap in readings:
        seen = best.get(ts)
        if seen is None or value > seen[0]:
            best[ts] = (value, wrap)
    out: dict[int, list[int]] = {}
    ordered = sorted(best.items())
    for (a_ts, (a_value, _)), (b_ts, (b_value, b_wrap)) in zip(ordered, ordered[1:], strict=False):
        _, pieces, estimated = interval_pieces(a_ts, a_value, b_ts, b_value, b_wrap, gap_ms)
        for hour, piece in pieces:
            acc = out.setdefault(hour, [0, 0])
            acc[0] += piece
            if estimated:
                acc[1] += piece
    return out


@dataclass
class Counter:
    """The recent readings of one counter, sorted by time. ``complete``: the list holds every reading
    of the counter ever stored (so nothing can be older than the window)."""

    ts: list[int] = field(default_factory=list)
    values: list[int] = field(default_factory=list)
    wraps: list[int] = field(default_factory=list)
    complete: bool = True


class CounterBook:
    """Recent readings per (device, quantity) and the interval arithmetic on them."""

    def __init__(self, gap_ms: int = GAP_MS, window: int = WINDOW) -> None:
        self.counters: dict[Key, Counter] = {}
        self.gap_ms = gap_ms
        self.window = window

    def _interval(
        self, key: Key, c: Counter, i: int, j: int, sign: int, out: dict[HourKey, list[int]]
    ) -> Outcome:
        outcome, pieces, estimated = interval_pieces(
            c.ts[i], c.values[i], c.ts[j], c.values[j], c.wraps[j], self.gap_ms
        )
        device, quantity = key
        for hour, piece in pieces:
            acc = out.get((device, quantity, hour))
            if acc is None:
                acc = out[(device, quantity, hour)] = [0, 0]
            acc[0] += sign * piece
            if estimated:
                acc[1] += sign * piece
        return outcome

    def apply(
        self, device: str, quantity: str, ts: int, value: int, wrap: int, out: dict[HourKey, list[int]]
    ) -> Outcome:
        """Take one reading; the hour corrections it causes are added to ``out`` ([value, estimated])."""
        key = (device, quantity)
        c = self.counters.get(key)
        if c is None:
            c = self.counters[key] = Counter()
        n = len(c.ts)
        if n == 0 or ts > c.ts[-1]:  # the usual case: a newer reading
            c.ts.append(ts)
            c.values.append(value)
            c.wraps.append(wrap)
            if n == 0:
                return Outcome.BASELINE
            outcome = self._interval(key, c, n - 1, n, 1, out)
            if n + 1 >= 2 * self.window:
                cut = n + 1 - self.window
                del c.ts[:cut], c.values[:cut], c.wraps[:cut]
                c.complete = False
            return outcome
        i = bisect_left(c.ts, ts)
        if c.ts[i] == ts:
            if value <= c.values[i]:
                return Outcome.DUPLICATE
            if i > 0:
                self._interval(key, c, i - 1, i, -1, out)
            if i + 1 < n:
                self._interval(key, c, i, i + 1, -1, out)
            c.values[i], c.wraps[i] = value, wrap
            if i > 0:
                self._interval(key, c, i - 1, i, 1, out)
            if i + 1 < n:
                self._interval(key, c, i, i + 1, 1, out)
            return Outcome.REPLACED
        if i == 0 and not c.complete:
            return Outcome.OLD
        if i > 0:  # split the interval (i-1 -> i)
            self._interval(key, c, i - 1, i, -1, out)
        c.ts.insert(i, ts)
        c.values.insert(i, value)
        c.wraps.insert(i, wrap)
        if i > 0:
            self._interval(key, c, i - 1, i, 1, out)
        self._interval(key, c, i, i + 1, 1, out)
        return Outcome.LATE if i > 0 else Outcome.BASELINE

    def load(self, key: Key, readings: list[tuple[int, int, int]], complete: bool) -> None:
        """Set a counter's window from stored readings (sorted, distinct times)."""
        c = Counter(complete=complete)
        for ts, value, wrap in readings:
            c.ts.append(ts)
            c.values.append(value)
            c.wraps.append(wrap)
        self.counters[key] = c
