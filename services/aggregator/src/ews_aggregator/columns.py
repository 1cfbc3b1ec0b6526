"""A batch of readings in columns: what the fast intake accepts (``ews_contracts.fastintake.Accepted``), the
readings the rules accepted one by one (``ReadingTaken``), or both merged in message order.

One entry per reading in ``device``, ``profile``, ``event_id`` (pyarrow strings) and ``ts_us`` (UTC
microseconds since the epoch, int64); one per value in ``parent`` (its reading), ``quantity`` (pyarrow
string) and ``value`` (float64), readings in order and each reading's values in payload order — the rows of
the ``readings`` table as they were inserted from ``ReadingTaken`` objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
from ews_contracts.events import ReadingTaken

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICRO = timedelta(microseconds=1)


def micros(ts: datetime) -> int:
    """UTC microseconds since the epoch of an aware (or UTC naive) datetime, exactly."""
    return ((ts if ts.tzinfo else ts.replace(tzinfo=UTC)) - EPOCH) // MICRO


def from_micros(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=int(us))


@dataclass
class ReadingColumns:
    device: Any
    profile: Any
    event_id: Any
    ts_us: Any
    parent: Any
    quantity: Any
    value: Any

    def __len__(self) -> int:
        return len(self.ts_us)

    @classmethod
    def empty(cls) -> ReadingColumns:
        text = pa.array([], pa.string())
        return cls(
            text, text, text, np.zeros(0, np.int64), np.zeros(0, np.int64), text, np.zeros(0, np.float64)
        )

    @classmethod
    def of(cls, accepted: Any) -> ReadingColumns:
        """The columns of a ``fastintake.Accepted``."""
        return cls(
            accepted.device,
            accepted.profile,
            accepted.event_id,
            accepted.ts_us,
            accepted.parent,
            accepted.quantity,
            accepted.value,
        )

    @classmethod
    def from_readings(cls, readings: Sequence[ReadingTaken]) -> ReadingColumns:
        devices, profiles, ids, times = [], [], [], []
        parents: list[int] = []
        quantities: list[str] = []
        values: list[float] = []
        for i, r in enumerate(readings):
            devices.append(r.device)
            profiles.append(r.profile)
            ids.append(r.event_id)
            times.append(micros(r.occurred_at))
            k = len(r.values)
            parents += [i] * k
            quantities += r.values
            values += r.values.values()
        return cls(
            pa.array(devices, pa.string()),
            pa.array(profiles, pa.string()),
            pa.array(ids, pa.string()),
            np.array(times, dtype=np.int64),
            np.array(parents, dtype=np.int64),
            pa.array(quantities, pa.string()),
            np.array(values, dtype=np.float64),
        )

    def take(self, rows: Any) -> ReadingColumns:
        """The readings at ``rows`` (positions, in the order given) with their values."""
        rows = np.asarray(rows, dtype=np.int64)
        position = np.full(len(self), -1, dtype=np.int64)
        position[rows] = np.arange(len(rows), dtype=np.int64)
        new_parent = position[self.parent]
        keep = np.flatnonzero(new_parent >= 0)
        order = keep[np.argsort(new_parent[keep], kind="stable")]  # values follow their reading's new place
        index = pa.array(rows)
        return ReadingColumns(
            self.device.take(index),
            self.profile.take(index),
            self.event_id.take(index),
            self.ts_us[rows],
            new_parent[order],
            self.quantity.take(pa.array(order)),
            self.value[order],
        )

    @staticmethod
    def concat(parts: Sequence[ReadingColumns]) -> ReadingColumns:
        """Columns of several parts one after the other."""
        parts = [p for p in parts if len(p)]
        if len(parts) <= 1:
            return parts[0] if parts else ReadingColumns.empty()
        offsets = np.cumsum([0] + [len(p) for p in parts])
        return ReadingColumns(
            pa.concat_arrays([p.device for p in parts]),
            pa.concat_arrays([p.profile for p in parts]),
            pa.concat_arrays([p.event_id for p in parts]),
            np.concatenate([p.ts_us for p in parts]),
            np.concatenate([p.parent + offsets[k] for k, p in enumerate(parts)]),
            pa.concat_arrays([p.quantity for p in parts]),
            np.concatenate([p.value for p in parts]),
        )

    @staticmethod
    def merge(parts: Sequence[tuple[Any, ReadingColumns]]) -> ReadingColumns:
        """Columns of several parts, each with the message positions of its readings, in message order."""
        parts = [(np.asarray(at, dtype=np.int64), cols) for at, cols in parts if len(cols)]
        if not parts:
            return ReadingColumns.empty()
        if len(parts) == 1:
            at, cols = parts[0]
            return cols if bool(np.all(at[1:] > at[:-1])) else cols.take(np.argsort(at, kind="stable"))
        joined = ReadingColumns.concat([c for _, c in parts])
        at = np.concatenate([a for a, _ in parts])
        return joined.take(np.argsort(at, kind="stable"))
