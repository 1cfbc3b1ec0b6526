"""Fault suite: while `ews up` polls the simulated demo site, every process it supervises is killed
(SIGKILL), one at a time: each target (simulator, poller, aggregator+gateway-api, commands, auth), then
nats-server and redis-server. Each comes back under a new pid, started by `ews up`; the time from the kill
to the product working again is printed (``pytest -s``); and no energy is lost or counted twice: per
device, the API's energy equals the advance of the counter the simulator serves, to the Wh.

Working again means ``/ready`` answers 200 and the part's own work shows through the API: a reading taken
after the kill in the live state (simulator, poller, redis-server), one stored (aggregator, nats-server:
the whole path through JetStream), a command sent after the kill completed (commands), a sign-in (auth).

Freezing the simulator of `ews up` (another process; the accounting test freezes one of its own): it is
stopped (SIGSTOP) once the poller's latest reading of every compared counter (its live state in Redis)
equals what the simulator serves, read over Modbus by this test and decoded with the simulator's own
register map. The pipeline drains, the API's totals settle, then the simulator continues (SIGCONT) and
counts the stopped time in one step, like a meter that was not read for a while.

The simulator's kill has a window of its own: its meters' counters are functions of the time and continue
across a restart, and the EV charger's (which depends on the charges commanded) is kept in the data folder
as the station's meter keeps it (``Twin.kept``; the test starts a charge so it climbs at any hour). No
counter may go down in either window: the API's energy is the served counter's advance, to the Wh.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property, partial
from pathlib import Path

import httpx
import pytest
import redis
from ews_contracts.live import live_key
from ews_contracts.profiles import DATA_TYPES, load_profiles
from ews_contracts.site import Site, load_site
from ews_runtime.servers import free_port
from ews_simulator import SimulatedSite
from pymodbus.client import ModbusTcpClient

from tests.helpers import login_when_auth_answers, simulated_demo_env, start_ews, stop, supervised, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ADMIN = {"pin": "99999", "puk": "00000 9999 00000"}
POLL_INTERVAL = "0.5"
# the counters compared: the site's Total (m1 + e2 + ev1) and the water main (pulses x its pulse weight)
COUNTERS = {
    "m1": "energy_active_import",
    "e2": "energy_active_import",
    "ev1": "energy_active_import",
    "water": "pulse_count",
}
POLLING = 3.0  # seconds of undisturbed polling before each kill
PROBE = "m1"  # the device whose fresh readings show that polling (and storing) works again
CHARGER = "ev1"  # its counter depends on the charges commanded: kept by the simulator across a restart
SIMULATOR = "simulator"
ONE_BOX = "aggregator,gateway-api,commands,auth"  # ews_runtime.up.ONE_BOX_GROUP: one process
TARGETS = [SIMULATOR, "poller", ONE_BOX]
SERVERS = ["nats-server", "redis-server"]


class ServedCounters:
    """The counters the `ews up` simulator serves now, read over Modbus and decoded with the simulator's own
    register map (a ``SimulatedSite`` of the same site, never started: only its images are used)."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.map = SimulatedSite(site, load_profiles())
        self.gateway = next(g for g in site.gateways if g.id == site.device(PROBE).gateway)
        assert all(site.device(d).gateway == self.gateway.id for d in COUNTERS)

    def read(self) -> dict[str, float]:
        client = ModbusTcpClient(self.gateway.host, port=self.gateway.port, timeout=2, retries=0)
        if not client.connect():
            raise ConnectionError(f"the simulator does not answer on {self.gateway.host}:{self.gateway.port}")
        try:
            values = {}
            for device_id, quantity in COUNTERS.items():
                image = next(i for i in self.map.units[self.gateway.id].values() if device_id in i.members)
                reg, address = image.members[device_id].registers[quantity]
                spans = [(address, reg.count)]
                if reg.scale_from is not None:
                    spans.append((reg.scale_from.address, DATA_TYPES[reg.scale_from.type][0]))
                if reg.sign_from is not None:
                    spans.append((reg.sign_from.address, 1))
                for start, count in spans:
                    fc3 = image.fcs[start] == 3
                    read = client.read_holding_registers if fc3 else client.read_input_registers
                    answer = read(start, count=count, device_id=image.unit)
                    if answer.isError():
                        raise ConnectionError(f"{device_id} @{start}: {answer}")
                    image.words.update(zip(range(start, start + count), answer.registers, strict=True))
                values[device_id] = self.map.counter(device_id, quantity)
            return values
        finally:
            client.close()


@dataclass
class Freeze:
    served: dict[str, float]  # the counters the simulator served = the poller's last readings
    api: dict[str, float]  # the API's all-time energy of each device (water: dm³)
    read_at: dict[str, datetime]  # the times of those last readings


@dataclass
class Stack:
    """An `ews up` of the simulated demo site, with an administrator's session."""

    proc: subprocess.Popen
    base: str
    site: Site
    data: Path
    redis_port: int
    client: httpx.Client
    served: ServedCounters

    @cached_property
    def redis(self) -> redis.Redis:
        """The stack's redis-server (its password is made on the first start)."""
        password = (self.data / "redis" / "password").read_text().strip()
        return redis.Redis(port=self.redis_port, password=password, socket_timeout=2)

    def parts(self) -> dict[str, int]:
        return supervised(self.proc.pid)

    # --- what the API shows ----------------------------------------------------------------------

    def ready(self) -> bool:
        return httpx.get(f"{self.base}/ready", timeout=2).status_code == 200

    def total(self, device: str) -> float:
        r = self.client.get("/api/v1/consumption", params={"scope": f"device:{device}", "period": "decade"})
        r.raise_for_status()
        return r.json()["total"]["value"]

    def totals(self) -> dict[str, float]:
        return {d: self.total(d) for d in COUNTERS}

    def stored(self, device: str, quantity: str, start: datetime, end: datetime) -> list[float]:
        """The stored readings of one counter with ``start <= time <= end``, in time order (readings.csv)."""
        r = self.client.get(
            "/api/v1/readings.csv",
            params={
                "device": device,
                "from": (start - timedelta(seconds=1)).isoformat(),
                "to": (end + timedelta(seconds=1)).isoformat(),
            },
        )
        r.raise_for_status()
        rows = list(csv.reader(io.StringIO(r.text)))
        column = next(i for i, name in enumerate(rows[0]) if name.split(" (")[0] == quantity)
        return [
            float(row[column]) for row in rows[1:] if row[column] != "" and start <= parse_time(row[0]) <= end
        ]

    def command(self, device: str, action: str, value: str) -> bool:
        """Send a command; True once it completed (45 s at most: the command deadline is 30 s)."""
        r = self.client.post("/api/v1/commands", json={"device": device, "action": action, "value": value})
        assert r.status_code in (200, 201, 202), r.text
        cid = r.json()["id"]
        done = wait_until(
            lambda: (c := self.client.get(f"/api/v1/commands/{cid}").json())["status"] != "requested" and c,
            45,
            f"the outcome of {device} {action}={value}",
            interval=0.1,
        )
        assert done["status"] == "completed", done
        return True

    # --- working again after a kill at ``since`` (time.time()) -------------------------------------

    def fresh_live(self, since: float) -> bool:
        """A reading taken after ``since`` in the probe device's live state (poller -> Redis -> API)."""
        r = self.client.get(f"/api/v1/devices/{PROBE}")
        r.raise_for_status()
        view = r.json()
        at = view["updated_at"]
        return view["state"] == "on" and at is not None and parse_time(at).timestamp() > since

    def fresh_stored(self, since: float) -> bool:
        """A reading taken after ``since`` stored (poller -> JetStream -> aggregator -> ClickHouse -> API)."""
        start = datetime.fromtimestamp(since, UTC)
        return bool(self.stored(PROBE, COUNTERS[PROBE], start, start + timedelta(minutes=10)))

    def all_back(self, since: float) -> bool:
        """The process of the aggregator, gateway-api, commands and auth: each works again."""
        return self.fresh_stored(since) and self.command_completes(since) and self.login_works(since)

    def command_completes(self, since: float) -> bool:  # noqa: ARG002
        """A command sent now completes (API -> JetStream -> commands -> poller -> the device). A relay of
        the load-shedding outputs: no energy involved."""
        return self.command("io2", "output-1", "on")

    def login_works(self, since: float) -> bool:  # noqa: ARG002
        """A sign-in (gateway-api -> NATS request/reply -> auth)."""
        return httpx.post(f"{self.base}/api/v1/auth/login", json=ADMIN, timeout=5).status_code == 200

    # --- the poller's latest readings; freezing ---------------------------------------------------

    def live_counters(self) -> tuple[dict[str, float | None], dict[str, datetime | None]]:
        keys = [live_key(self.site.site, d) for d in COUNTERS]
        values: dict[str, float | None] = {}
        read_at: dict[str, datetime | None] = {}
        for (device, quantity), raw in zip(COUNTERS.items(), self.redis.mget(keys), strict=True):
            live = json.loads(raw) if raw else {}
            values[device] = live.get("values", {}).get(quantity)
            read_at[device] = parse_time(live["updated_at"]) if live.get("updated_at") else None
        return values, read_at

    def freeze(self) -> Freeze:
        """Stop the simulator once the poller has read what it serves; wait for those readings to be stored
        and the API's totals to settle; note them; let the simulator continue."""
        simulator = self.parts()[SIMULATOR]
        for _ in range(5):

            def caught_up() -> dict[str, float] | None:
                served = self.served.read()
                return served if self.live_counters()[0] == served else None

            served = wait_until(caught_up, 60, "the poller's readings to equal the served counters", 0.05)
            os.kill(simulator, signal.SIGSTOP)
            try:
                time.sleep(0.2)  # a reading in flight lands
                live, read_at = self.live_counters()
                if live != served:
                    print(f"  (a reading landed while freezing: {live} != {served}; again)")
                    continue
                frozen = Freeze(served, {}, read_at)  # type: ignore[arg-type]
                wait_until(partial(self.stored_last, frozen), 60, "the last readings to be stored")
                frozen.api = settled(self.totals)
                return frozen
            finally:
                os.kill(simulator, signal.SIGCONT)
        raise AssertionError("could not freeze the simulator on the poller's last readings")

    def stored_last(self, frozen: Freeze) -> bool:
        """The readings the poller took last before a freeze are stored."""
        return all(
            self.stored(d, q, frozen.read_at[d], frozen.read_at[d]) == [frozen.served[d]]
            for d, q in COUNTERS.items()
        )


def tracebacks(log: str) -> list[str]:
    """The records of a log that carry a traceback (a record: a line with a time, up to the next one)."""
    return [record for record in re.split(r"\n(?=\d\d:\d\d:\d\d )", log) if "\nTraceback" in record]


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def settled(read: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``read()`` once it has stopped changing: unchanged over 12 reads 0.25 s apart (3 s and more)."""
    seen: list[dict[str, float]] = []

    def stable() -> dict[str, float] | None:
        seen.append(read())
        return seen[-1] if len(seen) >= 12 and all(s == seen[-1] for s in seen[-12:]) else None

    return wait_until(stable, 90, "the API's totals to settle")


def kill(stack: Stack, part: str, recovered: Callable[[float], bool]) -> tuple[float, float, float]:
    """SIGKILL ``part``; seconds from the kill to its new process, to /ready 200, to ``recovered``."""
    old = stack.parts()[part]
    start = time.monotonic()
    os.kill(old, signal.SIGKILL)
    since = time.time()  # a reading taken from now on comes from the parts running after the kill
    new = wait_until(
        lambda: (pid := stack.parts().get(part)) not in (None, old) and pid,
        90,
        f"`ews up` to start {part} again",
        interval=0.05,
    )
    restarted = time.monotonic() - start
    wait_until(stack.ready, 90, f"/ready 200 after {part} was killed", interval=0.1)
    ready = time.monotonic() - start
    wait_until(lambda: recovered(since), 90, f"the product to work again after {part} was killed", 0.1)
    back = time.monotonic() - start
    assert stack.parts().get(part) == new, f"{part} died again after its restart"
    return restarted, ready, back


def compare(stack: Stack, window: str, a: Freeze, b: Freeze) -> None:
    """Between two freezes, per device: the stored readings never go down, and the API's energy = the
    served counter's advance, to the Wh."""
    for device, quantity in COUNTERS.items():
        weight = stack.site.device(device).pulse_weight or 1.0
        advance = (b.served[device] - a.served[device]) * weight
        values = stack.stored(device, quantity, a.read_at[device], b.read_at[device])
        assert values and values[0] == a.served[device] and values[-1] == b.served[device], (
            f"{window}: {device}'s stored readings do not start and end with the served counters",
            (a.served[device], b.served[device]),
            (values[:3], values[-3:]),
        )
        drops = [(x - y) * weight for x, y in zip(values, values[1:], strict=False) if y < x]
        api = b.api[device] - a.api[device]
        print(f"  {window}: {device}: API {api:.0f} = served counter advance {advance:.0f}")
        assert not drops, f"{window}: {device}'s counter went down: {drops}"
        assert api == pytest.approx(advance, abs=0.5), (window, device, api, advance)


@pytest.mark.timeout(420)
def test_every_supervised_process_killed_comes_back_without_losing_energy(tmp_path: Path):
    began = time.monotonic()
    http, nats_port, redis_port = free_port(), free_port(), free_port()
    env = simulated_demo_env(tmp_path, http, nats_port, redis_port)
    env["EWS_POLL_INTERVAL"] = POLL_INTERVAL
    site = load_site(Path(env["EWS_SITE_FILE"]))
    log = tmp_path / "up.log"
    proc = start_ews(["up"], env, log)
    base = f"http://127.0.0.1:{http}"
    client = httpx.Client(base_url=base, timeout=10)
    stack = Stack(proc, base, site, tmp_path / "data", redis_port, client, ServedCounters(site))
    recovered = {
        SIMULATOR: stack.fresh_live,
        "poller": stack.fresh_live,
        ONE_BOX: stack.all_back,
        "nats-server": stack.fresh_stored,
        "redis-server": stack.fresh_live,
    }
    times: dict[str, tuple[float, float, float]] = {}

    def fault(part: str) -> None:
        time.sleep(POLLING)
        times[part] = kill(stack, part, recovered[part])
        restarted, ready, back = times[part]
        print(
            f"  {part}: SIGKILL -> new pid {restarted:.1f} s, /ready 200 {ready:.1f} s, "
            f"working again {back:.1f} s"
        )

    try:
        wait_until(stack.ready, 120, "/ready 200 after the start")
        r = login_when_auth_answers(client, ADMIN)
        assert r.status_code == 200, r.text
        # the poller starts once the simulator answers
        wait_until(lambda: set(stack.parts()) == {*TARGETS, *SERVERS}, 60, "every part to run")
        wait_until(lambda: stack.total(PROBE) > 0, 120, "some energy to be counted")
        print()
        # the charger charges at any hour (the schedule of the simulated one may say the car is away)
        stack.command(CHARGER, "charge", "start")
        freezes = [stack.freeze()]
        fault(SIMULATOR)
        stack.command(CHARGER, "charge", "start")  # the restarted twin follows its schedule
        freezes.append(stack.freeze())
        for part in [*TARGETS[1:], *SERVERS]:
            fault(part)
        freezes.append(stack.freeze())
        compare(stack, "simulator killed", freezes[0], freezes[1])
        compare(stack, "the others killed", freezes[1], freezes[2])
        assert set(stack.parts()) == {*TARGETS, *SERVERS}
    finally:
        client.close()
        code = stop(proc, signal.SIGINT)
    assert code == 0, log.read_text()[-3000:]
    # the NATS client library logs its failed reconnections with a traceback while nats-server is down;
    # any other traceback is a failure
    nats = "nats.aio.client: nats: encountered error"
    foreign = [t for t in tracebacks(log.read_text()) if nats not in t.split("\n", 1)[0]]
    assert not foreign, "\n\n".join(foreign)[:8000]
    summary = ", ".join(f"{part} {back:.1f} s" for part, (_, _, back) in times.items())
    median = statistics.median(back for _, _, back in times.values())
    took = time.monotonic() - began
    print(f"\nfaults: working again after SIGKILL: {summary}; median {median:.1f} s; test {took:.0f} s")
