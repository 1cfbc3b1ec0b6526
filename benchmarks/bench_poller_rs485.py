"""Poll cycle of one RS485 gateway of 32 devices against its physical bus-time bound.

The simulator (its own process) simulates an RS485 line at 19200 baud with a 20 ms reply delay behind a
Modbus TCP gateway: every transaction holds the bus for request frame + reply delay + response frame +
3.5-character silence (frame time = bytes × 11 bits / baud). The poller polls the 32 devices (every
bundled profile in turn, coalesced reads) as it does in service; for each cycle the bound is computed
from the transactions it actually issued, and the cycle's wall time is compared with it.

    .venv/bin/python benchmarks/bench_poller_rs485.py [--cycles 7] [--baud 19200] [--delay 0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _sites import simulate, write_site  # noqa: E402
from ews_contracts.profiles import load_profiles  # noqa: E402
from ews_contracts.settings import Settings  # noqa: E402
from ews_contracts.site import load_site  # noqa: E402
from ews_fieldbus import BusTiming, ModbusGateway  # noqa: E402
from ews_runtime.servers import free_port, wait_for_port  # noqa: E402


async def bench(site_file: Path, cycles: int, timing: BusTiming) -> list[tuple[int, float, float]]:
    from ews_poller.service import Poller

    site = load_site(site_file)
    with tempfile.TemporaryDirectory() as data:
        poller = Poller(Settings(EWS_DATA_DIR=data), site=site, profiles=load_profiles())
        gateway = site.gateways[0]
        targets = poller.targets[gateway.id]
        client = ModbusGateway.for_gateway(gateway)
        out = []
        try:
            await poller.poll_round(client, targets)  # connect, warm up
            for _ in range(cycles):
                n0, bus0 = client.transactions, client.bus_time(timing)
                start = time.perf_counter()
                await poller.poll_round(client, targets)
                wall = time.perf_counter() - start
                out.append((client.transactions - n0, client.bus_time(timing) - bus0, wall))
                while not poller._outbox.empty():
                    poller._outbox.get_nowait()
            assert client.failures == 0, f"{client.failures} failed transactions"
            assert len(targets) == 32
        finally:
            await client.close()
            await poller.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=7)
    parser.add_argument("--baud", type=int, default=19200)
    parser.add_argument("--delay", type=float, default=0.02, help="device reply delay, seconds")
    args = parser.parse_args()
    timing = BusTiming(args.baud, args.delay)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        site_file = write_site(Path(tmp) / "site.yaml", "rs485", [port], 32)
        sim = mp.get_context("spawn").Process(target=simulate, args=(str(site_file), args.baud, args.delay))
        sim.start()
        try:
            wait_for_port("127.0.0.1", port, 60)
            rows = asyncio.run(bench(site_file, args.cycles, timing))
        finally:
            sim.terminate()
            sim.join()
    ratios = [wall / bound for _, bound, wall in rows]
    print(
        f"## Poll cycle of a 32-device RS485 gateway ({args.baud} baud, {args.delay * 1000:.0f} ms reply delay)\n"
    )
    print("| cycle | transactions | bus-time bound (ms) | measured (ms) | measured / bound |")
    print("|---|---|---|---|---|")
    for n, (count, bound, wall) in enumerate(rows, 1):
        print(f"| {n} | {count} | {bound * 1000:.1f} | {wall * 1000:.1f} | {wall / bound:.3f} |")
    median = statistics.median(ratios)
    print(f"\nmedian measured / bound: **{median:.3f}** (target ≤ 1.10); worst {max(ratios):.3f}")
    sys.exit(0 if median <= 1.10 else 1)


if __name__ == "__main__":
    main()
