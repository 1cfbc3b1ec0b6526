"""Aggregator ingest throughput into chDB, one process.

1. store path: ``Aggregator.store_batch`` on parsed readings (the pure computation + ClickHouse inserts);
2. drain: N readings pre-published to a real nats-server (JetStream), then the aggregator service
   (push consumer, raw frames, fast intake, batches, one ack per batch) is started and timed until its
   durable consumer is empty. The figure is the rate after its first acknowledged batch (the service's
   start-up — imports, migrations, configuration, profiles — is printed apart).

    .venv/bin/python benchmarks/bench_aggregator.py [--readings 200000] [--devices 255] [--runs 3]

Readings are what the poller publishes: ``ReadingTaken`` serialized by its own JSON serializer (checked
against it), every device polled every 2 s, its Ea+ counter and active power. Prints a markdown table
(medians of ``--runs``) and exits 1 when the drain is below the goal (150,000 readings/s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import yaml
from _sites import meters_site
from ews_aggregator.aggregator import Aggregator
from ews_aggregator.service import DURABLE, serve
from ews_contracts.bus import ensure_streams_with
from ews_contracts.events import ReadingTaken
from ews_contracts.settings import Settings
from ews_contracts.site import Site
from ews_contracts.store import get_store
from ews_contracts.streamio import Republisher
from ews_runtime.servers import NatsServer, free_port

T0 = datetime(2026, 1, 1, tzinfo=UTC)
GOAL = 150_000  # readings/s after the first batch (issue 15)
PROFILE = "energy-meter-rs485-3ph"


def site_file(folder: Path, devices: int) -> Path:
    data = meters_site(devices)
    path = folder / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def reading(k: int, devices: int) -> ReadingTaken:
    """Reading number ``k``: device k % devices at poll k // devices (every 2 s), Ea+ and active power."""
    device, poll = k % devices, k // devices
    return ReadingTaken(
        event_id=f"bench.d{device}.{poll}",
        site="bench",
        device=f"d{device}",
        profile=PROFILE,
        occurred_at=T0 + timedelta(seconds=2 * poll),
        values={"energy_active_import": 1000.0 + 3.0 * poll + device, "power_active": 5400.0},
    )


def readings(n: int, devices: int, start: int = 0) -> list[ReadingTaken]:
    return [reading(k, devices) for k in range(start, start + n)]


def messages(n: int, devices: int, start: int = 0):
    """(subject, payload, Nats-Msg-Id) of readings ``start`` … ``start + n - 1``, as ``reading`` would serialize
    them (written from a template: a million models would take longer than the benchmark)."""
    head = '{"event_id":"bench.d%d.%d","site":"bench","occurred_at":"%sZ","schema_version":1,"device":"d%d",'
    tail = (
        f'"profile":"{PROFILE}","values":{{"energy_active_import":%r,"power_active":5400.0}},"states":{{}}}}'
    )
    template = head + tail
    for k in range(start, start + n):
        device, poll = k % devices, k // devices
        when = (T0 + timedelta(seconds=2 * poll)).strftime("%Y-%m-%dT%H:%M:%S")
        data = (template % (device, poll, when, device, 1000.0 + 3.0 * poll + device)).encode()
        yield f"ews.bench.reading.d{device}", data, f"bench.d{device}.{poll}"


def check_messages(devices: int) -> None:
    """The template writes exactly what the model's serializer writes (the canonical form)."""
    for k in [*range(0, 3 * devices), *range(0, 2_000_000, 99_991)]:
        event = reading(k, devices)
        assert next(messages(1, devices, k)) == (
            event.subject,
            event.model_dump_json().encode(),
            event.event_id,
        ), k


async def publish(url: str, n: int, devices: int) -> float:
    """Publish ``n`` readings to EWS_READINGS, each acknowledged by JetStream; returns the seconds taken."""
    check_messages(devices)
    started = time.perf_counter()
    nc = await nats.connect(url)
    try:
        publisher = await Republisher(nc, window=20_000).start()
        for subject, data, msg_id in messages(n, devices):
            await publisher.publish(subject, data, msg_id)
        result = await publisher.close()
        assert result.stored + result.duplicates == n, result
    finally:
        await nc.close()
    return time.perf_counter() - started


async def store_path(site: Site, dsn: str, n: int, devices: int, batch: int, runs: int) -> list[float]:
    rates = []
    for run in range(runs):
        agg = Aggregator(get_store(dsn), f"bench_store_{run}", site)
        await agg.start()
        data = readings(n, devices)
        started = time.perf_counter()
        for i in range(0, n, batch):
            await agg.store_batch(data[i : i + batch])
        rates.append(n / (time.perf_counter() - started))
    return rates


async def drain(settings: Settings, n: int, limit: float = 600.0) -> tuple[float, float]:
    """Start the aggregator service on a stream holding ``n`` readings and time it until its durable
    consumer has acknowledged them all: (seconds to its first acknowledged batch, readings/s after it)."""
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    with suppress(Exception):
        await js.delete_consumer("EWS_READINGS", DURABLE)
    started = time.perf_counter()
    task = asyncio.create_task(serve(settings))
    first: tuple[float, int] | None = None
    try:
        while time.perf_counter() - started < limit:
            await asyncio.sleep(0.02)
            with suppress(Exception):
                info = await js.consumer_info("EWS_READINGS", DURABLE)
                floor = int(info.ack_floor.stream_seq or 0)
                if first is None and floor > 0:
                    first = (time.perf_counter(), floor)
                if floor >= n and not info.num_pending and not info.num_ack_pending:
                    break
            if task.done():
                task.result()
        else:
            raise TimeoutError(f"the aggregator did not drain {n} readings in {limit:.0f} s")
        end = time.perf_counter()
        assert first is not None
        return first[0] - started, (n - first[1]) / max(end - first[0], 1e-9)
    finally:
        task.cancel()
        with suppress(BaseException):
            await asyncio.wait_for(task, 30)
        await nc.close()


def environment(folder: Path, devices: int, database: str) -> None:
    os.environ.update(
        {
            "EWS_SITE_FILE": str(site_file(folder, devices)),
            "CLICKHOUSE_URL": f"chdb://{folder / 'chdb'}",
            "CLICKHOUSE_DATABASE": database,
            "EWS_DATA_DIR": str(folder / "data"),
            "EWS_LOG_LEVEL": "WARNING",
        }
    )


async def prepare(url: str, n: int, devices: int) -> float:
    nc = await nats.connect(url)
    try:
        await ensure_streams_with(nc.jetstream())
    finally:
        await nc.close()
    return await publish(url, n, devices)


def load() -> str:
    with suppress(OSError):
        return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "load average n/a"


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=255)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-aggregator-"))
    try:
        return await measure(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def measure(args: argparse.Namespace, folder: Path) -> int:
    environment(folder, args.devices, "bench_drain_0")
    settings = Settings()
    rates = await store_path(
        settings.site, settings.clickhouse_dsn, args.readings, args.devices, args.batch, args.runs
    )
    before = load()
    with NatsServer(folder / "js", free_port(), log=folder / "nats.log") as server:
        os.environ["NATS_URL"] = server.url
        published = await prepare(server.url, args.readings, args.devices)
        drains = []
        for run in range(args.runs):  # the same stream, a fresh consumer and database each time
            os.environ["CLICKHOUSE_DATABASE"] = f"bench_drain_{run}"
            drains.append(await drain(Settings(), args.readings))
    print(
        f"\n{args.readings:,} readings of {args.devices} meters (Ea+ and power each, published in "
        f"{published:.0f} s), batches of {args.batch}, one process, chDB; {before} before, {load()} after\n"
    )
    steady = statistics.median(rate for _, rate in drains)
    print("| path | readings/s |")
    print("|---|---:|")
    print(
        f"| store path (`Aggregator.store_batch` from models), median of {args.runs} | {statistics.median(rates):,.0f} |"
    )
    print(
        f"| JetStream drain after the first acknowledged batch, median of {args.runs} "
        f"({', '.join(f'{r:,.0f}' for _, r in drains)}) | {steady:,.0f} |"
    )
    print(
        f"| service start-up to the first acknowledged batch (imports, migrations, configuration) | "
        f"{statistics.median(s for s, _ in drains):.1f} s |"
    )
    if steady < GOAL:
        print(f"\ngoal missed: {steady:,.0f} readings/s after the first batch (goal {GOAL:,})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
