"""Canonical quantities and their fixed units (one sign convention: import positive).

Every measured value is published under one ``Quantity`` name, in the unit ``unit_of`` gives. The
``group_of`` a quantity names the table it belongs to on a device's Measure tab (M3).
"""

from __future__ import annotations

from enum import StrEnum

PHASES = ("l1", "l2", "l3")
HARMONIC_RANKS = tuple(range(2, 16))  # H2 … H15, % of the fundamental


def _members() -> dict[str, str]:
    names = [
        "energy_active_import",  # Ea+
        "energy_active_export",  # Ea-
        "energy_reactive_import",  # Er+
        "energy_reactive_export",  # Er-
        "energy_apparent",  # apparent energy, import (name kept from schema version 1)
        "energy_apparent_export",
        "power_active",
        "power_reactive",
        "power_apparent",
        "power_factor",
        *(f"power_active_{p}" for p in PHASES),
        *(f"power_reactive_{p}" for p in PHASES),
        *(f"power_apparent_{p}" for p in PHASES),
        *(f"power_factor_{p}" for p in PHASES),
        *(f"voltage_{p}" for p in PHASES),
        "voltage_l12",
        "voltage_l23",
        "voltage_l31",
        *(f"current_{p}" for p in PHASES),
        "current_n",
        "residual_current",  # earth-leakage current of an RCD (A)
        "frequency",
        *(f"thd_voltage_{p}" for p in PHASES),
        *(f"thd_current_{p}" for p in PHASES),
        *(f"harmonic_voltage_{p}_h{n}" for p in PHASES for n in HARMONIC_RANKS),
        *(f"harmonic_current_{p}_h{n}" for p in PHASES for n in HARMONIC_RANKS),
        "water_volume",
        "gas_volume",
        "pulse_count",
        "current_rated",
        *(f"analog_input_{n}" for n in range(1, 9)),
    ]
    return {name.upper(): name for name in names}


# A StrEnum built from the table above: ``Quantity.ENERGY_ACTIVE_IMPORT == "energy_active_import"``.
Quantity = StrEnum("Quantity", _members(), module=__name__)  # type: ignore[misc]
Quantity.__doc__ = "Every measured value is published under one of these names, in the unit of ``unit_of``."

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
    "residual_current": "A",
    "frequency": "Hz",
    "thd": "%",
    "harmonic": "%",
    "water_volume": "dm³",
    "gas_volume": "dm³",
    "pulse_count": "",
    "analog_input": "",  # the engineering value the installer scaled the input to
}


def unit_of(quantity: Quantity | str) -> str:
    """The fixed canonical unit of a quantity (by longest matching prefix)."""
    name = str(quantity)
    for prefix in sorted(_UNITS, key=len, reverse=True):
        if name.startswith(prefix):
            return _UNITS[prefix]
    raise KeyError(name)


# Measure-tab tables (M3), in display order: group -> name prefixes.
GROUPS: dict[str, tuple[str, ...]] = {
    "energy": ("energy_",),
    "power": ("power_",),
    "voltage": ("voltage_",),
    "current": ("current_", "residual_current"),
    "frequency": ("frequency",),
    "thd": ("thd_",),
    "harmonics": ("harmonic_",),
    "water": ("water_",),
    "gas": ("gas_",),
    "pulses": ("pulse_",),
    "inputs": ("analog_input_",),
}


def group_of(quantity: Quantity | str) -> str:
    """The Measure-tab table a quantity is shown in (``energy``, ``power``, ``voltage`` …)."""
    name = str(quantity)
    best, length = "other", 0
    for group, prefixes in GROUPS.items():
        for prefix in prefixes:
            if name.startswith(prefix) and len(prefix) > length:
                best, length = group, len(prefix)
    return best


# Cumulative counters: the aggregator turns these into interval consumption.
COUNTERS: frozenset[Quantity] = frozenset(
    {
        Quantity.ENERGY_ACTIVE_IMPORT,
        Quantity.ENERGY_ACTIVE_EXPORT,
        Quantity.ENERGY_REACTIVE_IMPORT,
        Quantity.ENERGY_REACTIVE_EXPORT,
        Quantity.ENERGY_APPARENT,
        Quantity.ENERGY_APPARENT_EXPORT,
        Quantity.WATER_VOLUME,
        Quantity.GAS_VOLUME,
    }
)
