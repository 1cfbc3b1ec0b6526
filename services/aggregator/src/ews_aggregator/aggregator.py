"""Readings -> ClickHouse: raw values, hourly consumption and cost, counter state (see ews_analytics).

``Aggregator.store_batch`` is transactional towards its in-memory book: the batch is computed on a
copy, written (hour rows first, then raw readings, then counter state), and only then does the copy
become the book; a failed write leaves the book as it was so a retry recomputes the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ews_analytics import COUNTER_STATE, ENERGY_HOURLY, READINGS, cost_of, migrate, table
from ews_analytics.costs import MEDIUM_QUANTITY
from ews_contracts.events import ReadingTaken
from ews_contracts.quantities import COUNTERS, Quantity
from ews_contracts.site import Site
from ews_contracts.store import Store

from .intervals import CounterBook, CounterReading, HourRow, Outcome

log = logging.getLogger("ews.aggregator")

COUNTER_NAMES: frozenset[str] = frozenset(str(q) for q in COUNTERS)
HOUR_COLUMNS = ["site", "device", "quantity", "hour", "value", "cost", "last_end"]
READING_COLUMNS = ["site", "device", "quantity", "ts", "value", "profile", "event_id"]
STATE_COLUMNS = ["site", "device", "quantity", "ts", "value"]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def counter_values(reading: ReadingTaken, site: Site) -> dict[str, float]:
    """The cumulative counters of a reading; a pulse meter's ``pulse_count`` × pulse weight gives its
    medium's counter (Wh or dm³) when the reading does not carry it already."""
    values = {q: v for q, v in reading.values.items() if q in COUNTER_NAMES}
    device = site.device(reading.device)
    pulses = reading.values.get(Quantity.PULSE_COUNT)
    if device is not None and device.pulse_weight is not None and device.medium and pulses is not None:
        values.setdefault(str(MEDIUM_QUANTITY[device.medium]), pulses * device.pulse_weight)
    return values


@dataclass
class Plan:
    book: CounterBook
    hours: dict[tuple, HourRow] = field(default_factory=dict)
    raw: list[tuple] = field(default_factory=list)
    state: dict[tuple[str, str], CounterReading] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)


class Aggregator:
    def __init__(self, store: Store, database: str, site: Site) -> None:
        self.store = store
        self.database = database
        self.site = site
        self.book = CounterBook()

    async def start(self) -> None:
        """Migrate the schema, then load the counter state and open hour rows (a restart continues exactly)."""
        await migrate(self.store, self.database)
        await self.load()

    async def load(self) -> None:
        params = {"site": self.site.site}
        counters = {
            (r[0], r[1]): CounterReading(_utc(r[2]), float(r[3]))
            for r in await self.store.query(
                f"SELECT device, quantity, ts, value FROM {table(self.database, COUNTER_STATE)} FINAL "
                "WHERE site = {site:String}",
                params,
            )
        }
        hours = {
            (r[0], r[1]): HourRow(r[0], r[1], _utc(r[2]), float(r[3]), _utc(r[4]))
            for r in await self.store.query(
                "SELECT device, quantity, max(hour), argMax(value, (hour, last_end)), "
                f"argMax(last_end, (hour, last_end)) FROM {table(self.database, ENERGY_HOURLY)} "
                "WHERE site = {site:String} GROUP BY device, quantity",
                params,
            )
        }
        self.book = CounterBook(counters, hours)
        log.info("aggregator state loaded: %d counters, %d open hours", len(counters), len(hours))

    def plan(self, readings: Sequence[ReadingTaken]) -> Plan:
        """Everything a batch writes, computed on a copy of the book (pure)."""
        plan = Plan(book=self.book.copy())
        for reading in readings:  # stream order: a replay gives the same rows whatever the batch sizes
            for quantity, value in reading.values.items():
                plan.raw.append(
                    (
                        reading.site,
                        reading.device,
                        quantity,
                        reading.occurred_at,
                        value,
                        reading.profile,
                        reading.event_id,
                    )
                )
            for quantity, value in counter_values(reading, self.site).items():
                step = plan.book.apply(reading.device, quantity, reading.occurred_at, value, plan.hours)
                plan.outcomes[step.outcome] = plan.outcomes.get(step.outcome, 0) + 1
                if step.outcome is Outcome.RESET:
                    log.warning(
                        "counter %s of %s went down by %g at %s (reset or replaced meter): counted 0, continuing",
                        quantity,
                        reading.device,
                        -step.delta,
                        reading.occurred_at.isoformat(),
                    )
                elif step.outcome is Outcome.INVALID:
                    log.warning(
                        "counter %s of %s is not a number (%r): ignored", quantity, reading.device, value
                    )
                if step.outcome not in (Outcome.STALE, Outcome.INVALID):
                    plan.state[(reading.device, quantity)] = plan.book.counters[(reading.device, quantity)]
        return plan

    def hour_rows(self, plan: Plan) -> list[tuple[Any, ...]]:
        rows = []
        for row in plan.hours.values():
            tariff = self.site.tariff_on(row.hour.astimezone(self.site.tz).date())
            cost = cost_of(row.quantity, row.value, tariff)
            rows.append((self.site.site, row.device, row.quantity, row.hour, row.value, cost, row.last_end))
        return rows

    async def store_batch(self, readings: Sequence[ReadingTaken]) -> Plan:
        plan = self.plan(readings)
        await self.store.insert(table(self.database, ENERGY_HOURLY), self.hour_rows(plan), HOUR_COLUMNS)
        await self.store.insert(table(self.database, READINGS), plan.raw, READING_COLUMNS)
        state = [(self.site.site, d, q, c.ts, c.value) for (d, q), c in plan.state.items()]
        await self.store.insert(table(self.database, COUNTER_STATE), state, STATE_COLUMNS)
        self.book = plan.book
        return plan
