"""FaultLog: one line when a fault starts, a summary a minute while it lasts, one line when it ends."""

import logging

import pytest
from ews_fieldbus import FaultLog, cause_of

LOGGER = "ews.test.faultlog"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def faults(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> FaultLog:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    return FaultLog(logging.getLogger(LOGGER), clock=clock)


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]


# what ModbusGateway's FieldbusError messages look like (as the poller logs them, through one_line)
TIMEOUT = (
    "unit {unit} FC3 @{address}+{count}: Modbus Error: [Input/Output] ERROR: No response received after "
    "1 retries, continue with next request"
)
WRONG_TID = (
    "unit 3 FC3 @100+10: Modbus Error: [Input/Output] ERROR: request uses transaction id={tid} but "
    "received {got}."
)


def test_five_devices_failing_every_second_for_three_minutes(faults, clock, caplog):
    devices = [f"device m{i}" for i in range(1, 6)]
    for second in range(180):
        clock.now = 1000.0 + second
        for i, key in enumerate(devices):
            faults.complain(key, TIMEOUT.format(unit=i + 1, address=100, count=10))
    clock.now = 1000.0 + 180
    for key in devices:
        faults.clear(key, "answering again")

    got = lines(caplog)
    assert len(got) <= 5 * (1 + 3 + 1), got
    for i, key in enumerate(devices):
        mine = [(level, text) for level, text in got if text.startswith(f"{key}: ")]
        message = TIMEOUT.format(unit=i + 1, address=100, count=10)
        assert mine == [
            ("WARNING", f"{key}: {message}"),
            ("WARNING", f"{key}: still failing: 60 failures in the last 60 s: {message}"),
            ("WARNING", f"{key}: still failing: 60 failures in the last 60 s: {message}"),
            ("INFO", f"{key}: answering again after 180 failures over 180 s"),
        ]


def test_summary_at_most_once_a_minute_even_with_sparse_failures(faults, clock, caplog):
    for t in (0, 30, 59, 61, 62, 125, 130):
        clock.now = 1000.0 + t
        faults.complain("device m1", "no answer")
    assert lines(caplog) == [
        ("WARNING", "device m1: no answer"),
        ("WARNING", "device m1: still failing: 3 failures in the last 61 s: no answer"),
        ("WARNING", "device m1: still failing: 2 failures in the last 64 s: no answer"),
    ]


def test_a_different_cause_logs_at_once(faults, clock, caplog):
    faults.complain("device m1", TIMEOUT.format(unit=1, address=100, count=10))
    clock.now += 1
    faults.complain("device m1", "unit 1 FC3 @100+10: no such register on this device (exception_code=2)")
    clock.now += 1
    faults.complain("device m1", "unit 1 FC3 @100+10: no such register on this device (exception_code=2)")
    clock.now += 1
    faults.complain("device m1", "unit 1 FC3 @100+10: the device is busy (exception_code=6)")
    assert [text for _, text in lines(caplog)] == [
        f"device m1: {TIMEOUT.format(unit=1, address=100, count=10)}",
        "device m1: unit 1 FC3 @100+10: no such register on this device (exception_code=2)",
        "device m1: unit 1 FC3 @100+10: the device is busy (exception_code=6)",
    ]


def test_what_varies_between_attempts_is_not_a_new_cause(faults, clock, caplog):
    for n in range(50):
        clock.now += 1
        faults.complain("device m1", WRONG_TID.format(tid=n + 1, got=(n * 7) % 65000))
        faults.complain(
            "device m2", TIMEOUT.format(unit=2, address=(0, 100, 300)[n % 3], count=(10, 4, 2)[n % 3])
        )
        faults.complain("device m3", f"unit 3 FC3 @0: {n % 5} of 10 registers")
        faults.complain(
            "device m4", f"unit 4 FC3 @0+2: bad answer (ValueError: frame 0x1 0x3 0x{n:x} 0x0 0x5 is short)"
        )
    assert len(lines(caplog)) == 4, lines(caplog)


def test_flapping_causes_are_bounded(faults, clock, caplog):
    for n in range(121):
        clock.now = 1000.0 + n
        faults.complain(
            "device m1", "no answer" if n % 2 else "unit 1 FC3 @0+2: device failure (exception_code=4)"
        )
    # the first line, at most 3 cause changes a minute, one summary a minute
    assert len(lines(caplog)) <= 1 + 2 * (3 + 1)
    assert lines(caplog)[-1][1].startswith("device m1: still failing: 60 failures in the last 60 s: ")


def test_clear_without_a_fault_logs_nothing_and_a_new_fault_starts_afresh(faults, clock, caplog):
    faults.clear("device m1")
    assert lines(caplog) == []
    faults.complain("device m1", "no answer")
    clock.now += 5
    faults.clear("device m1")
    assert not faults.failing("device m1")
    faults.complain("device m1", "no answer")
    assert faults.failures("device m1") == 1
    assert lines(caplog) == [
        ("WARNING", "device m1: no answer"),
        ("INFO", "device m1: ok again after 1 failure over 5 s"),
        ("WARNING", "device m1: no answer"),
    ]


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (WRONG_TID.format(tid=1, got=9), WRONG_TID.format(tid=2, got=40), True),
        (
            "unit 1 FC3 @100+10: no such register (exception_code=2)",
            "unit 1 FC3 @7+1: no such register (exception_code=2)",
            True,
        ),
        ("unit 1 FC3 @0+2: exception_code=2", "unit 1 FC3 @0+2: exception_code=11", False),
        ("unit 1 FC3 @0: 0 of 10 registers", "unit 1 FC3 @0: 4 of 10 registers", True),
        ("garbage b'\\x01\\x83\\x02' left", "garbage b'\\x05' left", True),
        ("frame 01 03 04 00 0a 00 0b", "frame 01 03 04 ff ff 12 34", True),
        ("after returning 3 bytes: x", "after returning 12 bytes: x", True),
        ("gw-a: cannot connect to 10.0.0.1:502", "gw-a: cannot connect to 10.0.0.2:502", False),
        ("unit 1 FC3 @0+2: timeout", "unit 2 FC3 @0+2: timeout", False),
    ],
)
def test_cause_of(a, b, same):
    assert (cause_of(a) == cause_of(b)) is same, (cause_of(a), cause_of(b))
