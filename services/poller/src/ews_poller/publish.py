"""Pipelined JetStream publishing (the poller's outbox).

``JetStreamContext.publish`` sends one message and waits for its acknowledgement before the next one can
go: a flush (one write system call), a timer and two task wake-ups per event. Here the poller sends every
event waiting in its outbox at once (nats-py writes whatever was published in one loop iteration in one
write), each asking for its acknowledgement on a reply subject of its own under one wildcard subscription
(``AckInbox``), and matches the acknowledgements as they arrive. What JetStream sees is unchanged: the
same subject, payload (the event's JSON), ``Nats-Msg-Id``, ``Nats-Expected-Stream`` and ``content-type``
headers (not FastStream's random ``correlation_id``), in the same order, on one connection.

Order: a batch is stored in the order it was sent. After a failure the events not acknowledged are sent
again in order, the first alone until JetStream stores it (a copy of one already stored is dropped by its
``Nats-Msg-Id``). The one case that can store two events out of order is JetStream refusing an event and
storing the next one of the same batch (its stream deleted and created again within the batch).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any

from ews_contracts.events import Event
from ews_contracts.streams import stream_for
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

ACK_TIMEOUT = 5.0  # seconds JetStream has to acknowledge an event (as js.publish's timeout before)
JSON = "application/json"


class NotStored(Exception):
    """JetStream did not store an event (an error answer, nobody answering, or NATS away)."""


# (event class, site, device) -> (subject, stream name): the same for every event of a device
_SUBJECTS: dict[tuple[type[Event], str, str], tuple[str, str]] = {}


def _where(event: Event) -> tuple[str, str]:
    key = (type(event), event.site, event.subject_key)
    found = _SUBJECTS.get(key)
    if found is None:
        if len(_SUBJECTS) > 100_000:  # devices come and go with the configuration: bounded
            _SUBJECTS.clear()
        found = _SUBJECTS[key] = (event.subject, stream_for(event.KIND).name)
    return found


class Sent:
    """An event taken from the outbox, until JetStream has stored it."""

    __slots__ = ("event", "subject", "payload", "headers", "token", "deadline", "error", "stored")

    def __init__(self, event: Event) -> None:
        self.event = event
        self.subject, stream = _where(event)
        self.payload: bytes = type(event).__pydantic_serializer__.to_json(event)  # model_dump_json, as bytes
        self.headers = {**event.headers(), "Nats-Expected-Stream": stream, "content-type": JSON}
        self.token: str | None = None  # reply subject token of the last send (None: to be sent)
        self.deadline = 0.0
        self.error: str | None = None
        self.stored = False


class AckInbox:
    """Acknowledgements of pipelined JetStream publishes on one NATS connection: each message asks for its
    answer on ``<inbox>.<n>``; one subscription on ``<inbox>.*`` settles them. After a failure every token
    is forgotten (``forget``): a late answer to an old send is ignored, and the event is sent again with the
    same ``Nats-Msg-Id`` (JetStream drops the copy if the first one was stored)."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.prefix = f"{nc.new_inbox()}."
        self.waiting: dict[str, Sent] = {}
        self.settled = asyncio.Event()  # set by every answer
        self._next = 0
        self._sub: Any = None

    async def open(self) -> None:
        if self._sub is None:
            self._sub = await self.nc.subscribe(f"{self.prefix}*", cb=self._on_answer)

    async def send(self, entries: deque[Sent], limit: int) -> int:
        """Publish those of the first ``limit`` entries not sent yet (in order): how many; NotStored when
        NATS is away."""
        loop_time = asyncio.get_running_loop().time
        nc = self.nc
        sent = 0
        for n, entry in enumerate(entries):
            if n >= limit:
                break
            if entry.token is not None or entry.stored:
                continue
            if not nc.is_connected:
                raise NotStored("NATS is not connected")
            self._next += 1
            token = entry.token = str(self._next)
            entry.deadline = loop_time() + ACK_TIMEOUT
            self.waiting[token] = entry
            await nc.publish(entry.subject, entry.payload, reply=self.prefix + token, headers=entry.headers)
            sent += 1
        return sent

    def forget(self, entries: deque[Sent]) -> None:
        self.waiting.clear()
        for entry in entries:
            entry.token, entry.error = None, None

    async def _on_answer(self, msg: Msg) -> None:
        entry = self.waiting.pop(msg.subject[len(self.prefix) :], None)
        if entry is None:
            return  # an answer to a send forgotten since
        data = msg.data
        if msg.headers and msg.headers.get("Status") == "503":
            entry.error = f"no stream answers on {entry.subject} (503 no responders)"
        elif data.startswith(b'{"stream":') and b'"error"' not in data:
            entry.stored = True  # a PubAck (the usual answer, not worth parsing)
        else:
            try:
                answer = json.loads(data)
            except ValueError:
                answer = {"error": {"description": f"unreadable acknowledgement {data[:80]!r}"}}
            if isinstance(answer, dict) and "error" not in answer:
                entry.stored = True
            else:
                error = answer.get("error") if isinstance(answer, dict) else answer
                described = error.get("description") if isinstance(error, dict) else None
                entry.error = f"JetStream refused {entry.subject}: {described or error}"
        self.settled.set()
