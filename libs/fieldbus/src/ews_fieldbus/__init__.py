"""Modbus access behind one small adapter (pymodbus renames arguments between releases)."""

from .client import FieldbusError, ModbusGateway

__all__ = ["FieldbusError", "ModbusGateway"]
