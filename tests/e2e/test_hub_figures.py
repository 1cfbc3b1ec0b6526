"""Every site's figures at the hub (ews_aggregator.group): a hub and two edges as `ews up --hub` and
`ews up --edge` run them (their nats-servers in their JetStream domains, leaf nodes; each edge's aggregator;
the hub's aggregator group under `ews up --hub`), readings published on each edge before and while everything runs → the hub's
ClickHouse holds each site's hourly consumption in ``hub_database(site)``, equal to the edge's to the Wh
(read with the analytics library on both sides)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest
from ews_contracts.bus import ensure_streams_with
from ews_contracts.events import ReadingTaken
from ews_contracts.hub import EDGE_SITE_ENV, hub_database
from ews_contracts.site import load_site
from ews_contracts.siteconfig import ConfigStore
from ews_contracts.streamnames import BOX, streams_for
from ews_runtime.servers import free_port

from tests.helpers import edge_nats, link_edges

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
SITE_TEMPLATE = HERE.parents[1] / "services" / "aggregator" / "tests" / "site_accounting.yaml"
SITES = ("north", "south-2")
T0 = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)
DAYS = ["2026-11-02"]


def site_file(folder: Path, site: str) -> Path:
    path = folder / f"{site}.yaml"
    path.write_text(SITE_TEMPLATE.read_text().replace("site: acct", f"site: {site}", 1))
    return path


def readings(site: str, first: int, n: int) -> list[ReadingTaken]:
    """A minute's counters of three meters (Wh, a different pace per site and meter)."""
    pace = 5 if site == SITES[0] else 11
    out = []
    for k, device in enumerate(("main", "m1", "e2")):
        value = 1000.0 * (k + 1) + sum(pace + k + (j * 13) % 5 for j in range(first))  # a counter: only rises
        for i in range(first, first + n):
            t = T0 + timedelta(minutes=i)
            value += pace + k + (i * 13) % 5
            out.append(
                ReadingTaken(
                    event_id=ReadingTaken.id_for(site, device, t),
                    site=site,
                    device=device,
                    profile="energy-meter-rs485-3ph",
                    occurred_at=t,
                    values={"energy_active_import": value, "power_active": 50.0},
                )
            )
    return out


async def publish(js, events: list[ReadingTaken]) -> None:  # noqa: ANN001
    for i in range(0, len(events), 500):
        await asyncio.gather(
            *(
                js.publish(e.subject, e.model_dump_json().encode(), headers=e.headers())
                for e in events[i : i + 500]
            )
        )


async def caught_up(js, names, n: int) -> bool:  # noqa: ANN001
    """The stream holds ``n`` messages and the aggregator's consumer acked them all."""
    try:
        state = (await js.stream_info(names.readings)).state
        info = await js.consumer_info(names.readings, names.aggregator_durable)
    except Exception:  # noqa: BLE001 - not there yet
        return False
    return state.messages == n and (info.ack_floor.stream_seq or 0) == state.last_seq and not info.num_pending


def figures(dsn: str, database: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, str(HERE / "hub_figures.py"), dsn, database, str(path), *DAYS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


async def connect_when_up(url: str, proc: subprocess.Popen, log: Path, within: float = 60.0):  # noqa: ANN201
    loop = asyncio.get_running_loop()
    until = loop.time() + within
    while True:
        assert proc.poll() is None, log.read_text()[-2000:]  # noqa: ASYNC240
        try:
            return await nats.connect(url, connect_timeout=1, allow_reconnect=False)
        except Exception:  # noqa: BLE001 - not up yet
            if loop.time() > until:
                raise
            await asyncio.sleep(0.3)


@pytest.mark.timeout(300)
async def test_the_hub_holds_every_sites_hourly_consumption_equal_to_the_edges(tmp_path: Path) -> None:
    leaf = free_port()
    hub_url = f"nats://127.0.0.1:{free_port()}"
    edges = edge_nats(tmp_path / "nats", SITES, leaf)
    files = {site: site_file(tmp_path, site) for site in SITES}
    procs: dict[str, subprocess.Popen] = {}
    conns = {}

    def run(name: str, command: list[str], nats_url: str, **extra: str) -> subprocess.Popen:
        env = {
            **os.environ,
            "NATS_URL": nats_url,
            "EWS_DATA_DIR": str(tmp_path / name),
            "EWS_LOG_LEVEL": "INFO",
        }
        for unset in ("CLICKHOUSE_URL", "EWS_HUB_AGGREGATORS", "EWS_SITE_FILE"):
            env.pop(unset, None)
        env.update(extra)
        log = open(tmp_path / f"{name}.log", "ab")  # noqa: SIM115
        return subprocess.Popen(
            [sys.executable, "-m", "ews_runtime.cli", *command], env=env, stdout=log, stderr=log
        )

    # the hub as `ews up --hub` runs it: its nats-server (domain hub, leaf-node port) and the aggregator group
    procs["hub"] = run(
        "hub", ["up", "--hub"], hub_url, EWS_LEAF_PORT=str(leaf), EWS_HTTP_PORT=str(free_port())
    )
    for server in edges.values():
        server.start()
    try:
        hub_nc = await connect_when_up(hub_url, procs["hub"], tmp_path / "hub.log")
        hub_js = hub_nc.jetstream()
        for site, server in edges.items():  # as `ews up --edge` and its hub-link put them in place
            nc = conns[site] = await nats.connect(server.url)
            await ensure_streams_with(nc.jetstream(), site=site)
            path = files[site]
            await ConfigStore(nc.jetstream(), site).open(load_site(path), path.read_bytes(), path)
        await link_edges(conns)
        published = {}
        for site, nc in conns.items():  # the edges' history before their aggregators run
            published[site] = readings(site, 0, 300)
            await publish(nc.jetstream(), published[site])
        for site, server in edges.items():  # each edge's aggregator, as `ews up --edge` runs it
            extra = {"EWS_SITE_FILE": str(files[site]), EDGE_SITE_ENV: site}
            procs[site] = run(site, ["run", "aggregator"], server.url, **extra)
        await asyncio.sleep(3)
        for site, nc in conns.items():  # and while everything runs, an hour of readings at a time
            for first in range(300, 600, 60):
                more = readings(site, first, 60)
                published[site] += more
                await publish(nc.jetstream(), more)
                await asyncio.sleep(0.5)
        loop = asyncio.get_running_loop()
        until = loop.time() + 120
        while loop.time() < until:
            states = [await caught_up(conns[s].jetstream(), BOX, len(published[s])) for s in SITES]
            states += [await caught_up(hub_js, streams_for(s, hub=True), len(published[s])) for s in SITES]
            if all(states):
                break
            for name, proc in procs.items():
                assert proc.poll() is None, f"{name}: " + (tmp_path / f"{name}.log").read_text()[-2000:]
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(f"not caught up: {states} (edges, then hub)")
        await hub_nc.close()
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for nc in conns.values():
            await nc.close()
        for server in edges.values():
            server.stop()
    for site in SITES:
        at_edge = figures(f"chdb://{tmp_path / site / 'clickhouse'}", "ews", files[site])
        at_hub = figures(f"chdb://{tmp_path / 'hub' / 'clickhouse'}", hub_database(site), files[site])
        assert sum(v or 0 for v in at_edge[f"total-electricity {DAYS[0]}"]) > 0, at_edge
        assert at_hub == at_edge, site
        total = sum(v or 0 for v in at_hub[f"device:m1 {DAYS[0]}"])
        hours = sum(1 for v in at_hub[f"device:m1 {DAYS[0]}"] if v)
        print(f"\n{site}: the hub's figures = the edge's ({total:.0f} Wh of m1 in {hours} hours)")
