"""Virtual devices (D12, master − Σ slaves), function symbols (M2) and freshness of the device views,
from the domain functions the pages call (``device_views``, ``views``, ``site_structure``) with an
in-memory stand-in for the live state in Redis (same keys and JSON as the poller writes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from ews_contracts.live import LiveDevice, live_key
from ews_contracts.profiles import load_profiles
from ews_contracts.settings import BUNDLED_DEMO_SITE, Settings
from ews_contracts.site import Site, load_site
from ews_gateway_api.domain.devices import (
    DeviceView,
    device_functions,
    device_view,
    device_views,
    max_age,
    views,
)
from ews_gateway_api.domain.site import site_structure
from litestar.exceptions import ValidationException

SITE = load_site(BUNDLED_DEMO_SITE)
PROFILES = load_profiles()


class FakeRedis:
    """The one call the device views make: MGET of live keys."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.mgets: list[list[str]] = []

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        self.mgets.append(list(keys))
        return [self.data.get(k) for k in keys]

    def put(self, live: LiveDevice, site: Site = SITE) -> None:
        self.data[live_key(site.site, live.device)] = live.model_dump_json().encode()


def state(redis: FakeRedis, site: Site = SITE) -> Any:
    return SimpleNamespace(
        site=site, redis=redis, profiles=PROFILES, settings=Settings(EWS_POLL_INTERVAL=2.0)
    )


def live(
    device: str, *, age: float = 1.0, status: str = "on", reason: str = "", **values: float
) -> LiveDevice:
    return LiveDevice(
        device=device,
        state=status,
        reason=reason,
        updated_at=datetime.now(UTC) - timedelta(seconds=age),
        values=values,
    )


def by_id(found: list[DeviceView]) -> dict[str, DeviceView]:
    return {d.id: d for d in found}


async def test_function_symbols_of_the_demo_site() -> None:
    found = by_id(await device_views(state(FakeRedis())))
    functions = {i: d.functions for i, d in found.items()}
    # pulse meters on one concentrator (address 5) or on a meter's pulse input (address 6): link
    assert functions["water"] == functions["gas"] == ["measure", "link"]
    assert functions["e3"] == functions["hot-water"] == ["measure", "link"]
    # master and slave of hvac-rest: function; the virtual device itself: measure + function
    assert functions["m1"] == functions["gen1"] == ["measure", "function"]
    assert functions["hvac-rest"] == ["measure", "function"]
    # modules combined at one address
    assert functions["f1-light"] == ["measure", "status", "command", "link"]
    assert functions["f1-sockets"] == ["measure", "status", "link"]
    # from the profile alone
    assert functions["e2"] == ["measure"]
    assert functions["acb-tie"] == ["status"]
    assert functions["ev1"] == ["measure", "status", "command"]
    assert functions["io2"] == ["status", "command"]
    for d in found.values():  # in the fixed order, each once
        order = ["measure", "status", "command", "function", "link"]
        assert d.functions == sorted(set(d.functions), key=order.index)
    # without a site, only what the profile maps
    m1 = SITE.device("m1")
    assert m1 is not None
    assert device_functions(m1, None, PROFILES[m1.profile]) == ["measure"]


async def test_virtual_device_is_listed_and_computed() -> None:
    redis = FakeRedis()
    redis.put(live("m1", energy_active_import=10_000.0, power_active=900.0))
    redis.put(live("gen1", age=3.0, energy_active_import=2_500.5))
    found = by_id(await device_views(state(redis)))
    rest = found["hvac-rest"]
    assert list(found)[-1] == "hvac-rest"
    assert rest.kind == "virtual" and found["m1"].kind == "device" and found["m1"].virtual is None
    assert rest.virtual is not None and rest.virtual.model_dump() == {
        "type": "master-slave",
        "master": "m1",
        "slaves": ["gen1"],
    }
    assert rest.gateway == "gw1" and rest.address == 1 and rest.address_label == "1-V"
    assert rest.profile == "virtual" and rest.medium == "electricity"
    assert (rest.panel, rest.zone, rest.circuit) == ("main", "building", "hvac-lighting")
    assert rest.exclude_from_total and rest.enabled
    assert rest.state == "on" and rest.reason == "" and not rest.stale
    assert rest.values == {"energy_active_import": 7_499.5}  # Ea+ only (M3), not the power
    assert [t.group for t in rest.tables] == ["energy"]
    assert rest.updated_at == found["gen1"].updated_at  # the oldest member reading
    assert rest.age_s is not None and 2.5 < rest.age_s < 30
    assert rest.commands == [] and rest.states == {} and rest.breaker is None

    one = await device_view(state(redis), "hvac-rest")
    assert one is not None and one.values == rest.values
    assert await device_view(state(redis), "nope") is None


async def test_virtual_device_states() -> None:
    redis = FakeRedis()
    # before any reading
    found = await device_views(state(redis), circuit="hvac-lighting", panel="main", gateway="gw1")
    assert [d.id for d in found] == ["m1", "gen1", "hvac-rest"]
    rest = found[-1]
    assert rest.state == "unknown" and rest.values == {}

    # one member in communication error: named, no value
    redis.put(live("m1", energy_active_import=10_000.0))
    redis.put(live("gen1", status="comm-error", reason="timeout (no response)", energy_active_import=1.0))
    rest = by_id(await device_views(state(redis)))["hvac-rest"]
    assert rest.state == "comm-error" and rest.reason == "gen1: timeout (no response)"
    assert rest.values == {} and rest.stale

    # a member without a reading yet, another whose reading is old
    del redis.data[live_key("demo", "gen1")]
    redis.put(live("m1", age=3600, energy_active_import=10_000.0))
    rest = by_id(await device_views(state(redis)))["hvac-rest"]
    assert rest.state == "comm-error" and rest.values == {}
    assert rest.reason == "m1: no reading for 3600 s; gen1: no reading yet"

    # a member disabled (not polled): off
    site = SITE.model_copy(
        update={"devices": [d.model_copy(update={"enabled": d.id != "gen1"}) for d in SITE.devices]}
    )
    rest = by_id(await device_views(state(redis, site)))["hvac-rest"]
    assert rest.state == "off" and not rest.enabled and rest.reason == "gen1 off (not polled)"


async def test_virtual_of_virtual_and_volumes() -> None:
    data = SITE.model_dump()
    data["virtual_devices"] = [
        {"id": "rest-1", "name": "Rest", "master": "m1", "slaves": ["gen1"]},
        {"id": "rest-2", "name": "Rest without offices", "master": "rest-1", "slaves": ["e2", "e3"]},
        {"id": "water-rest", "name": "Water without hot water", "master": "water", "slaves": ["hot-water"]},
    ]
    site = Site.model_validate(data)
    redis = FakeRedis()
    for device, value in (("m1", 100.0), ("gen1", 10.0), ("e2", 20.0), ("e3", 5.0)):
        redis.put(live(device, energy_active_import=value))
    redis.put(live("water", water_volume=1000.0))
    redis.put(live("hot-water", water_volume=250.0))
    rest2, water = await views(
        redis, site, [site.virtual_device("rest-2"), site.virtual_device("water-rest")], PROFILES
    )
    assert rest2.values == {"energy_active_import": 65.0} and rest2.state == "on"
    assert rest2.address_label == "1-V-V"  # master is the virtual rest-1 (on m1)
    assert water.values == {"water_volume": 750.0} and water.medium == "water"
    assert water.address_label == "5-1-V"
    assert len(redis.mgets) == 1  # one MGET for every member


async def test_stale_values_keep_their_age() -> None:
    redis = FakeRedis()
    redis.put(live("e2", age=5, energy_active_import=1.0))
    redis.put(live("ev1", age=600, power_active=7200.0))
    redis.put(live("m1", age=2, status="comm-error", reason="timeout", energy_active_import=9.0))
    found = by_id(await device_views(state(redis), include_virtual=False))
    assert "hvac-rest" not in found
    assert not found["e2"].stale and found["e2"].age_s is not None and 4 < found["e2"].age_s < 60
    assert found["ev1"].stale and found["ev1"].values == {"power_active": 7200.0}  # shown, as stale
    assert found["m1"].stale and found["m1"].values == {"energy_active_import": 9.0}
    assert found["water"].stale is False and found["water"].age_s is None  # no reading yet
    assert max_age(SITE, "gw1", 2.0) == 30.0 and max_age(SITE, "gw1", 60.0) == 180.0


@pytest.mark.parametrize(
    "filters",
    [{"gateway": "gw9"}, {"panel": "attic"}, {"zone": "moon"}, {"circuit": "nope"}],
)
async def test_unknown_filters_are_refused(filters: dict[str, str]) -> None:
    with pytest.raises(ValidationException, match=f"unknown {next(iter(filters))} "):
        await device_views(state(FakeRedis()), **filters)


async def test_site_structure_and_gateway_fault() -> None:
    data = SITE.model_dump()
    data["gateways"].append({"id": "gw2", "name": "Annex", "host": "10.0.0.2"})
    data["devices"] += [
        {
            "id": "a1",
            "name": "Annex meter",
            "profile": "energy-meter-rs485-3ph",
            "gateway": "gw2",
            "address": 1,
        },
        {"id": "a2", "name": "Annex ACB", "profile": "acb-lcd", "gateway": "gw2", "address": 2},
        {
            "id": "a3",
            "name": "Annex spare",
            "profile": "acb-lcd",
            "gateway": "gw2",
            "address": 3,
            "enabled": False,
        },
    ]
    site = Site.model_validate(data)
    redis = FakeRedis()
    redis.put(live("m1", energy_active_import=1.0))
    redis.put(live("e2", status="comm-error", reason="timeout (no response)"))
    for device in ("a1", "a2"):
        redis.put(live(device, status="comm-error", reason="connection refused by 10.0.0.2:502"))
    view = await site_structure(state(redis, site))
    assert (view.site, view.name, view.timezone, view.currency, view.language) == (
        "demo",
        SITE.name,
        "Europe/Paris",
        "EUR",
        "en",
    )
    gw1, gw2 = view.gateways
    assert gw1.model_dump() == {
        "id": "gw1",
        "name": "Gateway TCP/RS485 – main board",
        "endpoint": "127.0.0.1:5020",
        "status": "ok",  # one device down is that device's fault
        "reason": "",
        "devices": 23,  # 22 devices and the virtual device on m1's gateway
    }
    assert gw2.status == "comm-error" and gw2.reason == "connection refused by 10.0.0.2:502"
    assert gw2.devices == 3 and gw2.endpoint == "10.0.0.2:502"  # the disabled one is not asked
    assert [(p.id, p.devices) for p in view.panels] == [("main", 20), ("floor1", 3)]
    assert [z.id for z in view.zones] == ["building", "parking"]
    assert view.circuits[0].model_dump() == {
        "id": "hvac-lighting",
        "name": "HVAC and lighting",
        "zone": "building",
    }
    assert [v.model_dump() for v in view.virtual_devices] == [
        {
            "id": "hvac-rest",
            "name": "HVAC and lighting without heat pump",
            "master": "m1",
            "slaves": ["gen1"],
            "exclude_from_total": True,
        }
    ]
