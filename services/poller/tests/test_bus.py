"""The poller on a misbehaving bus (fault injection in the simulator), over every transport, with tiers
and RS485 timing. Real Modbus to the simulator; the status test also runs real NATS and Redis."""

from __future__ import annotations

import asyncio
import time

import pytest
from ews_contracts.events import DeviceStatusChanged, ReadingTaken
from ews_contracts.profiles import load_profiles
from ews_contracts.settings import Settings
from ews_contracts.site import Site
from ews_fieldbus import BusTiming, FieldbusError, ModbusGateway, rtu_frame_sizes
from ews_poller.plan import ALL_TIERS
from ews_poller.service import Poller
from ews_runtime.servers import free_port
from ews_simulator import Fault, SimulatedSite

from .test_poller_integration import Events

pytestmark = pytest.mark.integration

PROFILES = load_profiles()
EA = "energy_active_import"


def site(gateways: list[dict], devices: list[dict]) -> Site:
    return Site.model_validate(
        {
            "site": "bus",
            "name": "bus test",
            "tariffs": [{"effective_from": "2020-01-01", "electricity_per_kwh": 0.2}],
            "gateways": gateways,
            "devices": devices,
        }
    )


def three_devices(port: int, **gateway: object) -> Site:
    return site(
        [{"id": "gw1", "host": "127.0.0.1", "port": port, "timeout": 0.2, "retries": 0, **gateway}],
        [
            {"id": "a", "name": "A", "profile": "energy-meter-rs485-1ph", "gateway": "gw1", "address": 2},
            {"id": "b", "name": "B", "profile": "ev-station-greenup", "gateway": "gw1", "address": 3},
            {"id": "c", "name": "C", "profile": "supervision-io-interface", "gateway": "gw1", "address": 4},
        ],
    )


def drain(poller: Poller) -> list:
    out = []
    while not poller._outbox.empty():
        out.append(poller._outbox.get_nowait())
    return out


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault("exception", 4), "exception_code=4"),
        (Fault("exception", 6), "exception_code=6"),
        (Fault("garbage"), ""),
        (Fault("short"), "of 21 registers"),
        (Fault("timeout"), ""),
    ],
    ids=["device-failure", "busy", "garbage", "short", "timeout"],
)
async def test_a_faulty_device_never_stops_the_bus(fault: Fault, reason: str, tmp_path):
    s = three_devices(free_port())
    poller = Poller(Settings(EWS_DATA_DIR=str(tmp_path)), site=s, profiles=PROFILES)
    targets = poller.targets["gw1"]
    async with SimulatedSite(s, PROFILES) as sim:
        client = ModbusGateway.for_gateway(s.gateways[0])
        try:
            await poller.poll_round(client, targets)
            assert {e.device for e in drain(poller) if isinstance(e, ReadingTaken)} == {"a", "b", "c"}
            sim.inject("b", fault)
            for _ in range(3):
                await poller.poll_round(client, targets)
            events = drain(poller)
            assert [e.device for e in events if isinstance(e, ReadingTaken)] == ["a", "c"] * 3
            (down,) = [e for e in events if isinstance(e, DeviceStatusChanged)]
            assert (down.device, down.state, down.previous) == ("b", "comm-error", "on")
            assert reason in down.reason and "\n" not in down.reason
            sim.inject("b", None)
            await asyncio.sleep(0.25)  # a late garbled/timed-out answer is dropped by then
            for _ in range(2):
                await poller.poll_round(client, targets)
            events = drain(poller)
            assert [(e.device, e.state) for e in events if isinstance(e, DeviceStatusChanged)] == [
                ("b", "on")
            ]
            assert {e.device for e in events if isinstance(e, ReadingTaken)} == {"a", "b", "c"}
        finally:
            await client.close()
            await poller.stop()


async def test_a_silent_device_is_comm_error_within_3_periods_and_the_others_keep_their_period(
    nats_url: str, redis_clean: str, tmp_path
):
    period = 0.5
    s = three_devices(free_port())
    settings = Settings(NATS_URL=nats_url, REDIS_URL=redis_clean, EWS_DATA_DIR=str(tmp_path))
    poller = Poller(settings, site=s, profiles=PROFILES, poll_interval=period)
    events = Events()
    async with SimulatedSite(s, PROFILES, tick=0.2) as sim:
        await poller.start()
        try:
            await events.start(nats_url, "ews.bus.>")
            await events.until(lambda: len(events.statuses("b")) == 1, 5, "b on")
            sim.inject("b", "timeout")
            stopped = time.time()
            down = await events.until(
                lambda: [x for x in events.statuses("b") if x.state == "comm-error"], 4 * period + 1, "b down"
            )
            assert down[0].occurred_at.timestamp() - stopped <= 3 * period + 0.25
            await asyncio.sleep(2 * period)
            sim.inject("b", None)
            back = await events.until(
                lambda: [x for x in events.statuses("b") if x.previous == "comm-error"],
                3 * period + 1,
                "b back",
            )
            assert back[0].state == "on"
            # while b was silent, a and c were read every period (one slot late at most once)
            for device in ("a", "c"):
                times = [
                    r.occurred_at.timestamp()
                    for _, r in events.readings(device)
                    if stopped - period <= r.occurred_at.timestamp() <= back[0].occurred_at.timestamp()
                ]
                gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
                assert len(gaps) >= 5 and max(gaps) < 1.5 * period, (device, gaps)
        finally:
            await events.close()
            await poller.stop()


async def test_rtu_over_tcp_and_rtu_serial_lines(tmp_path):
    p1, p2 = free_port(), free_port()
    s = site(
        [
            {"id": "gw-a", "transport": "rtu-over-tcp", "host": "127.0.0.1", "port": p1, "retries": 0},
            {
                "id": "gw-b",
                "transport": "rtu",
                "serial": {"port": f"socket://127.0.0.1:{p2}", "baudrate": 9600, "parity": "E"},
                "inter_frame_delay": 0.004,
                "retries": 0,
            },
        ],
        [
            {
                "id": "a",
                "name": "A",
                "profile": "multifunction-meter-412045",
                "gateway": "gw-a",
                "address": 1,
            },
            {"id": "b", "name": "B", "profile": "energy-meter-rs485-3ph", "gateway": "gw-b", "address": 1},
        ],
    )
    poller = Poller(Settings(EWS_DATA_DIR=str(tmp_path)), site=s, profiles=PROFILES)
    async with SimulatedSite(s, PROFILES) as sim:
        sim.freeze()
        for gateway in s.gateways:
            client = ModbusGateway.for_gateway(gateway)
            try:
                await poller.poll_round(client, poller.targets[gateway.id])
                assert client.transactions == len(poller.targets[gateway.id][0].reads)
            finally:
                await client.close()
        readings = {e.device: e for e in drain(poller) if isinstance(e, ReadingTaken)}
        assert readings["a"].values[EA] == sim.counter("a", EA)
        assert readings["b"].values[EA] == sim.counter("b", EA)
    await poller.stop()


def test_serial_gateway_needs_its_line():
    with pytest.raises(ValueError, match="transport 'rtu' needs 'serial"):
        site([{"id": "g", "transport": "rtu"}], [])
    with pytest.raises(ValueError, match="needs 'host'"):
        site([{"id": "g", "transport": "tcp"}], [])


async def test_rs485_timing_and_one_transaction_at_a_time():
    port = free_port()
    s = three_devices(port)
    timing = BusTiming(baudrate=9600, reply_delay=0.02)
    async with SimulatedSite(s, PROFILES, timing={"gw1": timing}):
        one, two = (ModbusGateway("127.0.0.1", port, timeout=2, retries=0) for _ in range(2))
        try:
            await one.read(2, 4, 0, 10)  # connect
            await two.read(2, 4, 0, 10)
            expected = timing.transaction_time(*rtu_frame_sizes(4, 10))
            # 33 bytes on the wire (37.8 ms) + the reply delay + one 3.5-character silence (4.0 ms)
            assert expected == pytest.approx(0.0378 + 0.02 + 0.0040, abs=0.0002)
            start = time.perf_counter()
            await one.read(2, 4, 0, 10)
            single = time.perf_counter() - start
            assert expected <= single < expected + 0.03
            # two clients at once still share one bus: one transaction after the other
            start = time.perf_counter()
            await asyncio.gather(one.read(2, 4, 0, 10), two.read(3, 3, 0, 10))
            assert time.perf_counter() - start >= 2 * expected
            assert one.bus_time(timing) == pytest.approx(3 * expected)
        finally:
            await one.close()
            await two.close()
        with pytest.raises(FieldbusError, match="exception_code=11"):  # no device at unit 9
            await ModbusGateway("127.0.0.1", port, timeout=2, retries=0).read(9, 3, 0, 1)


async def test_tiers_read_counters_at_their_own_period(tmp_path):
    port = free_port()
    s = three_devices(port, fast_period=0.2, counter_period=0.6)
    poller = Poller(Settings(EWS_DATA_DIR=str(tmp_path)), site=s, profiles=PROFILES)
    a = poller.targets["gw1"][0]
    fast = a.reads_for(frozenset({"fast"}))
    assert sum(b.count for b in fast) < sum(b.count for b in a.reads_for(ALL_TIERS))
    assert poller.periods(s.gateways[0]) == (0.2, 0.6)
    async with SimulatedSite(s, PROFILES):
        client = ModbusGateway.for_gateway(s.gateways[0])
        try:
            await poller.poll_round(client, [a])
            await poller.poll_round(client, [a], frozenset({"fast"}))
            full, quick = [e for e in drain(poller) if isinstance(e, ReadingTaken)]
            assert EA in full.values and EA not in quick.values and "power_active" in quick.values
            assert poller._dirty["a"].values[EA] == full.values[EA]  # the live state keeps the last counter
        finally:
            await client.close()
    # the gateway loop: fast values every 0.2 s, counters every 0.6 s
    counted: list[frozenset[str]] = []

    async def record(client, targets, tiers=ALL_TIERS):
        counted.append(tiers)

    poller.poll_round = record  # type: ignore[method-assign]
    idle = ModbusGateway.for_gateway(s.gateways[0])  # never connected: poll_round is replaced
    task = asyncio.create_task(poller._poll_gateway(s.gateways[0], idle, poller.targets["gw1"]))
    await asyncio.sleep(1.3)
    task.cancel()
    await poller.stop()
    assert 6 <= len(counted) <= 8
    assert 2 <= sum("counter" in t for t in counted) <= 3
    assert all("fast" in t for t in counted)
