"""Faulty devices in the log: one line when a fault starts, a summary a minute while it lasts, one line when
it ends (five dead meters polled every second are five lines a minute, not 26 lines a second).

``FaultLog`` keeps, per key (``"device m3"``, ``"gateway gw-a"``, ``"nats"``…), the fault in progress:

- the first failure logs one WARNING ``<key>: <message>``;
- further failures of the same cause are counted; at most once a minute while they go on, one WARNING
  ``<key>: still failing: N failures in the last 60 s: <latest message>``;
- a failure of another cause logs at once (one WARNING ``<key>: <message>``) — unless the causes flap:
  beyond ``MAX_CAUSE_LINES`` cause changes in one summary period they are only counted (and the summary
  shows the latest message);
- ``clear`` logs one INFO ``<key>: <message> after N failures over T s`` (nothing when the key was fine).

The *cause* of a message is its text with what varies from one attempt to the next taken out
(``cause_of``): hex dumps and byte strings, transaction ids, the id a wrong answer carried, byte and
register counts received, register addresses. Exception codes, function codes, unit numbers, ports and
hosts are kept: a different one is a different fault.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

SUMMARY_EVERY = 60.0  # seconds between two summary lines of one fault
MAX_CAUSE_LINES = 3  # cause-change lines per summary period before further changes are only counted

# (pattern, replacement), applied in order; the result only serves to compare two messages
_VARYING: list[tuple[re.Pattern[str], str]] = [
    # byte strings: b'\x01\x03…' / bytearray(b'…')
    (re.compile(r"(?:bytearray\()?b(['\"])(?:\\.|(?!\1).)*\1\)?"), "<bytes>"),
    # pymodbus hex dumps "0x1 0x3 0x2 0x0 0x5" and runs of hex bytes "01 03 02 00 05" / "01:03:02:00"
    (re.compile(r"0x[0-9a-fA-F]+(?:[\s,]+0x[0-9a-fA-F]+)*"), "<hex>"),
    (re.compile(r"\b[0-9a-fA-F]{2}(?:[ :][0-9a-fA-F]{2}){3,}\b"), "<hex>"),
    # transaction ids: "transaction id=17", "transaction_id=17", "tid=17", "tid 17"
    (re.compile(r"\b(transaction[ _]?id|tid)\s*[=:]?\s*\d+", re.IGNORECASE), r"\1=#"),
    # the id a wrong answer carried: "… but received 5", "… but got id=5"
    (re.compile(r"\b(but (?:got|received))\s+(?:id\s*=\s*)?\d+", re.IGNORECASE), r"\1 #"),
    # sizes received: "12 bytes", "returning 5 bytes", "3 of 10 registers"
    (re.compile(r"\b\d+(\s+bytes?)\b", re.IGNORECASE), r"#\1"),
    (re.compile(r"\b\d+(\s+of\s+\d+\s+registers?)\b", re.IGNORECASE), r"#\1"),
    # register addresses: "@100+10", "@100" (a device's blocks fail in turn)
    (re.compile(r"@\d+(?:\+\d+)?"), "@#"),
]


def cause_of(message: str) -> str:
    """The cause of a failure message: its text without the parts that vary between attempts."""
    text = message
    for pattern, replacement in _VARYING:
        text = pattern.sub(replacement, text)
    return " ".join(text.split())


def _failures(n: int) -> str:
    return f"{n} failure" if n == 1 else f"{n} failures"


@dataclass
class _Fault:
    started: float  # first failure
    cause: str
    message: str  # the latest message
    failures: int = 1  # since the start
    period_start: float = 0.0  # the last summary line (or the start)
    period_failures: int = 0  # failures after period_start
    cause_lines: int = 0  # cause-change lines logged since period_start


class FaultLog:
    """Log a problem once when it starts, a summary a minute while it lasts, once when it clears.

    Drop-in for the poller's former ``Complaints`` (same ``complain`` / ``clear``). ``clock`` (seconds,
    monotonic) can be injected for tests."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        clock: Callable[[], float] = time.monotonic,
        summary_every: float = SUMMARY_EVERY,
        max_cause_lines: int = MAX_CAUSE_LINES,
    ) -> None:
        self.log = logger
        self.clock = clock
        self.summary_every = summary_every
        self.max_cause_lines = max_cause_lines
        self._faults: dict[str, _Fault] = {}

    def complain(self, key: str, message: str) -> None:
        """One more failure of ``key``."""
        now = self.clock()
        cause = cause_of(message)
        fault = self._faults.get(key)
        if fault is None:
            self._faults[key] = _Fault(started=now, cause=cause, message=message, period_start=now)
            self.log.warning("%s: %s", key, message)
            return
        fault.failures += 1
        fault.period_failures += 1
        fault.message = message
        if cause != fault.cause:
            fault.cause = cause
            if fault.cause_lines < self.max_cause_lines:
                fault.cause_lines += 1
                self.log.warning("%s: %s", key, message)
                return
        if now - fault.period_start >= self.summary_every:
            self.log.warning(
                "%s: still failing: %s in the last %.0f s: %s",
                key,
                _failures(fault.period_failures),
                now - fault.period_start,
                message,
            )
            fault.period_start = now
            fault.period_failures = 0
            fault.cause_lines = 0

    def clear(self, key: str, message: str = "ok again") -> None:
        """``key`` works again (nothing is logged when it was not failing)."""
        fault = self._faults.pop(key, None)
        if fault is not None:
            self.log.info(
                "%s: %s after %s over %.0f s",
                key,
                message,
                _failures(fault.failures),
                self.clock() - fault.started,
            )

    def failing(self, key: str) -> bool:
        """Whether ``key`` has a fault in progress."""
        return key in self._faults

    def failures(self, key: str) -> int:
        """The failures of ``key``'s fault in progress (0 when it is fine)."""
        fault = self._faults.get(key)
        return fault.failures if fault else 0
