"""Device commands on the bus: the poller, the one owner of each bus, executes what the commands service
decided (``ews.<site>.rpc-poller.execute``, core NATS request/reply).

- Between two poll transactions: the command holds the bus (``ModbusGateway.hold``) for its write and
  read-back; the bus lock serves waiters in arrival order, so a command waits at most for the poll
  transaction in progress (and commands queued before it). Never a second connection to the bus.
- Never late: the deadline is checked once the bus is held, right before the write. A command that got
  the bus after its deadline is answered ``expired`` and is never written.
- At most once: a ``command_id`` runs once; a repeated request (the commands service retrying after a
  lost reply, or redelivered after its restart) waits for / gets the first answer, not a second write.
  The answers are also kept in a journal on disk (``CommandJournal``: a line before the write, a line with
  the answer), so a restarted poller still knows them; a command the poller was killed in the middle of
  is settled by reading the register back, never by writing it again.
- The request is checked again against the site and the profile (``plan_command``): only what a profile
  declares reaches a register, whoever sends the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ews_contracts.commandcheck import CommandRejected, plan_command
from ews_contracts.events import ExecuteReply, ExecuteRequest
from ews_contracts.text import one_line
from ews_fieldbus import FieldbusError, ModbusGateway
from prometheus_client import Counter

if TYPE_CHECKING:
    from .service import Poller

log = logging.getLogger("ews.poller.commands")

EXECUTED = Counter(
    "ews_poller_commands_total", "Commands the bus owner answered, by answer", ["gateway", "status"]
)
REMEMBERED = 4096  # answers kept for repeated requests (a command id is retried within its deadline)


class CommandJournal:
    """Command ids and their answers on disk (JSON lines, fsynced): ``started`` right before a write,
    ``answered`` with the answer. Compacted to the last ``REMEMBERED`` answers when it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.answers: OrderedDict[str, ExecuteReply] = OrderedDict()
        self.interrupted: set[str] = set()  # started, never answered: the poller stopped in between
        self._lines = 0
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                command_id = entry["id"]
                if "answer" in entry:
                    self.answers[command_id] = ExecuteReply.model_validate(entry["answer"])
                    self.answers.move_to_end(command_id)
                    self.interrupted.discard(command_id)
                else:
                    self.interrupted.add(command_id)
            except (ValueError, KeyError, TypeError):  # a line cut by a crash: skip it
                continue
            self._lines += 1
        while len(self.answers) > REMEMBERED:
            self.answers.popitem(last=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        if text and not text.endswith("\n"):  # a line cut by a crash: end it, so the next one stands alone
            with path.open("a") as out:
                out.write("\n")

    def _append(self, entry: dict) -> None:
        with self.path.open("a") as out:
            out.write(json.dumps(entry, separators=(",", ":")) + "\n")
            out.flush()
            os.fsync(out.fileno())
        self._lines += 1

    def started(self, command_id: str) -> None:
        self._append({"id": command_id})

    def answered(self, command_id: str, reply: ExecuteReply) -> None:
        self.answers[command_id] = reply
        self.answers.move_to_end(command_id)
        self.interrupted.discard(command_id)
        self._append({"id": command_id, "answer": reply.model_dump(mode="json")})
        if self._lines > 2 * REMEMBERED:
            self._compact()

    def _compact(self) -> None:
        while len(self.answers) > REMEMBERED:
            self.answers.popitem(last=False)
        lines = [{"id": i} for i in self.interrupted]
        lines += [{"id": i, "answer": a.model_dump(mode="json")} for i, a in self.answers.items()]
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as out:
            out.writelines(json.dumps(entry, separators=(",", ":")) + "\n" for entry in lines)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.path)
        self._lines = len(lines)


class CommandRunner:
    """Executes commands on the poller's buses, each command id at most once (``journal``: across
    restarts of the poller too)."""

    def __init__(self, poller: Poller, journal: CommandJournal | None = None) -> None:
        self.poller = poller
        self.journal = journal
        self._answers: OrderedDict[str, ExecuteReply] = OrderedDict(journal.answers if journal else ())
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
        if self.journal is not None:
            try:
                self.journal.answered(command_id, task.result())
            except OSError as exc:  # the answer still holds in memory; only a restart would forget it
                log.error("command %s: its answer could not be kept on disk: %s", command_id, exc)
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
        if self.journal is not None and request.command_id in self.journal.interrupted:
            return await self._settle_interrupted(request, client, unit, address, plan.raw)
        async with client.hold():
            queued_ms = (time.monotonic() - received) * 1000
            if datetime.now(UTC) > request.deadline:  # it waited for the bus past its deadline
                return _expired(
                    request, f"the bus was busy until after its deadline ({queued_ms:.0f} ms)", queued_ms
                )
            if self.journal is not None:
                try:
                    self.journal.started(request.command_id)
                except OSError as exc:  # without the line a restart could write it twice: refuse
                    return ExecuteReply(status="failed", error=f"not written: the command journal: {exc}")
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

    async def _settle_interrupted(
        self, request: ExecuteRequest, client: ModbusGateway, unit: int, address: int, raw: int
    ) -> ExecuteReply:
        """The poller stopped between this command's write and its answer: read the register (never write
        it again) — it holds the value (written) or not (not written; it may be sent again)."""
        try:
            registers = await client.read(unit, 3, address, 1)
        except FieldbusError as exc:
            return ExecuteReply(
                status="failed",
                error=f"interrupted by a restart of the bus owner, and the read-back failed: {one_line(exc)}",
            )
        if registers[0] == raw:
            log.info("command %s: interrupted by a restart; the register holds its value", request.command_id)
            return ExecuteReply(status="written", readback=registers[0])
        return ExecuteReply(
            status="failed",
            error=f"interrupted by a restart of the bus owner before the write took effect (register {address} "
            f"holds {registers[0]}): not written; it may be sent again",
        )


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
