"""Multi-site store and forward with NATS itself (ews_contracts.hub): a hub nats-server (JetStream domain
``hub``, leaf-node port) and two edges (their own domains, leaf nodes of the hub), as `ews up --hub` and
`ews up --edge` start them. Each edge stores only its own site's subjects; its hub-link puts the hub's
per-site streams in place (sourcing across the domains) without anything done at the hub; readings made
during a hub outage reach the hub when it is back; nothing the hub's own services do removes the link.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats
import pytest
from ews_contracts.bus import ensure_streams_with
from ews_contracts.hub import HUB_DOMAIN, edge_domain, hub_stream_name, link_to_hub
from ews_contracts.streams import READINGS
from ews_runtime.servers import free_port

from tests.helpers import edge_nats, hub_nats, link_edges

pytestmark = pytest.mark.integration

SITES = ("north", "south")


async def _count(js, stream: str) -> int:
    return (await js.stream_info(stream)).state.messages


async def _wait_count(js, stream: str, n: int, within: float = 30.0) -> int:
    loop = asyncio.get_running_loop()
    until = loop.time() + within
    while True:
        try:
            got = await _count(js, stream)
        except Exception:  # noqa: BLE001 - not there yet / hub not answering yet
            got = -1
        if got == n or loop.time() > until:
            return got
        await asyncio.sleep(0.2)


async def _publish(js, site: str, first: int, n: int) -> None:
    for i in range(first, first + n):
        body = json.dumps({"site": site, "i": i}).encode()
        ack = await js.publish(f"ews.{site}.reading.m1", body, headers={"Nats-Msg-Id": f"{site}.{i}"})
        assert ack.domain == edge_domain(site)  # stored by the site's own edge


@pytest.mark.timeout(180)
async def test_edges_stream_into_the_hub_and_catch_up_after_an_outage(tmp_path: Path) -> None:
    leaf = free_port()
    hub_server = hub_nats(tmp_path, leaf)
    edges = edge_nats(tmp_path, SITES, leaf)
    hub_server.start()
    for server in edges.values():
        server.start()
    conns = {}
    try:
        hub_nc = await nats.connect(hub_server.url)
        hub_js = hub_nc.jetstream()
        for site, server in edges.items():
            nc = conns[site] = await nats.connect(server.url)
            await ensure_streams_with(nc.jetstream(), site=site)  # as `ews up --edge` declares them
            info = await nc.jetstream().stream_info(READINGS.name)
            assert info.config.subjects == [f"ews.{site}.reading.*", f"ews.{site}.status.*"]
        await link_edges(conns)
        for site, nc in conns.items():
            await _publish(nc.jetstream(), site, 0, 100)
        for site in SITES:
            assert await _wait_count(hub_js, hub_stream_name(READINGS, site), 100) == 100
        # an edge holds only its own site's readings
        for nc in conns.values():
            assert await _count(nc.jetstream(), READINGS.name) == 100

        # the hub's own services declare their streams: the per-site links stay
        await ensure_streams_with(hub_js)
        info = await hub_js.stream_info(hub_stream_name(READINGS, "north"))
        assert [s.name for s in info.config.sources] == [READINGS.name]
        # removed by hand at the hub: the edge's next check puts it back, and it refills from the edge
        await hub_js.delete_stream(hub_stream_name(READINGS, "south"))
        changes = await link_to_hub(conns["south"].jetstream(domain=HUB_DOMAIN, timeout=2), "south")
        assert f"created {hub_stream_name(READINGS, 'south')}" in changes
        assert await _wait_count(hub_js, hub_stream_name(READINGS, "south"), 100) == 100

        # a hub outage: the edges record on; the hub catches up when it is back, nothing lost or doubled
        await hub_nc.close()
        hub_server.stop()
        for site, nc in conns.items():
            await _publish(nc.jetstream(), site, 100, 150)
            assert await _count(nc.jetstream(), READINGS.name) == 250
        hub_server.start()
        hub_nc = await nats.connect(hub_server.url)
        hub_js = hub_nc.jetstream()
        for site in SITES:
            assert await _wait_count(hub_js, hub_stream_name(READINGS, site), 250, within=60) == 250
        # every reading once, in order
        sub = await hub_js.subscribe(
            "ews.north.reading.m1", stream=hub_stream_name(READINGS, "north"), ordered_consumer=True
        )
        seen = []
        for _ in range(250):
            msg = await sub.next_msg(timeout=5)
            seen.append(json.loads(msg.data)["i"])
        assert seen == list(range(250))
        await hub_nc.close()
    finally:
        for nc in conns.values():
            await nc.close()
        for server in edges.values():
            server.stop()
        hub_server.stop()
