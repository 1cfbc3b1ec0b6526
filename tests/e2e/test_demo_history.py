"""The bundled demo's first start (what `make run` does on a fresh machine): ten years of history are
published through JetStream and accounted by the aggregator, so every period shows data; a second start
publishes nothing.

Runs `ews up` on the bundled demo site itself (a copy would be a site of one's own, which never gets a
history), so the simulator needs the demo's gateway port, 5020.
"""

from __future__ import annotations

import json
import re
import signal
import time
from datetime import date
from pathlib import Path

import httpx
import pytest
from ews_runtime.servers import free_port, port_in_use

from tests.helpers import clean_env, start_ews, stop, wait_until

pytestmark = pytest.mark.e2e

ADMIN = {"pin": "99999", "puk": "00000 9999 00000"}
DEMO_GATEWAY_PORT = 5020
ACCOUNTED = re.compile(
    r"demo history: (\d+) readings of (\d+) devices published in ([\d.]+) s and accounted ([\d.]+) s"
)


def buckets(client: httpx.Client, period: str, day: date, scope: str = "total-electricity") -> list[dict]:
    r = client.get("/api/v1/consumption", params={"scope": scope, "period": period, "date": day.isoformat()})
    r.raise_for_status()
    return r.json()["buckets"]


def months_back(today: date, n: int) -> tuple[int, int]:
    index = today.year * 12 + today.month - 1 - n
    return index // 12, index % 12 + 1


@pytest.mark.timeout(900)  # two starts and a 480 s guard: more than the suite's 300 s per test
@pytest.mark.skipif(
    port_in_use("127.0.0.1", DEMO_GATEWAY_PORT), reason="the demo's gateway port 5020 is busy"
)
def test_first_start_of_the_demo_backfills_once(tmp_path: Path):
    http_port = free_port()
    data = tmp_path / "data"
    env = clean_env(
        EWS_DATA_DIR=str(data),
        EWS_HTTP_PORT=str(http_port),
        NATS_URL=f"nats://127.0.0.1:{free_port()}",
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
    )
    base = f"http://127.0.0.1:{http_port}"
    log = tmp_path / "ews-up.log"

    started = time.monotonic()
    proc = start_ews(["up"], env, log)
    try:
        # the web server answers while the history is being published
        wait_until(lambda: httpx.get(f"{base}/health").status_code == 200, 90, "the API to answer")
        answered = time.monotonic() - started
        found = wait_until(lambda: ACCOUNTED.search(log.read_text()), 480, "the demo history to be accounted")  # a guard, not a speed goal (see bench figures)
        readings, devices = int(found.group(1)), int(found.group(2))
        assert devices >= 15 and readings > 500_000
        print(
            f"\nweb server answered after {answered:.0f} s; {readings} readings published in {found.group(3)} s, "
            f"accounted {found.group(4)} s after the simulator started; {time.monotonic() - started:.0f} s in all"
        )
        with httpx.Client(base_url=base, timeout=30) as client:
            r = client.post("/api/v1/auth/login", json=ADMIN)
            assert r.status_code in (200, 201), r.text
            today = date.fromisoformat(client.get("/api/v1/consumption").json()["buckets"][0]["start"][:10])
            decade = buckets(client, "decade", today)
            assert len(decade) == 10 and all(b["value"] > 0 for b in decade), decade
            for year in {today.year, today.year - 1}:
                by_month = {
                    int(b["start"][5:7]): b["value"] for b in buckets(client, "year", date(year, 1, 1))
                }
                for n in range(13):
                    y, m = months_back(today, n)
                    if y == year:
                        assert by_month[m] > 0, (y, m, by_month)
            # a month of the last 13, day by day, and gas in the year before
            y, m = months_back(today, 12)
            assert all(b["value"] > 0 for b in buckets(client, "month", date(y, m, 1)))
            gas = buckets(client, "year", date(today.year - 1, 1, 1), "device:gas")
            assert gas[0]["value"] > 3 * gas[6]["value"]  # January heats, July does not
    finally:
        assert stop(proc, signal.SIGINT) == 0, log.read_text()[-3000:]
    marker = json.loads((data / "demo-history.json").read_text())
    assert marker["state"] == "done" and marker["readings"] == readings

    proc = start_ews(["up"], env, log)
    try:
        wait_until(
            lambda: httpx.get(f"{base}/health").status_code == 200, 90, "the API to answer after restart"
        )
        wait_until(
            lambda: log.read_text().count("simulator: gateway gw1") == 2, 30, "the simulator to serve again"
        )
    finally:
        assert stop(proc, signal.SIGINT) == 0
    text = log.read_text()
    assert text.count("demo history: publishing") == 1, "a second start published the history again"
    assert "Traceback" not in text and "SlowConsumer" not in text
    assert json.loads((data / "demo-history.json").read_text()) == marker
