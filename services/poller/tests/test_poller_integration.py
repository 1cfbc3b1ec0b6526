"""The poller against the real simulator (Modbus TCP), a real nats-server (JetStream) and redis-server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import nats
import pytest
import redis.asyncio as aioredis
from ews_contracts.events import DeviceStatusChanged, ReadingTaken
from ews_contracts.live import LiveDevice, live_key
from ews_contracts.profiles import load_profiles
from ews_contracts.quantities import Quantity
from ews_contracts.settings import BUNDLED_DEMO_SITE, Settings
from ews_contracts.site import Site, load_site
from ews_fieldbus import ModbusGateway
from ews_poller.service import Poller
from ews_runtime.servers import free_port
from ews_simulator import SimulatedSite

pytestmark = pytest.mark.integration

PROFILES = load_profiles()
DEVICES = ["m1", "e2", "water", "gas", "ev1"]
EA = Quantity.ENERGY_ACTIVE_IMPORT


def demo_site(port: int) -> Site:
    data = load_site(BUNDLED_DEMO_SITE).model_dump()
    data["devices"] = [d for d in data["devices"] if d["id"] in DEVICES]  # the demo's first five
    data["virtual_devices"] = []  # the demo's virtual device needs gen1
    data["gateways"][0].update(port=port, timeout=0.5, retries=0)
    return Site.model_validate(data)


class Events:
    """Every message of EWS_READINGS, read through an ordered JetStream consumer."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def start(self, nats_url: str, subjects: str = "ews.demo.>") -> None:
        self.nc = await nats.connect(nats_url)
        js = self.nc.jetstream()
        for _ in range(100):  # the poller creates the stream at start
            try:
                await js.stream_info("EWS_READINGS")
                break
            except nats.js.errors.NotFoundError:
                await asyncio.sleep(0.05)

        async def on_msg(msg) -> None:
            self.messages.append(msg)

        await js.subscribe(subjects, cb=on_msg, ordered_consumer=True, stream="EWS_READINGS")

    async def close(self) -> None:
        await self.nc.close()

    def readings(self, device: str | None = None) -> list[tuple[Any, ReadingTaken]]:
        return [
            (m, ReadingTaken.model_validate_json(m.data))
            for m in self.messages
            if ".reading." in m.subject and (device is None or m.subject.endswith(f".{device}"))
        ]

    def statuses(self, device: str | None = None) -> list[DeviceStatusChanged]:
        return [
            DeviceStatusChanged.model_validate_json(m.data)
            for m in self.messages
            if ".status." in m.subject and (device is None or m.subject.endswith(f".{device}"))
        ]

    async def until(self, check: Callable[[], Any], within: float, what: str) -> Any:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if result := check():
                return result
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"timed out after {within} s waiting for {what} ({len(self.messages)} messages: {[m.subject for m in self.messages[-5:]]})"
        )


@pytest.fixture
async def stack(nats_url: str, redis_clean: str, tmp_path):
    port = free_port()
    site = demo_site(port)
    simulator = SimulatedSite(site, PROFILES, "127.0.0.1", tick=0.1)
    await simulator.start()
    settings = Settings(NATS_URL=nats_url, REDIS_URL=redis_clean, EWS_DATA_DIR=str(tmp_path))
    poller = Poller(settings, site=site, profiles=PROFILES, poll_interval=0.2)
    await poller.start()
    events = Events()
    await events.start(nats_url)
    redis = aioredis.from_url(redis_clean)
    try:
        yield simulator, poller, events, redis
    finally:
        await events.close()
        await poller.stop()
        await simulator.stop()
        await redis.aclose()


async def live(redis, device: str) -> LiveDevice | None:
    raw = await redis.get(live_key("demo", device))
    return None if raw is None else LiveDevice.model_validate_json(raw)


async def test_readings_reach_jetstream_with_the_simulator_values(stack):
    simulator, poller, events, redis = stack
    await events.until(lambda: all(events.readings(d) for d in DEVICES), 5, "a reading of every device")
    for msg, reading in events.readings():
        assert msg.subject == f"ews.demo.reading.{reading.device}"
        assert msg.headers["Nats-Msg-Id"] == reading.event_id
        assert reading.event_id == ReadingTaken.id_for("demo", reading.device, reading.occurred_at)
        assert reading.site == "demo"
    first = {s.device: s for s in events.statuses()}
    assert {d: (s.state, s.previous) for d, s in first.items()} == {d: ("on", None) for d in DEVICES}

    # frozen: the next readings carry exactly what the simulator's registers say
    simulator.freeze()
    frozen_at = time.time()
    await events.until(
        lambda: all(
            any(r.occurred_at.timestamp() > frozen_at + 0.05 for _, r in events.readings(d)) for d in DEVICES
        ),
        5,
        "readings after the freeze",
    )
    latest = {r.device: r for _, r in events.readings()}
    for device in ("m1", "e2", "ev1"):
        assert latest[device].values[EA] == simulator.counter(device, EA), device
    assert latest["water"].values["pulse_count"] == simulator.counter("water", Quantity.PULSE_COUNT)
    assert latest["water"].values["water_volume"] == simulator.counter("water", Quantity.WATER_VOLUME)
    assert latest["gas"].values["gas_volume"] == simulator.counter("gas", Quantity.GAS_VOLUME)
    assert latest["m1"].values["power_active"] == simulator.value("m1", Quantity.POWER_ACTIVE)
    assert set(latest["m1"].values) == {
        str(r.quantity) for r in PROFILES["multifunction-meter-412045"].registers
    }
    assert latest["ev1"].states["charger"] == simulator.state("ev1", "charger")

    # live state in Redis
    async def live_matches() -> bool:
        state = await live(redis, "m1")
        return state is not None and state.values.get(EA) == simulator.counter("m1", EA)

    deadline = time.monotonic() + 3
    while not await live_matches():
        assert time.monotonic() < deadline, await live(redis, "m1")
        await asyncio.sleep(0.05)
    m1 = await live(redis, "m1")
    assert m1.state == "on" and m1.reason == "" and m1.updated_at is not None
    ev1 = await live(redis, "ev1")
    assert ev1.states["charger"] == simulator.state("ev1", "charger")
    assert poller.published == len(events.messages)


async def test_charger_state_change_publishes_a_status(stack):
    simulator, poller, events, redis = stack
    simulator.set_state("ev1", "charger", "available")
    await events.until(
        lambda: events.readings("ev1") and events.readings("ev1")[-1][1].states["charger"] == "available",
        5,
        "ev1 available",
    )
    gw = ModbusGateway("127.0.0.1", simulator.site.gateways[0].port, timeout=1.0, retries=0)
    try:
        await gw.write_register(8, 11, 1)  # what the commands service does for charge=start
    finally:
        await gw.close()
    change = await events.until(
        lambda: next((s for s in events.statuses("ev1") if s.states.get("charger") == "charging"), None),
        3,
        "a DeviceStatusChanged with charger=charging",
    )
    assert change.state == "on" and change.previous == "on" and change.states["charge_process"] == "start"
    reading = await events.until(
        lambda: next((r for _, r in events.readings("ev1") if r.values["power_active"] > 0), None),
        3,
        "ev1 power",
    )
    assert reading.states["charger"] == "charging"


async def test_simulator_down_gives_comm_error_then_recovery(stack):
    simulator, poller, events, redis = stack
    await events.until(lambda: all(events.statuses(d) for d in DEVICES), 5, "every device on")
    await simulator.stop()
    down = await events.until(
        lambda: (
            (found := {s.device: s for s in events.statuses() if s.state == "comm-error"})
            and len(found) == 5
            and found
        ),
        10,
        "comm-error for every device",
    )
    for status in down.values():
        assert status.previous == "on"
        assert "cannot connect" in status.reason or "127.0.0.1" in status.reason, status.reason
        assert "\n" not in status.reason

    async def live_down() -> bool:
        states = [await live(redis, d) for d in DEVICES]
        return all(s is not None and s.state == "comm-error" for s in states)

    deadline = time.monotonic() + 3
    while not await live_down():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    kept = await live(redis, "m1")
    assert kept.values  # the last values stay visible while the device is away
    assert kept.reason == down["m1"].reason

    # the devices come back (a new simulator on the same port)
    async with SimulatedSite(simulator.site, PROFILES, "127.0.0.1") as again:
        back = await events.until(
            lambda: (
                (found := {s.device: s for s in events.statuses() if s.previous == "comm-error"})
                and len(found) == 5
                and found
            ),
            10,
            "recovery of every device",
        )
        assert {d: s.state for d, s in back.items()} == {d: "on" for d in DEVICES}
        again.freeze()
        frozen_at = time.time()
        await events.until(
            lambda: any(r.occurred_at.timestamp() > frozen_at + 0.05 for _, r in events.readings("m1")),
            5,
            "m1",
        )
        assert events.readings("m1")[-1][1].values[EA] == again.counter("m1", EA)
    # each device went down once and came back once
    for device in DEVICES:
        assert [s.state for s in events.statuses(device)] == ["on", "comm-error", "on"], device


async def test_serve_target_and_dead_services_do_not_stop_polling(tmp_path, redis_url):
    """NATS unreachable and a dead gateway: the loop goes on; readings flow once NATS is there."""
    from ews_poller.service import serve
    from ews_runtime.servers import NatsServer

    nats_port = free_port()
    port = free_port()
    site = demo_site(port)
    site_file = tmp_path / "site.yaml"
    site_file.write_text(site.model_dump_json())
    settings = Settings(
        NATS_URL=f"nats://127.0.0.1:{nats_port}",
        REDIS_URL=redis_url,
        EWS_DATA_DIR=str(tmp_path),
        EWS_SITE_FILE=str(site_file),
        EWS_POLL_INTERVAL="0.2",
    )
    async with SimulatedSite(site, PROFILES, "127.0.0.1") as simulator:
        task = asyncio.create_task(serve(settings))
        await asyncio.sleep(1.0)  # polling while NATS is not there
        assert not task.done()
        with NatsServer(tmp_path / "js", nats_port, log=tmp_path / "nats.log") as server:
            events = Events()
            await events.start(server.url)
            try:
                await events.until(lambda: len(events.readings("m1")) >= 3, 10, "readings once NATS is up")
                # readings polled while NATS was away were queued and published in order
                times = [r.occurred_at for _, r in events.readings("m1")]
                assert times == sorted(times)
                assert times[0].timestamp() < time.time() - 0.5
                simulator.freeze()
                frozen_at = time.time()
                await events.until(
                    lambda: any(
                        r.occurred_at.timestamp() > frozen_at + 0.05 for _, r in events.readings("m1")
                    ),
                    5,
                    "m1",
                )
                assert events.readings("m1")[-1][1].values[EA] == simulator.counter("m1", EA)
            finally:
                await events.close()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(task, 20)  # stop() is bounded: never the suite's 300 s timeout
    raw = json.loads(await aioredis.from_url(redis_url).get(live_key("demo", "m1")))
    assert raw["state"] == "on"


async def test_redis_away_does_not_stop_readings(nats_url, tmp_path, caplog):
    port = free_port()
    site = demo_site(port)
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    settings = Settings(NATS_URL=nats_url, REDIS_URL=dead_redis, EWS_DATA_DIR=str(tmp_path))
    async with SimulatedSite(site, PROFILES, "127.0.0.1"):
        poller = Poller(settings, site=site, profiles=PROFILES, poll_interval=0.1)
        await poller.start()
        events = Events()
        await events.start(nats_url)
        try:
            await events.until(lambda: len(events.readings("m1")) >= 10, 5, "readings while Redis is away")
        finally:
            await events.close()
            await poller.stop()
    redis_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("redis:")]
    assert len(redis_lines) == 1, redis_lines  # one line, not one per poll
    assert redis_lines[0].startswith("redis: writing live state failed, will retry: ")
    assert "\n" not in redis_lines[0]
