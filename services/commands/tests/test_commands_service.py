"""Commands service against a real nats-server, the bus owner (the poller's command runner, answering on
NATS) and a real Modbus TCP server (pymodbus) holding EV stations. The poller does not poll here (its
polls interleaving with commands are tested in tests/e2e/test_one_owner_per_bus.py)."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import nats
import pytest
from ews_commands.service import CommandsService
from ews_contracts.bus import make_broker, publish_event
from ews_contracts.events import CommandCompleted, CommandExpired, CommandFailed, CommandRequested
from ews_contracts.settings import Settings
from ews_contracts.site import Site
from ews_fieldbus import ModbusGateway
from ews_poller.execute import CommandJournal
from ews_poller.rpc import serve_requests
from ews_poller.service import Poller
from ews_runtime.servers import free_port
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

pytestmark = pytest.mark.integration

SITE_ID = "t1"
CHARGE = 11  # ev-station-greenup: charge_process register (0 wait, 1 start)
PRIORITY = 12


@dataclass
class Bus:
    """A real Modbus TCP server with EV stations at units 8 and 9; it records every request it serves."""

    port: int
    delay: float = 0.0
    stuck: set[tuple[int, int]] = field(default_factory=set)  # (unit, address) whose writes do not take
    log: list[tuple[str, int, int, int]] = field(default_factory=list)  # (enter|exit, unit, fc, address)

    async def action(self, unit, function_code, start_address, address, count, registers, set_values):
        if function_code == 6 and set_values is None:
            return None  # pymodbus reads the register back to build its FC6 echo: not a request
        self.log.append(("enter", unit, function_code, address))
        if set_values is not None and (unit, address) in self.stuck:
            set_values[:] = registers[address - start_address : address - start_address + len(set_values)]
        if self.delay:
            await asyncio.sleep(self.delay)
        self.log.append(("exit", unit, function_code, address))
        return None

    def writes(self) -> list[tuple[int, int]]:
        return [(u, a) for kind, u, fc, a in self.log if kind == "enter" and fc == 6]


@pytest.fixture
async def modbus() -> AsyncIterator[Bus]:
    bus = Bus(port=free_port())
    devices = [
        SimDevice(
            unit,
            simdata=[SimData(0, count=32, values=0, datatype=DataType.REGISTERS)],
            action=functools.partial(bus.action, unit),
        )
        for unit in (8, 9)
    ]
    server = ModbusTcpServer(devices, address=("127.0.0.1", bus.port))
    await server.serve_forever(background=True)
    try:
        yield bus
    finally:
        await server.shutdown()


def make_site(modbus_port: int, dead_port: int) -> Site:
    ev = {"profile": "ev-station-greenup"}
    return Site.model_validate(
        {
            "site": SITE_ID,
            "name": "commands test",
            "tariffs": [{"effective_from": "2020-01-01", "electricity_per_kwh": 0.2}],
            "gateways": [
                {"id": "gw1", "host": "127.0.0.1", "port": modbus_port, "timeout": 1.0, "retries": 0},
                {"id": "gw2", "host": "127.0.0.1", "port": dead_port, "timeout": 0.5, "retries": 0},
            ],
            "devices": [
                {"id": "ev1", "name": "EV 1", "gateway": "gw1", "address": 8, **ev},
                {"id": "ev2", "name": "EV 2", "gateway": "gw1", "address": 9, **ev},
                {"id": "ev3", "name": "EV behind a dead gateway", "gateway": "gw2", "address": 8, **ev},
                {
                    "id": "evoff",
                    "name": "EV disabled",
                    "gateway": "gw1",
                    "address": 10,
                    "enabled": False,
                    **ev,
                },
                {
                    "id": "m1",
                    "name": "Meter",
                    "gateway": "gw1",
                    "address": 1,
                    "profile": "energy-meter-rs485-3ph",
                },
            ],
        }
    )


class Harness:
    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self.outcomes: asyncio.Queue[CommandCompleted | CommandFailed | CommandExpired] = asyncio.Queue()

    async def __aenter__(self) -> Harness:
        self.broker = make_broker(self.nats_url, "test-client")
        await self.broker.connect()
        self.nc = await nats.connect(self.nats_url)

        async def on_outcome(msg) -> None:
            data = json.loads(msg.data)
            kind = msg.subject.split(".")[2]
            model = {"command-completed": CommandCompleted, "command-expired": CommandExpired}.get(
                kind, CommandFailed
            )
            await self.outcomes.put(model.model_validate(data))

        for kind in ("completed", "failed", "expired"):
            await self.nc.subscribe(f"ews.{SITE_ID}.command-{kind}.*", cb=on_outcome)
        await self.nc.flush()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.nc.close()
        await self.broker.stop()

    async def request(self, device: str, action: str, value: str | None = None, **kw) -> CommandRequested:
        req = CommandRequested(
            site=SITE_ID, device=device, action=action, value=value, requested_by="greenUp", **kw
        )
        await publish_event(self.broker, req)
        return req

    async def outcome(self, within: float = 5.0) -> CommandCompleted | CommandFailed:
        return await asyncio.wait_for(self.outcomes.get(), within)

    async def outcome_for(self, request: CommandRequested) -> CommandCompleted | CommandFailed:
        got = await self.outcome()
        assert got.command_id == request.command_id, got
        return got


class BusOwner:
    """The poller's request/reply side (its command runner), started and stopped at will."""

    def __init__(self, settings: Settings, site: Site) -> None:
        self.poller = Poller(settings, site=site)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(
            serve_requests(self.poller, self.poller.commands, self.poller.settings.nats_url)
        )
        nc = await nats.connect(self.poller.settings.nats_url)
        try:
            for _ in range(200):  # until it answers
                try:
                    await nc.request(f"ews.{SITE_ID}.rpc-poller.execute", b"{}", timeout=0.5)
                    return
                except (nats.errors.NoRespondersError, TimeoutError):
                    await asyncio.sleep(0.05)
        finally:
            await nc.close()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.poller.stop()


@pytest.fixture
async def owner(nats_url: str, modbus: Bus, tmp_path) -> AsyncIterator[BusOwner]:
    settings = Settings(NATS_URL=nats_url, EWS_DATA_DIR=str(tmp_path))
    bus_owner = BusOwner(settings, make_site(modbus.port, DEAD_PORT))
    await bus_owner.start()
    try:
        yield bus_owner
    finally:
        await bus_owner.stop()


DEAD_PORT = free_port()


@pytest.fixture
async def harness(
    nats_url: str, modbus: Bus, owner: BusOwner, tmp_path
) -> AsyncIterator[tuple[Harness, CommandsService, Bus]]:
    settings = Settings(NATS_URL=nats_url, EWS_DATA_DIR=str(tmp_path))
    service = CommandsService(settings, site=make_site(modbus.port, DEAD_PORT))
    await service.start()
    try:
        async with Harness(nats_url) as h:
            yield h, service, modbus
    finally:
        await service.stop()


async def read_register(port: int, unit: int, address: int) -> int:
    gw = ModbusGateway("127.0.0.1", port, timeout=1.0, retries=0, name="checker")
    try:
        return (await gw.read(unit, 3, address, 1))[0]
    finally:
        await gw.close()


async def test_charge_start_then_wait_writes_and_reads_back(harness) -> None:
    h, _, bus = harness
    start = await h.request("ev1", "charge", "start")
    done = await h.outcome_for(start)
    assert isinstance(done, CommandCompleted)
    assert (done.value, done.readback, done.event_id) == ("start", "start", f"{start.command_id}.outcome")
    # the write (FC6) then its read-back (FC3) of the same register
    assert [(u, fc, a) for kind, u, fc, a in bus.log if kind == "enter"] == [(8, 6, CHARGE), (8, 3, CHARGE)]
    assert await read_register(bus.port, 8, CHARGE) == 1

    wait = await h.request("ev1", "charge", "wait")
    done = await h.outcome_for(wait)
    assert isinstance(done, CommandCompleted) and done.readback == "wait"
    assert await read_register(bus.port, 8, CHARGE) == 0


@pytest.mark.parametrize(
    ("device", "action", "value", "expected"),
    [
        (
            "ev1",
            "boost",
            "on",
            "has no command 'boost'; declared: charge, priority, ev-socket, domestic-socket",
        ),
        ("ev1", "charge", "go", "does not accept 'go'; allowed: start, wait"),
        ("ev1", "charge", None, "needs a value: one of start, wait"),
        ("m1", "charge", "start", "accepts no commands"),
        ("nope", "charge", "start", "unknown device 'nope'"),
        ("evoff", "charge", "start", "is disabled"),
    ],
)
async def test_refused_commands_fail_without_writing(harness, device, action, value, expected) -> None:
    h, _, bus = harness
    req = await h.request(device, action, value)
    out = await h.outcome_for(req)
    assert isinstance(out, CommandFailed)
    assert expected in out.error and "\n" not in out.error
    assert bus.writes() == []


async def test_unreachable_gateway_fails(harness) -> None:
    h, _, bus = harness
    req = await h.request("ev3", "charge", "start")
    out = await h.outcome_for(req)
    assert isinstance(out, CommandFailed)
    assert out.error.startswith("write failed: gw2: cannot connect"), out.error
    # the other gateway still works
    ok = await h.outcome_for(await h.request("ev1", "priority", "priority"))
    assert isinstance(ok, CommandCompleted)
    assert await read_register(bus.port, 8, PRIORITY) == 1


async def test_readback_mismatch_fails(harness) -> None:
    h, _, bus = harness
    bus.stuck.add((9, CHARGE))
    out = await h.outcome_for(await h.request("ev2", "charge", "start"))
    assert isinstance(out, CommandFailed)
    assert "read-back of register 11 on unit 9 is 0 (wait), differs from the 1 (start) written" in out.error


async def test_commands_on_one_gateway_never_overlap(harness) -> None:
    h, _, bus = harness
    bus.delay = 0.05
    requests = [
        await h.request("ev1", "charge", "start"),
        await h.request("ev2", "charge", "start"),
        await h.request("ev1", "priority", "priority"),
        await h.request("ev2", "charge", "wait"),
    ]
    outcomes = [await h.outcome() for _ in requests]
    assert [o.command_id for o in outcomes] == [r.command_id for r in requests]  # FIFO per gateway
    assert all(isinstance(o, CommandCompleted) for o in outcomes)
    # the server never had two transactions in flight ...
    depth = 0
    for kind, *_ in bus.log:
        depth += 1 if kind == "enter" else -1
        assert depth in (0, 1), bus.log
    # ... and each command's write is immediately followed by its own read-back
    served = [(u, fc, a) for kind, u, fc, a in bus.log if kind == "enter"]
    assert served == [
        (8, 6, CHARGE),
        (8, 3, CHARGE),
        (9, 6, CHARGE),
        (9, 3, CHARGE),
        (8, 6, PRIORITY),
        (8, 3, PRIORITY),
        (9, 6, CHARGE),
        (9, 3, CHARGE),
    ]
    assert await read_register(bus.port, 9, CHARGE) == 0


async def test_redelivered_request_records_one_outcome_and_writes_once(harness) -> None:
    h, service, bus = harness
    first = await h.request("ev1", "charge", "start")
    assert isinstance(await h.outcome_for(first), CommandCompleted)
    # the same command again under a new message id (JetStream does not dedupe it as a request)
    await h.request("ev1", "charge", "start", command_id=first.command_id)
    again = await h.outcome_for(first)
    assert again.event_id == f"{first.command_id}.outcome"
    assert bus.writes() == [(8, CHARGE)]
    js = h.nc.jetstream()
    info = await js.stream_info("EWS_COMMANDS", subjects_filter=f"ews.{SITE_ID}.command-completed.*")
    assert info.state.subjects == {f"ews.{SITE_ID}.command-completed.ev1": 1}


async def test_expired_and_malformed_requests_fail_cleanly(harness) -> None:
    h, _, bus = harness
    old = await h.request("ev1", "charge", "start", occurred_at=datetime.now(UTC) - timedelta(hours=1))
    out = await h.outcome_for(old)
    assert isinstance(out, CommandExpired), out
    assert out.error.startswith("not executed: it reached the bus owner after its deadline"), out.error
    assert out.deadline == old.occurred_at + timedelta(seconds=30)

    js = h.nc.jetstream()
    await js.publish(f"ews.{SITE_ID}.command-requested.ev1", b"\xff not json")
    await js.publish(
        f"ews.{SITE_ID}.command-requested.ev1",
        json.dumps(
            {"command_id": "c-bad", "device": "ev1", "action": "charge", "site": SITE_ID, "value": 7}
        ).encode(),
    )
    out = await h.outcome()
    assert isinstance(out, CommandFailed) and out.command_id == "c-bad"
    assert out.error.startswith("malformed CommandRequested: value:"), out.error
    # the consumer is still alive
    ok = await h.outcome_for(await h.request("ev1", "charge", "wait"))
    assert isinstance(ok, CommandCompleted)
    assert bus.writes() == [(8, CHARGE)]


async def test_a_command_while_the_bus_owner_is_away_expires_and_is_never_written_later(
    nats_url: str, modbus: Bus, tmp_path
) -> None:
    settings = Settings(NATS_URL=nats_url, EWS_DATA_DIR=str(tmp_path))
    site = make_site(modbus.port, DEAD_PORT)
    service = CommandsService(settings, site=site)
    await service.start()
    owner = BusOwner(settings, site)
    try:
        async with Harness(nats_url) as h:
            deadline = datetime.now(UTC) + timedelta(seconds=1.5)
            req = await h.request("ev1", "charge", "start", deadline=deadline)
            out = await h.outcome_for(req)
            assert isinstance(out, CommandExpired), out
            assert "the bus owner (poller) did not answer before the deadline" in out.error
            assert datetime.now(UTC) >= deadline
            # the bus owner comes back: the expired command is not sent again, nothing is written
            await owner.start()
            await asyncio.sleep(1.0)
            assert modbus.writes() == []
            # ... and one asked of it after its deadline (a redelivery) is refused, never written
            reply = await h.nc.request(
                f"ews.{SITE_ID}.rpc-poller.execute",
                json.dumps(
                    {
                        "command_id": req.command_id,
                        "device": "ev1",
                        "action": "charge",
                        "value": "start",
                        "deadline": deadline.isoformat(),
                    }
                ).encode(),
                timeout=5,
            )
            assert json.loads(reply.data)["status"] == "expired"
            # a new command goes through
            ok = await h.outcome_for(await h.request("ev1", "charge", "start"))
            assert isinstance(ok, CommandCompleted)
            assert modbus.writes() == [(8, CHARGE)]
    finally:
        await owner.stop()
        await service.stop()


async def test_the_bus_owner_executes_a_command_id_once(harness, owner: BusOwner) -> None:
    """Asked again with the same id (a lost reply, a restarted commands service): the first answer, no
    second write — even while the first is still waiting for its bus."""
    h, _, bus = harness
    bus.delay = 0.3
    body = json.dumps(
        {
            "command_id": "c-once",
            "device": "ev1",
            "action": "charge",
            "value": "start",
            "deadline": (datetime.now(UTC) + timedelta(seconds=20)).isoformat(),
        }
    ).encode()
    replies = await asyncio.gather(
        *(h.nc.request(f"ews.{SITE_ID}.rpc-poller.execute", body, timeout=10) for _ in range(3))
    )
    again = await h.nc.request(f"ews.{SITE_ID}.rpc-poller.execute", body, timeout=10)
    answers = [json.loads(r.data) for r in (*replies, again)]
    assert {(a["status"], a["readback"]) for a in answers} == {("written", 1)}
    assert bus.writes() == [(8, CHARGE)]
    assert owner.poller.commands.written == 1


async def test_serve_target_runs_until_cancelled(
    nats_url: str, modbus: Bus, owner: BusOwner, tmp_path
) -> None:
    """The `commands` target as `ews run commands` starts it: settings only (site file from EWS_SITE_FILE)."""
    from ews_commands.service import serve

    site_file = tmp_path / "site.yaml"
    site_file.write_text(make_site(modbus.port, DEAD_PORT).model_dump_json())  # JSON is YAML
    settings = Settings(NATS_URL=nats_url, EWS_DATA_DIR=str(tmp_path), EWS_SITE_FILE=str(site_file))
    task = asyncio.create_task(serve(settings))
    async with Harness(nats_url) as h:
        js = h.nc.jetstream()
        for _ in range(100):  # until the durable consumer exists
            try:
                await js.consumer_info("EWS_COMMANDS", f"commands-{SITE_ID}")
                break
            except nats.js.errors.NotFoundError:
                assert not task.done(), task
                await asyncio.sleep(0.05)
        out = await h.outcome_for(await h.request("ev2", "domestic-socket", "enable"))
        assert isinstance(out, CommandCompleted) and out.readback == "enable"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await read_register(modbus.port, 9, 14) == 1


def _execute_body(command_id: str, value: str = "start") -> bytes:
    deadline = (datetime.now(UTC) + timedelta(seconds=20)).isoformat()
    return json.dumps(
        {"command_id": command_id, "device": "ev1", "action": "charge", "value": value, "deadline": deadline}
    ).encode()


async def test_a_restarted_bus_owner_never_writes_a_command_twice(
    nats_url: str, modbus: Bus, tmp_path
) -> None:
    """The bus owner keeps its answers on disk: after a restart it answers a known command id without
    writing; a command it was killed in the middle of (started, never answered) is settled by reading the
    register back — written if it holds the value, else 'not written' — never by a second write."""
    settings = Settings(NATS_URL=nats_url, EWS_DATA_DIR=str(tmp_path))
    site = make_site(modbus.port, DEAD_PORT)
    journal = tmp_path / "poller" / "commands.jsonl"
    subject = f"ews.{SITE_ID}.rpc-poller.execute"
    first = BusOwner(settings, site)
    await first.start()
    nc = await nats.connect(nats_url)
    try:
        answer = json.loads((await nc.request(subject, _execute_body("c-done"), timeout=10)).data)
        assert (answer["status"], answer["readback"]) == ("written", 1)
        await first.stop()
        assert modbus.writes() == [(8, CHARGE)]
        # killed between the write and its answer: the journal holds a "started" line only
        with journal.open("a") as out:
            out.write(json.dumps({"id": "c-took"}) + "\n")  # its write took effect (the register is 1)
            out.write(json.dumps({"id": "c-lost"}) + "\n")  # its write did not (wait=0 is not there)
            out.write('{"id": "c-cut", "ans')  # a line cut by the crash
        second = BusOwner(settings, site)
        await second.start()
        try:
            again = json.loads((await nc.request(subject, _execute_body("c-done"), timeout=10)).data)
            assert again == answer
            took = json.loads((await nc.request(subject, _execute_body("c-took"), timeout=10)).data)
            assert (took["status"], took["readback"]) == ("written", 1)
            lost = json.loads((await nc.request(subject, _execute_body("c-lost", "wait"), timeout=10)).data)
            assert lost["status"] == "failed" and "not written" in lost["error"], lost
            assert modbus.writes() == [(8, CHARGE)]  # still the one write of c-done
            assert second.poller.commands.written == 0
        finally:
            await second.stop()
        # and the settled answers are kept too
        kept = CommandJournal(journal)
        assert {"c-done", "c-took", "c-lost"} <= set(kept.answers) and not kept.interrupted
    finally:
        await nc.close()
