"""Events and commands that cross service boundaries (and the AsyncAPI catalogue's payloads).

Every event carries ``event_id`` (also sent as ``Nats-Msg-Id``), ``site``, UTC ``occurred_at`` and
``schema_version``. Names are past tense.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .subjects import Kind, subject
from .tokens import TOKEN_OPERATIONS


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("occurred_at must carry a time zone (UTC)")
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Event(BaseModel):
    """Common envelope of every event."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    KIND: ClassVar[Kind]

    event_id: str = Field(
        default_factory=new_id, description="Unique id, also the Nats-Msg-Id header (dedupe)."
    )
    site: str = Field(description="Site id of the site file.", examples=["demo"])
    occurred_at: UtcDatetime = Field(default_factory=utcnow, description="When it happened, UTC.")
    schema_version: int = Field(default=1, description="Version of this event's schema.")

    @property
    def subject_key(self) -> str:
        """The last subject token (a device id, or a role for audit events)."""
        return self.device

    @property
    def subject(self) -> str:
        return subject(self.site, self.KIND, self.subject_key)

    def headers(self) -> dict[str, str]:
        return {"Nats-Msg-Id": self.event_id}


class ReadingTaken(Event):
    """One poll of one device: its values named by the `Quantity` enumeration, each in that quantity's fixed
    unit (`x-ews-units` of `Quantity` in the AsyncAPI document; the counters are cumulative)."""

    KIND: ClassVar[Kind] = Kind.READING

    device: str = Field(
        description="Device id of the site's configuration (`GET /api/v1/site`).", examples=["m1"]
    )
    profile: str = Field(
        description="The device's profile id, as `GET /api/v1/site` gives it.",
        examples=["multifunction-meter-412045"],
    )
    values: dict[str, float] = Field(
        default_factory=dict,
        description="Quantity name (`Quantity`) -> value in that quantity's unit (`x-ews-units`: Wh, W, V, A, "
        "dm³ ...).",
        examples=[{"energy_active_import": 1234560.0, "power_active": 5230.5}],
    )
    states: dict[str, str] = Field(
        default_factory=dict,
        description="Named states read from status registers (breaker, charger ...).",
        examples=[{"charger": "charging"}],
    )

    @staticmethod
    def id_for(site: str, device: str, occurred_at: datetime) -> str:
        """Deterministic id: a re-published poll is dropped by JetStream's dedupe and by the store."""
        return f"{site}.{device}.{int(occurred_at.timestamp() * 1000)}"


DeviceState = Literal["on", "off", "comm-error", "fault"]

PRODUCER_HEADER = "Ews-Producer"  # header naming the product service that produced an event (status: poller)
POLLER = "poller"


class DeviceStatusChanged(Event):
    """A device's communication state or a named state (breaker, charger) changed. Produced by the poller
    only (header ``Ews-Producer: poller``): one published by anyone else is dead-lettered."""

    KIND: ClassVar[Kind] = Kind.STATUS

    device: str = Field(examples=["ev1"])
    state: DeviceState = Field(description="Device state: on, off, comm-error or fault.", examples=["on"])
    previous: DeviceState | None = Field(default=None, examples=["comm-error"])
    states: dict[str, str] = Field(default_factory=dict, examples=[{"breaker": "closed"}])
    reason: str = Field(default="", description="Human-readable cause (e.g. the last Modbus error).")

    def headers(self) -> dict[str, str]:
        return {"Nats-Msg-Id": self.event_id, PRODUCER_HEADER: POLLER}


class CommandRequested(Event):
    """Someone asked for a device command; the commands service executes it."""

    KIND: ClassVar[Kind] = Kind.COMMAND_REQUESTED

    command_id: str = Field(default_factory=new_id, description="Id returned to the caller.")
    device: str = Field(examples=["ev1"])
    action: str = Field(description="A command declared by the device profile.", examples=["charge"])
    value: str | None = Field(
        default=None, description="One of the action's allowed values.", examples=["start"]
    )
    requested_by: str = Field(default="", description="Role that asked.", examples=["greenUp"])
    deadline: UtcDatetime | None = Field(
        default=None,
        description="Not executed after this instant (UTC): past it the command ends as CommandExpired. "
        "Absent: occurred_at + the site's default (EWS_COMMAND_DEADLINE, 30 s).",
    )

    def deadline_or(self, default_seconds: float) -> datetime:
        """The instant after which this command must not be executed."""
        return self.deadline or self.occurred_at + timedelta(seconds=default_seconds)


class CommandCompleted(Event):
    """The command was written and its read-back matched."""

    KIND: ClassVar[Kind] = Kind.COMMAND_COMPLETED

    command_id: str
    device: str
    action: str
    value: str | None = None
    readback: str | None = Field(default=None, description="Value read back after the write.")


class CommandFailed(Event):
    """The command was refused or could not be executed."""

    KIND: ClassVar[Kind] = Kind.COMMAND_FAILED

    command_id: str
    device: str
    action: str
    value: str | None = None
    error: str = Field(description="One line naming the problem.")


class CommandExpired(Event):
    """The command was not executed because its deadline passed first (the bus owner was unreachable,
    busy or down, or the request reached the executor too late). It is never executed afterwards."""

    KIND: ClassVar[Kind] = Kind.COMMAND_EXPIRED

    command_id: str
    device: str
    action: str
    value: str | None = None
    deadline: UtcDatetime = Field(description="The deadline that passed.")
    error: str = Field(description="One line: why it did not run in time.")


AuditAction = Literal[
    "login-succeeded",
    "login-failed",
    "locked-out",
    "logout",
    "lock",
    "code-changed",
    "backup",
    "restore",
    "readings-imported",
    "token-created",
    "token-revoked",
    "token-refused",
]


class AuditRecorded(Event):
    """A security-relevant action (login, failure, lockout, Logout, Lock, code change, backup, restore,
    readings imported, a machine token created, revoked or refused; configuration changes are
    ``SiteConfigured`` events)."""

    KIND: ClassVar[Kind] = Kind.AUDIT

    action: AuditAction
    role: str = Field(default="unknown", examples=["administrator"])
    client: str = Field(default="", description="Client address or browser id.")
    detail: str = ""

    @property
    def subject_key(self) -> str:
        return self.role


class SiteConfigured(Event):
    """A new version of the site's configuration (the whole document, as the site file's schema), in force
    from now on. Version 1 is the site file that seeded it; every later version names who changed what."""

    KIND: ClassVar[Kind] = Kind.SITE_CONFIGURED

    version: int = Field(ge=1, description="1, 2, 3 … (the `If-Match` of PUT /api/v1/site/config).")
    changed_by: str = Field(description="Role that changed it, or 'site file' / 'ews site import' / 'restore'.")
    how: Literal["site-file", "import", "api", "device-enabled", "restore"] = Field(
        description="Seeded from the site file, `ews site import`, the API or pages, a device On/Off, a restore."
    )
    changes: list[str] = Field(
        default_factory=list,
        description="What changed, one line each (e.g. 'devices.m7: added', 'devices.m3.enabled: true → false').",
    )
    document: dict[str, Any] = Field(description="The site document (same schema as the site file).")
    file_digest: str = Field(default="", description="SHA-256 of the site file it came from ('' otherwise).")

    @property
    def subject_key(self) -> str:
        return "config"


RejectCause = Literal[
    "malformed",
    "missing-field",
    "invalid-field",
    "unsupported-schema-version",
    "subject-mismatch",
    "unknown-device",
    "wrong-profile",
    "unknown-quantity",
    "not-accepted",
]


class MessageRejected(Event):
    """A message the product did not accept (causes: `x-ews-dead-letter`): nothing of it was stored. Kept
    on ``ews.<site>.dead-letter.<kind>`` (stream EWS_DEAD_LETTER, 30 days) with the reason and the
    original subject, headers and payload; its ``event_id`` is ``<site>.rejected.<stream>.<sequence>`` of
    the original, so a redelivered message is recorded once."""

    KIND: ClassVar[Kind] = Kind.DEAD_LETTER

    kind: str = Field(description="Kind token of the original subject.", examples=["reading"])
    cause: RejectCause = Field(description="Why, as a stable identifier.", examples=["unknown-device"])
    reason: str = Field(
        description="Why, in one line naming the field or the value at fault.",
        examples=["device 'ghost' is not declared in the configuration of site 'demo'"],
    )
    rejected_by: str = Field(description="The product service that rejected it.", examples=["aggregator"])
    original_subject: str = Field(examples=["ews.demo.reading.ghost"])
    original_headers: dict[str, str] = Field(
        default_factory=dict,
        description="The original NATS headers.",
        examples=[{"Nats-Msg-Id": "demo.ghost.1"}],
    )
    original_payload: str = Field(description="The original payload, as ``payload_encoding`` says.")
    payload_encoding: Literal["utf-8", "base64"] = Field(
        default="utf-8", description="utf-8: the payload as text; base64: bytes that were not UTF-8."
    )
    original_size: int = Field(description="Size of the original payload in bytes.")
    truncated: bool = Field(
        default=False, description="The payload was cut to its first 64 KiB (bytes) in this record."
    )
    stream: str | None = Field(
        default=None, description="Stream holding the original.", examples=["EWS_READINGS"]
    )
    stream_sequence: int | None = Field(default=None, description="The original's sequence in that stream.")

    @property
    def subject_key(self) -> str:
        return self.kind


# --- auth request/reply (core NATS, see subjects.auth_rpc) ---------------------------------------


class LoginRequest(BaseModel):
    pin: str = Field(description="5-digit PIN.")
    puk: str | None = Field(default=None, description="14-digit PUK, with or without spaces.")
    unlock_token: str | None = Field(default=None, description="This browser's unlock (PUK step) token.")
    client: str = Field(default="", description="Client address, for rate limits and audit.")


class LoginReply(BaseModel):
    ok: bool
    role: str | None = None
    puk_required: bool = False
    unlock_token: str | None = Field(default=None, description="New unlock token after a PUK step.")
    error: str | None = None
    retry_after: float | None = None
    default_codes: bool = Field(
        default=False, description="The role still uses its factory PIN/PUK (the UI asks to change them)."
    )
    unavailable: bool = Field(
        default=False, description="The codes could not be checked (their store is down): try again, not a refusal."
    )


class RevokeUnlockRequest(BaseModel):
    unlock_token: str
    role: str
    mode: Literal["logout", "lock"]
    client: str = ""


class ChangeCodesRequest(BaseModel):
    """Change the PIN/PUK of ``role``. A role changing its own codes gives its current ones; a role with
    the manage-codes permission changes another role's codes without them."""

    role: str = Field(description="Whose codes change.")
    pin: str = Field(description="New 5-digit PIN (unique across roles).")
    puk: str = Field(description="New 14-digit PUK, with or without spaces.")
    current_pin: str | None = None
    current_puk: str | None = None
    by_role: str = Field(description="Role of the session asking.")
    client: str = ""


class ChangeCodesReply(BaseModel):
    ok: bool
    error: str | None = None
    reason: (
        Literal["bad-request", "forbidden", "wrong-current-codes", "pin-in-use", "too-many-attempts"] | None
    ) = None
    retry_after: float | None = None


class RevokeUnlockReply(BaseModel):
    ok: bool
    revoked: bool = Field(default=False, description="An unlock was found and revoked.")
    error: str | None = None


class CodesStatusRequest(BaseModel):
    """No field: ``{}``."""


class CodesStatusReply(BaseModel):
    default_codes: dict[str, bool] = Field(description="Per role: still the factory codes.")


def payload(event: Event) -> dict[str, Any]:
    return event.model_dump(mode="json")


# --- poller request/reply (core NATS, see subjects.poller_rpc) -------------------------------------


class ProbeRequest(BaseModel):
    """Read a device once, before it is saved (the Configuration page's "Test" button)."""

    device: dict[str, Any] = Field(description="The device as in the site document.")
    gateway: dict[str, Any] | None = Field(
        default=None, description="Its gateway as in the site document (default: the configured one)."
    )


class ProbeReply(BaseModel):
    ok: bool
    values: dict[str, float] = Field(default_factory=dict)
    states: dict[str, str] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list, description="Values that could not be decoded.")
    error: str = Field(default="", description="Why nothing could be read (one line).")
    transactions: int = 0


class ExecuteRequest(BaseModel):
    """Execute one checked command on the bus (commands service -> bus owner, ``rpc-poller.execute``).

    The bus owner checks it again against the site and the profile, refuses it past ``deadline``, and
    executes a ``command_id`` at most once (a repeated request gets the first answer)."""

    command_id: str
    device: str
    action: str
    value: str | None = None
    deadline: UtcDatetime


class ExecuteReply(BaseModel):
    status: Literal["written", "failed", "expired"] = Field(
        description="written: the register was written (and read back when the profile asks); failed: "
        "refused or the write failed (nothing or not certainly written); expired: past its deadline, "
        "not written."
    )
    readback: int | None = Field(default=None, description="Raw register value read back after the write.")
    error: str = Field(default="", description="One line naming the problem (failed, expired).")
    queued_ms: float = Field(default=0.0, description="Time spent waiting for the bus, milliseconds.")


# --- request/reply operations (core NATS, not persisted): operation -> (request, reply) ----------------

AUTH_OPERATIONS: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    "login": (LoginRequest, LoginReply),
    "revoke-unlock": (RevokeUnlockRequest, RevokeUnlockReply),
    "change-codes": (ChangeCodesRequest, ChangeCodesReply),
    "codes-status": (CodesStatusRequest, CodesStatusReply),
    **TOKEN_OPERATIONS,  # machine tokens (ews_contracts.tokens)
}
"""Answered by the auth service on ``subjects.auth_rpc(site, operation)`` (queue group ``auth``)."""

POLLER_OPERATIONS: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    "test-device": (ProbeRequest, ProbeReply),
    "execute": (ExecuteRequest, ExecuteReply),
}
"""Answered by the bus owner (the poller) on ``subjects.poller_rpc(site, operation)``."""
