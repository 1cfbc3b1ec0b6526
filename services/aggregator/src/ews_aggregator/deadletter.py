"""The aggregator's intake on the live consumer: the contract's rules (``ews_contracts.intake``) applied to
every delivered reading and status event, and the dead-letter stream for what they reject.

``Gate.sort`` splits a batch into the accepted readings and the rejected messages (the accepted status
events need nothing: the poller keeps the live state). A rejection that a configuration version the
aggregator has not followed yet could lift (an unknown device or profile, in a message stored after the
newest version known) is checked again once against the stored configuration. ``Gate.dead_letter``
publishes one ``MessageRejected`` per rejected message to ``ews.<site>.dead-letter.<kind>`` (stream
EWS_DEAD_LETTER; at the hub it only counts and logs them, see ``Gate.dead_letters``; its ``Nats-Msg-Id``
is the original's stream sequence, so a redelivery is recorded once) before the batch is acknowledged: nothing is lost, nothing stalls. A publish that fails (JetStream
unavailable: then nothing is delivered either; or the stream deleted: it is created again) is retried with
a growing delay while the batch is kept in progress — not ``nak``-ed: with ``AckPolicy.ALL`` the next
batch's ack would acknowledge a ``nak``-ed message before its redelivery, and its record would be lost.
Logs: one line per cause and a summary a minute (``RejectionLog``), never one line per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

from ews_contracts.bus import ensure_streams_with
from ews_contracts.events import ReadingTaken
from ews_contracts.fastintake import FastIntake
from ews_contracts.intake import (
    CONFIG_DEPENDENT,
    Declarations,
    Intake,
    Rejected,
    RejectionLog,
    record,
    stored_declarations,
)
from ews_contracts.natsclient import FastHeaderClient, Frames
from ews_contracts.site import Site
from ews_contracts.siteconfig import ConfigStore
from ews_contracts.streams import DEAD_LETTER
from ews_contracts.subjects import PREFIX, pattern
from ews_contracts.text import one_line
from nats.aio.msg import Msg
from prometheus_client import Counter

from .columns import ReadingColumns

log = logging.getLogger("ews.aggregator")

PUBLISH_TIMEOUT = 5.0
PUBLISH_ATTEMPTS = 3  # failures logged one by one; then every 30th
RETRY_DELAY = 0.2  # seconds, times the attempt number
MAX_RETRY_DELAY = 10.0
REJECTED_BY = "aggregator"
CHUNK = 256  # dead-letter records published at once
HUB_DEAD_LETTERS = "no dead-letter record at the hub (the edge's own is sourced here)"

# Prometheus (served by the gateway-api's /metrics under `ews up`, see ews_contracts.metrics)
REJECTED = Counter(
    "ews_aggregator_messages_rejected_total",
    "Messages the contract's rules refused (not stored, dead-lettered), by cause",
    ["cause"],
)


@cache
def intake_executor() -> ThreadPoolExecutor:
    """The thread the fast intake runs in (its pyarrow kernels release the GIL: it overlaps the event loop's
    reading of the next messages)."""
    return ThreadPoolExecutor(1, thread_name_prefix="aggregator-intake")


async def load_declarations(store: ConfigStore | None, fallback: Site) -> Declarations:
    """Every stored configuration version with its stream time (``intake.stored_declarations``)."""
    return await stored_declarations(store, fallback, log)


class Gate:
    """The live intake of one site (module doc)."""

    def __init__(self, js, site: Site, store: ConfigStore | None = None, dead_letters: bool = True) -> None:  # noqa: ANN001
        self.js = js
        self.site = site
        self.store = store
        # False at the hub: the site's streams there are its edge's (sourced, not ours to publish to), and the
        # edge's own aggregator already recorded each rejection in its EWS_DEAD_LETTER, which the hub sources
        # as EWS_DEAD_LETTER_<site>: the hub counts and logs them only (``dead_letter``)
        self.dead_letters = dead_letters
        self.intake = Intake(site.site, Declarations.of(site))
        self._fast: FastIntake | None = None
        self.log = RejectionLog(log)
        self.where = pattern(site.site, DEAD_LETTER.kinds[0])

    async def load(self, site: Site | None = None) -> None:
        """(Re)read the configuration history: at start, and when a new version is in force."""
        if site is not None:
            self.site = site
        self.intake.declarations = await load_declarations(self.store, self.site)

    async def _newer_version(self) -> bool:
        """Whether the store holds a version newer than the ones the rules know (then they are reloaded)."""
        if self.store is None:
            return False
        try:
            latest = await self.store.latest()
        except Exception as exc:
            log.debug("configuration not read: %s", one_line(exc))
            return False
        if latest is None or latest.version <= self.intake.declarations.version:
            return False
        await self.load()
        return True

    @property
    def subject_prefix(self) -> bytes:
        return f"{PREFIX}.{self.site.site}.".encode()

    @property
    def fast(self) -> FastIntake:
        if self._fast is None or self._fast.site_id != self.site.site:
            self._fast = FastIntake(self.site.site)
        return self._fast

    def check(self, msg: Msg) -> ReadingTaken | None | Rejected:
        event = self.intake.verdict(msg.subject, msg.data, msg.headers, msg.reply)
        return event if isinstance(event, ReadingTaken | Rejected) else None

    async def sort(self, messages: Sequence[Msg]) -> tuple[list[ReadingTaken], list[tuple[Msg, Rejected]]]:
        """(accepted readings, rejected messages with their rejection), in delivery order."""
        outcomes = await self.outcomes(messages)
        readings = [o for o in outcomes if isinstance(o, ReadingTaken)]
        rejected = [(msg, o) for msg, o in zip(messages, outcomes, strict=True) if isinstance(o, Rejected)]
        return readings, rejected

    def decode(self, frames: Frames) -> asyncio.Future:
        """Start the fast path on ``frames`` (in the intake thread: batches are decoded in the order given)."""
        return asyncio.get_running_loop().run_in_executor(
            intake_executor(),
            self.fast.check,
            frames.subjects,
            frames.replies,
            frames.datas,
            self.intake.declarations,
        )

    async def sort_frames(
        self, client: FastHeaderClient, frames: Frames, decoded: asyncio.Future | None = None
    ) -> tuple[ReadingColumns, list[tuple[Msg, Rejected]]]:
        """``sort`` of raw frames: the readings in the canonical form are accepted in columns by the fast path
        (``ews_contracts.fastintake``, in a worker thread; ``decoded``: started earlier by ``decode``), every
        other message is checked one by one as ``sort`` does. Returns the accepted readings in columns
        (delivery order) and the rejected."""
        fast = await (decoded if decoded is not None else self.decode(frames))
        parts: list[tuple[Any, ReadingColumns]] = [(fast.rows, ReadingColumns.of(fast))]
        rejected: list[tuple[Msg, Rejected]] = []
        if len(fast.rest):
            mine = self.subject_prefix  # (the consumer has no filter: other sites' messages are skipped)
            positions = [i for i in fast.rest.tolist() if frames.subjects[i].startswith(mine)]
            messages = [await client.raw_msg(frames, i).load_headers() for i in positions]
            outcomes = await self.outcomes(messages)
            taken = [(i, o) for i, o in zip(positions, outcomes, strict=True) if isinstance(o, ReadingTaken)]
            if taken:
                parts.append(([i for i, _ in taken], ReadingColumns.from_readings([o for _, o in taken])))
            rejected = [(m, o) for m, o in zip(messages, outcomes, strict=True) if isinstance(o, Rejected)]
        return ReadingColumns.merge(parts), rejected

    async def outcomes(self, messages: Sequence[Msg]) -> list[ReadingTaken | None | Rejected]:
        """Per message: its reading, None (an accepted status event) or its rejection."""
        outcomes = [self.check(msg) for msg in messages]
        newest = self.intake.declarations.latest_ns
        if (
            any(
                isinstance(o, Rejected) and o.cause in CONFIG_DEPENDENT and (o.stored_ns or 0) > newest
                for o in outcomes
            )
            and await self._newer_version()
        ):
            outcomes = [
                self.check(msg) if isinstance(o, Rejected) else o
                for msg, o in zip(messages, outcomes, strict=True)
            ]
        return outcomes

    async def dead_letter(self, rejected: Sequence[tuple[Msg, Rejected]], batch: Sequence[Msg]) -> None:
        """Publish a ``MessageRejected`` for each (``CHUNK`` at a time), retried until JetStream takes them
        all; ``batch`` is kept in progress meanwhile."""
        site = self.site.site
        if not self.dead_letters:
            for msg, why in rejected:
                REJECTED.labels(why.cause).inc()
                self.log.rejected(why.cause, why.reason, msg.subject, HUB_DEAD_LETTERS)
            return
        pending = []
        for msg, why in rejected:
            event = record(site, why, msg.subject, msg.data, msg.headers, msg.reply, REJECTED_BY)
            pending.append((msg, why, event, event.model_dump_json().encode()))
        attempt = 0
        while pending:
            attempt += 1
            results: list[object] = []
            for i in range(0, len(pending), CHUNK):
                results += await asyncio.gather(
                    *(
                        self.js.publish(
                            event.subject,
                            data,
                            stream=DEAD_LETTER.name,
                            headers=event.headers(),
                            timeout=PUBLISH_TIMEOUT,
                        )
                        for _, _, event, data in pending[i : i + CHUNK]
                    ),
                    return_exceptions=True,
                )
            failed = []
            for item, result in zip(pending, results, strict=True):
                msg, why, event, _ = item
                if isinstance(result, BaseException):
                    failed.append(item)
                else:
                    REJECTED.labels(why.cause).inc()
                    self.log.rejected(why.cause, why.reason, msg.subject, event.subject)
            if failed:
                error = next(r for r in results if isinstance(r, BaseException))
                if attempt <= PUBLISH_ATTEMPTS or attempt % 30 == 0:
                    log.error(
                        "%d dead-letter records not published (attempt %d), retrying: %s",
                        len(failed),
                        attempt,
                        one_line(error),
                    )
                for kept in batch:
                    with contextlib.suppress(Exception):
                        await kept.in_progress()
                if attempt % PUBLISH_ATTEMPTS == 0:  # the stream removed meanwhile? (it is created again)
                    with contextlib.suppress(Exception):
                        await ensure_streams_with(self.js)
                await asyncio.sleep(min(RETRY_DELAY * attempt, MAX_RETRY_DELAY))
            pending = failed
