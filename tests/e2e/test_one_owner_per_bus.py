"""One owner per bus, every command executed exactly once or expired — on real parts.

- A shared RS485 line (two ptys joined by socat; the simulator's devices answer on one end, the poller
  holds the other) polled every second while commands arrive: every command completes with its
  read-back, no device goes to communication error, no transaction fails (a frame from a second writer
  would break a CRC or a reply).
- A TCP gateway polled, commanded and test-read at once never sees a second connection.
- Through the whole product (`ews up`): a command sent while nats-server is stalled — briefly, or longer
  than the API's publish timeout (then sent again under the same Nats-Msg-Id) — answers 202 and is
  completed once or expired, never "failed" then executed; a command whose bus owner is stalled past its
  deadline, or killed and back (restarted by `ews up`) only after it, ends expired and is never written.
- The box's metrics (one scrape of GET /metrics) count what these tests did, service by service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import nats
import pytest
from ews_commands.service import CommandsService
from ews_contracts.bus import make_broker, publish_event
from ews_contracts.events import (
    CommandCompleted,
    CommandExpired,
    CommandFailed,
    CommandRequested,
    ProbeRequest,
)
from ews_contracts.profiles import load_profiles
from ews_contracts.settings import Settings
from ews_contracts.site import Site
from ews_contracts.streamio import read_stream
from ews_contracts.streams import COMMANDS
from ews_poller.rpc import serve_requests
from ews_poller.service import Poller
from ews_runtime.servers import free_port
from ews_simulator import SimulatedSite
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    login_when_auth_answers,
    simulated_demo_env,
    start_ews,
    stop,
    supervised,
    wait_until,
)

pytestmark = pytest.mark.integration

PROFILES = load_profiles()
SITE = "bus1"
EV = "ev-station-greenup"
METER = "energy-meter-rs485-3ph"
STATE_OF = {  # command -> the state register it sets (ev-station-greenup)
    "charge": "charge_process",
    "priority": "priority",
    "domestic-socket": "domestic_socket",
    "ev-socket": "ev_socket",
}


def make_site(gateway: dict) -> Site:
    return Site.model_validate(
        {
            "site": SITE,
            "name": "one owner per bus",
            "tariffs": [{"effective_from": "2020-01-01", "electricity_per_kwh": 0.2}],
            "gateways": [{"id": "g1", "timeout": 0.5, "retries": 0, **gateway}],
            "devices": [
                {"id": "ev1", "name": "EV 1", "profile": EV, "gateway": "g1", "address": 8},
                {"id": "ev2", "name": "EV 2", "profile": EV, "gateway": "g1", "address": 9},
                {"id": "m1", "name": "Meter 1", "profile": METER, "gateway": "g1", "address": 1},
                {"id": "m2", "name": "Meter 2", "profile": METER, "gateway": "g1", "address": 2},
            ],
        }
    )


@pytest.fixture
def serial_line(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two ends of one serial line: ptys joined by socat (raw, no echo)."""
    socat = shutil.which("socat")
    assert socat, "socat is missing (make test installs it: apt-get install socat)"
    a, b = tmp_path / "ttyPoller", tmp_path / "ttyDevices"
    proc = subprocess.Popen(
        [socat, f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: (a.exists() and b.exists()) or None, 10, "socat's two ptys")
        yield str(a), str(b)
    finally:
        proc.terminate()
        proc.wait(5)


class Stack:
    """Poller (polling, answering commands and test reads) + commands service, on real NATS and Redis."""

    def __init__(self, settings: Settings, site: Site) -> None:
        self.settings = settings
        self.site = site
        self.poller = Poller(settings, site=site, profiles=PROFILES, poll_interval=1.0)
        self.commands = CommandsService(settings, site=site, profiles=PROFILES)
        self.outcomes: dict[str, CommandCompleted | CommandFailed | CommandExpired] = {}

    async def __aenter__(self) -> Stack:
        await self.poller.start()
        self.rpc = asyncio.create_task(
            serve_requests(self.poller, self.poller.commands, self.settings.nats_url)
        )
        await self.commands.start()
        self.nc = await nats.connect(self.settings.nats_url)
        models = {"completed": CommandCompleted, "failed": CommandFailed, "expired": CommandExpired}

        async def on_outcome(msg) -> None:  # noqa: ANN001
            kind = msg.subject.split(".")[2].removeprefix("command-")
            outcome = models[kind].model_validate_json(msg.data)
            self.outcomes[outcome.command_id] = outcome

        for kind in models:
            await self.nc.subscribe(f"ews.{SITE}.command-{kind}.*", cb=on_outcome)
        self.broker = make_broker(self.settings.nats_url, "test")
        await self.broker.connect()
        for _ in range(100):  # the bus owner answers
            try:
                await self.nc.request(f"ews.{SITE}.rpc-poller.execute", b"{}", timeout=0.5)
                break
            except (nats.errors.NoRespondersError, TimeoutError):
                await asyncio.sleep(0.05)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.broker.stop()
        await self.nc.close()
        await self.commands.stop()
        self.rpc.cancel()
        await asyncio.gather(self.rpc, return_exceptions=True)
        await self.poller.stop()

    async def command(
        self, device: str, action: str, value: str
    ) -> CommandCompleted | CommandFailed | CommandExpired:
        request = CommandRequested(site=SITE, device=device, action=action, value=value, requested_by="test")
        await publish_event(self.broker, request)
        for _ in range(200):
            if request.command_id in self.outcomes:
                return self.outcomes[request.command_id]
            await asyncio.sleep(0.025)
        raise AssertionError(f"no outcome for {device} {action}={value}")


@pytest.fixture
async def settings(nats_url: str, redis_clean: str, tmp_path: Path) -> AsyncIterator[Settings]:
    yield Settings(NATS_URL=nats_url, REDIS_URL=redis_clean, EWS_DATA_DIR=str(tmp_path))


async def exercise(stack: Stack, sim: SimulatedSite, seconds: float = 8.0) -> int:
    """Commands one after the other (every ~0.7 s) while the bus is polled every second; every one must
    complete with its read-back and land in the device. Returns how many were sent."""
    gateway = stack.site.gateways[0]
    await asyncio.wait_for(_rounds(stack.poller, gateway.id, 2), 20)
    plan = [
        ("ev1", "charge", "start"),
        ("ev2", "priority", "priority"),
        ("ev1", "charge", "wait"),
        ("ev2", "priority", "normal"),
        ("ev1", "domestic-socket", "enable"),
        ("ev2", "ev-socket", "disable"),
    ]
    sent = 0
    rounds_before = stack.poller.rounds[gateway.id]
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        device, action, value = plan[sent % len(plan)]
        outcome = await stack.command(device, action, value)
        assert isinstance(outcome, CommandCompleted), outcome
        assert outcome.readback == value, outcome
        state, expected = STATE_OF[action], {"enable": "enabled", "disable": "disabled"}.get(value, value)
        assert sim.state(device, state) == expected, (device, action, value)
        sent += 1
        await asyncio.sleep(0.7)
    client = stack.poller.bus(gateway)
    assert client.failures == 0, f"{client.failures} failed transactions of {client.transactions}"
    states = {t.device.id: t.tracker.state for t in stack.poller.targets[gateway.id]}
    assert all(state != "comm-error" for state in states.values()), states
    assert stack.poller.rounds[gateway.id] - rounds_before >= int(seconds) - 1  # polling kept its period
    assert stack.poller.commands.written == sent
    return sent


async def _rounds(poller: Poller, gateway_id: str, n: int) -> None:
    while poller.rounds.get(gateway_id, 0) < n:  # noqa: ASYNC110 - the poller has no event for it
        await asyncio.sleep(0.05)


@pytest.mark.timeout(120)
async def test_commands_on_a_shared_rs485_line_while_polling(settings: Settings, serial_line) -> None:
    poller_end, devices_end = serial_line
    site = make_site({"transport": "rtu", "serial": {"port": poller_end, "baudrate": 19200}})
    async with (
        SimulatedSite(site, PROFILES, serial_lines={"g1": devices_end}) as sim,
        Stack(settings, site) as stack,
    ):
        sent = await exercise(stack, sim)
        assert sent >= 8


@pytest.mark.timeout(120)
async def test_a_tcp_gateway_never_sees_a_second_connection(settings: Settings) -> None:
    site = make_site({"host": "127.0.0.1", "port": free_port()})
    async with SimulatedSite(site, PROFILES) as sim, Stack(settings, site) as stack:
        probe = ProbeRequest(device=site.devices[2].model_dump(mode="json"))
        reply = await stack.nc.request(
            f"ews.{SITE}.rpc-poller.test-device", probe.model_dump_json().encode(), timeout=10
        )
        assert json.loads(reply.data)["ok"] is True
        await exercise(stack, sim, seconds=4.0)
        assert sim.connections("g1") == (1, 1)  # one connection, accepted once, never two at a time


# --- through the whole product (`ews up` of the simulated demo site) -------------------------------------
#
# One box for the tests below (started once: ~15 s). Each test reads ev2a's priority from a fresh reading
# and commands the other value, so each stands alone; ``Box`` counts every command, sign-in and request the
# tests make, which the metrics test compares with the box's own counters.

DEMO_SITE = "demo"  # the bundled demo site's id (simulated_demo_env)
DEVICE = "ev2a"  # an ev-station-greenup of the demo site: its ``priority`` command has a read-back
OTHER = {"priority": "normal", "normal": "priority"}
PUBLISH_TIMEOUT = 5.0  # s: ews_contracts.bus.publish_event — how long the API waits for JetStream's ack
ADMIN = {"pin": "55555", "puk": "00000 5555 00000"}  # the factory administrator codes
COMMAND_ROUTE = "/api/v1/commands/{command_id}"  # a route template (its label in the metrics)


class Box:
    """A running `ews up`, an administrator's session, and what the tests did through it."""

    def __init__(self, proc: subprocess.Popen, base: str, nats_url: str, log: Path) -> None:
        self.proc, self.base, self.nats_url, self.log = proc, base, nats_url, log
        self.client = httpx.Client(base_url=base, timeout=30, headers={"Origin": base})
        self.outcomes: dict[str, str] = {}  # command id -> its final status
        self.sign_ins: Counter[str] = Counter()  # outcome -> sign-ins (ews_auth_sign_ins_total's outcomes)
        self.requests: Counter[tuple[str, str, int]] = Counter()  # (method, route template, status)

    def pid(self, part: str) -> int:
        return supervised(self.proc.pid)[part]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def sign_in(self, client: httpx.Client, codes: dict[str, str]) -> httpx.Response:
        resp = login_when_auth_answers(client, codes)
        self.requests["POST", "/api/v1/auth/login", resp.status_code] += 1
        self.sign_ins["succeeded" if resp.status_code == 200 else "refused"] += 1
        return resp

    def command(self, value: str, **extra: object) -> httpx.Response:
        body = {"device": DEVICE, "action": "priority", "value": value, **extra}
        resp = self.client.post("/api/v1/commands", json=body)
        self.requests["POST", "/api/v1/commands", resp.status_code] += 1
        return resp

    def status(self, command_id: str) -> dict:
        resp = self.client.get(f"/api/v1/commands/{command_id}")
        self.requests["GET", COMMAND_ROUTE, resp.status_code] += 1
        assert resp.status_code == 200, resp.text
        return resp.json()

    def final(self, command_id: str, within: float, seen: set[str] | None = None) -> dict:
        """The command's status once it is not ``requested`` any more (every status read goes to ``seen``)."""
        seen = seen if seen is not None else set()

        def finished() -> dict | None:
            body = self.status(command_id)
            seen.add(body["status"])
            return body if body["status"] != "requested" else None

        body = wait_until(finished, within, f"command {command_id} finished")
        self.outcomes[command_id] = body["status"]
        return body

    def reading(self, after: datetime, within: float = 30) -> dict:
        """ev2a's live view from a reading taken after ``after`` (the poller polled it since)."""

        def fresh() -> dict | None:
            d = self.client.get(f"/api/v1/devices/{DEVICE}").json()
            at = datetime.fromisoformat(d["updated_at"]) if d.get("updated_at") else None
            if at is not None and at.tzinfo is None:
                at = at.replace(tzinfo=UTC)
            return d if at is not None and at > after and d.get("states", {}).get("priority") else None

        return wait_until(fresh, within, f"a reading of {DEVICE} after {after:%H:%M:%S.%f}", interval=0.2)

    def priority(self) -> str:
        return self.reading(datetime.now(UTC))["states"]["priority"]

    def writes(self, command_id: str) -> int:
        return self.text().count(f"command {command_id}: wrote")

    def audit(self, command_id: str) -> Counter[str]:
        """The command's events in EWS_COMMANDS (the command audit log), by kind."""

        async def read() -> Counter[str]:
            nc = await nats.connect(self.nats_url)
            found: Counter[str] = Counter()
            try:
                stream = read_stream(nc, COMMANDS.name, f"ews.{DEMO_SITE}.*.{DEVICE}")
                async with contextlib.aclosing(stream) as batches:
                    async for batch in batches:
                        for msg in batch:
                            if json.loads(msg.data).get("command_id") == command_id:
                                found[msg.subject.split(".")[2]] += 1
            finally:
                await nc.close()
            return found

        return asyncio.run(read())


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    folder = tmp_path_factory.mktemp("box")
    http, nats_port, redis_port = free_port(), free_port(), free_port()
    env = simulated_demo_env(folder, http, nats_port, redis_port)
    env["EWS_DEMO_HISTORY"] = "0"
    log = folder / "up.log"
    proc = start_ews(["up"], env, log)
    box = Box(proc, f"http://127.0.0.1:{http}", f"nats://127.0.0.1:{nats_port}", log)
    try:
        wait_until(lambda: box.client.get("/ready").status_code == 200 or None, 120, "/ready 200")
        assert box.sign_in(box.client, ADMIN).status_code == 200
        # the bus owner answers commands, and the commands service consumes them (a consumer created after
        # a request was published would never see it)
        wait_until(
            lambda: "poller: answering test reads and commands" in box.text() or None, 60, "the poller"
        )
        wait_until(lambda: "commands: consuming" in box.text() or None, 60, "the commands service")
        yield box
    finally:
        box.client.close()
        stop(proc)


@pytest.mark.timeout(240)
def test_a_command_sent_during_a_short_nats_stall_completes_once(box: Box) -> None:
    """nats-server stalled 2 s (less than the publish timeout): the API gets its ack late; 202, one write."""
    value = OTHER[box.priority()]
    nats_pid = box.pid("nats-server")
    os.kill(nats_pid, signal.SIGSTOP)
    threading.Timer(2.0, os.kill, (nats_pid, signal.SIGCONT)).start()
    resp = box.command(value)
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "requested"
    command_id = resp.json()["id"]
    seen: set[str] = set()
    done = box.final(command_id, 60, seen)
    assert done["status"] == "completed" and done["readback"] == value, done
    assert seen <= {"requested", "completed"}, seen
    # a while later (the poller polled the device for 3 s more): one write, the device holds the value
    finished = datetime.now(UTC)
    assert box.reading(finished + timedelta(seconds=3))["states"]["priority"] == value
    assert box.writes(command_id) == 1
    assert box.status(command_id)["status"] == "completed"


@pytest.mark.timeout(240)
def test_a_command_across_a_nats_outage_longer_than_the_publish_timeout(box: Box) -> None:
    """nats-server stalled 8 s: the API's publish times out (not confirmed, maybe stored): 202 requested, and
    it is sent again in the background under the same Nats-Msg-Id. In the end the command is completed
    once (one request and one outcome in the audit stream, one write) or expired and never written —
    never "failed" while it is executed anyway."""
    stall = 8.0
    before = box.priority()
    value = OTHER[before]
    nats_pid = box.pid("nats-server")
    os.kill(nats_pid, signal.SIGSTOP)
    stalled = time.monotonic()
    seen: set[str] = set()
    try:
        resp = box.command(value)
        took = time.monotonic() - stalled
        assert resp.status_code == 202, resp.text
        assert resp.json()["status"] == "requested", resp.json()
        command_id = resp.json()["id"]
        assert took >= PUBLISH_TIMEOUT - 0.5, f"answered in {took:.1f} s: the publish did not time out"
        # the API took the "not confirmed" path, and the command reads requested all through the outage
        assert f"command {command_id}: CommandRequested not confirmed" in box.text()
        seen.add(box.status(command_id)["status"])
        while time.monotonic() - stalled < stall:
            seen.add(box.status(command_id)["status"])
            time.sleep(0.25)
        assert seen == {"requested"}, seen
    finally:
        os.kill(nats_pid, signal.SIGCONT)
    done = box.final(command_id, 60, seen)
    assert "failed" not in seen, seen
    assert done["status"] in ("completed", "expired"), done
    # the poller polled the device for 3 s after the outcome: nothing arrives late
    finished = datetime.now(UTC)
    state = box.reading(finished + timedelta(seconds=3))["states"]["priority"]
    if done["status"] == "completed":
        assert done["readback"] == value, done
        assert box.writes(command_id) == 1
        assert state == value
        wait_until(
            lambda: f"command {command_id}: CommandRequested confirmed" in box.text() or None,
            30,
            "the request sent again to be confirmed",
        )
        assert box.audit(command_id) == {"command-requested": 1, "command-completed": 1}
    else:
        assert box.writes(command_id) == 0
        assert state == before
        assert box.audit(command_id) == {"command-requested": 1, "command-expired": 1}
    assert box.status(command_id)["status"] == done["status"]


@pytest.mark.timeout(240)
def test_a_command_whose_bus_owner_is_stalled_past_its_deadline_expires(box: Box) -> None:
    """The poller stalled (SIGSTOP) past the command's deadline: expired, and not written when it resumes
    and reads the requests it was sent meanwhile."""
    before = box.priority()
    poller_pid = box.pid("poller")
    os.kill(poller_pid, signal.SIGSTOP)
    try:
        resp = box.command(OTHER[before], deadline_seconds=2)
        assert resp.status_code == 202, resp.text
        late_id = resp.json()["id"]
        deadline = datetime.fromisoformat(resp.json()["deadline"])
        expired = box.final(late_id, 60)
        assert expired["status"] == "expired", expired
        assert datetime.now(UTC) > deadline
    finally:
        os.kill(poller_pid, signal.SIGCONT)
    resumed = datetime.now(UTC)
    # the resumed poller polled for 3 s (it read the requests sent meanwhile first): refused, past deadline
    assert box.reading(resumed + timedelta(seconds=3))["states"]["priority"] == before
    assert box.writes(late_id) == 0
    assert box.status(late_id)["status"] == "expired"
    # and a command now goes through at once
    resp = box.command(OTHER[before])
    assert box.final(resp.json()["id"], 30)["status"] == "completed"


@pytest.mark.timeout(240)
async def test_a_command_whose_bus_owner_is_killed_and_back_after_its_deadline_is_never_written(
    box: Box,
) -> None:
    """The bus owner killed with the command's request in hand, restarted by `ews up` around the deadline:
    the command reads expired and the device is never written afterwards.

    The poller is stopped (SIGSTOP) when the command is sent, so the commands service's first request waits
    in it unanswered (for ``ATTEMPT`` = 5 s); it is then killed (SIGKILL) with that request, and `ews up`
    starts a new one (after 1 s). The commands service asks again only once that first request times out,
    past the 3 s deadline: whatever the new owner is then asked comes after the deadline, and it must refuse.
    A listener on the request subject (it never answers) shows when each request was sent."""
    before = box.priority()
    starts = box.text().count("poller: answering test reads and commands")
    nc = await nats.connect(box.nats_url)
    asked: asyncio.Queue[tuple[datetime, str]] = asyncio.Queue()

    async def on_request(msg) -> None:  # noqa: ANN001
        asked.put_nowait((datetime.now(UTC), json.loads(msg.data)["command_id"]))

    await nc.subscribe(f"ews.{DEMO_SITE}.rpc-poller.execute", cb=on_request)
    await nc.flush()
    try:
        old = box.pid("poller")
        os.kill(old, signal.SIGSTOP)
        try:
            resp = await asyncio.to_thread(box.command, OTHER[before], deadline_seconds=3)
            assert resp.status_code == 202, resp.text
            late_id = resp.json()["id"]
            deadline = datetime.fromisoformat(resp.json()["deadline"])
            first, command_id = await asyncio.wait_for(asked.get(), 30)  # it waits in the stopped poller
            assert command_id == late_id and first < deadline
        finally:
            os.kill(old, signal.SIGKILL)  # (a stopped process dies of SIGKILL too)
        new = await asyncio.to_thread(
            wait_until,
            lambda: (pid := supervised(box.proc.pid).get("poller")) not in (None, old) and pid,
            30,
            "`ews up` to start the poller again",
        )
        expired = await asyncio.to_thread(box.final, late_id, 60)
        assert expired["status"] == "expired", expired
        assert datetime.now(UTC) > deadline
        again = []
        while not asked.empty():
            again.append(asked.get_nowait())
        assert again and all(at > deadline and cid == late_id for at, cid in again), (deadline, again)
    finally:
        await nc.close()
    await asyncio.to_thread(
        wait_until,
        lambda: box.text().count("poller: answering test reads and commands") > starts or None,
        60,
        "the new poller to answer commands",
    )
    # the new owner polled the device for 5 s: it holds the value from before, the command was never written
    resumed = datetime.now(UTC)
    reading = await asyncio.to_thread(box.reading, resumed + timedelta(seconds=5), 60)
    assert reading["states"]["priority"] == before, reading
    assert box.writes(late_id) == 0
    assert box.status(late_id)["status"] == "expired"
    assert box.pid("poller") == new  # (one restart: the one of this test)
    # and the new owner executes the next command
    resp = await asyncio.to_thread(box.command, OTHER[before])
    done = await asyncio.to_thread(box.final, resp.json()["id"], 30)
    assert done["status"] == "completed" and done["readback"] == OTHER[before], done


# --- metrics ---


Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(base: str) -> Samples:
    """GET /metrics (from this machine: no session), parsed: sample name -> [(labels, value)]."""
    resp = httpx.get(f"{base}/metrics", timeout=10)
    assert resp.status_code == 200, resp.text
    samples: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` with these labels (0 when there is none)."""
    return sum(v for got, v in samples.get(name, []) if all(got.get(k) == w for k, w in labels.items()))


def histogram(samples: Samples, name: str, **labels: str) -> tuple[float, float]:
    """(count, sum) of a histogram's series with these labels; its buckets are checked on the way."""
    count, total_s = total(samples, f"{name}_count", **labels), total(samples, f"{name}_sum", **labels)
    buckets = sorted(
        (float(got["le"]), v)
        for got, v in samples.get(f"{name}_bucket", [])
        if all(got.get(k) == w for k, w in labels.items())
    )
    assert buckets, f"no buckets of {name} {labels}"
    assert [v for _, v in buckets] == sorted(v for _, v in buckets), f"{name}: buckets not cumulative"
    assert buckets[-1] == (float("inf"), count), (name, labels, buckets[-1], count)
    return count, total_s


@pytest.mark.timeout(240)
def test_metrics_of_every_service(box: Box) -> None:
    """One scrape of the box (GET /metrics from this machine) shows each service's work, as the README's
    Metrics table says: the poller's transactions and cycles, the aggregator's readings, batches, store
    time and lag, the commands of these tests by outcome, the sign-ins, the API's requests by route."""
    first = scrape(box.base)
    # a refused sign-in (the box's own sign-in succeeded) and a command of this test
    with httpx.Client(base_url=box.base, timeout=30, headers={"Origin": box.base}) as other:
        refused = box.sign_in(other, {"pin": "99999", "puk": "99999 9999 99999"})
        assert refused.status_code == 401, refused.text
    resp = box.command(OTHER[box.priority()])
    assert resp.status_code == 202, resp.text
    command_id = resp.json()["id"]
    assert box.final(command_id, 30)["status"] == "completed"

    ok = {"gateway": "gw1", "outcome": "ok"}
    then = wait_until(
        lambda: (
            (m := scrape(box.base))
            and total(m, "ews_poller_transactions_total", **ok)
            > total(first, "ews_poller_transactions_total", **ok)
            and total(m, "ews_commands_outcomes_total", outcome="completed") >= 1
            and m
        ),
        30,
        "the poller's transactions to grow",
    )

    # poller: transactions by outcome, a cycle histogram per gateway
    assert total(then, "ews_poller_transactions_total", **ok) > 10
    cycles, cycle_time = histogram(then, "ews_poller_cycle_seconds", gateway="gw1")
    assert cycles > 5 and 0 < cycle_time / cycles < 10, (cycles, cycle_time)
    written = sum(1 for s in box.outcomes.values() if s == "completed")
    assert total(then, "ews_poller_commands_total", gateway="gw1", status="written") == written

    # aggregator: readings stored in batches, each batch timed; the lag is a small count
    stored = total(then, "ews_aggregator_readings_total", outcome="stored")
    batches = total(then, "ews_aggregator_batches_total")
    assert stored > 0 and 1 <= batches <= stored, (stored, batches)
    timed, store_time = histogram(then, "ews_aggregator_store_seconds")
    assert abs(timed - batches) <= 1, (timed, batches)  # (a batch between the two increments)
    assert 0 < store_time / timed < 10, (store_time, timed)
    assert "ews_aggregator_lag_messages" in then, sorted(then)
    assert 0 <= total(then, "ews_aggregator_lag_messages") < 1000

    # commands: exactly the commands of these tests, by outcome
    for outcome in ("completed", "failed", "expired"):
        mine = sum(1 for s in box.outcomes.values() if s == outcome)
        assert total(then, "ews_commands_outcomes_total", outcome=outcome) == mine, (outcome, box.outcomes)

    # auth: exactly the sign-ins of these tests, by outcome
    for outcome in ("succeeded", "refused"):
        assert total(then, "ews_auth_sign_ins_total", outcome=outcome) == box.sign_ins[outcome], outcome

    # gateway-api: requests by route template and status, and their latency
    def api(name: str, method: str, path: str, status: int) -> float:
        return total(then, name, method=method, path=path, status_code=str(status))

    posted = box.requests["POST", "/api/v1/commands", 202]
    assert api("ews_gateway_api_requests_total", "POST", "/api/v1/commands", 202) == posted
    reads = box.requests["GET", COMMAND_ROUTE, 200]
    assert api("ews_gateway_api_requests_total", "GET", COMMAND_ROUTE, 200) == reads, sorted(
        {got["path"] for got, _ in then.get("ews_gateway_api_requests_total", [])}
    )
    labels = {"method": "GET", "path": COMMAND_ROUTE, "status_code": "200"}
    count, seconds = histogram(then, "ews_gateway_api_request_duration_seconds", **labels)
    assert count == reads and 0 < seconds / count < 1, (count, seconds)
    paths = {got.get("path", "") for got, _ in then.get("ews_gateway_api_requests_total", [])}
    assert not any(command_id in p for p in paths), paths  # the template, never a command's own path
