"""The poller's pipelined publisher against a real nats-server: every event stored once, in order, through
a NATS restart and a stream deleted under it; the outbox bound while NATS is away."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from datetime import UTC, datetime, timedelta

import nats
import pytest
from ews_contracts.events import POLLER, PRODUCER_HEADER, DeviceStatusChanged, ReadingTaken
from ews_contracts.profiles import load_profiles
from ews_contracts.settings import BUNDLED_DEMO_SITE, Settings
from ews_contracts.site import load_site
from ews_poller import publish, service
from ews_poller.service import Poller
from ews_runtime.servers import NatsServer, free_port

pytestmark = pytest.mark.integration

SITE = load_site(BUNDLED_DEMO_SITE)
START = datetime(2026, 1, 1, tzinfo=UTC)
DEVICES = ["m1", "e2", "ev1"]


def reading(n: int) -> ReadingTaken:
    device = DEVICES[n % len(DEVICES)]
    at = START + timedelta(seconds=n // len(DEVICES))
    return ReadingTaken(
        event_id=ReadingTaken.id_for(SITE.site, device, at),
        site=SITE.site,
        occurred_at=at,
        device=device,
        profile="p",
        values={"energy_active_import": float(n)},
    )


def publisher_only(nats_url: str, tmp_path) -> Poller:
    """A poller whose only task is its publisher (no bus, no Redis)."""
    settings = Settings(NATS_URL=nats_url, EWS_DATA_DIR=str(tmp_path / "data"))
    poller = Poller(settings, site=SITE, profiles=load_profiles(), poll_interval=1.0)
    poller._workers = [asyncio.create_task(poller._publisher(), name="poller-publisher")]
    return poller


async def stored(nats_url: str) -> list[tuple[str, dict, bytes]]:
    """(Nats-Msg-Id, payload, its bytes) of every message of EWS_READINGS, in stream order."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("EWS_READINGS")
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg("EWS_READINGS", seq)
            out.append((msg.headers["Nats-Msg-Id"], json.loads(msg.data), msg.data))
        return out
    finally:
        await nc.close()


async def until(condition, seconds: float, what: str) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def check_once_in_order(messages: list[tuple[str, dict, bytes]], count: int) -> None:
    ids = [event_id for event_id, _, _ in messages]
    assert len(ids) == len(set(ids)), "an event stored twice"
    assert sorted(ids) == sorted(reading(n).event_id for n in range(count)), "an event missing"
    for device in DEVICES:
        times = [p["occurred_at"] for _, p, _ in messages if p["device"] == device]
        assert times == sorted(times), f"{device}: out of order"
    first = reading(0)
    assert messages[0][2] == first.model_dump_json().encode()  # the event's own JSON (the canonical form)


async def test_every_event_once_and_in_order_through_a_nats_restart(tmp_path, caplog):
    caplog.set_level(logging.INFO, "ews.poller")
    port = free_port()
    server = NatsServer(tmp_path / "js", port, log=tmp_path / "nats.log")
    server.start()
    poller = publisher_only(server.url, tmp_path)
    try:
        for n in range(600):  # a backlog, then a steady flow
            poller._outbox_put(reading(n))
        for n in range(600, 900):
            poller._outbox_put(reading(n))
            if n % 30 == 0:
                await asyncio.sleep(0.01)
        await until(lambda: poller.published >= 900, 20, "the first 900 events")
        os.kill(server.proc.pid, signal.SIGSTOP)  # a server that hangs, then dies: a batch unanswered
        for n in range(900, 1200):
            poller._outbox_put(reading(n))
        await until(lambda: any(e.token for e in poller._window), 5, "a batch in flight")
        server.proc.kill()
        server.proc.wait()  # NATS away: events keep queuing
        for n in range(1200, 1500):
            poller._outbox_put(reading(n))
            if n % 60 == 0:
                await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)
        assert poller.published < 1200
        server.start()  # back, with its data
        for n in range(1500, 1800):
            poller._outbox_put(reading(n))
        await until(lambda: poller.published >= 1800, 30, "every event once NATS is back")
        assert not poller._window and poller._outbox.empty()
        check_once_in_order(await stored(server.url), 1800)
    finally:
        await poller.stop()
        server.stop()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("nats:")]
    assert lines[0].startswith("nats: publishing failed, will retry: ")
    assert lines[-1].startswith("nats: publishing again")
    assert len(lines) <= 6, lines  # a line when it starts and when it ends, not one per event


async def test_a_stream_deleted_under_the_poller_is_created_again(nats_url, tmp_path):
    poller = publisher_only(nats_url, tmp_path)
    try:
        for n in range(300):
            poller._outbox_put(reading(n))
        await until(lambda: poller.published >= 300, 20, "the first 300 events")
        nc = await nats.connect(nats_url)
        await nc.jetstream().delete_stream("EWS_READINGS")  # JetStream now answers 503 no responders
        await nc.close()
        for n in range(300, 700):
            poller._outbox_put(reading(n))
            if n % 50 == 0:
                await asyncio.sleep(0.01)
        await until(lambda: poller.published >= 700, 30, "every event in the new stream")
        messages = await stored(nats_url)
        assert [m[0] for m in messages] == [reading(n).event_id for n in range(300, 700)]  # in order, once
    finally:
        await poller.stop()


async def test_the_outbox_stays_bounded_while_nats_is_away(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(service, "OUTBOX_LIMIT", 100)
    poller = publisher_only(f"nats://127.0.0.1:{free_port()}", tmp_path)  # nobody there
    try:
        for n in range(250):
            poller._outbox_put(reading(n))
        await asyncio.sleep(0.3)
        assert poller._outbox.qsize() + len(poller._window) <= 100 + service.PUBLISH_WINDOW
        assert poller._outbox.qsize() <= 100
        assert poller._dropped >= 150 - len(poller._window)
        assert poller.published == 0
    finally:
        await poller.stop()
    assert any("outbox full" in r.getMessage() for r in caplog.records)


async def test_acknowledgements_lost_the_events_sent_again_are_stored_once(nats_url, tmp_path, monkeypatch):
    """JetStream stored a batch but some acknowledgements never came: sent again (same Nats-Msg-Id), the
    copies are dropped by JetStream and every event counts once."""
    monkeypatch.setattr(publish, "ACK_TIMEOUT", 0.5)
    answer = publish.AckInbox._on_answer
    lost: list[str] = []

    async def lossy(self, msg) -> None:
        token = msg.subject[len(self.prefix) :]
        if int(token) <= 150:  # the answers to the first 150 sends
            lost.append(token)
            return
        await answer(self, msg)

    monkeypatch.setattr(publish.AckInbox, "_on_answer", lossy)
    poller = publisher_only(nats_url, tmp_path)
    try:
        for n in range(400):  # one batch
            poller._outbox_put(reading(n))
        await until(lambda: poller.published >= 400, 20, "every event")
        assert len(lost) == 150 and poller.published == 400
        check_once_in_order(await stored(nats_url), 400)
    finally:
        await poller.stop()


async def test_headers_of_readings_and_statuses(nats_url, tmp_path):
    poller = publisher_only(nats_url, tmp_path)
    status = DeviceStatusChanged(site=SITE.site, occurred_at=START, device="m1", state="on")
    try:
        poller._outbox_put(reading(0))
        poller._outbox_put(status)
        await until(lambda: poller.published >= 2, 10, "both events")
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        first, second = [await js.get_msg("EWS_READINGS", seq) for seq in (1, 2)]
        await nc.close()
    finally:
        await poller.stop()
    assert first.subject == f"ews.{SITE.site}.reading.m1"
    assert first.headers["Nats-Msg-Id"] == reading(0).event_id
    assert second.subject == f"ews.{SITE.site}.status.m1"
    assert second.headers["Nats-Msg-Id"] == status.event_id
    assert second.headers[PRODUCER_HEADER] == POLLER  # the aggregator dead-letters a status without it
    assert second.data == status.model_dump_json().encode()
