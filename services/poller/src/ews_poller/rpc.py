"""The bus owner's request/reply subjects (core NATS, not persisted): ``ews.<site>.rpc-poller.<operation>``.

- ``test-device``: read a device once before it is saved (``probe.py``).
- ``execute``: execute a device command the commands service decided (``execute.py``).

Each request is answered in its own task: a command waiting for its bus must not hold up a test read or
a command for another bus (nats-py runs one subscription's callbacks one after the other).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from ews_contracts.events import ProbeReply, ProbeRequest
from ews_contracts.subjects import poller_rpc
from ews_contracts.text import one_line
from pydantic import ValidationError

from .execute import CommandRunner, answer
from .probe import test_device

if TYPE_CHECKING:
    from .service import Poller

log = logging.getLogger("ews.poller")


async def _probe(poller: Poller, data: bytes) -> ProbeReply:
    try:
        request = ProbeRequest.model_validate_json(data)
    except ValidationError as exc:
        return ProbeReply(ok=False, error=f"bad request: {one_line(exc)}")
    try:
        return await test_device(poller, request)
    except Exception as exc:  # never leave the caller waiting for its timeout
        log.error("poller: test read failed: %s", one_line(exc))
        return ProbeReply(ok=False, error=f"{type(exc).__name__}: {one_line(exc)}")


async def serve_requests(poller: Poller, runner: CommandRunner, nats_url: str) -> None:
    """Answer test reads and commands until cancelled (connects, and reconnects, by itself)."""
    import nats

    while True:
        try:
            nc = await nats.connect(
                nats_url, name="poller-rpc", max_reconnect_attempts=-1, reconnect_time_wait=0.5
            )
            break
        except Exception:
            await asyncio.sleep(1.0)
    pending: set[asyncio.Task[None]] = set()

    def spawn(msg, reply) -> None:  # noqa: ANN001
        async def run() -> None:
            result = await reply(msg.data)
            with contextlib.suppress(Exception):  # the asker may be gone; it retries with the same id
                await msg.respond(result.model_dump_json().encode())

        task = asyncio.create_task(run())
        pending.add(task)
        task.add_done_callback(pending.discard)

    async def on_probe(msg) -> None:  # noqa: ANN001
        spawn(msg, lambda data: _probe(poller, data))

    async def on_execute(msg) -> None:  # noqa: ANN001
        spawn(msg, lambda data: answer(runner, data))

    try:
        # the site id never changes (subjects are keyed by it), so one subscription serves every version
        await nc.subscribe(poller_rpc(poller.site.site, "test-device"), cb=on_probe)
        await nc.subscribe(poller_rpc(poller.site.site, "execute"), cb=on_execute)
        await nc.flush()
        log.info("poller: answering test reads and commands on %s", poller_rpc(poller.site.site, "*"))
        await asyncio.Event().wait()
    finally:
        for task in pending:
            task.cancel()
        with contextlib.suppress(Exception):
            await nc.close()
