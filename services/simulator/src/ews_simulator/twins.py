"""Simulated devices ("twins"), derived from the device profile — no per-model code.

A twin holds canonical values (Wh, W, V, A, dm³ …) and raw named states as functions of simulated time;
the register image (``image.py``) encodes them through the same profile. The profile's ``simulation:``
hint picks the dynamics (``twin:`` meter, pulse, ev-charger, breaker, io, static; ``load:`` the daily
curve; ``trips_per_day`` …); the canonical state names pick the behaviour of each state:

- ``breaker`` (open / closed / tripped): closed; trips at random ``trips_per_day`` times a day (cause in
  ``trip_cause`` when declared) and re-closes after ``reclose_minutes``. A meter behind an open or
  tripped breaker measures nothing and its counters stop.
- ``input_<n>``: digital inputs that change ``toggles_per_hour`` times an hour.
- ``output_<n>``, ``relay``: follow the commands written to them.
- any other state holds its value (0 until ``set_state``).
A state set by a test (``set_state``) is held until ``release_state``.

Kinds: ``ElectricMeterTwin`` (energy counters are the exact integral of a weekly load curve, never
running backwards; power, PF, voltages, currents, frequency, THD, harmonics, residual current consistent
with the load), ``PulseTwin`` (one pulse input), ``EvStationTwin`` (a charger side cycling available ->
charging -> waiting on a weekday schedule; commands take effect at once), ``Twin`` (breaker, io, static:
states and analogue inputs only).
"""

from __future__ import annotations

import hashlib
import math
import zlib
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from ews_contracts.profiles import Profile
from ews_contracts.quantities import COUNTERS, HARMONIC_RANKS, PHASES, Quantity
from ews_contracts.site import Device

from .curves import Shape, WeeklyCurve, standard_offset

Q = Quantity
_FOLLOW_WRITES = ("output_", "relay")


def _chance(*key: object) -> float:
    """A deterministic number in [0, 1) for a key (device, state, time slot …)."""
    digest = hashlib.blake2b(":".join(map(str, key)).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") / 2**32


class Twin:
    """States (breaker, inputs, outputs …), analogue inputs, and test overrides; no electrical load."""

    def __init__(self, device: Device, profile: Profile, tz: ZoneInfo, t: datetime) -> None:
        self.device = device
        self.profile = profile
        self.sim = profile.simulation
        self.offset = standard_offset(tz)
        self._values: dict[str, float] = {}
        self._overrides: dict[str, float] = {}
        self.states: dict[str, int] = {s.name: 0 for s in profile.states}
        self._held: set[str] = set()
        breaker = profile.state("breaker")
        self._closed_raw = breaker.raw_of("closed") if breaker else None
        self._tripped_raw = breaker.raw_of("tripped") if breaker else None
        self._open_raw = breaker.raw_of("open") if breaker else None
        if self._closed_raw is not None:
            self.states["breaker"] = self._closed_raw
        self._analog = [
            str(r.quantity) for r in profile.registers if str(r.quantity).startswith("analog_input_")
        ]
        self._t = t
        self._update_states(t)

    # --- kept across restarts ------------------------------------------------------------------------

    def kept(self) -> dict[str, float]:
        """What a real device keeps in non-volatile memory and a curve cannot give again (a counter that
        depends on what happened): quantity -> value. The meters' counters are the exact integral of their
        load curve, so they need nothing kept."""
        return {}

    def resume(self, kept: dict[str, float]) -> None:
        """Take back ``kept()`` of an earlier run (the simulator restarted)."""

    # --- states ---------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """False while a breaker of this device is open or tripped."""
        return self._closed_raw is None or self.states.get("breaker") == self._closed_raw

    def _update_states(self, t: datetime) -> None:
        seconds = t.timestamp()
        if self._closed_raw is not None and "breaker" not in self._held and self.sim.trips_per_day > 0:
            slot_seconds = self.sim.reclose_minutes * 60
            slot = int(seconds // slot_seconds)
            p_trip = min(1.0, self.sim.trips_per_day * slot_seconds / 86_400)
            tripped = _chance(self.device.id, "trip", slot) < p_trip
            raw = self._tripped_raw if tripped and self._tripped_raw is not None else self._closed_raw
            self.states["breaker"] = raw
            cause = self.profile.state("trip_cause")
            if cause is not None and "trip_cause" not in self._held:
                causes = sorted(r for r, label in cause.values.items() if label != "none")
                self.states["trip_cause"] = (
                    causes[int(_chance(self.device.id, "cause", slot) * len(causes))]
                    if tripped and causes
                    else 0
                )
        if self.sim.toggles_per_hour > 0:
            slot_seconds = 3600 / self.sim.toggles_per_hour
            for name in self.states:
                if name.startswith("input_") and name not in self._held:
                    slot = int((seconds + _chance(name) * slot_seconds) // slot_seconds)
                    self.states[name] = 1 if _chance(self.device.id, name, slot) < 0.5 else 0
        for n, quantity in enumerate(self._analog, start=1):
            # a 4-20 mA style signal scaled to 0..100 (e.g. % of a tank, of a valve)
            self._values[quantity] = 50 + 30 * math.sin(seconds / (600 + 97 * n) + n)

    def advance(self, t: datetime, dt_hours: float) -> None:
        """Move to simulated time ``t`` (``dt_hours`` after the previous call; 0 while frozen)."""
        self._t = t
        self._update_states(t)

    def values(self) -> dict[str, float]:
        return {**self._values, **self._overrides}

    def set_value(self, quantity: str, value: float, t: datetime) -> None:
        """Hold an instantaneous value until ``release``; counters override this and continue from it."""
        self._overrides[quantity] = value

    def release(self, quantity: str) -> None:
        self._overrides.pop(quantity, None)

    def set_state(self, name: str, raw: int) -> None:
        self.states[name] = raw
        self._held.add(name)
        self.advance(self._t, 0.0)

    def release_state(self, name: str) -> None:
        self._held.discard(name)
        self.advance(self._t, 0.0)

    def on_write(self, name: str, raw: int) -> None:
        """A Modbus write of a declared command whose effect shows in state ``name``."""
        self.states[name] = raw
        if name.startswith(_FOLLOW_WRITES) or name == "breaker":
            self._held.add(name)
        self.advance(self._t, 0.0)


class ElectricMeterTwin(Twin):
    """A meter on a feeder whose active power follows ``shape`` (W); three-phase, or one phase when the
    profile has no L2/L3 quantity."""

    def __init__(
        self,
        device: Device,
        profile: Profile,
        shape: Shape,
        tz: ZoneInfo,
        t: datetime,
        origin: datetime | None = None,
    ) -> None:
        self.curve = WeeklyCurve(shape, tz, seed=device.id)
        # the counters count from ``origin`` (the meter's installation; default: the curve's epoch)
        self._origin_total = self.curve.total(origin) if origin is not None else 0.0
        self.tan_phi = profile.simulation.tan_phi
        self._paused = 0.0  # load integral skipped while the breaker was open or tripped (Wh)
        self._offsets: dict[str, float] = {
            Q.ENERGY_ACTIVE_EXPORT: 1234.0 + len(device.id) * 10,
            Q.ENERGY_REACTIVE_EXPORT: 567.0,
            Q.ENERGY_APPARENT_EXPORT: 1300.0,
        }
        quantities = {str(r.quantity) for r in profile.registers}
        self.phases = 3 if quantities & {"voltage_l2", "current_l2", "voltage_l12", "power_active_l2"} else 1
        super().__init__(device, profile, tz, t)
        self._t = t
        self._compute(t)

    def _counter_base(self, quantity: str, t: datetime) -> float:
        ea = self.curve.total(t) - self._origin_total - self._paused
        return {
            Q.ENERGY_ACTIVE_IMPORT: ea,
            Q.ENERGY_REACTIVE_IMPORT: ea * self.tan_phi,
            Q.ENERGY_APPARENT: ea * math.hypot(1.0, self.tan_phi),
        }.get(quantity, 0.0)

    def advance(self, t: datetime, dt_hours: float) -> None:
        if not self.closed and t > self._t:
            self._paused += self.curve.total(t) - self.curve.total(self._t)
        self._t = t
        self._update_states(t)
        self._compute(t)

    def _compute(self, t: datetime) -> None:
        v: dict[str, float] = {k: x for k, x in self._values.items() if k.startswith("analog_input_")}
        for q in (
            Q.ENERGY_ACTIVE_IMPORT,
            Q.ENERGY_REACTIVE_IMPORT,
            Q.ENERGY_APPARENT,
            Q.ENERGY_ACTIVE_EXPORT,
            Q.ENERGY_REACTIVE_EXPORT,
            Q.ENERGY_APPARENT_EXPORT,
        ):
            v[q] = self._counter_base(q, t) + self._offsets.get(q, 0.0)
        p = self.curve.rate(t) if self.closed else 0.0
        q_var = p * self.tan_phi
        s = math.hypot(p, q_var)
        pf = p / s if s else 1.0
        seconds = t.timestamp()
        drop = 2.5 * p / max(self.curve.per_week / 168 * 3, 1.0)  # a little voltage drop under load
        volts = [230.0 + 1.6 * math.sin(seconds / 97.0 + k * 2.1) - drop * (1 + 0.1 * k) for k in range(3)]
        share = (1.06, 0.97, 0.97) if self.phases == 3 else (3.0, 0.0, 0.0)
        amps = [p / 3 * share[k] / (volts[k] * pf) if pf else 0.0 for k in range(3)]
        v.update(
            {
                Q.POWER_ACTIVE: p,
                Q.POWER_REACTIVE: q_var,
                Q.POWER_APPARENT: s,
                Q.POWER_FACTOR: pf,
                Q.VOLTAGE_L12: math.sqrt(3) * (volts[0] + volts[1]) / 2,
                Q.VOLTAGE_L23: math.sqrt(3) * (volts[1] + volts[2]) / 2,
                Q.VOLTAGE_L31: math.sqrt(3) * (volts[2] + volts[0]) / 2,
                Q.CURRENT_N: abs(amps[0] - (amps[1] + amps[2]) / 2),
                Q.RESIDUAL_CURRENT: 0.004 + 0.002 * math.sin(seconds / 53.0) ** 2 if self.closed else 0.0,
                Q.FREQUENCY: 50.0 + 0.03 * math.sin(seconds / 41.0),
            }
        )
        for k, phase in enumerate(PHASES):
            pk = p / 3 * share[k]
            v[f"voltage_{phase}"] = volts[k]
            v[f"current_{phase}"] = amps[k]
            v[f"power_active_{phase}"] = pk
            v[f"power_reactive_{phase}"] = pk * self.tan_phi
            v[f"power_apparent_{phase}"] = math.hypot(pk, pk * self.tan_phi)
            v[f"power_factor_{phase}"] = pf
            v[f"thd_voltage_{phase}"] = 2.1 + 0.1 * k + 0.3 * math.sin(seconds / (300.0 + 10 * k))
            v[f"thd_current_{phase}"] = 8.0 + 0.5 * k + 4.0 * math.sin(seconds / (600.0 + 10 * k)) ** 2
            for n in HARMONIC_RANKS:
                odd = 1.0 if n % 2 else 0.15  # even ranks are small
                v[f"harmonic_voltage_{phase}_h{n}"] = odd * 1.8 / n * (1 + 0.1 * math.sin(seconds / 200 + n))
                v[f"harmonic_current_{phase}_h{n}"] = odd * 25.0 / n * (1 + 0.2 * math.sin(seconds / 170 + n))
        self._values = v

    def set_value(self, quantity: str, value: float, t: datetime) -> None:
        if quantity in COUNTERS:
            self._offsets[quantity] = value - self._counter_base(quantity, t)
            self._overrides.pop(quantity, None)
            self._compute(t)
        else:
            super().set_value(quantity, value, t)


class PulseTwin(Twin):
    """One pulse input: the curve is in dm³/h (water, gas) or W (electricity)."""

    def __init__(
        self,
        device: Device,
        profile: Profile,
        shape: Shape,
        tz: ZoneInfo,
        t: datetime,
        origin: datetime | None = None,
    ) -> None:
        self.weight = device.pulse_weight or 1.0
        self.curve = WeeklyCurve(shape, tz, seed=device.id)
        self._offset = -self.curve.total(origin) if origin is not None else 0.0
        super().__init__(device, profile, tz, t)
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
_EPOCH = datetime(2020, 1, 6, tzinfo=UTC)


def station_usage(device_id: str) -> float:
    """How much a station is used (× ``DAILY_ENERGY``): stations differ, run to run the same."""
    return 0.6 + (zlib.crc32(device_id.encode()) % 80) / 100


class EvStationTwin(Twin):
    """One side of an EV charging station (states named as in ``ev-station-greenup``)."""

    def __init__(
        self,
        device: Device,
        profile: Profile,
        tz: ZoneInfo,
        t: datetime,
        *,
        rated: float = 32.0,
        origin: datetime | None = None,
    ) -> None:
        super().__init__(device, profile, tz, t)
        self.rated = rated
        # a side B arrives later and leaves earlier than side A: the two sides of a double station differ
        self.shift = 1.5 if device.side == "B" else 0.0
        days = (t - (origin or _EPOCH)).total_seconds() / 86_400
        self.usage = station_usage(device.id)
        self.energy = DAILY_ENERGY * self.usage * max(days, 0.0)
        self.fault = False
        self.states.update(
            {
                "charger": AVAILABLE,
                "charge_process": WAIT,
                "priority": 0,
                "ev_socket": 1,
                "domestic_socket": 1,
            }
        )
        self._slot = self._scheduled(t)
        self.plugged = self._slot != "away"
        self.states["charge_process"] = START if self._slot == "charging" else WAIT
        self._t = t
        self._derive()

    def _scheduled(self, t: datetime) -> str:
        local = t.astimezone(UTC).replace(tzinfo=None) + self.offset
        day, hour = local.weekday(), local.hour + local.minute / 60 + local.second / 3600
        if day >= 5 or not ARRIVE + self.shift <= hour < LEAVE - self.shift:
            return "away"
        return "charging" if hour < FULL + self.shift / 2 else "full"

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
        if "charger_error" in s and "charger_error" not in self._held:
            s["charger_error"] = 4 if self.fault else 0
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
            self._held.add(name)
        self._derive()

    def kept(self) -> dict[str, float]:
        """The energy counter depends on the charges commanded: kept, as the station's meter keeps it."""
        return {Q.ENERGY_ACTIVE_IMPORT: self.energy}

    def resume(self, kept: dict[str, float]) -> None:
        energy = kept.get(Q.ENERGY_ACTIVE_IMPORT)
        if isinstance(energy, (int, float)) and math.isfinite(energy) and energy > self.energy:
            self.energy = float(energy)  # (never below the estimate from the origin: it only grows)
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

FEEDER = Shape(base=12_000.0, morning=9_000.0, evening=5_000.0, daytime=8_000.0)  # W, main feeders
SUB_CIRCUIT = Shape(base=900.0, morning=1_500.0, evening=600.0, daytime=2_500.0)  # W, sub-circuits
SMALL = Shape(base=150.0, morning=400.0, evening=700.0, daytime=300.0)  # W, one final circuit
WATER = Shape(base=25.0, morning=450.0, evening=250.0, daytime=120.0)  # dm³/h
GAS = Shape(base=350.0, morning=1_600.0, evening=900.0, daytime=500.0, weekend=0.6)  # dm³/h
SHAPES = {"feeder": FEEDER, "sub-circuit": SUB_CIRCUIT, "small": SMALL, "none": Shape(base=0.0, noise=0.0)}


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
    device: Device, profile: Profile, tz: ZoneInfo, t: datetime, origin: datetime | None = None
) -> Twin:
    """The twin of a device, from its (effective) profile's ``simulation:`` hint. Counters count from
    ``origin`` (0 then); default: the curves' epoch, 2020-01-06 (``history.py`` moves it back on a demo
    whose history it generated)."""
    kind = profile.twin_kind
    if kind == "pulse" or device.position is not None:
        shape = {"water": WATER, "gas": GAS}.get(device.medium or "", SUB_CIRCUIT)
        return PulseTwin(device, profile, _scaled(shape, device.id), tz, t, origin)
    if kind == "ev-charger":
        return EvStationTwin(device, profile, tz, t, origin=origin)
    if kind == "meter":
        shape = _scaled(SHAPES[profile.simulation.load], device.id)
        return ElectricMeterTwin(device, profile, shape, tz, t, origin)
    return Twin(device, profile, tz, t)
