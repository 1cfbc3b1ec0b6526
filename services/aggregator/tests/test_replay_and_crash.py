"""Through real NATS and chDB: `ews replay` gives exactly the live numbers, and a SIGKILLed aggregator
process loses nothing and counts nothing twice after a restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest
from ews_aggregator.intervals import hour_totals
from ews_aggregator.replay import replay
from ews_aggregator.service import DURABLE, consumer_config, serve
from ews_contracts.bus import ensure_streams, make_broker
from ews_contracts.events import ReadingTaken, new_id
from ews_contracts.settings import Settings
from ews_contracts.store import get_store

from .chdb_dump import dump
from .conftest import SITE_FILE

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
T0 = datetime(2026, 10, 24, 20, 0, tzinfo=UTC)  # across the autumn DST change in Paris
EA = "energy_active_import"


def history(devices: tuple[str, ...], n: int, step_s: int = 30) -> list[ReadingTaken]:
    """Readings of several meters with a reset, a gap and duplicates, in an interleaved order."""
    events: list[ReadingTaken] = []
    for k, device in enumerate(devices):
        value = 1000.0 * (k + 1)
        t = T0
        for i in range(n):
            t += timedelta(seconds=step_s if i % 500 else 3600)  # an hour-long gap every 500 readings
            value = 5.0 if i == n // 3 else value + 7.0 + (i * 13 + k) % 11  # a meter reset once
            events.append(
                ReadingTaken(
                    event_id=ReadingTaken.id_for("acct", device, t),
                    site="acct",
                    device=device,
                    profile="energy-meter-rs485-3ph",
                    occurred_at=t,
                    values={EA: value, "power_active": 100.0},
                )
            )
    events.sort(key=lambda e: (e.occurred_at, e.device))
    return events


def expected(events: list[ReadingTaken]) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for device in {e.device for e in events}:
        readings = [
            (int(e.occurred_at.timestamp() * 1000), round(e.values[EA] * 1000), 2**32 * 10 * 1000)
            for e in events
            if e.device == device
        ]
        for hour, (value, _) in hour_totals(readings).items():
            if value:
                out[(device, hour // 1000)] = value
    return out


def got(d: dict) -> dict[tuple[str, int], int]:
    return {(dev, int(h)): int(v) for dev, q, h, v, _ in d["hourly"] if q == EA}


async def publish_all(nats_url: str, events: list[ReadingTaken], chunk: int = 500) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        for i in range(0, len(events), chunk):
            await asyncio.gather(
                *(
                    js.publish(
                        e.subject, e.model_dump_json().encode(), stream="EWS_READINGS", headers=e.headers()
                    )
                    for e in events[i : i + chunk]
                )
            )
    finally:
        await nc.close()


async def ensure(nats_url: str) -> None:
    broker = make_broker(nats_url, "test")
    await broker.connect()
    await ensure_streams(broker)
    await broker.stop()


async def consumer_state(nats_url: str) -> tuple[int, int, int]:
    """(ack floor stream sequence, pending, ack pending) of the aggregator's durable consumer; -1s if none."""
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().consumer_info("EWS_READINGS", DURABLE)
        return int(info.ack_floor.stream_seq or 0), int(info.num_pending or 0), int(info.num_ack_pending or 0)
    except Exception:
        return -1, -1, -1
    finally:
        await nc.close()


def dump_in_subprocess(dsn: str, database: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(HERE / "chdb_dump.py"), dsn, database],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


async def test_replay_equals_live(acct_settings: Settings, tmp_path: Path):
    settings = acct_settings
    events = history(("m1", "e2", "main"), 400)
    await ensure(settings.nats_url)
    newest = [e.model_copy(update={"event_id": new_id()}) for e in events[::-1][:200]]
    await publish_all(settings.nats_url, newest)  # the newest first (new ids: not deduplicated by NATS)
    await publish_all(settings.nats_url, events)  # then everything (duplicates of the first 200)
    store, db = get_store(settings.clickhouse_dsn), settings.clickhouse_database
    task = asyncio.create_task(serve(settings))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            floor, pending, ack_pending = await consumer_state(settings.nats_url)
            if floor > 0 and pending == 0 and ack_pending == 0:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the aggregator did not drain the stream")
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    want = expected(events)
    live = await asyncio.to_thread(dump, settings.clickhouse_dsn, db)
    assert got(live) == want

    result = await replay(settings, database=f"{db}_replay", batch_size=700, progress=None)
    assert result.readings == len(events) + 200 and result.skipped == 0
    rebuilt = await asyncio.to_thread(dump, settings.clickhouse_dsn, f"{db}_replay")
    assert rebuilt == live  # hourly and daily rollups, to the milli-unit

    # replaying in place (the default database) also gives the same numbers
    await replay(settings, batch_size=5000, progress=None)
    assert await asyncio.to_thread(dump, settings.clickhouse_dsn, db) == live
    costs = await store.query(f"SELECT round(sum(cost), 6) FROM {db}.consumption_hourly")
    again = await store.query(f"SELECT round(sum(cost), 6) FROM {db}_replay.consumption_hourly")
    assert costs == again

    # the CLI, in its own process with its own chDB folder
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
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"replayed {len(events) + 200:,} readings into ews" in out.stdout
    assert "replay [" in out.stderr and "100.0%" in out.stderr  # the progress line
    assert await asyncio.to_thread(dump_in_subprocess, env["CLICKHOUSE_URL"], "ews") == live


async def test_sigkill_mid_stream_then_restart_loses_nothing_and_counts_nothing_twice(
    nats_url: str, tmp_path: Path
):
    events = history(("m1", "e2", "main"), 4000, step_s=10)
    first, later = events[:9000], events[9000:]
    await ensure(nats_url)
    await publish_all(nats_url, first)
    # the production consumer, except that in-flight messages of a killed process come back after 1 s
    nc = await nats.connect(nats_url)
    await nc.jetstream().add_consumer(
        "EWS_READINGS", config=consumer_config("acct", ack_wait=1.0, batch_size=2000)
    )
    await nc.close()
    dsn = f"chdb://{tmp_path / 'chdb'}"
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "CLICKHOUSE_URL": dsn,
        "CLICKHOUSE_DATABASE": "ews",
        "EWS_SITE_FILE": str(SITE_FILE),
        "EWS_DATA_DIR": str(tmp_path / "data"),
        "EWS_LOG_LEVEL": "WARNING",
        "EWS_AGGREGATOR_BATCH": "2000",  # several batches in the 9,000 readings: the kill lands mid-stream
    }

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "ews_runtime.cli", "run", "aggregator"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "aggregator.log", "ab"),  # noqa: SIM115
        )

    proc = start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            floor, pending, _ = await consumer_state(nats_url)
            if floor > 0:
                break
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # mid-stream: some batches acked, others not
        proc.wait(timeout=10)
        floor_at_kill, _, _ = await consumer_state(nats_url)
        assert 0 < floor_at_kill < len(first), floor_at_kill
        await publish_all(nats_url, later)  # published while the aggregator is down
        proc = start()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            floor, pending, ack_pending = await consumer_state(nats_url)
            if floor == len(events) and pending == 0 and ack_pending == 0:
                break
            assert proc.poll() is None, (tmp_path / "aggregator.log").read_text()[-2000:]
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the restarted aggregator did not drain the stream")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert got(await asyncio.to_thread(dump_in_subprocess, dsn, "ews")) == expected(events)
