"""Targets: every service registers ``async def serve(settings)`` under the ``ews.targets`` entry points.

``ews run poller`` runs one; ``ews run aggregator,gateway-api`` runs a set in one process (chDB needs
the targets that touch ClickHouse to share a process). No central list to edit: a service's own
pyproject declares its target.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from importlib.metadata import entry_points

from ews_contracts.settings import Settings

Serve = Callable[[Settings], Awaitable[None]]
GROUP = "ews.targets"
log = logging.getLogger("ews.run")


def available_targets() -> dict[str, str]:
    """Target name -> ``module:function`` of every installed service."""
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def resolve(names: list[str]) -> dict[str, Serve]:
    eps = {ep.name: ep for ep in entry_points(group=GROUP)}
    unknown = [n for n in names if n not in eps]
    if unknown:
        raise ValueError(f"unknown target {', '.join(unknown)}: choose among {', '.join(sorted(eps))}")
    return {n: eps[n].load() for n in names}


async def run_targets(names: list[str], settings: Settings) -> None:
    """Run targets concurrently until SIGINT/SIGTERM or until one of them fails."""
    serves = resolve(names)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = {asyncio.create_task(fn(settings), name=name): name for name, fn in serves.items()}
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    failure: BaseException | None = None
    for task in done:
        if task is not stopper and not task.cancelled() and task.exception() is not None:
            failure = task.exception()
            log.error(
                "target %s stopped: %s", tasks[task], " ".join(str(failure).split()) or type(failure).__name__
            )
            log.debug("target %s stopped", tasks[task], exc_info=failure)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    stopper.cancel()
    if failure is not None:
        raise TargetFailed(f"{type(failure).__name__}: {' '.join(str(failure).split())}") from failure


class TargetFailed(Exception):
    """A target ended with an error (already logged on one line; the traceback at DEBUG level)."""
