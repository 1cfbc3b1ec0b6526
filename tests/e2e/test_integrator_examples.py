"""The integrator examples of docs/examples/ run as an integrator runs them (their own processes, nats-py only)
against a real stack — nats-server, the simulator and the poller, the aggregator and the gateway-api on chDB
(`ews run`), the commands and auth services:

- the integrator lists the site's devices and quantities with their units through `GET /api/v1/site` with a
  machine token (made by the administrator through the API), and the units are the document's;
- the consumer reads every kind of event the stack emits during the test — readings, device status, a
  command requested and completed (sent through the API with a token), audit records (a sign-in, the
  tokens), the configuration's versions (the site file's seed, a device turned Off), a dead letter — and
  every message validates against the schemas of docs/asyncapi.json for its channel;
- two readings the producer publishes are accounted to the Wh (the consumption API answers the counter
  difference);
- a reading the product refuses lands in the dead-letter stream with its reason (the producer's --wait and
  the consumer both see it);
- the aggregator answers its documented request/reply subject with the document's schema;
- at a hub the consumer follows a site by the streams' names the document gives (`hub_name`), the reading
  published at the site's edge.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import nats
import pytest
from ews_contracts.bus import ensure_streams_with
from ews_runtime.servers import free_port
from nats.js.errors import BadRequestError

from tests.contract import document, problems, validator
from tests.helpers import (
    clean_env,
    demo_site_on_port,
    edge_nats,
    hub_nats,
    link_edges,
    login_when_auth_answers,
    start_ews,
    stop,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
ADMIN = {"pin": "99999", "puk": "00000 9999 00000"}
PROFILE = "multifunction-meter-412045"  # m1 of the demo site
T0 = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
KINDS = (  # every kind of event of the document, as the consumer's --kind names them
    "reading",
    "status",
    "command-requested",
    "command-completed",
    "command-failed",
    "command-expired",
    "audit",
    "site-configured",
    "dead-letter",
)
EMITTED = set(KINDS) - {"command-failed", "command-expired"}  # what this test makes the stack emit


def example(name: str, *args: str, timeout: float = 120) -> str:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_examples_import_nothing_of_the_product():
    for path in EXAMPLES.glob("*.py"):
        imports = [line for line in path.read_text().splitlines() if line.startswith(("import ", "from "))]
        assert imports and all("ews" not in line for line in imports), (path.name, imports)


def test_the_examples_name_their_streams_in_their_help():
    consumer, producer = example("consumer.py", "--help"), example("producer.py", "--help")
    assert "--stream" in consumer and "{stream}_{site}" in consumer and "hub_name" in consumer
    assert "--stream" in producer and "edge" in producer and "EWS_READINGS" in producer


def token(admin: httpx.Client, name: str, role: str | None = None) -> str:
    """A machine token made by the administrator through the API (shown once)."""
    resp = admin.post("/api/v1/tokens", json={"name": name} | ({"role": role} if role else {}))
    assert resp.status_code == 201, resp.text
    return resp.json()["token"]


def stored(nats_url: str, stream: str, subjects: str) -> int:
    """How many messages of ``stream`` are on ``subjects`` (a JetStream subject filter)."""

    async def count() -> int:
        nc = await nats.connect(nats_url)
        try:
            info = await nc.jetstream().stream_info(stream, subjects_filter=subjects)
            return sum((info.state.subjects or {}).values())
        finally:
            await nc.close()

    return asyncio.run(count())


def aggregator_status(nats_url: str) -> dict:
    """The aggregator's answer on the document's ``rpc-aggregator.status`` subject."""
    address = document()["channels"]["AggregatorStatus"]["address"].replace("{site}", "demo")

    async def ask() -> dict:
        nc = await nats.connect(nats_url)
        try:
            return json.loads((await nc.request(address, b"{}", timeout=5)).data)
        finally:
            await nc.close()

    return asyncio.run(ask())


@pytest.mark.timeout(600)
def test_the_examples_produce_and_consume_per_the_document(tmp_path: Path, nats_url: str, redis_clean: str):
    http_port = free_port()
    env = clean_env(
        EWS_SITE_FILE=str(demo_site_on_port(tmp_path, free_port())),
        EWS_DATA_DIR=str(tmp_path / "data"),
        EWS_HTTP_PORT=str(http_port),
        EWS_POLL_INTERVAL="1",
        NATS_URL=nats_url,
        REDIS_URL=redis_clean,
    )
    procs: dict[str, subprocess.Popen] = {}

    def run(target: str) -> None:
        procs[target] = start_ews(["run", target], env, tmp_path / f"{target}.log")

    for target in ("auth", "aggregator,gateway-api", "commands"):
        run(target)
    base = f"http://127.0.0.1:{http_port}"
    try:
        admin = httpx.Client(base_url=base, timeout=10)
        wait_until(lambda: admin.get("/health").status_code == 200, 60, "the API to answer")
        # the administrator (a person, PIN and PUK) gives the integrator its tokens; a sign-in is audited
        assert login_when_auth_answers(admin, ADMIN).status_code == 200
        reader = httpx.Client(
            base_url=base, timeout=10, headers={"Authorization": f"Bearer {token(admin, 'it')}"}
        )
        commander = httpx.Client(
            base_url=base, timeout=10, headers={"Authorization": f"Bearer {token(admin, 'ev', 'greenUp')}"}
        )
        # m1 Off (a new configuration version): not polled, so the produced readings are its only ones
        resp = admin.put("/api/v1/devices/m1/enabled", json={"enabled": False})
        assert resp.status_code == 200, resp.text

        # what an integrator reads before publishing: devices, profiles, quantities and units, with a token
        resp = reader.get("/api/v1/site")
        assert resp.status_code == 200, resp.text
        devices = {d["id"]: d for d in resp.json()["devices"]}
        assert devices["m1"]["profile"] == PROFILE
        units = document()["components"]["schemas"]["Quantity"]["x-ews-units"]
        listed = [(d["id"], q["quantity"], q["unit"]) for d in devices.values() for q in d["quantities"]]
        assert ("m1", "energy_active_import", "Wh") in listed
        assert [x for x in listed if units.get(x[1]) != x[2]] == []  # the document's units

        run("simulator")
        run("poller")
        common = ["--nats", nats_url, "--site", "demo"]
        reading = ["producer.py", *common, "--device", "m1", "--profile", PROFILE]
        first = example(*reading, "--value", "energy_active_import=1000000", "--value", "power_active=820",
                        "--at", T0.isoformat())  # fmt: skip
        assert first.startswith("stored as EWS_READINGS #"), first
        at = (T0 + timedelta(minutes=15)).isoformat()
        second = example(*reading, "--wait", "5", "--value", "energy_active_import=1001234", "--at", at)
        assert second.rstrip().endswith("not rejected within 5 s"), second
        again = example(*reading, "--value", "energy_active_import=1001234", "--at", at)
        assert "(a duplicate)" in again  # same event_id: JetStream's dedupe
        refused = example(
            "producer.py", *common, "--device", "m1", "--profile", "power-meter-access", "--wait", "20",
            "--value", "energy_active_import=1001300", "--at", (T0 + timedelta(minutes=20)).isoformat(),
        )  # fmt: skip
        assert (
            "rejected (wrong-profile): profile 'power-meter-access' is not a profile of device 'm1'"
            in refused
        )
        refused_seq = int(re.match(r"stored as EWS_READINGS #(\d+)", refused).group(1))

        def day_total() -> float | None:
            r = reader.get(
                "/api/v1/consumption", params={"scope": "device:m1", "period": "day", "date": "2026-05-04"}
            )
            value = r.json()["total"]["value"] if r.status_code == 200 else None
            return value if value else None

        assert wait_until(day_total, 30, "the readings to be accounted") == 1234.0  # to the Wh

        # a command through the API with a token: requested, executed by the poller, completed
        resp = commander.post(
            "/api/v1/commands", json={"device": "ev1", "action": "charge", "value": "start"}
        )
        assert resp.status_code == 202, resp.text
        command_id = resp.json()["id"]
        done = wait_until(
            lambda: (
                (c := commander.get(f"/api/v1/commands/{command_id}").json())["status"] != "requested" and c
            ),
            60,
            "the command to finish",
        )
        assert done["status"] == "completed", done
        wait_until(lambda: stored(nats_url, "EWS_READINGS", "ews.demo.status.*"), 30, "a device status event")

        status = aggregator_status(nats_url)
        (reply,) = document()["operations"]["requestAggregatorStatus"]["reply"]["messages"]
        schema = reply["$ref"].rsplit("/", 1)[1]
        assert list(validator(f"#/components/schemas/{schema}").iter_errors(status)) == [], status
        assert status["state"] == "idle"

        for target in ("poller", "simulator"):  # the streams go quiet: the consumer's --idle ends it
            stop(procs.pop(target))
        kinds = [arg for kind in KINDS for arg in ("--kind", kind)]
        lines = example(
            "consumer.py", *common, "--durable", "integrator-test", *kinds, "--idle", "3"
        ).splitlines()
    finally:
        for proc in procs.values():
            stop(proc)
    received = [json.loads(line) for line in lines]
    for message in received:
        data = json.dumps(message["event"]).encode()
        assert problems(message["subject"], data, message["headers"]) == [], message
    by_kind: dict[str, list[dict]] = {}
    for message in received:
        by_kind.setdefault(message["subject"].split(".")[2], []).append(message)
    assert set(by_kind) == EMITTED, sorted(by_kind)
    print(
        f"{len(received)} messages validated: "
        + ", ".join(f"{k} {len(v)}" for k, v in sorted(by_kind.items()))
    )

    m1 = [m for m in by_kind["reading"] if m["subject"] == "ews.demo.reading.m1"]
    assert [m["event"]["values"].get("energy_active_import") for m in m1] == [1000000, 1001234, 1001300]
    (rejected,) = [m["event"] for m in by_kind["dead-letter"]]
    assert (rejected["cause"], rejected["original_subject"], rejected["stream_sequence"]) == (
        "wrong-profile",
        "ews.demo.reading.m1",
        refused_seq,
    )
    assert json.loads(rejected["original_payload"])["profile"] == "power-meter-access"
    assert all(m["headers"].get("Ews-Producer") == "poller" for m in by_kind["status"])
    (requested,) = [m["event"] for m in by_kind["command-requested"]]
    (completed,) = [m["event"] for m in by_kind["command-completed"]]
    assert requested["command_id"] == completed["command_id"] == command_id
    assert (requested["device"], requested["value"], requested["requested_by"]) == ("ev1", "start", "greenUp")
    audit = {(m["event"]["action"], m["event"]["role"]) for m in by_kind["audit"]}
    assert ("login-succeeded", "administrator") in audit, audit
    versions = [(m["event"]["version"], m["event"]["how"]) for m in by_kind["site-configured"]]
    assert versions == [(1, "site-file"), (2, "device-enabled")], versions
    for target in ("auth", "aggregator,gateway-api", "commands", "poller", "simulator"):
        assert "Traceback" not in (tmp_path / f"{target}.log").read_text(), target


@pytest.mark.timeout(180)
async def test_at_a_hub_the_consumer_follows_a_site_by_the_documents_stream_names(tmp_path: Path):
    """The hub's streams are named per site (`hub_name`); the reading is published at the site's edge."""
    leaf = free_port()
    hub, edge = hub_nats(tmp_path, leaf), edge_nats(tmp_path, ["demo"], leaf)["demo"]
    with hub, edge:
        nc = await nats.connect(edge.url)
        try:
            await ensure_streams_with(nc.jetstream(), site="demo")  # as `ews up --edge` declares them
            await link_edges({"demo": nc})  # the hub-link's work, once the leaf-node link is up
        finally:
            await nc.close()
        out = await asyncio.to_thread(
            example, "producer.py", "--nats", edge.url, "--site", "demo", "--device", "m1", "--profile",
            PROFILE, "--value", "energy_active_import=1000", "--at", T0.isoformat(),
        )  # fmt: skip
        assert out.startswith("stored as EWS_READINGS #1"), out

        stream = document()["channels"]["ReadingTaken"]["x-ews-stream"]
        at_hub = stream["hub_name"].format(site="demo")
        hub_nc = await nats.connect(hub.url)
        try:
            js = hub_nc.jetstream()
            until = asyncio.get_running_loop().time() + 30
            while (await js.stream_info(at_hub)).state.messages < 1:  # sourced from the edge
                assert asyncio.get_running_loop().time() < until, f"{at_hub} never got the edge's reading"
                await asyncio.sleep(0.2)
            with pytest.raises(BadRequestError, match="expected stream does not match"):
                await js.publish("ews.demo.reading.m1", b"{}", stream=at_hub)  # the hub's copy stores none
        finally:
            await hub_nc.close()
        template = stream["hub_name"].replace(stream["name"], "{stream}")
        assert template == "{stream}_{site}"
        lines = await asyncio.to_thread(
            example, "consumer.py", "--nats", hub.url, "--site", "demo", "--durable", "integrator-hub",
            "--stream", template, "--idle", "2",
        )  # fmt: skip
    (message,) = [json.loads(line) for line in lines.splitlines()]
    assert message["subject"] == "ews.demo.reading.m1" and message["event"]["values"] == {
        "energy_active_import": 1000
    }
    assert problems(message["subject"], json.dumps(message["event"]).encode(), message["headers"]) == []
