"""CPU cost of the poller for a full site: 255 devices on 8 gateways, polled every second.

Real servers and processes: nats-server and redis-server, the simulator (`ews run simulator`, RS485
timing off) and the poller (`ews run poller`, EWS_POLL_INTERVAL=1) each in its own process. The
poller's CPU time is read from /proc/<pid>/stat (utime + stime) over the measuring window, in slices of
`--slice` seconds (the median slice is the figure: a slice where other programs loaded the machine
does not move it); the readings it publishes are counted on NATS meanwhile. Goal: ≤ 5 % of one core.

    .venv/bin/python benchmarks/bench_poller_scale.py [--seconds 60] [--slice 10] [--devices 255] [--gateways 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import nats  # noqa: E402
from _sites import write_site  # noqa: E402
from ews_runtime.servers import NatsServer, RedisServer, free_port, wait_for_port  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
GOAL = 0.05  # share of one core


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def ews(target: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ews_runtime.cli", "run", target],
        env=env,
        stdout=open(log, "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def count_readings(
    nats_url: str, seconds: float, slice_seconds: float, poller_pid: int
) -> list[tuple[int, float, float]]:
    """(readings, poller CPU seconds, wall seconds) of each slice of the window."""
    nc = await nats.connect(nats_url)
    seen = 0

    async def on_msg(_msg) -> None:
        nonlocal seen
        seen += 1

    await nc.subscribe("ews.scale.reading.>", cb=on_msg)
    slices = []
    cpu0, t0, seen0 = cpu_seconds(poller_pid), time.monotonic(), seen
    end = t0 + seconds
    while t0 < end - 0.5:
        await asyncio.sleep(min(slice_seconds, end - t0))
        cpu1, t1 = cpu_seconds(poller_pid), time.monotonic()
        slices.append((seen - seen0, cpu1 - cpu0, t1 - t0))
        cpu0, t0, seen0 = cpu1, t1, seen
    await nc.close()
    return slices


async def wait_readings(nats_url: str, devices: int, within: float) -> None:
    nc = await nats.connect(nats_url)
    ids: set[str] = set()
    everyone = asyncio.Event()

    async def on_msg(msg) -> None:
        ids.add(msg.subject.rsplit(".", 1)[1])
        if len(ids) >= devices:
            everyone.set()

    await nc.subscribe("ews.scale.reading.>", cb=on_msg)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(everyone.wait(), within)
    await nc.close()
    if len(ids) < devices:
        raise SystemExit(f"only {len(ids)} of {devices} devices published readings; see the logs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--slice", type=float, default=10, help="seconds per CPU measurement")
    parser.add_argument("--devices", type=int, default=255)
    parser.add_argument("--gateways", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ports = [free_port() for _ in range(args.gateways)]
        site_file = write_site(folder / "site.yaml", "scale", ports, args.devices)
        with (
            NatsServer(folder / "js", free_port(), log=folder / "nats.log") as nats_server,
            RedisServer(folder / "redis", free_port(), log=folder / "redis.log") as redis_server,
        ):
            env = {k: v for k, v in os.environ.items() if not k.startswith(("EWS_", "NATS_", "REDIS_"))} | {
                "EWS_SITE_FILE": str(site_file),
                "EWS_DATA_DIR": str(folder / "data"),
                "NATS_URL": nats_server.url,
                "REDIS_URL": redis_server.url,
                "EWS_POLL_INTERVAL": "1",
                "EWS_LOG_LEVEL": "WARNING",
            }
            sim = ews("simulator", env, folder / "simulator.log")
            poller = None
            try:
                for port in ports:
                    wait_for_port("127.0.0.1", port, 120, sim)
                poller = ews("poller", env, folder / "poller.log")
                asyncio.run(wait_readings(nats_server.url, args.devices, 60))
                slices = asyncio.run(count_readings(nats_server.url, args.seconds, args.slice, poller.pid))
            finally:
                for proc in (poller, sim):
                    if proc is not None and proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)
                        try:
                            proc.wait(20)
                        except subprocess.TimeoutExpired:
                            proc.kill()
            log = (folder / "poller.log").read_text()
    readings, cpu, wall = (sum(s[i] for s in slices) for i in range(3))
    median = statistics.median(c / w for _, c, w in slices)
    print(f"## Poller CPU: {args.devices} devices on {args.gateways} gateways, polled every 1 s\n")
    print("| slice | seconds | readings | readings/s | poller CPU (s) | CPU share of one core |")
    print("|---|---|---|---|---|---|")
    for n, (count, c, w) in enumerate(slices, 1):
        print(f"| {n} | {w:.1f} | {count} | {count / w:.1f} | {c:.2f} | {c / w * 100:.1f} % |")
    print(f"| all | {wall:.1f} | {readings} | {readings / wall:.1f} | {cpu:.2f} | {cpu / wall * 100:.1f} % |")
    print(
        f"\npoller CPU: **{median * 100:.1f} % of one core** (median of {len(slices)} slices; whole window "
        f"{cpu / wall * 100:.1f} %) for {readings / wall:.1f} readings/s; target ≤ {GOAL * 100:.0f} %, every "
        f"device once a second = {args.devices} readings/s"
    )
    if "Traceback" in log:
        print("\npoller log has a traceback:\n" + log[-2000:])
    sys.exit(0 if median <= GOAL and readings / wall >= 0.99 * args.devices else 1)


if __name__ == "__main__":
    main()
