"""Prices: which counters are priced, the price of an hour (tariff history, time-of-use), standing charges.

Canonical units are Wh and dm³; prices are per kWh and per m³, so the money for ``value`` canonical
units is ``value / 1000 × price``. A tariff applies from its ``effective_from`` local date; an hour is
priced by the tariff in force on its local date and by the time-of-use window containing its local
start time (hours are the storage grain, so windows are whole hours).

One rule for the hours before the first tariff (``tariff_in_force``): no price is in force before its
``effective_from``, so those hours cost 0 (the queries mark them ``unpriced``) and carry no standing
charge. The aggregator prices hours with it at ingest (``PriceBook``), the queries add the standing
charges with it (``standing_charges``): ``ews replay`` rebuilds the same costs.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from ews_contracts.quantities import Quantity
from ews_contracts.site import Device, Site, Tariff

# quantity -> the tariff field pricing one kWh / one m³ of it
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
QUANTITY_MEDIUM: dict[str, str] = {str(q): m for m, q in MEDIUM_QUANTITY.items()}

# medium -> the tariff field of its daily standing charge
STANDING_FIELD: dict[str, str] = {
    "electricity": "electricity_standing_per_day",
    "water": "water_standing_per_day",
    "gas": "gas_standing_per_day",
}


def cost_of(quantity: str, value: float, tariff: Tariff, weekday: int = 0, hour: int = 12) -> float:
    """Money for ``value`` (canonical unit) of ``quantity`` at a local weekday/hour; 0 if not priced."""
    field = PRICE_FIELD.get(quantity)
    if field is None:
        return 0.0
    return value / 1000.0 * tariff.price(field, weekday, hour)


def priced_from(site: Site) -> date:
    """The first local date with a price: the first tariff's ``effective_from``."""
    return site.tariffs[0].effective_from


def tariff_in_force(site: Site, day: date) -> Tariff | None:
    """The tariff in force on a local date; None before the first tariff (nothing is priced then)."""
    if day < priced_from(site):
        return None
    return site.tariff_on(day)


def medium_of(device: Device) -> str:
    """electricity, water or gas: pulse meters declare it, every other device meters electricity."""
    return device.medium or "electricity"


class PriceBook:
    """Price per canonical unit of a counter for a UTC hour, cached (the aggregator asks per row)."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self._cache: dict[tuple[str, int], float] = {}

    def per_unit(self, quantity: str, hour_epoch: int) -> float:
        """Money per Wh / dm³ of ``quantity`` in the UTC hour starting at ``hour_epoch`` (seconds)."""
        key = (quantity, hour_epoch)
        price = self._cache.get(key)
        if price is None:
            field = PRICE_FIELD.get(quantity)
            if field is None:
                price = 0.0
            else:
                local = datetime.fromtimestamp(hour_epoch, UTC).astimezone(self.site.tz)
                tariff = tariff_in_force(self.site, local.date())
                price = 0.0 if tariff is None else tariff.price(field, local.weekday(), local.hour) / 1000.0
            if len(self._cache) > 200_000:
                self._cache.clear()
            self._cache[key] = price
        return price


def standing_charges(
    site: Site, media: tuple[str, ...], start: date, end: date, today: date
) -> dict[date, float]:
    """Daily standing charges of ``media`` for each local date in ``[start, end)``, counted from the
    first tariff's date (``tariff_in_force``) up to ``today`` (never for future days)."""
    out: dict[date, float] = {}
    if not media:
        return out
    day = max(start, priced_from(site))
    stop = min(end, today + timedelta(days=1))
    # the tariff in force changes only on an effective_from date: price each run of days once
    changes = sorted({t.effective_from for t in site.tariffs if day < t.effective_from < stop})
    one = timedelta(days=1)
    for first, until in zip([day, *changes], [*changes, stop], strict=True):
        tariff = tariff_in_force(site, first)
        charge = sum(float(getattr(tariff, STANDING_FIELD[m])) for m in media) if tariff else 0.0
        if charge:
            d = first
            while d < until:
                out[d] = charge
                d += one
    return out
