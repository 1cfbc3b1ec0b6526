"""Subject names: ``ews.<site>.<kind>.<device>``, one place for every service and outside consumer."""

from __future__ import annotations

from enum import StrEnum

PREFIX = "ews"


class Kind(StrEnum):
    READING = "reading"
    STATUS = "status"
    COMMAND_REQUESTED = "command-requested"
    COMMAND_COMPLETED = "command-completed"
    COMMAND_FAILED = "command-failed"
    COMMAND_EXPIRED = "command-expired"
    AUDIT = "audit"
    SITE_CONFIGURED = "site-configured"
    DEAD_LETTER = "dead-letter"


def subject(site: str, kind: Kind | str, device: str) -> str:
    """The subject one event is published on, e.g. ``ews.demo.reading.m12``."""
    return f"{PREFIX}.{site}.{Kind(kind)}.{device}"


def pattern(site: str, kind: Kind | str) -> str:
    """Wildcard for one kind of event of one site, e.g. ``ews.demo.reading.*``."""
    return f"{PREFIX}.{site}.{Kind(kind)}.*"


def auth_rpc(site: str, operation: str) -> str:
    """Request/reply subject of the auth service (core NATS, not persisted), e.g. ``ews.demo.rpc-auth.login``."""
    return f"{PREFIX}.{site}.rpc-auth.{operation}"


def poller_rpc(site: str, operation: str) -> str:
    """Request/reply subject of the bus owner (the poller), e.g. ``ews.demo.rpc-poller.test-device``."""
    return f"{PREFIX}.{site}.rpc-poller.{operation}"
