"""Readings -> ClickHouse: raw values, counter readings, hourly consumption corrections and cost.

One batch is written in this order, then checkpointed (and only then acked by the service):

1. ``readings`` (raw values) and ``counter_readings`` (the counter set, with this batch's number);
2. ``consumption_hourly`` corrections (the daily/monthly rollups follow through materialized views);
3. readings older than the in-memory window: their hours are reconciled against the store;
4. ``aggregator_checkpoints`` ← this batch's number.

A crash (or a failed insert) anywhere before 4 leaves counter readings whose batch is above the
checkpoint: ``recover()`` (at start-up, and before the next batch after a failed write) recomputes the
hours those readings touch from the stored readings and writes the difference with what is stored.
Redelivered messages are then duplicates and change nothing. Nothing is lost, nothing counted twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ews_analytics import CHECKPOINTS, COUNTER_READINGS, HOURLY, READINGS, PriceBook, migrate, table
from ews_analytics.costs import MEDIUM_QUANTITY
from ews_contracts.events import ReadingTaken
from ews_contracts.profiles import DATA_TYPES, integer_range
from ews_contracts.profiles import resolve as resolve_profile
from ews_contracts.quantities import COUNTERS, Quantity
from ews_contracts.site import Device, Site
from ews_contracts.store import Store

from .columns import ReadingColumns, from_micros
from .intervals import GAP_MS, HOUR_MS, WRAP_FRACTION, Counter, CounterBook, Outcome, hour_totals, split_hours

log = logging.getLogger("ews.aggregator")

COUNTER_NAMES: frozenset[str] = frozenset(str(q) for q in COUNTERS)
PULSE_COUNT = str(Quantity.PULSE_COUNT)
MILLI = 1000
HOUR_COLUMNS = ["site", "device", "quantity", "hour", "day", "value_milli", "estimated_milli", "cost"]
READING_COLUMNS = ["site", "device", "quantity", "ts", "value", "profile", "event_id"]
COUNTER_COLUMNS = ["site", "device", "quantity", "ts", "value_milli", "wrap_milli", "batch"]
RECONCILE_CLUSTER_MS = 6 * HOUR_MS  # suspect readings closer than this are reconciled together


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000) if ts.tzinfo else int(ts.replace(tzinfo=UTC).timestamp() * 1000)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _runs(hours: list[int]) -> list[tuple[int, int]]:
    """Consecutive hours (ms, sorted) as [first, last) runs."""
    runs: list[tuple[int, int]] = []
    for h in hours:
        if runs and runs[-1][1] == h:
            runs[-1] = (runs[-1][0], h + HOUR_MS)
        else:
            runs.append((h, h + HOUR_MS))
    return runs


def counter_values(reading: ReadingTaken, site: Site, device: Device | None = None) -> dict[str, float]:
    """The cumulative counters of a reading; a pulse meter's ``pulse_count`` × pulse weight gives its
    medium's counter (Wh or dm³) when the reading does not carry it already."""
    return counters_of(reading.device, reading.values, site, device)


def counters_of(
    device_id: str, readings: Mapping[str, float], site: Site, device: Device | None = None
) -> dict[str, float]:
    """``counter_values`` of the values ``readings`` of a reading of ``device_id``."""
    values = {q: v for q, v in readings.items() if q in COUNTER_NAMES}
    device = device if device is not None else site.device(device_id)
    pulses = readings.get(PULSE_COUNT)
    if device is not None and device.pulse_weight is not None and device.medium and pulses is not None:
        values.setdefault(str(MEDIUM_QUANTITY[device.medium]), pulses * device.pulse_weight)
    return values


def wrap_of(device: Device | None, quantity: str, profiles: Mapping[str, Any]) -> float:
    """The value (canonical unit) at which a counter wraps: the raw register's range × its scale (× the
    pulse weight for a pulse meter); 0 when it does not wrap (floats, unknown profile, derived scale)."""
    if device is None:
        return 0.0
    try:
        profile = resolve_profile(device, profiles)  # with its modules and ea_register override
        pulse = device.pulse_weight is not None and device.medium is not None
        wanted = PULSE_COUNT if pulse and quantity == MEDIUM_QUANTITY[device.medium] else quantity
        reg = next((r for r in profile.registers if str(r.quantity) == wanted), None)
        if reg is None or reg.scale_from is not None:
            return 0.0
        limits = integer_range(reg.type)
        if (
            limits is None or DATA_TYPES[reg.type][0] > 2
        ):  # floats; 64-bit counters never wrap in a meter's life
            return 0.0
        wrap = float(limits[1] - limits[0] + 1) * abs(float(reg.scale))
        return wrap * float(device.pulse_weight) if wanted == PULSE_COUNT and wanted != quantity else wrap
    except Exception:  # a profile that cannot be resolved: no rollover detection, resets still safe
        return 0.0


@dataclass
class Plan:
    """Everything a batch writes: the rows of ``readings`` and ``counter_readings`` (Arrow tables), the hour
    corrections, the readings older than the window (reconciled against the store) and the outcomes."""

    batch: int
    hours: dict[tuple[str, str, int], list[int]] = field(default_factory=dict)
    raw: pa.Table | None = None
    counters: pa.Table | None = None
    old: list[tuple[str, str, int]] = field(default_factory=list)  # (device, quantity, ts ms)
    outcomes: dict[str, int] = field(default_factory=dict)


TS_TYPE = pa.timestamp("us", tz="UTC")
COUNTER_SET = pa.array(sorted(COUNTER_NAMES), pa.string())
SAFE_MILLI = 2**62  # |milli-units| below this: differences and sums stay in int64


def _repeat(text: str, n: int) -> pa.Array:
    """``n`` times ``text`` (plain strings: ClickHouse reads them into LowCardinality faster than a
    dictionary array)."""
    return pa.repeat(pa.scalar(text, pa.string()), n)


def _timestamps(us: Any) -> pa.Array:
    return pa.array(np.asarray(us, dtype=np.int64), pa.int64()).view(TS_TYPE)


def _count(outcomes: dict[str, int], outcome: str, n: int = 1) -> None:
    if n:
        outcomes[outcome] = outcomes.get(outcome, 0) + n


def _window_after(size: int, added: int, window: int) -> tuple[int, bool]:
    """(length, trimmed) of a counter's list of ``size`` readings after ``added`` appends, trimmed like
    ``CounterBook.apply`` does: back to ``window`` whenever an append brings it to 2 × ``window``."""
    if added <= 0:
        return size, False
    length, trimmed = size + 1, False
    if length >= 2 * window:
        length, trimmed = window, True
    rest = added - 1
    if length + rest < 2 * window:
        return length + rest, trimmed
    return window + (length + rest - 2 * window) % window, True


class Aggregator:
    def __init__(
        self,
        store: Store,
        database: str,
        site: Site,
        profiles: Mapping[str, Any] | None = None,
        gap_ms: int = GAP_MS,
    ) -> None:
        self.store = store
        self.database = database
        self.site = site
        self.profiles = profiles or {}
        self.gap_ms = gap_ms
        self.book = CounterBook(gap_ms)
        self.prices = PriceBook(site)
        self.batch = 0  # number of the last batch written
        self.needs_recovery = True
        self._devices = {d.id: d for d in site.devices}
        self._wraps: dict[tuple[str, str], int] = {}
        self._days: dict[int, date] = {}

    def apply_site(self, site: Site) -> None:
        """A new configuration, live (between two batches: the event loop runs one thing at a time).
        Hours already stored keep their cost: prices apply to hours accounted from now on, and the
        configuration only accepts tariff changes that take effect after today (siteconfig)."""
        self.site = site
        self.prices = PriceBook(site)
        self._devices = {d.id: d for d in site.devices}
        self._wraps.clear()
        self._days.clear()

    # --- start-up and recovery ---------------------------------------------------------------------

    async def start(self) -> None:
        """Migrate the schema, reconcile an interrupted batch, load the recent readings."""
        await migrate(self.store, self.database)
        await self.recover()

    async def recover(self) -> None:
        site = {"site": self.site.site}
        rows = await self.store.query(
            f"SELECT max(batch) FROM {table(self.database, CHECKPOINTS)} WHERE site = {{site:String}}", site
        )
        checkpoint = int(rows[0][0] or 0) if rows else 0
        rows = await self.store.query(
            f"SELECT max(batch) FROM {table(self.database, COUNTER_READINGS)} WHERE site = {{site:String}}",
            site,
        )
        self.batch = max(checkpoint, int(rows[0][0] or 0) if rows else 0)
        suspects = await self.store.query(
            "SELECT device, quantity, groupUniqArray(toUnixTimestamp64Milli(ts)) "
            f"FROM {table(self.database, COUNTER_READINGS)} "
            "WHERE site = {site:String} AND batch > {checkpoint:UInt64} GROUP BY device, quantity",
            {**site, "checkpoint": checkpoint},
        )
        if suspects:
            fixed = 0
            for device, quantity, times in suspects:
                fixed += await self.reconcile(str(device), str(quantity), [int(t) for t in times])
            log.warning(
                "recovered an interrupted batch: %d counters re-checked, %d hour rows corrected",
                len(suspects),
                fixed,
            )
            self.batch += 1
            await self._checkpoint()
        await self.load()
        self.needs_recovery = False

    async def load(self) -> None:
        """The last readings of every counter of the site (the in-memory window)."""
        window = self.book.window
        rows = await self.store.query(
            "SELECT device, quantity, groupArray((t, v, w)), count() FROM ("
            "SELECT device, quantity, toUnixTimestamp64Milli(ts) AS t, max(value_milli) AS v, "
            "argMax(wrap_milli, value_milli) AS w "
            f"FROM {table(self.database, COUNTER_READINGS)} WHERE site = {{site:String}} "
            f"GROUP BY device, quantity, t ORDER BY device, quantity, t DESC LIMIT {window + 1} BY device, quantity"
            ") GROUP BY device, quantity",
            {"site": self.site.site},
        )
        self.book = CounterBook(self.gap_ms)
        for device, quantity, readings, count in rows:
            ordered = sorted((int(t), int(v), int(w)) for t, v, w in readings)
            complete = int(count) <= window
            self.book.load((str(device), str(quantity)), ordered[-window:], complete)
        log.info("aggregator state loaded: %d counters, last batch %d", len(rows), self.batch)

    async def reconcile(self, device: str, quantity: str, times: Sequence[int]) -> int:
        """Make the stored hours touched by readings at ``times`` equal to what the stored readings give;
        returns the number of hour rows corrected. Times are grouped in clusters (a few queries each)."""
        key = {"site": self.site.site, "device": device, "quantity": quantity}
        counters = table(self.database, COUNTER_READINGS)
        where = "site = {site:String} AND device = {device:String} AND quantity = {quantity:String}"
        ordered = sorted(set(times))
        clusters: list[list[int]] = []
        for t in ordered:
            if clusters and t - clusters[-1][-1] <= RECONCILE_CLUSTER_MS:
                clusters[-1].append(t)
            else:
                clusters.append([t])
        hours: set[int] = set()
        for cluster in clusters:
            rows = await self.store.query(
                f"SELECT (SELECT maxOrNull(toUnixTimestamp64Milli(ts)) FROM {counters} WHERE {where} "
                "AND ts < fromUnixTimestamp64Milli({lo:Int64}, 'UTC')), "
                f"(SELECT minOrNull(toUnixTimestamp64Milli(ts)) FROM {counters} WHERE {where} "
                "AND ts > fromUnixTimestamp64Milli({hi:Int64}, 'UTC'))",
                {**key, "lo": cluster[0], "hi": cluster[-1]},
            )
            before, after = rows[0]
            lo = int(before) if before is not None else cluster[0]
            hi = int(after) if after is not None else cluster[-1]
            end = max(hi - 1, lo)
            hours.update(range(lo // HOUR_MS * HOUR_MS, end // HOUR_MS * HOUR_MS + 1, HOUR_MS))
        fixed = 0
        for first, last in _runs(sorted(hours)):
            fixed += await self._reconcile_hours(device, quantity, first, last)
        return fixed

    async def _reconcile_hours(self, device: str, quantity: str, first: int, last: int) -> int:
        """Reconcile the hours [first, last) (ms) of one counter."""
        key = {"site": self.site.site, "device": device, "quantity": quantity}
        counters = table(self.database, COUNTER_READINGS)
        where = "site = {site:String} AND device = {device:String} AND quantity = {quantity:String}"
        hours = set(range(first, last, HOUR_MS))
        # every interval overlapping [first, last): the readings inside plus one on each side
        rows = await self.store.query(
            "SELECT toUnixTimestamp64Milli(ts) AS t, max(value_milli), argMax(wrap_milli, value_milli) "
            f"FROM {counters} WHERE {where} AND ts >= fromUnixTimestamp64Milli(ifNull(("
            f"SELECT maxOrNull(toUnixTimestamp64Milli(ts)) FROM {counters} WHERE {where} "
            "AND ts < fromUnixTimestamp64Milli({first:Int64}, 'UTC')), {first:Int64}), 'UTC') "
            "AND ts <= fromUnixTimestamp64Milli(ifNull(("
            f"SELECT minOrNull(toUnixTimestamp64Milli(ts)) FROM {counters} WHERE {where} "
            "AND ts >= fromUnixTimestamp64Milli({last:Int64}, 'UTC')), {last:Int64}), 'UTC') "
            "GROUP BY t",
            {**key, "first": first, "last": last},
        )
        computed = hour_totals(((int(t), int(v), int(w)) for t, v, w in rows), self.gap_ms)
        stored_rows = await self.store.query(
            "SELECT toUnixTimestamp(hour), sum(value_milli), sum(estimated_milli) "
            f"FROM {table(self.database, HOURLY)} WHERE {where} "
            "AND hour >= toDateTime({a:Int64}, 'UTC') AND hour < toDateTime({b:Int64}, 'UTC') GROUP BY hour",
            {**key, "a": first // 1000, "b": last // 1000},
        )
        stored = {int(h) * 1000: (int(v), int(e)) for h, v, e in stored_rows}
        fixes: dict[tuple[str, str, int], list[int]] = {}
        for hour in hours:
            want = computed.get(hour, [0, 0])
            have = stored.get(hour, (0, 0))
            if want[0] != have[0] or want[1] != have[1]:
                fixes[(device, quantity, hour)] = [want[0] - have[0], want[1] - have[1]]
        await self._insert_hours(fixes)
        return len(fixes)

    # --- batches -----------------------------------------------------------------------------------

    def _wrap(self, device: str, quantity: str) -> int:
        key = (device, quantity)
        wrap = self._wraps.get(key)
        if wrap is None:
            wrap = self._wraps[key] = round(
                wrap_of(self._devices.get(device), quantity, self.profiles) * MILLI
            )
        return wrap

    def plan(self, readings: Sequence[ReadingTaken]) -> Plan:
        """Apply a batch to the book (in place) and return everything it writes."""
        return self.plan_columns(ReadingColumns.from_readings(readings))

    def plan_columns(self, cols: ReadingColumns) -> Plan:
        """``plan`` of readings in columns (``columns.ReadingColumns``, message order). Each counter's readings
        are taken in message order: when they only extend its book (newer readings: the usual case) their
        intervals are computed for the whole batch at once, with the same integer rules
        (``intervals.interval_delta``, ``split_hours``); otherwise they go one by one through
        ``CounterBook.apply`` (late, duplicate, older than the window)."""
        plan = Plan(batch=self.batch + 1)
        site = self.site.site
        values = len(cols.value)
        take = pa.array(cols.parent)
        plan.raw = pa.table(
            {
                "site": _repeat(site, values),
                "device": cols.device.take(take),
                "quantity": cols.quantity,
                "ts": _timestamps(cols.ts_us[cols.parent]),
                "value": pa.array(cols.value, pa.float64()),
                "profile": cols.profile.take(take),
                "event_id": cols.event_id.take(take),
            }
        )
        names = cols.device.dictionary_encode()
        device_names: list[str] = names.dictionary.to_pylist()
        device_code = names.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        reading, quantity, value = self._counter_rows(cols, device_names, device_code)
        finite = np.isfinite(value)
        if not finite.all():
            for i in np.flatnonzero(~finite).tolist():
                _count(plan.outcomes, "invalid")
                log.warning(
                    "counter %s of %s is not a number (%r): ignored",
                    quantity[i].as_py(),
                    device_names[device_code[reading[i]]],
                    float(value[i]),
                )
            keep = np.flatnonzero(finite)
            reading, quantity, value = reading[keep], quantity.take(pa.array(keep)), value[keep]
        scaled = value * float(MILLI)
        if len(scaled) and not bool(np.all(np.abs(scaled) < 2.0**63)):
            i = int(np.argmax(~(np.abs(scaled) < 2.0**63)))
            raise ValueError(
                f"counter {quantity[i].as_py()} of {device_names[device_code[reading[i]]]} is out of range "
                f"({float(value[i])!r})"
            )
        milli = np.rint(scaled).astype(np.int64)  # round() of the float: half to even, like Python's
        ms = (cols.ts_us / 1e6 * 1000.0).astype(np.int64)  # int(ts.timestamp() * 1000), to the bit
        kept, wraps = self._apply_counters(
            plan, device_names, device_code, reading, quantity, milli, ms, cols
        )
        rows = np.flatnonzero(kept)
        at = reading[rows]
        plan.counters = pa.table(
            {
                "site": _repeat(site, len(rows)),
                "device": cols.device.take(pa.array(at)),
                "quantity": quantity.take(pa.array(rows)),
                "ts": _timestamps(cols.ts_us[at]),
                "value_milli": pa.array(milli[rows], pa.int64()),
                "wrap_milli": pa.array(wraps[rows], pa.int64()),
                "batch": pa.array(np.full(len(rows), plan.batch, dtype=np.uint64), pa.uint64()),
            }
        )
        return plan

    def _counter_rows(
        self, cols: ReadingColumns, device_names: list[str], device_code: Any
    ) -> tuple[Any, Any, Any]:
        """(reading, quantity, value) of every counter of the batch, in message order (``counter_values``)."""
        is_counter = pc.is_in(cols.quantity, value_set=COUNTER_SET).to_numpy(zero_copy_only=False)
        weighted = np.array(
            [
                (d := self._devices.get(name)) is not None and d.pulse_weight is not None
                for name in device_names
            ],
            dtype=bool,
        )
        pulse = weighted[device_code] if len(device_code) else np.zeros(0, dtype=bool)
        plain = (
            np.flatnonzero(is_counter & ~pulse[cols.parent]) if len(cols.parent) else np.zeros(0, np.int64)
        )
        reading = cols.parent[plain]
        quantity = cols.quantity.take(pa.array(plain))
        value = cols.value[plain]
        if not pulse.any():
            return reading, quantity, value
        # pulse meters: pulse_count x weight (Python, per reading; a few meters of a site)
        extra_r: list[int] = []
        extra_q: list[str] = []
        extra_v: list[float] = []
        names, values = cols.quantity.to_pylist(), cols.value.tolist()
        by_reading: dict[int, dict[str, float]] = {}
        for k in np.flatnonzero(pulse[cols.parent]).tolist():
            by_reading.setdefault(int(cols.parent[k]), {})[names[k]] = values[k]
        for i in np.flatnonzero(pulse).tolist():
            name = device_names[device_code[i]]
            for q, v in counters_of(name, by_reading.get(i, {}), self.site, self._devices.get(name)).items():
                extra_r.append(i)
                extra_q.append(q)
                extra_v.append(v)
        reading = np.concatenate([reading, np.array(extra_r, dtype=np.int64)])
        quantity = pa.concat_arrays([quantity, pa.array(extra_q, pa.string())])
        value = np.concatenate([value, np.array(extra_v, dtype=np.float64)])
        order = np.argsort(reading, kind="stable")
        return reading[order], quantity.take(pa.array(order)), value[order]

    def _apply_counters(
        self,
        plan: Plan,
        device_names: list[str],
        device_code: Any,
        reading: Any,
        quantity: Any,
        milli: Any,
        ms: Any,
        cols: ReadingColumns,
    ) -> tuple[Any, Any]:
        """Apply the counter rows to the book; returns (rows to store: not duplicates, wrap of each row)."""
        rows = len(reading)
        kept = np.ones(rows, dtype=bool)
        if not rows:
            return kept, np.zeros(0, dtype=np.int64)
        book, hours, outcomes = self.book, plan.hours, plan.outcomes
        encoded = quantity.dictionary_encode()
        quantity_names: list[str] = encoded.dictionary.to_pylist()
        nq = len(quantity_names)
        key = device_code[reading] * nq + encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        unique, group = np.unique(key, return_inverse=True)
        keys = [(device_names[k // nq], quantity_names[k % nq]) for k in unique.tolist()]
        wrap_of_group = np.array([self._wrap(d, q) for d, q in keys], dtype=np.int64)
        wraps = wrap_of_group[group]
        ts = ms[reading]
        order = np.argsort(group, kind="stable")  # each counter's rows, in message order
        g, t, v = group[order], ts[order], milli[order]
        first = np.ones(rows, dtype=bool)
        first[1:] = g[1:] != g[:-1]
        starts = np.flatnonzero(first)
        ends = np.append(starts[1:], rows)
        counters = [book.counters.get(k) for k in keys]
        last_ts = np.array([c.ts[-1] if c is not None and c.ts else 0 for c in counters], dtype=np.int64)
        last_value = np.array(
            [c.values[-1] if c is not None and c.ts else 0 for c in counters], dtype=np.int64
        )
        has_last = np.array([c is not None and bool(c.ts) for c in counters], dtype=bool)
        # a counter is appended in bulk when its readings are newer than its book and strictly increasing
        slow = np.zeros(len(keys), dtype=bool)
        back = (t[1:] <= t[:-1]) & ~first[1:]
        slow[g[1:][back]] = True
        slow |= has_last & (t[starts] <= last_ts)
        if np.abs(v).max() >= SAFE_MILLI or np.abs(last_value).max(initial=0) >= SAFE_MILLI:
            slow[:] = True
        for k in np.flatnonzero(slow).tolist():
            device, name = keys[k]
            wrap = int(wrap_of_group[k])
            for i in order[starts[k] : ends[k]].tolist():
                at = int(ts[i])
                outcome = book.apply(device, name, at, int(milli[i]), wrap, hours)
                _count(outcomes, outcome)
                if outcome is Outcome.DUPLICATE:
                    kept[i] = False
                elif outcome is Outcome.OLD:
                    plan.old.append((device, name, at))
                elif outcome is Outcome.RESET:
                    self._reset(device, name, cols.ts_us[reading[i]])
        fast = ~slow[g]
        if fast.any():
            self._append(
                plan, keys, counters, slow, starts, ends, first, g, t, v, fast, wrap_of_group, has_last,
                last_ts, last_value, order, reading, cols,
            )  # fmt: skip
        return kept, wraps

    def _append(
        self,
        plan: Plan,
        keys: list[tuple[str, str]],
        counters: list[Counter | None],
        slow: Any,
        starts: Any,
        ends: Any,
        first: Any,
        g: Any,
        t: Any,
        v: Any,
        fast: Any,
        wrap_of_group: Any,
        has_last: Any,
        last_ts: Any,
        last_value: Any,
        order: Any,
        reading: Any,
        cols: ReadingColumns,
    ) -> None:
        """The counters whose readings all extend their book: intervals and hour pieces of the whole batch
        at once (the same integer arithmetic as ``CounterBook.apply``), then the book's lists extended."""
        outcomes = plan.outcomes
        at = np.flatnonzero(fast)
        group = g[at]
        start = first[at]
        prev_ts = np.where(start, last_ts[group], t[np.maximum(at - 1, 0)])
        prev_value = np.where(start, last_value[group], v[np.maximum(at - 1, 0)])
        has_prev = ~start | has_last[group]
        _count(outcomes, Outcome.BASELINE, int((~has_prev).sum()))
        at, group, prev_ts, prev_value = (
            at[has_prev],
            group[has_prev],
            prev_ts[has_prev],
            prev_value[has_prev],
        )
        now, value, wrap = t[at], v[at], wrap_of_group[group]
        delta = value - prev_value
        rollover = (delta < 0) & (wrap > 0) & (delta + wrap <= wrap // WRAP_FRACTION)
        reset = (delta < 0) & ~rollover
        amount = np.where(delta >= 0, delta, np.where(rollover, delta + wrap, 0))
        _count(outcomes, Outcome.INTERVAL, int((delta >= 0).sum()))
        _count(outcomes, Outcome.ROLLOVER, int(rollover.sum()))
        _count(outcomes, Outcome.RESET, int(reset.sum()))
        for i in np.flatnonzero(reset).tolist():
            device, name = keys[group[i]]
            self._reset(device, name, cols.ts_us[reading[order[at[i]]]])
        counted = amount != 0
        a, b, amount, group = prev_ts[counted], now[counted], amount[counted], group[counted]
        estimated = (b - a) > self.gap_ms
        first_hour, last_hour = a // HOUR_MS, (b - 1) // HOUR_MS
        single = first_hour == last_hour
        piece_group = [group[single]]
        piece_hour = [first_hour[single] * HOUR_MS]
        piece_value = [amount[single]]
        piece_estimated = [estimated[single]]
        if not single.all():  # intervals over several hours: pro rata, cumulative floor (Python integers)
            spread = np.flatnonzero(~single)
            extra_g, extra_h, extra_v, extra_e = [], [], [], []
            for i, x, y, z, e in zip(
                group[spread].tolist(),
                a[spread].tolist(),
                b[spread].tolist(),
                amount[spread].tolist(),
                estimated[spread].tolist(),
                strict=True,
            ):
                for hour, piece in split_hours(x, y, z):
                    extra_g.append(i)
                    extra_h.append(hour)
                    extra_v.append(piece)
                    extra_e.append(e)
            piece_group.append(np.array(extra_g, dtype=np.int64))
            piece_hour.append(np.array(extra_h, dtype=np.int64))
            piece_value.append(np.array(extra_v, dtype=np.int64))
            piece_estimated.append(np.array(extra_e, dtype=bool))
        pg, ph = np.concatenate(piece_group), np.concatenate(piece_hour)
        pv = np.concatenate(piece_value)
        pe = np.where(np.concatenate(piece_estimated), pv, 0)
        if len(pg):
            by = np.lexsort((ph, pg))
            pg, ph, pv, pe = pg[by], ph[by], pv[by], pe[by]
            cut = np.flatnonzero(np.r_[True, (pg[1:] != pg[:-1]) | (ph[1:] != ph[:-1])])
            sums_v, sums_e = np.add.reduceat(pv, cut), np.add.reduceat(pe, cut)
            hours = plan.hours
            for k, hour, dv, de in zip(
                pg[cut].tolist(), ph[cut].tolist(), sums_v.tolist(), sums_e.tolist(), strict=True
            ):
                device, name = keys[k]
                acc = hours.get((device, name, hour))
                if acc is None:
                    hours[(device, name, hour)] = [dv, de]
                else:
                    acc[0] += dv
                    acc[1] += de
        # the book: each counter's readings appended, trimmed like CounterBook.apply does one by one
        book, window = self.book, self.book.window
        for k in np.flatnonzero(~slow).tolist():
            c = counters[k]
            if c is None:
                c = book.counters[keys[k]] = Counter()
            lo, hi = int(starts[k]), int(ends[k])
            c.ts += t[lo:hi].tolist()
            c.values += v[lo:hi].tolist()
            c.wraps += [int(wrap_of_group[k])] * (hi - lo)
            length, trimmed = _window_after(len(c.ts) - (hi - lo), hi - lo, window)
            if length < len(c.ts):
                del c.ts[:-length], c.values[:-length], c.wraps[:-length]
            if trimmed:
                c.complete = False

    def _reset(self, device: str, quantity: str, ts_us: Any) -> None:
        log.warning(
            "counter %s of %s went down at %s (reset or replaced meter): counted 0, continuing",
            quantity,
            device,
            from_micros(int(ts_us)).isoformat(),
        )

    def _day(self, hour_ms: int) -> date:
        day = self._days.get(hour_ms)
        if day is None:
            if len(self._days) > 100_000:
                self._days.clear()
            day = self._days[hour_ms] = _dt(hour_ms).astimezone(self.site.tz).date()
        return day

    def hour_rows(self, hours: Mapping[tuple[str, str, int], list[int]]) -> list[list[Any]]:
        """Column-oriented rows of hour corrections (zero corrections left out)."""
        site = self.site.site
        cols: list[list[Any]] = [[] for _ in HOUR_COLUMNS]
        for (device, quantity, hour), (value, estimated) in hours.items():
            if not value and not estimated:
                continue
            cols[0].append(site)
            cols[1].append(device)
            cols[2].append(quantity)
            cols[3].append(_dt(hour))
            cols[4].append(self._day(hour))
            cols[5].append(value)
            cols[6].append(estimated)
            cols[7].append(value / MILLI * self.prices.per_unit(quantity, hour // 1000))
        return cols

    async def _insert_hours(self, hours: Mapping[tuple[str, str, int], list[int]]) -> None:
        cols = self.hour_rows(hours)
        if cols[0]:
            await self.store.insert(table(self.database, HOURLY), cols, HOUR_COLUMNS, column_oriented=True)

    async def _checkpoint(self) -> None:
        await self.store.insert(
            table(self.database, CHECKPOINTS),
            [(self.site.site, self.batch, datetime.now(UTC))],
            ["site", "batch", "at"],
        )

    async def store_batch(self, readings: Sequence[ReadingTaken]) -> Plan:
        """Write a batch (see the module docstring for the order); raises if a write fails, after which
        the next call first recovers from the store."""
        return await self.store_columns(ReadingColumns.from_readings(readings))

    async def store_columns(self, cols: ReadingColumns) -> Plan:
        """``store_batch`` of readings in columns."""
        if self.needs_recovery:
            await self.recover()
        self.needs_recovery = True  # until the checkpoint is written
        plan = self.plan_columns(cols)
        assert plan.raw is not None and plan.counters is not None
        if plan.raw.num_rows:
            await self.store.insert_table(table(self.database, READINGS), plan.raw)
        if plan.counters.num_rows:
            await self.store.insert_table(table(self.database, COUNTER_READINGS), plan.counters)
            self.batch = plan.batch
            await self._insert_hours(plan.hours)
            old: dict[tuple[str, str], list[int]] = {}
            for device, quantity, ms in plan.old:
                old.setdefault((device, quantity), []).append(ms)
            for (device, quantity), times in old.items():
                await self.reconcile(device, quantity, times)
            await self._checkpoint()
        self.needs_recovery = False
        return plan
