"""Aggregator ingest throughput into chDB, one process.

1. store path: ``Aggregator.store_batch`` on parsed readings (the pure computation + ClickHouse inserts);
2. drain: N readings pre-published to a real nats-server (JetStream), then the aggregator service
   (push consumer, batches, one ack per batch) is started and timed until its durable consumer is empty.

    .venv/bin/python benchmarks/bench_aggregator.py [--readings 100000] [--devices 255]

Prints a markdown table (readings/s, median of the store-path runs).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
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
from ews_contracts.bus import ensure_streams, make_broker
from ews_contracts.events import ReadingTaken
from ews_contracts.settings import Settings
from ews_contracts.site import Site
from ews_contracts.store import get_store
from ews_runtime.servers import NatsServer, free_port

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def site_file(folder: Path, devices: int) -> Path:
    data = meters_site(devices)
    path = folder / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def readings(n: int, devices: int, start: int = 0) -> list[ReadingTaken]:
    """n readings: every device polled every 2 s, Ea+ counter and active power."""
    out = []
    for k in range(start, start + n):
        device, poll = k % devices, k // devices
        t = T0 + timedelta(seconds=2 * poll)
        out.append(
            ReadingTaken(
                event_id=f"bench.d{device}.{poll}",
                site="bench",
                device=f"d{device}",
                profile="energy-meter-rs485-3ph",
                occurred_at=t,
                values={"energy_active_import": 1000.0 + 3.0 * poll + device, "power_active": 5400.0},
            )
        )
    return out


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


async def publish(url: str, events: list[ReadingTaken]) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    for i in range(0, len(events), 1000):
        await asyncio.gather(
            *(
                js.publish(
                    e.subject, e.model_dump_json().encode(), stream="EWS_READINGS", headers=e.headers()
                )
                for e in events[i : i + 1000]
            )
        )
    await nc.close()


async def drain(settings: Settings, n: int, devices: int) -> tuple[float, float]:
    """(readings/s from the service's start, readings/s from its first acked batch on)."""
    broker = make_broker(settings.nats_url, "bench")
    await broker.connect()
    await ensure_streams(broker)
    await broker.stop()
    await publish(settings.nats_url, readings(n, devices))
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    started = time.perf_counter()
    task = asyncio.create_task(serve(settings))
    first: tuple[float, int] | None = None
    try:
        while True:
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
        end = time.perf_counter()
        assert first is not None
        return n / (end - started), (n - first[1]) / max(end - first[0], 1e-9)
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        await nc.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=255)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-aggregator-"))
    path = site_file(folder, args.devices)
    dsn = f"chdb://{folder / 'chdb'}"
    import os

    os.environ.update(
        {
            "EWS_SITE_FILE": str(path),
            "CLICKHOUSE_URL": dsn,
            "CLICKHOUSE_DATABASE": "bench_drain",
            "EWS_DATA_DIR": str(folder / "data"),
            "EWS_LOG_LEVEL": "WARNING",
        }
    )
    settings = Settings()
    rates = await store_path(settings.site, dsn, args.readings, args.devices, args.batch, args.runs)
    with NatsServer(folder / "js", free_port(), log=folder / "nats.log") as server:
        os.environ["NATS_URL"] = server.url
        drained, steady = await drain(Settings(), args.readings, args.devices)
    print(
        f"\n{args.readings:,} readings of {args.devices} meters (Ea+ and power each), batches of {args.batch}, "
        "one process, chDB\n"
    )
    print("| path | readings/s |")
    print("|---|---:|")
    print(
        f"| store path (`Aggregator.store_batch`), median of {args.runs} | {statistics.median(rates):,.0f} |"
    )
    print(
        f"| JetStream drain, whole (service start-up, migrations, push consumer, batch acks) | {drained:,.0f} |"
    )
    after_first = f"{steady:,.0f}" if steady > 0 else "n/a (one batch: use more --readings)"
    print(f"| JetStream drain, after the first acked batch | {after_first} |")


if __name__ == "__main__":
    asyncio.run(main())
