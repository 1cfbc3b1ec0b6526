"""Sign read from another register (``sign_from``): the 4 120 45 meter holds P and Q as unsigned magnitudes
and their signs at 4122 / 4123 (0 = positive, 1 = negative); S has no sign. Planned, decoded, and produced
by the simulator so that negative powers round-trip."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from ews_contracts.events import ReadingTaken
from ews_contracts.profiles import Register, SignRegister, encode_raw, load_profiles, scaled, unscaled
from ews_contracts.settings import BUNDLED_DEMO_SITE, Settings
from ews_contracts.site import Device, Site, load_site
from ews_fieldbus import ModbusGateway
from ews_poller.decode import RegisterImage, decode_device
from ews_poller.plan import ALL_TIERS, Span, device_spans, plan_reads
from ews_poller.service import Poller
from ews_runtime.servers import free_port
from ews_simulator import SimulatedSite
from ews_simulator.image import UnitImage
from ews_simulator.twins import make_twin
from pydantic import ValidationError

PROFILES = load_profiles()
METER = PROFILES["multifunction-meter-412045"]
SITE = load_site(BUNDLED_DEMO_SITE)
M1 = SITE.device("m1")
assert M1 is not None and M1.profile == METER.id


def meter_image(raw: dict[str, int], signs: dict[int, int], ct: int = 100, dev: Device = M1) -> RegisterImage:
    """The blocks the meter would answer: raw magnitudes, sign registers, CT ratio."""
    words: dict[int, int] = {}
    for reg in METER.registers:
        for i, w in enumerate(encode_raw(raw.get(str(reg.quantity), 0), reg.type, METER.order(reg))):
            words[reg.address + i] = w
    words[4608] = ct
    words.update(signs)
    return RegisterImage(
        {b: [words.get(a, 0) for a in range(b.address, b.end)] for b in plan_reads(METER, dev)}
    )


# --- the profile ---------------------------------------------------------------------------------------


def test_meter_profile_reads_the_sign_of_p_and_q_only():
    p, q, s = (METER.register(n) for n in ("power_active", "power_reactive", "power_apparent"))
    assert p is not None and q is not None and s is not None
    assert (p.sign_from.address, p.sign_from.positive, p.sign_from.negative) == (4122, 0, 1)
    assert (q.sign_from.address, q.sign_from.positive, q.sign_from.negative) == (4123, 0, 1)
    assert s.sign_from is None  # apparent power is a magnitude
    assert [r.quantity for r in METER.registers if r.sign_from is not None] == [p.quantity, q.quantity]


def test_sign_register_schema():
    sign = SignRegister(address=10)
    assert (sign.positive, sign.negative) == (0, 1)
    assert sign.is_negative(1) and not sign.is_negative(0)
    assert sign.word(True) == 1 and sign.word(False) == 0
    with pytest.raises(ValueError, match="sign register 10 holds 7"):
        sign.is_negative(7)
    with pytest.raises(ValidationError, match="positive and negative are both 1"):
        SignRegister(address=10, positive=1, negative=1)
    with pytest.raises(ValidationError):
        Register.model_validate({"quantity": "power_active", "address": 0, "sign_from": {"adress": 1}})
    inverted = SignRegister(address=10, positive=1, negative=0)
    assert inverted.is_negative(0) and inverted.word(False) == 1


def test_scaled_applies_the_sign_before_scale_and_offset():
    reg = Register(quantity="power_active", address=0, type="uint32", scale=0.5, offset=1.0, invalid=[9])
    assert scaled(10, reg) == 6.0
    assert scaled(10, reg, negative=True) == -4.0
    assert scaled(9, reg, negative=True) is None  # the invalid marker is checked on the raw magnitude
    assert unscaled(-4.0, reg) == -10  # the simulator splits it: magnitude 10, sign word(True)


# --- planning ------------------------------------------------------------------------------------------


def test_sign_registers_are_planned_in_every_tier_that_reads_the_power():
    spans = device_spans(METER, None, ALL_TIERS)
    assert Span(3, 4122, 1) in spans and Span(3, 4123, 1) in spans
    fast = device_spans(METER, None, frozenset({"fast"}))
    assert Span(3, 4122, 1) in fast and Span(3, 4123, 1) in fast
    counter = device_spans(METER, None, frozenset({"counter"}))
    assert Span(3, 4122, 1) not in counter  # energies carry no sign register
    # read in the same block as the powers, not an extra transaction
    block = next(b for b in plan_reads(METER, M1) if b.address <= 4116 < b.end)
    assert block.address <= 4122 and 4124 <= block.end


# --- decoding ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("p_sign", "q_sign"), [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_decode_applies_each_sign(p_sign: int, q_sign: int):
    raw = {"power_active": 523_055, "power_reactive": 183_069, "power_apparent": 554_168}
    decoded = decode_device(METER, M1, meter_image(raw, {4122: p_sign, 4123: q_sign}))
    assert decoded.problems == []
    assert decoded.values["power_active"] == pytest.approx(5230.55 * (-1 if p_sign else 1))
    assert decoded.values["power_reactive"] == pytest.approx(1830.69 * (-1 if q_sign else 1))
    assert decoded.values["power_apparent"] == pytest.approx(5541.68)  # never signed


def test_decode_with_the_derived_scale_and_sign_together():
    decoded = decode_device(METER, M1, meter_image({"power_active": 12_000}, {4122: 1}, ct=6000))
    assert decoded.values["power_active"] == -12_000  # 1 W per count from CT 5000, negative


def test_unknown_sign_word_is_a_problem_not_a_guess():
    decoded = decode_device(METER, M1, meter_image({"power_active": 100, "voltage_l1": 230_000}, {4122: 7}))
    assert "power_active" not in decoded.values
    assert decoded.problems == [
        "power_active: sign register 4122 holds 7 (expected 0 positive or 1 negative)"
    ]
    assert decoded.values["voltage_l1"] == pytest.approx(230.0)  # the rest of the poll stands
    assert decoded.values["power_reactive"] == 0.0


# --- the simulator ---------------------------------------------------------------------------------------


def meter_unit() -> UnitImage:
    tz = ZoneInfo("Europe/Paris")
    image = UnitImage(M1.address)
    image.add(M1, METER, make_twin(M1, METER, tz, datetime(2024, 6, 4, 7, 0, tzinfo=UTC)))
    return image


def poll(image: UnitImage) -> dict[str, float]:
    blocks = {b: image.read_words(b.address, b.count) for b in plan_reads(METER, M1)}
    decoded = decode_device(METER, M1, RegisterImage(blocks))
    assert decoded.problems == []
    return decoded.values


@pytest.mark.parametrize(
    ("p", "q"), [(-4321.5, -1512.52), (-4321.5, 1512.52), (4321.5, -1512.52), (4321.5, 1512.52), (0.0, 0.0)]
)
def test_negative_powers_round_trip_through_the_simulator(p: float, q: float):
    image = meter_unit()
    twin = image.members[M1.id].twin
    t = datetime(2024, 6, 4, 7, 0, tzinfo=UTC)
    twin.set_value("power_active", p, t)
    twin.set_value("power_reactive", q, t)
    image.encode()
    assert image.words[4122] == (1 if p < 0 else 0)
    assert image.words[4123] == (1 if q < 0 else 0)
    assert image.read_words(4116, 2) == encode_raw(round(abs(p) / 0.01), "uint32", "big")  # the magnitude
    values = poll(image)
    assert values["power_active"] == pytest.approx(p, abs=0.005 + 1e-9)
    assert values["power_reactive"] == pytest.approx(q, abs=0.005 + 1e-9)
    assert values["power_apparent"] >= 0
    assert image.decode(M1.id, "power_active") == values["power_active"]  # simulator and poller agree
    assert image.decode(M1.id, "power_reactive") == values["power_reactive"]


def test_the_twin_load_is_positive_with_sign_registers_clear():
    image = meter_unit()
    values = poll(image)
    assert image.words[4122] == 0 and image.words[4123] == 0
    assert values["power_active"] >= 0 and values["power_reactive"] >= 0


# --- the poller against the simulator, over Modbus TCP -----------------------------------------------------


@pytest.mark.integration
async def test_negative_powers_polled_over_modbus(tmp_path):
    site = Site.model_validate(
        {
            "site": "t",
            "name": "sign test",
            "tariffs": [{"effective_from": "2020-01-01", "electricity_per_kwh": 0.2}],
            "gateways": [
                {"id": "gw1", "host": "127.0.0.1", "port": free_port(), "timeout": 1.0, "retries": 0}
            ],
            "devices": [{"id": "d1", "name": "m", "profile": METER.id, "gateway": "gw1", "address": 7}],
        }
    )
    poller = Poller(Settings(EWS_DATA_DIR=str(tmp_path)), site=site, profiles=PROFILES)
    async with SimulatedSite(site, PROFILES, "127.0.0.1") as sim:
        sim.freeze()
        sim.set_value("d1", "power_active", -4321.5)
        sim.set_value("d1", "power_reactive", 1512.52)
        client = ModbusGateway.for_gateway(site.gateways[0])
        try:
            await poller.poll_round(client, poller.targets["gw1"])
        finally:
            await client.close()
        readings = []
        while not poller._outbox.empty():
            event = poller._outbox.get_nowait()
            if isinstance(event, ReadingTaken):
                readings.append(event)
        assert len(readings) == 1
        values = readings[0].values
        assert values["power_active"] == pytest.approx(-4321.5, abs=0.005 + 1e-9)
        assert values["power_reactive"] == pytest.approx(1512.52, abs=0.005 + 1e-9)
        assert values["power_active"] == sim.value("d1", "power_active")
