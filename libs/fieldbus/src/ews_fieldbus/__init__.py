"""Modbus access behind one small adapter (pymodbus renames arguments between releases)."""

from .client import BusTiming, FieldbusError, ModbusGateway, rtu_frame_sizes

__all__ = ["BusTiming", "FieldbusError", "ModbusGateway", "rtu_frame_sizes"]
