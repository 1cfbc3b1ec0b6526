"""Executing checked commands on Modbus: one FIFO worker per gateway, write (FC6) then read back (FC3).

A command's write and its read-back form one unit: no other command on the same gateway runs between
them, and commands on one gateway run in the order they arrived. Gateways work in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ews_contracts.commandcheck import CommandPlan
from ews_contracts.events import CommandCompleted, CommandFailed, CommandRequested
from ews_contracts.site import Gateway
from ews_contracts.text import one_line
from ews_fieldbus import FieldbusError, ModbusGateway

log = logging.getLogger("ews.commands.executor")

Outcome = CommandCompleted | CommandFailed
# Called once per command, after execution, with the outcome (publishes it, then acks the request).
OnOutcome = Callable[[CommandRequested, Outcome], Awaitable[None]]


def outcome_id(command_id: str) -> str:
    """Event id of a command's outcome: a redelivered request yields the same id (JetStream dedupes it)."""
    return f"{command_id}.outcome"


def _about(request: CommandRequested) -> dict[str, str]:
    """What every outcome repeats of its request (its id is derived: a redelivery gives the same one)."""
    return {
        "event_id": outcome_id(request.command_id),
        "site": request.site,
        "command_id": request.command_id,
        "device": request.device,
        "action": request.action,
    }


def completed(request: CommandRequested, value: str | None, readback: str | None) -> CommandCompleted:
    return CommandCompleted(**_about(request), value=value, readback=readback)


def failed(request: CommandRequested, error: str, value: str | None = None) -> CommandFailed:
    return CommandFailed(
        **_about(request),
        value=value if value is not None else request.value,
        error=one_line(error) or "unknown error",  # always one line
    )


async def execute(gateway: ModbusGateway, request: CommandRequested, plan: CommandPlan) -> Outcome:
    """Write the command's register, then (when the profile asks) read it back and compare."""
    unit, address = plan.device.address, plan.command.address
    try:
        await gateway.write_register(unit=unit, address=address, value=plan.raw)
    except FieldbusError as exc:
        return failed(request, f"write failed: {exc}", plan.value)
    if not plan.command.readback:
        return completed(request, plan.value, None)
    try:
        registers = await gateway.read(unit, 3, address, 1)
    except FieldbusError as exc:
        return failed(request, f"read-back failed: {exc}", plan.value)
    got = registers[0]
    if got != plan.raw:
        name = plan.value_name(got) or "not an allowed value"
        return failed(
            request,
            f"read-back of register {address} on unit {unit} is {got} ({name}), differs from the "
            f"{plan.raw} ({plan.value}) written",
            plan.value,
        )
    return completed(request, plan.value, plan.value_name(got))


@dataclass
class _Job:
    request: CommandRequested
    plan: CommandPlan
    on_outcome: OnOutcome


@dataclass
class GatewayWorker:
    """One gateway: its Modbus client and the FIFO of commands waiting for it."""

    gateway: Gateway
    client: ModbusGateway
    queue: asyncio.Queue[_Job] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    busy: bool = False

    async def run(self) -> None:
        while True:
            job = await self.queue.get()
            self.busy = True
            try:
                try:
                    outcome = await execute(self.client, job.request, job.plan)
                except Exception as exc:  # never let one command kill the worker
                    log.exception("command %s: unexpected error", job.request.command_id)
                    outcome = failed(
                        job.request, f"internal error: {type(exc).__name__}: {exc}", job.plan.value
                    )
                try:
                    await job.on_outcome(job.request, outcome)
                except Exception:
                    log.exception("command %s: handling its outcome failed", job.request.command_id)
            finally:
                self.busy = False
                self.queue.task_done()


class Executor:
    """All gateways of a site, each with its worker task."""

    def __init__(self, gateways: list[Gateway]) -> None:
        self.workers: dict[str, GatewayWorker] = {
            g.id: GatewayWorker(
                gateway=g,
                client=ModbusGateway.for_gateway(g),  # its transport (tcp, rtu-over-tcp, rtu), timing
            )
            for g in gateways
        }

    def start(self) -> None:
        for worker in self.workers.values():
            if worker.task is None:
                worker.task = asyncio.create_task(worker.run(), name=f"commands-{worker.gateway.id}")

    async def apply(self, gateways: list[Gateway]) -> None:
        """A new configuration: new gateways get a worker, changed ones a new worker once the old one's
        queue is done (a command in progress finishes on the connection it started on), removed ones stop."""
        wanted = {g.id: g for g in gateways}
        for gateway_id, worker in list(self.workers.items()):
            if wanted.get(gateway_id) == worker.gateway:
                continue
            await worker.queue.join()
            if worker.task is not None:
                worker.task.cancel()
                await asyncio.gather(worker.task, return_exceptions=True)
            with contextlib.suppress(Exception):
                await worker.client.close()
            del self.workers[gateway_id]
        for gateway_id, gateway in wanted.items():
            if gateway_id not in self.workers:
                self.workers[gateway_id] = GatewayWorker(gateway=gateway, client=ModbusGateway.for_gateway(gateway))
        self.start()

    def submit(self, request: CommandRequested, plan: CommandPlan, on_outcome: OnOutcome) -> None:
        self.workers[plan.device.gateway].queue.put_nowait(_Job(request, plan, on_outcome))

    async def idle(self) -> None:
        """Wait until every queued command has been executed and its outcome handled."""
        for worker in self.workers.values():
            await worker.queue.join()

    async def close(self) -> None:
        for worker in self.workers.values():
            if worker.task is not None:
                worker.task.cancel()
        await asyncio.gather(*(w.task for w in self.workers.values() if w.task), return_exceptions=True)
        for worker in self.workers.values():
            worker.task = None
            await worker.client.close()
