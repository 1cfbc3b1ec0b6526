"""Service entry point (target)."""

from __future__ import annotations

from ews_contracts.settings import Settings


async def serve(settings: Settings) -> None:
    raise NotImplementedError("not built yet")
