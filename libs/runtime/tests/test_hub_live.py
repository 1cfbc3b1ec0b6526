"""hub-live: the edges' readings and status events in the hub's copies of their streams become the same
live-state keys in the hub's Redis as the poller writes on an edge (real nats-server and redis-server); only
what the edge's aggregator accepts (``ews_contracts.intake``, with the site's configuration followed from
``EWS_CONFIG_<site>``) changes them."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import nats
import pytest
import redis.asyncio as aioredis
from ews_contracts.bus import ensure_streams_with
from ews_contracts.events import DeviceStatusChanged, ReadingTaken
from ews_contracts.hub import hub_stream_name
from ews_contracts.live import LiveDevice, live_key
from ews_contracts.settings import Settings
from ews_contracts.site import Site, load_site
from ews_contracts.siteconfig import ConfigStore
from ews_contracts.streams import CONFIG, READINGS
from ews_runtime import hublive
from ews_runtime.servers import free_port
from nats.js.api import StreamConfig

from tests.helpers import edge_nats, hub_nats, link_edges

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
DEMO = load_site(Settings(EWS_DATA_DIR="/nonexistent").site_path)
PROFILES = {d.id: d.profile for d in DEMO.devices}  # m1 multifunction-meter-412045, e2 energy-meter-rs485-3ph


def site_named(site_id: str, *extra: dict) -> Site:
    """The demo site's devices under ``site_id`` (and ``extra`` devices)."""
    devices = [d.model_dump() for d in DEMO.devices] + list(extra)
    return Site.model_validate({**DEMO.model_dump(), "site": site_id, "devices": devices})


def reading(site: str, device: str, at: datetime, **values: float) -> ReadingTaken:
    return ReadingTaken(
        event_id=ReadingTaken.id_for(site, device, at),
        site=site,
        device=device,
        profile=PROFILES.get(device, "energy-meter-rs485-3ph"),
        occurred_at=at,
        values=values,
    )


async def hub_streams(js, site: str, configured: Site | None = None) -> None:
    """The hub's copies of a site's streams (sourced from the edge in production; given the site's
    subjects here so that the test can publish into them) and its configuration (the demo site's devices)."""
    await js.add_stream(
        StreamConfig(
            name=hub_stream_name(READINGS, site), subjects=[f"ews.{site}.reading.*", f"ews.{site}.status.*"]
        )
    )
    await js.add_stream(
        StreamConfig(name=hub_stream_name(CONFIG, site), subjects=[f"ews.{site}.site-configured.*"])
    )
    await configure(js, configured or site_named(site))


async def configure(js, site: Site) -> None:
    """A new version of the site's configuration in the hub's copy (as the edge's is sourced)."""
    await ConfigStore(js, site.site, hub_stream_name(CONFIG, site.site)).put(
        site, expected=None, changed_by="test", how="site-file"
    )


async def send(js, event: ReadingTaken | DeviceStatusChanged) -> None:
    """As the edge's poller publishes it (with its headers: ``Ews-Producer: poller`` for a status)."""
    await js.publish(event.subject, event.model_dump_json().encode(), headers=event.headers())


async def live(redis, site: str, device: str) -> LiveDevice | None:
    raw = await redis.get(live_key(site, device))
    return LiveDevice.model_validate_json(raw) if raw else None


async def until(check, within: float = 20.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        got = await check()
        if got:
            return got
        await asyncio.sleep(0.1)
    raise AssertionError("not within the time")


def having(redis, site: str, device: str, quantity: str, value: float):
    async def check():
        got = await live(redis, site, device)
        return got if got and got.values.get(quantity) == value else None

    return check


@pytest.fixture
async def hub(nats_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path):
    """The hub's NATS with site north's streams and configuration, its Redis emptied, and ``start()`` to run
    hub-live on them (stopped at the end)."""
    monkeypatch.setattr(hublive, "DISCOVER_EVERY", 0.5)
    nc = await nats.connect(nats_url)
    redis = aioredis.from_url(redis_url)
    await redis.flushdb()
    await hub_streams(nc.jetstream(), "north")
    tasks: list[asyncio.Task] = []
    settings = Settings(NATS_URL=nats_url, REDIS_URL=redis_url, EWS_DATA_DIR=str(tmp_path))
    try:
        yield SimpleNamespace(
            js=nc.jetstream(),
            redis=redis,
            start=lambda: tasks.append(asyncio.create_task(hublive.serve(settings))),
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await redis.aclose()
        await nc.close()


@pytest.mark.integration
async def test_every_sites_live_state_reaches_the_hubs_redis(hub):
    js, redis = hub.js, hub.redis
    # before the hub starts: the latest reading and status of each device are taken at once
    await send(js, reading("north", "m1", T0, energy_active_import=10.0, power_active=5.0))
    await send(js, reading("north", "m1", T0 + timedelta(seconds=1), power_active=7.0))
    status = DeviceStatusChanged(
        site="north", device="ev1", state="comm-error", previous="on", reason="timeout", occurred_at=T0
    )
    await send(js, status)
    await js.publish("ews.north.reading.m1", b"{not an event")  # skipped, never stops the others
    hub.start()
    ev1 = await until(lambda: live(redis, "north", "ev1"))
    assert ev1.state == "comm-error" and ev1.reason == "timeout"
    # the last message of m1's subject was the bad one: its values come with its next reading
    assert await live(redis, "north", "m1") is None
    await send(js, reading("north", "m1", T0 + timedelta(seconds=2), power_active=9.0))
    m1 = await until(having(redis, "north", "m1", "power_active", 9.0))
    assert m1.updated_at == T0 + timedelta(seconds=2) and m1.state == "on"

    # a new edge: found without anything configured at the hub, its devices under its own site id
    await hub_streams(js, "south")
    await send(js, reading("south", "m1", T0, energy_active_import=3.0))
    south = await until(lambda: live(redis, "south", "m1"))
    assert south.values == {"energy_active_import": 3.0}
    assert (await live(redis, "north", "m1")).values == {"power_active": 9.0}

    # an older reading (a back-filled hour) does not replace the newest
    await send(js, reading("south", "m1", T0 - timedelta(hours=1), energy_active_import=1.0))
    await send(js, reading("south", "e2", T0, energy_active_import=4.0))
    await until(lambda: live(redis, "south", "e2"))
    assert (await live(redis, "south", "m1")).values == {"energy_active_import": 3.0}


def payload(event: ReadingTaken | DeviceStatusChanged, **changes) -> bytes:
    """The event's JSON with fields replaced (``None``: removed)."""
    document = json.loads(event.model_dump_json())
    for key, value in changes.items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    return json.dumps(document).encode()


@pytest.mark.integration
async def test_the_hub_takes_only_what_the_edges_aggregator_accepts(
    hub, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """Each kind of message the edge's aggregator dead-letters, sent twice on the edge's subjects at the
    hub: none changes the hub's live state, and the log has one line per cause (then one summary line per
    cause with the count), never one per message."""
    monkeypatch.setattr(hublive, "SUMMARY_EVERY", 2.0)
    caplog.set_level(logging.INFO, logger="ews.hub-live")
    js, redis = hub.js, hub.redis
    hub.start()
    good = reading("north", "m1", T0, energy_active_import=10.0, power_active=5.0)
    await send(js, good)
    await send(js, reading("north", "e2", T0, power_active=1.0))
    fault = DeviceStatusChanged(
        site="north", device="ev1", state="fault", previous="on", reason="breaker", occurred_at=T0
    )
    await send(js, fault)
    await until(lambda: live(redis, "north", "ev1"))
    await until(having(redis, "north", "e2", "power_active", 1.0))
    await until(having(redis, "north", "m1", "power_active", 5.0))

    later = T0 + timedelta(seconds=10)
    m1 = reading("north", "m1", later, power_active=666.0)
    other_device = reading("north", "e2", later, power_active=666.0)  # its payload, on m1's subject
    other_site = reading("south", "m1", later, power_active=666.0)  # its payload, on north's subject
    ghost = reading("north", "ghost", later, power_active=666.0)
    outsider = DeviceStatusChanged(  # a status from outside: no Ews-Producer header
        site="north", device="ev1", state="on", previous="fault", reason="", occurred_at=later
    )
    bad: dict[str, tuple[str, bytes, dict[str, str]]] = {
        "invalid-field": (m1.subject, payload(m1, values={"power_active": "666"}), {}),
        "unsupported-schema-version": (m1.subject, payload(m1, schema_version=2), {}),
        "wrong-profile": (m1.subject, payload(m1, profile="energy-meter-rs485-3ph"), {}),
        "missing-field": (m1.subject, payload(m1, event_id=None), {}),
        "unknown-device": (ghost.subject, payload(ghost), {}),
        "subject-mismatch": (m1.subject, payload(other_device), {}),
        "not-accepted": (outsider.subject, payload(outsider), {}),
    }
    for _ in range(2):
        for subject, data, headers in bad.values():
            await js.publish(subject, data, headers=headers or None)
    await js.publish(m1.subject, payload(other_site))  # a second subject-mismatch: another site
    await js.publish("ews.north.reading.m1", b"{not an event")  # malformed
    # the last message: once it is in Redis, every message before it has been taken (in stream order)
    await send(js, reading("north", "e2", later + timedelta(seconds=1), power_active=2.0))
    await until(having(redis, "north", "e2", "power_active", 2.0))

    assert (await live(redis, "north", "m1")).values == {
        "energy_active_import": 10.0,
        "power_active": 5.0,
    }
    assert (await live(redis, "north", "m1")).updated_at == T0
    assert (await live(redis, "north", "ev1")).state == "fault"
    assert await live(redis, "north", "ghost") is None
    assert await live(redis, "south", "m1") is None
    assert (await live(redis, "north", "e2")).updated_at == later + timedelta(seconds=1)

    causes = {*bad, "malformed"}
    firsts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rejected a message")]
    assert sorted(m.split("(", 1)[1].split(")", 1)[0] for m in firsts) == sorted(causes), firsts
    assert all("ews.north." in m for m in firsts)

    def summaries() -> dict[str, int]:
        """The count of the summary lines, per cause (a flush may fall between two messages)."""
        counts: dict[str, int] = {}
        for r in caplog.records:
            m = r.getMessage()
            if m.startswith("rejected ") and " more messages " in m:
                cause = m.split("(", 1)[1].split(")", 1)[0]
                counts[cause] = counts.get(cause, 0) + int(m.split()[1])
        return counts

    expected = {cause: 1 for cause in bad} | {"subject-mismatch": 2}  # after the first, 3 in all

    async def summarised():
        return summaries() == expected

    await until(summarised)


@pytest.mark.integration
async def test_a_device_counts_from_the_configuration_version_that_declares_it(
    hub,
):
    """As on the edge: a reading of a device stored before the version declaring it stays refused; once
    the version is in the hub's copy of the configuration, its readings are taken."""
    js, redis = hub.js, hub.redis
    hub.start()
    await send(js, reading("north", "m1", T0, power_active=1.0))
    await until(lambda: live(redis, "north", "m1"))
    await send(js, reading("north", "e9", T0, power_active=9.0))  # not declared yet
    await send(js, reading("north", "m1", T0 + timedelta(seconds=1), power_active=2.0))
    await until(having(redis, "north", "m1", "power_active", 2.0))
    assert await live(redis, "north", "e9") is None

    e2 = next(d for d in DEMO.devices if d.id == "e2").model_dump()
    await configure(js, site_named("north", {**e2, "id": "e9", "name": "New meter", "address": 77}))
    await send(js, reading("north", "e9", T0 + timedelta(seconds=2), power_active=9.0))
    e9 = await until(having(redis, "north", "e9", "power_active", 9.0))
    assert e9.updated_at == T0 + timedelta(seconds=2)


@pytest.mark.integration
@pytest.mark.timeout(180)
async def test_through_a_real_edge_only_what_its_aggregator_accepts_reaches_the_hub(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path
):
    """The real path: an edge (its own JetStream domain, a leaf node of the hub) whose streams the hub
    sources (``link_to_hub``): the poller's status events keep their ``Ews-Producer`` header on the way, an
    outsider's do not have it; the payloads that name another site or device than their subject change
    nothing at the hub."""
    monkeypatch.setattr(hublive, "DISCOVER_EVERY", 0.5)
    leaf = free_port()
    hub, edge = hub_nats(tmp_path, leaf), edge_nats(tmp_path, ["north"], leaf)["north"]
    hub.start()
    edge.start()
    redis = aioredis.from_url(redis_url)
    await redis.flushdb()
    nc = await nats.connect(edge.url)
    task = None
    try:
        js = nc.jetstream()
        await ensure_streams_with(js, site="north")  # as `ews up --edge` declares them
        await ConfigStore(js, "north").put(
            site_named("north"), expected=None, changed_by="test", how="site-file"
        )
        await link_edges({"north": nc})  # once the leaf-node link is up
        settings = Settings(NATS_URL=hub.url, REDIS_URL=redis_url, EWS_DATA_DIR=str(tmp_path / "data"))
        task = asyncio.create_task(hublive.serve(settings))
        await send(js, reading("north", "m1", T0, power_active=5.0))
        fault = DeviceStatusChanged(
            site="north", device="ev1", state="fault", previous="on", reason="breaker", occurred_at=T0
        )
        await send(js, fault)  # the poller's: with its header
        ev1 = await until(lambda: live(redis, "north", "ev1"), within=60)
        assert ev1.state == "fault"
        await until(having(redis, "north", "m1", "power_active", 5.0))

        later = T0 + timedelta(seconds=10)
        outsider = DeviceStatusChanged(
            site="north", device="ev1", state="on", previous="fault", reason="", occurred_at=later
        )
        await js.publish(outsider.subject, payload(outsider))  # no Ews-Producer header
        m1 = reading("north", "m1", later, power_active=666.0)
        await js.publish(m1.subject, payload(reading("south", "m1", later, power_active=666.0)))
        await js.publish(m1.subject, payload(reading("north", "e2", later, power_active=666.0)))
        await js.publish(m1.subject, payload(m1, values={"power_active": "666"}))
        await send(js, reading("north", "e2", later, power_active=2.0))  # the last one
        await until(having(redis, "north", "e2", "power_active", 2.0))
        assert (await live(redis, "north", "m1")).values == {"power_active": 5.0}
        assert (await live(redis, "north", "ev1")).state == "fault"
        assert await live(redis, "south", "m1") is None
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await redis.aclose()
        await nc.close()
        edge.stop()
        hub.stop()


def test_a_status_keeps_the_values_and_a_reading_keeps_the_state():
    states = hublive.LiveStates()
    states.apply(reading("s", "m1", T0, power_active=1.0))
    states.apply(
        DeviceStatusChanged(
            site="s", device="m1", state="fault", previous="on", reason="breaker", occurred_at=T0
        )
    )
    states.apply(reading("s", "m1", T0 + timedelta(seconds=1), voltage_l1=230.0))
    (written,) = states.take().values()
    device = LiveDevice.model_validate_json(written)
    assert device.state == "fault" and device.reason == "breaker"
    assert device.values == {"power_active": 1.0, "voltage_l1": 230.0}
    assert states.take() == {}
