"""Device status transitions (no I/O): on, fault, comm-error, and changes of named states."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ews_contracts.events import DeviceState

FAILURE_THRESHOLD = 3  # consecutive failed polls before a device is in comm-error


@dataclass(frozen=True)
class Transition:
    state: DeviceState
    previous: DeviceState | None
    states: dict[str, str]
    reason: str = ""


@dataclass
class StatusTracker:
    """One device's status; ``success``/``failure`` return the transition to publish, if any.

    - the first successful poll publishes ``on`` (or ``fault`` when a state value is a fault);
    - ``threshold`` consecutive failures publish ``comm-error`` with the last reason (once);
    - a successful poll after that publishes the recovery;
    - a change of any named state (charger, breaker …) publishes the new states.
    """

    faults: Mapping[str, frozenset[str]] = field(default_factory=dict)
    threshold: int = FAILURE_THRESHOLD
    state: DeviceState | None = None
    states: dict[str, str] = field(default_factory=dict)
    failures: int = 0
    reason: str = ""

    def success(self, states: Mapping[str, str]) -> Transition | None:
        self.failures = 0
        faulty = [f"{name}={value}" for name, value in states.items() if value in self.faults.get(name, ())]
        new_state: DeviceState = "fault" if faulty else "on"
        reason = ", ".join(faulty)
        changed = new_state != self.state or dict(states) != self.states
        previous = self.state
        self.state, self.states, self.reason = new_state, dict(states), reason
        if not changed:
            return None
        return Transition(new_state, previous, dict(states), reason)

    def failure(self, reason: str) -> Transition | None:
        self.failures += 1
        if self.failures < self.threshold or self.state == "comm-error":
            if self.state == "comm-error":
                self.reason = reason
            return None
        previous = self.state
        self.state, self.reason = "comm-error", reason
        return Transition("comm-error", previous, dict(self.states), reason)
