"""Aggregator.plan / hour_rows (pure), rollover ranges from profiles, prices, and the batch handler."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from ews_aggregator.aggregator import Aggregator, counter_values, wrap_of
from ews_contracts.events import ReadingTaken
from ews_contracts.profiles import load_profiles
from ews_contracts.settings import BUNDLED_DEMO_SITE
from ews_contracts.site import Site


@pytest.fixture(scope="module")
def site() -> Site:
    data = yaml.safe_load(BUNDLED_DEMO_SITE.read_text())
    data["tariffs"].append(
        {
            "effective_from": "2026-06-01",
            "electricity_per_kwh": 0.5,
            "water_per_m3": 5.0,
            "time_of_use": [
                {"name": "off-peak", "start": "22:00", "end": "06:00", "electricity_per_kwh": 0.1}
            ],
        }
    )
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


def test_rollover_range_comes_from_the_profile(site: Site):
    profiles = load_profiles()
    # energy-meter-rs485-3ph: Ea+ is a uint32 of 10 Wh
    assert wrap_of(site.device("e2"), "energy_active_import", profiles) == 2**32 * 10
    # pulse meter: uint32 pulse count x 10 dm³ per pulse
    assert wrap_of(site.device("water"), "water_volume", profiles) == 2**32 * 10
    assert wrap_of(None, "energy_active_import", profiles) == 0
    assert wrap_of(site.device("e2"), "energy_active_import", {}) == 0  # unknown profile: no rollover
    # a 64-bit counter never wraps (and 2**64 x scale in milli-units would not fit the Int64 column)
    e2 = profiles["energy-meter-rs485-3ph"]
    wide = e2.model_copy(
        update={
            "registers": [
                r.model_copy(update={"type": "uint64"}) if str(r.quantity) == "energy_active_import" else r
                for r in e2.registers
            ]
        }
    )
    assert wrap_of(site.device("e2"), "energy_active_import", {**profiles, e2.id: wide}) == 0


def test_plan_and_costs_use_the_tariff_and_time_of_use_of_the_local_hour(site: Site):
    agg = Aggregator(store=None, database="x", site=site)  # type: ignore[arg-type]
    start = datetime(2026, 5, 31, 21, tzinfo=UTC)  # 23:00 in Paris, May 31st
    plan = agg.plan(
        [
            reading("e2", start, energy_active_import=0.0, power_active=1.0),
            reading("water", start, pulse_count=0.0),
        ]
        + [
            reading("e2", start + timedelta(minutes=10 * i), energy_active_import=100.0 * i)
            for i in range(1, 13)
        ]
        + [reading("water", start + timedelta(hours=2), pulse_count=200.0)]
    )
    rows = agg.hour_rows(plan.hours)
    by_hour = {(rows[1][n], rows[3][n].hour): n for n in range(len(rows[0]))}
    e21, e22 = by_hour[("e2", 21)], by_hour[("e2", 22)]
    assert (rows[5][e21], rows[7][e21]) == (600_000, pytest.approx(0.6 * 0.2516))  # old price, May 31st
    assert str(rows[4][e22]) == "2026-06-01"  # local day of 22:00 UTC
    assert (rows[5][e22], rows[7][e22]) == (600_000, pytest.approx(0.6 * 0.1))  # June 1st, 00:00: off-peak
    w22 = by_hour[("water", 22)]
    assert rows[5][w22] == 1_000_000 and rows[6][w22] == 1_000_000  # 2 h without a reading: estimated
    assert rows[7][w22] == pytest.approx(5.0)
    assert len(plan.raw[0]) == 2 + 1 + 12 + 1  # every value of every reading, counters or not
    assert len(plan.counters[0]) == 15
    assert plan.outcomes == {"baseline": 2, "interval": 13}


class FakeMsg:
    def __init__(self, data: bytes, subject: str = "ews.demo.reading.e2", seq: int = 1) -> None:
        self.data, self.subject, self.done, self.seq = data, subject, None, seq
        self.headers: dict[str, str] | None = None
        self.reply = f"$JS.ACK.EWS_READINGS.aggregator.1.{seq}.{seq}.1777777777000000000.0"

    async def ack(self):
        self.done = "ack"

    async def nak(self, delay=None):
        self.done = "nak"

    async def term(self):
        self.done = "term"

    async def in_progress(self):
        self.kept = getattr(self, "kept", 0) + 1


class FlakyAggregator:
    """Stands in for Aggregator in the handler: the first ``failures`` writes raise (ClickHouse down)."""

    def __init__(self, site: Site, failures: int) -> None:
        self.site, self.failures, self.stored = site, failures, []

    async def store_batch(self, readings):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("clickhouse: connection refused")
        self.stored.append(len(readings))

        class Plan:
            outcomes: dict = {}

        return Plan()


class FlakyJetStream:
    """Stands in for the JetStream context of the dead-letter publishes: the first ``failures`` fail."""

    def __init__(self, failures: int = 0) -> None:
        self.failures, self.published = failures, []

    async def publish(self, subject, data, stream=None, headers=None, **_):
        if self.failures:
            self.failures -= 1
            raise TimeoutError("nats: timeout")
        self.published.append((subject, json.loads(data), headers, stream))


def good_reading(site: Site, device: str, ts: datetime, value: float) -> ReadingTaken:
    return ReadingTaken(
        event_id=ReadingTaken.id_for("demo", device, ts),
        site="demo",
        device=device,
        profile=site.device(device).profile,
        occurred_at=ts,
        values={"energy_active_import": value},
    )


async def test_handle_batch_dead_letters_then_stores_then_acks_and_retries_what_fails(
    site: Site, monkeypatch
):
    from ews_aggregator import deadletter, service

    monkeypatch.setattr(service, "RETRY_DELAY", 0.0)
    monkeypatch.setattr(deadletter, "RETRY_DELAY", 0.0)
    t = datetime(2026, 5, 4, tzinfo=UTC)
    good = [
        FakeMsg(
            good_reading(site, "e2", t + timedelta(minutes=i), float(i)).model_dump_json().encode(), seq=i
        )
        for i in (1, 3)
    ]
    bad = FakeMsg(b"\xff not json", seq=2)
    other = FakeMsg(
        good_reading(site, "e2", t, 1.0).model_copy(update={"site": "x"}).model_dump_json().encode(), seq=4
    )

    # ClickHouse down for 10 attempts, JetStream for 2 dead-letter publishes: retried, never skipped
    js = FlakyJetStream(failures=2)
    gate = deadletter.Gate(js, site)
    down = FlakyAggregator(site, failures=10)
    await service.handle_batch(down, [good[0], bad, good[1], other], gate)  # type: ignore[arg-type]
    # AckPolicy.ALL: one ack of the batch's last message acks the batch, the rejected ones included
    assert [m.done for m in (*good, bad)] == [None, None, None] and other.done == "ack"
    assert (
        down.stored == [2] and good[1].kept == 10 + 1
    )  # kept in progress while NATS, then ClickHouse failed
    records = {
        r["stream_sequence"]: (subject, r, headers, stream) for subject, r, headers, stream in js.published
    }
    assert sorted(records) == [2, 4]
    subject, record, headers, stream = records[2]
    assert (subject, stream, headers["Nats-Msg-Id"]) == (
        "ews.demo.dead-letter.reading",
        "EWS_DEAD_LETTER",
        "demo.rejected.EWS_READINGS.2",
    )
    assert record["cause"] == "malformed" and record["payload_encoding"] == "base64"
    assert record["original_subject"] == "ews.demo.reading.e2" and record["original_size"] == 10
    assert records[4][1]["cause"] == "subject-mismatch" and "payload site 'x'" in records[4][1]["reason"]

    good = [FakeMsg(m.data, seq=m.seq) for m in good]
    flaky = FlakyAggregator(site, failures=1)
    await service.handle_batch(flaky, good, gate)  # type: ignore[arg-type]
    assert [m.done for m in good] == [None, "ack"] and flaky.stored == [2]

    # a batch of rejected messages only is acked once each is dead-lettered
    only_bad = [FakeMsg(b"{}", seq=9), FakeMsg(b"[]", seq=10)]
    await service.handle_batch(flaky, only_bad, gate)  # type: ignore[arg-type]
    assert [m.done for m in only_bad] == [None, "ack"] and len(js.published) == 4


class FakeClient:
    """Stands in for the aggregator's NATS connection in ``handle_frames``: records what is published."""

    def __init__(self) -> None:
        from ews_contracts.natsclient import FastHeaderClient

        self.published: list[tuple[str, bytes]] = []
        self._headers = FastHeaderClient()

    async def publish(self, subject, payload=b"", **_):
        self.published.append((subject, payload))

    async def _process_headers(self, headers):
        return await self._headers._process_headers(headers)

    def raw_msg(self, frames, i):
        from ews_contracts.natsclient import RawMsg

        return RawMsg(self, frames.subjects[i], frames.replies[i], frames.headers[i], frames.datas[i])


class FlakyColumnsAggregator(FlakyAggregator):
    async def store_columns(self, readings):
        return await self.store_batch(list(range(len(readings))))


def frames_of(messages: list[FakeMsg]):
    from ews_contracts.natsclient import Frames

    frames = Frames()
    for m in messages:
        frames.subjects.append(m.subject.encode())
        frames.replies.append(m.reply.encode())
        frames.headers.append(b"NATS/1.0\r\nNats-Msg-Id: x\r\n\r\n")
        frames.datas.append(m.data)
    return frames


async def test_handle_frames_takes_the_fast_path_dead_letters_skips_other_sites_and_acks_the_last(
    site: Site, monkeypatch
):
    from ews_aggregator import deadletter, service

    monkeypatch.setattr(service, "RETRY_DELAY", 0.0)
    monkeypatch.setattr(deadletter, "RETRY_DELAY", 0.0)
    t = datetime(2026, 5, 4, tzinfo=UTC)
    good = [
        FakeMsg(
            good_reading(site, "e2", t + timedelta(minutes=i), float(i)).model_dump_json().encode(), seq=i
        )
        for i in (1, 3, 5)
    ]
    bad = FakeMsg(b"\xff not json", seq=2)
    mismatch = FakeMsg(
        good_reading(site, "e2", t, 1.0).model_copy(update={"device": "m1"}).model_dump_json().encode(), seq=4
    )
    elsewhere = FakeMsg(b"{}", subject="ews.other.reading.e2", seq=6)
    js = FlakyJetStream(failures=1)
    gate = deadletter.Gate(js, site)
    client = FakeClient()
    down = FlakyColumnsAggregator(site, failures=2)
    chunks = [(frames_of([good[0], bad, good[1]]), None), (frames_of([mismatch, good[2], elsewhere]), None)]
    await service.handle_frames(down, chunks, gate, client)  # type: ignore[arg-type]
    assert down.stored == [3]  # one write for both chunks: the three good readings
    records = sorted(record["stream_sequence"] for _, record, _, _ in js.published)
    assert records == [2, 4]  # the other site's message is skipped, not dead-lettered
    acks = [s for s, payload in client.published if payload == b""]
    kept = [s for s, payload in client.published if payload == b"+WPI"]
    assert acks == [elsewhere.reply]  # AckPolicy.ALL: the last message of the last chunk, once
    assert len(kept) == 6 * (1 + 2)  # every message kept in progress while NATS, then ClickHouse, failed
