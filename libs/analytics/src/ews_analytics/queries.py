"""Read side: consumption histograms and comparisons for the gateway-api (the aggregator writes).

``consumption(store, database, site, scope, period, day)`` sums the rollup of the period's grain in
site-local buckets: ``day`` = hours from ``consumption_hourly`` (23 or 25 on DST days), ``month`` =
days from ``consumption_daily``, ``year`` = months and ``decade`` = years (the 10 years ending with
``day``'s year) from ``consumption_monthly``. One query returns the buckets and the previous period's
total (C3).

Scopes (a scope is a linear combination of real devices: virtual devices are master − Σ slaves):
- ``total-electricity``: Ea+ (Wh) of every electricity device and virtual device not
  ``exclude_from_total``, plus the electricity standing charge in the cost.
- ``total-global``: electricity + gas + water in money (``value`` and ``unit`` are the currency),
  standing charges included; ``parts`` breaks it down per medium (the pie chart is on the money).
- ``zone:<id>`` / ``circuit:<id>`` / ``panel:<id>`` / ``gateway:<id>``: Ea+ (Wh) of the electricity
  devices in it (a device is in a zone directly or through its circuit); without electricity devices,
  dm³ of its one medium (water or gas), or money when it mixes water and gas.
- ``device:<id>``: Ea+ (Wh) for an electricity device, dm³ for a water or gas meter; a virtual
  device's id works too.

Values are exact: the store keeps integer milli-units. ``estimated`` (only when non-zero) is the part
of a value spread pro rata over a gap in the readings; ``wh_equivalent`` (gas only) is the volume ×
the site's ``gas_wh_per_dm3``.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from ews_contracts.quantities import unit_of
from ews_contracts.site import Site
from ews_contracts.store import Store
from pydantic import BaseModel, Field, model_serializer

from .costs import MEDIUM_QUANTITY, QUANTITY_MEDIUM, medium_of, standing_charges
from .schema import DAILY, HOURLY, MONTHLY, table

Period = Literal["day", "month", "year", "decade"]
PERIODS: tuple[str, ...] = ("day", "month", "year", "decade")
SCOPE_HELP = (
    "total-electricity, total-global, zone:<id>, circuit:<id>, panel:<id>, gateway:<id> or device:<id>"
)
DIGITS = 6  # rounding of values and costs (removes float noise, keeps far more than instruments give)
MILLI = 1000


class _Compact(BaseModel):
    """Optional fields (None) are left out of the JSON: they appear only where they apply."""

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


class Bucket(_Compact):
    start: datetime = Field(description="Start of the bucket in the site's local time, with its UTC offset.")
    value: float
    unit: str = Field(examples=["Wh", "dm³", "EUR"])
    cost: float = Field(description="Cost in the site's currency (standing charges included for totals).")
    estimated: float | None = Field(
        default=None, description="Part of value spread pro rata over a gap in the readings (when any)."
    )
    wh_equivalent: float | None = Field(default=None, description="Gas only: value × gas_wh_per_dm3.")


class Total(_Compact):
    value: float
    unit: str
    cost: float
    currency: str = Field(examples=["EUR"])
    estimated: float | None = None
    wh_equivalent: float | None = None
    standing_charge: float | None = Field(
        default=None, description="Daily standing charges included in cost (site totals only)."
    )


class PreviousTotal(BaseModel):
    total: Total


class Part(_Compact):
    """One medium of total-global: its own units and its money."""

    medium: Literal["electricity", "water", "gas"]
    value: float
    unit: str
    cost: float
    wh_equivalent: float | None = None


class Consumption(BaseModel):
    scope: str = Field(examples=["total-electricity", "zone:building", "device:m1"])
    period: Period
    unit: str = Field(description="Unit of every value: Wh, dm³, or the currency for total-global.")
    currency: str
    buckets: list[Bucket]
    total: Total
    previous: PreviousTotal = Field(description="Total of the preceding period (yesterday, last month ...).")
    parts: list[Part] = Field(default_factory=list, description="total-global: per medium (pie chart).")


# --- scopes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """What a scope sums: counter quantity -> {real device id: coefficient}; in money when ``in_currency``.

    ``standing`` lists the media whose daily standing charges the scope carries (site totals only).
    """

    unit: str
    in_currency: bool
    groups: dict[str, dict[str, int]] = field(default_factory=dict)
    standing: tuple[str, ...] = ()

    @property
    def quantity(self) -> str | None:
        """The one counter this selection sums, if it sums only one."""
        return next(iter(self.groups)) if len(self.groups) == 1 else None


@dataclass(frozen=True)
class Member:
    """A real or virtual device: its medium and its expansion into real devices."""

    id: str
    medium: str
    terms: dict[str, int]
    panel: str | None
    zone: str | None
    circuit: str | None
    gateway: str | None
    exclude_from_total: bool


def members(site: Site) -> dict[str, Member]:
    """Every device and virtual device of the site, virtual ones expanded (master − Σ slaves)."""
    out: dict[str, Member] = {}
    for d in site.devices:
        out[d.id] = Member(
            d.id, medium_of(d), {d.id: 1}, d.panel, d.zone, d.circuit, d.gateway, d.exclude_from_total
        )
    for v in site.virtual_devices:
        terms: dict[str, int] = dict(out[v.master].terms)
        for slave in v.slaves:
            for dev, coef in out[slave].terms.items():
                terms[dev] = terms.get(dev, 0) - coef
        terms = {k: c for k, c in terms.items() if c}
        out[v.id] = Member(
            v.id, out[v.master].medium, terms, v.panel, v.zone, v.circuit, None, v.exclude_from_total
        )
    return out


def _group(items: list[Member]) -> dict[str, dict[str, int]]:
    groups: dict[str, dict[str, int]] = {}
    for m in items:
        group = groups.setdefault(MEDIUM_QUANTITY[m.medium], {})
        for dev, coef in m.terms.items():
            group[dev] = group.get(dev, 0) + coef
    return {q: {d: c for d, c in g.items() if c} for q, g in groups.items()}


def _partial(items: list[Member], currency: str) -> Selection:
    electric = [m for m in items if m.medium == "electricity"]
    if electric or not items:
        return Selection("Wh", False, _group(electric))
    groups = _group(items)
    if len(groups) == 1:
        return Selection(unit_of(next(iter(groups))), False, groups)
    return Selection(currency, True, groups)


def _known(kind: str, ident: str, scope: str, ids: list[str]) -> None:
    if ident not in ids:
        known = ", ".join(ids) or "none declared"
        raise ValueError(f"unknown {kind} {ident!r} in scope {scope!r}: use one of {known}")


def resolve_scope(site: Site, scope: str) -> Selection:
    """The devices and quantities a scope sums; ValueError naming the problem otherwise."""
    every = members(site)
    counted = [m for m in every.values() if not m.exclude_from_total]
    if scope == "total-electricity":
        return Selection(
            "Wh", False, _group([m for m in counted if m.medium == "electricity"]), ("electricity",)
        )
    if scope == "total-global":
        return Selection(site.currency, True, _group(counted), ("electricity", "water", "gas"))
    kind, sep, ident = scope.partition(":")
    if not sep or kind not in ("zone", "circuit", "panel", "gateway", "device") or not ident:
        raise ValueError(f"unknown scope {scope!r}: use {SCOPE_HELP}")
    if kind == "device":
        _known("device", ident, scope, list(every))
        m = every[ident]
        quantity = MEDIUM_QUANTITY[m.medium]
        return Selection(unit_of(quantity), False, _group([m]))
    if kind == "circuit":
        _known("circuit", ident, scope, [c.id for c in site.circuits])
        return _partial([m for m in every.values() if m.circuit == ident], site.currency)
    if kind == "panel":
        _known("panel", ident, scope, [p.id for p in site.panels])
        return _partial([m for m in every.values() if m.panel == ident], site.currency)
    if kind == "gateway":
        _known("gateway", ident, scope, [g.id for g in site.gateways])
        return _partial([m for m in every.values() if m.gateway == ident], site.currency)
    _known("zone", ident, scope, [z.id for z in site.zones])
    circuit_zone = {c.id: c.zone for c in site.circuits}
    inside = [
        m for m in every.values() if m.zone == ident or (m.circuit and circuit_zone.get(m.circuit) == ident)
    ]
    return _partial(inside, site.currency)


def scope_kind(selection: Selection) -> str:
    """electricity, water, gas or money: what a scope's values are (for comparisons)."""
    if selection.in_currency:
        return "money"
    if selection.quantity is None:
        return "electricity"
    return QUANTITY_MEDIUM.get(selection.quantity, selection.quantity)


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


def bucket_of(period: str, d: date, site: Site) -> Hashable:
    """The bucket key a local date falls in (standing charges)."""
    if period == "month":
        return d
    if period == "year":
        return d.replace(day=1)
    return date(d.year, 1, 1)


# period -> (table, time column, SQL bucket key, SQL type of the bounds)
_GRAIN: dict[str, tuple[str, str, str, str]] = {
    "day": (HOURLY, "hour", "toUnixTimestamp(hour)", "DateTime('UTC')"),
    "month": (DAILY, "day", "day", "Date"),
    "year": (MONTHLY, "month", "month", "Date"),
    "decade": (MONTHLY, "month", "toStartOfYear(month)", "Date"),
}


def _key(period: str, raw: Any) -> Hashable:
    if period == "day":
        return int(raw)
    if isinstance(raw, datetime):
        return raw.date()
    return raw


def _bounds(period: str, d: date, site: Site) -> Any:
    return local_midnight_utc(d, site).replace(tzinfo=None) if period == "day" else d


# --- query -----------------------------------------------------------------------------------------

# (current period?, bucket key, quantity) -> [value milli, estimated milli, cost]
Sums = dict[tuple[bool, Hashable, str], list[float]]


async def _sums(
    store: Store, database: str, site: Site, selection: Selection, period: str, day: date
) -> Sums:
    """Sums of the period's buckets and of the previous period, per quantity, coefficients applied."""
    if not selection.groups:
        return {}
    name, column, key, kind = _GRAIN[period]
    start, end = period_range(period, day)
    prev_start, _ = period_range(period, previous_day(period, day))
    devices: list[str] = []
    coefs: list[int] = []
    params: dict[str, Any] = {
        "site": site.site,
        "from": _bounds(period, prev_start, site),
        "start": _bounds(period, start, site),
        "end": _bounds(period, end, site),
    }
    ors = []
    for n, (quantity, group) in enumerate(sorted(selection.groups.items())):
        if not group:
            continue
        params[f"q{n}"] = str(quantity)
        params[f"d{n}"] = list(group)
        ors.append(f"(quantity = {{q{n}:String}} AND device IN {{d{n}:Array(String)}})")
        devices.extend(group)
        coefs.extend(group.values())
    if not ors:
        return {}
    params["devs"], params["coefs"] = devices, coefs
    coef = "transform(toString(device), {devs:Array(String)}, {coefs:Array(Int64)}, toInt64(0))"
    sql = (
        f"SELECT {column} >= {{start:{kind}}} AS cur, {key} AS b, quantity, "
        f"sum(value_milli * {coef}), sum(estimated_milli * {coef}), sum(cost * {coef}) "
        f"FROM {table(database, name)} "
        f"WHERE site = {{site:String}} AND {column} >= {{from:{kind}}} AND {column} < {{end:{kind}}} "
        f"AND ({' OR '.join(ors)}) GROUP BY cur, b, quantity"
    )
    rows = await store.query(sql, params)
    out: Sums = {}
    for cur, b, quantity, value, estimated, cost in rows:
        out[(bool(cur), _key(period, b), str(quantity))] = [float(value), float(estimated), float(cost)]
    return out


def _r(x: float) -> float:
    return round(x, DIGITS) + 0.0  # + 0.0: no -0.0


def _standing(
    site: Site, selection: Selection, period: str, day: date, today: date
) -> tuple[dict[Hashable, float], float]:
    """Standing charges: per bucket key of the period, and the previous period's total."""
    start, end = period_range(period, day)
    prev_start, prev_end = period_range(period, previous_day(period, day))
    current = standing_charges(site, selection.standing, start, end, today)
    previous = sum(standing_charges(site, selection.standing, prev_start, prev_end, today).values())
    per_bucket: dict[Hashable, float] = {}
    if period == "day":
        hours = bucket_starts("day", day, site)
        charge = current.get(day, 0.0)
        for key, _ in hours:
            per_bucket[key] = charge / len(hours)
    else:
        for d, charge in current.items():
            k = bucket_of(period, d, site)
            per_bucket[k] = per_bucket.get(k, 0.0) + charge
    return per_bucket, previous


@dataclass
class _Acc:
    value: float = 0.0
    estimated: float = 0.0
    cost: float = 0.0


def _make_total(site: Site, selection: Selection, acc: _Acc, standing: float) -> Total:
    value = acc.cost + standing if selection.in_currency else acc.value
    gas = selection.quantity == MEDIUM_QUANTITY["gas"]
    return Total(
        value=_r(value),
        unit=selection.unit,
        cost=_r(acc.cost + standing),
        currency=site.currency,
        estimated=_r(acc.estimated) if acc.estimated and not selection.in_currency else None,
        wh_equivalent=_r(acc.value * site.gas_wh_per_dm3) if gas else None,
        standing_charge=_r(standing) if standing else None,
    )


async def consumption(
    store: Store,
    database: str,
    site: Site,
    scope: str,
    period: str,
    day: date,
    today: date | None = None,
) -> Consumption:
    """Histogram of ``scope`` over the ``period`` containing ``day`` (site-local), with the previous total.

    ``today`` (default: today in the site's zone) bounds the standing charges. Raises ValueError (one
    line naming the problem and the fix) for a bad scope, period or id.
    """
    _check_period(period)
    selection = resolve_scope(site, scope)
    today = today or datetime.now(site.tz).date()
    sums = await _sums(store, database, site, selection, period, day)
    standing, previous_standing = _standing(site, selection, period, day, today)
    gas = selection.quantity == MEDIUM_QUANTITY["gas"]

    per_bucket: dict[Hashable, _Acc] = {}
    previous, total = _Acc(), _Acc()
    parts: dict[str, _Acc] = {}
    for (cur, key, quantity), (value, estimated, cost) in sums.items():
        value, estimated = value / MILLI, estimated / MILLI
        acc = per_bucket.setdefault(key, _Acc()) if cur else previous
        acc.value += value
        acc.estimated += estimated
        acc.cost += cost
        if cur:
            part = parts.setdefault(quantity, _Acc())
            part.value += value
            part.cost += cost

    buckets = []
    for key, start in bucket_starts(period, day, site):
        acc = per_bucket.get(key, _Acc())
        charge = standing.get(key, 0.0)
        total.value += acc.value
        total.estimated += acc.estimated
        total.cost += acc.cost
        buckets.append(
            Bucket(
                start=start,
                value=_r(acc.cost + charge if selection.in_currency else acc.value),
                unit=selection.unit,
                cost=_r(acc.cost + charge),
                estimated=_r(acc.estimated) if acc.estimated and not selection.in_currency else None,
                wh_equivalent=_r(acc.value * site.gas_wh_per_dm3) if gas else None,
            )
        )
    result_parts: list[Part] = []
    if scope == "total-global":
        for medium in ("electricity", "gas", "water"):
            quantity = MEDIUM_QUANTITY[medium]
            acc = parts.get(quantity, _Acc())
            result_parts.append(
                Part(
                    medium=medium,  # type: ignore[arg-type]
                    value=_r(acc.value),
                    unit=unit_of(quantity),
                    cost=_r(acc.cost),
                    wh_equivalent=_r(acc.value * site.gas_wh_per_dm3) if medium == "gas" else None,
                )
            )
    return Consumption(
        scope=scope,
        period=period,  # type: ignore[arg-type]
        unit=selection.unit,
        currency=site.currency,
        buckets=buckets,
        total=_make_total(site, selection, total, sum(standing.values())),
        previous=PreviousTotal(total=_make_total(site, selection, previous, previous_standing)),
        parts=result_parts,
    )


# --- comparison (C4) -------------------------------------------------------------------------------


class Side(BaseModel):
    scope: str
    kind: str = Field(description="electricity, water, gas or money: what the scope meters.")
    buckets: list[Bucket] = Field(default_factory=list, description="Empty for detail=total.")
    total: Total
    previous: PreviousTotal


class Comparison(BaseModel):
    period: Period
    mode: Literal["units", "currency"] = Field(
        description="units when both scopes meter the same thing, else currency (values are money)."
    )
    unit: str
    currency: str
    detail: Literal["total", "detailed"]
    a: Side
    b: Side


def _in_currency(c: Consumption) -> Consumption:
    def money(x: Bucket | Total) -> Any:
        return x.model_copy(
            update={"value": x.cost, "unit": c.currency, "estimated": None, "wh_equivalent": None}
        )

    return c.model_copy(
        update={
            "unit": c.currency,
            "buckets": [money(b) for b in c.buckets],
            "total": money(c.total),
            "previous": PreviousTotal(total=money(c.previous.total)),
        }
    )


async def compare(
    store: Store,
    database: str,
    site: Site,
    a: str,
    b: str,
    period: str,
    day: date,
    detail: str = "detailed",
    today: date | None = None,
) -> Comparison:
    """Two scopes side by side (C4): in units when they meter the same thing, else in money only."""
    if detail not in ("total", "detailed"):
        raise ValueError(f"unknown detail {detail!r}: use total or detailed")
    kinds = (scope_kind(resolve_scope(site, a)), scope_kind(resolve_scope(site, b)))
    sides = [await consumption(store, database, site, s, period, day, today) for s in (a, b)]
    same = kinds[0] == kinds[1]
    if not same:
        sides = [_in_currency(s) for s in sides]
    out = [
        Side(
            scope=s.scope,
            kind=k,
            buckets=s.buckets if detail == "detailed" else [],
            total=s.total,
            previous=s.previous,
        )
        for s, k in zip(sides, kinds, strict=True)
    ]
    return Comparison(
        period=period,  # type: ignore[arg-type]
        mode="units" if same else "currency",
        unit=sides[0].unit,
        currency=site.currency,
        detail=detail,  # type: ignore[arg-type]
        a=out[0],
        b=out[1],
    )


__all__ = [
    "Bucket",
    "Comparison",
    "Consumption",
    "PERIODS",
    "Part",
    "PreviousTotal",
    "Selection",
    "Side",
    "Total",
    "bucket_starts",
    "compare",
    "consumption",
    "members",
    "period_range",
    "previous_day",
    "resolve_scope",
    "scope_kind",
]
