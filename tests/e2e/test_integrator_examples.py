"""The integrator examples of docs/examples/ run as an integrator runs them (their own processes, nats-py only)
against a real stack — nats-server, the aggregator and the gateway-api on chDB (`ews run`), the auth service:

- every message the consumer receives validates against the schemas of docs/asyncapi.json;
- two readings the producer publishes are accounted to the Wh (the consumption API answers the counter
  difference);
- a reading the product refuses lands in the dead-letter stream with its reason (the producer's --wait and
  the consumer both see it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from ews_contracts.settings import BUNDLED_DEMO_SITE
from ews_runtime.servers import free_port

from tests.contract import problems
from tests.helpers import clean_env, login_when_auth_answers, start_ews, stop, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
ADMIN = {"pin": "99999", "puk": "00000 9999 00000"}
PROFILE = "multifunction-meter-412045"  # m1 of the demo site
T0 = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)


def example(name: str, *args: str, timeout: float = 60) -> str:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_examples_import_nothing_of_the_product():
    for path in EXAMPLES.glob("*.py"):
        imports = [line for line in path.read_text().splitlines() if line.startswith(("import ", "from "))]
        assert imports and all("ews" not in line for line in imports), (path.name, imports)


def test_the_examples_produce_and_consume_per_the_document(tmp_path: Path, nats_url: str, redis_clean: str):
    http_port = free_port()
    env = clean_env(
        EWS_SITE_FILE=str(BUNDLED_DEMO_SITE),
        EWS_DATA_DIR=str(tmp_path / "data"),
        EWS_HTTP_PORT=str(http_port),
        NATS_URL=nats_url,
        REDIS_URL=redis_clean,
    )
    procs = [
        start_ews(["run", target], env, tmp_path / f"{target}.log")
        for target in ("auth", "aggregator,gateway-api")
    ]
    try:
        api = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=10)
        wait_until(lambda: api.get("/health").status_code == 200, 60, "the API to answer")
        assert login_when_auth_answers(api, ADMIN).status_code == 200
        device = next(d for d in api.get("/api/v1/devices").json()["devices"] if d["id"] == "m1")
        assert device["profile"] == PROFILE  # what an integrator reads before publishing

        common = ["--nats", nats_url, "--site", "demo"]
        first = example(
            "producer.py",
            *common,
            "--device",
            "m1",
            "--profile",
            PROFILE,
            "--value",
            "energy_active_import=1000000",
            "--value",
            "power_active=820",
            "--at",
            T0.isoformat(),
        )
        assert first.startswith("stored as EWS_READINGS #"), first
        second = example(
            "producer.py",
            *common,
            "--device",
            "m1",
            "--profile",
            PROFILE,
            "--wait",
            "5",
            "--value",
            "energy_active_import=1001234",
            "--at",
            (T0 + timedelta(minutes=15)).isoformat(),
        )
        assert second.rstrip().endswith("not rejected within 5 s"), second
        again = example(
            "producer.py",
            *common,
            "--device",
            "m1",
            "--profile",
            PROFILE,
            "--value",
            "energy_active_import=1001234",
            "--at",
            (T0 + timedelta(minutes=15)).isoformat(),
        )
        assert "(a duplicate)" in again  # same event_id: JetStream's dedupe
        refused = example(
            "producer.py",
            *common,
            "--device",
            "m1",
            "--profile",
            "power-meter-access",
            "--wait",
            "20",
            "--value",
            "energy_active_import=1001300",
            "--at",
            (T0 + timedelta(minutes=20)).isoformat(),
        )
        assert (
            "rejected (wrong-profile): profile 'power-meter-access' is not a profile of device 'm1'"
            in refused
        )

        def day_total() -> float | None:
            r = api.get(
                "/api/v1/consumption", params={"scope": "device:m1", "period": "day", "date": "2026-05-04"}
            )
            value = r.json()["total"]["value"] if r.status_code == 200 else None
            return value if value else None

        assert wait_until(day_total, 30, "the readings to be accounted") == 1234.0  # to the Wh

        lines = example(
            "consumer.py",
            *common,
            "--durable",
            "integrator-test",
            "--kind",
            "reading",
            "--kind",
            "dead-letter",
            "--idle",
            "3",
        ).splitlines()
    finally:
        for proc in procs:
            stop(proc)
    received = [json.loads(line) for line in lines]
    assert [m["subject"] for m in received] == ["ews.demo.reading.m1"] * 3 + ["ews.demo.dead-letter.reading"]
    for message in received:
        data = json.dumps(message["event"]).encode()
        assert problems(message["subject"], data, message["headers"]) == [], message
    rejected = received[-1]["event"]
    assert (rejected["cause"], rejected["original_subject"], rejected["stream_sequence"]) == (
        "wrong-profile",
        "ews.demo.reading.m1",
        3,
    )
    assert json.loads(rejected["original_payload"])["profile"] == "power-meter-access"
    for target in ("auth", "aggregator,gateway-api"):
        assert "Traceback" not in (tmp_path / f"{target}.log").read_text(), target
