"""Checking a device command against the site and the device profile (one rule set for every service).

The gateway-api refuses a bad request before publishing it; the commands service checks again before
touching the bus (a request may come from elsewhere: the stream is a public contract).
"""

from __future__ import annotations

from dataclasses import dataclass

from .profiles import Command, Profile, ProfileError, resolve
from .site import Device, Site


class CommandRejected(ValueError):
    """The command is not acceptable; ``str(exc)`` is one line naming the problem."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found  # the device is unknown (HTTP 404) rather than the request wrong (400)


@dataclass(frozen=True)
class CommandPlan:
    """What to write: ``raw`` to ``command.address`` of unit ``device.address`` on ``device.gateway``."""

    device: Device
    profile: Profile
    command: Command
    value: str
    raw: int

    def value_name(self, raw: int) -> str | None:
        """The allowed value whose raw number is ``raw`` (for read-backs), or None."""
        return next((name for name, number in self.command.values.items() if number == raw), None)


def plan_command(
    site: Site, profiles: dict[str, Profile], device_id: str, action: str, value: str | None
) -> CommandPlan:
    """Resolve a request into a write, or raise CommandRejected with a one-line reason.

    Rules: the device exists and is enabled, its profile declares ``action``, and ``value`` is one of
    the action's allowed values (it may be omitted only when the action has exactly one value).
    """
    device = site.device(device_id)
    if device is None:
        raise CommandRejected(f"unknown device {device_id!r} on site {site.site!r}", not_found=True)
    if not device.enabled:
        raise CommandRejected(f"device {device_id!r} is disabled in the site file")
    try:
        profile = resolve(device, profiles)  # with the commands of the modules combined at its address
    except ProfileError:
        raise CommandRejected(f"device {device_id!r}: unknown device profile {device.profile!r}") from None
    command = profile.command(action)
    if command is None:
        if not profile.commands:
            raise CommandRejected(f"device {device_id!r} ({profile.id}) accepts no commands")
        declared = ", ".join(c.action for c in profile.commands)
        raise CommandRejected(
            f"device {device_id!r} ({profile.id}) has no command {action!r}; declared: {declared}"
        )
    allowed = ", ".join(command.values)
    if value is None:
        if len(command.values) != 1:
            raise CommandRejected(f"command {action!r} needs a value: one of {allowed}")
        value = next(iter(command.values))
    if value not in command.values:
        raise CommandRejected(f"command {action!r} does not accept {value!r}; allowed: {allowed}")
    return CommandPlan(
        device=device, profile=profile, command=command, value=value, raw=command.values[value]
    )
