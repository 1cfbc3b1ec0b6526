"""The intake's rules (ews_contracts.intake): what is accepted from the bus, and why the rest is not."""

from __future__ import annotations

import base64
import json
import logging
from datetime import UTC, datetime

import pytest
import yaml
from ews_contracts.events import POLLER, PRODUCER_HEADER, DeviceStatusChanged, ReadingTaken
from ews_contracts.intake import (
    CAUSE_DESCRIPTIONS,
    CAUSES,
    PAYLOAD_LIMIT,
    Declarations,
    Intake,
    Rejected,
    RejectionLog,
    delivery,
    effective_profile_id,
    record,
)
from ews_contracts.profiles import load_profiles, resolve
from ews_contracts.settings import BUNDLED_DEMO_SITE
from ews_contracts.site import Site

T = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def site() -> Site:
    return Site.model_validate(yaml.safe_load(BUNDLED_DEMO_SITE.read_text()))


@pytest.fixture
def intake(site: Site) -> Intake:
    return Intake("demo", Declarations.of(site))


def payload(**changes) -> dict:
    data = ReadingTaken(
        event_id=ReadingTaken.id_for("demo", "m1", T),
        site="demo",
        device="m1",
        profile="multifunction-meter-412045",
        occurred_at=T,
        values={"energy_active_import": 1234.5, "power_active": 500.0},
    ).model_dump(mode="json")
    for key, value in changes.items():
        if value is ...:
            data.pop(key)
        else:
            data[key] = value
    return data


def reply(seq: int, ns: int = 1_000) -> str:
    return f"$JS.ACK.EWS_READINGS.aggregator.1.{seq}.{seq}.{ns}.0"


def cause_of(intake: Intake, subject: str, data: bytes, headers=None, at: str | None = None) -> str:
    with pytest.raises(Rejected) as caught:
        intake.check(subject, data, headers, at)
    assert caught.value.cause in CAUSES and "\n" not in caught.value.reason
    return caught.value.cause


def test_a_good_reading_is_accepted_with_integers_for_numbers(intake: Intake):
    reading = intake.check("ews.demo.reading.m1", json.dumps(payload(values={"energy_active_import": 12})))
    assert isinstance(reading, ReadingTaken) and reading.values == {"energy_active_import": 12.0}
    assert reading.occurred_at == T and reading.event_id == "demo.m1.1777888800000"


BAD = [
    # (what, subject, payload bytes, cause)
    ("not JSON", "m1", b"{not json", "malformed"),
    ("not an object", "m1", b"[1, 2]", "malformed"),
    ("deeply nested", "m1", b"[" * 100_000 + b"]" * 100_000, "malformed"),
    ("not UTF-8", "m1", b"\xff\xfe", "malformed"),
    ("a value sent as a string", "m1", payload(values={"energy_active_import": "1234.5"}), "invalid-field"),
    ("a boolean value", "m1", payload(values={"energy_active_import": True}), "invalid-field"),
    ("an infinite value", "m1", b'{"energy_active_import": 1e999}', "invalid-field"),
    ("schema_version 2", "m1", payload(schema_version=2), "unsupported-schema-version"),
    (
        "schema_version 2 of another shape",
        "m1",
        {"schema_version": 2, "device": "m1"},
        "unsupported-schema-version",
    ),
    ("schema_version as a string", "m1", payload(schema_version="1"), "invalid-field"),
    ("no event_id", "m1", payload(event_id=...), "missing-field"),
    ("an empty event_id", "m1", payload(event_id=""), "invalid-field"),
    ("no occurred_at", "m1", payload(occurred_at=...), "missing-field"),
    ("no schema_version", "m1", payload(schema_version=...), "missing-field"),
    ("occurred_at without its offset", "m1", payload(occurred_at="2026-05-04T10:00:00"), "invalid-field"),
    ("occurred_at as epoch seconds", "m1", payload(occurred_at=1777888800), "invalid-field"),
    ("an unknown field", "m1", payload(note="hi"), "invalid-field"),
    ("an unknown quantity", "m1", payload(values={"energy": 1.0}), "unknown-quantity"),
    ("an unknown device", "ghost", payload(device="ghost"), "unknown-device"),
    ("a virtual device", "rest", payload(device="rest"), "unknown-device"),
    ("payload device other than the subject's", "e2", payload(), "subject-mismatch"),
    ("payload site other than the subject's", "m1", payload(site="other"), "subject-mismatch"),
    ("another model's profile", "m1", payload(profile="power-meter-access"), "wrong-profile"),
]


@pytest.mark.parametrize(("what", "device", "data", "cause"), BAD, ids=[b[0] for b in BAD])
def test_malformed_readings_are_rejected_with_their_cause(intake: Intake, what, device, data, cause):
    if data == b'{"energy_active_import": 1e999}':
        data = json.dumps(payload()).replace("1234.5", "1e999").encode()
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    assert cause_of(intake, f"ews.demo.reading.{device}", raw) == cause, what


def test_reasons_name_the_field_and_the_value(intake: Intake):
    with pytest.raises(Rejected) as caught:
        intake.check("ews.demo.reading.m1", json.dumps(payload(values={"energy_active_import": "12"})))
    assert caught.value.reason == "values.energy_active_import: Input should be a valid number (got '12')"
    with pytest.raises(Rejected) as caught:
        intake.check("ews.demo.reading.m1", json.dumps(payload(event_id=..., occurred_at=...)))
    assert caught.value.reason == "missing event_id, occurred_at (required)"
    with pytest.raises(Rejected) as caught:
        intake.check("ews.demo.reading.ghost", json.dumps(payload(device="ghost")))
    assert caught.value.reason == "device 'ghost' is not declared in the configuration of site 'demo'"


def test_modular_devices_and_generic_meters_are_accepted_with_either_profile_id(site: Site, intake: Intake):
    profiles = load_profiles()
    for device in site.devices:  # the effective id is the one the poller publishes (profiles.resolve)
        assert effective_profile_id(device) == resolve(device, profiles).id
        for profile in {device.profile, effective_profile_id(device)}:
            data = json.dumps(payload(device=device.id, profile=profile, values={}))
            assert intake.check(f"ews.demo.reading.{device.id}", data).device == device.id
    assert effective_profile_id(site.device("gen1")) == "generic-meter-ea+ea"


def test_status_events_are_the_pollers_only(intake: Intake):
    event = DeviceStatusChanged(site="demo", device="ev1", state="fault", previous="on")
    data = event.model_dump_json()
    assert event.headers()[PRODUCER_HEADER] == POLLER
    assert intake.check(event.subject, data, event.headers()).model_dump() == event.model_dump()
    with pytest.raises(Rejected) as caught:
        intake.check(event.subject, data, {"Nats-Msg-Id": event.event_id})
    assert (caught.value.cause, caught.value.reason) == (
        "not-accepted",
        "status events are produced by the poller only",
    )
    ghost = event.model_copy(update={"device": "ghost"})
    assert cause_of(intake, ghost.subject, ghost.model_dump_json(), ghost.headers()) == "unknown-device"
    assert cause_of(intake, "ews.demo.audit.user", b"{}") == "not-accepted"
    assert cause_of(intake, "ews.other.reading.m1", json.dumps(payload())) == "subject-mismatch"


def test_devices_count_from_the_version_that_declared_them_by_stream_time(site: Site):
    document = site.model_dump(mode="json")
    v2 = Site.model_validate(
        {
            **document,
            "devices": [*document["devices"], {**document["devices"][0], "id": "late", "address": 99}],
        }
    )
    m1 = site.device("m1")
    v3 = Site.model_validate(
        {
            **v2.model_dump(mode="json"),
            "devices": [
                {**d, "profile": "power-meter-premium"} if d["id"] == "m1" else d
                for d in v2.model_dump(mode="json")["devices"]
            ],
        }
    )
    rules = Intake(
        "demo", Declarations.from_timeline("demo", [(1, 500, site), (2, 1_000, v2), (3, 2_000, v3)])
    )
    late = json.dumps(payload(device="late", profile=v2.device("late").profile))
    assert cause_of(rules, "ews.demo.reading.late", late, at=reply(1, 999)) == "unknown-device"
    assert rules.check("ews.demo.reading.late", late, None, reply(2, 1_000)).device == "late"
    # the first version counts from the beginning (the poller polls the site file before it is stored)
    old = json.dumps(payload(profile=m1.profile))
    assert rules.check("ews.demo.reading.m1", old, None, reply(3, 1)).device == "m1"
    # a new profile counts from its version; the old one stays accepted (the history of the meter)
    new = json.dumps(payload(profile="power-meter-premium"))
    assert cause_of(rules, "ews.demo.reading.m1", new, at=reply(4, 1_999)) == "wrong-profile"
    assert rules.check("ews.demo.reading.m1", new, None, reply(5, 2_000)).profile == "power-meter-premium"
    assert rules.check("ews.demo.reading.m1", old, None, reply(6, 3_000)).profile == m1.profile
    # a rejection that a newer version may lift carries the message's stream time
    with pytest.raises(Rejected) as caught:
        rules.check("ews.demo.reading.ghost", json.dumps(payload(device="ghost")), None, reply(7, 4_000))
    assert caught.value.stored_ns == 4_000 and rules.declarations.latest_ns == 2_000


def test_deliveries_are_read_from_both_reply_subject_forms():
    assert delivery("$JS.ACK.EWS_READINGS.aggregator.1.42.40.1777888800000000000.7") == (
        delivery("$JS.ACK.hub.ACCHASH.EWS_READINGS.aggregator.1.42.40.1777888800000000000.7.token")
    )
    where = delivery("$JS.ACK.EWS_READINGS.aggregator.1.42.40.1777888800000000000.7")
    assert where is not None and (where.stream, where.sequence, where.stored_ns) == (
        "EWS_READINGS",
        42,
        1777888800000000000,
    )
    assert delivery(None) is None and delivery("_INBOX.x") is None


def test_dead_letter_records_keep_the_original_message():
    why = Rejected("unknown-device", "device 'ghost' is not declared")
    headers = {"Nats-Msg-Id": "demo.ghost.1", "Other": "x"}
    rec = record("demo", why, "ews.demo.reading.ghost", b'{"a": 1}', headers, reply(17), "aggregator")
    assert rec.subject == "ews.demo.dead-letter.reading" and rec.event_id == "demo.rejected.EWS_READINGS.17"
    assert rec.headers() == {"Nats-Msg-Id": "demo.rejected.EWS_READINGS.17"}
    assert (rec.cause, rec.reason, rec.original_subject, rec.original_headers) == (
        "unknown-device",
        "device 'ghost' is not declared",
        "ews.demo.reading.ghost",
        headers,
    )
    assert (rec.original_payload, rec.payload_encoding, rec.original_size, rec.truncated) == (
        '{"a": 1}',
        "utf-8",
        8,
        False,
    )
    assert (rec.stream, rec.stream_sequence, rec.schema_version) == ("EWS_READINGS", 17, 1)
    binary = record(
        "demo", why, "ews.demo.reading.x", b"\xff" * (PAYLOAD_LIMIT + 5), None, None, "aggregator"
    )
    assert (
        binary.payload_encoding == "base64" and binary.truncated and binary.original_size == PAYLOAD_LIMIT + 5
    )
    assert base64.b64decode(binary.original_payload) == b"\xff" * PAYLOAD_LIMIT
    again = record("demo", why, "ews.demo.reading.x", b"\xff" * (PAYLOAD_LIMIT + 5), None, None, "aggregator")
    assert again.event_id == binary.event_id  # outside a stream: a digest of the subject and payload
    assert set(CAUSE_DESCRIPTIONS) == set(CAUSES)


def test_rejections_are_logged_once_per_cause_then_counted(caplog: pytest.LogCaptureFixture):
    now = [0.0]
    logger = logging.getLogger("test.intake")
    rejections = RejectionLog(logger, every=60.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="test.intake")
    for i in range(1000):
        rejections.rejected(
            "unknown-device", f"device 'g{i}' is not declared", f"ews.demo.reading.g{i}", "dl"
        )
        rejections.rejected("malformed", "the payload is not JSON", "ews.demo.reading.m1", "dl")
    rejections.flush()
    assert len(caplog.records) == 2  # one line per cause, none per message
    now[0] = 61.0
    rejections.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and "rejected 999 more messages (unknown-device) in the last 61 s" in lines[2]
    assert "latest on ews.demo.reading.g999: device 'g999' is not declared" in lines[2]
    rejections.flush(force=True)
    assert len(caplog.records) == 4 and rejections.totals == {"unknown-device": 1000, "malformed": 1000}
