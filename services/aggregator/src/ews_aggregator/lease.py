"""Leases in a NATS key-value bucket: who holds what among the hub's aggregators (``group.py``).

The bucket's ``max_age`` is the lease: a key not written again within ``ttl`` seconds expires and is gone.
Claiming is creating the key (JetStream refuses a second create: one holder); renewing is writing it again
at the revision the holder last wrote (``update`` with ``last``: a holder whose lease expired and was taken
meanwhile learns it, and stops). nats-server ≥ 2.11 also has per-message TTLs, but nats-py cannot create a
bucket that allows them; the bucket's ``max_age`` needs nothing more and every key here has the same TTL.
"""

from __future__ import annotations

import contextlib
import time

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

BUCKET = "ews-hub-aggregators"


async def open_bucket(js: JetStreamContext, ttl: float, bucket: str = BUCKET) -> KeyValue:
    """The leases' bucket, created on first use with ``max_age`` = ``ttl`` (an existing one is used as is:
    every member is the same version)."""
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        config = KeyValueConfig(
            bucket=bucket,
            description="Leases of the hub's aggregator group: site.<site> and member.<id> (expire unless renewed)",
            history=1,
            ttl=ttl,
            storage=StorageType.FILE,
        )
        return await js.create_key_value(config)


class Leases:
    """The leases one owner holds (key -> revision), claimed and renewed in ``kv``."""

    def __init__(self, kv: KeyValue, owner: str) -> None:
        self.kv = kv
        self.owner = owner
        self.held: dict[str, int] = {}
        self.renewed_at: dict[str, float] = {}

    async def claim(self, key: str) -> bool:
        """True when this owner now holds ``key`` (it was free or had expired)."""
        try:
            revision = await self.kv.create(key, self.owner.encode())
        except KeyWrongLastSequenceError:
            return False
        self.held[key] = revision
        self.renewed_at[key] = time.monotonic()
        return True

    async def renew(self, key: str) -> bool:
        """False when the lease was lost (expired and taken, or deleted); raises when NATS does not answer
        (the lease may still be ours: ``stale`` tells when to stop relying on it)."""
        try:
            revision = await self.kv.update(key, self.owner.encode(), last=self.held[key])
        except KeyWrongLastSequenceError:
            self.forget(key)
            return False
        self.held[key] = revision
        self.renewed_at[key] = time.monotonic()
        return True

    def stale(self, key: str, limit: float) -> bool:
        """Not renewed for ``limit`` seconds: another holder may have it by now."""
        return time.monotonic() - self.renewed_at.get(key, 0.0) > limit

    async def release(self, key: str) -> None:
        """Give ``key`` up at once (another member may claim it without waiting for it to expire)."""
        revision = self.held.get(key)
        self.forget(key)
        if revision is not None:
            with contextlib.suppress(Exception):
                await self.kv.delete(key, last=revision)

    def forget(self, key: str) -> None:
        self.held.pop(key, None)
        self.renewed_at.pop(key, None)

    async def count(self, prefix: str) -> int:
        """How many live keys start with ``prefix`` (e.g. the members)."""
        try:
            return len([k for k in await self.kv.keys() if k.startswith(prefix)])
        except NoKeysError:
            return 0
