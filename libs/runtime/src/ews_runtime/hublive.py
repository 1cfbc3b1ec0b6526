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
- Only what the edge's aggregator accepts changes the live state: each site's messages go through the
  contract's rules (``ews_contracts.intake``: strict payloads, no coercion, the subject's site and device
  are the payload's, a supported ``schema_version``, a declared device with its profile, a status event
  only from the poller), with the devices declared by the site's configuration as the hub holds it
  (``EWS_CONFIG_<site>``, every version with its stream time, followed live, as the hub's aggregator
  does). A refused message changes nothing and is logged once per cause, then counted (``RejectionLog``:
  one summary line per cause every ``SUMMARY_EVERY`` seconds), never one line per message. hub-live
  dead-letters nothing: the edge's own aggregator already recorded it in the edge's EWS_DEAD_LETTER
  (sourced to the hub), and the hub never publishes into a site's streams. A site whose configuration
  has not reached the hub yet is followed once it has (looked at again with the stream names).
- A reading sets the values it carries (merged with the previous ones: a fast-tier reading carries some
  quantities only, as on the poller) and ``updated_at``; a status event sets the state and its reason.
- The changed devices are written together at most every ``WRITE_EVERY`` seconds (one MSET); a Redis
  outage delays the writes and is logged once, never one line per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import nats
import redis.asyncio as aioredis
from ews_contracts.events import DeviceStatusChanged, ReadingTaken, SiteConfigured
from ews_contracts.hub import hub_sites
from ews_contracts.intake import (
    CONFIG_DEPENDENT,
    Declarations,
    Intake,
    Rejected,
    RejectionLog,
    stored_declarations,
)
from ews_contracts.live import LiveDevice, live_key
from ews_contracts.settings import Settings
from ews_contracts.site import Site
from ews_contracts.siteconfig import LiveSite
from ews_contracts.streamnames import streams_for
from ews_contracts.subjects import PREFIX
from ews_contracts.text import one_line
from nats.js.api import DeliverPolicy

log = logging.getLogger("ews.hub-live")

DISCOVER_EVERY = 10.0  # seconds between two looks for new sites
WRITE_EVERY = 0.2  # seconds between two writes of the changed devices at most
SUMMARY_EVERY = 60.0  # seconds between two summary lines of a cause's rejections (per site)
# where a refused message goes (the end of RejectionLog's first line of a cause: "…; sent to <this>")
NOT_HERE = "no dead-letter stream by hub-live (the edge's aggregator records it in its EWS_DEAD_LETTER)"
SKEW_NS = 1_000_000_000  # clock margin between the hub's nats-server and hub-live (stream vs wall time)


class LiveStates:
    """The latest state of every device of every site, and which ones changed since the last write."""

    def __init__(self) -> None:
        self.devices: dict[tuple[str, str], LiveDevice] = {}
        self.dirty: set[tuple[str, str]] = set()

    def apply(self, event: ReadingTaken | DeviceStatusChanged) -> None:
        """Take one accepted event (``SiteIntake.check``: its subject's site and device are its own)."""
        if isinstance(event, ReadingTaken):
            self._reading(event)
        else:
            self._status(event)

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


class SiteIntake:
    """The contract's rules for one site's messages at the hub (module doc): the same as its edge's
    aggregator applies, with the site's configuration history as the hub holds it."""

    def __init__(self, live: LiveSite) -> None:
        self.live = live
        self.site_id = live.site.site
        self.intake = Intake(self.site_id, Declarations.of(live.site))
        self.log = RejectionLog(log, every=SUMMARY_EVERY)
        self.looked_ns = 0  # wall time of the last look at the store that found no newer version
        self.tried = 0  # the newest version a reload was asked for

    async def load(self) -> None:
        """(Re)read the configuration history: at start and with each new version."""
        declarations = await stored_declarations(
            self.live.store, self.live.site, log, f" of site {self.site_id}"
        )
        if declarations.version >= self.intake.declarations.version:  # (two loads at once: the newest)
            self.intake.declarations = declarations

    async def changed(self, site: Site, event: SiteConfigured) -> None:  # noqa: ARG002
        """A listener of ``LiveSite``: a new version is in force."""
        await self.load()

    async def _newer_version(self, stored_ns: int | None) -> bool:
        """For a message refused for its device or profile: whether a version stored meanwhile, which the
        rules do not know yet, could lift it (then they are reloaded). Asked once per message stored after
        the last look at the store, not once per refused message."""
        declarations = self.intake.declarations
        if stored_ns is None or stored_ns <= declarations.latest_ns or stored_ns + SKEW_NS <= self.looked_ns:
            return False
        asked = time.time_ns()
        try:
            latest = await self.live.store.latest()
        except Exception as exc:
            log.debug("hub-live: configuration of site %s not read: %s", self.site_id, one_line(exc))
            return False
        if latest is None or latest.version <= max(declarations.version, self.tried):
            self.looked_ns = asked
            return False
        self.tried = latest.version
        await self.load()
        return True

    async def check(self, msg) -> ReadingTaken | DeviceStatusChanged | None:  # noqa: ANN001
        """The accepted event, or None for a refused message (logged by cause, nothing else: see the
        module doc on dead letters)."""
        outcome = self.intake.verdict(msg.subject, msg.data, msg.headers, msg.reply)
        if (
            isinstance(outcome, Rejected)
            and outcome.cause in CONFIG_DEPENDENT
            and await self._newer_version(outcome.stored_ns)
        ):
            outcome = self.intake.verdict(msg.subject, msg.data, msg.headers, msg.reply)
        if isinstance(outcome, Rejected):
            # not dead-lettered here: the edge's own aggregator applied the same rules to the same message
            # and published its record to the edge's EWS_DEAD_LETTER (sourced to the hub); the hub never
            # publishes into a site's streams. Logged once per cause, then counted.
            self.log.rejected(outcome.cause, outcome.reason, msg.subject, NOT_HERE)
            return None
        return outcome


class HubLive:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.states = LiveStates()
        self.changed = asyncio.Event()
        self.followed: dict[str, tuple[object, SiteIntake]] = {}  # site -> its subscription and rules
        self.failed: dict[str, str] = {}  # site -> why it is not followed yet (logged once per reason)
        self.nc = None

    async def follow(self, site: str) -> None:
        assert self.nc is not None
        js = self.nc.jetstream()
        names = streams_for(site, hub=True)
        # the site's configuration as the hub holds it: without it no device is known, nothing is taken
        live = await LiveSite.stored(js, site, names.config)
        if live is None:
            raise LookupError(f"no configuration in {names.config} yet")
        gate = SiteIntake(live)
        try:
            await gate.load()
            live.on_change(gate.changed)
            await live.follow()

            async def on_message(msg) -> None:  # noqa: ANN001
                try:
                    event = await gate.check(msg)
                    if event is not None:
                        self.states.apply(event)
                        self.changed.set()
                except Exception as exc:  # never a stall: the next message is taken
                    gate.log.rejected("malformed", one_line(exc, 200), msg.subject, NOT_HERE)

            sub = await js.subscribe(
                f"{PREFIX}.{site}.>",
                stream=names.readings,
                cb=on_message,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            )
        except BaseException:
            await live.close()
            raise
        self.followed[site] = (sub, gate)
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
                    reason = one_line(exc)
                    if self.failed.get(site) != reason:
                        log.warning("hub-live: cannot follow site %s yet: %s", site, reason)
                        self.failed[site] = reason
                else:
                    self.failed.pop(site, None)

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
                for _, gate in self.followed.values():
                    gate.log.flush()  # the rejections' summary lines, once every SUMMARY_EVERY per cause
                await asyncio.sleep(DISCOVER_EVERY)
        finally:
            writer.cancel()
            with contextlib.suppress(BaseException):
                await writer
            for _, gate in self.followed.values():
                with contextlib.suppress(Exception):
                    await gate.live.close()
            with contextlib.suppress(Exception):
                await self.nc.close()
            with contextlib.suppress(Exception):
                await redis.aclose()


async def serve(settings: Settings) -> None:
    await HubLive(settings).run()
