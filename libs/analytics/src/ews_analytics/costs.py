"""Which counters are priced, and how: value in Wh or dm³ -> money with the tariff of a local date."""

from __future__ import annotations

from ews_contracts.quantities import Quantity
from ews_contracts.site import Device, Tariff

# quantity -> the tariff field pricing one kWh / one m³ of it (canonical units are Wh and dm³: / 1000)
PRICE_FIELD: dict[str, str] = {
    Quantity.ENERGY_ACTIVE_IMPORT: "electricity_per_kwh",
    Quantity.WATER_VOLUME: "water_per_m3",
    Quantity.GAS_VOLUME: "gas_per_m3",
}

# medium of a device -> the counter that measures its consumption
MEDIUM_QUANTITY: dict[str, str] = {
    "electricity": Quantity.ENERGY_ACTIVE_IMPORT,
    "water": Quantity.WATER_VOLUME,
    "gas": Quantity.GAS_VOLUME,
}


def cost_of(quantity: str, value: float, tariff: Tariff) -> float:
    """Money for ``value`` (canonical unit) of ``quantity``; 0 for counters that are not priced."""
    field = PRICE_FIELD.get(quantity)
    if field is None:
        return 0.0
    return value / 1000.0 * float(getattr(tariff, field))


def medium_of(device: Device) -> str:
    """electricity, water or gas: pulse meters declare it, every other device meters electricity."""
    return device.medium or "electricity"
