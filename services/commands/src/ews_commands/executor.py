"""Having checked commands executed by the bus owner: one FIFO queue per gateway, each command asked of the
poller (``ews.<site>.rpc-poller.execute``, NATS request/reply) until it answers or the deadline passes.

The commands service never opens a bus: the poller holds each gateway's only connection and runs the
write and its read-back between two poll transactions. This module turns its answer into the outcome
event; the comparison of the read-back with the value written is the commands service's decision.

Exactly once or expired:
- every attempt carries the same ``command_id``; the poller executes an id at most once and answers a
  repeat with the first answer, so a retry after a lost reply never writes twice;
- the poller refuses to write after the deadline (it checks once it holds the bus);
- after the deadline one last request settles it: the poller answers the real outcome when it ran the
  command, or ``expired`` — and from then on it remembers that id as expired, so it is never written later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ews_contracts.commandcheck import CommandPlan
from ews_contracts.events import (
    CommandCompleted,
    CommandExpired,
    CommandFailed,
    CommandRequested,
    ExecuteReply,
    ExecuteRequest,
)
from ews_contracts.site import Gateway
from ews_contracts.subjects import poller_rpc
from ews_contracts.text import one_line

log = logging.getLogger("ews.commands.executor")

Outcome = CommandCompleted | CommandFailed | CommandExpired
# Called once per command, after execution, with the outcome (publishes it, then acks the request).
OnOutcome = Callable[[CommandRequested, Outcome], Awaitable[None]]
# Sends one request to the bus owner: (subject, payload, timeout) -> reply payload; raises TimeoutError
# when nobody answered in time and NoResponders when nobody listens.
Ask = Callable[[str, bytes, float], Awaitable[bytes]]

ATTEMPT = 5.0  # seconds one request waits for the bus owner before asking again (same command id)
RETRY_NOBODY = 0.5  # seconds between attempts while no bus owner listens


class NoResponders(Exception):
    """Nobody answers the subject (the poller is not running or not connected)."""


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


def expired(
    request: CommandRequested, deadline: datetime, error: str, value: str | None = None
) -> CommandExpired:
    return CommandExpired(
        **_about(request),
        value=value if value is not None else request.value,
        deadline=deadline,
        error=one_line(error) or "not executed before its deadline",
    )


def settle_time(gateway: Gateway | None) -> float:
    """Seconds a command may still be on the bus once its deadline passed: the poller checks the deadline
    right before the write, then the write and the read-back each take at most timeout × (retries + 1)."""
    if gateway is None:
        return ATTEMPT
    return 2 * gateway.timeout * (gateway.retries + 1) + 2.0


def outcome_of(
    request: CommandRequested, plan: CommandPlan, deadline: datetime, reply: ExecuteReply | None
) -> Outcome:
    """The outcome event of the bus owner's answer (None: it never answered)."""
    if reply is None:
        return expired(
            request,
            deadline,
            "not executed: the bus owner (poller) did not answer before the deadline "
            f"({deadline.isoformat(timespec='milliseconds')})",
            plan.value,
        )
    if reply.status == "expired":
        return expired(request, deadline, reply.error, plan.value)
    if reply.status == "failed":
        return failed(request, reply.error, plan.value)
    if not plan.command.readback or reply.readback is None:
        return completed(request, plan.value, None)
    got = reply.readback
    if got != plan.raw:
        unit, address = plan.device.address, plan.command.address
        name = plan.value_name(got) or "not an allowed value"
        return failed(
            request,
            f"read-back of register {address} on unit {unit} is {got} ({name}), differs from the "
            f"{plan.raw} ({plan.value}) written",
            plan.value,
        )
    return completed(request, plan.value, plan.value_name(got))


async def ask_owner(
    ask: Ask, site: str, request: CommandRequested, deadline: datetime, settle: float
) -> ExecuteReply | None:
    """The bus owner's answer, asked again (same command id) until the deadline; then once more to settle."""
    payload = (
        ExecuteRequest(
            command_id=request.command_id,
            device=request.device,
            action=request.action,
            value=request.value,
            deadline=deadline,
        )
        .model_dump_json()
        .encode()
    )
    subject = poller_rpc(site, "execute")
    while True:
        remaining = (deadline - datetime.now(UTC)).total_seconds()
        last = remaining <= 0
        timeout = settle if last else min(ATTEMPT, remaining + settle)
        try:
            return ExecuteReply.model_validate_json(await ask(subject, payload, timeout))
        except NoResponders:
            if last:
                return None
            await asyncio.sleep(min(RETRY_NOBODY, max(remaining, 0.0)))
        except TimeoutError:
            if last:
                return None
        except ValueError as exc:  # an answer that is not an ExecuteReply
            log.warning("command %s: bad answer from the bus owner: %s", request.command_id, one_line(exc))
            if last:
                return None
            await asyncio.sleep(RETRY_NOBODY)


@dataclass
class _Job:
    request: CommandRequested
    plan: CommandPlan
    deadline: datetime
    on_outcome: OnOutcome


@dataclass
class GatewayQueue:
    """One gateway's commands, asked of the bus owner one after the other in arrival order."""

    gateway: Gateway
    ask: Ask
    site: str
    queue: asyncio.Queue[_Job] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                try:
                    reply = await ask_owner(
                        self.ask, self.site, job.request, job.deadline, settle_time(self.gateway)
                    )
                    outcome = outcome_of(job.request, job.plan, job.deadline, reply)
                except Exception as exc:  # never let one command kill the queue
                    log.exception("command %s: unexpected error", job.request.command_id)
                    outcome = failed(
                        job.request, f"internal error: {type(exc).__name__}: {exc}", job.plan.value
                    )
                try:
                    await job.on_outcome(job.request, outcome)
                except Exception:
                    log.exception("command %s: handling its outcome failed", job.request.command_id)
            finally:
                self.queue.task_done()


class Executor:
    """All gateways of a site, each with its queue of commands for the bus owner."""

    def __init__(self, site: str, gateways: list[Gateway], ask: Ask) -> None:
        self.site = site
        self.ask = ask
        self.queues: dict[str, GatewayQueue] = {}
        self._set(gateways)

    def _set(self, gateways: list[Gateway]) -> None:
        for gateway in gateways:
            queue = self.queues.get(gateway.id)
            if queue is None:
                self.queues[gateway.id] = GatewayQueue(gateway, self.ask, self.site)
            else:
                queue.gateway = gateway  # (its timing sets how long an expired command may settle)

    def start(self) -> None:
        for queue in self.queues.values():
            if queue.task is None:
                queue.task = asyncio.create_task(queue.run(), name=f"commands-{queue.gateway.id}")

    async def apply(self, gateways: list[Gateway]) -> None:
        """A new configuration: new gateways get a queue; a removed one's queue ends once it is empty."""
        wanted = {g.id for g in gateways}
        for gateway_id, queue in list(self.queues.items()):
            if gateway_id in wanted:
                continue
            await queue.queue.join()
            if queue.task is not None:
                queue.task.cancel()
                await asyncio.gather(queue.task, return_exceptions=True)
            del self.queues[gateway_id]
        self._set(gateways)
        self.start()

    def submit(
        self, request: CommandRequested, plan: CommandPlan, deadline: datetime, on_outcome: OnOutcome
    ) -> None:
        self.queues[plan.device.gateway].queue.put_nowait(_Job(request, plan, deadline, on_outcome))

    async def idle(self) -> None:
        """Wait until every queued command has been executed and its outcome handled."""
        for queue in self.queues.values():
            await queue.queue.join()

    async def close(self) -> None:
        for queue in self.queues.values():
            if queue.task is not None:
                queue.task.cancel()
        await asyncio.gather(*(q.task for q in self.queues.values() if q.task), return_exceptions=True)
        for queue in self.queues.values():
            queue.task = None
