"""The whole data path, on real parts: simulator --Modbus TCP--> poller --NATS JetStream--> aggregator
--> ClickHouse (chDB) --> gateway-api. The energy the API reports for an interval equals the advance of
the simulator's counters over that interval, to the Wh.

The simulator runs in this test's process (so it can be frozen and read); every service runs as its
own `ews run <target>` process, as in a split deployment.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from ews_contracts.profiles import load_profiles
from ews_contracts.quantities import Quantity
from ews_contracts.site import load_site
from ews_runtime.servers import free_port
from ews_simulator import SimulatedSite

from tests.helpers import clean_env, demo_site_on_port, start_ews, stop

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

ADMIN = {"pin": "99999", "puk": "00000 9999 00000"}
T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T]], seconds: float, what: str) -> T:
    deadline = time.monotonic() + seconds
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if result := await check():
                return result
        except Exception as exc:  # noqa: BLE001 — retried until the deadline, reported below
            last = exc
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what} (last error: {last!r})")


async def settled_total(client: httpx.AsyncClient, scope: str) -> float:
    """The API's all-time total for ``scope`` once it has stopped changing (the simulator is frozen)."""
    seen: list[float] = []

    async def stable() -> bool:
        r = await client.get("/api/v1/consumption", params={"scope": scope, "period": "decade"})
        r.raise_for_status()
        seen.append(r.json()["total"]["value"])
        # unchanged over the last 3 s (12 polls at 0.25 s) while the poller reads every 0.5 s
        return len(seen) >= 12 and len(set(seen[-12:])) == 1

    await eventually(stable, 60, f"the {scope} total to settle")
    return seen[-1]


async def test_api_energy_equals_simulator_counter_advance(tmp_path: Path, nats_url: str, redis_clean: str):
    site_file = demo_site_on_port(tmp_path, free_port())
    site = load_site(site_file)
    electricity = [
        d.id for d in site.devices if d.medium in (None, "electricity") and not d.exclude_from_total
    ]
    assert {"m1", "e2", "ev1"} <= set(electricity)

    http_port = free_port()
    env = clean_env(
        EWS_SITE_FILE=str(site_file),
        EWS_DATA_DIR=str(tmp_path / "data"),
        EWS_HTTP_PORT=str(http_port),
        NATS_URL=nats_url,
        REDIS_URL=redis_clean,
        EWS_POLL_INTERVAL="0.5",
    )
    simulator = SimulatedSite(site, load_profiles(), "127.0.0.1")
    await simulator.start()
    procs = []
    try:
        for target in ("auth", "poller", "aggregator,gateway-api"):
            procs.append(start_ews(["run", target], env, tmp_path / f"{target}.log"))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=10) as client:
            await eventually(lambda: _ok(client.get("/health")), 60, "the API to answer")
            r = await eventually(lambda: _answered(client.post("/api/v1/auth/login", json=ADMIN)), 60, "auth")
            assert r.status_code == 200, r.text

            def counters() -> dict[str, float]:
                values = {d: simulator.counter(d, Quantity.ENERGY_ACTIVE_IMPORT) for d in electricity}
                values["water"] = simulator.counter("water", Quantity.PULSE_COUNT)
                return values

            # let real loads run until the pipeline has a baseline and counted something
            await eventually(
                lambda: _positive(client, "total-electricity"), 60, "some electricity to be counted"
            )

            simulator.freeze()
            before_api = await settled_total(client, "total-electricity")
            before_water = await settled_total(client, "device:water")
            before = counters()

            simulator.resume()
            await asyncio.sleep(6)
            simulator.freeze()
            after_api = await settled_total(client, "total-electricity")
            after_water = await settled_total(client, "device:water")
            after = counters()

        advance_wh = sum(after[d] - before[d] for d in electricity)
        assert advance_wh > 0, "the simulated loads should have consumed something in 6 s"
        assert after_api - before_api == pytest.approx(advance_wh, abs=0.5)  # to the Wh
        water = site.device("water")
        assert after_water - before_water == pytest.approx(
            (after["water"] - before["water"]) * water.pulse_weight, abs=0.5
        )
    finally:
        for proc in procs:
            stop(proc)
        await simulator.stop()
    for target in ("auth", "poller", "aggregator,gateway-api"):
        assert "Traceback" not in (tmp_path / f"{target}.log").read_text(), target


async def _answered(response: Awaitable[httpx.Response]) -> httpx.Response | None:
    """The response unless it is 503 (auth still starting: it hashes the factory codes first)."""
    r = await response
    return None if r.status_code == 503 else r


async def _ok(response: Awaitable[httpx.Response]) -> bool:
    return (await response).status_code == 200


async def _positive(client: httpx.AsyncClient, scope: str) -> bool:
    r = await client.get("/api/v1/consumption", params={"scope": scope, "period": "decade"})
    return r.status_code == 200 and r.json()["total"]["value"] > 0
