"""Device profiles: every bundled profile loads; raw <-> value conversions are exact inverses."""

import pytest
from ews_contracts.profiles import (
    DATA_TYPES,
    DataType,
    Register,
    decode_raw,
    encode_raw,
    load_profile,
    load_profiles,
    scaled,
    unscaled,
)
from ews_contracts.quantities import Quantity
from ews_contracts.yamlfile import ConfigFileError
from hypothesis import given
from hypothesis import strategies as st


def test_bundled_profiles_load_with_provenance():
    profiles = load_profiles()
    assert {
        "multifunction-meter-412045",
        "energy-meter-rs485-3ph",
        "pulse-concentrator-004687",
        "ev-station-greenup",
    } <= set(profiles)
    for p in profiles.values():
        assert p.source


RANGES = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}


@pytest.mark.parametrize("dtype", list(RANGES))
@pytest.mark.parametrize("order", ["big", "little"])
@given(data=st.data())
def test_integer_roundtrip(dtype, order, data):
    lo, hi = RANGES[dtype]
    n = data.draw(st.integers(lo, hi))
    words = encode_raw(n, dtype, order)
    assert len(words) == DATA_TYPES[dtype][0]
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode_raw(words, dtype, order) == n


def test_word_order_is_respected():
    assert decode_raw([0x0001, 0x0002], DataType.UINT32, "big") == 0x00010002
    assert decode_raw([0x0002, 0x0001], DataType.UINT32, "little") == 0x00010002
    assert encode_raw(0x00010002, DataType.UINT32, "little") == [0x0002, 0x0001]


def test_float32_roundtrip():
    assert decode_raw(encode_raw(230.5, DataType.FLOAT32, "big"), DataType.FLOAT32, "big") == 230.5


def test_scale_offset_invalid_and_derived_scale():
    reg = Register(
        quantity=Quantity.POWER_FACTOR, address=0, type=DataType.INT16, scale=0.001, invalid=[-32768]
    )
    assert scaled(-32768, reg) is None
    assert scaled(950, reg) == pytest.approx(0.95)
    assert unscaled(0.95, reg) == 950
    meter = load_profiles()["multifunction-meter-412045"]
    ea = next(r for r in meter.registers if r.quantity == Quantity.ENERGY_ACTIVE_IMPORT)
    assert ea.scale_from is not None
    assert ea.scale_from.scale_for(100) == 10  # CT ratio 100 -> 10 Wh per count
    assert ea.scale_from.scale_for(1000) == 100
    assert ea.scale_from.scale_for(6000) == 1000
    assert scaled(12345, ea, ea.scale_from.scale_for(100)) == 123450


def test_profile_id_must_match_file_name(tmp_path):
    src = load_profiles()["energy-meter-rs485-3ph"]
    path = tmp_path / "other-name.yaml"
    path.write_text(f"id: {src.id}\nname: x\nfamily: D2\nsource: assumed\nfunctions: [measure]\n")
    with pytest.raises(ConfigFileError, match="must equal the file name"):
        load_profile(path)


def test_unknown_quantity_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "id: bad\nname: x\nfamily: D2\nsource: assumed\nfunctions: [measure]\n"
        "registers:\n  - {quantity: energy_magic, address: 0}\n"
    )
    with pytest.raises(ConfigFileError, match=r"bad\.yaml:7: field 'registers\.0\.quantity'"):
        load_profile(path)


# --- bit fields, combined modules, site overrides ---------------------------------------------------

from ews_contracts.profiles import Profile, ProfileError, StateRegister, check_device, resolve  # noqa: E402
from ews_contracts.site import Device  # noqa: E402

PROFILES = load_profiles()


def test_every_family_and_a_twin_for_each():
    families = {p.family.split()[0] for p in PROFILES.values()}
    assert {f"D{n}" for n in range(1, 12)} <= families
    assert {p.twin_kind for p in PROFILES.values()} == {"meter", "pulse", "ev-charger", "breaker", "io"}
    for p in PROFILES.values():
        for c in p.commands:
            assert p.command_state(c) is not None, (p.id, c.action)  # every command shows its effect


def test_state_bit_fields():
    breaker = PROFILES["mccb-status"].state("breaker")
    cause = PROFILES["mccb-status"].state("trip_cause")
    word = (2 << 0) | (3 << 4)  # tripped, instantaneous
    assert breaker.label(word) == "tripped" and cause.label(word) == "instantaneous"
    assert breaker.label(1) == "closed" and cause.label(1) == "none"
    assert breaker.raw_of("closed") == 1 and breaker.raw_of("nope") is None
    with pytest.raises(ValueError, match="do not fit in 2 bit"):
        StateRegister(name="x", address=0, bits=2, values={4: "four"})
    with pytest.raises(ValueError, match="do not fit in a 16-bit register"):
        StateRegister(name="x", address=0, bit=15, bits=2, values={0: "a"})
    base = PROFILES["modular-signal-universal"].model_dump()
    base["states"].append({"name": "input_3", "address": 257, "bit": 1, "bits": 1, "values": {0: "off"}})
    with pytest.raises(ValueError, match="overlap"):
        Profile.model_validate(base)


def device(**kw) -> Device:
    return Device.model_validate({"id": "d", "name": "D", "gateway": "gw1", **kw})


def test_modules_at_one_address_are_one_device():
    d = device(
        profile="modular-measure-3ph",
        modules=["modular-aux-contact", "modular-state-command"],
        interface=1,
        module=5,
    )
    assert d.address == 15
    p = resolve(d, PROFILES)
    assert p.functions == ["measure", "status", "command"]
    assert {s.name for s in p.states} == {"breaker", "relay"} and p.command("relay") is not None
    assert p.fc(p.state("breaker")) == 4 and p.fc(p.state("relay")) == 3  # each module keeps its FC
    assert resolve(d, PROFILES) is p  # resolved once
    with pytest.raises(ProfileError, match="unknown module profile 'nope'"):
        resolve(device(profile="modular-measure-3ph", modules=["nope"], address=3), PROFILES)
    with pytest.raises(ProfileError, match="cannot be combined: quantity 'current_l1' is mapped twice"):
        resolve(device(profile="modular-measure-3ph", modules=["modular-measure-1ph"], address=3), PROFILES)
    with pytest.raises(ValueError, match="differs from 10 × interface 1 \\+ module 5"):
        device(profile="modular-measure-3ph", interface=1, module=5, address=16)


def test_generic_meter_register_comes_from_the_site_file():
    d = device(
        profile="generic-meter-ea",
        address=4,
        ea_register={
            "address": 100,
            "type": "uint32",
            "word_order": "little",
            "scale": 10,
            "function_code": 4,
        },
    )
    (ea,) = resolve(d, PROFILES).registers
    assert (ea.address, ea.word_order, ea.scale, ea.function_code, ea.tier) == (
        100,
        "little",
        10,
        4,
        "counter",
    )
    assert resolve(device(profile="generic-meter-ea", address=4), PROFILES).registers[0].address == 0
    with pytest.raises(ValueError, match="scale 0"):
        device(profile="generic-meter-ea", address=4, ea_register={"address": 1, "scale": 0})


def test_pulse_inputs_need_a_position():
    with pytest.raises(ProfileError, match="is a pulse input: give 'position'"):
        check_device(device(profile="pulse-concentrator-004687", address=5), PROFILES)
    with pytest.raises(ProfileError, match="position 2 but profile 'energy-meter-pulse-input' has 1 input"):
        check_device(
            device(profile="energy-meter-pulse-input", address=5, position=2, medium="gas", pulse_weight=1),
            PROFILES,
        )
    with pytest.raises(ProfileError, match="'position' is for pulse meters"):
        check_device(
            device(profile="mccb-status", address=5, position=1, medium="gas", pulse_weight=1), PROFILES
        )
    with pytest.raises(ProfileError, match="unknown device profile 'nope'"):
        check_device(device(profile="nope", address=5), PROFILES)


def test_unknown_quantity_message_is_short(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "id: bad\nname: x\nfamily: D2\nsource: assumed\nfunctions: [measure]\n"
        "registers:\n  - {quantity: energy_magic, address: 0}\n"
    )
    with pytest.raises(ConfigFileError) as info:
        load_profile(path)
    assert "unknown quantity 'energy_magic'; use a canonical name" in str(info.value)
    assert len(str(info.value)) < 300


def test_commands_of_combined_modules_are_accepted():
    from ews_contracts.commandcheck import plan_command
    from ews_contracts.settings import BUNDLED_DEMO_SITE
    from ews_contracts.site import load_site

    plan = plan_command(load_site(BUNDLED_DEMO_SITE), PROFILES, "f1-light", "relay", "close")
    assert (plan.device.address, plan.command.address, plan.raw) == (15, 272, 1)


@pytest.mark.parametrize("dtype", list(DataType))
def test_integer_range_matches_the_reference_table(dtype):
    from ews_contracts.profiles import integer_range

    assert integer_range(dtype) == RANGES.get(dtype)  # None for the float types
