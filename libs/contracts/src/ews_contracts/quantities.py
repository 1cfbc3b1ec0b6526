"""Canonical quantities and their fixed units (one sign convention: import positive)."""

from __future__ import annotations

from enum import StrEnum


class Quantity(StrEnum):
    """Every measured value is published under one of these names, in the unit of ``UNITS``."""

    ENERGY_ACTIVE_IMPORT = "energy_active_import"  # Ea+
    ENERGY_ACTIVE_EXPORT = "energy_active_export"  # Ea-
    ENERGY_REACTIVE_IMPORT = "energy_reactive_import"  # Er+
    ENERGY_REACTIVE_EXPORT = "energy_reactive_export"  # Er-
    ENERGY_APPARENT = "energy_apparent"
    POWER_ACTIVE = "power_active"
    POWER_REACTIVE = "power_reactive"
    POWER_APPARENT = "power_apparent"
    POWER_FACTOR = "power_factor"
    VOLTAGE_L1 = "voltage_l1"
    VOLTAGE_L2 = "voltage_l2"
    VOLTAGE_L3 = "voltage_l3"
    VOLTAGE_L12 = "voltage_l12"
    VOLTAGE_L23 = "voltage_l23"
    VOLTAGE_L31 = "voltage_l31"
    CURRENT_L1 = "current_l1"
    CURRENT_L2 = "current_l2"
    CURRENT_L3 = "current_l3"
    CURRENT_N = "current_n"
    FREQUENCY = "frequency"
    THD_VOLTAGE_L1 = "thd_voltage_l1"
    THD_VOLTAGE_L2 = "thd_voltage_l2"
    THD_VOLTAGE_L3 = "thd_voltage_l3"
    THD_CURRENT_L1 = "thd_current_l1"
    THD_CURRENT_L2 = "thd_current_l2"
    THD_CURRENT_L3 = "thd_current_l3"
    WATER_VOLUME = "water_volume"
    GAS_VOLUME = "gas_volume"
    PULSE_COUNT = "pulse_count"
    CURRENT_RATED = "current_rated"


_UNITS: dict[str, str] = {
    "energy_active": "Wh",
    "energy_reactive": "varh",
    "energy_apparent": "VAh",
    "power_active": "W",
    "power_reactive": "var",
    "power_apparent": "VA",
    "power_factor": "",
    "voltage": "V",
    "current": "A",
    "frequency": "Hz",
    "thd": "%",
    "water_volume": "dm³",
    "gas_volume": "dm³",
    "pulse_count": "",
}


def unit_of(quantity: Quantity | str) -> str:
    """The fixed canonical unit of a quantity (by longest matching prefix)."""
    name = str(quantity)
    for prefix in sorted(_UNITS, key=len, reverse=True):
        if name.startswith(prefix):
            return _UNITS[prefix]
    raise KeyError(name)


# Cumulative counters: the aggregator turns these into interval consumption.
COUNTERS: frozenset[Quantity] = frozenset(
    {
        Quantity.ENERGY_ACTIVE_IMPORT,
        Quantity.ENERGY_ACTIVE_EXPORT,
        Quantity.ENERGY_REACTIVE_IMPORT,
        Quantity.ENERGY_REACTIVE_EXPORT,
        Quantity.ENERGY_APPARENT,
        Quantity.WATER_VOLUME,
        Quantity.GAS_VOLUME,
    }
)
