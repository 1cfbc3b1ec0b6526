"""One Modbus bus: a TCP gateway (Modbus TCP or RTU over TCP) or a local RS485 line (RTU over serial).

One transaction at a time (an RS485 bus cannot carry two), an optional silence between transactions
(``inter_frame_delay``), and every failure as one ``FieldbusError`` line. The RS485 wire time of each
transaction is accounted (``BusTiming``, ``rtu_frame_sizes``) so that a poll cycle can be compared with
the bus's physical bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pymodbus import FramerType, ModbusException
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse

if TYPE_CHECKING:
    from ews_contracts.site import Gateway

log = logging.getLogger("ews.fieldbus")

BITS_PER_CHAR = 11  # RTU: start + 8 data + parity (or a second stop) + stop


# Modbus exception codes in words (Modbus application protocol v1.1b3, section 7)
MODBUS_EXCEPTIONS = {
    1: "the device does not support this function",
    2: "no such register on this device",
    3: "the device refused the value or the count",
    4: "device failure",
    5: "the device is busy with a long operation",
    6: "the device is busy",
    8: "memory parity error in the device",
    10: "the gateway has no path to this device",
    11: "no answer from this address behind the gateway",
}


class FieldbusError(Exception):
    """A transaction failed (timeout, exception response, garbled frame, connection refused)."""


@dataclass(frozen=True)
class BusTiming:
    """RS485 timing: frame time = bytes × 11 bits / baud; 3.5-character silence (1.75 ms above 19200)."""

    baudrate: int = 19200
    reply_delay: float = 0.0  # the device's own turnaround, seconds

    @property
    def char_time(self) -> float:
        return BITS_PER_CHAR / self.baudrate

    @property
    def silence(self) -> float:
        return 3.5 * self.char_time if self.baudrate <= 19200 else 0.00175

    def frame_time(self, nbytes: int) -> float:
        return nbytes * self.char_time

    def transaction_time(self, request_bytes: int, response_bytes: int) -> float:
        """Request frame + reply delay + response frame + the silence before the next frame."""
        return (
            self.frame_time(request_bytes) + self.reply_delay + self.frame_time(response_bytes) + self.silence
        )


def rtu_frame_sizes(function_code: int, count: int, *, error: bool = False) -> tuple[int, int]:
    """(request bytes, response bytes) of one RTU transaction (address + PDU + CRC)."""
    if function_code in (3, 4):
        request, response = 8, 5 + 2 * count
    elif function_code == 6:
        request, response = 8, 8
    elif function_code == 16:
        request, response = 9 + 2 * count, 8
    else:
        request, response = 8, 8
    return request, 5 if error else response


_PYMODBUS_LOG = logging.getLogger("pymodbus.logging")

STANDARD_BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


def _setting_text(key: str, value: Any) -> str:
    """One serial setting in words: "19200 baud", "8 data bits", "parity E", "2 stop bits"."""
    if key == "baudrate":
        return f"{value} baud"
    if key == "bytesize":
        return f"{value} data bits"
    if key == "parity":
        return f"parity {value}"
    return f"{value:g} stop bit{'' if value == 1 else 's'}"


def _serial_text(settings: dict[str, Any]) -> str:
    """A serial line's settings in the usual order: "19200 baud, 8 data bits, parity E, 1 stop bit"."""
    order = ("baudrate", "bytesize", "parity", "stopbits")
    return ", ".join(_setting_text(key, settings[key]) for key in order if key in settings)


class _FastRegisters:
    """FC3/FC4 answers decoded with one ``struct.unpack`` instead of one per register, and described
    (``str``, which pymodbus computes for a debug line on every answer, every register listed) only when
    pymodbus's debug log is on: together ~15 % of the CPU of a read (75 -> 62 µs for the poller's reads).
    Registered on each client's decoder (``register``, pymodbus's public API): same registers, same errors."""

    def decode(self, data: bytes) -> None:
        count = data[0] if data else 0
        if count % 2 or count >= len(data):
            super().decode(data)  # type: ignore[misc]  # odd or short: pymodbus's own way and errors
            return
        self.registers = list(struct.unpack(f">{count // 2}H", data[1 : count + 1]))

    def __str__(self) -> str:
        if _PYMODBUS_LOG.isEnabledFor(logging.DEBUG):
            return super().__str__()
        return type(self).__name__


class _HoldingRegisters(_FastRegisters, ReadHoldingRegistersResponse):
    pass


class _InputRegisters(_FastRegisters, ReadInputRegistersResponse):
    pass


class ModbusGateway:
    """Serialized access to one bus (an RS485 line carries one transaction at a time)."""

    def __init__(
        self,
        host: str | None,
        port: int = 502,
        *,
        timeout: float = 1.0,
        retries: int = 1,
        transport: str = "tcp",
        name: str = "gateway",
        serial_port: str | None = None,
        baudrate: int = 19200,
        parity: str = "N",
        stopbits: int = 1,
        bytesize: int = 8,
        inter_frame_delay: float = 0.0,
    ) -> None:
        self.name = name
        self.transport = transport
        self.serial_settings: dict[str, Any] | None = None  # rtu: baudrate, parity, stopbits, bytesize
        common = {
            "timeout": timeout,
            "retries": retries,
            "reconnect_delay": 0.5,
            "reconnect_delay_max": 10,
            "name": name,
        }
        if transport == "rtu":
            if not serial_port:
                raise ValueError(f"{name}: transport 'rtu' needs a serial port")
            self.endpoint = serial_port
            self.serial_settings = {
                "baudrate": baudrate,
                "parity": parity,
                "stopbits": stopbits,
                "bytesize": bytesize,
            }
            self._client: AsyncModbusTcpClient | AsyncModbusSerialClient = AsyncModbusSerialClient(
                serial_port,
                framer=FramerType.RTU,
                baudrate=baudrate,
                bytesize=bytesize,
                parity=parity,
                stopbits=stopbits,
                **common,
            )
        elif transport in ("tcp", "rtu-over-tcp"):
            if not host:
                raise ValueError(f"{name}: transport {transport!r} needs a host")
            self.endpoint = f"{host}:{port}"
            framer = FramerType.RTU if transport == "rtu-over-tcp" else FramerType.SOCKET
            self._client = AsyncModbusTcpClient(
                host,
                port=port,
                framer=framer,
                **common,
            )
        else:
            raise ValueError(f"{name}: unknown transport {transport!r}; use tcp, rtu-over-tcp or rtu")
        self._client.register(_HoldingRegisters)
        self._client.register(_InputRegisters)
        self.inter_frame_delay = inter_frame_delay
        self.lock = asyncio.Lock()
        self._holder: asyncio.Task[Any] | None = None
        self._holder_admitted = True  # the hold in progress began before retire()
        self._retired = False
        self.retired = asyncio.Event()  # set once retire() has closed the connection for good
        self._predecessor: ModbusGateway | None = None
        self._free_at = 0.0
        # accounting (for logs and the bus-time bound of a poll cycle)
        self.transactions = 0
        self.failures = 0
        self.request_bytes = 0
        self.response_bytes = 0

    @classmethod
    def for_gateway(cls, gateway: Gateway) -> ModbusGateway:
        """The client of a site file's gateway (its transport, timeout, retries and inter-frame delay)."""
        serial = gateway.serial
        return cls(
            gateway.host,
            gateway.port,
            timeout=gateway.timeout,
            retries=gateway.retries,
            transport=gateway.transport,
            name=gateway.id,
            serial_port=serial.port if serial else None,
            baudrate=serial.baudrate if serial else gateway.baudrate,
            parity=serial.parity if serial else "N",
            stopbits=serial.stopbits if serial else 1,
            bytesize=serial.bytesize if serial else 8,
            inter_frame_delay=gateway.inter_frame_delay,
        )

    def bus_time(self, timing: BusTiming) -> float:
        """The RS485 wire time of every transaction so far (the physical bound of what was issued)."""
        return timing.char_time * (self.request_bytes + self.response_bytes) + self.transactions * (
            timing.reply_delay + timing.silence
        )

    async def _ensure_connected(self) -> None:
        if not self._client.connected:
            if self.serial_settings is None:
                if not await self._client.connect():
                    raise FieldbusError(f"{self.name}: cannot connect to {self.endpoint}")
                return
            try:
                connected = await self._client.connect()
            except Exception as exc:  # pyserial lets termios.error through: "(22, 'Invalid argument')"
                exc.__traceback__ = None  # its frames hold the port pymodbus opened (and locked): free it
                raise FieldbusError(self._serial_open_problem(exc)) from exc
            if not connected:
                raise FieldbusError(self._serial_open_problem(None))

    def _serial_open_problem(self, failure: BaseException | None) -> str:
        """Why the serial port does not open, in one line that names the port and its settings. pymodbus
        lets termios's bare "(22, 'Invalid argument')" through (``failure``), or only logs what happened
        and returns False (``None``): then open the port once more with pyserial, the way pymodbus does,
        to see the error (and close it at once). A refused setting (EINVAL) is named when one alone
        explains it: "serial port /dev/ttyUSB0 refuses parity E (…)"."""
        import errno
        import os

        s = self.serial_settings or {}
        settings = _serial_text(s)
        where = f"{self.name}: cannot connect to serial port {self.endpoint} ({settings})"
        if failure is None:
            failure = self._open_serial(s)
            if failure is None:
                return f"{where}: pymodbus could not open it (it opens now; retrying)"
        code = getattr(failure, "errno", None)
        if code is None and failure.args and isinstance(failure.args[0], int):
            code = failure.args[0]  # termios.error(22, 'Invalid argument')
        if isinstance(code, int):
            detail = f"[Errno {code}] {os.strerror(code)}"
        else:
            detail = " ".join((str(failure) or type(failure).__name__).split())
        if code == errno.EINVAL:
            refused = self._refused_setting(s)
            if refused is not None:
                return (
                    f"{self.name}: cannot connect: serial port {self.endpoint} refuses {refused} "
                    f"({settings}): {detail}"
                )
        hints = {
            errno.ENOENT: "no such serial port",
            errno.EACCES: "permission denied: add the user running ews to the dialout group",
            errno.EPERM: "permission denied: add the user running ews to the dialout group",
            errno.EBUSY: "the port is in use by another program",
            errno.EAGAIN: "the port is in use by another program",
            errno.EINVAL: "the port or its driver refuses one of these settings",
            errno.ENXIO: "the device is gone (adapter unplugged?)",
            errno.ENODEV: "the device is gone (adapter unplugged?)",
            errno.ENOTTY: "this is not a serial port",
        }
        hint = hints.get(code) if isinstance(code, int) else None
        if hint is None and isinstance(failure, ValueError):
            hint = "one of these settings is not valid for this port"
        return f"{where}: {detail} — {hint}" if hint else f"{where}: {detail}"

    def _open_serial(self, settings: dict[str, Any]) -> BaseException | None:
        """Open the serial port with ``settings`` the way pymodbus does (exclusive, then timeouts set: a
        second tcsetattr, which some drivers refuse) and close it at once: None when it opens, else why."""
        import serial

        try:
            port = serial.serial_for_url(self.endpoint, exclusive=True, do_not_open=False, **settings)
            try:
                port.timeout = 0
                port.write_timeout = 0
            finally:
                port.close()
        except Exception as exc:
            return exc
        return None

    def _refused_setting(self, settings: dict[str, Any]) -> str | None:
        """The setting the port refuses (EINVAL), e.g. "parity E": each one not at its usual value (parity
        N, 1 stop bit, 8 data bits, a standard baud rate) is tried at that value alone, the others kept;
        the first that lets the port open is the one refused. None when no single setting explains it."""
        usual = {"parity": "N", "stopbits": 1, "bytesize": 8}
        baudrate = settings.get("baudrate", 19200)
        standard = min(STANDARD_BAUDRATES, key=lambda rate: abs(rate - baudrate))
        for key, value in (*usual.items(), ("baudrate", standard)):
            if key not in settings or settings[key] == value:
                continue
            if self._open_serial({**settings, key: value}) is None:
                return _setting_text(key, settings[key])
        return None

    async def _quiet(self) -> None:
        if self.inter_frame_delay:
            wait = self._free_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)

    def _done(self, function_code: int, count: int, ok: bool) -> None:
        request, response = rtu_frame_sizes(function_code, count, error=not ok)
        self.transactions += 1
        self.request_bytes += request
        self.response_bytes += response
        if not ok:
            self.failures += 1
        if self.inter_frame_delay:
            self._free_at = time.monotonic() + self.inter_frame_delay

    def follows(self, previous: ModbusGateway) -> None:
        """``previous`` is the client of the same line and is being retired: this one opens its connection
        only once ``previous`` has closed its own (a gateway never sees two connections of the product)."""
        if not previous.retired.is_set():
            self._predecessor = previous

    def retire(self, timeout: float) -> Awaitable[bool]:
        """Close for good, between two transactions (a new configuration). From this call on, a transaction
        waiting for the bus, or asked later, fails with "not sent" instead of opening the connection again
        (a hold already in progress finishes); the connection is closed once the transaction or hold in
        progress ends, or after ``timeout`` seconds under it (a stuck transaction cannot hang the caller).
        Awaiting the result gives True when it closed between two transactions."""
        self._retired = True
        return self._close_when_free(timeout)

    async def _close_when_free(self, within: float) -> bool:
        try:
            try:
                async with asyncio.timeout(within):
                    await self.lock.acquire()
            except TimeoutError:
                log.warning(
                    "%s: a transaction on %s still runs after %.0f s; its connection is closed under it",
                    self.name,
                    self.endpoint,
                    within,
                )
                self._client.close()
                return False
            try:
                self._client.close()
            finally:
                self.lock.release()
            return True
        finally:
            self.retired.set()

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[ModbusGateway]:
        """Hold the bus for several transactions in a row (a command's write and its read-back): inside,
        this task's reads and writes run without waiting; every other caller waits for the end. Waiters
        are served in arrival order (asyncio.Lock is fair), so a write queued during a poll runs right
        after the poll's transaction in progress."""
        async with self.lock:
            self._holder = asyncio.current_task()
            self._holder_admitted = not self._retired
            try:
                yield self
            finally:
                self._holder = None

    async def _transaction(
        self, function_code: int, count: int, where: str, call: Callable[[], Awaitable[Any]]
    ):
        """One transaction on the bus (locked, inter-frame quiet, accounted); errors as FieldbusError."""
        if self._holder is not None and self._holder is asyncio.current_task():
            rr = await self._exchange(function_code, count, where, call)
        else:
            async with self.lock:
                rr = await self._exchange(function_code, count, where, call)
        if rr.isError():
            code = getattr(rr, "exception_code", None)
            meaning = MODBUS_EXCEPTIONS.get(code, "exception response")
            raise FieldbusError(f"{where}: {meaning} (exception_code={code})")
        return rr

    async def _exchange(self, function_code: int, count: int, where: str, call: Callable[[], Awaitable[Any]]):
        """The transaction itself; the caller holds the lock."""
        if self._retired and not (self._holder_admitted and self._holder is asyncio.current_task()):
            raise FieldbusError(
                f"{where}: not sent: the connection to {self.endpoint} was closed (new configuration)"
            )
        if not self._client.connected:
            if self._predecessor is not None:  # the same line's previous client closes first
                await self._predecessor.retired.wait()
                self._predecessor = None
            await self._ensure_connected()
        if self.inter_frame_delay:
            await self._quiet()
        try:
            rr = await call()
        except (TimeoutError, ModbusException, OSError) as exc:
            self._done(function_code, count, False)
            raise FieldbusError(f"{where}: {exc}") from exc
        except Exception as exc:  # a garbled frame pymodbus did not anticipate
            self._done(function_code, count, False)
            raise FieldbusError(f"{where}: bad answer ({type(exc).__name__}: {exc})") from exc
        self._done(function_code, count, not rr.isError())
        return rr

    async def read(self, unit: int, function_code: int, address: int, count: int) -> list[int]:
        """Read ``count`` registers (FC3 holding or FC4 input) starting at ``address``."""
        if function_code not in (3, 4):
            raise FieldbusError(f"function code {function_code} is not a register read")
        method = (
            self._client.read_holding_registers if function_code == 3 else self._client.read_input_registers
        )
        rr = await self._transaction(
            function_code,
            count,
            f"unit {unit} FC{function_code} @{address}+{count}",
            lambda: method(address, count=count, device_id=unit),
        )
        registers = getattr(rr, "registers", None)
        if registers is None or len(registers) != count:
            got = "no" if registers is None else len(registers)
            raise FieldbusError(f"unit {unit} FC{function_code} @{address}: {got} of {count} registers")
        return list(registers)

    async def write_register(self, unit: int, address: int, value: int) -> None:
        """Write one holding register (FC6)."""
        await self._transaction(
            6,
            1,
            f"unit {unit} write @{address}={value}",
            lambda: self._client.write_register(address, value, device_id=unit),
        )

    async def close(self) -> None:
        self._client.close()
