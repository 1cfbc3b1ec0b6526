"""Every device profile of the folder, polled by the poller against its simulator twin over Modbus.

One test row per profile (parametrized over ``load_profiles()``): a new profile is tested by dropping
its file in the folder. Every canonical quantity is set in the twin, polled through the poller's real
path (read plan, Modbus TCP, decode) and must decode to the value set, to the register's declared
precision (one count; float types to ~7 digits) — word orders (``little`` profiles) and the derived
scale of the 4 120 45 meter included. Every state is driven through each of its values.
"""

from __future__ import annotations

import pytest
from ews_contracts.events import ReadingTaken
from ews_contracts.profiles import Profile, check_device, load_profiles, resolution
from ews_contracts.quantities import COUNTERS, Quantity, group_of
from ews_contracts.settings import Settings
from ews_contracts.site import Site
from ews_fieldbus import ModbusGateway
from ews_poller.service import Poller
from ews_runtime.servers import free_port
from ews_simulator import SimulatedSite

pytestmark = pytest.mark.integration

PROFILES = load_profiles()

# a value per kind of quantity, picked to exercise the full width of the registers
SAMPLES = {
    "energy": 1_234_567.0,
    "power": 4_321.5,
    "voltage": 231.7,
    "current": 12.34,
    "frequency": 50.02,
    "thd": 3.4,
    "harmonics": 2.5,
    "pulses": 4_242.0,
    "inputs": 42.5,
}


def sample(quantity: str) -> float:
    if quantity == Quantity.POWER_FACTOR or quantity.startswith("power_factor"):
        return 0.87
    if quantity == Quantity.RESIDUAL_CURRENT:
        return 0.012
    if quantity == Quantity.CURRENT_RATED:
        return 32.0
    value = SAMPLES[group_of(quantity)]
    return value * (1.5 if quantity in COUNTERS and quantity != Quantity.ENERGY_ACTIVE_IMPORT else 1.0)


def one_device_site(profile: Profile, port: int) -> Site:
    device: dict = {"id": "d1", "name": profile.name, "profile": profile.id, "gateway": "gw1", "address": 7}
    if profile.inputs is not None or any(r.position_stride for r in profile.registers):
        device.update(position=min(2, profile.inputs or 2), medium="gas", pulse_weight=10)
    return Site.model_validate(
        {
            "site": "t",
            "name": "profile test",
            "tariffs": [{"effective_from": "2020-01-01", "electricity_per_kwh": 0.2}],
            "gateways": [{"id": "gw1", "host": "127.0.0.1", "port": port, "timeout": 1.0, "retries": 0}],
            "devices": [device],
        }
    )


async def poll_once(poller: Poller, client: ModbusGateway) -> ReadingTaken:
    await poller.poll_round(client, poller.targets["gw1"])
    readings = []
    while not poller._outbox.empty():
        event = poller._outbox.get_nowait()
        if isinstance(event, ReadingTaken):
            readings.append(event)
    assert len(readings) == 1, "one reading per device poll"
    return readings[0]


@pytest.mark.parametrize("profile_id", sorted(PROFILES))
async def test_profile_polled_against_its_twin(profile_id: str, tmp_path):
    profile = PROFILES[profile_id]
    assert profile.source.strip(), "every profile says where its map comes from"
    site = one_device_site(profile, free_port())
    device = site.devices[0]
    effective = check_device(device, PROFILES)
    poller = Poller(Settings(EWS_DATA_DIR=str(tmp_path)), site=site, profiles=PROFILES)
    async with SimulatedSite(site, PROFILES, "127.0.0.1") as sim:
        sim.freeze()
        client = ModbusGateway.for_gateway(site.gateways[0])
        try:
            expected: dict[str, float] = {}
            for reg in effective.registers:
                q = str(reg.quantity)
                sim.set_value("d1", q, sample(q))
                expected[q] = sample(q)
            reading = await poll_once(poller, client)
            image = sim._image("d1")
            for reg in effective.registers:
                q = str(reg.quantity)
                derived = (
                    reg.scale_from.scale_for(image._scale_raw(reg.scale_from)) if reg.scale_from else None
                )
                precision = resolution(reg, derived)
                assert q in reading.values, f"{profile_id}: {q} not decoded"
                got = reading.values[q]
                if precision:
                    assert got == pytest.approx(expected[q], abs=precision / 2 + 1e-9), q
                else:
                    assert got == pytest.approx(expected[q], rel=1e-6), q
                assert got == sim.value("d1", q), f"{q}: the poller and the simulator disagree"
            if device.pulse_weight is not None:
                assert reading.values["gas_volume"] == reading.values["pulse_count"] * 10

            # every value of every state, through the poller
            for state in effective.states:
                for raw, label in sorted(state.values.items()):
                    if state.name == "charger" and label == "fault":
                        continue  # the charger's own logic: set separately below
                    sim.set_state("d1", state.name, raw)
                    reading = await poll_once(poller, client)
                    assert reading.states[state.name] == label, (state.name, raw)
                    assert sim.state("d1", state.name) == label
            if effective.state("charger") is not None:
                sim.set_state("d1", "charger", "fault")
                reading = await poll_once(poller, client)
                assert reading.states["charger"] == "fault"
                assert poller.targets["gw1"][0].tracker.state == "fault"

            # declared commands: written, read back, and their state follows
            for command in effective.commands:
                shown = effective.command_state(command)
                for value_name, raw in command.values.items():
                    await client.write_register(device.address, command.address, raw)
                    assert (await client.read(device.address, 3, command.address, 1)) == [raw]
                    if shown is not None:
                        reading = await poll_once(poller, client)
                        assert reading.states[shown.name] == shown.values[shown.field(raw << shown.bit)], (
                            command.action,
                            value_name,
                        )
        finally:
            await client.close()
            await poller.stop()


def test_every_family_has_a_profile():
    families = {p.family.split()[0] for p in PROFILES.values()}
    assert {f"D{n}" for n in range(1, 12)} <= families
    # measurement, status and command functions all represented; breakers with and without measurement
    assert any(p.state("breaker") and not p.registers for p in PROFILES.values())
    assert any(p.state("breaker") and p.registers for p in PROFILES.values())
