"""`ews up` as a new user runs it (what `make run` does): start, log in, see energy grow, command the
charger, stop with Ctrl-C, start again on the same data folder and find the history."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from ews_runtime.servers import free_port

from tests.helpers import clean_env, demo_site_on_port, login_when_auth_answers, start_ews, stop, wait_until

pytestmark = pytest.mark.e2e

ADMIN = {"pin": "99999", "puk": "00000 9999 00000"}


def today_total(client: httpx.Client) -> float:
    # no date: the API's "today" in the site's time zone (this machine's clock may be in another zone)
    r = client.get("/api/v1/consumption", params={"scope": "total-electricity", "period": "day"})
    r.raise_for_status()
    return r.json()["total"]["value"]


def test_ews_up_then_restart_keeps_history(tmp_path: Path):
    http_port = free_port()
    env = clean_env(
        EWS_DATA_DIR=str(tmp_path / "data"),
        EWS_SITE_FILE=str(demo_site_on_port(tmp_path, free_port())),
        EWS_SIMULATE="1",
        EWS_HTTP_PORT=str(http_port),
        NATS_URL=f"nats://127.0.0.1:{free_port()}",
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        EWS_POLL_INTERVAL="1",
    )
    base = f"http://127.0.0.1:{http_port}"
    log = tmp_path / "ews-up.log"

    proc = start_ews(["up"], env, log)
    try:
        wait_until(lambda: httpx.get(f"{base}/health").status_code == 200, 90, "the API to answer")
        # the banner comes once `ews up` has seen /health answer too
        wait_until(lambda: "Energy web server is running" in log.read_text(), 10, "the start-up banner")
        with httpx.Client(base_url=base, timeout=10) as client:
            r = login_when_auth_answers(client, ADMIN)
            assert r.status_code in (200, 201), r.text
            assert r.json()["role"] == "administrator"
            first = wait_until(lambda: today_total(client), 60, "today's consumption > 0")
            wait_until(lambda: today_total(client) > first, 60, "today's consumption to grow")

            for value, state in (("start", "charging"), ("wait", "waiting")):
                r = client.post(
                    "/api/v1/commands", json={"device": "ev1", "action": "charge", "value": value}
                )
                assert r.status_code in (200, 201, 202), r.text
                cid = r.json()["id"]
                done = wait_until(
                    lambda cid=cid: (
                        (c := client.get(f"/api/v1/commands/{cid}").json())["status"] != "requested" and c
                    ),
                    30,
                    f"command {value} to finish",
                )
                assert done["status"] == "completed", done
                assert done["readback"] == value
                wait_until(
                    lambda state=state: (
                        client.get("/api/v1/devices/ev1").json()["states"].get("charger") == state
                    ),
                    20,
                    f"the charger to show {state}",
                )
        before_stop = today_total_fresh(base)
    finally:
        code = stop(proc, signal.SIGINT)
    assert code == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()

    proc = start_ews(["up"], env, log)
    try:
        wait_until(
            lambda: httpx.get(f"{base}/health").status_code == 200, 90, "the API to answer after restart"
        )
        assert today_total_fresh(base) >= before_stop
    finally:
        assert stop(proc, signal.SIGINT) == 0


def today_total_fresh(base: str) -> float:
    with httpx.Client(base_url=base, timeout=10) as client:
        r = client.post("/api/v1/auth/login", json=ADMIN)
        assert r.status_code in (200, 201), r.text
        return today_total(client)
