"""CPU cost of the poller for a full site: 255 devices on 8 gateways, polled every second.

Real servers and processes: nats-server and redis-server, the simulator (`ews run simulator`, RS485
timing off) and the poller (`ews run poller`, EWS_POLL_INTERVAL=1) each in its own process. The
poller's CPU time is read from /proc/<pid>/stat (utime + stime) over the measuring window; the
readings it publishes are counted on NATS meanwhile.

    .venv/bin/python benchmarks/bench_poller_scale.py [--seconds 60] [--devices 255] [--gateways 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
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


async def count_readings(nats_url: str, seconds: float, poller_pid: int) -> tuple[int, float, float]:
    nc = await nats.connect(nats_url)
    seen = 0

    async def on_msg(_msg) -> None:
        nonlocal seen
        seen += 1

    await nc.subscribe("ews.scale.reading.>", cb=on_msg)
    cpu0, t0 = cpu_seconds(poller_pid), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, t1 = cpu_seconds(poller_pid), time.monotonic()
    await nc.close()
    return seen, cpu1 - cpu0, t1 - t0


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
                readings, cpu, wall = asyncio.run(count_readings(nats_server.url, args.seconds, poller.pid))
            finally:
                for proc in (poller, sim):
                    if proc is not None and proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)
                        try:
                            proc.wait(20)
                        except subprocess.TimeoutExpired:
                            proc.kill()
            log = (folder / "poller.log").read_text()
    share = cpu / wall
    print(f"## Poller CPU: {args.devices} devices on {args.gateways} gateways, polled every 1 s\n")
    print("| window (s) | readings | readings/s | poller CPU (s) | CPU share of one core |")
    print("|---|---|---|---|---|")
    print(f"| {wall:.1f} | {readings} | {readings / wall:.1f} | {cpu:.2f} | **{share * 100:.1f} %** |")
    print(f"\ntarget: under 15 % of one core; every device once a second = {args.devices} readings/s")
    if "Traceback" in log:
        print("\npoller log has a traceback:\n" + log[-2000:])
    sys.exit(0 if share < 0.15 else 1)


if __name__ == "__main__":
    main()
