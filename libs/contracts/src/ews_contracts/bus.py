"""NATS JetStream plumbing shared by every service: broker, streams, publishing events."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from .events import Event
from .streams import ALL_STREAMS, StreamSpec, stream_for

if TYPE_CHECKING:  # FastStream is imported where a broker is made: ~18 MiB a process that uses none
    from faststream.nats import JStream, NatsBroker

log = logging.getLogger("ews.bus")


class OneLineErrors(logging.Filter):
    """Library errors as one line: the exception's type and message join the log message, and the
    traceback is kept only when the logger is at DEBUG (FastStream logs a consumer task that it
    restarts with a full traceback — e.g. a fetch interrupted at shutdown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.INFO and str(record.msg).endswith("is being executed..."):
            return False  # FastStream's task supervisor announces every consumer task it finishes
        if record.exc_info and not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            exc = record.exc_info[1]
            summary = " ".join(str(exc).split()) if exc is not None else ""
            first = record.getMessage().splitlines()[0] if record.getMessage() else ""
            record.msg = f"{first} ({type(exc).__name__}{': ' + summary if summary else ''})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def broker_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(f"ews.{name}.broker")
    if not any(isinstance(f, OneLineErrors) for f in logger.filters):
        logger.addFilter(OneLineErrors())
    return logger


def make_broker(nats_url: str, name: str) -> NatsBroker:
    """A FastStream NATS broker that reconnects forever (a service outlives NATS restarts)."""
    from faststream.nats import NatsBroker

    return NatsBroker(
        nats_url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        logger=broker_logger(name),
        log_level=logging.DEBUG,
    )


def jstream(spec: StreamSpec) -> JStream:
    """The FastStream declaration of a stream (subscribers pass it as ``stream=``)."""
    from faststream.nats import JStream

    return JStream(
        name=spec.name,
        description=spec.description,
        subjects=spec.subjects,
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        max_age=spec.max_age or None,
        max_bytes=spec.max_bytes,
        duplicate_window=spec.duplicate_window,
        declare=False,  # ensure_streams() owns creation and updates
    )


def _config(spec: StreamSpec, site: str | None = None) -> StreamConfig:
    """``site``: an edge's streams hold only that site's subjects (``ews_contracts.hub``)."""
    return StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=spec.subjects_of(site) if site else spec.subjects,
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        max_age=spec.max_age or None,
        max_bytes=spec.max_bytes,
        duplicate_window=spec.duplicate_window,
    )


async def ensure_streams(broker: NatsBroker) -> None:
    """Create every stream of ``streams.ALL_STREAMS`` or bring its config up to date (idempotent)."""
    await ensure_streams_with(broker.connection.jetstream())


async def ensure_streams_with(
    js: JetStreamContext, site: str | None = None, specs: tuple[StreamSpec, ...] = ALL_STREAMS
) -> None:
    """``ensure_streams`` on a plain nats-py JetStream context (a service without a FastStream broker).
    On an edge box (``ews up --edge``) the streams hold only its site's subjects; at the hub, ``site`` is
    the hub's identity and ``specs`` its own audit stream (``ensure_hub_streams``)."""
    from .hub import edge_site

    site = site or edge_site()
    for spec in specs:
        config = _config(spec, site)
        try:
            await js.stream_info(spec.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
                log.info("created stream %s %s", spec.name, spec.subjects)
            except BadRequestError as exc:  # created concurrently by another service
                if "already in use" not in (exc.description or ""):
                    raise
        else:
            await js.update_stream(config)


async def ensure_hub_streams(js: JetStreamContext) -> None:
    """The hub's own stream: ``EWS_AUDIT`` holding the hub's subjects only (``ews.hub.audit.*``: the logins,
    code changes and refusals of the hub's roles). Every other stream at the hub is a site's copy
    (``<STREAM>_<site>``, sourced from its edge), never declared by the hub's services; an edge's audit
    subjects (``ews.<site>.audit.*``) stay out of this one (the site id ``hub`` is reserved)."""
    from .site import RESERVED_SITE_ID
    from .streams import AUDIT

    await ensure_streams_with(js, RESERVED_SITE_ID, (AUDIT,))


async def publish_event(broker: NatsBroker, event: Event) -> None:
    """Publish an event to its stream with ``Nats-Msg-Id`` = ``event_id`` (JetStream dedupes retries)."""
    await broker.publish(
        event.model_dump(mode="json"),
        subject=event.subject,
        headers=event.headers(),
        stream=stream_for(event.KIND).name,
        timeout=5.0,
    )
