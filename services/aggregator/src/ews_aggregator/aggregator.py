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
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from ews_analytics import CHECKPOINTS, COUNTER_READINGS, HOURLY, READINGS, PriceBook, migrate, table
from ews_analytics.costs import MEDIUM_QUANTITY
from ews_contracts.events import ReadingTaken
from ews_contracts.profiles import DATA_TYPES, integer_range
from ews_contracts.profiles import resolve as resolve_profile
from ews_contracts.quantities import COUNTERS, Quantity
from ews_contracts.site import Device, Site
from ews_contracts.store import Store

from .intervals import GAP_MS, HOUR_MS, CounterBook, Outcome, hour_totals

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
    values = {q: v for q, v in reading.values.items() if q in COUNTER_NAMES}
    device = device if device is not None else site.device(reading.device)
    pulses = reading.values.get(PULSE_COUNT)
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
    """Everything a batch writes."""

    batch: int
    hours: dict[tuple[str, str, int], list[int]] = field(default_factory=dict)
    raw: list[list[Any]] = field(default_factory=lambda: [[] for _ in READING_COLUMNS])  # columns
    counters: list[list[Any]] = field(default_factory=lambda: [[] for _ in COUNTER_COLUMNS])  # columns
    old: list[tuple[str, str, int]] = field(default_factory=list)  # (device, quantity, ts ms)
    outcomes: dict[str, int] = field(default_factory=dict)


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
        plan = Plan(batch=self.batch + 1)
        site, batch = self.site.site, plan.batch
        book, hours, outcomes = self.book, plan.hours, plan.outcomes
        r_site, r_device, r_quantity, r_ts, r_value, r_profile, r_event = plan.raw
        c_site, c_device, c_quantity, c_ts, c_value, c_wrap, c_batch = plan.counters
        counter_names, devices, interval = COUNTER_NAMES, self._devices, Outcome.INTERVAL
        for reading in readings:
            ts = reading.occurred_at
            device = reading.device
            values = reading.values
            k = len(values)
            r_site.extend([site] * k)
            r_device.extend([device] * k)
            r_quantity.extend(values)
            r_ts.extend([ts] * k)
            r_value.extend(values.values())
            r_profile.extend([reading.profile] * k)
            r_event.extend([reading.event_id] * k)
            ms = int(ts.timestamp() * 1000)
            dev = devices.get(device)
            if dev is not None and dev.pulse_weight is None:  # the usual meter: no pulse weighting
                counters = {q: v for q, v in values.items() if q in counter_names}
            else:
                counters = counter_values(reading, self.site, dev)
            for quantity, value in counters.items():
                if not math.isfinite(value):
                    outcomes["invalid"] = outcomes.get("invalid", 0) + 1
                    log.warning("counter %s of %s is not a number (%r): ignored", quantity, device, value)
                    continue
                milli = round(value * MILLI)
                wrap = self._wrap(device, quantity)
                outcome = book.apply(device, quantity, ms, milli, wrap, hours)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                if outcome is Outcome.DUPLICATE:
                    continue
                c_site.append(site)
                c_device.append(device)
                c_quantity.append(quantity)
                c_ts.append(ts)
                c_value.append(milli)
                c_wrap.append(wrap)
                c_batch.append(batch)
                if outcome is interval:
                    continue
                if outcome is Outcome.OLD:
                    plan.old.append((device, quantity, ms))
                elif outcome is Outcome.RESET:
                    log.warning(
                        "counter %s of %s went down at %s (reset or replaced meter): counted 0, continuing",
                        quantity,
                        device,
                        ts.isoformat(),
                    )
        return plan

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
        if self.needs_recovery:
            await self.recover()
        self.needs_recovery = True  # until the checkpoint is written
        plan = self.plan(readings)
        if plan.raw[0]:
            await self.store.insert(
                table(self.database, READINGS), plan.raw, READING_COLUMNS, column_oriented=True
            )
        if plan.counters[0]:
            await self.store.insert(
                table(self.database, COUNTER_READINGS), plan.counters, COUNTER_COLUMNS, column_oriented=True
            )
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
