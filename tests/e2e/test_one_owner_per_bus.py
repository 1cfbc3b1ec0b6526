"""One owner per bus, every command executed exactly once or expired — on real parts.

- A shared RS485 line (two ptys joined by socat; the simulator's devices answer on one end, the poller
  holds the other) polled every second while commands arrive: every command completes with its
  read-back, no device goes to communication error, no transaction fails (a frame from a second writer
  would break a CRC or a reply).
- A TCP gateway polled, commanded and test-read at once never sees a second connection.
- Through the whole product (`ews up`): a command sent while nats-server is stalled answers 202 and is
  completed once (never "failed" then executed); a command whose bus owner is stalled past its deadline
  ends expired and is not written when the owner comes back.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import threading
import time
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
from ews_poller.rpc import serve_requests
from ews_poller.service import Poller
from ews_runtime.servers import free_port
from ews_simulator import SimulatedSite

from tests.helpers import simulated_demo_env, start_ews, stop, supervised, wait_until

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


# --- through the whole product --------------------------------------------------------------------------


def metric_values(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (labels as written)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = values.get(key, 0.0) + float(value)
    return values


def _login(client: httpx.Client) -> None:
    resp = client.post("/api/v1/auth/login", json={"pin": "55555", "puk": "00000 5555 00000"})
    assert resp.status_code == 200, resp.text


def _final(client: httpx.Client, command_id: str, within: float) -> dict:
    return wait_until(
        lambda: (
            (body := client.get(f"/api/v1/commands/{command_id}").json())["status"] != "requested"
            and body
            or None
        ),
        within,
        f"command {command_id} finished",
    )


@pytest.mark.timeout(300)
def test_commands_across_a_nats_stall_and_a_stalled_bus_owner(tmp_path: Path) -> None:
    http, nats_port, redis_port = free_port(), free_port(), free_port()
    env = simulated_demo_env(tmp_path, http, nats_port, redis_port)
    env["EWS_DEMO_HISTORY"] = "0"
    log = tmp_path / "up.log"
    proc = start_ews(["up"], env, log)
    base = f"http://127.0.0.1:{http}"
    try:
        with httpx.Client(base_url=base, timeout=30, headers={"Origin": base}) as client:
            wait_until(lambda: client.get("/ready").status_code == 200 or None, 120, "/ready 200")
            _login(client)
            wait_until(lambda: "poller" in supervised(proc.pid) or None, 30, "the poller")
            time.sleep(3)  # the poller answers on NATS

            # 1. nats-server stalled for 2 s while the command is sent: 202, then completed exactly once
            nats_pid = supervised(proc.pid)["nats-server"]
            os.kill(nats_pid, signal.SIGSTOP)
            threading.Timer(2.0, os.kill, (nats_pid, signal.SIGCONT)).start()
            resp = client.post(
                "/api/v1/commands", json={"device": "ev2a", "action": "priority", "value": "priority"}
            )
            assert resp.status_code == 202, resp.text
            assert resp.json()["status"] == "requested"
            command_id = resp.json()["id"]
            done = _final(client, command_id, 60)
            assert done["status"] == "completed" and done["readback"] == "priority", done
            wait_until(
                lambda: f"command {command_id}: wrote" in log.read_text() or None, 10, "the write logged"
            )
            time.sleep(3)  # nothing else arrives late
            assert log.read_text().count(f"command {command_id}: wrote") == 1
            assert client.get(f"/api/v1/commands/{command_id}").json()["status"] == "completed"

            # 2. the bus owner stalled past the deadline: expired, and not written when it resumes
            poller_pid = supervised(proc.pid)["poller"]
            os.kill(poller_pid, signal.SIGSTOP)
            try:
                resp = client.post(
                    "/api/v1/commands",
                    json={"device": "ev2a", "action": "priority", "value": "normal", "deadline_seconds": 2},
                )
                assert resp.status_code == 202, resp.text
                late_id = resp.json()["id"]
                deadline = datetime.fromisoformat(resp.json()["deadline"])
                expired = _final(client, late_id, 60)
                assert expired["status"] == "expired", expired
                assert datetime.now(UTC) > deadline
            finally:
                os.kill(poller_pid, signal.SIGCONT)
            time.sleep(
                4
            )  # the resumed poller reads the request it was sent meanwhile: refused, past deadline
            assert f"command {late_id}: wrote" not in log.read_text()
            assert client.get(f"/api/v1/commands/{late_id}").json()["status"] == "expired"
            # the device still holds the value of the first command (read through the product)
            state = wait_until(
                lambda: (
                    (d := client.get("/api/v1/devices/ev2a").json()).get("states", {}).get("priority")
                    and d
                    or None
                ),
                10,
                "ev2a's live state",
            )
            assert state["states"]["priority"] == "priority", state
            # and a command now goes through at once
            resp = client.post(
                "/api/v1/commands", json={"device": "ev2a", "action": "priority", "value": "normal"}
            )
            assert _final(client, resp.json()["id"], 30)["status"] == "completed"
            assert datetime.now(UTC) - deadline < timedelta(minutes=3)

            # 3. every service's metrics in one scrape of the box (GET /metrics from this machine)
            text = httpx.get(f"{base}/metrics", timeout=10).text
            values = metric_values(text)
            assert values['ews_commands_outcomes_total{outcome="completed"}'] >= 2
            assert values['ews_commands_outcomes_total{outcome="expired"}'] >= 1
            assert values['ews_poller_commands_total{gateway="gw1",status="written"}'] >= 2
            assert values['ews_poller_transactions_total{gateway="gw1",outcome="ok"}'] > 10
            assert values['ews_auth_sign_ins_total{outcome="succeeded"}'] >= 1
            assert values['ews_poller_cycle_seconds_count{gateway="gw1"}'] > 5
            assert any(k.startswith("ews_gateway_api_requests_total{") for k in values)
            assert any(k.startswith("ews_aggregator_") for k in values), sorted(values)[:40]
    finally:
        stop(proc)
