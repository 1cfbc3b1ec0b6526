"""The hub's aggregators as a group (``ews_aggregator.group``) with a real nats-server: two member
processes, each with its own chDB, share three sites' hub streams, and a fourth that appears while they
run; one killed with SIGKILL → the other takes its sites over within 30 s, from the durable consumers' ack
floors: every reading stored once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import nats
import pytest
from ews_aggregator.group import LEASE_TTL
from ews_aggregator.lease import BUCKET
from ews_contracts.hub import hub_database, hub_stream_name
from ews_contracts.streamnames import streams_for
from ews_contracts.streams import READINGS
from ews_runtime.servers import NatsServer, free_port

from .hubsites import add_hub_site, publish, readings, stored_events

pytestmark = pytest.mark.integration

SITES = ("north", "south", "east-1", "west")  # west: an edge that appears while the group runs
LATE = "west"


async def consumed(js, site: str) -> bool:  # noqa: ANN001
    """The site's hub consumer has acked the whole stream."""
    names = streams_for(site, hub=True)
    try:
        info = await js.consumer_info(names.readings, names.aggregator_durable)
        last = (await js.stream_info(names.readings)).state.last_seq
    except Exception:  # noqa: BLE001 - not created yet
        return False
    return (info.ack_floor.stream_seq or 0) == last and not info.num_ack_pending and not info.num_pending


async def holders(js) -> dict[str, str]:  # noqa: ANN001
    try:
        kv = await js.key_value(BUCKET)
    except Exception:  # noqa: BLE001 - not created yet
        return {}
    out = {}
    for site in SITES:
        try:
            out[site] = (await kv.get(f"site.{site}")).value.decode()
        except Exception:  # noqa: BLE001 - not held
            pass
    return out


async def wait_for(check, within: float, what: str) -> float:  # noqa: ANN001
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.25)
    raise AssertionError(f"{what} not within {within:.0f} s")


@pytest.mark.timeout(240)
async def test_two_members_share_the_sites_and_one_takes_over_when_the_other_is_killed(
    tmp_path: Path,
) -> None:
    server = NatsServer(tmp_path / "nats", free_port(), log=tmp_path / "nats.log")
    server.start()
    members: dict[str, subprocess.Popen] = {}
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    try:
        published = {}
        for site in SITES[:-1]:
            await add_hub_site(js, tmp_path, site)
            published[site] = readings(site, 0, 200)
            await publish(js, published[site], hub_stream_name(READINGS, site))

        def start(name: str) -> subprocess.Popen:
            env = {
                **os.environ,
                "NATS_URL": server.url,
                "EWS_DATA_DIR": str(tmp_path / name),
                "EWS_LOG_LEVEL": "INFO",
            }
            env.pop("CLICKHOUSE_URL", None)
            return subprocess.Popen(
                [sys.executable, "-m", "ews_runtime.cli", "run", "aggregator-group"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(tmp_path / f"{name}.log", "ab"),  # noqa: SIM115
            )

        members = {"a": start("a"), "b": start("b")}

        async def all_consumed() -> bool:
            return all([await consumed(js, s) for s in published])

        async def shared() -> bool:
            return len(set((await holders(js)).values())) == 2 and await all_consumed()

        await wait_for(shared, 90, "both members consuming, the sites shared")
        # a new site at the hub: found and consumed with nothing configured
        await add_hub_site(js, tmp_path, LATE)
        published[LATE] = readings(LATE, 0, 200)
        await publish(js, published[LATE], hub_stream_name(READINGS, LATE))

        async def late_consumed() -> bool:
            return await consumed(js, LATE)

        found = await wait_for(late_consumed, 20, "the new site consumed")
        print(f"\nnew site consumed {found:.1f} s after its streams appeared")
        assert found < 15
        # kill the member holding the most sites, while idle (nothing in flight)
        held = await holders(js)
        victim_id = Counter(held.values()).most_common(1)[0][0]
        victim = next(n for n, p in members.items() if victim_id.endswith(f"-{p.pid}"))
        moved = sorted(s for s, owner in held.items() if owner == victim_id)
        members[victim].send_signal(signal.SIGKILL)
        members[victim].wait(10)
        killed_at = time.monotonic()
        for site in SITES:  # readings go on arriving
            more = readings(site, 200, 100)
            published[site] += more
            await publish(js, more, hub_stream_name(READINGS, site))

        async def taken_over() -> bool:
            owners = await holders(js)
            return all(owners.get(s) not in (None, victim_id) for s in moved) and all(
                [await consumed(js, s) for s in moved]
            )

        failover = await wait_for(taken_over, 40, "the killed member's sites consumed by the other")
        print(
            f"\nfailover: sites {moved} of the killed member consumed again {failover:.1f} s after the kill"
        )
        assert time.monotonic() - killed_at < 30 + 1
        await wait_for(all_consumed, 30, "every site consumed")
        survivor = next(n for n in members if n != victim)
        members[survivor].send_signal(signal.SIGTERM)
        members[survivor].wait(30)
    finally:
        for proc in members.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        await nc.close()
        server.stop()
    assert LEASE_TTL < 30
    for site in SITES:
        rows = []
        for name in members:
            rows += stored_events(f"chdb://{tmp_path / name / 'clickhouse'}", hub_database(site))
        counts = Counter(rows)
        assert max(counts.values()) == 1, (
            f"{site}: stored twice: {[k for k, n in counts.items() if n > 1][:5]}"
        )
        assert {e for e, _ in counts} == {e.event_id for e in published[site]}, site
