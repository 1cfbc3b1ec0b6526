"""Bulk reading and writing of JetStream messages: backups, restores and the aggregator's rebuild.

- :func:`read_stream` — every message of a stream matching a filter, up to a snapshot sequence, in stream
  order, in batches. An ephemeral *pull* consumer (no acks) fetched with our own ``MSG.NEXT`` requests on a
  plain subscription: memory is bounded by one batch whatever the client does with it (a slow download
  simply fetches later), and it runs at the rate of the connection's message parsing (~65,000 messages/s
  with ``natsclient.FastHeaderClient``; nats-py's own ``fetch`` waits on a future per message: ~19,000/s).
- :func:`read_frames` — the same as raw ``Frames`` (``natsclient.bulk_subscribe``), the next batch requested
  as soon as one is complete: the aggregator's ``ews replay``, at the rate it accounts (~150,000/s).
- :class:`Republisher` — publishing with one JetStream acknowledgement per message, at most ``window``
  waiting. Per message, because JetStream's dedupe table outlives a purge: a message published again
  with its ``Nats-Msg-Id`` within the stream's duplicate window (a restore of a recent backup, a restore
  repeated) is acknowledged as a *duplicate* and not stored. Those are published once more without the
  header (their ``event_id`` is in the payload, which is what every consumer reads).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from .natsclient import FastHeaderClient, Frames

log = logging.getLogger("ews.streamio")

BATCH = 2000
INACTIVE = 600.0  # seconds an idle reader's consumer lives on the server (a paused download)
FETCH_WAIT = 30.0  # seconds a fetch may wait for the server before the read fails
MSG_ID = "Nats-Msg-Id"


class StreamIOError(RuntimeError):
    """NATS did not answer as expected; ``str()`` is one line."""


def ack_tokens(reply: str) -> tuple[int, int]:
    """(stream sequence, messages pending) from a JetStream delivery's reply subject
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``, or the v2 form with a
    domain and an account hash)."""
    tokens = Msg.Metadata._get_metadata_fields(reply)
    return int(tokens[5]), int(tokens[8])


def msg_id(msg: Msg) -> str:
    """The message's ``Nats-Msg-Id`` ('' when it was published without one)."""
    headers = msg.headers
    return (headers.get(MSG_ID) or "") if headers else ""


async def last_sequence(nc: Client, stream: str) -> int:
    return int((await nc.jetstream().stream_info(stream)).state.last_seq or 0)


async def _reader(
    nc: Client, stream: str, filter_subject: str, upto: int | None, start: int, total: list[int] | None
) -> tuple[int, Any]:
    """(the last sequence to read, an ephemeral pull consumer from ``start``), or (…, None) when there is
    nothing to read; ``total`` receives the number of matching messages."""
    if upto is None:
        upto = await last_sequence(nc, stream)
    if upto <= 0:
        return upto, None
    js = nc.jetstream()
    config = ConsumerConfig(
        filter_subject=filter_subject,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start else DeliverPolicy.ALL,
        opt_start_seq=start or None,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=INACTIVE,
        mem_storage=True,
    )
    info = await js.add_consumer(stream, config)
    if total is not None:
        total.append(int(info.num_pending or 0))
    if not info.num_pending:
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, info.name)
        return upto, None
    return upto, info


async def read_stream(
    nc: Client,
    stream: str,
    filter_subject: str,
    *,
    upto: int | None = None,
    start: int | None = None,
    batch: int = BATCH,
    total: list[int] | None = None,
) -> AsyncIterator[list[Msg]]:
    """Yield the messages of ``stream`` matching ``filter_subject`` with a sequence ≤ ``upto`` (default:
    the stream's last sequence when called), from ``start`` (default: the first), in batches of at most
    ``batch``. ``total``, when given, receives the number of matching messages at the start (progress).
    Raises ``StreamIOError`` when the server stops answering."""
    upto, info = await _reader(nc, stream, filter_subject, upto, start, total)
    if info is None:
        return
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{info.name}"
    inbox = nc.new_inbox()
    got: list[Msg] = []
    state = {"want": 0, "status": ""}
    done = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        if not msg.reply:  # a status: 404 no messages, 408 request expired, 409 …: this request is over
            status = (msg.headers or {}).get("Status", "") if msg.headers else ""
            state["status"] = f"{status} {(msg.headers or {}).get('Description', '')}".strip()
            done.set()
            return
        got.append(msg)
        if len(got) >= state["want"]:
            done.set()

    sub = await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=4 * batch + 100, pending_bytes_limit=0)
    try:
        finished = False
        while not finished:
            got = []
            state["want"], state["status"] = batch, ""
            done.clear()
            request = {"batch": batch, "no_wait": True}
            await nc.publish(next_subject, json.dumps(request).encode(), reply=inbox)
            try:
                await asyncio.wait_for(done.wait(), FETCH_WAIT)
            except TimeoutError:
                raise StreamIOError(
                    f"reading {stream}: no answer from the server for {FETCH_WAIT:.0f} s"
                ) from None
            out: list[Msg] = []
            for msg in got:
                seq, pending = ack_tokens(msg.reply)
                if seq > upto:
                    finished = True
                    break
                out.append(msg)
                if seq >= upto or pending == 0:
                    finished = True
                    break
            if not got:
                status = state["status"]
                if status.startswith(("404", "408")):
                    finished = True  # nothing left (messages removed since the consumer was made)
                else:
                    raise StreamIOError(f"reading {stream}: the server answered {status or 'nothing'}")
            if out:
                yield out
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_consumer(stream, info.name)


async def read_frames(
    nc: FastHeaderClient,
    stream: str,
    filter_subject: str | None,
    *,
    upto: int | None = None,
    start: int | None = None,
    batch: int = 20_000,
    total: list[int] | None = None,
) -> AsyncIterator[Frames]:
    """``read_stream`` for a high-rate reader (the aggregator's replay and rebuild): the messages arrive as raw
    ``Frames`` (``natsclient.bulk_subscribe``: no ``Msg`` per message), and the next batch is requested as soon
    as one is complete, so the server sends it while the caller works on the one yielded."""
    upto, info = await _reader(nc, stream, filter_subject, upto, start, total)
    if info is None:
        return
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{info.name}"
    inbox = nc.new_inbox()
    request = json.dumps({"batch": batch, "no_wait": True}).encode()
    # one entry per request: (frames, got, status, done)
    answers: list[list] = []

    def on_frames(frames: Frames) -> None:
        for i, reply in enumerate(frames.replies):
            if not answers:
                return
            current = answers[0]
            if not reply:  # a status (404 no messages, 408 expired ...): this request is over
                current[2] = frames.headers[i][9:].split(b"\r\n", 1)[0].decode(errors="replace").strip()
                current[3].set()
                answers.pop(0)
                continue
            got: Frames = current[0]
            got.subjects.append(frames.subjects[i])
            got.replies.append(reply)
            got.headers.append(frames.headers[i])
            got.datas.append(frames.datas[i])
            if len(got) >= batch:
                current[3].set()
                answers.pop(0)

    async def ask() -> list:
        answer = [Frames(), 0, "", asyncio.Event()]
        answers.append(answer)
        await nc.publish(next_subject, request, reply=inbox)
        return answer

    sub = await nc.bulk_subscribe(inbox, on_frames)
    try:
        waiting = await ask()
        while True:
            try:
                await asyncio.wait_for(waiting[3].wait(), FETCH_WAIT)
            except TimeoutError:
                raise StreamIOError(
                    f"reading {stream}: no answer from the server for {FETCH_WAIT:.0f} s"
                ) from None
            got: Frames = waiting[0]
            finished = not len(got)
            if finished and not waiting[2].startswith(("404", "408")):
                raise StreamIOError(f"reading {stream}: the server answered {waiting[2] or 'nothing'}")
            if len(got):
                seq, pending = ack_tokens(got.replies[-1].decode())
                if seq > upto:  # past the snapshot: keep what came before it
                    keep = 0
                    while keep < len(got) and ack_tokens(got.replies[keep].decode())[0] <= upto:
                        keep += 1
                    got = got.cut(keep)
                    finished = True
                elif seq >= upto or pending == 0:
                    finished = True
            if not finished:
                waiting = await ask()  # the server sends the next batch while this one is used
            if len(got):
                yield got
            if finished:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_consumer(stream, info.name)


@dataclass
class Published:
    stored: int = 0
    duplicates: int = 0  # acknowledged as duplicates, then stored without their Nats-Msg-Id
    errors: list[str] = field(default_factory=list)


class Republisher:
    """Publish messages to JetStream, each acknowledged; see the module docstring. ``publish`` waits while
    ``window`` messages wait for their ack; ``close`` waits for every ack (and stores the duplicates again
    without their header), then returns what was stored. Raises ``StreamIOError`` when the server refuses a
    message or stops acknowledging."""

    def __init__(self, nc: Client, window: int = 10_000, ack_timeout: float = 30.0) -> None:
        self.nc = nc
        self.window = window
        self.ack_timeout = ack_timeout
        self.inbox = nc.new_inbox()
        self.result = Published()
        self._next = 0
        self._waiting: dict[int, tuple[str, bytes]] = {}
        self._duplicates: list[tuple[str, bytes]] = []
        self._room = asyncio.Event()
        self._empty = asyncio.Event()
        self._sub = None

    async def start(self) -> Republisher:
        self._sub = await self.nc.subscribe(
            f"{self.inbox}.*",
            cb=self._on_ack,
            pending_msgs_limit=2 * self.window + 100,
            pending_bytes_limit=0,
        )
        return self

    async def _on_ack(self, msg: Msg) -> None:
        key = int(msg.subject.rpartition(".")[2])
        sent = self._waiting.pop(key, None)
        if sent is None:
            return
        data = msg.data
        status = (msg.headers or {}).get("Status") if msg.headers else None
        if status or not data or b'"error"' in data:
            if len(self.result.errors) < 5:
                text = data[:200].decode(errors="replace") if data else f"status {status} (no stream?)"
                self.result.errors.append(text)
        elif b'"duplicate"' in data and _duplicate(data):
            self._duplicates.append(sent)
        else:
            self.result.stored += 1
        if len(self._waiting) <= self.window // 2:
            self._room.set()
        if not self._waiting:
            self._empty.set()

    async def _wait(self, event: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(event.wait(), self.ack_timeout)
        except TimeoutError:
            raise StreamIOError(
                f"JetStream did not acknowledge {len(self._waiting)} messages within {self.ack_timeout:.0f} s"
            ) from None
        if self.result.errors:
            raise StreamIOError(f"JetStream refused a message: {self.result.errors[0]}")

    async def publish(self, subject: str, data: bytes, msg_id: str = "") -> None:
        if len(self._waiting) >= self.window:
            self._room.clear()
            await self._wait(self._room)
        key = self._next
        self._next += 1
        self._waiting[key] = (subject, data)
        self._empty.clear()
        await self.nc.publish(
            subject, data, reply=f"{self.inbox}.{key}", headers={MSG_ID: msg_id} if msg_id else None
        )

    async def flush(self) -> None:
        """Wait for every acknowledgement."""
        if self._waiting:
            await self._wait(self._empty)
        elif self.result.errors:
            raise StreamIOError(f"JetStream refused a message: {self.result.errors[0]}")

    async def close(self) -> Published:
        try:
            await self.flush()
            while self._duplicates:
                again, self._duplicates = self._duplicates, []
                self.result.duplicates += len(again)
                for subject, data in again:
                    await self.publish(subject, data)  # no Nats-Msg-Id: JetStream cannot drop it again
                await self.flush()
            return self.result
        finally:
            if self._sub is not None:
                with contextlib.suppress(Exception):
                    await self._sub.unsubscribe()


def _duplicate(ack: bytes) -> bool:
    try:
        return bool(json.loads(ack).get("duplicate"))
    except ValueError:
        return False


async def delete_consumer_if_any(nc: Client, stream: str, name: str) -> bool:
    try:
        await nc.jetstream().delete_consumer(stream, name)
        return True
    except NotFoundError:
        return False
