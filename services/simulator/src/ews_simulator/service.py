"""Service entry point (target ``simulator``): the site's gateways as Modbus TCP servers."""

from __future__ import annotations

import asyncio

from ews_contracts.profiles import load_profiles
from ews_contracts.settings import Settings

from .site import SimulatedSite


async def serve(settings: Settings) -> None:
    """Serve ``settings.site`` on ``settings.simulator_bind`` until cancelled.

    Raises ``SimulatorError`` (one line) when a gateway's port cannot be bound.
    """
    simulator = SimulatedSite(settings.site, load_profiles(settings.profiles_dir), settings.simulator_bind)
    try:
        await simulator.start()
        await asyncio.Event().wait()
    finally:
        await simulator.stop()
