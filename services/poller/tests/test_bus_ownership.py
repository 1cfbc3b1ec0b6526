"""One owner per bus, through test reads and live reconfiguration: the simulator (a real pymodbus TCP server)
counts the connections it accepts and the most open at once; a real poller with real nats-server and
redis-server. A test read on a configured gateway's host and port goes through that gateway's connection,
whatever the id in the form; a gateway renamed or changed live closes its connection before the new one
opens; a transaction asked on a closed client fails "not sent" instead of opening it again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from ews_contracts.events import ProbeRequest
from ews_contracts.settings import Settings
from ews_contracts.site import Site
from ews_fieldbus import FieldbusError
from ews_poller import service
from ews_poller.probe import test_device as probe
from ews_poller.service import Poller
from ews_runtime.servers import free_port
from ews_simulator import SimulatedSite

from .test_bus import PROFILES, site

pytestmark = pytest.mark.integration

METER = {"id": "a", "name": "A", "profile": "energy-meter-rs485-1ph", "address": 2}


def one_gateway(port: int, gateway_id: str = "gw1", **gateway: object) -> Site:
    return site(
        [{"id": gateway_id, "host": "127.0.0.1", "port": port, "timeout": 0.5, "retries": 0, **gateway}],
        [{**METER, "gateway": gateway_id}],
    )


async def until(condition, within: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def running(nats_url: str, redis_clean: str, tmp_path) -> AsyncIterator[tuple[Poller, SimulatedSite]]:
    """A poller polling gw1 (one meter) every 0.2 s, the simulator serving gw1's host and port."""
    s = one_gateway(free_port())
    settings = Settings(NATS_URL=nats_url, REDIS_URL=redis_clean, EWS_DATA_DIR=str(tmp_path))
    poller = Poller(settings, site=s, profiles=PROFILES, poll_interval=0.2)
    async with SimulatedSite(s, PROFILES) as sim:
        await poller.start()
        try:
            await until(lambda: poller.rounds.get("gw1", 0) >= 2, 10, "gw1 polled")
            assert sim.connections("gw1") == (1, 1)
            yield poller, sim
        finally:
            await poller.stop()


def polled(poller: Poller, gateway_id: str) -> bool:
    return bool(poller.targets.get(gateway_id)) and poller.targets[gateway_id][0].live.state == "on"


async def test_a_test_read_on_a_configured_endpoint_uses_its_connection(running) -> None:
    poller, sim = running
    port = poller.site.gateways[0].port
    # a gateway new in the form (id gw9), on gw1's host and port: read through gw1's connection
    new = {"id": "gw9", "host": "127.0.0.1", "port": port, "timeout": 2.0}
    reply = await probe(poller, ProbeRequest(device={**METER, "gateway": "gw9"}, gateway=new))
    assert reply.ok, reply.error
    assert reply.transactions >= 1 and reply.values
    # the same read with the configured gateway, changed in the form (timeout): the same connection
    changed = {"id": "gw1", "host": "127.0.0.1", "port": port, "timeout": 3.0}
    reply = await probe(poller, ProbeRequest(device={**METER, "gateway": "gw1"}, gateway=changed))
    assert reply.ok, reply.error
    assert sim.connections("gw1") == (1, 1)
    # another framing on that host and port: refused with the reason, no connection opened
    for form in (
        {**new, "transport": "rtu-over-tcp"},
        {**changed, "transport": "rtu-over-tcp"},
    ):
        reply = await probe(poller, ProbeRequest(device={**METER, "gateway": form["id"]}, gateway=form))
        assert not reply.ok and reply.transactions == 0
        assert reply.error == (
            f"gateway {form['id']!r} is on 127.0.0.1:{port} as rtu-over-tcp, but the poller holds it for "
            "gateway 'gw1' as tcp: save the gateway first, then test (the bus is never opened twice)"
        )
    rounds = poller.rounds["gw1"]
    await until(lambda: poller.rounds["gw1"] >= rounds + 2, 5, "gw1 still polled")
    assert sim.connections("gw1") == (1, 1)  # one connection, accepted once

    # a gateway on a line no one holds still gets a read of its own (and says why it failed)
    elsewhere = {"id": "gw8", "host": "127.0.0.1", "port": free_port(), "timeout": 0.3, "retries": 0}
    reply = await probe(poller, ProbeRequest(device={**METER, "gateway": "gw8"}, gateway=elsewhere))
    assert not reply.ok and "cannot connect" in reply.error


async def test_a_gateway_renamed_live_never_opens_a_second_connection(running) -> None:
    poller, sim = running
    port = poller.site.gateways[0].port
    for n in range(3):  # gw1 -> gw2 -> gw3 -> gw4, the same host and port; a new id each time
        renamed = one_gateway(port, f"gw{n + 2}")
        await poller.apply_site(renamed)
        await until(lambda: polled(poller, f"gw{n + 2}"), 10, f"gw{n + 2} polled")  # noqa: B023
        rounds = poller.rounds[f"gw{n + 2}"]
        await until(lambda: poller.rounds[f"gw{n + 2}"] >= rounds + 2, 5, "polled on")  # noqa: B023
    # changed settings (a timeout) under the same id: closed, then opened again
    await poller.apply_site(one_gateway(port, "gw4", timeout=0.7))
    rounds = poller.rounds["gw4"]
    await until(lambda: poller.rounds["gw4"] >= rounds + 2, 5, "gw4 polled again")
    assert sim.connections("gw1") == (5, 1)  # one connection per configuration, never two at once


async def test_reconfiguration_closes_a_bus_between_two_transactions(running, monkeypatch) -> None:
    poller, sim = running
    port = poller.site.gateways[0].port
    old = poller.bus(poller.site.gateways[0])
    block = poller.targets["gw1"][0].reads[0]
    released = asyncio.Event()

    async def command() -> list[int]:  # a command's write and read-back: it holds the bus
        async with old.hold():
            await released.wait()
            return await old.read(2, block.fc, block.address, block.count)

    holding = asyncio.create_task(command())
    await until(lambda: old.lock.locked() and old._holder is holding, 5, "the command holds the bus")
    applying = asyncio.create_task(poller.apply_site(one_gateway(port, "gw2")))
    await asyncio.sleep(0.5)
    # the old connection waits for the command; the new gateway has not connected meanwhile
    assert not applying.done() and sim.connections("gw1") == (1, 1)
    released.set()
    assert len(await holding) == block.count  # the hold in progress finishes on the old connection
    await asyncio.wait_for(applying, 5)
    await until(lambda: polled(poller, "gw2"), 10, "gw2 polled")
    # a transaction asked later on the closed client is not sent: it never opens the bus again
    with pytest.raises(FieldbusError, match="not sent: the connection to 127.0.0.1:.* was closed"):
        await old.read(2, block.fc, block.address, block.count)
    async with old.hold():
        with pytest.raises(FieldbusError, match="not sent"):
            await old.write_register(2, 0, 1)
    assert sim.connections("gw1") == (2, 1)

    # a stuck transaction cannot hang reconfiguration: closed under it after STOP_TIMEOUT
    monkeypatch.setattr(service, "STOP_TIMEOUT", 0.5)
    current = poller.bus(poller.site.gateways[0])
    stuck = asyncio.Event()

    async def stuck_command() -> None:
        async with current.hold():
            await stuck.wait()

    holder = asyncio.create_task(stuck_command())
    try:
        await until(lambda: current._holder is holder, 5, "the stuck command holds the bus")
        started = time.monotonic()
        await asyncio.wait_for(poller.apply_site(one_gateway(port, "gw3")), 5)
        assert time.monotonic() - started < 2.0
        await until(lambda: polled(poller, "gw3"), 10, "gw3 polled")
        assert sim.connections("gw1") == (3, 1)
    finally:
        stuck.set()
        await holder
