"""Target ``aggregator-group`` (run by ``ews up --hub``): the hub's aggregators share the sites.

Each member process:

- finds the sites every ``SCAN_EVERY`` seconds: the hub's streams ``EWS_READINGS_<site>`` with their
  ``EWS_CONFIG_<site>`` (``ews_contracts.hub.hub_sites``; put there by each edge's hub-link, so a new edge
  appears here with nothing configured at the hub);
- holds a lease per site in the key-value bucket ``ews-hub-aggregators`` (``lease.py``): ``site.<site>``,
  created to claim it, renewed every ``RENEW_EVERY`` seconds, gone ``LEASE_TTL`` seconds after its holder
  stopped renewing; and ``member.<id>`` to be counted. A member claims free sites up to its fair share
  (sites / members, rounded up) and gives one up per scan while it holds more (a member that joins gets
  its share without anyone dying);
- runs, for each site it holds, an ``AggregatorService`` on the site's hub streams into the ClickHouse
  database ``ews_<site>`` (``hub_database``), whose durable consumer ``hub-aggregator-<site>`` it takes
  over from its ack floor (``service.take_over``): one member at a time reads a site, in order; what a
  dead member had acked is stored, the rest comes again, and the aggregator counts nothing twice.

A member that cannot renew a lease for ``STALE_AFTER`` seconds (NATS away from it) stops that site before
the lease can expire and be taken. A member that stops cleanly gives its sites up at once; one killed
loses them after ``LEASE_TTL``: its sites run elsewhere within ``LEASE_TTL + RENEW_EVERY`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import socket
import time

import nats
from ews_contracts.hub import HUB_DELIVER, hub_database, hub_sites
from ews_contracts.settings import Settings
from ews_contracts.streamnames import streams_for
from ews_contracts.text import one_line

from .lease import Leases, open_bucket
from .service import AggregatorService

log = logging.getLogger("ews.aggregator-group")

LEASE_TTL = 15.0  # seconds a lease lives without renewal (the bucket's max_age)
RENEW_EVERY = 3.0
SCAN_EVERY = 5.0  # seconds between two looks for new sites (a new edge is consumed within ~10 s)
STALE_AFTER = LEASE_TTL * 0.6
RETRY_AFTER = 30.0  # seconds before a site whose aggregator failed is claimed again by this member
SITE_KEY = "site."
MEMBER_KEY = "member."


def member_id() -> str:
    """This process, as a key of the bucket: host and pid."""
    return re.sub(r"[^-_A-Za-z0-9]", "-", f"{socket.gethostname()}-{os.getpid()}")


class Member:
    """One member of the group (module doc)."""

    def __init__(self, settings: Settings, ident: str | None = None) -> None:
        self.settings = settings
        self.ident = ident or member_id()
        self.nc = None
        self.js = None
        self.leases: Leases | None = None
        self.sites: list[str] = []
        self.running: dict[str, asyncio.Task] = {}
        self.failed: dict[str, float] = {}  # site -> when its aggregator failed here
        self.members = 1
        self.scanned_at = 0.0

    async def run(self) -> None:
        self.nc = await nats.connect(
            self.settings.nats_url,
            name=f"aggregator-group-{self.ident}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
        )
        self.js = self.nc.jetstream(timeout=5.0)
        self.leases = Leases(await open_bucket(self.js, LEASE_TTL), self.ident)
        await self.leases.claim(MEMBER_KEY + self.ident)
        log.info("aggregator-group member %s started (leases of %.0f s)", self.ident, LEASE_TTL)
        trouble = ""  # the last reason a tick failed (said once, and once when it works again)
        while True:
            try:
                await self.tick()
            except Exception as exc:  # NATS away …: try again at the next tick
                if one_line(exc) != trouble:
                    log.warning(
                        "leases and sites not checked (tried again every %.0f s): %s",
                        RENEW_EVERY,
                        one_line(exc),
                    )
                trouble = one_line(exc)
            else:
                if trouble:
                    log.info("leases and sites checked again")
                trouble = ""
            await asyncio.sleep(RENEW_EVERY)

    async def tick(self) -> None:
        assert self.leases is not None
        await self.renew()
        now = time.monotonic()
        if now - self.scanned_at >= SCAN_EVERY:
            self.scanned_at = now
            await self.scan()
            await self.rebalance()
        await self.claim()

    async def renew(self) -> None:
        assert self.leases is not None
        for key in list(self.leases.held):
            try:
                kept = await self.leases.renew(key)
            except Exception as exc:
                kept = None
                log.debug("lease %s not renewed: %s", key, one_line(exc))
            site = key.removeprefix(SITE_KEY) if key.startswith(SITE_KEY) else None
            if key == MEMBER_KEY + self.ident and kept is False:
                await self.leases.claim(key)  # expired while NATS was away: counted again
            elif site is not None and kept is False:
                log.warning("the lease of site %s was lost; another member has it", site)
                await self.stop_site(site, release=False)
            elif site is not None and kept is None and self.leases.stale(key, STALE_AFTER):
                log.warning("the lease of site %s cannot be renewed; stopping it here", site)
                await self.stop_site(site, release=False)

    async def scan(self) -> None:
        assert self.js is not None and self.leases is not None
        names = [info.config.name async for info in self._streams()]
        sites = hub_sites(names)
        for site in set(sites) - set(self.sites):
            log.info("site %s found at the hub", site)
        self.sites = sites
        self.members = max(1, await self.leases.count(MEMBER_KEY))

    async def _streams(self):
        assert self.js is not None
        offset = 0
        while True:
            page = await self.js.streams_info(offset=offset)
            for info in page:
                yield info
            if len(page) < 256:  # the API's page size
                return
            offset += len(page)

    @property
    def share(self) -> int:
        return math.ceil(len(self.sites) / self.members) if self.sites else 0

    async def claim(self) -> None:
        assert self.leases is not None
        now = time.monotonic()
        for site in self.sites:
            if len(self.running) >= self.share:
                return
            if site in self.running or now - self.failed.get(site, -RETRY_AFTER) < RETRY_AFTER:
                continue
            if await self.leases.claim(SITE_KEY + site):
                self.start_site(site)

    async def rebalance(self) -> None:
        """Give one site up while holding more than the fair share (another member takes it)."""
        if len(self.running) > self.share and self.members > 1:
            site = sorted(self.running)[-1]
            log.info("giving site %s up to another member (%d members)", site, self.members)
            await self.stop_site(site, release=True)

    def start_site(self, site: str) -> None:
        log.info("member %s takes site %s", self.ident, site)
        task = asyncio.create_task(self.run_site(site), name=f"hub-aggregator-{site}")
        self.running[site] = task

    async def run_site(self, site: str) -> None:
        service = AggregatorService(
            self.settings,
            streams_for(site, hub=True),
            hub_database(site),
            deliver=f"{HUB_DELIVER}.{site}.{self.ident}",
        )
        try:
            await service.start()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("site %s stopped here (tried again later): %s", site, one_line(exc))
            self.failed[site] = time.monotonic()
            self.running.pop(site, None)
            assert self.leases is not None
            await self.leases.release(SITE_KEY + site)
        finally:
            if service.sub is not None and service.batcher is not None:
                with contextlib.suppress(Exception):
                    await service.stop_consuming()  # the batch being written is written and acked
            await service.stop()

    async def stop_site(self, site: str, release: bool) -> None:
        task = self.running.pop(site, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert self.leases is not None
        if release:
            await self.leases.release(SITE_KEY + site)
        else:
            self.leases.forget(SITE_KEY + site)

    async def stop(self) -> None:
        for site in list(self.running):
            await self.stop_site(site, release=True)
        if self.leases is not None:
            await self.leases.release(MEMBER_KEY + self.ident)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()


async def serve(settings: Settings) -> None:
    member = Member(settings)
    try:
        await member.run()
    finally:
        await member.stop()
