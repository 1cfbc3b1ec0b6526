"""The device simulator: registers are the profiles' twin, counters advance and never go back, freeze holds
them, EV commands drive the charger state. Modbus tests talk to the real pymodbus TCP server."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from ews_contracts.profiles import DATA_TYPES, decode_raw, load_profiles, scaled
from ews_contracts.quantities import COUNTERS, Quantity
from ews_contracts.settings import BUNDLED_DEMO_SITE, Settings
from ews_contracts.site import Site, load_site
from ews_fieldbus import FieldbusError, ModbusGateway
from ews_runtime.servers import free_port
from ews_simulator import SimulatedSite, SimulatorError
from ews_simulator.curves import WeeklyCurve
from ews_simulator.twins import FEEDER

PROFILES = load_profiles()
PARIS = ZoneInfo("Europe/Paris")
# a Tuesday, 09:00 in Paris (summer time): the EV schedule has a vehicle charging
TUESDAY_MORNING = datetime(2024, 6, 4, 9, 0, tzinfo=PARIS).astimezone(UTC)
EA = Quantity.ENERGY_ACTIVE_IMPORT


def demo_site(port: int) -> Site:
    data = load_site(BUNDLED_DEMO_SITE).model_dump()
    data["devices"] = [d for d in data["devices"] if d["id"] in {"m1", "e2", "water", "gas", "ev1"}]
    data["virtual_devices"] = []  # the demo's virtual device needs gen1
    for gateway in data["gateways"]:
        gateway["port"] = port
        gateway["retries"] = 0
    return Site.model_validate(data)


@pytest.fixture
async def sim():
    site = demo_site(free_port())
    async with SimulatedSite(site, PROFILES, "127.0.0.1", tick=0.2) as simulator:
        yield simulator


@pytest.fixture
async def bus(sim: SimulatedSite):
    gw = ModbusGateway("127.0.0.1", sim.site.gateways[0].port, timeout=1.0, retries=0, name="test")
    yield gw
    await gw.close()


async def decode_over_modbus(
    gw: ModbusGateway, sim: SimulatedSite, device_id: str
) -> dict[str, float | None]:
    """Read every register of a device over TCP and decode it through its profile (as a poller would)."""
    device = sim.site.device(device_id)
    profile = PROFILES[device.profile]
    out: dict[str, float | None] = {}
    for reg in profile.registers:
        address = profile.address_of(reg, device.position)
        words = await gw.read(device.address, profile.fc(reg), address, reg.count)
        derived = None
        if reg.scale_from:
            sf = reg.scale_from
            scale_words = await gw.read(device.address, profile.fc(sf), sf.address, DATA_TYPES[sf.type][0])
            derived = sf.scale_for(decode_raw(scale_words, sf.type, profile.word_order))
        out[str(reg.quantity)] = scaled(decode_raw(words, reg.type, profile.order(reg)), reg, derived)
    return out


# --- over Modbus TCP ---------------------------------------------------------------------------------

pytestmark_tcp = pytest.mark.integration


@pytestmark_tcp
@pytest.mark.parametrize("device_id", ["m1", "e2", "water", "gas", "ev1"])
async def test_registers_decode_to_the_twin_values(sim: SimulatedSite, bus: ModbusGateway, device_id: str):
    sim.freeze()
    decoded = await decode_over_modbus(bus, sim, device_id)
    profile = PROFILES[sim.site.device(device_id).profile]
    assert set(decoded) == {str(r.quantity) for r in profile.registers}
    for quantity, value in decoded.items():
        assert value == sim.value(device_id, quantity), quantity
    # ... and they are the twin's values, to the register's resolution
    member = sim._image(device_id).members[device_id]
    twin = member.twin.values()
    for quantity, value in decoded.items():
        if quantity in twin:
            reg, _ = member.registers[quantity]
            resolution = reg.scale if reg.scale_from is None else 10.0  # m1: 10 Wh / 0.01 W per count
            assert value == pytest.approx(max(twin[quantity], 0.0), abs=resolution / 2 + 1e-9), quantity


@pytestmark_tcp
@pytest.mark.parametrize(
    ("device_id", "quantity", "value"),
    [
        ("m1", EA, 1_234_560.0),  # 10 Wh per count at the simulated CT ratio
        ("m1", Quantity.POWER_ACTIVE, 5_230.55),
        ("e2", EA, 98_760.0),
        ("e2", Quantity.POWER_ACTIVE, -1_500.0),  # int32: export
        ("e2", Quantity.POWER_FACTOR, -0.875),
        ("water", Quantity.PULSE_COUNT, 4_242.0),
        ("gas", Quantity.GAS_VOLUME, 777_770.0),  # 77 777 pulses of 10 dm³
        ("ev1", EA, 123_456.0),
    ],
)
async def test_set_value_is_what_a_poller_decodes(sim, bus, device_id, quantity, value):
    sim.freeze()
    sim.set_value(device_id, quantity, value)
    decoded = await decode_over_modbus(bus, sim, device_id)
    if quantity == Quantity.GAS_VOLUME:
        assert decoded["pulse_count"] == value / 10
    else:
        assert decoded[str(quantity)] == pytest.approx(value, abs=1e-9)
    assert sim.value(device_id, quantity) == pytest.approx(value, abs=1e-9)


@pytestmark_tcp
async def test_ev_commands_drive_the_charger_state(sim: SimulatedSite, bus: ModbusGateway):
    sim.set_state("ev1", "charger", "available")
    sim.advance()
    assert (await bus.read(8, 3, 10, 1))[0] == 0  # available
    assert sim.counter("ev1", Quantity.POWER_ACTIVE) == 0

    await bus.write_register(8, 11, 1)  # charge: start
    assert (await bus.read(8, 3, 11, 1))[0] == 1  # read-back, as the commands service does
    assert (await bus.read(8, 3, 10, 1))[0] == 1  # charging, at once
    assert sim.state("ev1", "charger") == "charging"
    power = (await decode_over_modbus(bus, sim, "ev1"))["power_active"]
    assert 3_000 < power < 4_000  # 16 A single phase while priority is normal
    before = sim.counter("ev1", EA)
    await asyncio.sleep(1.2)
    sim.advance()
    assert sim.counter("ev1", EA) > before  # ≥ 1.2 Wh in 1.2 s at 3.7 kW: at least one 1 Wh step

    await bus.write_register(8, 12, 1)  # priority -> rated current
    sim.advance()
    assert (await decode_over_modbus(bus, sim, "ev1"))["power_active"] > 7_000

    await bus.write_register(8, 11, 0)  # charge: wait
    assert sim.state("ev1", "charger") == "waiting"
    assert (await bus.read(8, 3, 10, 1))[0] == 2
    assert (await decode_over_modbus(bus, sim, "ev1"))["power_active"] == 0

    await bus.write_register(8, 13, 0)  # EV socket disabled: a start does not charge
    await bus.write_register(8, 11, 1)
    assert sim.state("ev1", "charger") == "waiting"


@pytestmark_tcp
async def test_modbus_errors_like_a_real_bus(sim: SimulatedSite, bus: ModbusGateway):
    with pytest.raises(FieldbusError, match="exception_code=11"):  # nobody at unit 77: gateway no response
        await bus.read(77, 3, 0, 2)
    with pytest.raises(FieldbusError, match="exception_code=2"):  # e2 measurements are FC4 input registers
        await bus.read(2, 3, 0, 2)
    with pytest.raises(FieldbusError, match="exception_code=2"):  # outside the device's registers
        await bus.read(1, 3, 5000, 2)
    with pytest.raises(FieldbusError, match="exception_code=2"):  # not a command register
        await bus.write_register(8, 2, 5)
    with pytest.raises(FieldbusError, match="exception_code=3"):  # not an allowed value
        await bus.write_register(8, 11, 9)
    assert sim.state("ev1", "charge_process") in {"start", "wait"}
    # one read over the gaps of the meter (as a coalescing poller does)
    assert len(await bus.read(1, 3, 4096, 80)) == 80


@pytestmark_tcp
async def test_port_in_use_is_one_clear_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        simulator = SimulatedSite(demo_site(port), PROFILES)
        with pytest.raises(SimulatorError) as err:
            await simulator.start()
    assert str(err.value) == f"gateway 'gw1': cannot listen on 127.0.0.1:{port}: port already in use"
    assert not simulator.running


@pytestmark_tcp
async def test_serve_target_runs_until_cancelled(tmp_path, caplog):
    from ews_simulator.service import serve

    port = free_port()
    site_file = tmp_path / "site.yaml"
    site_file.write_text(demo_site(port).model_dump_json())
    settings = Settings(EWS_SITE_FILE=str(site_file), EWS_DATA_DIR=str(tmp_path))
    caplog.set_level(logging.INFO, logger="ews.simulator")
    task = asyncio.create_task(serve(settings))
    gw = ModbusGateway("127.0.0.1", port, timeout=1.0, retries=0)
    try:
        for _ in range(50):
            try:
                assert len(await gw.read(8, 3, 0, 21)) == 21
                break
            except FieldbusError:
                await asyncio.sleep(0.05)
        else:
            pytest.fail("the simulator did not answer")
    finally:
        await gw.close()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    served = [r.getMessage() for r in caplog.records if r.name == "ews.simulator"]
    assert served == [f"simulator: gateway gw1 on 127.0.0.1:{port} serving units 1, 2, 5, 8"]
    with socket.socket() as probe:  # the port is free again
        probe.bind(("127.0.0.1", port))


# --- dynamics (no network) -------------------------------------------------------------------------


def counters(sim: SimulatedSite) -> dict[tuple[str, str], float]:
    out = {}
    for device in sim.site.devices:
        member = sim._image(device.id).members[device.id]
        for quantity in member.registers:
            if quantity in COUNTERS or quantity == Quantity.PULSE_COUNT:
                out[(device.id, quantity)] = sim.counter(device.id, quantity)
    return out


async def test_counters_advance_and_never_go_back():
    # 2 simulated hours per wall second, through a weekday morning peak
    sim = SimulatedSite(demo_site(free_port()), PROFILES, speed=7200, start_time=TUESDAY_MORNING)
    start = last = counters(sim)
    for _ in range(30):
        await asyncio.sleep(0.01)
        sim.advance()
        now = counters(sim)
        assert all(now[k] >= last[k] for k in now), {k: (last[k], now[k]) for k in now if now[k] < last[k]}
        last = now
    hours = (sim.now - TUESDAY_MORNING).total_seconds() / 3600
    assert hours > 0.5
    for key in [("m1", EA), ("e2", EA), ("water", "pulse_count"), ("gas", "pulse_count")]:
        assert last[key] > start[key], key
    # plausible energy: the feeder draws 12 … 45 kW
    assert 12_000 * hours * 0.9 < last[("m1", EA)] - start[("m1", EA)] < 45_000 * hours * 1.3 + 20
    # the EV charges in the morning: 16 A at ~230 V
    assert last[("ev1", EA)] - start[("ev1", EA)] == pytest.approx(3_680 * hours, rel=0.05)


async def test_freeze_holds_every_counter_and_resume_continues_from_there():
    sim = SimulatedSite(demo_site(free_port()), PROFILES, speed=3600, start_time=TUESDAY_MORNING)
    sim.freeze()
    frozen = counters(sim)
    await asyncio.sleep(0.05)
    sim.advance()
    assert counters(sim) == frozen
    sim.resume()
    await asyncio.sleep(0.05)
    sim.advance()
    resumed = counters(sim)
    assert resumed[("m1", EA)] > frozen[("m1", EA)]
    # no jump: about 50 ms × 3600 of load (≥ 12 kW), not the frozen interval's
    assert resumed[("m1", EA)] - frozen[("m1", EA)] < 60_000 * 0.2


async def test_counters_continue_after_a_set_value():
    sim = SimulatedSite(demo_site(free_port()), PROFILES, speed=3600, start_time=TUESDAY_MORNING)
    sim.set_value("m1", EA, 1_000_000.0)
    assert sim.counter("m1", EA) == 1_000_000.0
    await asyncio.sleep(0.02)
    sim.advance()
    assert sim.counter("m1", EA) > 1_000_000.0


async def test_live_clock_advances_registers_when_started():
    async with SimulatedSite(demo_site(free_port()), PROFILES, speed=3600, tick=0.05) as sim:
        before = sim.counter("e2", EA)
        await asyncio.sleep(0.3)
        assert sim.counter("e2", EA) > before
        sim.freeze()
        held = sim.counter("e2", EA)
        await asyncio.sleep(0.2)
        assert sim.counter("e2", EA) == held


def test_load_curve_integral_and_shape():
    curve = WeeklyCurve(FEEDER, PARIS, seed="m1")
    t0 = datetime(2024, 3, 4, tzinfo=UTC)  # a Monday
    # total() is the integral of rate(): check by the trapezoid rule over one day in 1-minute steps
    step = timedelta(minutes=1)
    numeric, t = 0.0, t0
    for _ in range(24 * 60):
        numeric += (curve.rate(t) + curve.rate(t + step)) / 2 / 60
        t += step
    assert curve.total(t0 + timedelta(days=1)) - curve.total(t0) == pytest.approx(numeric, rel=1e-6)
    # weekly periodic
    week = timedelta(days=7)
    assert curve.total(t0 + week) - curve.total(t0) == pytest.approx(curve.per_week)
    assert curve.rate(t0 + week + timedelta(hours=5)) == pytest.approx(curve.rate(t0 + timedelta(hours=5)))

    def local(day: int, hour: int) -> datetime:  # standard time (UTC+1 in Paris)
        return datetime(2024, 3, 4 + day, hour, tzinfo=UTC) - timedelta(hours=1)

    assert curve.rate(local(1, 8)) > 1.5 * curve.rate(local(1, 3))  # morning peak over the night base
    assert curve.rate(local(1, 19)) > 1.2 * curve.rate(local(1, 23))  # evening peak
    assert curve.rate(local(5, 11)) < curve.rate(local(1, 11))  # Saturday below Tuesday
    assert min(curve.rate(local(d, h)) for d in range(7) for h in range(24)) > 0.9 * FEEDER.base


async def test_a_restarted_simulator_serves_the_stations_counter_from_where_it_was(tmp_path):
    """An EV station's counter depends on the charges commanded, so a curve cannot give it again: the
    simulator keeps it (as the station's meter does across a power cycle) and a restarted one never serves
    less than the last value served; the meters' counters are their curves' integral and need nothing
    kept. A damaged file is logged and the estimate used."""
    kept = tmp_path / "simulator" / "kept.json"
    sim = SimulatedSite(
        demo_site(free_port()), PROFILES, speed=7200, start_time=TUESDAY_MORNING, state_file=kept
    )
    for _ in range(20):  # a morning charge: the counter climbs above the estimate from the origin
        await asyncio.sleep(0.01)
        sim.advance()
    served = sim.counter("ev1", EA)
    estimate = SimulatedSite(demo_site(free_port()), PROFILES, start_time=sim.now).counter("ev1", EA)
    assert served > estimate + 100, (served, estimate)
    assert set(json.loads(kept.read_text())) == {"ev1"}

    again = SimulatedSite(demo_site(free_port()), PROFILES, start_time=sim.now, state_file=kept)
    assert again.counter("ev1", EA) == served
    assert again.counter("m1", EA) == sim.counter("m1", EA)  # (the curve's integral: nothing kept)

    kept.write_text("{not json")
    damaged = SimulatedSite(demo_site(free_port()), PROFILES, start_time=sim.now, state_file=kept)
    assert damaged.counter("ev1", EA) == pytest.approx(estimate)
