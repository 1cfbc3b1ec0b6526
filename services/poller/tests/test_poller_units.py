"""Pure parts of the poller: read planning, decoding, status transitions, and a poll round on a fake bus."""

from __future__ import annotations

import math

import pytest
from ews_contracts.events import DeviceStatusChanged, ReadingTaken
from ews_contracts.profiles import Profile, encode_raw, load_profiles
from ews_contracts.settings import BUNDLED_DEMO_SITE, Settings
from ews_contracts.site import Device, load_site
from ews_fieldbus import FieldbusError
from ews_poller.decode import RegisterImage, decode_device
from ews_poller.plan import ReadBlock, Span, coalesce, plan_reads
from ews_poller.service import Poller
from ews_poller.status import StatusTracker

PROFILES = load_profiles()
_DEMO = load_site(BUNDLED_DEMO_SITE)
SITE = _DEMO.model_copy(
    update={"devices": [d for d in _DEMO.devices if d.id in {"m1", "e2", "water", "gas", "ev1"}]}
)


def device(device_id: str) -> Device:
    d = SITE.device(device_id)
    assert d is not None
    return d


# --- planning ------------------------------------------------------------------------------------------


def test_demo_devices_are_read_in_the_fewest_blocks():
    assert plan_reads(PROFILES["multifunction-meter-412045"], device("m1")) == [
        ReadBlock(3, 4096, 39),  # V, I, U, P/Q/S, signs of P/Q (4122-4123), energies, PF, frequency
        ReadBlock(3, 4170, 6),  # THD: 34 registers away, a read of its own is cheaper
        ReadBlock(3, 4608, 1),  # CT ratio: the derived scale of powers and energies
    ]
    assert plan_reads(PROFILES["energy-meter-rs485-3ph"], device("e2")) == [ReadBlock(4, 0, 14)]
    assert plan_reads(PROFILES["ev-station-greenup"], device("ev1")) == [ReadBlock(3, 0, 21)]
    pulse = PROFILES["pulse-concentrator-004687"]
    assert plan_reads(pulse, device("water")) == [ReadBlock(3, 0x9100, 2)]
    assert plan_reads(pulse, device("gas")) == [ReadBlock(3, 0x9180, 2)]


def test_coalesce_limits_and_gaps():
    spans = [Span(3, a, 2) for a in range(0, 300, 2)]
    blocks = coalesce(spans)
    assert [b.count for b in blocks] == [124, 124, 52]  # ≤ 125, never splitting a value
    assert blocks[0].address == 0 and blocks[1].address == 124 and blocks[2].address == 248
    # gaps: bridged up to max_gap unused registers
    spans = [Span(3, 0, 2), Span(3, 18, 1), Span(3, 36, 1)]
    assert coalesce(spans, max_gap=16) == [ReadBlock(3, 0, 19), ReadBlock(3, 36, 1)]
    assert coalesce(spans, max_gap=0) == [ReadBlock(3, 0, 2), ReadBlock(3, 18, 1), ReadBlock(3, 36, 1)]
    # function codes never mix; overlapping and duplicate spans share registers
    spans = [Span(4, 10, 2), Span(3, 10, 2), Span(3, 11, 2), Span(3, 11, 2)]
    assert coalesce(spans) == [ReadBlock(3, 10, 3), ReadBlock(4, 10, 2)]
    with pytest.raises(ValueError):
        coalesce([Span(3, 0, 126)])


# --- decoding ------------------------------------------------------------------------------------------


def registers(
    profile: Profile,
    dev: Device,
    raw: dict[str, int | float],
    states: dict[str, int] | None = None,
    scale: int | None = None,
) -> RegisterImage:
    """Blocks as a device would answer them for the given raw (unscaled) numbers."""
    words: dict[tuple[int, int], int] = {}
    for reg in profile.registers:
        address = profile.address_of(reg, dev.position)
        for i, w in enumerate(encode_raw(raw.get(str(reg.quantity), 0), reg.type, profile.order(reg))):
            words[(profile.fc(reg), address + i)] = w
        if reg.scale_from is not None:
            words[(profile.fc(reg.scale_from), reg.scale_from.address)] = scale or 0
    for state in profile.states:
        words[(profile.fc(state), state.address)] = (states or {}).get(state.name, 0)
    blocks = {}
    for block in plan_reads(profile, dev):
        blocks[block] = [words.get((block.fc, a), 0) for a in range(block.address, block.end)]
    return RegisterImage(blocks)


def test_decode_multifunction_meter_with_derived_scale():
    profile = PROFILES["multifunction-meter-412045"]
    raw = {
        "voltage_l1": 230_150,
        "power_active": 523_055,
        "energy_active_import": 123_456,
        "power_factor": -95,
        "frequency": 500,
    }
    low_ct = decode_device(profile, device("m1"), registers(profile, device("m1"), raw, scale=100))
    assert low_ct.problems == []
    assert low_ct.values["voltage_l1"] == pytest.approx(230.15)
    assert low_ct.values["power_active"] == pytest.approx(5230.55)  # 0.01 W per count below CT 5000
    assert low_ct.values["energy_active_import"] == 1_234_560  # 10 Wh per count below CT 500
    assert low_ct.values["power_factor"] == pytest.approx(-0.95)
    assert low_ct.values["frequency"] == pytest.approx(50.0)
    high_ct = decode_device(profile, device("m1"), registers(profile, device("m1"), raw, scale=6000))
    assert high_ct.values["power_active"] == 523_055  # 1 W per count from CT 5000
    assert high_ct.values["energy_active_import"] == 123_456_000  # 1 kWh per count


def test_decode_word_order_and_invalid_marker():
    profile = PROFILES["energy-meter-rs485-3ph"]
    dev = device("e2")
    image = registers(
        profile, dev, {"energy_active_import": 0x0001_0002, "power_active": -1500, "power_factor": -32768}
    )
    decoded = decode_device(profile, dev, image)
    assert decoded.values["energy_active_import"] == 0x0001_0002 * 10  # low word first, 10 Wh per count
    assert decoded.values["power_active"] == -1500
    assert "power_factor" not in decoded.values  # -32768 means "not available"


def test_decode_states_and_pulse_medium():
    ev = PROFILES["ev-station-greenup"]
    decoded = decode_device(
        ev, device("ev1"), registers(ev, device("ev1"), {}, {"charger": 1, "priority": 7})
    )
    assert decoded.states == {
        "charger": "charging",
        "charge_process": "wait",
        "priority": "unknown-7",
        "ev_socket": "disabled",
        "domestic_socket": "disabled",
        "charger_error": "none",
        "charge_error": "none",
        "mode": "mode-3",
    }
    pulse = PROFILES["pulse-concentrator-004687"]
    gas = decode_device(pulse, device("gas"), registers(pulse, device("gas"), {"pulse_count": 4321}))
    assert gas.values == {"pulse_count": 4321.0, "gas_volume": 43_210.0}  # 10 dm³ per pulse


def test_decode_reports_problems_without_losing_the_rest():
    profile = Profile.model_validate(
        {
            "id": "t",
            "name": "t",
            "family": "x",
            "source": "assumed",
            "functions": ["measure"],
            "registers": [
                {"quantity": "power_active", "address": 0, "type": "float32"},
                {"quantity": "voltage_l1", "address": 2, "type": "float32"},
                {"quantity": "current_l1", "address": 40, "type": "uint16"},
            ],
        }
    )
    dev = Device(id="t", name="t", profile="t", gateway="gw1", address=3)
    words = encode_raw(math.nan, profile.registers[0].type, "big") + encode_raw(
        231.5, profile.registers[1].type, "big"
    )
    decoded = decode_device(profile, dev, RegisterImage({ReadBlock(3, 0, 4): words}))
    assert decoded.values == {"voltage_l1": pytest.approx(231.5)}
    assert decoded.problems == [
        "power_active: not a finite number (nan)",
        "current_l1: FC3 registers 40..40 were not read",
    ]
    with pytest.raises(ValueError, match="3 registers instead of 4"):
        RegisterImage({ReadBlock(3, 0, 4): [1, 2, 3]})
    with pytest.raises(ValueError, match="not 16-bit"):
        RegisterImage({ReadBlock(3, 0, 1): [70000]})


# --- status transitions --------------------------------------------------------------------------------


def test_status_first_poll_failures_recovery():
    t = StatusTracker()
    first = t.success({})
    assert first is not None and (first.state, first.previous) == ("on", None)
    assert t.success({}) is None
    assert t.failure("timeout") is None
    assert t.failure("timeout") is None
    third = t.failure("unit 1 FC3 @0+2: timeout")
    assert third is not None and (third.state, third.previous, third.reason) == (
        "comm-error",
        "on",
        "unit 1 FC3 @0+2: timeout",
    )
    assert t.failure("still") is None  # published once
    back = t.success({})
    assert back is not None and (back.state, back.previous, back.reason) == ("on", "comm-error", "")
    # a failure streak shorter than the threshold changes nothing
    assert t.failure("x") is None and t.failure("x") is None and t.success({}) is None
    assert t.failure("x") is None and t.failure("x") is None  # counting restarted after the success


def test_status_never_answered_and_state_changes():
    t = StatusTracker(faults={"charger": frozenset({"fault"})}, threshold=2)
    assert t.failure("cannot connect") is None
    down = t.failure("cannot connect")
    assert down is not None and (down.state, down.previous) == ("comm-error", None)
    up = t.success({"charger": "available"})
    assert up is not None and up.state == "on" and up.states == {"charger": "available"}
    assert t.success({"charger": "available"}) is None
    charging = t.success({"charger": "charging"})
    assert charging is not None and (charging.state, charging.previous, charging.states) == (
        "on",
        "on",
        {"charger": "charging"},
    )
    fault = t.success({"charger": "fault"})
    assert fault is not None and (fault.state, fault.reason) == ("fault", "charger=fault")
    ok = t.success({"charger": "available"})
    assert ok is not None and (ok.state, ok.previous) == ("on", "fault")


# --- one poll round against a fake bus -----------------------------------------------------------------


class FakeBus:
    """Answers like the simulator's registers, or fails as told."""

    def __init__(self, answers: dict[tuple[int, int, int], list[int]]):
        self.answers = answers
        self.fail: dict[int, Exception] = {}
        self.calls: list[tuple[int, int, int, int]] = []

    async def read(self, unit: int, fc: int, address: int, count: int) -> list[int]:
        self.calls.append((unit, fc, address, count))
        if unit in self.fail:
            raise self.fail[unit]
        return self.answers.get((unit, fc, address), [0] * count)


def drain(poller: Poller) -> list:
    out = []
    while not poller._outbox.empty():
        out.append(poller._outbox.get_nowait())
    return out


async def test_poll_round_publishes_readings_and_survives_bad_answers(tmp_path):
    settings = Settings(EWS_DATA_DIR=str(tmp_path))
    poller = Poller(settings, site=SITE, profiles=PROFILES)
    targets = poller.targets["gw1"]
    assert [t.device.id for t in targets] == ["m1", "e2", "water", "gas", "ev1"]
    bus = FakeBus({(5, 3, 0x9100): [0, 1234], (8, 3, 0): [0] * 10 + [1] + [0] * 10})
    await poller.poll_round(bus, targets)
    events = drain(poller)
    readings = [e for e in events if isinstance(e, ReadingTaken)]
    statuses = [e for e in events if isinstance(e, DeviceStatusChanged)]
    assert [r.device for r in readings] == ["m1", "e2", "water", "gas", "ev1"]
    assert all(r.event_id == ReadingTaken.id_for("demo", r.device, r.occurred_at) for r in readings)
    assert readings[2].values == {"pulse_count": 1234.0, "water_volume": 12_340.0}
    assert readings[4].states["charger"] == "charging"
    assert [(s.device, s.state) for s in statuses] == [(d, "on") for d in ["m1", "e2", "water", "gas", "ev1"]]
    assert len(bus.calls) == 3 + 1 + 1 + 1 + 1

    # a garbled (short) answer, an exception response, something unexpected: no crash, no reading
    bus.answers[(2, 4, 0)] = [1, 2, 3]
    bus.fail[1] = FieldbusError("unit 1 FC3 @4096+40: exception response ExceptionResponse(exception_code=2)")
    bus.fail[8] = RuntimeError("boom")
    for _ in range(3):
        await poller.poll_round(bus, targets)
    events = drain(poller)
    assert {e.device for e in events if isinstance(e, ReadingTaken)} == {"water", "gas"}
    down = {e.device: e.reason for e in events if isinstance(e, DeviceStatusChanged)}
    assert set(down) == {"m1", "e2", "ev1"}
    assert down["e2"].startswith("bad answer: block ReadBlock(fc=4, address=0, count=14): 3 registers")
    assert "exception_code=2" in down["m1"] and down["ev1"] == "RuntimeError: boom"
    assert all("\n" not in reason for reason in down.values())
    assert poller._dirty["m1"].state == "comm-error"

    # an unreachable gateway: the first device tries, the others fail with the same reason at once
    bus.calls.clear()
    bus.fail = {u: FieldbusError("gw1: cannot connect to 127.0.0.1:5020") for u in (1, 2, 5, 8)}
    await poller.poll_round(bus, targets)
    assert len(bus.calls) == 1
