"""Commands sent from the hub (DESIGN.md "Multi-site"): the hub's own record of them, and their outcome.

At the hub, ``POST /api/v1/commands?site=X`` publishes the CommandRequested on the edge's subject
(``ews.<site>.command-requested.<device>``): no hub stream listens on it, it crosses the leaf node and is
stored by the edge's EWS_COMMANDS (the ack comes from the edge). The edge's commands service executes it
exactly once or expires it, and its records come back through the sourced ``EWS_COMMANDS_<site>``.

A command that never reached the edge (link cut, edge down) is in no stream. So the hub keeps a record of
every command it sent (``ews:hub:commands:<site>:<id>``, the command's status as JSON, kept ``HUB_TTL``;
the sorted set ``ews:hub:commands:<site>`` lists them by request time) and re-sends an unconfirmed request
(same ``Nats-Msg-Id``) until its deadline, never after it. What the edge recorded wins: ``seen_at_hub``
looks for the request and its outcome in ``EWS_COMMANDS_<site>``; without them the record answers
``requested`` until the deadline and the grace, then is recorded ``expired`` (the site could not be
reached). As at the edge, the first finished status of a record sticks (``settle``).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from ews_contracts.events import CommandCompleted, CommandExpired, CommandFailed, CommandRequested, utcnow
from ews_contracts.subjects import PREFIX, Kind
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError
from redis.exceptions import WatchError

log = logging.getLogger("ews.gateway-api.hubcommands")

HUB_TTL = 86_400  # seconds the hub keeps its record of a command it sent
CLOCK_SLACK = 120.0  # seconds: the edge's events may be stamped a little before the hub's request time
SEEN_READ_MAX = 2_000  # messages of one device read at most to find a command's outcome
UNREACHED = "the site could not be reached before the command's deadline: it was not executed"

Outcome = CommandCompleted | CommandFailed | CommandExpired
_OUTCOMES: dict[str, type[Outcome]] = {
    Kind.COMMAND_COMPLETED: CommandCompleted,
    Kind.COMMAND_FAILED: CommandFailed,
    Kind.COMMAND_EXPIRED: CommandExpired,
}


def record_key(site: str, command_id: str) -> str:
    return f"ews:hub:commands:{site}:{command_id}"


def index_key(site: str) -> str:
    return f"ews:hub:commands:{site}"


async def remember(redis: Any, site: str, command_id: str, record: str, requested_at: datetime) -> None:
    """Keep the hub's record (``record``: the command's status as JSON) of a command sent to ``site``."""
    now = utcnow().timestamp()
    await redis.set(record_key(site, command_id), record, ex=HUB_TTL)
    await redis.zadd(index_key(site), {command_id: requested_at.timestamp()})
    await redis.zremrangebyscore(index_key(site), "-inf", now - HUB_TTL)
    await redis.expire(index_key(site), HUB_TTL)


def decode_record(raw: Any) -> dict[str, Any] | None:
    """A JSON object kept in Redis (a command's record), None when absent or not an object."""
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


FINISHED = ("completed", "failed", "expired")
NO_OUTCOME = "no outcome by its deadline: the command never reached the bus owner"
INFERRED = (NO_OUTCOME, UNREACHED)  # expiries read from the silence after the deadline and its grace


def inferred(record: dict[str, Any] | None) -> bool:
    """Whether a record is an expiry the gateway inferred (no outcome within the deadline and the grace),
    not one the bus owner decided: the only finished state a real outcome may still replace, because the
    bus owner could have executed the command before its deadline while its outcome was held up."""
    return record is not None and record.get("status") == "expired" and record.get("error") in INFERRED


async def settle(
    redis: Any,
    key: str,
    ttl: int,
    build: Callable[[dict[str, Any] | None], str],
    replaces: Callable[[dict[str, Any]], bool] = lambda _: False,
) -> tuple[dict[str, Any] | None, bool]:
    """Store ``build(current record)`` (JSON) at ``key`` unless the record there is already finished (and
    not one ``replaces`` accepts: a real outcome replaces an ``inferred`` expiry): the first finished status
    sticks. Atomic (WATCH/MULTI): an outcome and an expiry deciding at once cannot both be stored. Returns
    the record that stands and whether it is the one built here."""
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(key)
                current = decode_record(await pipe.get(key))
                if current is not None and current.get("status") in FINISHED and not replaces(current):
                    await pipe.reset()
                    return current, False
                record = build(current)
                pipe.multi()
                pipe.set(key, record, ex=ttl)
                await pipe.execute()
                return decode_record(record), True
            except WatchError:  # written meanwhile: decide again on what is there now
                continue


async def recall(redis: Any, site: str, command_id: str) -> dict[str, Any] | None:
    return decode_record(await redis.get(record_key(site, command_id)))


async def recent(redis: Any, site: str, limit: int) -> list[dict[str, Any]]:
    """The hub's records of ``site``, newest first (at most ``limit``)."""
    ids = await redis.zrevrange(index_key(site), 0, limit - 1)
    if not ids:
        return []
    keys = [record_key(site, i.decode() if isinstance(i, bytes) else str(i)) for i in ids]
    out = []
    for raw in await redis.mget(keys):
        if raw is None:
            continue
        with contextlib.suppress(ValueError):
            record = json.loads(raw)
            if isinstance(record, dict):
                out.append(record)
    return out


async def seen_at_hub(
    nc: Any, stream: str, site: str, device: str, command_id: str, requested_at: datetime
) -> tuple[CommandRequested | None, Outcome | None]:
    """The command's request and outcome as the edge recorded them, from the hub's copy of its
    EWS_COMMANDS (``stream``): the device's events from a little before the request on."""
    js = nc.jetstream()
    config = ConsumerConfig(
        filter_subject=f"{PREFIX}.{site}.*.{device}",
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=requested_at - timedelta(seconds=CLOCK_SLACK),
        ack_policy=AckPolicy.NONE,
        inactive_threshold=10.0,
        mem_storage=True,
    )
    info = await js.add_consumer(stream, config)
    request: CommandRequested | None = None
    outcome: Outcome | None = None
    try:
        pending = min(int(info.num_pending or 0), SEEN_READ_MAX)
        sub = await js.pull_subscribe_bind(durable=info.name, stream=stream)
        read = 0
        while read < pending and outcome is None:
            try:
                msgs = await sub.fetch(min(256, pending - read), timeout=2.0)
            except TimeoutError:
                break
            for msg in msgs:
                read += 1
                kind = msg.subject.split(".")[2]
                try:
                    if kind == Kind.COMMAND_REQUESTED:
                        event = CommandRequested.model_validate_json(msg.data)
                        if event.command_id == command_id:
                            request = event
                    elif kind in _OUTCOMES:
                        found = _OUTCOMES[kind].model_validate_json(msg.data)
                        if found.command_id == command_id and outcome is None:
                            outcome = found
                except ValidationError:
                    log.warning("hub commands: ignoring a malformed event on %s", msg.subject)
    finally:
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, info.name)
    return request, outcome
