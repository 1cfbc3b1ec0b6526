"""Commands from the hub (DESIGN.md "Multi-site"): a hub (`ews up --hub`) and one edge (`ews up --edge --hub
nats-leaf://…`, the simulated demo site) on loopback.

- A command POSTed at the hub (``?site=demo``) crosses the leaf node, is executed by the edge's commands
  service and poller, and reads ``completed`` at the hub (the edge's records, sourced into
  ``EWS_COMMANDS_demo``).
- With the edge's nats-server stalled (SIGSTOP): the POST at the hub still answers 202, the command reads
  ``requested`` until its deadline and the grace, then ``expired``; when the edge is back it is not executed
  (its EWS_COMMANDS holds no CommandCompleted for it, its log no write).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import nats
import pytest
from ews_contracts.streams import COMMANDS
from ews_runtime.servers import free_port

from tests.helpers import (
    clean_env,
    login_when_auth_answers,
    simulated_demo_env,
    start_ews,
    stop,
    supervised,
    wait_until,
)

pytestmark = pytest.mark.integration

ADMIN = {"pin": "99999", "puk": "00000 9999 00000"}  # factory codes (the hub's own, as on a site)
SITE = "demo"
GRACE = 30.0  # commands.EXPIRY_GRACE


def _status(client: httpx.Client, command_id: str) -> dict:
    resp = client.get(f"/api/v1/commands/{command_id}", params={"site": SITE})
    assert resp.status_code == 200, resp.text
    return resp.json()


async def _edge_events(nats_url: str, command_id: str) -> list[str]:
    """The kinds of the edge's EWS_COMMANDS events about ``command_id``."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(f"ews.{SITE}.*.*", stream=COMMANDS.name, ordered_consumer=True)
        kinds = []
        pending = (await js.stream_info(COMMANDS.name)).state.messages
        for _ in range(pending):
            msg = await sub.next_msg(timeout=5)
            if json.loads(msg.data).get("command_id") == command_id:
                kinds.append(msg.subject.split(".")[2])
        return kinds
    finally:
        await nc.close()


@pytest.mark.timeout(420)
def test_commands_from_the_hub_complete_and_expire_when_the_edge_is_away(tmp_path: Path) -> None:
    leaf, hub_http = free_port(), free_port()
    hub_env = clean_env(
        EWS_DATA_DIR=str(tmp_path / "hub"),
        EWS_HTTP_PORT=str(hub_http),
        EWS_LEAF_PORT=str(leaf),
        NATS_URL=f"nats://127.0.0.1:{free_port()}",
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
    )
    edge_http, edge_nats = free_port(), free_port()
    (tmp_path / "edge").mkdir()
    edge_env = simulated_demo_env(tmp_path / "edge", edge_http, edge_nats, free_port())
    edge_env["EWS_DEMO_HISTORY"] = "0"
    hub_log, edge_log = tmp_path / "hub.log", tmp_path / "edge.log"
    hub = start_ews(["up", "--hub"], hub_env, hub_log)
    edge = start_ews(["up", "--edge", "--hub", f"nats-leaf://127.0.0.1:{leaf}"], edge_env, edge_log)
    base = f"http://127.0.0.1:{hub_http}"
    try:
        with httpx.Client(base_url=base, timeout=30, headers={"Origin": base}) as client:
            wait_until(lambda: client.get("/health").status_code == 200 or None, 120, "the hub's /health")
            login_when_auth_answers(client, ADMIN, 120)
            wait_until(
                lambda: (
                    SITE in [s["id"] for s in client.get("/api/v1/sites").json().get("sites", [])] or None
                ),
                120,
                "the edge's site at the hub",
            )
            edge_base = f"http://127.0.0.1:{edge_http}"
            wait_until(lambda: httpx.get(f"{edge_base}/ready").status_code == 200 or None, 120, "edge /ready")
            wait_until(lambda: "poller" in supervised(edge.pid) or None, 30, "the edge's poller")
            time.sleep(3)  # the poller answers on NATS

            # 1. a command from the hub: executed by the edge, completed at the hub
            started = time.monotonic()
            resp = client.post(
                "/api/v1/commands",
                params={"site": SITE},
                json={"device": "ev2a", "action": "priority", "value": "priority"},
            )
            assert resp.status_code == 202, resp.text
            assert resp.json()["status"] == "requested"
            sent = resp.json()["id"]
            done = wait_until(
                lambda: (b := _status(client, sent))["status"] != "requested" and b or None, 30, "completed"
            )
            took = time.monotonic() - started
            assert done["status"] == "completed" and done["readback"] == "priority", done
            print(f"\ncommand from the hub completed at the hub in {took:.1f} s")
            assert took < 15, took
            listed = client.get("/api/v1/commands", params={"site": SITE}).json()["commands"]
            assert [(c["id"], c["status"]) for c in listed][:1] == [(sent, "completed")]

            # 2. the edge's nats-server stalled: 202, requested until deadline + grace, then expired
            nats_pid = supervised(edge.pid)["nats-server"]
            os.kill(nats_pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                resp = client.post(
                    "/api/v1/commands",
                    params={"site": SITE},
                    json={"device": "ev2a", "action": "priority", "value": "normal", "deadline_seconds": 5},
                )
                answered = time.monotonic() - started
                assert resp.status_code == 202, resp.text
                late = resp.json()["id"]
                deadline = datetime.fromisoformat(resp.json()["deadline"])
                assert _status(client, late)["status"] == "requested"
                listed = client.get("/api/v1/commands", params={"site": SITE}).json()["commands"]
                assert (listed[0]["id"], listed[0]["status"]) == (late, "requested"), listed[:2]
                time.sleep(max(0.0, (deadline - datetime.now(UTC)).total_seconds() + 2))
                assert _status(client, late)["status"] == "requested"  # within the grace
                expired = wait_until(
                    lambda: (b := _status(client, late))["status"] == "expired" and b or None,
                    GRACE + 15,
                    "expired at the hub",
                )
                print(f"POST at the hub with the edge away answered in {answered:.1f} s; expired: {expired}")
                assert "reached" in (expired["error"] or ""), expired
                listed = client.get("/api/v1/commands", params={"site": SITE}).json()["commands"]
                assert (listed[0]["id"], listed[0]["status"]) == (late, "expired"), listed[:2]
            finally:
                os.kill(nats_pid, signal.SIGCONT)

            # 3. the edge back: the command is not executed (never after its deadline)
            time.sleep(10)
            kinds = asyncio.run(_edge_events(f"nats://127.0.0.1:{edge_nats}", late))
            assert "command-completed" not in kinds, kinds
            assert f"command {late}: wrote" not in edge_log.read_text()
            print(f"the edge's records of the late command: {kinds or 'none'}")
            assert _status(client, late)["status"] == "expired"
            # and a command from the hub goes through again
            resp = client.post(
                "/api/v1/commands",
                params={"site": SITE},
                json={"device": "ev2a", "action": "priority", "value": "normal"},
            )
            again = resp.json()["id"]
            done = wait_until(
                lambda: (b := _status(client, again))["status"] != "requested" and b or None, 60, "completed"
            )
            assert done["status"] == "completed", done
    finally:
        stop(edge)
        stop(hub)
