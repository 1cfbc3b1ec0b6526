from datetime import UTC, datetime, timedelta, timezone

import pytest
from ews_contracts.events import AuditRecorded, CommandRequested, ReadingTaken
from ews_contracts.roles import PERMISSIONS, Permission, Role, allowed, format_puk, normalize_puk
from ews_contracts.streams import ALL_STREAMS, stream_for
from ews_contracts.subjects import Kind
from pydantic import ValidationError


def test_reading_subject_headers_and_deterministic_id():
    at = datetime(2026, 11, 24, 10, 0, 1, 500000, tzinfo=UTC)
    ev = ReadingTaken(
        event_id=ReadingTaken.id_for("demo", "m12", at),
        site="demo",
        device="m12",
        profile="p",
        occurred_at=at,
        values={"energy_active_import": 1.0},
    )
    assert ev.subject == "ews.demo.reading.m12"
    assert ev.headers() == {"Nats-Msg-Id": "demo.m12.1795514401500"}
    assert stream_for(ev.KIND).name == "EWS_READINGS"


def test_occurred_at_is_normalized_to_utc_and_naive_refused():
    local = datetime(2026, 7, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    ev = CommandRequested(site="demo", device="ev1", action="charge", value="start", occurred_at=local)
    assert ev.occurred_at == datetime(2026, 7, 1, 10, 0, tzinfo=UTC)
    with pytest.raises(ValidationError):
        CommandRequested(site="demo", device="ev1", action="charge", occurred_at=datetime(2026, 7, 1))


def test_every_kind_has_exactly_one_stream():
    kinds = [k for spec in ALL_STREAMS for k in spec.kinds]
    assert sorted(kinds) == sorted(Kind)


def test_audit_subject_uses_role():
    ev = AuditRecorded(site="demo", action="login-failed", role="user")
    assert ev.subject == "ews.demo.audit.user"


def test_roles_permissions_and_puk_format():
    assert allowed("user", Permission.VIEW_CONSUMPTION)
    assert not allowed("user", Permission.VIEW_INSTALLATION)
    assert not allowed(None, Permission.VIEW_CONSUMPTION)
    assert not allowed("intruder", Permission.VIEW_CONSUMPTION)
    assert Permission.GREENUP_MANAGEMENT in PERMISSIONS[Role.GREENUP]
    assert Permission.GREENUP_MANAGEMENT not in PERMISSIONS[Role.ADMINISTRATOR]
    assert format_puk("00000999900000") == "00000 9999 00000"
    assert normalize_puk(" 00000 9999 00000 ") == "00000999900000"


def test_broker_errors_are_logged_on_one_line(caplog):
    import logging

    from ews_contracts.bus import broker_logger

    logger = broker_logger("unit-test")
    logger.setLevel(logging.INFO)
    try:
        raise TimeoutError("fetch\ninterrupted")
    except TimeoutError as exc:
        logger.error("Task-1 raised an exception, retrying...\nmore text", exc_info=exc)
    (record,) = [r for r in caplog.records if r.name == "ews.unit-test.broker"]
    assert record.exc_info is None
    assert record.getMessage() == "Task-1 raised an exception, retrying... (TimeoutError: fetch interrupted)"


def test_broker_task_chatter_is_dropped(caplog):
    import logging

    from ews_contracts.bus import broker_logger

    logger = broker_logger("unit-test-2")
    logger.setLevel(logging.INFO)
    logger.info("callback for Task-12 is being executed...")
    logger.info("connected")
    assert [r.getMessage() for r in caplog.records if r.name == "ews.unit-test-2.broker"] == ["connected"]


def test_one_line_messages():
    from ews_contracts.text import one_line
    from pydantic import BaseModel

    class M(BaseModel):
        port: int

    try:
        M.model_validate({"port": "x"})
    except ValidationError as exc:
        assert one_line(exc).startswith("port: Input should be a valid integer")
    assert one_line(TimeoutError()) == "TimeoutError"
    assert one_line(OSError("refused\n  by peer")) == "refused by peer"
    assert one_line("a" * 400, limit=10) == "a" * 9 + "…"
