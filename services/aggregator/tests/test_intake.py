"""Events from outside, on real nats-server + chDB with the aggregator service running: every malformed
message is dead-lettered with its reason and never stored, the consumer never stalls, and `ews replay` gives
the same consumption answers byte for byte (configuration changes included)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from contextlib import suppress
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import nats
import pytest
from ews_aggregator.replay import replay
from ews_aggregator.service import DURABLE, serve
from ews_contracts.bus import ensure_streams_with
from ews_contracts.events import DeviceStatusChanged, ReadingTaken
from ews_contracts.settings import Settings
from ews_contracts.site import Site
from ews_contracts.siteconfig import ConfigStore
from ews_contracts.store import get_store
from ews_contracts.streams import DEAD_LETTER, READINGS

from .answers import answers
from .conftest import SITE_FILE

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
SITE = "acct"
EA = "energy_active_import"
T0 = datetime(2026, 3, 27, 23, 0, tzinfo=UTC)  # 28 March 00:00 in Paris; the 29th has 23 hours
DAYS = [date(2026, 3, 28) + timedelta(days=k) for k in range(4)]
TODAY = date(2026, 4, 15)
RS485_3PH, RS485_1PH, PULSES = "energy-meter-rs485-3ph", "energy-meter-rs485-1ph", "pulse-concentrator-004687"

Message = tuple[str, bytes, dict[str, str]]


def event(device: str, at: datetime, profile: str = RS485_3PH, **values: float) -> ReadingTaken:
    return ReadingTaken(
        event_id=ReadingTaken.id_for(SITE, device, at),
        site=SITE,
        device=device,
        profile=profile,
        occurred_at=at,
        values=values,
    )


def message(e: ReadingTaken | DeviceStatusChanged) -> Message:
    return e.subject, e.model_dump_json().encode(), e.headers()


def good_readings(start: datetime, hours: int, profiles: dict[str, str] | None = None) -> list[Message]:
    """Quarter-hourly Ea+ of main, m1 and e2 and hourly pulse counts of water and gas, from ``start`` for
    ``hours`` (the end excluded: the next series starts there)."""
    profiles = profiles or {}
    out = []
    for q in range(4 * hours):
        at = start + timedelta(minutes=15 * q)
        base = (at - T0).total_seconds() / 900
        for k, device in enumerate(("m1", "e2")):
            out.append(
                message(
                    event(device, at, profiles.get(device, RS485_3PH), **{EA: 1000.0 + (40 + 7 * k) * base})
                )
            )
        out.append(message(event("main", at, **{EA: 90_000.0 + 130 * base, "power_active": 520.0})))
        if q % 4 == 0:
            out.append(message(event("water", at, PULSES, pulse_count=float(int(base * 0.75)))))
            out.append(message(event("gas", at, PULSES, pulse_count=float(int(base * 1.25)))))
    return out


def raw(subject: str, data: dict | bytes, msg_id: str | None = None) -> Message:
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    return subject, body, {"Nats-Msg-Id": msg_id} if msg_id else {}


def malformed(at: datetime) -> list[tuple[Message, str]]:
    """Eighteen messages from outside the contract rejects (the issue's list and more), with their cause."""
    good = event("m1", at, **{EA: 5.0}).model_dump(mode="json")

    def changed(**changes) -> dict:
        data = dict(good)
        for key, value in changes.items():
            if value is ...:
                data.pop(key)
            else:
                data[key] = value
        return data

    m1 = "ews.acct.reading.m1"
    status = DeviceStatusChanged(site=SITE, device="m1", state="off", previous="on", occurred_at=at)
    return [
        (raw(m1, b"{not json"), "malformed"),
        (raw(m1, b"[1, 2, 3]"), "malformed"),
        (raw(m1, changed(values={EA: "5.0"}), "x1"), "invalid-field"),
        (raw(m1, changed(schema_version=2), "x2"), "unsupported-schema-version"),
        (raw("ews.acct.reading.ghost", changed(device="ghost"), "x3"), "unknown-device"),
        (raw(m1, changed(device="e2"), "x4"), "subject-mismatch"),
        (raw(m1, changed(site="other"), "x5"), "subject-mismatch"),
        (raw(m1, changed(profile=PULSES), "x6"), "wrong-profile"),
        (raw(m1, changed(event_id=...)), "missing-field"),
        (raw(m1, changed(occurred_at=...), "x7"), "missing-field"),
        (raw(m1, changed(occurred_at="2026-03-28T12:00:00"), "x8"), "invalid-field"),
        (raw(m1, changed(values={"energy": 5.0}), "x9"), "unknown-quantity"),
        (raw(m1, changed(values={EA: True}), "x10"), "invalid-field"),
        (raw(m1, changed(extra="field"), "x11"), "invalid-field"),
        (
            raw(m1, changed(values={EA: 1e30}), "x14"),
            "invalid-field",
        ),  # beyond any register (and Int64 milli)
        (raw(m1, changed(values={EA: -2e15}), "x15"), "invalid-field"),
        (raw("ews.acct.reading.rest", changed(device="rest"), "x12"), "unknown-device"),  # a virtual device
        ((status.subject, status.model_dump_json().encode(), {"Nats-Msg-Id": "x13"}), "not-accepted"),
    ]


async def publish(js, messages: list[Message]) -> None:
    for i in range(0, len(messages), 500):
        await asyncio.gather(
            *(js.publish(s, d, stream=READINGS.name, headers=h or None) for s, d, h in messages[i : i + 500])
        )


async def consuming(js, within: float = 30.0) -> None:
    """Until the aggregator's durable consumer exists (the configuration was seeded before it)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with suppress(Exception):
            await js.consumer_info(READINGS.name, DURABLE)
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the aggregator did not start consuming")


async def drained(js, within: float = 60.0) -> None:
    """Until the aggregator acknowledged everything in the readings stream."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        last = (await js.stream_info(READINGS.name)).state.last_seq
        with suppress(Exception):
            info = await js.consumer_info(READINGS.name, DURABLE)
            if info.ack_floor.stream_seq == last and not info.num_ack_pending:
                return
        await asyncio.sleep(0.1)
    raise AssertionError("the aggregator did not drain the readings stream")


async def dead_letters(js) -> list[dict]:
    out = []
    for seq in range(1, (await js.stream_info(DEAD_LETTER.name)).state.last_seq + 1):
        msg = await js.get_msg(DEAD_LETTER.name, seq)
        out.append(
            {**json.loads(msg.data), "_subject": msg.subject, "_id": (msg.headers or {}).get("Nats-Msg-Id")}
        )
    return out


async def test_malformed_messages_are_dead_lettered_with_their_reason_never_stored_and_never_stall(
    acct_settings: Settings, caplog: pytest.LogCaptureFixture
):
    from tests.contract import problems

    settings = acct_settings
    caplog.set_level(logging.WARNING, logger="ews.aggregator")
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    await ensure_streams_with(js)
    task = asyncio.create_task(serve(settings))
    try:
        await consuming(js)
        before, after = good_readings(T0, 12), good_readings(T0 + timedelta(hours=12), 12)
        bad = malformed(T0 + timedelta(hours=12))
        await publish(js, before)
        await publish(js, [m for m, _ in bad] * 2)  # and each again: one record per message (its sequence)
        # another site's reading in this box's stream: the consumer delivers it (no filter), the service skips
        # it: neither stored nor dead-lettered
        other = event("m1", T0 + timedelta(hours=12), **{EA: 7.0}).model_copy(update={"site": "other"})
        await publish(js, [("ews.other.reading.m1", other.model_dump_json().encode(), {"Nats-Msg-Id": "o1"})])
        poller = DeviceStatusChanged(
            site=SITE, device="m1", state="comm-error", previous="on", occurred_at=T0
        )
        await publish(js, [message(poller), *after])
        await drained(js)
        records = await dead_letters(js)
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        await nc.close()

    assert len(records) == 2 * len(bad) - 15  # the 15 with a Nats-Msg-Id were dropped by JetStream's dedupe
    by_subject_and_payload = {(r["original_subject"], r["original_payload"]): r for r in records}
    for (subject, data, headers), cause in bad:
        record = by_subject_and_payload[(subject, data.decode())]
        assert record["cause"] == cause and record["reason"], (subject, data)
        assert headers.items() <= record["original_headers"].items() and record["rejected_by"] == "aggregator"
        assert record["_subject"] == f"ews.acct.dead-letter.{subject.split('.')[2]}"
        assert (
            record["_id"] == record["event_id"] == f"acct.rejected.EWS_READINGS.{record['stream_sequence']}"
        )
        assert (
            problems(
                record["_subject"], json.dumps({k: v for k, v in record.items() if k[0] != "_"}).encode()
            )
            == []
        )
    assert by_subject_and_payload[(bad[-1][0][0], bad[-1][0][1].decode())]["reason"] == (
        "status events are produced by the poller only"
    )
    assert (
        poller.subject,
        poller.model_dump_json(),
    ) not in by_subject_and_payload  # the poller's own: accepted

    # nothing of them stored; every good reading stored, before and after them
    store, db = get_store(settings.clickhouse_dsn), settings.clickhouse_database
    rows = await store.query(
        f"SELECT device, count() FROM {db}.readings FINAL GROUP BY device ORDER BY device"
    )
    stored = {device: n for device, n in rows}
    expected: dict[str, int] = {}
    for _, data, _ in before + after:
        reading = json.loads(data)
        expected[reading["device"]] = expected.get(reading["device"], 0) + len(reading["values"])
    assert stored == expected
    assert not await store.query(
        f"SELECT count() FROM {db}.readings WHERE event_id LIKE 'x%' OR device = 'ghost' HAVING count() > 0"
    )

    # one log line per cause, never one per message
    lines = [r.getMessage() for r in caplog.records if "rejected a message on" in r.getMessage()]
    assert sorted(line.split(" (")[1].split(")")[0] for line in lines) == sorted({c for _, c in bad})


async def test_replay_gives_the_same_answers_byte_for_byte(acct_settings: Settings, tmp_path: Path):
    """Good and bad messages, a device declared after some of its readings were sent, a meter given another
    profile: the live aggregator's answers, `ews replay`'s (CLI, its own chDB) and a replay in place agree."""
    settings = acct_settings
    site = settings.site
    document = site.model_dump(mode="json")
    ghost = {**document["devices"][1], "id": "ghost", "name": "Ghost", "address": 9}
    v2 = Site.model_validate({**document, "devices": [*document["devices"], ghost]})
    v3 = Site.model_validate(
        {
            **v2.model_dump(mode="json"),
            "devices": [
                {**d, "profile": RS485_1PH} if d["id"] == "e2" else d
                for d in v2.model_dump(mode="json")["devices"]
            ],
        }
    )

    def ghosts(start: datetime, n: int) -> list[Message]:
        return [
            message(event("ghost", start + timedelta(minutes=15 * k), **{EA: 500.0 + 25 * k}))
            for k in range(n)
        ]

    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    await ensure_streams_with(js)
    store, db = get_store(settings.clickhouse_dsn), settings.clickhouse_database
    task = asyncio.create_task(serve(settings))
    try:
        await consuming(js)  # version 1 (the site file) is stored: ghost is declared by version 2
        await publish(js, good_readings(T0, 30))
        await publish(js, [m for m, _ in malformed(T0 + timedelta(hours=3))])
        await publish(js, ghosts(T0, 20))  # before ghost is declared: rejected, and again on every replay
        await ConfigStore(js, SITE).put(v2, expected=None, changed_by="test", how="api")
        await publish(js, ghosts(T0 + timedelta(hours=6), 40))  # accepted once the version is in force
        # e2 with its next profile before that version: rejected; after it, both profiles are e2's
        await publish(js, good_readings(T0 + timedelta(hours=30), 6, {"e2": RS485_1PH}))
        await ConfigStore(js, SITE).put(v3, expected=None, changed_by="test", how="api")
        await publish(js, good_readings(T0 + timedelta(hours=36), 30, {"e2": RS485_1PH}))
        await publish(js, good_readings(T0 + timedelta(hours=66), 12))
        await drained(js)
        causes = [r["cause"] for r in await dead_letters(js)]
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        await nc.close()
    assert causes.count("unknown-device") == 20 + 2 and causes.count("wrong-profile") == 1 + 24
    live = await answers(store, db, v3, TODAY, DAYS)
    assert json.loads(live["device:ghost summary"])["last_month"]["value"] == 39 * 25.0  # declared part only

    # `ews replay`, in its own process with its own chDB folder, then the answers there
    site_json = tmp_path / "site.json"
    site_json.write_text(v3.model_dump_json())
    env = {
        **os.environ,
        "NATS_URL": settings.nats_url,
        "CLICKHOUSE_URL": f"chdb://{tmp_path / 'cli-chdb'}",
        "CLICKHOUSE_DATABASE": "ews",
        "EWS_SITE_FILE": str(SITE_FILE),
        "EWS_DATA_DIR": str(tmp_path / "data"),
    }
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ews_runtime.cli", "replay"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "rejected messages skipped, as live:" in out.stdout and "22 unknown-device" in out.stdout, (
        out.stdout
    )
    out = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            str(HERE / "answers.py"),
            env["CLICKHOUSE_URL"],
            "ews",
            str(site_json),
            str(TODAY),
            *map(str, DAYS),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    replayed = json.loads(out.stdout)
    assert replayed.keys() == live.keys()
    assert [k for k in live if replayed[k] != live[k]] == []  # byte for byte

    # `ews replay` in place (the command's default database)
    result = await replay(settings, progress=None)
    assert result.causes is not None and result.causes["unknown-device"] == 22
    again = await answers(store, db, v3, TODAY, DAYS)
    assert [k for k in live if again[k] != live[k]] == []


async def test_a_filtered_consumer_of_an_older_version_is_updated_in_place(nats_url: str):
    """Older versions filtered the durable consumer (readings, then every subject of the site): the filter is
    dropped in place (nats-server delivers an unfiltered consumer at a quarter of the CPU); the service skips
    another site's messages itself (``test_malformed_…``)."""
    from dataclasses import replace

    from ews_aggregator.service import consumer_config, ensure_consumer

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        await ensure_streams_with(js)
        old = replace(consumer_config(SITE), filter_subject="ews.acct.reading.*")
        await js.add_consumer(READINGS.name, config=old)
        status = DeviceStatusChanged(site=SITE, device="m1", state="on", occurred_at=T0)
        await publish(js, [*good_readings(T0, 1)[:2], message(status), raw("ews.other.reading.m1", b"{}")])
        assert (await js.consumer_info(READINGS.name, DURABLE)).num_pending == 2
        config = await ensure_consumer(js, SITE)
        info = await js.consumer_info(READINGS.name, DURABLE)
        assert (
            not config.filter_subject and not info.config.filter_subject and not info.config.filter_subjects
        )
        assert (
            info.num_pending == 4
        )  # status events and the other site's message too (skipped by the service)
        assert await ensure_consumer(js, SITE) == config  # up to date: unchanged
    finally:
        await nc.close()
