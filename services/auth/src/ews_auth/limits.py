"""Guessing limits, in Redis (shared by every auth instance), on an injectable clock.

Three counters, each a Redis hash ``{count, last, until}`` (times from the :class:`~ews_auth.clock.Clock`,
so a test can replay hours of guessing with a fake clock; Redis TTLs only collect garbage):

- **per client** (address): every unsuccessful login counts. After ``FREE_FAILURES`` the client must
  wait a doubling delay (1 s, 2 s, 4 s … capped at ``MAX_DELAY``) before its next attempt; the count is
  forgotten ``CLIENT_WINDOW`` after the last failure, and a successful login clears it.
- **per browser** (unlock token): ``TOKEN_PIN_LIMIT`` wrong PINs on a browser that holds a PUK step revoke
  that step (like a SIM card: too many wrong PINs and the PUK is needed).
- **per role**: ``ROLE_PIN_LIMIT`` wrong PIN-only attempts for a role within ``ROLE_WINDOW`` (from any
  number of browsers) suspend PIN-only sign-in for that role for ``ROLE_SUSPENSION``. PIN + PUK keeps
  working, so an attacker can never lock the real user out: from any browser they are not blocking,
  the real user signs in with PIN + PUK.

One attempt at a time per client: a short Redis lock stops parallel requests from racing past the delay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .clock import Clock, SystemClock

FREE_FAILURES = 5  # unsuccessful attempts (a first PIN-only step included) before delays start
BASE_DELAY = 1.0  # seconds, doubled by each further failure
MAX_DELAY = 300.0
CLIENT_WINDOW = 3600.0  # seconds after the last failure when a client's count is forgotten
TOKEN_PIN_LIMIT = 5  # wrong PINs on one unlocked browser before its PUK step is revoked
TOKEN_WINDOW = 86_400.0
ROLE_PIN_LIMIT = 20  # wrong PIN-only attempts for one role (all browsers) ...
ROLE_WINDOW = 3600.0  # ... within this many seconds ...
ROLE_SUSPENSION = 900.0  # ... suspend PIN-only sign-in of the role this long (PIN + PUK still works)
BUSY_MS = 15_000  # the per-client attempt lock expires by itself after this (a crashed instance)


def client_delay(count: int) -> float:
    """Delay imposed after the ``count``-th failure in a row."""
    if count <= FREE_FAILURES:
        return 0.0
    return min(MAX_DELAY, BASE_DELAY * 2 ** min(count - FREE_FAILURES - 1, 30))


class Limits:
    def __init__(self, redis: Any, site: str, clock: Clock | None = None) -> None:
        self.redis = redis
        self.prefix = f"ews:{site}:auth:limits"
        self.clock = clock or SystemClock()

    def _key(self, kind: str, who: str) -> str:
        return f"{self.prefix}:{kind}:{who or '-'}"

    # --- generic strike counter ----------------------------------------------------------------------

    async def _wait(self, key: str) -> float:
        until = await self.redis.hget(key, "until")
        return max(0.0, float(until) - self.clock.now()) if until else 0.0

    async def _strike(self, key: str, window: float, delay_for: Callable[[int], float]) -> tuple[int, float]:
        """Count one failure; returns (failures in a row, seconds blocked from now)."""
        now = self.clock.now()
        count_raw, last_raw = await self.redis.hmget(key, ["count", "last"])
        count = int(count_raw or 0) if last_raw and now - float(last_raw) <= window else 0
        count += 1
        delay = delay_for(count)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping={"count": count, "last": now, "until": now + delay})
        pipe.expire(key, int(window + delay) + 60)
        await pipe.execute()
        return count, delay

    # --- per client ------------------------------------------------------------------------------------

    async def client_wait(self, client: str) -> float:
        return await self._wait(self._key("client", client))

    async def client_failed(self, client: str) -> float:
        _, delay = await self._strike(self._key("client", client), CLIENT_WINDOW, client_delay)
        return delay

    async def client_succeeded(self, client: str) -> None:
        await self.redis.delete(self._key("client", client))

    async def acquire(self, client: str) -> bool:
        return bool(await self.redis.set(self._key("busy", client), "1", nx=True, px=BUSY_MS))

    async def release(self, client: str) -> None:
        await self.redis.delete(self._key("busy", client))

    # --- per unlocked browser --------------------------------------------------------------------------

    async def token_failed(self, digest: str) -> int:
        count, _ = await self._strike(self._key("token", digest), TOKEN_WINDOW, lambda _: 0.0)
        return count

    async def token_succeeded(self, digest: str) -> None:
        await self.redis.delete(self._key("token", digest))

    # --- per role (PIN-only path) ----------------------------------------------------------------------

    async def role_pin_wait(self, role: str) -> float:
        return await self._wait(self._key("role-pin", role))

    async def role_pin_failed(self, role: str) -> float:
        """Count a wrong PIN-only attempt for ``role``; returns the suspension imposed now (0: none)."""
        key = self._key("role-pin", role)
        count, delay = await self._strike(
            key, ROLE_WINDOW, lambda n: ROLE_SUSPENSION if n >= ROLE_PIN_LIMIT else 0.0
        )
        if delay:  # start counting afresh after the suspension
            await self.redis.hset(key, mapping={"count": 0})
        return delay
