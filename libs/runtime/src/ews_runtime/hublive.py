"""Target ``hub-live`` (run by ``ews up --hub``): every site's live device state in the hub's Redis.

On a site's box the poller writes each device's ``LiveDevice`` to Redis (``ews_contracts.live``). At the
hub there is no poller: the edges' readings and status events arrive in the hub's copies of their streams
(``EWS_READINGS_<site>``, sourced from the edge, ``ews_contracts.hub``), and this target turns them into
the same keys (``live_key(site, device)``) in the hub's Redis, so the hub's pages and API show live values
exactly as an edge's do.

- Sites are found from the hub's stream names (``hub_sites``) every ``DISCOVER_EVERY`` seconds: a new
  edge shows up without anything configured at the hub.
- Per site an ordered consumer from the last message of every subject (the latest reading and status of
  each device, then everything new): after a restart of the hub the state is back at once.
- A reading sets the values it carries (merged with the previous ones: a fast-tier reading carries some
  quantities only, as on the poller) and ``updated_at``; a status event sets the state and its reason.
  A message that is not a valid event is skipped and counted (the site's own aggregator decides about
  dead letters; the hub never publishes into a site's streams).
- The changed devices are written together at most every ``WRITE_EVERY`` seconds (one MSET); a Redis
  outage delays the writes and is logged once, never one line per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats
import redis.asyncio as aioredis
from ews_contracts.events import DeviceStatusChanged, ReadingTaken
from ews_contracts.hub import hub_sites
from ews_contracts.live import LiveDevice, live_key
from ews_contracts.settings import Settings
from ews_contracts.streamnames import streams_for
from ews_contracts.subjects import PREFIX, Kind
from ews_contracts.text import one_line
from nats.js.api import DeliverPolicy
from pydantic import ValidationError

log = logging.getLogger("ews.hub-live")

DISCOVER_EVERY = 10.0  # seconds between two looks for new sites
WRITE_EVERY = 0.2  # seconds between two writes of the changed devices at most


class LiveStates:
    """The latest state of every device of every site, and which ones changed since the last write."""

    def __init__(self) -> None:
        self.devices: dict[tuple[str, str], LiveDevice] = {}
        self.dirty: set[tuple[str, str]] = set()
        self.skipped = 0

    def apply(self, subject: str, data: bytes) -> bool:
        """Take one message of a site's readings stream; False when it is not a valid event."""
        parts = subject.split(".")
        if len(parts) != 4 or parts[0] != PREFIX:
            self.skipped += 1
            return False
        kind = parts[2]
        try:
            if kind == Kind.READING:
                self._reading(ReadingTaken.model_validate_json(data))
            elif kind == Kind.STATUS:
                self._status(DeviceStatusChanged.model_validate_json(data))
            else:
                self.skipped += 1
                return False
        except (ValidationError, ValueError):
            self.skipped += 1
            return False
        return True

    def _current(self, site: str, device: str) -> LiveDevice:
        return self.devices.get((site, device)) or LiveDevice(device=device)

    def _reading(self, event: ReadingTaken) -> None:
        key = (event.site, event.device)
        now = self._current(*key)
        if now.updated_at is not None and event.occurred_at < now.updated_at:
            return  # an older reading (a back-filled hour): the live state stays the newest
        self.devices[key] = now.model_copy(
            update={
                "updated_at": event.occurred_at,
                "values": {**now.values, **event.values},
                "states": {**now.states, **event.states},
            }
        )
        self.dirty.add(key)

    def _status(self, event: DeviceStatusChanged) -> None:
        key = (event.site, event.device)
        now = self._current(*key)
        self.devices[key] = now.model_copy(
            update={"state": event.state, "reason": event.reason, "states": {**now.states, **event.states}}
        )
        self.dirty.add(key)

    def take(self) -> dict[str, str]:
        """The changed devices' keys and JSON, forgetting that they changed."""
        out = {
            live_key(site, device): self.devices[(site, device)].model_dump_json()
            for site, device in self.dirty
        }
        self.dirty = set()
        return out


class HubLive:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.states = LiveStates()
        self.changed = asyncio.Event()
        self.followed: dict[str, object] = {}  # site -> its subscription
        self.nc = None

    async def follow(self, site: str) -> None:
        assert self.nc is not None
        js = self.nc.jetstream()

        async def on_message(msg) -> None:  # noqa: ANN001
            if self.states.apply(msg.subject, msg.data):
                self.changed.set()

        self.followed[site] = await js.subscribe(
            f"{PREFIX}.{site}.>",
            stream=streams_for(site, hub=True).readings,
            cb=on_message,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        log.info("hub-live: following the live state of site %s", site)

    async def discover(self) -> None:
        assert self.nc is not None
        js = self.nc.jetstream()
        names = [info.config.name for info in await js.streams_info()]
        for site in hub_sites(names):
            if site not in self.followed:
                try:
                    await self.follow(site)
                except Exception as exc:  # tried again at the next look
                    log.warning("hub-live: cannot follow site %s yet: %s", site, one_line(exc))

    async def write(self, redis) -> None:  # noqa: ANN001
        failing: str | None = None
        while True:
            await self.changed.wait()
            self.changed.clear()
            keys = set(self.states.dirty)
            batch = self.states.take()
            if not batch:
                continue
            try:
                await redis.mset(batch)
            except Exception as exc:
                self.states.dirty |= keys  # written again next time, with whatever is newest then
                reason = one_line(exc)
                if failing is None:
                    log.warning("hub-live: writing the live state to Redis failed, will retry: %s", reason)
                failing = reason
                await asyncio.sleep(1.0)
                self.changed.set()
                continue
            if failing is not None:
                log.info("hub-live: writing the live state again")
                failing = None
            await asyncio.sleep(WRITE_EVERY)

    async def run(self) -> None:
        self.nc = await nats.connect(
            self.settings.nats_url, name="hub-live", max_reconnect_attempts=-1, reconnect_time_wait=1
        )
        redis = aioredis.from_url(self.settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        writer = asyncio.create_task(self.write(redis), name="hub-live-writer")
        try:
            while True:
                try:
                    await self.discover()
                except Exception as exc:
                    log.warning("hub-live: cannot list the hub's streams: %s", one_line(exc))
                await asyncio.sleep(DISCOVER_EVERY)
        finally:
            writer.cancel()
            with contextlib.suppress(BaseException):
                await writer
            with contextlib.suppress(Exception):
                await self.nc.close()
            with contextlib.suppress(Exception):
                await redis.aclose()


async def serve(settings: Settings) -> None:
    await HubLive(settings).run()
