"""Device commands: ``POST /api/v1/commands`` publishes CommandRequested; ``GET /api/v1/commands/{id}`` reports it.

The command's record lives in Redis (``ews:<site>:command:<id>``, kept ``RECORD_TTL``). The request is
checked against the site and the device profile before it is published (the commands service checks
again before writing). The outcome arrives as CommandCompleted / CommandFailed / CommandExpired on
JetStream: this module's ``lifespan`` runs a subscriber (its own NATS connection; durable pull consumers
shared by every gateway-api instance) that updates the record.

Exactly once or expired: every command carries a deadline. When the event bus does not confirm the
request, it may still have reached it, so the answer is 202 ``requested`` and the same message (same
``Nats-Msg-Id``: JetStream stores it once) is sent again in the background; whatever happens, the
executor refuses it after its deadline. A record still ``requested`` ``EXPIRY_GRACE`` seconds after its
deadline is therefore recorded ``expired`` when it is read (an *inferred* expiry). The first finished
status sticks — a redelivered or contradicting outcome is not stored, one log line names the conflict —
with one exception: a real outcome replaces an inferred expiry (the bus owner may have executed the
command before its deadline while its outcome was held up past the grace: what happened wins, logged). An
``Idempotency-Key`` header makes a retried POST answer the first command instead of sending a second one.

``GET /api/v1/commands`` is the command log: the most recent commands and their outcomes, read from the
tail of EWS_COMMANDS (the audit log, kept longer than the records); see its section at the end.

At the hub (``?site=``), a command goes to the site's edge through the leaf node, and its record is the
hub's own until the edge's arrive in ``EWS_COMMANDS_<site>``: ``hubcommands``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from ews_contracts.bus import ensure_streams, jstream, make_broker, publish_event
from ews_contracts.commandcheck import CommandRejected, plan_command
from ews_contracts.events import CommandCompleted, CommandExpired, CommandFailed, CommandRequested, utcnow
from ews_contracts.roles import Permission
from ews_contracts.site import ID_PATTERN
from ews_contracts.streamio import StreamIOError, read_stream
from ews_contracts.streamnames import BOX
from ews_contracts.streams import COMMANDS
from ews_contracts.subjects import PREFIX, Kind, pattern, subject
from faststream import AckPolicy
from faststream.nats import NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage
from litestar import Litestar, Request, Router, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import Parameter
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError as StreamNotFound
from pydantic import BaseModel, Field, ValidationError

from ..errors import ApiError
from ..guards import current_role, requires
from ..i18n import N_
from ..openapi import error
from ..sites import SITE_PARAMETER, is_hub, site_state
from . import hubcommands

log = logging.getLogger("ews.gateway-api.commands")

RECORD_TTL = 3 * 86_400  # seconds a command's record stays answerable
EXPIRY_GRACE = 30.0  # seconds after its deadline a command without an outcome reads expired
REPUBLISH_FOR = 60.0  # seconds an unconfirmed request is sent again (within the stream's dedupe window)
MAX_DEADLINE = 600.0  # seconds: the longest deadline a request may ask for
Status = Literal["requested", "completed", "failed", "expired"]


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
    deadline_seconds: float | None = Field(
        default=None,
        gt=0,
        le=MAX_DEADLINE,
        examples=[30],
        description="Execute within this many seconds or not at all (status expired). Default: "
        "EWS_COMMAND_DEADLINE (30 s).",
    )


class CommandStatus(BaseModel):
    id: str = Field(description="Command id (the CommandRequested's command_id).")
    status: Status
    device: str
    action: str
    value: str | None = None
    requested_by: str | None = Field(default=None, description="Role that asked.")
    requested_at: datetime | None = None
    deadline: datetime | None = Field(default=None, description="Not executed after this instant.")
    finished_at: datetime | None = Field(default=None, description="When the outcome was recorded.")
    readback: str | None = Field(default=None, description="Value read back after the write (completed).")
    error: str | None = Field(default=None, description="One line naming the problem (failed, expired).")


def record_key(site: str, command_id: str) -> str:
    return f"ews:{site}:command:{command_id}"


async def _save(redis: Any, site: str, status: CommandStatus) -> None:
    await redis.set(record_key(site, status.id), status.model_dump_json(), ex=RECORD_TTL)


Outcome = CommandCompleted | CommandFailed | CommandExpired
OUTCOMES: dict[Kind, type[Outcome]] = {
    Kind.COMMAND_COMPLETED: CommandCompleted,
    Kind.COMMAND_FAILED: CommandFailed,
    Kind.COMMAND_EXPIRED: CommandExpired,
}
_STATUS = {CommandCompleted: "completed", CommandFailed: "failed", CommandExpired: "expired"}


async def apply_outcome(redis: Any, site: str, outcome: Outcome) -> CommandStatus:
    """Record an outcome. The first finished status sticks: a redelivered outcome leaves a finished record
    as it is, and an outcome that contradicts it is logged in one line and not stored — except an expiry
    the gateway inferred (``hubcommands.inferred``), which the bus owner's real outcome replaces (logged)."""
    replaced: list[dict[str, Any]] = []

    def finished(existing: dict[str, Any] | None) -> str:
        base = existing or {}
        if hubcommands.inferred(existing):
            replaced.append(base)
        return CommandStatus(
            id=outcome.command_id,
            status=_STATUS[type(outcome)],
            device=outcome.device,
            action=outcome.action,
            value=outcome.value if outcome.value is not None else base.get("value"),
            requested_by=base.get("requested_by"),
            requested_at=base.get("requested_at"),
            deadline=outcome.deadline if isinstance(outcome, CommandExpired) else base.get("deadline"),
            finished_at=outcome.occurred_at,
            readback=outcome.readback if isinstance(outcome, CommandCompleted) else None,
            error=None if isinstance(outcome, CommandCompleted) else outcome.error,
        ).model_dump_json()

    record, stored = await hubcommands.settle(
        redis, record_key(site, outcome.command_id), RECORD_TTL, finished, replaces=hubcommands.inferred
    )
    status = CommandStatus.model_validate(record)
    if stored and replaced:
        log.warning(
            "command %s: its %s outcome arrived after the deadline and the grace; it replaces the expiry "
            "inferred meanwhile",
            outcome.command_id,
            _STATUS[type(outcome)],
        )
    if not stored and status.status != _STATUS[type(outcome)]:
        log.warning(
            "command %s: %s outcome ignored, it was already recorded %s",
            outcome.command_id,
            _STATUS[type(outcome)],
            status.status,
        )
    return status


NO_OUTCOME = hubcommands.NO_OUTCOME


def _past_grace(status: CommandStatus) -> bool:
    return (
        status.status == "requested"
        and status.deadline is not None
        and utcnow() > status.deadline + timedelta(seconds=EXPIRY_GRACE)
    )


async def expire_record(
    redis: Any,
    site: str,
    status: CommandStatus,
    error: str = NO_OUTCOME,
    key: str | None = None,
    ttl: int = RECORD_TTL,
) -> CommandStatus:
    """Record ``status`` (still requested, its deadline and the grace past) as expired with ``error``,
    unless an outcome was recorded meanwhile (that one stands). ``key``/``ttl``: the hub's record of a
    command it sent instead of the site's record."""

    def expired(existing: dict[str, Any] | None) -> str:
        base = CommandStatus.model_validate(existing) if existing is not None else status
        return base.model_copy(
            update={"status": "expired", "error": error, "finished_at": utcnow()}
        ).model_dump_json()

    record, stored = await hubcommands.settle(redis, key or record_key(site, status.id), ttl, expired)
    if stored:
        log.info(
            "command %s: no outcome %.0f s after its deadline, recorded expired", status.id, EXPIRY_GRACE
        )
    return CommandStatus.model_validate(record)


# --- routes ----------------------------------------------------------------------------------------


@post(
    "/commands",
    guards=[requires(Permission.COMMAND_DEVICES)],
    operation_id="requestCommand",
    summary="Send a command to a device",
    description="Checks the device, action and value against the site and the device profile (404 unknown "
    "device, 400 otherwise), publishes CommandRequested and returns 202 with the command id and its "
    "deadline; poll GET /api/v1/commands/{id} for the outcome. 202 whenever the request may reach the bus "
    "(it then ends completed, failed or expired, never executed twice). With an `Idempotency-Key` header "
    "a retried POST (same key, same role) answers the first command instead of sending a second; the "
    "same key with a different command is 409. 503 only when the request certainly went nowhere. At a hub "
    "(`?site=`) the command goes to the site's own server, and is sent again until its deadline while that "
    "server cannot be reached (it then reads expired: never executed after its deadline).",
    status_code=202,
    tags=["commands"],
    responses={
        404: error("No such device (not-found)."),
        409: error("This Idempotency-Key was already used for a different command (idempotency-key-reused)."),
    },
)
async def request_command(
    request: Request[Any, Any, State],
    data: CommandBody,
    idempotency_key: Annotated[
        str | None,
        Parameter(
            header="Idempotency-Key",
            required=False,
            min_length=1,
            max_length=255,
            description="Any unique string (e.g. a UUID) chosen by the client for this command; kept 3 days.",
        ),
    ] = None,
) -> CommandStatus:
    return await submit_command(site_state(request), current_role(request) or "", data, idempotency_key)


def _idempotency_key(site: str, role: str, key: str) -> str:
    digest = hashlib.sha256(role.encode() + b"\n" + key.encode()).hexdigest()
    return f"ews:{site}:command-key:{digest}"


async def _earlier(
    state: State, role: str, key: str, data: CommandBody, command_id: str
) -> CommandStatus | None:
    """Claim ``key`` for ``command_id``; when a command already holds it, that command's status (409 when
    the key was used for a different command)."""
    fingerprint = data.model_dump_json()
    claim = json.dumps({"command": command_id, "request": fingerprint})
    redis_key = _idempotency_key(state.site.site, role, key)
    for _ in range(3):
        if await state.redis.set(redis_key, claim, nx=True, ex=RECORD_TTL):
            return None
        held = hubcommands.decode_record(await state.redis.get(redis_key))
        if held is None:  # expired between the two calls: claim again
            continue
        if held.get("request") != fingerprint:
            raise ApiError(
                409,
                "idempotency-key-reused",
                N_("this Idempotency-Key was already used for a different command"),
            )
        for _ in range(20):  # the first request is still recording its command
            try:
                return await command_status(state, str(held.get("command")))
            except ApiError:
                await asyncio.sleep(0.05)
        return await command_status(state, str(held.get("command")))
    return None


async def submit_command(
    state: State, role: str, data: CommandBody, idempotency_key: str | None = None
) -> CommandStatus:
    """Check a command against the site and the device profile, record it and publish CommandRequested
    (the API's and the pages' way to command a device). 404 unknown device, 400 a command or value the
    profile does not declare, 503 when the event bus certainly did not take it."""
    site = state.site
    try:
        plan = plan_command(site, state.profiles, data.device, data.action, data.value)
    except CommandRejected as exc:
        if exc.not_found:
            raise NotFoundException(str(exc)) from None
        raise HTTPException(status_code=400, detail=str(exc)) from None
    now = utcnow()
    seconds = data.deadline_seconds or state.settings.command_deadline
    event = CommandRequested(
        site=site.site,
        occurred_at=now,
        device=plan.device.id,
        action=plan.command.action,
        value=plan.value,
        requested_by=role,
        deadline=now + timedelta(seconds=seconds),
    )
    if idempotency_key is not None:
        earlier = await _earlier(state, role, idempotency_key, data, event.command_id)
        if earlier is not None:
            return earlier
    status = CommandStatus(
        id=event.command_id,
        status="requested",
        device=event.device,
        action=event.action,
        value=event.value,
        requested_by=role,
        requested_at=event.occurred_at,
        deadline=event.deadline,
    )
    if is_hub(state):
        await _send_from_hub(state, event, status)
        return status
    # The record exists before the request is published, so an outcome can never arrive before it.
    await _save(state.redis, site.site, status)
    try:
        await publish_event(state.broker, event)
    except NoRespondersError:  # nothing stores this subject: it went nowhere
        log.warning("command %s: no stream takes CommandRequested", event.command_id)
        await _save(
            state.redis,
            site.site,
            status.model_copy(
                update={"status": "failed", "error": "not sent: no stream takes it", "finished_at": utcnow()}
            ),
        )
        raise ApiError(
            503, "bus-unavailable", N_("the command could not be sent (event bus unavailable); try again")
        ) from None
    except Exception as exc:  # not confirmed, yet it may have reached the bus: it ends by its deadline
        reason = " ".join(str(exc).split()) or type(exc).__name__
        log.warning(
            "command %s: CommandRequested not confirmed (%s); sending it again in the background",
            event.command_id,
            reason,
        )
        _republish_later(state, event)
    return status


def _republish_later(state: State, event: CommandRequested) -> None:
    """Send an unconfirmed request again (same Nats-Msg-Id: stored once) until JetStream confirms it."""

    async def again() -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + REPUBLISH_FOR
        while loop.time() < until:
            await asyncio.sleep(1.0)
            try:
                await publish_event(state.broker, event)
            except Exception:  # noqa: S112 - still away; its deadline settles it in the end
                continue
            log.info("command %s: CommandRequested confirmed", event.command_id)
            return
        log.warning("command %s: CommandRequested never confirmed; it will read expired", event.command_id)

    tasks: set[asyncio.Task[None]] = state.setdefault("command_retries", set())  # type: ignore[assignment]
    task = asyncio.get_running_loop().create_task(again())
    tasks.add(task)
    task.add_done_callback(tasks.discard)


# --- from the hub ----------------------------------------------------------------------------------
HUB_SEND_TIMEOUT = 2.0  # seconds the hub waits for the edge's ack of one send


async def _publish_from_hub(state: State, event: CommandRequested) -> None:
    """One send of the request on the edge's subject (stored by the edge's EWS_COMMANDS, acked from there)."""
    left = (event.deadline - utcnow()).total_seconds() if event.deadline else HUB_SEND_TIMEOUT
    await state.broker.publish(
        event.model_dump(mode="json"),
        subject=event.subject,
        headers=event.headers(),
        stream=COMMANDS.name,
        timeout=max(0.2, min(HUB_SEND_TIMEOUT, left)),
    )


async def _send_from_hub(state: State, event: CommandRequested, status: CommandStatus) -> None:
    """Record the command at the hub and send it to the edge; unconfirmed (edge or link away), it is sent
    again in the background (same Nats-Msg-Id: stored once) until its deadline, never after it."""
    site = state.site.site
    await hubcommands.remember(
        state.redis, site, event.command_id, status.model_dump_json(), event.occurred_at
    )
    try:
        await _publish_from_hub(state, event)
    except Exception as exc:  # NoResponders (no link to the edge) included: the deadline settles it
        reason = " ".join(str(exc).split()) or type(exc).__name__
        log.warning(
            "command %s for site %s: not confirmed by the edge (%s); sending it again until its deadline",
            event.command_id,
            site,
            reason,
        )
        _resend_until_deadline(state, event)


def _resend_until_deadline(state: State, event: CommandRequested) -> None:
    async def again() -> None:
        pause = 1.0
        while event.deadline is not None and utcnow() < event.deadline - timedelta(seconds=0.1):
            await asyncio.sleep(min(pause, max(0.0, (event.deadline - utcnow()).total_seconds() - 0.1)))
            pause = min(pause * 1.5, 5.0)
            if utcnow() >= event.deadline:
                break
            try:
                await _publish_from_hub(state, event)
            except Exception:  # noqa: S112 - still away; its deadline settles it
                continue
            log.info("command %s: CommandRequested confirmed by site %s", event.command_id, event.site)
            return
        log.warning(
            "command %s: site %s not reached before the deadline; it reads expired",
            event.command_id,
            event.site,
        )

    tasks: set[asyncio.Task[None]] = state.setdefault("command_retries", set())  # type: ignore[assignment]
    task = asyncio.get_running_loop().create_task(again())
    tasks.add(task)
    task.add_done_callback(tasks.discard)


def _unreached(status: CommandStatus) -> CommandStatus:
    """A hub record the edge never recorded: expired once its deadline and the grace are past."""
    if _past_grace(status):
        return status.model_copy(update={"status": "expired", "error": hubcommands.UNREACHED})
    return status


async def _hub_status(state: State, command_id: str) -> CommandStatus | None:
    """A command's status at the hub: the edge's records in ``EWS_COMMANDS_<site>`` when they are there,
    else the hub's record of the command it sent; None when the hub knows neither."""
    site = state.site.site
    record = await hubcommands.recall(state.redis, site, command_id)
    if record is None:  # not sent from the hub (from the site's own server): its log
        found = [c for c in (await command_log(state, LOG_LIMIT)).commands if c.id == command_id]
        return found[0] if found else None
    status = CommandStatus.model_validate(record)
    if status.status != "requested" and not hubcommands.inferred(record):  # the edge's outcome, seen
        return status
    nc = getattr(state.broker, "connection", None)
    try:
        if nc is None or status.requested_at is None:
            raise ConnectionError("no connection to NATS")
        request, outcome = await hubcommands.seen_at_hub(
            nc, state.names.of(COMMANDS), site, status.device, command_id, status.requested_at
        )
    except StreamNotFound:
        request = outcome = None
    except Exception as exc:  # the hub's record answers meanwhile
        log.warning("command %s: site %s's records not readable (%s)", command_id, site, exc)
        request = outcome = None
    if request is not None:
        status = _logged(request, outcome, state.settings.command_deadline)
    elif outcome is not None:
        status = status.model_copy(
            update={
                "status": _STATUS[type(outcome)],
                "finished_at": outcome.occurred_at,
                "readback": outcome.readback if isinstance(outcome, CommandCompleted) else None,
                "error": None if isinstance(outcome, CommandCompleted) else outcome.error,
            }
        )
    key = hubcommands.record_key(site, command_id)
    if outcome is not None:  # the edge's outcome: kept, the stream need not be read again
        edge = status.model_dump_json()
        kept, _ = await hubcommands.settle(
            state.redis, key, hubcommands.HUB_TTL, lambda _: edge, replaces=hubcommands.inferred
        )
        return CommandStatus.model_validate(kept)
    if status.status == "expired" or _past_grace(status):  # recorded; only the edge's outcome replaces it
        error = NO_OUTCOME if request is not None else hubcommands.UNREACHED
        return await expire_record(state.redis, site, status, error, key, hubcommands.HUB_TTL)
    return status


async def command_status(state: State, command_id: str) -> CommandStatus:
    """A command's record; 404 when unknown or older than the records are kept. A command still
    requested ``EXPIRY_GRACE`` seconds after its deadline is recorded expired (nothing executes it any
    more) and stays so."""
    if is_hub(state):
        hub_status = await _hub_status(state, command_id)
        record = None if hub_status is None else hub_status.model_dump(mode="json")
    else:
        record = hubcommands.decode_record(await state.redis.get(record_key(state.site.site, command_id)))
    if record is None:
        raise ApiError(
            404,
            "unknown-command",
            N_("unknown command %(command)s (or older than %(days)s days)"),
            command=repr(command_id),
            days=RECORD_TTL // 86_400,
        )
    status = CommandStatus.model_validate(record)
    if not is_hub(state) and _past_grace(status):  # decided once, recorded: the first finished state sticks
        return await expire_record(state.redis, state.site.site, status)
    return status


@get(
    "/commands/{command_id:str}",
    guards=[requires(Permission.COMMAND_DEVICES)],
    operation_id="getCommand",
    summary="A command's status",
    description="requested until the commands service records its outcome, then completed (with the "
    "read-back value), failed (with the device's reason) or expired (not executed before its deadline; "
    "never executed afterwards). Records are kept three days.",
    tags=["commands"],
)
async def get_command(request: Request[Any, Any, State], command_id: str) -> CommandStatus:
    return await command_status(site_state(request), command_id)


router = Router(path="/api/v1", parameters=SITE_PARAMETER, route_handlers=[request_command, get_command])


# --- outcomes --------------------------------------------------------------------------------------


def outcome_broker(app: Litestar) -> NatsBroker:
    """A broker whose durable pull consumers feed command outcomes into the Redis records."""
    state = app.state
    site = state.site.site
    broker = make_broker(state.settings.nats_url, "gateway-api-commands")

    async def on_outcome(msg: NatsMessage) -> None:
        subject = msg.raw_message.subject
        model = OUTCOMES[Kind(subject.split(".")[2])]
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

    for kind in OUTCOMES:
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
    if is_hub(app.state):  # the hub reads the outcomes from EWS_COMMANDS_<site> (hubcommands)
        yield
        return
    broker = outcome_broker(app)
    await broker.connect()
    try:
        await ensure_streams(broker)
        await broker.start()
        log.info("recording command outcomes of site %s", app.state.site.site)
        yield
    finally:
        await broker.stop()


# --- the command log -------------------------------------------------------------------------------
# Read from EWS_COMMANDS, the audit log (the Redis records above are kept three days only): the stream's
# tail, never the whole stream. Probes (ephemeral consumers: the server counts the requests from a
# sequence on) find a start from which the stream holds between ``limit`` and ``2 × limit`` requests;
# the requests and outcomes from there are read (``streamio.read_stream``) and paired by command id.

LOG_LIMIT = 500  # commands one listing may ask for
LOG_READ_MAX = 4 * LOG_LIMIT + 1_000  # messages read at most per listing (requests and outcomes)
LOG_PROBES = 64  # start sequences tried at most (bisection: enough for any stream's length)
DEVICE_PATTERN = ID_PATTERN.replace("^", "^(?:", 1).replace("$", ")?$")  # a device id, or empty (all)
BUS_UNAVAILABLE = N_("the event bus (NATS) is unavailable; try again")  # the same msgid as backup.py's


class CommandLog(BaseModel):
    """The most recent commands of the site and their outcomes, newest first."""

    commands: list[CommandStatus] = Field(
        description="Newest first. status: the outcome recorded (completed with its read-back, failed or "
        "expired with the error), requested while there is none (expired once its deadline is "
        f"{EXPIRY_GRACE:.0f} s past)."
    )
    more: bool = Field(description="Older commands are recorded too (ask for a larger limit, up to 500).")


async def _count_from(js: Any, filter_subject: str, start: int, stream: str = COMMANDS.name) -> int:
    """How many messages matching ``filter_subject`` EWS_COMMANDS holds from sequence ``start`` on."""
    config = ConsumerConfig(
        filter_subject=filter_subject,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start,
        ack_policy=JsAckPolicy.NONE,
        inactive_threshold=10.0,
        mem_storage=True,
    )
    info = await js.add_consumer(stream, config)
    with contextlib.suppress(Exception):
        await js.delete_consumer(stream, info.name)
    return int(info.num_pending or 0)


async def _tail_start(
    js: Any, filter_subject: str, first: int, last: int, total: int, want: int, stream: str = COMMANDS.name
) -> int:
    """A sequence from which the stream holds at least ``want`` messages matching ``filter_subject`` (of
    ``total`` in all) and at most about twice as many; ``first`` when it holds few."""
    most = 2 * want
    if total <= most:
        return first
    below, above = first, last + 1  # from below: ≥ want messages; from above: fewer
    span, growing = 3 * want, True  # first guess: nearly every message of the tail matches
    for _ in range(LOG_PROBES):
        if above - below <= 1:
            break
        start = max(below + 1, last + 1 - span) if growing else (below + above) // 2
        count = await _count_from(js, filter_subject, start, stream)
        if count < want:
            above, span = start, span * 4
        elif count > most:
            below, growing = start, False
        else:
            return start
    return below


def _logged(request: CommandRequested, outcome: Outcome | None, default_deadline: float) -> CommandStatus:
    deadline = request.deadline_or(default_deadline)
    status = CommandStatus(
        id=request.command_id,
        status="requested",
        device=request.device,
        action=request.action,
        value=request.value,
        requested_by=request.requested_by or None,
        requested_at=request.occurred_at,
        deadline=deadline,
    )
    if outcome is not None:
        return status.model_copy(
            update={
                "status": _STATUS[type(outcome)],
                "value": outcome.value if outcome.value is not None else request.value,
                "finished_at": outcome.occurred_at,
                "readback": outcome.readback if isinstance(outcome, CommandCompleted) else None,
                "error": None if isinstance(outcome, CommandCompleted) else outcome.error,
            }
        )
    if utcnow() > deadline + timedelta(seconds=EXPIRY_GRACE):
        return status.model_copy(update={"status": "expired", "error": NO_OUTCOME})
    return status


async def command_log(state: State, limit: int = 50, device: str | None = None) -> CommandLog:
    """The ``limit`` most recent commands of the site (of ``device`` only when given), newest first, from
    the tail of EWS_COMMANDS. 503 when the event bus cannot be read. At the hub, with the commands it sent
    that the site's records do not hold (yet): the hub's records (``hubcommands``)."""
    logged = await _stream_log(state, limit, device)
    if not is_hub(state):
        return logged
    seen = {c.id for c in logged.commands}
    mine = [
        _unreached(CommandStatus.model_validate(r))
        for r in await hubcommands.recent(state.redis, state.site.site, limit)
        if r.get("id") not in seen and (device is None or r.get("device") == device)
    ]
    if not mine:
        return logged
    both = sorted(
        [*logged.commands, *mine],
        key=lambda c: c.requested_at.timestamp() if c.requested_at else 0.0,
        reverse=True,
    )
    return CommandLog(commands=both[:limit], more=logged.more or len(both) > limit)


async def _stream_log(state: State, limit: int, device: str | None) -> CommandLog:
    site = state.site.site
    stream = getattr(state, "names", BOX).of(COMMANDS)  # EWS_COMMANDS, or the site's copy at the hub
    token = device or "*"
    requests_subject = subject(site, Kind.COMMAND_REQUESTED, token)
    nc = getattr(state.broker, "connection", None)
    if nc is None:
        raise ApiError(503, "bus-unavailable", BUS_UNAVAILABLE)
    js = nc.jetstream()
    requests: dict[str, CommandRequested] = {}
    outcomes: dict[str, Outcome] = {}
    try:
        info = await js.stream_info(stream, subjects_filter=requests_subject)
        total = sum((info.state.subjects or {}).values())
        first, last = int(info.state.first_seq or 0), int(info.state.last_seq or 0)
        if not total or not last:
            return CommandLog(commands=[], more=False)
        start = await _tail_start(js, requests_subject, max(first, 1), last, total, limit, stream)
        read = 0
        every = f"{PREFIX}.{site}.*.{token}"  # requests and outcomes (the stream holds nothing else)
        tail = read_stream(nc, stream, every, start=start, upto=last)
        async with contextlib.aclosing(tail) as batches:
            async for batch in batches:
                for msg in batch:
                    kind = msg.subject.split(".")[2]
                    try:
                        if kind == Kind.COMMAND_REQUESTED:
                            event = CommandRequested.model_validate_json(msg.data)
                            requests.setdefault(event.command_id, event)
                        elif kind in OUTCOMES:
                            outcome = OUTCOMES[Kind(kind)].model_validate_json(msg.data)
                            outcomes.setdefault(outcome.command_id, outcome)  # the first one stands
                    except ValidationError:
                        log.warning("command log: ignoring a malformed event on %s", msg.subject)
                read += len(batch)
                if read >= LOG_READ_MAX:  # only a flood of outcomes without requests gets here
                    break
    except StreamNotFound:
        return CommandLog(commands=[], more=False)
    except (NatsError, StreamIOError, TimeoutError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        log.warning("command log: EWS_COMMANDS not readable (%s)", reason)
        raise ApiError(503, "bus-unavailable", BUS_UNAVAILABLE) from None
    newest = list(requests.values())[::-1][:limit]
    default = state.settings.command_deadline
    return CommandLog(
        commands=[_logged(r, outcomes.get(r.command_id), default) for r in newest],
        more=total > len(newest),
    )


@get(
    "/commands",
    guards=[requires(Permission.CONFIGURE_SITE)],
    operation_id="listCommands",
    summary="The command log: the most recent commands and their outcomes",
    description="Every device command is recorded on the EWS_COMMANDS stream (the command audit log) with "
    "its outcome. This lists the most recent ones, newest first: who asked (role), when, the deadline, and "
    "the outcome (completed with the read-back value, failed or expired with the error; requested while "
    "there is none). Read from the stream: commands older than the three days GET /api/v1/commands/{id} "
    "answers for are listed too. "
    "For administrator and installer (`configure-site`).",
    tags=["commands"],
)
async def list_commands(
    request: Request[Any, Any, State],
    limit: Annotated[
        int, Parameter(ge=1, le=LOG_LIMIT, description="How many commands, newest first (at most 500).")
    ] = 50,
    device: Annotated[
        str | None,
        Parameter(
            pattern=DEVICE_PATTERN,
            max_length=32,
            description="Only the commands of this device (its id); empty or absent: every device.",
        ),
    ] = None,
) -> CommandLog:
    return await command_log(site_state(request), limit, device or None)


router.register(list_commands)
