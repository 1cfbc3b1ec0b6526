"""Read side: consumption histograms for the gateway-api (the aggregator writes ``energy_hourly``).

``consumption(store, database, site, scope, period, day)`` sums ``energy_hourly FINAL`` into
site-local buckets: ``day`` = hours (23 or 25 on DST days), ``month`` = days, ``year`` = months,
``decade`` = the 10 years ending with ``day``'s year. ``previous`` is the preceding period's total.

Scopes:
- ``total-electricity``: Ea+ (Wh) of every electricity device (pulse meters with medium electricity
  too) not ``exclude_from_total``.
- ``total-global``: electricity + gas + water in money: ``value`` and ``unit`` are the currency,
  ``cost`` the same sum (devices not ``exclude_from_total``).
- ``zone:<id>`` / ``circuit:<id>``: Ea+ (Wh) of the electricity devices in it (a device is in a
  zone directly or through its circuit); a zone/circuit without electricity devices gives dm³ of its
  one medium (water or gas), or money when it mixes water and gas.
- ``device:<id>``: Ea+ (Wh) for an electricity device, dm³ for a water or gas meter.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from ews_contracts.quantities import unit_of
from ews_contracts.site import Device, Site
from ews_contracts.store import Store
from pydantic import BaseModel, Field

from .costs import MEDIUM_QUANTITY, medium_of
from .schema import ENERGY_HOURLY, table

Period = Literal["day", "month", "year", "decade"]
PERIODS: tuple[str, ...] = ("day", "month", "year", "decade")
SCOPE_HELP = "total-electricity, total-global, zone:<id>, circuit:<id> or device:<id>"
DIGITS = 6  # rounding of values and costs (removes float noise, keeps far more than instruments give)


class Bucket(BaseModel):
    start: datetime = Field(description="Start of the bucket in the site's local time, with its UTC offset.")
    value: float
    unit: str = Field(examples=["Wh", "dm³", "EUR"])
    cost: float = Field(description="Cost in the site's currency.")


class Total(BaseModel):
    value: float
    unit: str
    cost: float
    currency: str = Field(examples=["EUR"])


class PreviousTotal(BaseModel):
    total: Total


class Consumption(BaseModel):
    scope: str = Field(examples=["total-electricity", "zone:building", "device:m1"])
    period: Period
    unit: str = Field(description="Unit of every value: Wh, dm³, or the currency for total-global.")
    currency: str
    buckets: list[Bucket]
    total: Total
    previous: PreviousTotal = Field(description="Total of the preceding period (yesterday, last month ...).")


# --- scopes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """What a scope sums: counter quantity -> device ids; in money when ``in_currency``."""

    unit: str
    in_currency: bool
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _group(devices: Iterable[Device]) -> dict[str, tuple[str, ...]]:
    groups: dict[str, list[str]] = {}
    for d in devices:
        groups.setdefault(MEDIUM_QUANTITY[medium_of(d)], []).append(d.id)
    return {q: tuple(ids) for q, ids in groups.items()}


def _partial(devices: list[Device], currency: str) -> Selection:
    electric = [d for d in devices if medium_of(d) == "electricity"]
    if electric or not devices:
        return Selection("Wh", False, _group(electric))
    groups = _group(devices)
    if len(groups) == 1:
        quantity = next(iter(groups))
        return Selection(unit_of(quantity), False, groups)
    return Selection(currency, True, groups)


def resolve_scope(site: Site, scope: str) -> Selection:
    """The devices and quantities a scope sums; ValueError naming the problem otherwise."""
    counted = [d for d in site.devices if not d.exclude_from_total]
    if scope == "total-electricity":
        return Selection("Wh", False, _group(d for d in counted if medium_of(d) == "electricity"))
    if scope == "total-global":
        return Selection(site.currency, True, _group(counted))
    kind, sep, ident = scope.partition(":")
    if not sep or kind not in ("zone", "circuit", "device") or not ident:
        raise ValueError(f"unknown scope {scope!r}: use {SCOPE_HELP}")
    if kind == "device":
        device = site.device(ident)
        if device is None:
            known = ", ".join(d.id for d in site.devices)
            raise ValueError(f"unknown device {ident!r} in scope {scope!r}: use one of {known}")
        quantity = MEDIUM_QUANTITY[medium_of(device)]
        return Selection(unit_of(quantity), False, {quantity: (device.id,)})
    if kind == "circuit":
        if ident not in {c.id for c in site.circuits}:
            known = ", ".join(c.id for c in site.circuits) or "none declared"
            raise ValueError(f"unknown circuit {ident!r} in scope {scope!r}: use one of {known}")
        return _partial([d for d in site.devices if d.circuit == ident], site.currency)
    if ident not in {z.id for z in site.zones}:
        known = ", ".join(z.id for z in site.zones) or "none declared"
        raise ValueError(f"unknown zone {ident!r} in scope {scope!r}: use one of {known}")
    circuit_zone = {c.id: c.zone for c in site.circuits}
    members = [
        d for d in site.devices if d.zone == ident or (d.circuit and circuit_zone.get(d.circuit) == ident)
    ]
    return _partial(members, site.currency)


# --- periods ---------------------------------------------------------------------------------------


def _check_period(period: str) -> None:
    if period not in PERIODS:
        raise ValueError(f"unknown period {period!r}: use day, month, year or decade")


def _add_months(d: date, months: int) -> date:
    index = d.year * 12 + d.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def period_range(period: str, day: date) -> tuple[date, date]:
    """[first local date, first local date after) of the period containing ``day``."""
    _check_period(period)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "month":
        start = day.replace(day=1)
        return start, _add_months(start, 1)
    if period == "year":
        return date(day.year, 1, 1), date(day.year + 1, 1, 1)
    return date(day.year - 9, 1, 1), date(day.year + 1, 1, 1)


def previous_day(period: str, day: date) -> date:
    """A date inside the period preceding the one containing ``day``."""
    _check_period(period)
    if period == "day":
        return day - timedelta(days=1)
    if period == "month":
        return day.replace(day=1) - timedelta(days=1)
    if period == "year":
        return date(day.year - 1, 1, 1)
    return date(day.year - 10, 1, 1)


def local_midnight_utc(d: date, site: Site) -> datetime:
    return datetime.combine(d, time(0), tzinfo=site.tz).astimezone(UTC)


def bucket_starts(period: str, day: date, site: Site) -> list[tuple[Hashable, datetime]]:
    """(SQL bucket key, local start) of every bucket of the period, in order."""
    start, end = period_range(period, day)
    tz = site.tz
    out: list[tuple[Hashable, datetime]] = []
    if period == "day":
        t, stop = local_midnight_utc(start, site), local_midnight_utc(end, site)
        while t < stop:
            out.append((int(t.timestamp()), t.astimezone(tz)))
            t += timedelta(hours=1)
        return out
    d = start
    while d < end:
        out.append((d, datetime.combine(d, time(0), tzinfo=tz)))
        d = d + timedelta(days=1) if period == "month" else _add_months(d, 1 if period == "year" else 12)
    return out


# SQL expression of the bucket key of an hour row (matches ``bucket_starts``' keys)
_BUCKET_SQL: dict[str, str] = {
    "day": "toUnixTimestamp(hour)",
    "month": "toDate(hour, {tz:String})",
    "year": "toStartOfMonth(toDate(hour, {tz:String}))",
    "decade": "toStartOfYear(toDate(hour, {tz:String}))",
}


def _key(period: str, raw: Any) -> Hashable:
    if period == "day":
        return int(raw)
    if isinstance(raw, datetime):
        return raw.date()
    return raw


# --- query -----------------------------------------------------------------------------------------


async def _sums(
    store: Store, database: str, site: Site, selection: Selection, period: str, day: date, by_bucket: bool
) -> dict[Hashable, tuple[float, float]]:
    """bucket key (or None) -> (sum of value, sum of cost) over the selection."""
    if not selection.groups:
        return {}
    start, end = period_range(period, day)
    params: dict[str, Any] = {
        "site": site.site,
        "start": local_midnight_utc(start, site).replace(tzinfo=None),
        "end": local_midnight_utc(end, site).replace(tzinfo=None),
        "tz": site.timezone,
    }
    ors = []
    for n, (quantity, devices) in enumerate(sorted(selection.groups.items())):
        params[f"q{n}"] = str(quantity)
        params[f"d{n}"] = list(devices)
        ors.append(f"(quantity = {{q{n}:String}} AND device IN {{d{n}:Array(String)}})")
    key = _BUCKET_SQL[period] if by_bucket else "0"
    sql = (
        f"SELECT {key} AS b, sum(value), sum(cost) FROM {table(database, ENERGY_HOURLY)} FINAL "
        "WHERE site = {site:String} AND hour >= {start:DateTime('UTC')} AND hour < {end:DateTime('UTC')} "
        f"AND ({' OR '.join(ors)}) GROUP BY b"
    )
    rows = await store.query(sql, params)
    return {(_key(period, r[0]) if by_bucket else None): (float(r[1]), float(r[2])) for r in rows}


def _pick(selection: Selection) -> Callable[[tuple[float, float]], float]:
    return (lambda vc: vc[1]) if selection.in_currency else (lambda vc: vc[0])


async def consumption(
    store: Store, database: str, site: Site, scope: str, period: str, day: date
) -> Consumption:
    """Histogram of ``scope`` over the ``period`` containing ``day`` (site-local), with the previous total.

    Raises ValueError (one line naming the problem and the fix) for a bad scope, period or id.
    """
    _check_period(period)
    selection = resolve_scope(site, scope)
    value_of = _pick(selection)
    sums = await _sums(store, database, site, selection, period, day, by_bucket=True)
    buckets = []
    for key, start in bucket_starts(period, day, site):
        vc = sums.get(key, (0.0, 0.0))
        buckets.append(
            Bucket(
                start=start, value=round(value_of(vc), DIGITS), unit=selection.unit, cost=round(vc[1], DIGITS)
            )
        )
    total = Total(
        value=round(sum(b.value for b in buckets), DIGITS),
        unit=selection.unit,
        cost=round(sum(b.cost for b in buckets), DIGITS),
        currency=site.currency,
    )
    before = await _sums(store, database, site, selection, period, previous_day(period, day), by_bucket=False)
    vc = before.get(None, (0.0, 0.0))
    previous = Total(
        value=round(value_of(vc), DIGITS),
        unit=selection.unit,
        cost=round(vc[1], DIGITS),
        currency=site.currency,
    )
    return Consumption(
        scope=scope,
        period=period,  # type: ignore[arg-type]
        unit=selection.unit,
        currency=site.currency,
        buckets=buckets,
        total=total,
        previous=PreviousTotal(total=previous),
    )


__all__ = [
    "Bucket",
    "Consumption",
    "PERIODS",
    "PreviousTotal",
    "Selection",
    "Total",
    "bucket_starts",
    "consumption",
    "period_range",
    "previous_day",
    "resolve_scope",
]
