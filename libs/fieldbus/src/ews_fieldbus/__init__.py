"""Modbus access behind one small adapter (pymodbus renames arguments between releases)."""

from .client import BusTiming, FieldbusError, ModbusGateway, rtu_frame_sizes
from .faultlog import FaultLog, cause_of

__all__ = ["BusTiming", "FaultLog", "FieldbusError", "ModbusGateway", "cause_of", "rtu_frame_sizes"]
