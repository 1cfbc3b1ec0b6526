"""The intake's rules (``intake.Intake``) for a whole batch of readings at once, in columns.

A high-rate consumer (the aggregator: ~150,000 readings/s) cannot afford a pydantic validation and a few
Python objects per message. ``FastIntake.check`` accepts, for a batch of raw messages (subject, reply,
payload), the readings in the **canonical form** — what ``ReadingTaken``'s own JSON serializer writes, which
is what the poller publishes — with pyarrow kernels (C++, outside the GIL), and returns them as columns.
Everything else — another key order, whitespace, escapes or non-ASCII text, another time offset than ``Z``
or ``+00:00``, a number form that pydantic reads differently (``-0``, 17+ digits), a status event, any
rejection — is left to ``Intake.check`` message by message, which decides and words the reason exactly as
before. So the fast path only ever *accepts*, and only what ``Intake.check`` accepts with the same values
(``tests/test_fastintake.py`` compares them on generated and mutated payloads):

``{"event_id":"<1-256 ASCII>","site":"<the site>","occurred_at":"YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|+00:00)",
"schema_version":1,"device":"<[A-Za-z0-9_-]+>","profile":"<ASCII>","values":{"<[a-z0-9_]+>":<number>,…},
"states":{"<ASCII>":"<ASCII>",…}}`` on ``ews.<site>.reading.<device>``, with a calendar date, quantities of
the catalogue named once each, a device declared with that profile when the message was stored
(``Declarations.since_of``). pyarrow comes with the ``store`` extra (chDB).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .intake import MAX_VALUE, QUANTITY_NAMES, SUPPORTED_SCHEMA_VERSIONS, Declarations, delivery
from .subjects import PREFIX, Kind

_TEXT = r"[ !#-\[\]-~]"  # printable ASCII but '"' and '\': a JSON string without escapes
# JSON numbers that pydantic (jiter) and Arrow's cast read to the same float (both round correctly): no "-0"
# integer (jiter: 0.0, Arrow: -0.0), at most 18 integer and 30 fraction digits, a 2-digit exponent (finite)
_NUMBER = (
    r"(?:-?[1-9][0-9]{0,17}(?:\.[0-9]{1,30})?|-?0\.[0-9]{1,30}|0(?:\.[0-9]{1,30})?)(?:[eE][+-]?[0-9]{1,2})?"
)
_VALUE = r'"[a-z0-9_]+":' + _NUMBER
_STATE = f'"{_TEXT}*":"{_TEXT}*"'
_TIME = (
    r"(?:19[7-9][0-9]|2[0-9]{3})-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?(?:Z|\+00:00)"
)
_DEVICE = r"[A-Za-z0-9_-]+"
# the '","'-separated pieces of a canonical reading before its values, with what precedes each field in its
# piece: 0 event_id, 2 time, 3 device, 4 profile, 5 the values and states
_FIELDS = (
    (0, b'{"event_id":"'),
    (2, b'occurred_at":"'),
    (3, f'schema_version":{SUPPORTED_SCHEMA_VERSIONS[0]},"device":"'.encode()),
    (4, b'profile":"'),
    (5, b'values":{'),
)
_END = 1 << 30  # (binary_slice needs an explicit stop)


def canonical_pattern(site_id: str) -> str:
    """The RE2 pattern of a canonical reading of ``site_id`` (an id: ``[a-z0-9_-]``, nothing to escape)."""
    if not re.fullmatch(r"[a-z0-9_-]+", site_id):
        raise ValueError(f"not a site id: {site_id!r}")
    (version,) = SUPPORTED_SCHEMA_VERSIONS
    return (
        rf'^\{{"event_id":"{_TEXT}{{1,256}}","site":"{site_id}","occurred_at":"{_TIME}",'
        rf'"schema_version":{version},"device":"{_DEVICE}","profile":"{_TEXT}+",'
        rf'"values":\{{(?:{_VALUE}(?:,{_VALUE})*)?\}},"states":\{{(?:{_STATE}(?:,{_STATE})*)?\}}\}}$'
    )


@dataclass
class Accepted:
    """Readings accepted by ``FastIntake.check``, in message order: ``rows`` are their message positions;
    one entry per reading in ``device``, ``profile``, ``event_id`` (pyarrow strings) and ``ts_us`` (UTC
    microseconds since the epoch, int64); one per value in ``parent`` (the reading's index in these
    columns), ``quantity`` and ``value`` (float64), in payload order. ``rest``: the positions of the other
    messages, for ``Intake.check``."""

    rows: Any  # numpy int64
    device: Any
    profile: Any
    event_id: Any
    ts_us: Any
    parent: Any
    quantity: Any
    value: Any
    rest: Any

    def __len__(self) -> int:
        return len(self.rows)


def _digits(data: Any, starts: Any, at: int, count: int) -> Any:
    """The decimal number written at ``starts + at`` (``count`` ASCII digits), per row."""
    out = data[starts + at].astype("int64") - 48
    for k in range(1, count):
        out = out * 10 + (data[starts + at + k].astype("int64") - 48)
    return out


def _days_from_civil(y: Any, m: Any, d: Any) -> Any:
    """Days since 1970-01-01 of proleptic Gregorian dates (years ≥ 1), exact (H. Hinnant's algorithm)."""
    y = y - (m <= 2)
    era = y // 400
    yoe = y - era * 400
    mp = (m + 9) % 12
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _binary_parts(array: Any) -> tuple[Any, Any]:
    """(bytes as uint8, offsets of each value) of a pyarrow binary array."""
    import numpy as np

    _, offsets, data = array.buffers()
    off = np.frombuffer(offsets, dtype=np.int32)[array.offset : array.offset + len(array) + 1]
    return (np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)), off


def parse_times(times: Any) -> tuple[Any, Any]:
    """(UTC µs since the epoch, valid date) of ``_TIME`` strings (a pyarrow binary array)."""
    import numpy as np

    data, off = _binary_parts(times)
    starts = off[:-1].astype(np.int64)
    length = (off[1:] - off[:-1]).astype(np.int64)
    year, month, day = _digits(data, starts, 0, 4), _digits(data, starts, 5, 2), _digits(data, starts, 8, 2)
    hour, minute, second = (
        _digits(data, starts, 11, 2),
        _digits(data, starts, 14, 2),
        _digits(data, starts, 17, 2),
    )
    suffix = np.where(data[starts + length - 1] == ord("Z"), 1, 6)
    fraction_digits = np.maximum(length - 19 - suffix - 1, 0)  # after the '.', when there is one
    micros = np.zeros(len(starts), dtype=np.int64)
    for k in range(6):
        present = k < fraction_digits
        digit = np.where(present, data[np.where(present, starts + 20 + k, 0)].astype(np.int64) - 48, 0)
        micros = micros * 10 + digit
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    month_days = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)[month]
    valid = day <= month_days + ((month == 2) & leap)
    days = _days_from_civil(year, month, day)
    seconds = days * 86_400 + hour * 3600 + minute * 60 + second
    return seconds * 1_000_000 + micros, valid


class FastIntake:
    """The fast path of one site's intake (module doc)."""

    def __init__(self, site_id: str) -> None:
        import pyarrow as pa

        self.site_id = site_id
        self.pattern = canonical_pattern(site_id)
        self.subject_prefix = f"{PREFIX}.{site_id}.{Kind.READING}.".encode()
        self.quantities = pa.array(sorted(QUANTITY_NAMES), pa.binary())

    def check(
        self,
        subjects: Sequence[bytes],
        replies: Sequence[bytes],
        datas: Sequence[bytes],
        declarations: Declarations,
    ) -> Accepted:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        n = len(datas)
        payloads = pa.array(datas, pa.binary())
        matched = pc.match_substring_regex(payloads, self.pattern).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(matched)
        if len(rows) == 0:
            return self._none(n)
        take = pa.array(rows)
        payloads = payloads.take(take)
        # the fields, between '","' (none of them holds a '"'): event_id, site, time, version + device, profile
        head = pc.split_pattern(payloads, b'","', max_splits=len(_FIELDS))
        event_id, times, device, profile, tail = (
            pc.binary_slice(pc.list_element(head, k), len(prefix), _END) for k, prefix in _FIELDS
        )
        ok = pc.equal(
            pa.array(subjects, pa.binary()).take(take),
            pc.binary_join_element_wise(self.subject_prefix, device, b""),
        ).to_numpy(zero_copy_only=False)
        ts_us, valid = parse_times(times)
        ok &= valid
        # the values: '"name":number' items between ,"values":{ and the first } (names and numbers have none)
        block = pc.list_element(pc.split_pattern(tail, b"}", max_splits=1), 0)
        items = pc.split_pattern(block, b",")
        parent = pc.list_parent_indices(items).to_numpy()
        flat = pc.list_flatten(items)
        filled = pc.greater(pc.binary_length(flat), 0)  # an empty object gives one empty item
        if not pc.all(filled).as_py():
            parent = parent[filled.to_numpy(zero_copy_only=False)]
            flat = flat.filter(filled)
        pair = pc.split_pattern(flat, b'":', max_splits=1)
        quantity = pc.binary_slice(pc.list_element(pair, 0), 1, _END)
        value = pc.list_element(pair, 1).cast(pa.string()).cast(pa.float64()).to_numpy()
        bad = ~pc.is_in(quantity, value_set=self.quantities).to_numpy(zero_copy_only=False)
        bad |= ~(np.abs(value) <= MAX_VALUE)  # (Intake.check words the reason)
        codes = pc.dictionary_encode(quantity).indices.to_numpy().astype(np.int64)
        key = parent.astype(np.int64) * (int(codes.max(initial=0)) + 1) + codes
        order = np.sort(key)
        if len(order) > 1 and (order[1:] == order[:-1]).any():  # a quantity named twice: pydantic keeps one
            counts = np.unique(key, return_counts=True)
            twice = counts[0][counts[1] > 1]
            bad |= np.isin(key, twice)
        if bad.any():
            ok[np.unique(parent[bad])] = False
        ok &= self._declared(device, profile, rows, replies, declarations)
        if not ok.all():
            keep = np.flatnonzero(ok)
            rank = np.cumsum(ok) - 1
            kept_values = ok[parent]
            rows, ts_us = rows[keep], ts_us[keep]
            keep_arrow = pa.array(keep)
            device, profile, event_id = (
                device.take(keep_arrow),
                profile.take(keep_arrow),
                event_id.take(keep_arrow),
            )
            parent = rank[parent[kept_values]]
            quantity = quantity.filter(pa.array(kept_values))
            value = value[kept_values]
        rest = np.setdiff1d(np.arange(n, dtype=np.int64), rows, assume_unique=True)
        return Accepted(
            rows=rows.astype(np.int64),
            device=device.cast(pa.string()),
            profile=profile.cast(pa.string()),
            event_id=event_id.cast(pa.string()),
            ts_us=ts_us,
            parent=parent.astype(np.int64),
            quantity=quantity.cast(pa.string()),
            value=value,
            rest=rest,
        )

    def _declared(
        self, device: Any, profile: Any, rows: Any, replies: Sequence[bytes], declarations: Declarations
    ) -> Any:
        """Per row: its device was declared with its profile when the message was stored."""
        import numpy as np
        import pyarrow.compute as pc

        pairs = pc.dictionary_encode(pc.binary_join_element_wise(device, profile, b"\n"))
        codes = pairs.indices.to_numpy()
        since = []
        for pair in pairs.dictionary.to_pylist():
            name, _, prof = pair.decode().partition("\n")
            since.append(declarations.since_of(name, prof))
        allowed = np.array([s == 0 for s in since], dtype=bool)
        ok = allowed[codes]
        for code, at in enumerate(since):
            if at:  # declared by a later version: accepted if the message was stored since
                for i in np.flatnonzero(codes == code):
                    where = delivery(replies[rows[i]].decode(errors="replace"))
                    ok[i] = where is None or where.stored_ns >= at
        return ok

    def _none(self, n: int) -> Accepted:
        import numpy as np
        import pyarrow as pa

        empty = pa.array([], pa.string())
        return Accepted(
            rows=np.zeros(0, np.int64),
            device=empty,
            profile=empty,
            event_id=empty,
            ts_us=np.zeros(0, np.int64),
            parent=np.zeros(0, np.int64),
            quantity=empty,
            value=np.zeros(0, np.float64),
            rest=np.arange(n, dtype=np.int64),
        )
