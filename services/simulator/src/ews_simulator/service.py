"""Service entry point (target ``simulator``): the site's gateways as Modbus TCP servers."""

from __future__ import annotations

import asyncio
import contextlib
import time

from ews_contracts.profiles import load_profiles
from ews_contracts.settings import Settings
from ews_contracts.siteconfig import follow_configuration

from . import history
from .site import SimulatedSite


async def serve(settings: Settings) -> None:
    """Serve the site's configuration in force on ``settings.simulator_bind`` until cancelled, following
    its changes live (a device added from the browser is simulated too).

    On the first start of the bundled demo, the demo history is published first (``history.py``): the
    gateways answer once it is in the stream, so the poller's live readings follow it.

    Raises ``SimulatorError`` (one line) when a gateway's port cannot be bound.
    """
    started = time.monotonic()
    profiles = load_profiles(settings.profiles_dir)
    plan = await history.plan(settings)
    published = await history.run(settings, profiles, plan) if plan.publish else None
    simulator = SimulatedSite(
        settings.site,
        profiles,
        settings.simulator_bind,
        origin=plan.origin,
        state_file=settings.data_dir / "simulator" / "kept.json",
    )
    reporter = follower = None
    try:
        await simulator.start()
        follower = asyncio.create_task(
            follow_configuration(
                settings.nats_url,
                settings.site_path,
                "simulator",
                lambda: simulator.site,
                simulator.apply_site,
            ),
            name="simulator-configuration",
        )
        if published is not None:
            reporter = asyncio.create_task(history.report(settings, published, started), name="demo-history")
        await asyncio.Event().wait()
    finally:
        if reporter is not None:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await follower
        await simulator.stop()
