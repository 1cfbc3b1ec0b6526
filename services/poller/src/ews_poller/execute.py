"""Device commands on the bus: the poller, the one owner of each bus, executes what the commands service
decided (``ews.<site>.rpc-poller.execute``, core NATS request/reply).

- Between two poll transactions: the command holds the bus (``ModbusGateway.hold``) for its write and
  read-back; the bus lock serves waiters in arrival order, so a command waits at most for the poll
  transaction in progress (and commands queued before it). Never a second connection to the bus.
- Never late: the deadline is checked once the bus is held, right before the write. A command that got
  the bus after its deadline is answered ``expired`` and is never written.
- At most once: a ``command_id`` runs once; a repeated request (the commands service retrying after a
  lost reply, or redelivered after its restart) waits for / gets the first answer, not a second write.
- The request is checked again against the site and the profile (``plan_command``): only what a profile
  declares reaches a register, whoever sends the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ews_contracts.commandcheck import CommandRejected, plan_command
from ews_contracts.events import ExecuteReply, ExecuteRequest
from ews_contracts.text import one_line
from ews_fieldbus import FieldbusError
from prometheus_client import Counter

if TYPE_CHECKING:
    from .service import Poller

log = logging.getLogger("ews.poller.commands")

EXECUTED = Counter(
    "ews_poller_commands_total", "Commands the bus owner answered, by answer", ["gateway", "status"]
)
REMEMBERED = 4096  # answers kept for repeated requests (a command id is retried within its deadline)


class CommandRunner:
    """Executes commands on the poller's buses, each command id at most once."""

    def __init__(self, poller: Poller) -> None:
        self.poller = poller
        self._answers: OrderedDict[str, ExecuteReply] = OrderedDict()
        self._running: dict[str, asyncio.Task[ExecuteReply]] = {}
        self.written = 0  # commands written (for tests and metrics)

    async def handle(self, request: ExecuteRequest) -> ExecuteReply:
        """The answer to a request; the first request of a command id executes it, repeats share it."""
        known = self._answers.get(request.command_id)
        if known is not None:
            return known
        task = self._running.get(request.command_id)
        if task is None:
            task = asyncio.create_task(self._execute(request), name=f"command-{request.command_id}")
            self._running[request.command_id] = task
            device = self.poller.site.device(request.device)
            gateway = device.gateway if device is not None else ""
            task.add_done_callback(lambda t, cid=request.command_id: self._finished(cid, t, gateway))
        return await asyncio.shield(task)

    def _finished(self, command_id: str, task: asyncio.Task[ExecuteReply], gateway: str) -> None:
        self._running.pop(command_id, None)
        if task.cancelled() or task.exception() is not None:
            return
        EXECUTED.labels(gateway, task.result().status).inc()
        self._answers[command_id] = task.result()
        while len(self._answers) > REMEMBERED:
            self._answers.popitem(last=False)

    async def _execute(self, request: ExecuteRequest) -> ExecuteReply:
        received = time.monotonic()
        if datetime.now(UTC) > request.deadline:
            return _expired(request, "it reached the bus owner after its deadline")
        poller = self.poller
        try:
            plan = plan_command(poller.site, poller.profiles, request.device, request.action, request.value)
        except CommandRejected as exc:
            return ExecuteReply(status="failed", error=str(exc))
        gateway = next((g for g in poller.site.gateways if g.id == plan.device.gateway), None)
        if gateway is None:
            return ExecuteReply(status="failed", error=f"unknown gateway {plan.device.gateway!r}")
        client = poller.bus(gateway)
        unit, address = plan.device.address, plan.command.address
        async with client.hold():
            queued_ms = (time.monotonic() - received) * 1000
            if datetime.now(UTC) > request.deadline:  # it waited for the bus past its deadline
                return _expired(
                    request, f"the bus was busy until after its deadline ({queued_ms:.0f} ms)", queued_ms
                )
            try:
                await client.write_register(unit=unit, address=address, value=plan.raw)
            except FieldbusError as exc:
                return ExecuteReply(
                    status="failed", error=f"write failed: {one_line(exc)}", queued_ms=queued_ms
                )
            self.written += 1
            log.info(
                "command %s: wrote %s to register %d of unit %d on %s (%s %s=%s)",
                request.command_id,
                plan.raw,
                address,
                unit,
                gateway.id,
                plan.device.id,
                plan.command.action,
                plan.value,
            )
            if not plan.command.readback:
                return ExecuteReply(status="written", queued_ms=queued_ms)
            try:
                registers = await client.read(unit, 3, address, 1)
            except FieldbusError as exc:
                return ExecuteReply(
                    status="failed",
                    error=f"written, but the read-back failed: {one_line(exc)}",
                    queued_ms=queued_ms,
                )
        return ExecuteReply(status="written", readback=registers[0], queued_ms=queued_ms)


def _expired(request: ExecuteRequest, why: str, queued_ms: float = 0.0) -> ExecuteReply:
    return ExecuteReply(
        status="expired",
        error=f"not executed: {why} ({request.deadline.isoformat(timespec='milliseconds')})",
        queued_ms=queued_ms,
    )


async def answer(runner: CommandRunner, data: bytes) -> ExecuteReply:
    """One request's reply; never raises (the caller must not wait for its timeout on a bug)."""
    try:
        request = ExecuteRequest.model_validate_json(data)
    except ValueError as exc:
        return ExecuteReply(status="failed", error=f"bad request: {one_line(exc)}")
    try:
        return await runner.handle(request)
    except Exception as exc:
        log.error("command %s: %s", request.command_id, one_line(exc) or type(exc).__name__)
        log.debug("command %s", request.command_id, exc_info=exc)
        with contextlib.suppress(Exception):
            runner._running.pop(request.command_id, None)
        return ExecuteReply(status="failed", error=f"internal error: {type(exc).__name__}")
