"""A new configuration applies live: the simulator serves an added device, the poller polls it within a
poll cycle, stops polling a device switched Off, and a test read goes through the bus owner. Real
nats-server, redis-server and the simulator over Modbus TCP; the simulator and the poller run as their
``serve`` targets, following the stored configuration."""

from __future__ import annotations

import asyncio
import json
import time

import nats
import pytest
import redis.asyncio as aioredis
from ews_contracts.events import ProbeReply, ProbeRequest
from ews_contracts.live import live_key
from ews_contracts.settings import Settings
from ews_contracts.siteconfig import ConfigStore, document_of, validate_document
from ews_contracts.subjects import poller_rpc
from ews_poller.service import serve as poller_serve
from ews_runtime.servers import free_port
from ews_simulator.service import serve as simulator_serve

from .test_poller_integration import EA, PROFILES, Events, demo_site

pytestmark = pytest.mark.integration


async def test_devices_added_and_switched_off_apply_live(tmp_path, nats_url, redis_clean, monkeypatch):
    port = free_port()
    site = demo_site(port)
    site_file = tmp_path / "site.yaml"
    site_file.write_text(site.model_dump_json())
    for key, value in {
        "NATS_URL": nats_url,
        "REDIS_URL": redis_clean,
        "EWS_DATA_DIR": str(tmp_path / "data"),
        "EWS_SITE_FILE": str(site_file),
        "EWS_POLL_INTERVAL": "0.3",
        "EWS_SIMULATE": "1",
    }.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    tasks = [asyncio.create_task(simulator_serve(settings)), asyncio.create_task(poller_serve(settings))]
    events = Events()
    nc = await nats.connect(nats_url)
    redis = aioredis.from_url(redis_clean)
    try:
        await events.start(nats_url)
        await events.until(lambda: events.readings("m1"), 10, "m1 polled")
        store = ConfigStore(nc.jetstream(), site.site)
        for _ in range(100):  # the services seeded version 1 from the site file
            if await store.latest() is not None:
                break
            await asyncio.sleep(0.05)

        # a device on a free address, not saved yet: the Test read goes through the poller
        new = {
            "id": "m9",
            "name": "Added live",
            "profile": "power-meter-access",
            "gateway": "gw1",
            "address": 40,
        }
        msg = await nc.request(
            poller_rpc(site.site, "test-device"),
            ProbeRequest(device=new).model_dump_json().encode(),
            timeout=10,
        )
        reply = ProbeReply.model_validate_json(msg.data)
        # the simulator does not serve address 40 yet: the read fails with the device's reason
        assert not reply.ok and reply.error

        doc = document_of(validate_document((await store.latest()).document))
        doc["devices"].append(new)
        v2 = await store.put(validate_document(doc, PROFILES), expected=1, changed_by="test", how="api")
        added_at = time.monotonic()
        await events.until(lambda: events.readings("m9"), 10, "m9 polled after it was added")
        assert time.monotonic() - added_at < 5
        assert events.readings("m9")[-1][1].values.get(EA) is not None

        msg = await nc.request(
            poller_rpc(site.site, "test-device"),
            ProbeRequest(device=new).model_dump_json().encode(),
            timeout=10,
        )
        reply = ProbeReply.model_validate_json(msg.data)
        assert reply.ok and EA in reply.values and reply.transactions >= 1

        # switched Off: a status "off", then no more readings of it
        doc["devices"][0]["enabled"] = False
        off = doc["devices"][0]["id"]
        await store.put(
            validate_document(doc, PROFILES), expected=v2.version, changed_by="test", how="device-enabled"
        )
        await events.until(
            lambda: [s for s in events.statuses(off) if s.state == "off"], 10, "the Off status"
        )
        await asyncio.sleep(0.5)
        count = len(events.readings(off))
        await asyncio.sleep(1.5)
        assert len(events.readings(off)) == count
        live = json.loads(await redis.get(live_key(site.site, off)))
        assert live["state"] == "off"
        # the others go on
        before = len(events.readings("m9"))
        await events.until(lambda: len(events.readings("m9")) > before + 2, 10, "m9 still polled")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await events.close()
        await nc.close()
        await redis.aclose()
