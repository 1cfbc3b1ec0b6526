"""Aggregator.plan / hour_rows (pure): pulse meters, raw rows, costs with the tariff of the local date."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import yaml
from ews_aggregator.aggregator import Aggregator, counter_values
from ews_contracts.events import ReadingTaken
from ews_contracts.settings import BUNDLED_DEMO_SITE
from ews_contracts.site import Site


@pytest.fixture(scope="module")
def site() -> Site:
    data = yaml.safe_load(BUNDLED_DEMO_SITE.read_text())
    data["tariffs"].append({"effective_from": "2026-06-01", "electricity_per_kwh": 0.5, "water_per_m3": 5.0})
    return Site.model_validate(data)


def reading(device: str, ts: datetime, **values: float) -> ReadingTaken:
    return ReadingTaken(site="demo", device=device, profile="p", occurred_at=ts, values=values)


def test_counter_values(site: Site):
    t = datetime(2026, 5, 1, tzinfo=UTC)
    assert counter_values(reading("water", t, pulse_count=12.0), site) == {"water_volume": 120.0}
    assert counter_values(reading("water", t, pulse_count=12.0, water_volume=7.0), site) == {
        "water_volume": 7.0
    }
    assert counter_values(
        reading("m1", t, energy_active_import=5.0, energy_active_export=1.0, power_active=3.0), site
    ) == {"energy_active_import": 5.0, "energy_active_export": 1.0}
    assert counter_values(reading("unknown", t, pulse_count=3.0), site) == {}


def test_costs_use_the_tariff_of_the_local_date(site: Site):
    agg = Aggregator(store=None, database="x", site=site)  # type: ignore[arg-type]
    start = datetime(2026, 5, 31, 21, tzinfo=UTC)  # 23:00 in Paris, May 31st
    plan = agg.plan(
        [
            reading("e2", start, energy_active_import=0.0, power_active=1.0),
            reading("e2", start + timedelta(hours=2), energy_active_import=2000.0),
            reading("water", start, pulse_count=0.0),
            reading("water", start + timedelta(hours=2), pulse_count=200.0),
        ]
    )
    rows = {(r[1], r[3].hour): r for r in agg.hour_rows(plan)}
    assert rows[("e2", 21)][4:6] == (1000.0, pytest.approx(0.2516))  # old price on May 31st
    assert rows[("e2", 22)][4:6] == (1000.0, pytest.approx(0.5))  # June 1st local: new price
    assert rows[("water", 22)][4:6] == (1000.0, pytest.approx(5.0))
    assert len(plan.raw) == 5  # every value of every reading, counters or not
    assert set(plan.state) == {("e2", "energy_active_import"), ("water", "water_volume")}
    assert agg.book.counters == {}  # the book only changes once the batch is stored


class FlakyStore:
    """Fake store: the first ``failures`` inserts raise (ClickHouse down)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.inserted: list[str] = []

    async def insert(self, table, rows, column_names) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("clickhouse: connection refused")
        self.inserted.append(table)


class FakeMsg:
    def __init__(self, data: bytes, subject: str = "ews.demo.reading.e2") -> None:
        self.data, self.subject, self.done = data, subject, None

    async def ack(self):
        self.done = "ack"

    async def nak(self, delay=None):
        self.done = "nak"

    async def term(self):
        self.done = "term"


async def test_handle_batch_acks_after_write_and_naks_when_storage_fails(site: Site, monkeypatch):
    from ews_aggregator import service

    monkeypatch.setattr(service, "RETRY_DELAY", 0.0)
    t = datetime(2026, 5, 4, tzinfo=UTC)
    good = [
        FakeMsg(
            reading("e2", t + timedelta(minutes=i), energy_active_import=float(i)).model_dump_json().encode()
        )
        for i in range(2)
    ]
    bad = FakeMsg(b"\xff not json")

    down = Aggregator(FlakyStore(failures=10), "x", site)  # type: ignore[arg-type]
    await service.handle_batch(down, [good[0], bad, good[1]])  # type: ignore[list-item]
    assert [m.done for m in good] == ["nak", "nak"] and bad.done == "term"
    assert down.book.counters == {}  # nothing half-applied: the redelivery recomputes the same rows

    flaky = Aggregator(FlakyStore(failures=1), "x", site)  # type: ignore[arg-type]
    await service.handle_batch(flaky, good)  # type: ignore[arg-type]
    assert [m.done for m in good] == ["ack", "ack"]
    assert flaky.book.counters[("e2", "energy_active_import")].value == 1.0
    assert flaky.store.inserted == ["x.energy_hourly", "x.readings", "x.counter_state"]
