"""``SimulatedSite``: every gateway of a site as a pymodbus TCP server, every device as its profile's twin.

Simulated time runs at ``speed`` × wall-clock time from the moment of construction and stops while
frozen. Every ``tick`` seconds the twins move to the simulated time and the registers are re-encoded;
``freeze()`` first brings them exactly up to date, so a frozen simulator shows the counters as of the
freeze. Register reads are served from the image (a pymodbus ``SimDevice`` action copies the image into
the served block); writes go to the twin first, so a command's effect (e.g. charge start -> charging) is
visible on the next read.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from ews_contracts.profiles import Profile, ProfileError, check_device
from ews_contracts.quantities import Quantity
from ews_contracts.site import Gateway, Site
from ews_fieldbus import BusTiming, rtu_frame_sizes
from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from .image import ImageError, UnitImage
from .twins import make_twin

log = logging.getLogger("ews.simulator")

_MEDIUM_QUANTITY = {"water": Quantity.WATER_VOLUME, "gas": Quantity.GAS_VOLUME}
_READS = {3, 4}
_WRITES = {6, 16}


class SimulatorError(RuntimeError):
    """The simulator cannot start (port in use, site not simulable); the message is one line."""


class SimulatedSite:
    """Simulated Modbus devices of a site, one TCP server per gateway at ``(bind, gateway.port)``.

    Test controls: ``freeze()`` / ``resume()``, ``counter()`` / ``value()`` / ``state()`` (what a poller
    decodes from the registers now), ``set_value()`` / ``release()`` / ``set_state()`` /
    ``release_state()``, RS485 timing (``timing=`` or ``set_timing()``) and faults (``inject()``).
    """

    def __init__(
        self,
        site: Site,
        profiles: dict[str, Profile],
        bind: str = "127.0.0.1",
        *,
        speed: float = 1.0,
        tick: float = 1.0,
        start_time: datetime | None = None,
        timing: dict[str, BusTiming] | None = None,
        origin: datetime | None = None,
        serial_lines: dict[str, str] | None = None,
        state_file: Path | None = None,
    ) -> None:
        """``origin``: when the simulated counters started from 0 (default: the curves' epoch, 2020-01-06;
        a demo with generated history counts from its start, see ``history.py``). ``serial_lines``: gateway
        id -> the simulator's end of a real serial line (an ``rtu`` gateway's devices answer there, with the
        gateway's serial settings; e.g. one pty of a ``socat`` pair whose other end is the gateway's port).
        ``state_file``: where the twins keep what a real device keeps across a power cycle (an EV station's
        energy counter, which depends on the charges commanded): read at start, written after each tick
        that changed it, before any register shows the new value — so a restarted simulator never serves
        a counter below one it served (``Twin.kept``)."""
        if speed <= 0 or tick <= 0:
            raise ValueError("speed and tick must be positive")
        self.site = site
        self.bind = bind
        self.speed = speed
        self.tick = tick
        self._sim_time = (start_time or datetime.now(UTC)).astimezone(UTC)
        self._last = time.monotonic()
        self._frozen = False
        self.profiles = profiles
        self.origin = origin
        self.state_file = state_file
        self._kept = _read_kept(state_file)
        self._kept_written: dict[str, dict[str, float]] = dict(self._kept)
        self.units: dict[str, dict[int, UnitImage]] = {g.id: {} for g in site.gateways}
        self._image_of: dict[str, UnitImage] = {}
        for gateway in site.gateways:
            self.units[gateway.id] = self._images(site, gateway.id)
        self._servers: dict[str, ModbusTcpServer] = {}
        self._ticker: asyncio.Task[None] | None = None
        # RS485 timing per gateway (None: answer at once) and one bus lock per gateway
        self._timing: dict[str, BusTiming | None] = {g.id: (timing or {}).get(g.id) for g in site.gateways}
        self._bus: dict[str, asyncio.Lock] = {}
        self._faults: dict[tuple[str, int], Fault] = {}  # (gateway, unit) -> fault
        self.served: dict[str, int] = {g.id: 0 for g in site.gateways}  # transactions answered
        self.serial_lines = dict(serial_lines or {})

    def _images(self, site: Site, gateway_id: str) -> dict[int, UnitImage]:
        """The units of one gateway (a twin per device), registered in ``_image_of``."""
        units: dict[int, UnitImage] = {}
        for device in site.devices:
            if device.gateway != gateway_id:
                continue
            try:
                profile = check_device(device, self.profiles)
            except ProfileError as exc:
                raise SimulatorError(str(exc)) from None
            twin = make_twin(device, profile, site.tz, self._sim_time, self.origin)
            twin.resume(self._kept.get(device.id, {}))
            image = units.setdefault(device.address, UnitImage(device.address))
            try:
                image.add(device, profile, twin)
            except ImageError as exc:
                raise SimulatorError(f"gateway {device.gateway!r}: {exc}") from None
            self._image_of[device.id] = image
        return units

    async def apply_site(self, site: Site) -> None:
        """A new configuration, live: a gateway whose settings and devices are unchanged keeps serving as
        it was; a changed one is served again with twins for its devices (new devices answer from then
        on, removed ones no longer); a removed gateway stops. Off devices still answer, as real ones do."""
        old = self.site
        old_gateways = {g.id: g for g in old.gateways}

        def devices_on(s: Site, gateway_id: str) -> list:
            return [d for d in s.devices if d.gateway == gateway_id]

        for gateway_id in set(old_gateways) - {g.id for g in site.gateways}:
            await self._stop_gateway(gateway_id)
            self.units.pop(gateway_id, None)
        self.site = site
        for gateway in site.gateways:
            if old_gateways.get(gateway.id) == gateway and devices_on(old, gateway.id) == devices_on(
                site, gateway.id
            ):
                continue
            await self._stop_gateway(gateway.id)
            self.units[gateway.id] = self._images(site, gateway.id)
            self._timing.setdefault(gateway.id, None)
            self.served.setdefault(gateway.id, 0)
            if self._ticker is not None:  # started: serve it now
                await self._serve(gateway)
        known = {d.id for d in site.devices}
        for device_id in [d for d in self._image_of if d not in known]:
            del self._image_of[device_id]

    async def _stop_gateway(self, gateway_id: str) -> None:
        server = self._servers.pop(gateway_id, None)
        if server is None:
            return
        try:
            await asyncio.wait_for(server.shutdown(), 5.0)
        except Exception as exc:  # closing anyway (bounded)
            log.warning("simulator: shutting gateway %s down failed: %s", gateway_id, exc)

    # --- life cycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on every gateway's port and start the clock; raises SimulatorError (one line) on failure."""
        try:
            for gateway in self.site.gateways:
                await self._serve(gateway)
        except BaseException:
            await self.stop()
            raise
        self._last = time.monotonic()
        self._ticker = asyncio.create_task(self._run_clock(), name="simulator-clock")

    def _listen_address(self, gateway: Gateway) -> tuple[str, int, FramerType] | None:
        """Where a gateway is served: its port on the bind address (tcp: Modbus TCP framing; rtu-over-tcp:
        RTU framing); an ``rtu`` line only when its port is a ``socket://host:port`` URL."""
        if gateway.transport == "rtu":
            port = gateway.serial.port if gateway.serial else ""
            if not port.startswith("socket://"):
                return None
            host, _, number = port.removeprefix("socket://").rpartition(":")
            return host or self.bind, int(number), FramerType.RTU
        framer = FramerType.RTU if gateway.transport == "rtu-over-tcp" else FramerType.SOCKET
        return self.bind, gateway.port, framer

    async def _serve(self, gateway: Gateway) -> None:
        if gateway.transport == "rtu" and gateway.id in self.serial_lines:
            await self._serve_serial(gateway, self.serial_lines[gateway.id])
            return
        where = self._listen_address(gateway)
        if where is None:
            log.warning(
                "simulator: gateway %s is a local serial line (%s): not simulated; use serial port "
                "socket://127.0.0.1:<port> to simulate it",
                gateway.id,
                gateway.endpoint,
            )
            return
        host, port, framer = where
        _check_port(host, port, gateway.id)
        self._bus[gateway.id] = asyncio.Lock()
        server = _FaultyServer(
            self, gateway.id, self._devices(gateway.id), framer=framer, address=(host, port)
        )
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            raise SimulatorError(f"gateway {gateway.id!r}: cannot listen on {host}:{port} ({exc})") from None
        self._servers[gateway.id] = server
        units = sorted(self.units[gateway.id])
        log.info(
            "simulator: gateway %s on %s:%s%s serving units %s",
            gateway.id,
            host,
            port,
            "" if gateway.transport == "tcp" else f" ({gateway.transport})",
            ", ".join(map(str, units)) or "none",
        )

    def _devices(self, gateway_id: str) -> list[SimDevice]:
        devices = [self._sim_device(gateway_id, image) for image in self.units[gateway_id].values()]
        devices.append(
            SimDevice(
                0,
                simdata=[SimData(0, count=65536, values=0, datatype=DataType.REGISTERS)],
                action=functools.partial(self._no_such_unit, gateway_id),
            )
        )
        return devices

    async def _serve_serial(self, gateway: Gateway, line: str) -> None:
        """The gateway's devices on a real serial line (RTU framing, the gateway's serial settings)."""
        serial = gateway.serial
        assert serial is not None  # an rtu gateway always has its serial settings
        self._bus[gateway.id] = asyncio.Lock()
        server = _FaultySerialServer(
            self,
            gateway.id,
            self._devices(gateway.id),
            framer=FramerType.RTU,
            port=line,
            baudrate=serial.baudrate,
            parity=serial.parity,
            stopbits=serial.stopbits,
            bytesize=serial.bytesize,
        )
        try:
            await server.serve_forever(background=True)
        except (RuntimeError, OSError) as exc:
            raise SimulatorError(f"gateway {gateway.id!r}: cannot open serial line {line} ({exc})") from None
        self._servers[gateway.id] = server
        log.info(
            "simulator: gateway %s on serial line %s serving units %s",
            gateway.id,
            line,
            ", ".join(map(str, sorted(self.units[gateway.id]))) or "none",
        )

    def _sim_device(self, gateway_id: str, image: UnitImage) -> SimDevice:
        first, count = image.span
        return SimDevice(
            image.unit,
            simdata=[SimData(first, count=count, values=0, datatype=DataType.REGISTERS)],
            action=functools.partial(self._on_request, gateway_id, image),
        )

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
            self._ticker = None
        servers, self._servers = self._servers, {}
        for server in servers.values():
            try:
                await asyncio.wait_for(server.shutdown(), 5.0)
            except Exception as exc:  # closing anyway (bounded: a stop never hangs)
                log.warning("simulator: shutting a server down failed: %s", exc)

    async def __aenter__(self) -> SimulatedSite:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return bool(self._servers)

    def connections(self, gateway_id: str) -> tuple[int, int]:
        """(connections accepted so far, the most open at once) of a gateway's server."""
        server = self._servers[gateway_id]
        return server.accepted, server.most_open

    def ports(self) -> dict[str, int]:
        """Gateway id -> TCP port served."""
        return {g.id: g.port for g in self.site.gateways}

    # --- simulated time ----------------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        """Simulated time (UTC) as of the last update."""
        return self._sim_time

    @property
    def frozen(self) -> bool:
        return self._frozen

    def _advance(self) -> None:
        now = time.monotonic()
        elapsed, self._last = now - self._last, now
        dt = 0.0 if self._frozen else elapsed * self.speed
        self._sim_time += timedelta(seconds=dt)
        for image in self._unique_images():  # (devices sharing an address share an image: once each)
            for member in image.members.values():
                member.twin.advance(self._sim_time, dt / 3600.0)
        self._keep()  # before the registers show the new values (no request is served in between)
        for units in self.units.values():
            for image in units.values():
                image.encode()

    def _unique_images(self) -> list[UnitImage]:
        return list({id(image): image for image in self._image_of.values()}.values())

    def _keep(self) -> None:
        """Write the twins' ``kept()`` values to ``state_file`` when they changed (atomically: a kill leaves
        the previous file or the new one)."""
        if self.state_file is None:
            return
        kept = {
            member.device.id: values
            for image in self._unique_images()
            for member in image.members.values()
            if (values := member.twin.kept())
        }
        if kept == self._kept_written:
            return
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            partial = self.state_file.with_suffix(".partial")
            partial.write_text(json.dumps(kept), encoding="utf-8")
            os.replace(partial, self.state_file)
            self._kept_written = kept
        except OSError as exc:
            log.warning("simulator: cannot keep the counters in %s: %s", self.state_file, exc)

    async def _run_clock(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                self._advance()
            except Exception as exc:  # a twin bug must not stop the devices answering
                log.error("simulator: updating the twins failed: %s", exc)

    def advance(self) -> None:
        """Bring every register up to date now (the clock also does it every ``tick`` seconds)."""
        self._advance()

    def freeze(self) -> None:
        """Stop simulated time: counters (and every other value) stay as they are now."""
        if not self._frozen:
            self._advance()
            self._frozen = True

    def resume(self) -> None:
        if self._frozen:
            self._advance()  # frozen: moves nothing, resets the wall-clock reference
            self._frozen = False

    # --- reading and setting values ----------------------------------------------------------------

    def _image(self, device_id: str) -> UnitImage:
        try:
            return self._image_of[device_id]
        except KeyError:
            raise KeyError(f"unknown device {device_id!r}") from None

    def value(self, device_id: str, quantity: Quantity | str) -> float | None:
        """The value of ``quantity`` (canonical unit) exactly as a poller decodes it from the registers now.

        A pulse meter also answers its medium's quantity (``water_volume``, ``gas_volume``, or
        ``energy_active_import`` for an electricity pulse meter): pulse count × pulse weight.
        """
        image = self._image(device_id)
        member = image.members[device_id]
        q = str(quantity)
        if q not in member.registers and member.device.pulse_weight is not None:
            medium_q = _MEDIUM_QUANTITY.get(member.device.medium or "", Quantity.ENERGY_ACTIVE_IMPORT)
            if q == medium_q and str(Quantity.PULSE_COUNT) in member.registers:
                pulses = image.decode(device_id, Quantity.PULSE_COUNT)
                return None if pulses is None else pulses * member.device.pulse_weight
        if q not in member.registers:
            raise KeyError(f"device {device_id!r} ({member.profile.id}) has no register for {q!r}")
        return image.decode(device_id, q)

    def counter(self, device_id: str, quantity: Quantity | str) -> float:
        """A counter's value as a poller decodes it now (e.g. Ea+ in Wh, pulses)."""
        value = self.value(device_id, quantity)
        if value is None:
            raise ValueError(f"{device_id}.{quantity} holds its invalid marker")
        return value

    def state(self, device_id: str, name: str) -> str:
        """A named state (e.g. ``charger``) as a poller decodes it now."""
        return self._image(device_id).state_name(device_id, name)

    def set_value(self, device_id: str, quantity: Quantity | str, value: float) -> None:
        """Set a value (canonical unit). A counter continues to advance from it; any other value is held
        until ``release()``. Pulse meters: ``pulse_count`` or their medium's quantity (÷ pulse weight)."""
        image = self._image(device_id)
        member = image.members[device_id]
        q = str(quantity)
        if member.device.pulse_weight is not None and q in {str(v) for v in _MEDIUM_QUANTITY.values()}:
            q, value = str(Quantity.PULSE_COUNT), value / member.device.pulse_weight
        if q not in member.registers:
            raise KeyError(f"device {device_id!r} ({member.profile.id}) has no register for {q!r}")
        member.twin.set_value(q, value, self._sim_time)
        image.encode()

    def release(self, device_id: str, quantity: Quantity | str) -> None:
        """Let a value held by ``set_value`` follow the simulation again."""
        image = self._image(device_id)
        image.members[device_id].twin.release(str(quantity))
        image.encode()

    def set_state(self, device_id: str, name: str, value: str | int) -> None:
        """Set a named state by its profile name (``"fault"``) or raw number."""
        image = self._image(device_id)
        member = image.members[device_id]
        spec = next((s for s in member.profile.states if s.name == name), None)
        if spec is None:
            raise KeyError(f"device {device_id!r} ({member.profile.id}) has no state {name!r}")
        if isinstance(value, str):
            raw = spec.raw_of(value)
            if raw is None:
                raise ValueError(
                    f"state {name!r} has no value {value!r}; known: {sorted(spec.values.values())}"
                )
        else:
            raw = value
        member.twin.set_state(name, raw)
        image.encode()

    def release_state(self, device_id: str, name: str) -> None:
        """Let a state held by ``set_state`` follow the simulation again (breaker trips, inputs …)."""
        image = self._image(device_id)
        image.members[device_id].twin.release_state(name)
        image.encode()

    # --- RS485 timing and fault injection (test controls) -------------------------------------------

    def set_timing(self, gateway_id: str, timing: BusTiming | None) -> None:
        """Simulate the RS485 bus behind a gateway: every transaction holds the bus for its frame times,
        the device's reply delay and the 3.5-character silence (``None``: answer at once)."""
        if gateway_id not in self._timing:
            raise KeyError(f"unknown gateway {gateway_id!r}")
        self._timing[gateway_id] = timing

    def inject(self, device_id: str, fault: Fault | None) -> None:
        """Make a device's Modbus unit misbehave until ``inject(device_id, None)``:

        - ``timeout`` / ``gone``: no answer at all (a device that stopped answering, or disappeared);
        - ``exception`` (``Fault("exception", code)``): an exception response (default 4, device failure);
        - ``garbage``: a corrupted frame; ``short``: one register fewer than asked.
        """
        image = self._image(device_id)
        device = image.members[device_id].device
        key = (device.gateway, image.unit)
        if fault is None:
            self._faults.pop(key, None)
        else:
            self._faults[key] = Fault(fault) if isinstance(fault, str) else fault

    def fault_of(self, gateway_id: str, unit: int) -> Fault | None:
        return self._faults.get((gateway_id, unit))

    async def _bus_time(self, gateway_id: str, function_code: int, count: int, error: bool) -> None:
        timing = self._timing.get(gateway_id)
        self.served[gateway_id] = self.served.get(gateway_id, 0) + 1
        if timing is None:
            return
        request, response = rtu_frame_sizes(function_code, count, error=error)
        lock = self._bus.setdefault(gateway_id, asyncio.Lock())
        async with lock:
            await _sleep_precise(timing.transaction_time(request, response))

    async def _no_such_unit(self, gateway_id: str, function_code: int, *_args: object) -> ExcCodes:
        """A unit nobody answers to: what a TCP/RS485 gateway says when the target does not respond."""
        return ExcCodes.GATEWAY_NO_RESPONSE

    async def _on_request(
        self,
        gateway_id: str,
        image: UnitImage,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if set_values is None and function_code in _WRITES:  # pymodbus's read after a write: same request
            return None
        fault = self._faults.get((gateway_id, image.unit))
        if fault is not None:
            if fault.kind in ("timeout", "gone"):
                raise NoSuchIdException(f"simulated fault: unit {image.unit} does not answer")
            if fault.kind == "exception":
                await self._bus_time(gateway_id, function_code, count, True)
                return ExcCodes(fault.code)
        result = self._serve_request(
            image, function_code, start_address, address, count, registers, set_values
        )
        await self._bus_time(gateway_id, function_code, count, result is not None)
        return result

    def _serve_request(
        self,
        image: UnitImage,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        addresses = range(address, address + count)
        if set_values is not None:
            if function_code not in _WRITES:
                return ExcCodes.ILLEGAL_FUNCTION
            for a, raw in zip(addresses, set_values, strict=False):
                target = image.writable.get(a)
                if target is None:
                    return ExcCodes.ILLEGAL_ADDRESS
                if int(raw) not in target[2]:
                    return ExcCodes.ILLEGAL_VALUE
            for a, raw in zip(addresses, set_values, strict=False):
                member, name, _ = image.writable[a]
                image.words[a] = int(raw) & 0xFFFF  # the command register reads back what was written
                if name is not None:
                    member.twin.on_write(name, int(raw))
            image.encode()
        elif function_code in _READS:
            if any(image.fcs.get(a, image.default_fc) != function_code for a in addresses):
                return ExcCodes.ILLEGAL_ADDRESS
        else:
            return ExcCodes.ILLEGAL_FUNCTION
        offset = address - start_address
        registers[offset : offset + count] = image.read_words(address, count)
        return None


@dataclass(frozen=True)
class Fault:
    """A simulated misbehaviour of one Modbus unit (see ``SimulatedSite.inject``)."""

    kind: Literal["timeout", "gone", "exception", "garbage", "short"]
    code: int = int(ExcCodes.DEVICE_FAILURE)


async def _sleep_precise(seconds: float) -> None:
    """Sleep ``seconds`` with sub-millisecond accuracy (asyncio timers may fire late by a clock tick)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    if seconds > 0.002:
        await asyncio.sleep(seconds - 0.001)
    while loop.time() < end:  # noqa: ASYNC110 — a deliberate sub-millisecond wait, no event to wait for
        await asyncio.sleep(0)


class _FaultyHandler(ServerRequestHandler):
    """pymodbus's connection handler, able to garble or shorten the answers of a faulty unit (and counted:
    a test can tell how many connections a gateway had at once)."""

    def callback_disconnected(self, exc: Exception | None) -> None:
        self.server.open_connections -= 1
        super().callback_disconnected(exc)

    def server_send(self, pdu: Any, addr: Any) -> None:
        owner: _FaultyServer = self.server
        fault = owner.site.fault_of(owner.gateway_id, getattr(pdu, "dev_id", -1)) if pdu else None
        if fault is not None and fault.kind == "short" and getattr(pdu, "registers", None):
            pdu.registers = pdu.registers[:-1]
        if fault is not None and fault.kind == "garbage":
            frame = bytearray(self.framer.buildFrame(pdu))
            for i in range(2, len(frame)):  # keeps a TCP transaction id; breaks header, PDU and CRC
                frame[i] ^= 0x5A
            self.low_level_send(bytes(frame), addr=addr)
            return
        super().server_send(pdu, addr)


class _Faulty:
    """A pymodbus server whose connections can garble or shorten a faulty unit's answers."""

    def __init__(self, site: SimulatedSite, gateway_id: str, devices: list[SimDevice], **kwargs: Any) -> None:
        super().__init__(devices, ignore_missing_devices=True, **kwargs)  # type: ignore[call-arg]
        self.site = site
        self.gateway_id = gateway_id
        self.accepted = 0  # connections accepted so far
        self.open_connections = 0
        self.most_open = 0  # the most connections open at once

    def callback_new_connection(self) -> _FaultyHandler:
        self.accepted += 1
        self.open_connections += 1
        self.most_open = max(self.most_open, self.open_connections)
        return _FaultyHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)  # type: ignore[attr-defined]


class _FaultyServer(_Faulty, ModbusTcpServer):
    """A TCP gateway."""


class _FaultySerialServer(_Faulty, ModbusSerialServer):
    """A serial line."""


def _read_kept(path: Path | None) -> dict[str, dict[str, float]]:
    """The ``state_file`` of an earlier run: device -> quantity -> value; empty when there is none or it
    cannot be read (logged: the twins start from their estimates)."""
    if path is None or not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {
            str(device): {str(q): float(v) for q, v in values.items()}
            for device, values in data.items()
            if isinstance(values, dict)
        }
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        log.warning("simulator: counters in %s not read (%s): starting from estimates", path, exc)
        return {}


def _check_port(host: str, port: int, gateway_id: str) -> None:
    """Fail with one clear line when the port is taken (pymodbus only says 'could not start listen')."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = "port already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise SimulatorError(
                f"gateway {gateway_id!r}: cannot listen on {host}:{port}: {reason}"
            ) from None
