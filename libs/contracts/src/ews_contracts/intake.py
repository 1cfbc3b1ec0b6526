"""Strict acceptance of the events the product consumes from the bus: the contract's rules, in one place.

Anyone may publish readings (``ReadingTaken`` on ``ews.<site>.reading.<device>``) for a declared device;
status events (``DeviceStatusChanged``) are the poller's only. A message is accepted when:

1. its payload is a JSON object of the event's schema, strictly: every envelope field present
   (``event_id``, ``site``, ``occurred_at`` with its offset, ``schema_version``), no unknown field, no
   coercion (a number sent as a string is refused), finite numbers only;
2. its ``schema_version`` is supported (``SUPPORTED_SCHEMA_VERSIONS``);
3. the subject's site and device tokens are the payload's;
4. a reading's value names are quantities of ``ews_contracts.quantities`` (each in its fixed unit);
5. its device was declared in the site's configuration — for a reading, with that profile (the device's
   ``profile``, or its effective id with ``modules`` ``a+b`` / an ``ea_register`` ``+ea``) — by the version
   in force when the message was stored in the stream, or an earlier one (``Declarations``);
6. a status event carries the poller's header ``Ews-Producer: poller``.

Otherwise ``Intake.check`` raises ``Rejected`` with a stable ``cause`` and a one-line ``reason``; the live
consumer publishes a ``MessageRejected`` (``record``) to the dead-letter stream and moves on. ``ews replay``
and the rebuild after a restore apply the same rules to the same messages with the configuration history
of EWS_CONFIG: they skip exactly what the live consumer rejected, so the figures are the same.

Rule 5 is decided by *stream* time, not by ``occurred_at``: history imported today for a device declared
today is accepted, readings sent before their device was declared stay rejected on every replay, and a
device removed later (a retired device) or given another profile keeps its history. The first version
counts from the beginning of the stream (the poller polls the site file's devices before the stored
configuration exists).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, get_args

from pydantic import ConfigDict, Field, ValidationError

from .events import (
    POLLER,
    PRODUCER_HEADER,
    DeviceStatusChanged,
    MessageRejected,
    ReadingTaken,
    RejectCause,
    UtcDatetime,
    utcnow,
)
from .quantities import Quantity
from .site import Device, Site
from .subjects import PREFIX, Kind
from .text import one_line

log = logging.getLogger("ews.intake")

SUPPORTED_SCHEMA_VERSIONS: tuple[int, ...] = (1,)
OPEN_TO_OUTSIDERS: tuple[Kind, ...] = (Kind.READING,)  # kinds anyone may publish (the AsyncAPI document)
CONSUMED: tuple[Kind, ...] = (Kind.READING, Kind.STATUS)  # kinds the aggregator checks
CAUSES: tuple[str, ...] = get_args(RejectCause)
CAUSE_DESCRIPTIONS: dict[str, str] = {
    "malformed": "the payload is not a JSON object",
    "missing-field": "a required field is missing (event_id, site, occurred_at and schema_version included)",
    "invalid-field": "a field has the wrong type or value (no coercion: a number sent as a string is refused; "
    "an unknown field; occurred_at without its UTC offset; a number that is not finite or beyond ±10^15)",
    "unsupported-schema-version": "schema_version is not one of the supported versions",
    "subject-mismatch": "the subject's site or device token differs from the payload's site or device",
    "unknown-device": "the device is not declared in the site's configuration (as it was when the message was "
    "stored), or is a virtual device",
    "wrong-profile": "the profile is not the device's profile in the site's configuration",
    "unknown-quantity": "a value is named by no quantity of the catalogue",
    "not-accepted": "this kind of message is not accepted from this publisher (status events are produced by "
    "the poller only)",
}
STATUS_FROM_OUTSIDE = "status events are produced by the poller only"
QUANTITY_NAMES: frozenset[str] = frozenset(str(q) for q in Quantity)
PAYLOAD_LIMIT = 64 * 1024  # bytes of the original payload kept in a dead-letter record
ID_MAX = 256  # characters of an event_id (a backup's record keeps ids up to this length)
CONFIG_DEPENDENT = frozenset({"unknown-device", "wrong-profile"})

# beyond any meter's register (10^15 Wh = 1 PWh), and what keeps value × 1000 in ClickHouse's Int64 columns
MAX_VALUE = 1e15
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_VALUE, le=MAX_VALUE)]
_WIRE = ConfigDict(extra="forbid", frozen=True, strict=True)


class ReadingIn(ReadingTaken):
    """``ReadingTaken`` as the intake reads it: envelope required, no coercion, finite numbers."""

    model_config = _WIRE

    event_id: str = Field(min_length=1, max_length=ID_MAX)
    occurred_at: UtcDatetime
    schema_version: int
    values: dict[str, FiniteFloat] = Field(default_factory=dict)


class StatusIn(DeviceStatusChanged):
    """``DeviceStatusChanged`` as the intake reads it (the poller's own, checked like a reading)."""

    model_config = _WIRE

    event_id: str = Field(min_length=1, max_length=ID_MAX)
    occurred_at: UtcDatetime
    schema_version: int


WIRE_MODELS: dict[Kind, type[ReadingTaken] | type[DeviceStatusChanged]] = {
    Kind.READING: ReadingIn,
    Kind.STATUS: StatusIn,
}


class Rejected(ValueError):
    """A message the intake does not accept: ``cause`` (a ``RejectCause``) and ``reason`` (one line)."""

    def __init__(self, cause: RejectCause, reason: str, stored_ns: int | None = None) -> None:
        super().__init__(f"{cause}: {reason}")
        self.cause: RejectCause = cause
        self.reason = reason
        self.stored_ns = stored_ns  # stream time of the message, for the rejections a newer version may lift


# --- where a delivered message sits in its stream ----------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    stream: str
    sequence: int
    stored_ns: int  # JetStream's timestamp of the message (ns since the epoch)


def delivery(reply: str | None) -> Delivery | None:
    """Stream, sequence and stream time of a JetStream delivery, from its reply subject
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>`` or the v2 form with a domain
    and an account hash); None for a message that did not come from a stream."""
    if not reply or not reply.startswith("$JS.ACK."):
        return None
    tokens = reply.split(".")
    try:
        if len(tokens) == 9:
            return Delivery(tokens[2], int(tokens[5]), int(tokens[7]))
        if len(tokens) >= 11:
            return Delivery(tokens[4], int(tokens[7]), int(tokens[9]))
    except ValueError:
        return None
    return None


def _stored_ns(reply: str | None) -> int | None:
    where = delivery(reply)
    return where.stored_ns if where else None


# --- what the configuration declares -----------------------------------------------------------------


def effective_profile_id(device: Device) -> str:
    """The id of the profile the poller reads the device with (``profiles.resolve``): its profile, then
    ``+<module>`` for each of its modules, then ``+ea`` for a generic meter's register override."""
    return device.profile + "".join(f"+{m}" for m in device.modules) + ("+ea" if device.ea_register else "")


def accepted_profiles(device: Device) -> set[str]:
    return {device.profile, effective_profile_id(device)}


class Declarations:
    """Every (device, profile) the site's configuration has declared, each with the stream time (ns) of the
    first version that declared it (0 for the first version: it counts from the beginning)."""

    def __init__(self, site_id: str) -> None:
        self.site_id = site_id
        self.since: dict[str, dict[str, int]] = {}
        self.first: dict[str, int] = {}  # device -> its earliest declaration (any profile)
        self.virtual: set[str] = set()
        self.version = 0  # the newest version added
        self.latest_ns = 0  # its stream time

    @classmethod
    def of(cls, site: Site) -> Declarations:
        """One version only: the site file (no stored configuration)."""
        out = cls(site.site)
        out.add(site, 1, 0)
        return out

    @classmethod
    def from_timeline(cls, site_id: str, timeline: Iterable[tuple[int, int, Site]]) -> Declarations:
        """From ``(version, stream ns, site)`` of every stored version, oldest first."""
        out = cls(site_id)
        for version, stored_ns, site in timeline:
            out.add(site, version, stored_ns)
        return out

    def add(self, site: Site, version: int, stored_ns: int) -> None:
        if version <= self.version:
            return
        at = stored_ns if self.version else 0
        for device in site.devices:
            profiles = self.since.setdefault(device.id, {})
            for profile in accepted_profiles(device):
                profiles.setdefault(profile, at)
            self.first[device.id] = min(profiles.values())
        self.virtual = {v.id for v in site.virtual_devices}
        self.version, self.latest_ns = version, stored_ns

    def since_of(self, device: str, profile: str) -> int | None:
        """When a reading of ``device`` with ``profile`` is accepted: from the stream time (ns) returned,
        0 for always; None when ``check`` rejects it whenever it was stored (``fastintake``)."""
        profiles = self.since.get(device)
        return None if profiles is None else profiles.get(profile)

    def check(self, device: str, profile: str | None, reply: str | None) -> None:
        """Raise ``Rejected`` unless ``device`` (with ``profile``, for a reading) was declared when the
        message (delivered with ``reply``) was stored."""
        profiles = self.since.get(device)
        if profiles is None:
            what = " (a virtual device: computed, never read)" if device in self.virtual else ""
            raise Rejected(
                "unknown-device",
                f"device {device!r} is not declared in the configuration of site {self.site_id!r}{what}",
                _stored_ns(reply),
            )
        first = self.first[device]
        since = first if profile is None else profiles.get(profile)
        if since is None:
            raise Rejected(
                "wrong-profile",
                f"profile {profile!r} is not a profile of device {device!r} ({', '.join(sorted(profiles))})",
                _stored_ns(reply),
            )
        if since:  # declared by a later version than the first: when was the message stored?
            at = _stored_ns(reply)
            if at is not None and at < since:
                known = first <= at  # the device was declared then, with another profile
                raise Rejected(
                    "wrong-profile" if known else "unknown-device",
                    f"device {device!r}{f' with profile {profile!r}' if known else ''} was declared in the "
                    f"configuration of site {self.site_id!r} only after this message was stored",
                    at,
                )


# --- the rules -----------------------------------------------------------------------------------------


async def stored_declarations(
    store: Any, fallback: Site, logger: logging.Logger, whose: str = ""
) -> Declarations:
    """Every version of a site's configuration stored in ``store`` (a ``siteconfig.ConfigStore``), with its
    stream time; ``fallback`` (the configuration in force) when none is stored or the history cannot be
    read: its first version counts from the beginning, so nothing of it is refused. Shared by the
    aggregator (``Gate``, replay) and the hub's live state (``hublive``); ``whose`` names the site in their
    log lines ("" on a single box)."""
    from .siteconfig import site_of  # (siteconfig's stores are NATS-bound; the rules above are not)

    timeline: list[tuple[int, int, Site]] = []
    if store is not None:
        try:
            stored = await store.timeline()
        except Exception as exc:
            logger.warning(
                "configuration history%s not read (%s): checking devices against the one in force",
                whose,
                one_line(exc),
            )
            stored = []
        for ns, event in stored:
            try:
                timeline.append((event.version, ns, site_of(event)))
            except ValueError as exc:  # stored by an older version under rules that changed since
                logger.warning(
                    "configuration version %d%s left out of the checks: %s",
                    event.version,
                    whose,
                    one_line(exc),
                )
    if not timeline:
        return Declarations.of(fallback)
    return Declarations.from_timeline(fallback.site, timeline)


def _field(loc: Sequence[Any]) -> str:
    return ".".join(str(p) for p in loc) or "payload"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


_JSON_TYPES = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def diagnose(data: bytes | str, exc: ValidationError) -> Rejected:
    """The ``Rejected`` of a payload the wire model refused: not JSON, an unsupported version (whatever the
    shape of that version), missing fields, or the first wrong ones."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as err:  # (UnicodeDecodeError is a ValueError)
        return Rejected("malformed", f"the payload is not JSON ({' '.join(str(err).split())[:120]})")
    if not isinstance(document, dict):
        return Rejected(
            "malformed", f"the payload is a JSON {_JSON_TYPES.get(type(document), 'value')}, not an object"
        )
    version = document.get("schema_version")
    if (
        isinstance(version, int)
        and not isinstance(version, bool)
        and version not in SUPPORTED_SCHEMA_VERSIONS
    ):
        return _unsupported(version)
    errors = exc.errors(include_url=False)
    missing = [_field(e["loc"]) for e in errors if e["type"] == "missing"]
    if missing:
        return Rejected("missing-field", f"missing {', '.join(missing)} (required)")
    parts = []
    for e in errors[:3]:
        if e["type"] == "extra_forbidden":
            parts.append(f"{_field(e['loc'])}: unknown field")
        else:
            message = e["msg"].removeprefix("Value error, ")
            parts.append(f"{_field(e['loc'])}: {message} (got {_short(e.get('input'))})")
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return Rejected("invalid-field", "; ".join(parts) + more)


def _unsupported(version: Any) -> Rejected:
    supported = ", ".join(map(str, SUPPORTED_SCHEMA_VERSIONS))
    return Rejected(
        "unsupported-schema-version", f"schema_version {version!r} is not supported (supported: {supported})"
    )


class Intake:
    """The rules of one site's intake (module doc). ``declarations`` may be replaced as the configuration
    changes."""

    def __init__(self, site_id: str, declarations: Declarations) -> None:
        self.site_id = site_id
        self.declarations = declarations

    def check(
        self,
        subject: str,
        data: bytes | str,
        headers: Mapping[str, str] | None = None,
        reply: str | None = None,
    ) -> ReadingTaken | DeviceStatusChanged:
        """The accepted event (a ``ReadingTaken`` or a ``DeviceStatusChanged``: their strict subclasses
        ``ReadingIn`` / ``StatusIn``), or ``Rejected``."""
        parts = subject.split(".")
        if len(parts) != 4 or parts[0] != PREFIX:
            raise Rejected("subject-mismatch", f"subject {subject!r} is not ews.<site>.<kind>.<device>")
        _, site, kind, device = parts
        if site != self.site_id:
            raise Rejected("subject-mismatch", f"subject {subject!r} is not of site {self.site_id!r}")
        model = WIRE_MODELS.get(kind)  # type: ignore[call-overload]
        if model is None:
            raise Rejected("not-accepted", f"{kind!r} messages are not accepted here")
        if kind == Kind.STATUS and (headers or {}).get(PRODUCER_HEADER) != POLLER:
            raise Rejected("not-accepted", STATUS_FROM_OUTSIDE)
        try:
            event = model.model_validate_json(data)
        except ValidationError as exc:
            raise diagnose(data, exc) from None
        if event.schema_version not in SUPPORTED_SCHEMA_VERSIONS:
            raise _unsupported(event.schema_version)
        if event.site != site:
            raise Rejected("subject-mismatch", f"payload site {event.site!r} on subject {subject!r}")
        if event.device != device:
            raise Rejected("subject-mismatch", f"payload device {event.device!r} on subject {subject!r}")
        profile = None
        if kind == "reading":
            if not QUANTITY_NAMES.issuperset(event.values):
                names = ", ".join(sorted(event.values.keys() - QUANTITY_NAMES)[:5])
                raise Rejected(
                    "unknown-quantity",
                    f"values {names} are not quantities of the catalogue (ews_contracts.quantities)",
                )
            profile = event.profile  # type: ignore[union-attr]
        self.declarations.check(event.device, profile, reply)
        return event

    def verdict(
        self,
        subject: str,
        data: bytes | str,
        headers: Mapping[str, str] | None = None,
        reply: str | None = None,
    ) -> ReadingTaken | DeviceStatusChanged | Rejected:
        """``check``'s answer as a value, never an exception: a payload no rule foresaw (any other error)
        is ``malformed``, logged once here — a consumer must not stall on it."""
        try:
            return self.check(subject, data, headers, reply)
        except Rejected as rejected:
            return rejected
        except Exception as exc:
            log.error("a message on %s could not be checked: %s", subject, one_line(exc))
            return Rejected(
                "malformed", f"the payload could not be read ({type(exc).__name__}: {one_line(exc, 120)})"
            )


# --- dead-letter records -----------------------------------------------------------------------------


def record(
    site: str,
    rejected: Rejected,
    subject: str,
    data: bytes,
    headers: Mapping[str, str] | None,
    reply: str | None,
    rejected_by: str,
) -> MessageRejected:
    """The ``MessageRejected`` of a message: its id is ``<site>.rejected.<stream>.<sequence>`` (a redelivery
    is deduplicated by JetStream), or a digest of the subject and payload outside a stream."""
    where = delivery(reply)
    if where is not None:
        event_id = f"{site}.rejected.{where.stream}.{where.sequence}"
    else:
        event_id = f"{site}.rejected.{hashlib.sha256(subject.encode() + b' ' + data).hexdigest()[:32]}"
    kept = data[:PAYLOAD_LIMIT]
    try:
        payload, encoding = kept.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(kept).decode("ascii"), "base64"
    parts = subject.split(".")
    return MessageRejected(
        event_id=event_id,
        site=site,
        occurred_at=utcnow(),
        kind=parts[2] if len(parts) > 2 else "",
        cause=rejected.cause,
        reason=rejected.reason[:500],
        rejected_by=rejected_by,
        original_subject=subject,
        original_headers={str(k)[:256]: str(v)[:1024] for k, v in list((headers or {}).items())[:32]},
        original_payload=payload,
        payload_encoding=encoding,  # type: ignore[arg-type]
        original_size=len(data),
        truncated=len(data) > PAYLOAD_LIMIT,
        stream=where.stream if where else None,
        stream_sequence=where.sequence if where else None,
    )


# --- logging ---------------------------------------------------------------------------------------------


@dataclass
class _Cause:
    since: float
    count: int = 0  # since the last line
    latest: str = ""


class RejectionLog:
    """One line per cause, never one per message: the first rejection of a cause is logged at once with
    its reason, the next ones are counted and ``flush`` (called periodically) writes one summary line per
    cause with the count and the latest reason."""

    def __init__(
        self, logger: logging.Logger, every: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.log = logger
        self.every = every
        self.clock = clock
        self.causes: dict[str, _Cause] = {}
        self.totals: dict[str, int] = {}

    def rejected(self, cause: str, reason: str, subject: str, where: str) -> None:
        self.totals[cause] = self.totals.get(cause, 0) + 1
        state = self.causes.get(cause)
        if state is None:
            self.causes[cause] = _Cause(since=self.clock())
            self.log.warning(
                "rejected a message on %s (%s): %s; sent to %s (further %s rejections are counted)",
                subject,
                cause,
                reason,
                where,
                cause,
            )
            return
        state.count += 1
        state.latest = f"{subject}: {reason}"

    def flush(self, force: bool = False) -> None:
        now = self.clock()
        for cause, state in self.causes.items():
            if state.count and (force or now - state.since >= self.every):
                self.log.warning(
                    "rejected %d more messages (%s) in the last %.0f s; latest on %s",
                    state.count,
                    cause,
                    now - state.since,
                    state.latest,
                )
                state.count, state.since = 0, now
