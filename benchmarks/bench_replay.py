"""`ews replay` of a million stored readings, against the live ingest of the same stream, one process.

A real nats-server (JetStream) holds N readings of 255 meters (``bench_aggregator``'s readings: what the
poller publishes, every meter every 2 s); then, in the same run and on the same stream:

1. ingest: the aggregator service drains it (``bench_aggregator.drain``: readings/s after its first
   acknowledged batch);
2. replay: ``ews replay``'s function (``ews_aggregator.replay.replay``) empties the projections and rebuilds
   them from the stream (readings/s over the whole replay: reading the stream, checks, writes; its
   start-up — migrations, configuration — included);
3. the two databases are compared (hourly consumption and cost per device and hour: equal).

    .venv/bin/python benchmarks/bench_replay.py [--readings 1000000] [--devices 255]

Prints a markdown table and exits 1 when the replay is slower than the ingest (ratio < 1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_aggregator import drain, environment, load, prepare
from ews_aggregator.replay import replay
from ews_contracts.settings import Settings
from ews_contracts.store import get_store
from ews_runtime.servers import NatsServer, free_port

HOURLY = (
    "SELECT device, quantity, toUnixTimestamp(hour), sum(value_milli), sum(estimated_milli), round(sum(cost), 6) "
    "FROM {db}.consumption_hourly GROUP BY device, quantity, hour ORDER BY device, quantity, hour"
)


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--devices", type=int, default=255)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    try:
        return await measure(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def measure(args: argparse.Namespace, folder: Path) -> int:
    environment(folder, args.devices, "bench_live")
    before = load()
    with NatsServer(folder / "js", free_port(), log=folder / "nats.log") as server:
        os.environ["NATS_URL"] = server.url
        published = await prepare(server.url, args.readings, args.devices)
        settings = Settings()
        startup, ingest = await drain(settings, args.readings, limit=1800)
        started = time.perf_counter()
        result = await replay(settings, database="bench_replay", progress=None)
        seconds = time.perf_counter() - started
    assert result.readings == args.readings and not result.skipped, result
    store = get_store(settings.clickhouse_dsn)
    live = await store.query(HOURLY.format(db="bench_live"))
    rebuilt = await store.query(HOURLY.format(db="bench_replay"))
    assert live == rebuilt and live, "the replay's hourly consumption differs from the live one"
    rate = result.readings / seconds
    print(
        f"\n{args.readings:,} readings of {args.devices} meters (Ea+ and power each, published in {published:.0f} s), "
        f"one process, chDB; {before} before, {load()} after\n"
    )
    print("| path | readings/s |")
    print("|---|---:|")
    print(
        f"| live ingest: JetStream drain after the first acknowledged batch (start-up {startup:.1f} s) | {ingest:,.0f} |"
    )
    print(f"| `ews replay` (whole: start-up, stream read, checks, writes; {seconds:.1f} s) | {rate:,.0f} |")
    print(f"| ratio replay / ingest | {rate / ingest:.2f} |")
    print(f"\nhourly consumption of the replay = the live one ({len(live):,} device-hours)")
    if rate < ingest:
        print(f"\ngoal missed: the replay ({rate:,.0f} readings/s) is slower than the ingest ({ingest:,.0f})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
