"""The intake's fast path (ews_contracts.fastintake) accepts only what ``Intake.check`` accepts, with the same
values, and leaves everything else to it: canonical readings, then thousands of mutated ones."""

from __future__ import annotations

import json
import math
import random
import struct
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from ews_contracts.events import POLLER, PRODUCER_HEADER, DeviceStatusChanged, ReadingTaken
from ews_contracts.fastintake import FastIntake, canonical_pattern, parse_times
from ews_contracts.intake import MAX_VALUE, Declarations, Intake, Rejected
from ews_contracts.settings import BUNDLED_DEMO_SITE
from ews_contracts.site import Site

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LATER_NS = 2_000_000_000_000_000_000  # stream time of the second configuration version


@pytest.fixture(scope="module")
def site() -> Site:
    return Site.model_validate(yaml.safe_load(BUNDLED_DEMO_SITE.read_text()))


@pytest.fixture(scope="module")
def declarations(site: Site) -> Declarations:
    """Two versions: the second declares a new meter ``late`` (accepted only in messages stored after it)."""
    data = yaml.safe_load(BUNDLED_DEMO_SITE.read_text())
    data["devices"].append(
        {**next(d for d in data["devices"] if d["id"] == "m1"), "id": "late", "address": 77}
    )
    return Declarations.from_timeline("demo", [(1, 0, site), (2, LATER_NS, Site.model_validate(data))])


def reply(seq: int, ns: int) -> bytes:
    return f"$JS.ACK.EWS_READINGS.aggregator.1.{seq}.{seq}.{ns}.0".encode()


def micros(ts: datetime) -> int:
    return (ts - EPOCH) // timedelta(microseconds=1)


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def canonical(rng: random.Random, site: Site) -> tuple[str, bytes]:
    device = rng.choice(["m1", "e2", "late", "water", "nosuch"])
    profile = site.device(device).profile if site.device(device) else "multifunction-meter-412045"
    if device == "late":
        profile = site.device("m1").profile
    ts = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(
        microseconds=rng.choice([0, rng.randrange(10**6) * 1000, rng.randrange(10**6)])
        + rng.randrange(10**6) * 10**6 * 400
    )
    values = {}
    for q in rng.sample(
        ["energy_active_import", "power_active", "voltage_l1", "energy_active_export"], rng.randint(0, 3)
    ):
        values[q] = rng.choice(
            [
                float(rng.randrange(10**9)),
                rng.uniform(-1e6, 1e6),
                rng.random() * 10 ** rng.randint(-30, 30),
                -0.0,
                0.0,
                float(rng.randrange(10**20)),
            ]
        )
    states = {"breaker": "closed"} if rng.random() < 0.2 else {}
    event = ReadingTaken(
        event_id=ReadingTaken.id_for("demo", device, ts),
        site="demo",
        device=device,
        profile=profile,
        occurred_at=ts,
        values=values,
        states=states,
    )
    return event.subject, type(event).__pydantic_serializer__.to_json(event)


MUTATIONS = [
    lambda s: s.replace(b'"schema_version":1', b'"schema_version":2'),
    lambda s: s.replace(b'"schema_version":1', b'"schema_version":1.0'),
    lambda s: s.replace(b"Z", b"+00:00", 1),
    lambda s: s.replace(b"Z", b"+01:00", 1),
    lambda s: s.replace(b"Z", b"z", 1),
    lambda s: s.replace(b"T", b" ", 1),
    lambda s: s.replace(b"2026-", b"2025-02-29T", 1),
    lambda s: s.replace(b'":', b'": '),
    lambda s: s.replace(b'"site":"demo"', b'"site":"other"'),
    lambda s: s.replace(b'"device":"', b'"device":"x'),
    lambda s: s.replace(b'"profile":"', b'"profile":"\\u0061'),
    lambda s: s.replace(b'"event_id":"', b'"event_id":"\xc3\xa9'),
    lambda s: s.replace(b'"event_id":"', b'"event_id":"' + b"a" * 300),
    lambda s: s.replace(b'"values":{', b'"values":{"power_active":-0,'),
    lambda s: s.replace(b'"values":{', b'"values":{"power_active":1,"power_active":2,'),
    lambda s: s.replace(b'"values":{', b'"values":{"not_a_quantity":1,'),
    lambda s: s.replace(b'"values":{', b'"values":{"power_active":"1",'),
    lambda s: s.replace(b'"values":{', b'"values":{"power_active":1e400,'),
    lambda s: s.replace(b'"values":{', b'"values":{"power_active":12345678901234567890,'),
    lambda s: s.replace(b'"values":{', b'"values":{"power_active":1E+2,'),
    lambda s: s.replace(b'"states":{', b'"states":{"a":1,'),
    lambda s: s.replace(b',"states":{}', b""),
    lambda s: s.replace(b"}}", b'},"extra":1}'),
    lambda s: s.replace(b"-01-", b"-13-", 1),
    lambda s: s.replace(b"-01-", b"-04-", 1).replace(b"-04-0", b"-04-3", 1),
    lambda s: s + b" ",
    lambda s: s[:-1],
    lambda s: b"[" + s + b"]",
]


def random_mutation(rng: random.Random, data: bytes) -> bytes:
    if rng.random() < 0.6:
        return rng.choice(MUTATIONS)(data)
    i = rng.randrange(len(data))
    return data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]


def compare(site: Site, declarations: Declarations, messages: list[tuple[str, bytes, bytes]]) -> int:
    """Fast path vs Intake.check on ``messages`` (subject, payload, reply); returns how many it accepted."""
    intake = Intake("demo", declarations)
    fast = FastIntake("demo").check(
        [s.encode() for s, _, _ in messages],
        [r for _, _, r in messages],
        [d for _, d, _ in messages],
        declarations,
    )
    assert sorted([*fast.rows.tolist(), *fast.rest.tolist()]) == list(range(len(messages)))
    values: dict[int, list[tuple[str, float]]] = {}
    for parent, quantity, value in zip(
        fast.parent.tolist(), fast.quantity.to_pylist(), fast.value.tolist(), strict=True
    ):
        values.setdefault(parent, []).append((quantity, value))
    for k, i in enumerate(fast.rows.tolist()):
        subject, data, rep = messages[i]
        try:
            event = intake.check(subject, data, {"Nats-Msg-Id": "x"}, rep.decode())
        except Rejected as exc:
            raise AssertionError(f"fast path accepted what the rules reject ({exc}): {data!r}") from None
        assert isinstance(event, ReadingTaken)
        assert fast.device[k].as_py() == event.device and fast.profile[k].as_py() == event.profile
        assert fast.event_id[k].as_py() == event.event_id
        assert int(fast.ts_us[k]) == micros(event.occurred_at), data
        got = values.get(k, [])
        assert [q for q, _ in got] == list(event.values), data
        assert [bits(v) for _, v in got] == [bits(v) for v in event.values.values()], data
    return len(fast.rows)


def test_canonical_readings_take_the_fast_path(site: Site, declarations: Declarations):
    rng = random.Random(7)
    messages = []
    for seq in range(2000):
        subject, data = canonical(rng, site)
        messages.append((subject, data, reply(seq, rng.choice([1_000, LATER_NS + 5]))))
    accepted = compare(site, declarations, messages)
    # every canonical reading of a declared device is accepted by the fast path ("late" only once declared)
    expected = 0
    for _subject, data, rep in messages:
        device = json.loads(data)["device"]
        in_range = all(abs(v) <= MAX_VALUE for v in json.loads(data)["values"].values())
        if in_range and (
            device in ("m1", "e2", "water") or (device == "late" and rep.split(b".")[7] != b"1000")
        ):
            expected += 1
    assert accepted == expected > 1000


def test_mutated_readings_are_left_to_the_rules(site: Site, declarations: Declarations):
    rng = random.Random(11)
    messages = []
    for seq in range(6000):
        subject, data = canonical(rng, site)
        if rng.random() < 0.1:
            subject = subject.replace("reading", "status")
        messages.append((subject, random_mutation(rng, data), reply(seq, LATER_NS + 1)))
    compare(site, declarations, messages)


def test_status_events_and_garbage_are_left_to_the_rules(site: Site, declarations: Declarations):
    status = DeviceStatusChanged(site="demo", device="m1", state="on")
    messages = [
        (status.subject, status.model_dump_json().encode(), reply(1, 5)),
        ("ews.demo.reading.m1", b"", reply(2, 5)),
        ("ews.demo.reading.m1", b"\xff\xfe", reply(3, 5)),
        ("ews.demo.reading.m1", b"{}", reply(4, 5)),
    ]
    assert compare(site, declarations, messages) == 0
    assert PRODUCER_HEADER and POLLER  # (status events need the poller's header: the rules' business)


def test_times_agree_with_pydantic_on_every_shape():
    import pyarrow as pa

    rng = random.Random(3)
    texts = []
    for _ in range(3000):
        ts = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.randrange(2**62 // 10**4))
        text = ts.strftime("%Y-%m-%dT%H:%M:%S")
        digits = rng.choice([0, 1, 2, 3, 6])
        if digits:
            text += "." + f"{ts.microsecond:06d}"[:digits]
        texts.append(text + rng.choice(["Z", "+00:00"]))
    texts += ["2024-02-29T23:59:59Z", "2000-02-29T00:00:00.5Z", "2100-02-28T12:00:00+00:00"]
    got, valid = parse_times(pa.array([t.encode() for t in texts], pa.binary()))
    from ews_contracts.events import UtcDatetime
    from pydantic import TypeAdapter

    adapter = TypeAdapter(UtcDatetime)
    for text, us, ok in zip(texts, got.tolist(), valid.tolist(), strict=True):
        assert ok and us == micros(adapter.validate_json(json.dumps(text), strict=True)), text
    _, valid = parse_times(
        pa.array([b"2026-02-29T00:00:00Z", b"2100-02-29T00:00:00Z", b"2026-04-31T00:00:00Z"])
    )
    assert not valid.any()


def test_the_pattern_is_anchored_and_site_specific():
    import re

    pattern = canonical_pattern("demo")
    assert pattern.startswith("^") and pattern.endswith("$") and '"site":"demo"' in pattern
    with pytest.raises(ValueError):
        canonical_pattern("de.mo")
    assert math.isfinite(float("1e99"))  # (the 2-digit exponent keeps every number finite)
    assert re.compile(pattern)
