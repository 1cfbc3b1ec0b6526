"""JetStream streams: declared here once, created (or updated) on start-up by every service."""

from __future__ import annotations

from dataclasses import dataclass

from .subjects import PREFIX, Kind

DAY = 86_400.0


@dataclass(frozen=True)
class StreamSpec:
    name: str
    kinds: tuple[Kind, ...]
    description: str
    max_age: float = 0  # seconds; 0 = keep forever (bounded by max_bytes)
    max_bytes: int = -1
    duplicate_window: float = 120.0  # Nats-Msg-Id dedupe window, seconds

    @property
    def subjects(self) -> list[str]:
        return [f"{PREFIX}.*.{kind}.*" for kind in self.kinds]

    def subjects_of(self, site: str) -> list[str]:
        """One site's subjects (an edge box stores only its own site's)."""
        return [f"{PREFIX}.{site}.{kind}.*" for kind in self.kinds]


READINGS = StreamSpec(
    name="EWS_READINGS",
    kinds=(Kind.READING, Kind.STATUS),
    description="Every reading and device status change; the aggregator's source of truth (ews replay).",
    duplicate_window=600.0,
)
COMMANDS = StreamSpec(
    name="EWS_COMMANDS",
    kinds=(Kind.COMMAND_REQUESTED, Kind.COMMAND_COMPLETED, Kind.COMMAND_FAILED, Kind.COMMAND_EXPIRED),
    description="Commands and their outcomes: the command audit log.",
)
AUDIT = StreamSpec(
    name="EWS_AUDIT",
    kinds=(Kind.AUDIT,),
    description="Logins, failures, lockouts, Lock/Logout and code changes.",
)

CONFIG = StreamSpec(
    name="EWS_CONFIG",
    kinds=(Kind.SITE_CONFIGURED,),
    description="Every version of each site's configuration (SiteConfigured events; the last one is in force).",
)

DEAD_LETTER = StreamSpec(
    name="EWS_DEAD_LETTER",
    kinds=(Kind.DEAD_LETTER,),
    description="Messages the product did not accept (MessageRejected: the reason and the original subject, "
    "headers and payload), on ews.<site>.dead-letter.<kind>.",
    max_age=30 * DAY,
    max_bytes=256 * 1024 * 1024,  # the oldest records go first when a flood of bad messages fills it
    duplicate_window=600.0,  # a redelivered bad message is recorded once (its id is its stream sequence)
)

ALL_STREAMS: tuple[StreamSpec, ...] = (READINGS, COMMANDS, AUDIT, CONFIG, DEAD_LETTER)


def stream_for(kind: Kind | str) -> StreamSpec:
    for spec in ALL_STREAMS:
        if Kind(kind) in spec.kinds:
            return spec
    raise KeyError(kind)
