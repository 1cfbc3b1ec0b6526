"""Simulated devices ("twins"): canonical values (Wh, W, V, A, dm³ …) and raw states as functions of
simulated time. The register image (``image.py``) encodes them through the device profile.

- ``ElectricMeterTwin``: energy counters are the exact integral of a weekly load curve; power, reactive
  and apparent power, PF, voltages, currents, frequency and THD are consistent with the load.
- ``PulseTwin``: one input of a pulse concentrator; the counted volume (or energy) follows a curve and the
  pulse count is its floor divided by the pulse weight.
- ``EvStationTwin``: charger state from (vehicle plugged, charge process start/wait, EV socket enabled);
  written commands take effect at once; a weekday schedule plugs a vehicle at 08:00, stops at 11:30
  (battery full: waiting) and unplugs at 18:00 (standard local time).
- ``StaticTwin``: any other profile: zero values until set.
"""

from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo

from ews_contracts.quantities import COUNTERS, Quantity
from ews_contracts.site import Device

from .curves import Shape, WeeklyCurve

Q = Quantity


class Twin:
    """Common part: overrides set by tests (``set_value``) and raw named states."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self._values: dict[str, float] = {}
        self._overrides: dict[str, float] = {}
        self.states: dict[str, int] = {}

    def advance(self, t: datetime, dt_hours: float) -> None:
        """Move to simulated time ``t`` (``dt_hours`` after the previous call; 0 while frozen)."""

    def values(self) -> dict[str, float]:
        return {**self._values, **self._overrides}

    def set_value(self, quantity: str, value: float, t: datetime) -> None:
        """Hold an instantaneous value until ``release``; counters override this and continue from it."""
        self._overrides[quantity] = value

    def release(self, quantity: str) -> None:
        self._overrides.pop(quantity, None)

    def set_state(self, name: str, raw: int) -> None:
        self.states[name] = raw

    def on_write(self, name: str, raw: int) -> None:
        """A Modbus write to the register of state ``name`` (a declared command)."""
        self.states[name] = raw


class StaticTwin(Twin):
    pass


class ElectricMeterTwin(Twin):
    """A three-phase meter on a feeder whose active power follows ``shape`` (W)."""

    def __init__(
        self, device: Device, shape: Shape, tz: ZoneInfo, t: datetime, *, tan_phi: float = 0.3
    ) -> None:
        super().__init__(device)
        self.curve = WeeklyCurve(shape, tz, seed=device.id)
        self.tan_phi = tan_phi
        self._offsets: dict[str, float] = {
            Q.ENERGY_ACTIVE_EXPORT: 1234.0 + len(device.id) * 10,
            Q.ENERGY_REACTIVE_EXPORT: 567.0,
        }
        self.advance(t, 0.0)

    def _counter_base(self, quantity: str, t: datetime) -> float:
        ea = self.curve.total(t)
        return {
            Q.ENERGY_ACTIVE_IMPORT: ea,
            Q.ENERGY_REACTIVE_IMPORT: ea * self.tan_phi,
            Q.ENERGY_APPARENT: ea * math.hypot(1.0, self.tan_phi),
        }.get(quantity, 0.0)

    def advance(self, t: datetime, dt_hours: float) -> None:
        self._t = t
        v: dict[str, float] = {}
        for q in (
            Q.ENERGY_ACTIVE_IMPORT,
            Q.ENERGY_REACTIVE_IMPORT,
            Q.ENERGY_APPARENT,
            Q.ENERGY_ACTIVE_EXPORT,
            Q.ENERGY_REACTIVE_EXPORT,
        ):
            v[q] = self._counter_base(q, t) + self._offsets.get(q, 0.0)
        p = self.curve.rate(t)
        q_var = p * self.tan_phi
        s = math.hypot(p, q_var)
        pf = p / s if s else 1.0
        seconds = t.timestamp()
        drop = 2.5 * p / max(self.curve.per_week / 168 * 3, 1.0)  # a little voltage drop under load
        volts = [230.0 + 1.6 * math.sin(seconds / 97.0 + k * 2.1) - drop * (1 + 0.1 * k) for k in range(3)]
        imbalance = (1.06, 0.97, 0.97)
        amps = [p / 3 * imbalance[k] / (volts[k] * pf) if pf else 0.0 for k in range(3)]
        v.update(
            {
                Q.POWER_ACTIVE: p,
                Q.POWER_REACTIVE: q_var,
                Q.POWER_APPARENT: s,
                Q.POWER_FACTOR: pf,
                Q.VOLTAGE_L1: volts[0],
                Q.VOLTAGE_L2: volts[1],
                Q.VOLTAGE_L3: volts[2],
                Q.VOLTAGE_L12: math.sqrt(3) * (volts[0] + volts[1]) / 2,
                Q.VOLTAGE_L23: math.sqrt(3) * (volts[1] + volts[2]) / 2,
                Q.VOLTAGE_L31: math.sqrt(3) * (volts[2] + volts[0]) / 2,
                Q.CURRENT_L1: amps[0],
                Q.CURRENT_L2: amps[1],
                Q.CURRENT_L3: amps[2],
                Q.CURRENT_N: abs(amps[0] - (amps[1] + amps[2]) / 2),
                Q.FREQUENCY: 50.0 + 0.03 * math.sin(seconds / 41.0),
                Q.THD_VOLTAGE_L1: 2.1 + 0.3 * math.sin(seconds / 300.0),
                Q.THD_VOLTAGE_L2: 2.3 + 0.3 * math.sin(seconds / 310.0),
                Q.THD_VOLTAGE_L3: 2.0 + 0.3 * math.sin(seconds / 320.0),
                Q.THD_CURRENT_L1: 8.0 + 4.0 * math.sin(seconds / 600.0) ** 2,
                Q.THD_CURRENT_L2: 9.0 + 4.0 * math.sin(seconds / 610.0) ** 2,
                Q.THD_CURRENT_L3: 8.5 + 4.0 * math.sin(seconds / 620.0) ** 2,
            }
        )
        self._values = v

    def set_value(self, quantity: str, value: float, t: datetime) -> None:
        if quantity in COUNTERS:
            self._offsets[quantity] = value - self._counter_base(quantity, t)
            self._overrides.pop(quantity, None)
            self.advance(t, 0.0)
        else:
            super().set_value(quantity, value, t)


class PulseTwin(Twin):
    """One input of a pulse concentrator: ``shape`` is in dm³/h (water, gas) or W (electricity)."""

    def __init__(self, device: Device, shape: Shape, tz: ZoneInfo, t: datetime) -> None:
        super().__init__(device)
        self.weight = device.pulse_weight or 1.0
        self.curve = WeeklyCurve(shape, tz, seed=device.id)
        self._offset = 0.0
        self.advance(t, 0.0)

    def advance(self, t: datetime, dt_hours: float) -> None:
        self._t = t
        measured = self.curve.total(t) + self._offset
        self._values = {Q.PULSE_COUNT: float(math.floor(measured / self.weight))}

    def set_value(self, quantity: str, value: float, t: datetime) -> None:
        if quantity == Q.PULSE_COUNT:
            # just past the value'th pulse, so the floor is exactly ``value``
            self._offset = (value + 1e-6) * self.weight - self.curve.total(t)
            self.advance(t, 0.0)
        else:
            super().set_value(quantity, value, t)


# --- EV charging station ----------------------------------------------------------------------------

AVAILABLE, CHARGING, WAITING, FAULT = 0, 1, 2, 3
WAIT, START = 0, 1
NORMAL_CURRENT = 16.0  # A while priority is "normal"; "priority" charges at the rated current
DAILY_ENERGY = 15_000.0  # Wh per day before the simulator started (initial counter)
# weekday schedule (standard local time): plug and start, battery full (waiting), unplug
ARRIVE, FULL, LEAVE = 8.0, 11.5, 18.0


class EvStationTwin(Twin):
    """One side of an EV charging station (states named as in ``ev-station-greenup``)."""

    def __init__(self, device: Device, tz: ZoneInfo, t: datetime, *, rated: float = 32.0) -> None:
        super().__init__(device)
        self.curve = WeeklyCurve(Shape(base=0.0, noise=0.0), tz, seed=device.id)  # for local time only
        self.rated = rated
        days = (t - self.curve.epoch).total_seconds() / 86_400
        self.energy = DAILY_ENERGY * max(days, 0.0)
        self.fault = False
        self.states = {
            "charger": AVAILABLE,
            "charge_process": WAIT,
            "priority": 0,
            "ev_socket": 1,
            "domestic_socket": 1,
        }
        self._slot = self._scheduled(t)
        self.plugged = self._slot != "away"
        self.states["charge_process"] = START if self._slot == "charging" else WAIT
        self._t = t
        self._derive()

    def _scheduled(self, t: datetime) -> str:
        day, hour = self.curve.local_standard(t)
        if day >= 5 or not ARRIVE <= hour < LEAVE:
            return "away"
        return "charging" if hour < FULL else "full"

    def _derive(self) -> None:
        s = self.states
        if self.fault:
            s["charger"] = FAULT
        elif not self.plugged:
            s["charger"] = AVAILABLE
        elif s.get("charge_process") == START and s.get("ev_socket", 1) == 1:
            s["charger"] = CHARGING
        else:
            s["charger"] = WAITING
        volts = 229.0 + 1.5 * math.sin(self._t.timestamp() / 97.0)
        amps = 0.0
        if s["charger"] == CHARGING:
            amps = self.rated if s.get("priority") == 1 else min(self.rated, NORMAL_CURRENT)
        self._values = {
            Q.ENERGY_ACTIVE_IMPORT: self.energy,
            Q.POWER_ACTIVE: volts * amps,
            Q.CURRENT_L1: amps,
            Q.VOLTAGE_L1: volts,
            Q.CURRENT_RATED: self.rated,
        }

    def advance(self, t: datetime, dt_hours: float) -> None:
        # energy over the elapsed interval at the power shown until now
        self.energy += self.values().get(Q.POWER_ACTIVE, 0.0) * dt_hours
        self._t = t
        slot = self._scheduled(t)
        if slot != self._slot:
            self._slot = slot
            if slot == "charging":
                self.plugged, self.states["charge_process"] = True, START
            elif slot == "full":
                self.states["charge_process"] = WAIT
            else:
                self.plugged, self.states["charge_process"] = False, WAIT
        self._derive()

    def on_write(self, name: str, raw: int) -> None:
        self.states[name] = raw
        if name == "charge_process" and raw == START:
            self.plugged = True  # someone starts a charge: a vehicle is connected
        self._derive()

    def set_state(self, name: str, raw: int) -> None:
        if name == "charger":
            self.fault = raw == FAULT
            if raw == AVAILABLE:
                self.plugged = False
            elif raw == CHARGING:
                self.plugged, self.states["charge_process"], self.states["ev_socket"] = True, START, 1
            elif raw == WAITING:
                self.plugged, self.states["charge_process"] = True, WAIT
        else:
            self.states[name] = raw
        self._derive()

    def set_value(self, quantity: str, value: float, t: datetime) -> None:
        if quantity == Q.ENERGY_ACTIVE_IMPORT:
            self.energy = value
        elif quantity == Q.CURRENT_RATED:
            self.rated = value
        else:
            super().set_value(quantity, value, t)
        self._derive()


# --- which twin for which device ---------------------------------------------------------------------

FEEDER = Shape(base=12_000.0, morning=9_000.0, evening=5_000.0, daytime=8_000.0)  # W, multifunction meters
SUB_CIRCUIT = Shape(base=900.0, morning=1_500.0, evening=600.0, daytime=2_500.0)  # W, RS485 energy meters
WATER = Shape(base=25.0, morning=450.0, evening=250.0, daytime=120.0)  # dm³/h
GAS = Shape(base=350.0, morning=1_600.0, evening=900.0, daytime=500.0, weekend=0.6)  # dm³/h


def _scaled(shape: Shape, device_id: str) -> Shape:
    """Some variety between devices of one kind: ×1.00 … ×1.30, stable per device id."""
    factor = 1.0 + (sum(device_id.encode()) % 31) / 100
    return Shape(
        base=shape.base * factor,
        morning=shape.morning * factor,
        evening=shape.evening * factor,
        daytime=shape.daytime * factor,
        weekend=shape.weekend,
        noise=shape.noise,
    )


def make_twin(
    device: Device, family: str, quantities: set[str], state_names: set[str], tz: ZoneInfo, t: datetime
) -> Twin:
    if device.position is not None:
        shape = {"water": WATER, "gas": GAS}.get(device.medium or "", SUB_CIRCUIT)
        return PulseTwin(device, _scaled(shape, device.id), tz, t)
    if "charger" in state_names:
        return EvStationTwin(device, tz, t)
    if {Q.ENERGY_ACTIVE_IMPORT, Q.POWER_ACTIVE} & quantities:
        shape = FEEDER if family.startswith("D1") else SUB_CIRCUIT
        return ElectricMeterTwin(device, _scaled(shape, device.id), tz, t)
    return StaticTwin(device)
