"""The compiled decoder (what the poller runs every poll) gives exactly ``decode_device``'s answer."""

from __future__ import annotations

import math
import random

import pytest
from ews_contracts.profiles import check_device, load_profiles
from ews_contracts.settings import BUNDLED_DEMO_SITE
from ews_contracts.site import Device, load_site
from ews_poller.decode import CompiledDecoder, RegisterImage, decode_device
from ews_poller.plan import ALL_TIERS, ReadBlock, plan_reads

PROFILES = load_profiles()
SITE = load_site(BUNDLED_DEMO_SITE)
TIERS = [ALL_TIERS, frozenset({"fast"}), frozenset({"counter"})]


def devices() -> list[Device]:
    """Every demo device, and one device of each bundled profile the demo does not use."""
    out = list(SITE.devices)
    used = {d.profile for d in out}
    for n, profile in enumerate(sorted(set(PROFILES) - used)):
        p = PROFILES[profile]
        extra = {}
        if any(r.position_stride for r in p.registers):
            extra = {"position": 3, "pulse_weight": 0.5, "medium": "water"}
        out.append(
            Device(
                id=f"x{n}",
                name=f"x{n}",
                profile=profile,
                gateway=SITE.gateways[0].id,
                address=200 - n,
                **extra,
            )
        )
    return out


def words_for(rnd: random.Random, blocks: list[ReadBlock], special: list[int]) -> list[list[int]]:
    pool = [0, 1, 2, 3, 0x7FFF, 0x8000, 0xFFFF, 0x7FC0, 0x7F80, 0xFF80, *special]
    return [
        [rnd.choice(pool) if rnd.random() < 0.5 else rnd.randrange(0x10000) for _ in range(b.count)]
        for b in blocks
    ]


def same(a, b) -> bool:
    values = a.values.keys() == b.values.keys() and all(
        x == y or (math.isnan(x) and math.isnan(y))
        for x, y in zip(a.values.values(), b.values.values(), strict=True)
    )
    return values and list(a.values) == list(b.values) and a.states == b.states and a.problems == b.problems


@pytest.mark.parametrize("dev", devices(), ids=lambda d: f"{d.id}-{d.profile}")
def test_compiled_decoder_equals_decode_device(dev: Device):
    rnd = random.Random(dev.id)
    profile = check_device(dev, PROFILES)
    special = [v for r in profile.registers for v in r.invalid if 0 <= v <= 0xFFFF]
    special += [
        w for r in profile.registers if r.sign_from for w in (r.sign_from.positive, r.sign_from.negative)
    ]
    for tiers in TIERS:
        for max_gap, max_registers in ((16, 125), (0, 125), (100, 125), (2, 5)):
            blocks = plan_reads(profile, dev, max_gap=max_gap, max_registers=max_registers, tiers=tiers)
            plans = (
                [blocks, blocks[1:], blocks[:-1]] if len(blocks) > 1 else [blocks]
            )  # some registers not read
            for plan in plans:
                decoder = CompiledDecoder(profile, dev, plan, tiers)
                for _ in range(30):
                    words = words_for(rnd, plan, special)
                    expected = decode_device(
                        profile, dev, RegisterImage(dict(zip(plan, words, strict=True))), tiers
                    )
                    got = decoder.decode(words)
                    assert same(got, expected), (plan, words, got, expected)


def test_straddling_spans_and_bad_blocks():
    dev = SITE.device("m1")
    profile = check_device(dev, PROFILES)
    [first, *rest] = plan_reads(profile, dev)
    # a block cut in the middle of a 32-bit number: decoded through the register image, same answer
    cut = [
        ReadBlock(first.fc, first.address, 7),
        ReadBlock(first.fc, first.address + 7, first.count - 7),
        *rest,
    ]
    decoder = CompiledDecoder(profile, dev, cut)
    assert decoder.general
    rnd = random.Random(1)
    for _ in range(20):
        words = words_for(rnd, cut, [0, 1])
        expected = decode_device(profile, dev, RegisterImage(dict(zip(cut, words, strict=True))))
        assert same(decoder.decode(words), expected)
    # wrong length, out-of-range word: RegisterImage's ValueError
    decoder = CompiledDecoder(profile, dev, [first, *rest])
    good = words_for(rnd, [first, *rest], [])
    for bad in (
        [good[0][:-1], *good[1:]],
        [[*good[0][:-1], 0x10000], *good[1:]],
        [[-1, *good[0][1:]], *good[1:]],
    ):
        with pytest.raises(ValueError) as compiled:
            decoder.decode(bad)
        with pytest.raises(ValueError) as general:
            RegisterImage(dict(zip([first, *rest], bad, strict=True)))
        assert str(compiled.value) == str(general.value)


@pytest.mark.parametrize("word_order", ["big", "little"])
def test_every_feature_in_both_word_orders(word_order: str):
    """A made-up profile with every type, both word orders, derived scales of 1, 2 and 4 registers, signs,
    invalid markers, offsets, FC3 and FC4, tiers, bit-field states (overlapping measured registers)."""
    from ews_contracts.profiles import Profile

    steps = [{"below": 100, "scale": 0.5}, {"scale": 2}]
    profile = Profile.model_validate(
        {
            "id": "made-up",
            "name": "made up",
            "family": "D1 power-meter",
            "source": "assumed",
            "functions": ["measure"],
            "word_order": word_order,
            "registers": [
                {
                    "quantity": "voltage_l1",
                    "address": 0,
                    "type": "uint32",
                    "scale": 0.1,
                    "invalid": [0xFFFFFFFF],
                },
                {"quantity": "voltage_l2", "address": 2, "type": "int32", "word_order": "big", "offset": -3},
                {"quantity": "voltage_l3", "address": 4, "type": "float32", "word_order": "little"},
                {"quantity": "current_l1", "address": 6, "type": "int16", "invalid": [-32768]},
                {"quantity": "current_l2", "address": 7, "type": "uint16", "function_code": 4},
                {"quantity": "energy_active_import", "address": 8, "type": "uint64", "tier": "counter"},
                {"quantity": "energy_active_export", "address": 12, "type": "int64", "tier": "counter"},
                {"quantity": "frequency", "address": 16, "type": "float64"},
                {
                    "quantity": "power_active",
                    "address": 20,
                    "type": "uint32",
                    "scale_from": {"address": 30, "type": "uint32", "steps": steps},
                    "sign_from": {"address": 34, "positive": 0, "negative": 1},
                },
                {
                    "quantity": "power_reactive",
                    "address": 22,
                    "type": "int16",
                    "scale_from": {"address": 36, "type": "uint64", "function_code": 4, "steps": steps},
                },
                {
                    "quantity": "power_apparent",
                    "address": 23,
                    "scale_from": {"address": 35, "steps": steps},
                    "sign_from": {"address": 34, "positive": 7, "negative": 9},
                },
            ],
            "states": [
                {"name": "breaker", "address": 6, "bit": 0, "bits": 2, "values": {0: "open", 1: "closed"}},
                {"name": "alarm", "address": 6, "bit": 4, "bits": 1, "values": {1: "on"}, "fault": ["on"]},
                {"name": "mode", "address": 40, "function_code": 4, "values": {3: "auto"}},
            ],
        }
    )
    dev = SITE.device("m1")
    rnd = random.Random(word_order)
    for tiers in TIERS:
        for max_gap, max_registers in ((16, 125), (0, 125), (3, 4)):
            blocks = plan_reads(profile, dev, max_gap=max_gap, max_registers=max_registers, tiers=tiers)
            for plan in [blocks, blocks[1:], blocks[:-1], blocks[::2]] if len(blocks) > 1 else [blocks]:
                decoder = CompiledDecoder(profile, dev, plan, tiers)
                for _ in range(100):
                    words = words_for(rnd, plan, [7, 9, 50, 99, 100, 101])
                    image = RegisterImage(dict(zip(plan, words, strict=True)))
                    expected = decode_device(profile, dev, image, tiers)
                    assert same(decoder.decode(words), expected), (plan, words)
