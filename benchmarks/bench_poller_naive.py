"""The poller's coalesced reads against a naive poller (one quantity per transaction), on one RS485 bus.

The bus of bench_poller_rs485.py: the simulator in its own process simulates an RS485 line at 19200 baud
with a 20 ms reply delay behind a Modbus TCP gateway (every transaction holds the bus for request frame +
reply delay + response frame + 3.5-character silence), 32 devices cycling through the bundled profiles.
In one run, on the same connection, cycles alternate between:

- the product: ``Poller.poll_round`` — each device read as the fewest block reads its profile allows
  (``plan_reads``: registers coalesced per function code, short gaps bridged, ≤ 125 registers a read);
- a naive poller, as simple integrations do (one "sensor" per register): one FC3/FC4 read per register
  definition of each device's profile — every quantity, every state register, and every scale or sign
  register a quantity needs (each read once per device) — then decoded the same way (``decode_device``),
  which checks that it gets the same quantities and states.

For each: transactions per cycle, cycle time (wall) and its RS485 bus-time bound; medians over the cycles,
and the ratios naive / product. Exits 1 unless the product needs fewer transactions and a shorter cycle.

    .venv/bin/python benchmarks/bench_poller_naive.py [--cycles 3] [--baud 19200] [--delay 0.02]
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
from ews_contracts.profiles import DATA_TYPES, Profile, load_profiles  # noqa: E402
from ews_contracts.settings import Settings  # noqa: E402
from ews_contracts.site import Device, load_site  # noqa: E402
from ews_fieldbus import BusTiming, ModbusGateway  # noqa: E402
from ews_runtime.servers import free_port, wait_for_port  # noqa: E402

DEVICES = 32


def naive_reads(profile: Profile, device: Device) -> list[tuple[int, int, int]]:
    """(function code, address, count) of each transaction of a naive poll: one per register definition
    (quantity, state, and each scale or sign register once), in the profile's order."""
    reads: list[tuple[int, int, int]] = []
    for reg in profile.registers:
        reads.append((profile.fc(reg), profile.address_of(reg, device.position), reg.count))
        if reg.scale_from is not None:
            sf = reg.scale_from
            reads.append((profile.fc(sf), sf.address, DATA_TYPES[sf.type][0]))
        if reg.sign_from is not None:
            reads.append((profile.fc(reg.sign_from), reg.sign_from.address, 1))
    for state in profile.states:
        reads.append((profile.fc(state), state.address, 1))
    return list(dict.fromkeys(reads))  # a scale or sign register shared by several quantities: read once


async def bench(site_file: Path, cycles: int, timing: BusTiming) -> dict[str, list[tuple[int, float, float]]]:
    from ews_poller.decode import RegisterImage, decode_device
    from ews_poller.plan import ReadBlock
    from ews_poller.service import Poller

    site = load_site(site_file)
    rows: dict[str, list[tuple[int, float, float]]] = {"product": [], "naive": []}
    with tempfile.TemporaryDirectory() as data:
        poller = Poller(Settings(EWS_DATA_DIR=data), site=site, profiles=load_profiles())
        gateway = site.gateways[0]
        targets = poller.targets[gateway.id]
        assert len(targets) == DEVICES, f"{len(targets)} devices polled"
        client = ModbusGateway.for_gateway(gateway)
        naive_plan = [(t, naive_reads(t.profile, t.device)) for t in targets]
        seen: dict[str, tuple[set[str], set[str]]] = {}  # device -> (quantities, states) of the naive poll

        async def product() -> None:
            await poller.poll_round(client, targets)
            while not poller._outbox.empty():
                poller._outbox.get_nowait()

        async def naive() -> None:
            for target, reads in naive_plan:
                address = target.device.address
                blocks = {
                    ReadBlock(fc, start, count): await client.read(address, fc, start, count)
                    for fc, start, count in reads
                }
                decoded = decode_device(target.profile, target.device, RegisterImage(blocks))
                assert not decoded.problems, (target.device.id, decoded.problems)
                seen[target.device.id] = (set(decoded.values), set(decoded.states))

        async def cycle(name: str, poll) -> None:
            n0, bus0 = client.transactions, client.bus_time(timing)
            start = time.perf_counter()
            await poll()
            wall = time.perf_counter() - start
            rows[name].append((client.transactions - n0, client.bus_time(timing) - bus0, wall))

        try:
            await product()  # connect, warm up
            for _ in range(cycles):
                await cycle("product", product)
                await cycle("naive", naive)
            assert client.failures == 0, f"{client.failures} failed transactions"
            # the naive poller got what the product gets
            for target in targets:
                live = target.live
                assert seen[target.device.id] == (set(live.values), set(live.states)), target.device.id
        finally:
            await client.close()
            await poller.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=3, help="cycles of each poller (alternating)")
    parser.add_argument("--baud", type=int, default=19200)
    parser.add_argument("--delay", type=float, default=0.02, help="device reply delay, seconds")
    args = parser.parse_args()
    timing = BusTiming(args.baud, args.delay)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        site_file = write_site(Path(tmp) / "site.yaml", "naive", [port], DEVICES)
        sim = mp.get_context("spawn").Process(target=simulate, args=(str(site_file), args.baud, args.delay))
        sim.start()
        try:
            wait_for_port("127.0.0.1", port, 60)
            rows = asyncio.run(bench(site_file, args.cycles, timing))
        finally:
            sim.terminate()
            sim.join()
    medians = {
        name: tuple(statistics.median(r[i] for r in cycle_rows) for i in range(3))
        for name, cycle_rows in rows.items()
    }
    (tp, bp, wp), (tn, bn, wn) = medians["product"], medians["naive"]
    print(
        f"## {DEVICES} devices on one RS485 bus ({args.baud} baud, {args.delay * 1000:.0f} ms reply delay): "
        "coalesced reads vs one quantity per transaction\n"
    )
    print("| poller | cycle | transactions | bus-time bound (s) | cycle (s) | cycle / bound |")
    print("|---|---|---|---|---|---|")
    for name, cycle_rows in rows.items():
        for n, (count, bound, wall) in enumerate(cycle_rows, 1):
            print(f"| {name} | {n} | {count} | {bound:.2f} | {wall:.2f} | {wall / bound:.3f} |")
    print("\n| median | transactions per cycle | cycle (s) | bus-time bound (s) |")
    print("|---|---|---|---|")
    print(f"| product (Poller.poll_round) | {tp:.0f} | {wp:.2f} | {bp:.2f} |")
    print(f"| naive (one read per register definition) | {tn:.0f} | {wn:.2f} | {bn:.2f} |")
    print(f"| **naive / product** | **{tn / tp:.1f} ×** | **{wn / wp:.1f} ×** | {bn / bp:.1f} × |")
    print(
        f"\nsummary: the product polls the {DEVICES} devices in {tp:.0f} transactions and {wp:.2f} s; the naive "
        f"poller in {tn:.0f} transactions and {wn:.2f} s: {tn / tp:.1f} × the transactions, {wn / wp:.1f} × the "
        "cycle time (medians)"
    )
    sys.exit(0 if tp < tn and wp < wn else 1)


if __name__ == "__main__":
    main()
