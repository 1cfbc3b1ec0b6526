"""Device commands: ``POST /api/v1/commands`` publishes CommandRequested; ``GET /api/v1/commands/{id}`` reports it.

The command's record lives in Redis (``ews:<site>:command:<id>``, kept ``RECORD_TTL``). The request is
checked against the site and the device profile before it is published (the commands service checks
again before writing). The outcome arrives as CommandCompleted / CommandFailed on JetStream: this
module's ``lifespan`` runs a subscriber (its own NATS connection; durable pull consumers shared by
every gateway-api instance) that updates the record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Literal

from ews_contracts.bus import ensure_streams, jstream, make_broker, publish_event
from ews_contracts.commandcheck import CommandRejected, plan_command
from ews_contracts.events import CommandCompleted, CommandFailed, CommandRequested, utcnow
from ews_contracts.roles import Permission
from ews_contracts.streams import COMMANDS
from ews_contracts.subjects import Kind, pattern
from faststream import AckPolicy
from faststream.nats import NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage
from litestar import Litestar, Request, Router, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import BaseModel, Field, ValidationError

from ..errors import ApiError
from ..guards import current_role, requires
from ..i18n import N_

log = logging.getLogger("ews.gateway-api.commands")

RECORD_TTL = 3 * 86_400  # seconds a command's record stays answerable
Status = Literal["requested", "completed", "failed"]


class CommandBody(BaseModel):
    """A device command: one of the actions its profile declares, with one of the allowed values."""

    device: str = Field(min_length=1, max_length=64, examples=["ev1"])
    action: str = Field(min_length=1, max_length=64, examples=["charge"])
    value: str | None = Field(
        default=None,
        max_length=64,
        examples=["start"],
        description="One of the action's allowed values; may be omitted when the action has only one.",
    )


class CommandStatus(BaseModel):
    id: str = Field(description="Command id (the CommandRequested's command_id).")
    status: Status
    device: str
    action: str
    value: str | None = None
    requested_by: str | None = Field(default=None, description="Role that asked.")
    requested_at: datetime | None = None
    finished_at: datetime | None = Field(default=None, description="When the outcome was recorded.")
    readback: str | None = Field(default=None, description="Value read back after the write (completed).")
    error: str | None = Field(default=None, description="One line naming the problem (failed).")


def record_key(site: str, command_id: str) -> str:
    return f"ews:{site}:command:{command_id}"


def _decode(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


async def _save(redis: Any, site: str, status: CommandStatus) -> None:
    await redis.set(record_key(site, status.id), status.model_dump_json(), ex=RECORD_TTL)


async def apply_outcome(redis: Any, site: str, outcome: CommandCompleted | CommandFailed) -> CommandStatus:
    """Record an outcome. Idempotent: a redelivered outcome leaves a finished record as it is."""
    existing = _decode(await redis.get(record_key(site, outcome.command_id)))
    if existing is not None and existing.get("status") in ("completed", "failed"):
        return CommandStatus.model_validate(existing)
    base = existing or {}
    status = CommandStatus(
        id=outcome.command_id,
        status="completed" if isinstance(outcome, CommandCompleted) else "failed",
        device=outcome.device,
        action=outcome.action,
        value=outcome.value if outcome.value is not None else base.get("value"),
        requested_by=base.get("requested_by"),
        requested_at=base.get("requested_at"),
        finished_at=outcome.occurred_at,
        readback=outcome.readback if isinstance(outcome, CommandCompleted) else None,
        error=outcome.error if isinstance(outcome, CommandFailed) else None,
    )
    await _save(redis, site, status)
    return status


# --- routes ----------------------------------------------------------------------------------------


@post(
    "/commands",
    guards=[requires(Permission.COMMAND_DEVICES)],
    operation_id="requestCommand",
    summary="Send a command to a device",
    description="Checks the device, action and value against the site and the device profile (404 unknown "
    "device, 400 otherwise), publishes CommandRequested and returns 202 with the command id; poll "
    "GET /api/v1/commands/{id} for the outcome.",
    status_code=202,
    tags=["commands"],
)
async def request_command(request: Request[Any, Any, State], data: CommandBody) -> CommandStatus:
    return await submit_command(request.app.state, current_role(request) or "", data)


async def submit_command(state: State, role: str, data: CommandBody) -> CommandStatus:
    """Check a command against the site and the device profile, record it and publish CommandRequested
    (the API's and the pages' way to command a device). 404 unknown device, 400 a command or value the
    profile does not declare, 503 when the event bus does not take it."""
    site = state.site
    try:
        plan = plan_command(site, state.profiles, data.device, data.action, data.value)
    except CommandRejected as exc:
        if exc.not_found:
            raise NotFoundException(str(exc)) from None
        raise HTTPException(status_code=400, detail=str(exc)) from None
    event = CommandRequested(
        site=site.site, device=plan.device.id, action=plan.command.action, value=plan.value, requested_by=role
    )
    status = CommandStatus(
        id=event.command_id,
        status="requested",
        device=event.device,
        action=event.action,
        value=event.value,
        requested_by=role,
        requested_at=event.occurred_at,
    )
    # The record exists before the request is published, so an outcome can never arrive before it.
    await _save(state.redis, site.site, status)
    try:
        await publish_event(state.broker, event)
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        log.warning("command %s: cannot publish CommandRequested: %s", event.command_id, reason)
        failed = status.model_copy(
            update={"status": "failed", "error": f"not sent: {reason}", "finished_at": utcnow()}
        )
        await _save(state.redis, site.site, failed)
        raise ApiError(
            503, "bus-unavailable", N_("the command could not be sent (event bus unavailable); try again")
        ) from None
    return status


async def command_status(state: State, command_id: str) -> CommandStatus:
    """A command's record; 404 when unknown or older than the records are kept."""
    record = _decode(await state.redis.get(record_key(state.site.site, command_id)))
    if record is None:
        raise ApiError(
            404,
            "unknown-command",
            N_("unknown command %(command)s (or older than %(days)s days)"),
            command=repr(command_id),
            days=RECORD_TTL // 86_400,
        )
    return CommandStatus.model_validate(record)


@get(
    "/commands/{command_id:str}",
    guards=[requires(Permission.COMMAND_DEVICES)],
    operation_id="getCommand",
    summary="A command's status",
    description="requested until the commands service records its outcome, then completed (with the "
    "read-back value) or failed (with the error). Records are kept three days.",
    tags=["commands"],
)
async def get_command(request: Request[Any, Any, State], command_id: str) -> CommandStatus:
    return await command_status(request.app.state, command_id)


router = Router(path="/api/v1", route_handlers=[request_command, get_command])


# --- outcomes --------------------------------------------------------------------------------------


def outcome_broker(app: Litestar) -> NatsBroker:
    """A broker whose durable pull consumers feed command outcomes into the Redis records."""
    state = app.state
    site = state.site.site
    broker = make_broker(state.settings.nats_url, "gateway-api-commands")

    async def on_outcome(msg: NatsMessage) -> None:
        subject = msg.raw_message.subject
        model = CommandCompleted if f".{Kind.COMMAND_COMPLETED}." in subject else CommandFailed
        try:
            outcome = model.model_validate_json(msg.body)
        except ValidationError as exc:  # acked and dropped: a bad event must not block the consumer
            first = exc.errors()[0] if exc.errors() else {}
            log.warning(
                "ignoring a malformed %s on %s: %s %s",
                model.__name__,
                subject,
                ".".join(map(str, first.get("loc", ()))),
                first.get("msg", ""),
            )
            return
        if outcome.site != site:
            log.warning("ignoring %s %s for site %r", model.__name__, outcome.command_id, outcome.site)
            return
        await apply_outcome(state.redis, site, outcome)  # a Redis error nacks: redelivered later

    for kind in (Kind.COMMAND_COMPLETED, Kind.COMMAND_FAILED):
        broker.subscriber(
            pattern(site, kind),
            stream=jstream(COMMANDS),
            durable=f"gateway-api-{site}-{kind}",
            pull_sub=PullSub(batch_size=16, timeout=5.0),
            config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW, ack_wait=30, max_deliver=20),
            ack_policy=AckPolicy.NACK_ON_ERROR,
            title=f"gateway-api:{kind}",
            description="Updates the command's record (GET /api/v1/commands/{id}).",
        )(on_outcome)
    return broker


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    broker = outcome_broker(app)
    await broker.connect()
    try:
        await ensure_streams(broker)
        await broker.start()
        log.info("recording command outcomes of site %s", app.state.site.site)
        yield
    finally:
        await broker.stop()
