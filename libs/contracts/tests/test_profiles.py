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
