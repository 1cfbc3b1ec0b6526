"""Backup and restore of a year of 255 meters: archive size, time and memory of ``ews backup`` and ``ews restore``.

    .venv/bin/python benchmarks/bench_backup.py [--devices 255] [--days 365] [--runs 1]

1. setup (not timed): a nats-server and a redis-server on free ports in a temporary folder; ``--days`` of
   readings every 15 minutes for ``--devices`` RS485 energy meters (Ea+ counter and active power each, the
   payload the poller publishes), in time order, published to ``EWS_READINGS``; four roles' code hashes.
2. ``ews backup FILE`` (the real command, a subprocess; the same code as ``GET /api/v1/backup``): wall time,
   archive size, the process's peak memory (VmHWM).
3. ``ews restore FILE`` into a fresh box (a second nats-server and Redis database, an empty chDB) with the
   aggregator running (``ews run aggregator``, its own process, chDB): checking the archive, applying it
   (NATS + Redis), the aggregator's rebuild of the figures (the command waits for it and says how long it
   took), each timed, and the restore process's peak memory.

Prints a markdown table (medians when ``--runs`` > 1: each run backs up and restores again).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml
from _sites import meters_site
from ews_contracts.bus import ensure_streams_with
from ews_contracts.natsclient import connect_fast
from ews_contracts.streamio import Republisher
from ews_runtime.servers import NatsServer, RedisServer, free_port

T0 = datetime(2025, 1, 1, tzinfo=UTC)
STEP_MS = 15 * 60 * 1000
EWS = [sys.executable, "-m", "ews_runtime.cli"]
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA"


def payloads(devices: int, days: int):
    """(subject, id, payload) in time order, the bytes ``ReadingTaken.model_dump_json`` makes."""
    t0 = int(T0.timestamp() * 1000)
    for k in range(days * 96):
        ms = t0 + k * STEP_MS
        stamp = datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for d in range(devices):
            event_id = f"bench.d{d}.{ms}"
            yield (
                f"ews.bench.reading.d{d}",
                event_id,
                (
                    f'{{"event_id":"{event_id}","site":"bench","occurred_at":"{stamp}","schema_version":1,'
                    f'"device":"d{d}","profile":"energy-meter-rs485-3ph","values":{{"energy_active_import":'
                    f'{1000.0 + 37.5 * k + d},"power_active":{150 + (k * 7 + d) % 90}.0}},"states":{{}}}}'
                ).encode(),
            )


async def seed(nats_url: str, redis_url: str, devices: int, days: int) -> int:
    import redis.asyncio as aioredis

    nc = await connect_fast(nats_url, "bench-seed")
    await ensure_streams_with(nc.jetstream())
    publisher = await Republisher(nc, window=20_000).start()
    n = 0
    for subject, event_id, data in payloads(devices, days):
        await publisher.publish(subject, data, event_id)
        n += 1
    await publisher.close()
    await nc.close()
    redis = aioredis.from_url(redis_url)
    for role in ("administrator", "greenUp", "installer", "user"):
        await redis.set(f"ews:bench:auth:codes:{role}", f'{{"pin":"{HASH}","puk":"{HASH}","default":true}}')
    await redis.aclose()
    return n


def peak_memory(proc: subprocess.Popen, out: list[int]) -> None:
    """The process's VmHWM (peak resident set, kB) as long as it runs."""
    while proc.poll() is None:
        try:
            text = Path(f"/proc/{proc.pid}/status").read_text()
            found = re.search(r"VmHWM:\s+(\d+) kB", text)
            if found:
                out.append(int(found.group(1)))
        except OSError:
            pass
        time.sleep(0.1)


def run(args: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """(wall seconds, peak MiB, stdout) of one `ews` command."""
    started = time.perf_counter()
    proc = subprocess.Popen(EWS + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks: list[int] = []
    watcher = threading.Thread(target=peak_memory, args=(proc, peaks), daemon=True)
    watcher.start()
    out, err = proc.communicate()
    watcher.join()
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"ews {' '.join(args)} failed ({proc.returncode}): {err.strip()[-500:]}")
    return elapsed, (max(peaks) // 1024 if peaks else 0), out


def base_env(**values: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("EWS_", "NATS_", "REDIS_", "CLICKHOUSE_"))
    }
    env.update(values, EWS_LOG_LEVEL="WARNING")
    return env


def wait_for_aggregator(nats_url: str, proc: subprocess.Popen) -> None:
    from ews_contracts.rebuild import rebuild_status

    async def ask() -> bool:
        nc = await connect_fast(nats_url, "bench-wait")
        try:
            return await rebuild_status(nc, "bench") is not None
        finally:
            await nc.close()

    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit("the aggregator exited")
        if asyncio.run(ask()):
            return
        time.sleep(0.1)
    raise SystemExit("the aggregator did not start")


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    try:
        measure(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # gigabytes of JetStream and chDB files


def measure(folder: Path) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=255)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    site = folder / "site.yaml"
    site.write_text(yaml.safe_dump(meters_site(args.devices)))
    rows: dict[str, list[float]] = {
        k: []
        for k in ("backup_s", "size_mib", "backup_mib", "check_s", "apply_s", "rebuild_s", "restore_mib")
    }
    with (
        NatsServer(folder / "a" / "nats", free_port(), log=folder / "a-nats.log") as nats_a,
        RedisServer(folder / "redis", free_port(), log=folder / "redis.log") as redis,
    ):
        started = time.perf_counter()
        n = asyncio.run(seed(nats_a.url, redis.url, args.devices, args.days))
        print(f"setup: {n:,} readings published in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        env_a = base_env(
            EWS_SITE_FILE=str(site), EWS_DATA_DIR=str(folder / "a"), NATS_URL=nats_a.url, REDIS_URL=redis.url
        )
        for run_no in range(args.runs):
            archive = folder / f"bench-{run_no}.tar.gz"
            seconds, peak, out = run(["backup", str(archive)], env_a)
            assert f"{n:,} readings" in out, out
            rows["backup_s"].append(seconds)
            rows["size_mib"].append(archive.stat().st_size / 2**20)
            rows["backup_mib"].append(peak)
            print(
                f"run {run_no + 1}: backup {seconds:.1f} s, {archive.stat().st_size / 2**20:.1f} MiB",
                file=sys.stderr,
            )

            box = folder / f"b{run_no}"
            with NatsServer(box / "nats", free_port(), log=folder / f"b{run_no}-nats.log") as nats_b:
                redis_b = redis.url.rsplit("/", 1)[0] + f"/{run_no + 1}"
                env_b = base_env(
                    EWS_SITE_FILE=str(site), EWS_DATA_DIR=str(box), NATS_URL=nats_b.url, REDIS_URL=redis_b
                )
                aggregator = subprocess.Popen(
                    [*EWS, "run", "aggregator"],
                    env=env_b,
                    stdout=open(folder / f"b{run_no}-aggregator.log", "w"),  # noqa: SIM115
                    stderr=subprocess.STDOUT,
                )
                try:
                    wait_for_aggregator(nats_b.url, aggregator)
                    seconds, peak, out = run(["restore", str(archive)], env_b)
                finally:
                    aggregator.terminate()
                    aggregator.wait(30)
            applied_found = re.search(r"in ([\d.]+) s: [\d,]+ readings", out)
            rebuilt_found = re.search(r"figures rebuilt from ([\d,]+) readings in ([\d.]+) s", out)
            if applied_found is None or rebuilt_found is None or rebuilt_found.group(1) != f"{n:,}":
                raise SystemExit(f"unexpected output of ews restore:\n{out}")
            applied, rebuilt = float(applied_found.group(1)), float(rebuilt_found.group(2))
            rows["apply_s"].append(applied)
            rows["rebuild_s"].append(rebuilt)
            rows["check_s"].append(seconds - applied - rebuilt)
            rows["restore_mib"].append(peak)
            print(
                f"run {run_no + 1}: restore {seconds:.1f} s ({applied:.1f} s applying, {rebuilt:.1f} s rebuilding)",
                file=sys.stderr,
            )

    med = {k: statistics.median(v) for k, v in rows.items()}
    what = "median of " + str(args.runs) + " runs" if args.runs > 1 else "one run"
    print(
        f"\n{n:,} readings: {args.devices} meters × {args.days} days every 15 minutes (Ea+ and active power "
        f"each), {what}\n"
    )
    print("| step | time | memory (peak RSS of the command) | |")
    print("|---|---:|---:|---|")
    print(
        f"| `ews backup` | {med['backup_s']:.0f} s | {med['backup_mib']:.0f} MiB | archive {med['size_mib']:.0f} MiB |"
    )
    print(
        f"| `ews restore`: check the archive | {med['check_s']:.0f} s | {med['restore_mib']:.0f} MiB | "
        f"{n / med['check_s']:,.0f} readings/s |"
    )
    print(
        f"| `ews restore`: apply (NATS, Redis) | {med['apply_s']:.0f} s | | {n / med['apply_s']:,.0f} readings/s |"
    )
    print(
        f"| aggregator rebuild (chDB, its own process) | {med['rebuild_s']:.0f} s | | "
        f"{n / med['rebuild_s']:,.0f} readings/s |"
    )


if __name__ == "__main__":
    main()
