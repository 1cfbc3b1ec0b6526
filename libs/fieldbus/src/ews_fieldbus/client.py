"""One Modbus TCP (or RTU-over-TCP) gateway: one transaction at a time, errors as FieldbusError."""

from __future__ import annotations

import asyncio
import logging

from pymodbus import FramerType, ModbusException
from pymodbus.client import AsyncModbusTcpClient

log = logging.getLogger("ews.fieldbus")


class FieldbusError(Exception):
    """A transaction failed (timeout, exception response, garbled frame, connection refused)."""


class ModbusGateway:
    """Serialized access to one gateway (an RS485 bus carries one transaction at a time)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 1.0,
        retries: int = 1,
        transport: str = "tcp",
        name: str = "gateway",
    ) -> None:
        framer = FramerType.RTU if transport == "rtu-over-tcp" else FramerType.SOCKET
        self.name = name
        self._client = AsyncModbusTcpClient(
            host,
            port=port,
            framer=framer,
            timeout=timeout,
            retries=retries,
            reconnect_delay=0.5,
            reconnect_delay_max=10,
            name=name,
        )
        self.lock = asyncio.Lock()
        self.transactions = 0

    async def _ensure_connected(self) -> None:
        if not self._client.connected:
            if not await self._client.connect():
                raise FieldbusError(
                    f"{self.name}: cannot connect to {self._client.comm_params.host}:"
                    f"{self._client.comm_params.port}"
                )

    async def read(self, unit: int, function_code: int, address: int, count: int) -> list[int]:
        """Read ``count`` registers (FC3 holding or FC4 input) starting at ``address``."""
        async with self.lock:
            await self._ensure_connected()
            self.transactions += 1
            try:
                if function_code == 3:
                    rr = await self._client.read_holding_registers(address, count=count, device_id=unit)
                elif function_code == 4:
                    rr = await self._client.read_input_registers(address, count=count, device_id=unit)
                else:
                    raise FieldbusError(f"function code {function_code} is not a register read")
            except (TimeoutError, ModbusException, OSError) as exc:
                raise FieldbusError(f"unit {unit} FC{function_code} @{address}+{count}: {exc}") from exc
        if rr.isError():
            raise FieldbusError(f"unit {unit} FC{function_code} @{address}+{count}: exception response {rr}")
        if len(rr.registers) != count:
            raise FieldbusError(
                f"unit {unit} FC{function_code} @{address}: {len(rr.registers)} of {count} registers"
            )
        return list(rr.registers)

    async def write_register(self, unit: int, address: int, value: int) -> None:
        """Write one holding register (FC6)."""
        async with self.lock:
            await self._ensure_connected()
            self.transactions += 1
            try:
                rr = await self._client.write_register(address, value, device_id=unit)
            except (TimeoutError, ModbusException, OSError) as exc:
                raise FieldbusError(f"unit {unit} write @{address}={value}: {exc}") from exc
        if rr.isError():
            raise FieldbusError(f"unit {unit} write @{address}={value}: exception response {rr}")

    async def close(self) -> None:
        self._client.close()
