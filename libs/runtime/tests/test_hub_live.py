"""hub-live: the edges' readings and status events in the hub's copies of their streams become the same
live-state keys in the hub's Redis as the poller writes on an edge (real nats-server and redis-server)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import nats
import pytest
import redis.asyncio as aioredis
from ews_contracts.events import DeviceStatusChanged, ReadingTaken
from ews_contracts.hub import hub_stream_name
from ews_contracts.live import LiveDevice, live_key
from ews_contracts.settings import Settings
from ews_contracts.streams import CONFIG, READINGS
from ews_runtime import hublive
from nats.js.api import StreamConfig

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def reading(site: str, device: str, at: datetime, **values: float) -> ReadingTaken:
    return ReadingTaken(
        event_id=ReadingTaken.id_for(site, device, at),
        site=site,
        device=device,
        profile="p",
        occurred_at=at,
        values=values,
    )


async def hub_streams(js, site: str) -> None:
    """The hub's copies of a site's streams (sourced from the edge in production; given the site's
    subjects here so that the test can publish into them)."""
    await js.add_stream(
        StreamConfig(
            name=hub_stream_name(READINGS, site), subjects=[f"ews.{site}.reading.*", f"ews.{site}.status.*"]
        )
    )
    await js.add_stream(
        StreamConfig(name=hub_stream_name(CONFIG, site), subjects=[f"ews.{site}.site-configured.*"])
    )


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


@pytest.mark.integration
async def test_every_sites_live_state_reaches_the_hubs_redis(
    nats_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path
):
    monkeypatch.setattr(hublive, "DISCOVER_EVERY", 0.5)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    redis = aioredis.from_url(redis_url)
    await redis.flushdb()
    await hub_streams(js, "north")
    # before the hub starts: the latest reading and status of each device are taken at once
    await js.publish(
        "ews.north.reading.m1",
        reading("north", "m1", T0, energy_active_import=10.0, power_active=5.0).model_dump_json().encode(),
    )
    await js.publish(
        "ews.north.reading.m1",
        reading("north", "m1", T0 + timedelta(seconds=1), power_active=7.0).model_dump_json().encode(),
    )
    status = DeviceStatusChanged(
        site="north", device="ev1", state="comm-error", previous="on", reason="timeout", occurred_at=T0
    )
    await js.publish(status.subject, status.model_dump_json().encode())
    await js.publish("ews.north.reading.m1", b"{not an event")  # skipped, never stops the others
    settings = Settings(NATS_URL=nats_url, REDIS_URL=redis_url, EWS_DATA_DIR=str(tmp_path))
    task = asyncio.create_task(hublive.serve(settings))
    try:
        ev1 = await until(lambda: live(redis, "north", "ev1"))
        assert ev1.state == "comm-error" and ev1.reason == "timeout"
        # the last message of m1's subject was the bad one: its values come with its next reading
        assert await live(redis, "north", "m1") is None
        await js.publish(
            "ews.north.reading.m1",
            reading("north", "m1", T0 + timedelta(seconds=2), power_active=9.0).model_dump_json().encode(),
        )

        async def newest():
            got = await live(redis, "north", "m1")
            return got if got and got.values.get("power_active") == 9.0 else None

        m1 = await until(newest)
        assert m1.updated_at == T0 + timedelta(seconds=2) and m1.state == "on"

        # a new edge: found without anything configured at the hub, its devices under its own site id
        await hub_streams(js, "south")
        await js.publish(
            "ews.south.reading.m1",
            reading("south", "m1", T0, energy_active_import=3.0).model_dump_json().encode(),
        )
        south = await until(lambda: live(redis, "south", "m1"))
        assert south.values == {"energy_active_import": 3.0}
        assert (await live(redis, "north", "m1")).values == {"power_active": 9.0}

        # an older reading (a back-filled hour) does not replace the newest
        await js.publish(
            "ews.south.reading.m1",
            reading("south", "m1", T0 - timedelta(hours=1), energy_active_import=1.0)
            .model_dump_json()
            .encode(),
        )
        await js.publish(
            "ews.south.reading.m2",
            reading("south", "m2", T0, energy_active_import=4.0).model_dump_json().encode(),
        )
        await until(lambda: live(redis, "south", "m2"))
        assert (await live(redis, "south", "m1")).values == {"energy_active_import": 3.0}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await redis.aclose()
        await nc.close()


def test_a_status_keeps_the_values_and_a_reading_keeps_the_state():
    states = hublive.LiveStates()
    assert states.apply(
        "ews.s.reading.m1", reading("s", "m1", T0, power_active=1.0).model_dump_json().encode()
    )
    status = DeviceStatusChanged(
        site="s", device="m1", state="fault", previous="on", reason="breaker", occurred_at=T0
    )
    assert states.apply(status.subject, status.model_dump_json().encode())
    assert states.apply(
        "ews.s.reading.m1",
        reading("s", "m1", T0 + timedelta(seconds=1), voltage_l1=230.0).model_dump_json().encode(),
    )
    assert not states.apply("ews.s.reading.m1", b"[]")
    assert not states.apply("ews.s.site-configured.config", b"{}")  # not a kind of the readings stream
    (written,) = states.take().values()
    device = LiveDevice.model_validate_json(written)
    assert device.state == "fault" and device.reason == "breaker"
    assert device.values == {"power_active": 1.0, "voltage_l1": 230.0}
    assert states.take() == {} and states.skipped == 2
