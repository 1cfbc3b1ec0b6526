"""Read side: consumption histograms and comparisons for the gateway-api (the aggregator writes).

``consumption(store, database, site, scope, period, day)`` sums the rollup of the period's grain in
site-local buckets: ``day`` = hours from ``consumption_hourly`` (23 or 25 on DST days), ``month`` =
days from ``consumption_daily``, ``year`` = months and ``decade`` = years (the 10 years ending with
``day``'s year) from ``consumption_monthly``. One query returns the buckets and the previous period's
total (C3). The answer of a period over before today is kept while the rows it read are unchanged, a
current period's while nothing is written (``cache.py``); scopes and standing charges are computed once
per Site object (``_SiteMemo``).

Scopes (a scope is a linear combination of real devices: virtual devices are master − Σ slaves):
- ``total-electricity``: Ea+ (Wh) of every electricity device and virtual device not
  ``exclude_from_total``, plus the electricity standing charge in the cost.
- ``total-global``: electricity + gas + water in money (``value`` and ``unit`` are the currency),
  standing charges included; ``parts`` breaks it down per medium (the pie chart is on the money).
- ``zone:<id>`` / ``circuit:<id>`` / ``panel:<id>`` / ``gateway:<id>``: the devices in it (a device is
  in a zone directly or through its circuit). One medium keeps its unit: Ea+ (Wh) for electricity, dm³
  for water or gas. Several media answer like ``total-global`` (without its standing charges): money,
  with ``parts`` per medium of the scope (its units, its money, the gas Wh equivalent).
- ``device:<id>``: Ea+ (Wh) for an electricity device, dm³ for a water or gas meter; a virtual
  device's id works too.

Pages: a bucket no rollup row covers has ``no_data: true`` (say "no data", do not draw 0);
``previous.buckets`` are the preceding period's buckets (same query); ``split="circuit"`` adds
``series`` (per circuit of the selection's members, exact in milli-units, scopes in units only);
``summary()`` gives today … last year from three queries; ``quantity_series()`` averages a real
device's raw ``readings`` (power, voltage …) per bucket. Dates must lie in MIN_DATE … MAX_DATE
(``check_day``); bounds beyond what the store's Date/DateTime columns hold are clamped (no rows there).

Unpriced: no price is in force before the first tariff's ``effective_from`` (``priced_from``): those
hours cost 0 (the aggregator prices them so at ingest, ``costs.tariff_in_force``) and carry no standing
charge; a bucket holding such consumption has ``unpriced: true``, and so has a total with such a bucket.

Values are exact: the store keeps integer milli-units. ``estimated`` (only when non-zero) is the part
of a value spread pro rata over a gap in the readings; ``wh_equivalent`` (gas only) is the volume ×
the site's ``gas_wh_per_dm3``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from typing import Any, Literal, TypeVar

from ews_contracts.quantities import Quantity, unit_of
from ews_contracts.site import Site
from ews_contracts.store import Store
from pydantic import BaseModel, Field, model_serializer

from .cache import cached_query
from .costs import MEDIUM_QUANTITY, QUANTITY_MEDIUM, medium_of, priced_from, standing_charges
from .schema import DAILY, HOURLY, MONTHLY, READINGS, table

T = TypeVar("T")


def N_(message: str) -> str:  # noqa: N802 — marks a message for the gateway's catalogues (make messages)
    return message


class Problem(ValueError):
    """A request the analytics cannot answer: a stable ``code``, an English ``message`` with
    ``%(name)s`` placeholders (translated by whoever shows it) and its ``params``; ``str()`` is the
    English sentence."""

    def __init__(self, code: str, message: str, **params: object) -> None:
        self.code, self.message, self.params = code, message, params
        super().__init__(message % params if params else message)


Period = Literal["day", "month", "year", "decade"]
PERIODS: tuple[str, ...] = ("day", "month", "year", "decade")
TOTAL_SCOPES: tuple[str, ...] = ("total-electricity", "total-global")
SCOPE_KINDS: tuple[str, ...] = ("zone", "circuit", "panel", "gateway", "device")  # <kind>:<id>
SCOPE_HELP = (
    ", ".join((*TOTAL_SCOPES, *(f"{k}:<id>" for k in SCOPE_KINDS[:-1]))) + f" or {SCOPE_KINDS[-1]}:<id>"
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
    no_data: bool | None = Field(
        default=None,
        description="True when no reading covered the bucket (future, before the first reading, meter "
        "down): show 'no data', not zero. value is then 0 (plus standing charges for money scopes).",
    )
    unpriced: bool | None = Field(
        default=None,
        description="True when some of the bucket's consumption is from before the first tariff's "
        "effective_from (priced_from): no price was in force, that part costs 0 (no standing charge).",
    )


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
    no_data: bool | None = Field(default=None, description="True when no bucket of the period has data.")
    unpriced: bool | None = Field(
        default=None, description="True when a bucket of the period is unpriced (before the first tariff)."
    )


class PreviousTotal(BaseModel):
    total: Total
    buckets: list[Bucket] = Field(
        default_factory=list,
        description="The preceding period's buckets (its own local starts; a month may have another length).",
    )


class Series(BaseModel):
    """One circuit's share of every bucket (split=circuit): the series of a bucket sum to its value."""

    key: str = Field(examples=["circuit:offices", "none"], description="circuit:<id>, or none (no circuit).")
    name: str = Field(description="The circuit's name, '' for devices without a circuit.")
    values: list[float | None] = Field(description="Aligned with buckets; None where the bucket has no data.")
    total: float
    cost: float = Field(description="Without standing charges (those belong to no circuit).")


class Part(_Compact):
    """One medium of a money scope (total-global, a scope mixing media): its own units and its money."""

    medium: Literal["electricity", "water", "gas"]
    value: float
    unit: str
    cost: float
    wh_equivalent: float | None = None


class Consumption(BaseModel):
    scope: str = Field(examples=["total-electricity", "zone:building", "device:m1"])
    period: Period
    unit: str = Field(
        description="Unit of every value: Wh, dm³, or the currency for total-global and scopes mixing media."
    )
    currency: str
    buckets: list[Bucket]
    total: Total
    previous: PreviousTotal = Field(description="Total of the preceding period (yesterday, last month ...).")
    parts: list[Part] = Field(
        default_factory=list,
        description="Money scopes (total-global, a zone, circuit, panel or gateway mixing media): per medium.",
    )
    priced_from: date = Field(
        description="The first tariff's effective_from: consumption before it is unpriced (cost 0)."
    )
    has_data: bool = Field(description="False when no bucket of the period has data.")
    series: list[Series] = Field(
        default_factory=list, description="split=circuit: the buckets split by circuit (stacked histogram)."
    )


# --- scopes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """What a scope sums: counter quantity -> {real device id: coefficient}; in money when ``in_currency``.

    ``standing`` lists the media whose daily standing charges the scope carries (site totals only);
    ``media`` the media a money scope breaks down into (its ``parts``).
    """

    unit: str
    in_currency: bool
    groups: dict[str, dict[str, int]] = field(default_factory=dict)
    standing: tuple[str, ...] = ()
    members: tuple[Member, ...] = ()
    media: tuple[str, ...] = ()

    @cached_property
    def devices(self) -> dict[str, dict[str, int]]:
        """The groups plus the devices whose coefficients cancel out (e + (s − e)): the rows to read
        (read only: computed once per selection)."""
        out = {q: dict(g) for q, g in self.groups.items()}
        for q, g in _group(list(self.members), keep_zero=True).items():
            if q in out:
                for dev in g:
                    out[q].setdefault(dev, 0)
        return out

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
    for r in site.retired_devices:  # removed, but their history still counts
        out[r.id] = Member(
            r.id, r.medium, {r.id: 1}, r.panel, r.zone, r.circuit, r.gateway, r.exclude_from_total
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


def _group(items: list[Member], keep_zero: bool = False) -> dict[str, dict[str, int]]:
    groups: dict[str, dict[str, int]] = {}
    for m in items:
        group = groups.setdefault(MEDIUM_QUANTITY[m.medium], {})
        for dev, coef in m.terms.items():
            group[dev] = group.get(dev, 0) + coef
    return {q: {d: c for d, c in g.items() if c or keep_zero} for q, g in groups.items()}


MEDIA: tuple[str, ...] = ("electricity", "gas", "water")  # the order of parts and medium series


def _partial(items: list[Member], currency: str) -> Selection:
    """A zone, circuit, panel or gateway: one medium in its unit (Wh without devices), several in money
    with their parts, like total-global (standing charges stay with the site totals)."""
    media = tuple(m for m in MEDIA if any(i.medium == m for i in items))
    if len(media) > 1:
        return Selection(currency, True, _group(items), members=tuple(items), media=media)
    quantity = MEDIUM_QUANTITY[media[0] if media else "electricity"]
    return Selection(unit_of(quantity), False, _group(items), members=tuple(items))


_UNKNOWN_IN_SCOPE = {
    "device": N_("unknown device %(value)s in scope %(scope)s: use one of %(choices)s"),
    "zone": N_("unknown zone %(value)s in scope %(scope)s: use one of %(choices)s"),
    "circuit": N_("unknown circuit %(value)s in scope %(scope)s: use one of %(choices)s"),
    "panel": N_("unknown panel %(value)s in scope %(scope)s: use one of %(choices)s"),
    "gateway": N_("unknown gateway %(value)s in scope %(scope)s: use one of %(choices)s"),
}


def _known(kind: str, ident: str, scope: str, ids: list[str]) -> None:
    if ident not in ids:
        known = ", ".join(ids) or "none declared"
        raise Problem(
            f"unknown-{kind}", _UNKNOWN_IN_SCOPE[kind], value=repr(ident), scope=repr(scope), choices=known
        )


class _SiteMemo:
    """Values computed from one Site object, kept while requests keep using that very object (a
    Site is frozen: a configuration change brings a new one, which starts an empty memo)."""

    def __init__(self, size: int = 512) -> None:
        self._site: Site | None = None
        self._values: dict[Hashable, Any] = {}
        self._size = size

    def get(self, site: Site, key: Hashable, compute: Callable[[], T]) -> T:
        if self._site is not site:
            self._site, self._values = site, {}
        try:
            return self._values[key]
        except KeyError:
            pass
        value = compute()
        if len(self._values) >= self._size:
            self._values.clear()
        self._values[key] = value
        return value


_memo = _SiteMemo()


def resolve_scope(site: Site, scope: str) -> Selection:
    """The devices and quantities a scope sums; ValueError naming the problem otherwise."""
    return _memo.get(site, ("scope", scope), lambda: _resolve_scope(site, scope))


def _resolve_scope(site: Site, scope: str) -> Selection:
    every = members(site)
    counted = [m for m in every.values() if not m.exclude_from_total]
    if scope == "total-electricity":
        electric = [m for m in counted if m.medium == "electricity"]
        return Selection("Wh", False, _group(electric), ("electricity",), tuple(electric))
    if scope == "total-global":
        return Selection(
            site.currency, True, _group(counted), ("electricity", "water", "gas"), tuple(counted), MEDIA
        )
    kind, sep, ident = scope.partition(":")
    if not sep or kind not in SCOPE_KINDS or not ident:
        raise Problem(
            "unknown-scope",
            N_("unknown scope %(value)s: use %(choices)s"),
            value=repr(scope),
            choices=SCOPE_HELP,
        )
    if kind == "device":
        _known("device", ident, scope, list(every))
        m = every[ident]
        quantity = MEDIUM_QUANTITY[m.medium]
        return Selection(unit_of(quantity), False, _group([m]), members=(m,))
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


MIN_DATE = date(1970, 1, 1)
MAX_DATE = date(2200, 12, 31)
SPLITS: tuple[str, ...] = ("circuit", "medium")
# what the store's columns can hold: DateTime (hours) and Date (days, months)
_MIN_HOUR, _MAX_HOUR = datetime(1970, 1, 1), datetime(2106, 2, 7, 6, 28, 15)
_MIN_DAY, _MAX_DAY = date(1970, 1, 1), date(2149, 6, 6)


def _check_period(period: str) -> None:
    if period not in PERIODS:
        raise Problem(
            "unknown-period",
            N_("unknown period %(value)s: use %(choices)s"),
            value=repr(period),
            choices="day, month, year, decade",
        )


def check_day(period: str, day: date) -> None:
    """ValueError naming the date and the allowed span when ``day`` or its period leaves
    [MIN_DATE, MAX_DATE] (the previous period may leave it: it then has no data)."""
    _check_period(period)
    span = f"{MIN_DATE.isoformat()} to {MAX_DATE.isoformat()}"
    if not MIN_DATE <= day <= MAX_DATE:
        raise Problem(
            "date-out-of-range",
            N_("date %(date)s is out of range: use a date from %(span)s"),
            date=day.isoformat(),
            span=span,
        )
    start, end = period_range(period, day)
    if start < MIN_DATE or end > MAX_DATE + timedelta(days=1):
        last = (end - timedelta(days=1)).isoformat()
        raise Problem(
            "period-out-of-range",
            N_(
                "the %(period)s of date %(date)s (%(start)s to %(end)s) leaves the allowed span %(span)s: "
                "use a later date or a shorter period"
            ),
            period=period,
            date=day.isoformat(),
            start=start.isoformat(),
            end=last,
            span=span,
        )


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


# period -> (table, time column, SQL bucket key, SQL type of the bounds, local date column)
_GRAIN: dict[str, tuple[str, str, str, str, str]] = {
    "day": (HOURLY, "hour", "toUnixTimestamp(hour)", "DateTime('UTC')", "day"),
    "month": (DAILY, "day", "day", "Date", "day"),
    "year": (MONTHLY, "month", "month", "Date", "month"),
    "decade": (MONTHLY, "month", "toStartOfYear(month)", "Date", "month"),
}


def _key(period: str, raw: Any) -> Hashable:
    if period == "day":
        return int(raw)
    if isinstance(raw, datetime):
        return raw.date()
    return raw


def _bounds(period: str, d: date, site: Site) -> Any:
    """A period bound as the SQL parameter, clamped to what the column type holds (no rows beyond)."""
    if period == "day":
        if d <= MIN_DATE:
            return _MIN_HOUR
        if d > _MAX_DAY:
            return _MAX_HOUR
        return min(max(local_midnight_utc(d, site).replace(tzinfo=None), _MIN_HOUR), _MAX_HOUR)
    return min(max(d, _MIN_DAY), _MAX_DAY)


# --- query -----------------------------------------------------------------------------------------


@dataclass
class _Acc:
    value: int = 0  # milli-units (exact)
    estimated: int = 0
    cost: float = 0.0

    def add(self, value: int, estimated: int, cost: float) -> None:
        self.value += value
        self.estimated += estimated
        self.cost += cost


@dataclass
class _Rows:
    """One query's answer. A key present = a rollup row exists (data), even if it sums to 0."""

    buckets: dict[tuple[bool, Hashable], _Acc] = field(default_factory=dict)  # (current?, key), coefs applied
    quantities: dict[str, _Acc] = field(default_factory=dict)  # current period, per quantity
    series: dict[tuple[str, Hashable], _Acc] = field(default_factory=dict)  # split: (series key, key)
    per_quantity: dict[tuple[str, Hashable], _Acc] = field(default_factory=dict)  # current: (quantity, key)
    unpriced: set[tuple[bool, Hashable]] = field(default_factory=set)  # (current?, key) with unpriced rows


def _series_key(m: Member) -> str:
    return f"circuit:{m.circuit}" if m.circuit else "none"


def _circuit_coefs(selection: Selection) -> dict[str, list[tuple[str, int]]]:
    """real device -> [(series key, coefficient)]: each member's terms added to the member's circuit."""
    coefs: dict[str, dict[str, int]] = {}
    for m in selection.members:
        key = _series_key(m)
        for dev, c in m.terms.items():
            per = coefs.setdefault(dev, {})
            per[key] = per.get(key, 0) + c
    return {dev: [(k, c) for k, c in per.items() if c] for dev, per in coefs.items()}


async def _rows(
    store: Store,
    database: str,
    site: Site,
    selection: Selection,
    period: str,
    day: date,
    split: bool,
    past: bool = False,
) -> _Rows:
    """One query: the period's buckets and the previous period's, coefficients applied; with ``split``,
    the current period per device (no coefficients) spread over the members' circuits here. With
    ``past`` (a period over), its answer is kept while its rows stay the same, otherwise while nothing
    is written (``cache.py``)."""
    out = _Rows()
    devices = selection.devices
    name, column, key, kind, local_date = _GRAIN[period]
    start, end = period_range(period, day)
    prev_start, _ = period_range(period, previous_day(period, day))
    priced = priced_from(site)
    params: dict[str, Any] = {
        "site": site.site,
        "from": _bounds(period, prev_start, site),
        "start": _bounds(period, start, site),
        "end": _bounds(period, end, site),
    }
    devs: list[str] = []
    coefs: list[int] = []
    ors = []
    for n, (quantity, group) in enumerate(sorted(devices.items())):
        if not group:
            continue
        params[f"q{n}"] = str(quantity)
        params[f"d{n}"] = list(group)
        ors.append(f"(quantity = {{q{n}:String}} AND device IN {{d{n}:Array(String)}})")
        devs.extend(group)
        coefs.extend(group.values())
    if not ors:
        return out
    params["devs"], params["coefs"] = devs, coefs
    coef = "transform(toString(device), {devs:Array(String)}, {coefs:Array(Int64)}, toInt64(0))"
    circuits = _circuit_coefs(selection) if split else {}
    if split:
        # Current period: a device counted once (coefficient 1) in one circuit is summed per circuit in
        # ClickHouse ("s:<series>"); any other device (a virtual device's member, a cancelled one) comes
        # back per device ("d:<device>") and is spread here. Previous period: coefficients applied.
        weight = {d: c for group in devices.values() for d, c in group.items()}
        simple = {
            d: per[0][0]
            for d, per in circuits.items()
            if len(per) == 1 and per[0][1] == 1 and weight.get(d) == 1
        }
        params["sdevs"], params["sseries"] = list(simple), list(simple.values())
        series_of = "transform(toString(device), {sdevs:Array(String)}, {sseries:Array(String)}, '')"
        factor = f"if(cur, toInt64(1), {coef})"
        select = f"if(cur, if({series_of} != '', concat('s:', {series_of}), concat('d:', toString(device))), '') AS grp, "
        group_by = ", grp"
    else:
        factor, select, group_by = coef, "", ""
    # every row the query reads lies in this span (what the cache checks for changes)
    span = f"site = {{site:String}} AND {column} >= {{from:{kind}}} AND {column} < {{end:{kind}}}"
    sql = (
        f"SELECT {column} >= {{start:{kind}}} AS cur, {key} AS b, quantity, {select}"
        f"sum(value_milli * {factor}), sum(estimated_milli * {factor}), sum(cost * {factor}), "
        f"min({local_date}) "
        f"FROM {table(database, name)} WHERE {span} AND ({' OR '.join(ors)}) "
        f"GROUP BY cur, b, quantity{group_by}"
    )
    result = await cached_query(store, database, name, sql, span, params, past)
    # rows dated before the first tariff are unpriced; a month row is wholly so before its month
    unpriced_before = priced if local_date == "day" else priced.replace(day=1)
    for row in result:
        cur, b, quantity = bool(row[0]), _key(period, row[1]), str(row[2])
        value, estimated, cost = int(row[-4]), int(row[-3]), float(row[-2])
        if _as_date(row[-1]) < unpriced_before:
            out.unpriced.add((cur, b))
        if split and cur and str(row[3]).startswith("s:"):  # a circuit's simple devices, summed by ClickHouse
            out.series.setdefault((str(row[3])[2:], b), _Acc()).add(value, estimated, cost)
        elif split and cur:
            device = str(row[3])[2:]
            for series_key, c in circuits.get(device, ()):
                out.series.setdefault((series_key, b), _Acc()).add(c * value, c * estimated, c * cost)
            c = devices.get(quantity, {}).get(device, 0)
            value, estimated, cost = c * value, c * estimated, c * cost
        out.buckets.setdefault((cur, b), _Acc()).add(value, estimated, cost)
        if cur:
            out.quantities.setdefault(quantity, _Acc()).add(value, estimated, cost)
            out.per_quantity.setdefault((quantity, b), _Acc()).add(value, estimated, cost)
    if local_date == "month" and priced.day != 1:
        dates = (prev_start, start, end)
        await _unpriced_days(store, database, site, period, dates, ors, params, out, past)
    return out


def _as_date(raw: Any) -> date:
    return raw.date() if isinstance(raw, datetime) else raw


async def _unpriced_days(
    store: Store,
    database: str,
    site: Site,
    period: str,
    span: tuple[date, date, date],
    ors: list[str],
    params: dict[str, Any],
    out: _Rows,
    past: bool,
) -> None:
    """Month rows cannot tell whether the month of the first tariff has consumption before it (the
    tariff starts mid-month): the daily rows of its first days can, for the selection's devices."""
    priced = priced_from(site)
    month = priced.replace(day=1)
    prev_start, start, end = span
    if not prev_start <= month < end:
        return
    span = "site = {site:String} AND day >= {month:Date} AND day < {priced:Date}"
    sql = f"SELECT count() FROM {table(database, DAILY)} WHERE {span} AND ({' OR '.join(ors)})"
    wanted = {k: v for k, v in params.items() if k == "site" or (k[:1] in "qd" and k[1:].isdigit())}
    rows = await cached_query(
        store, database, DAILY, sql, span, {**wanted, "month": month, "priced": priced}, past
    )
    if rows and int(rows[0][0]):
        key = month if period == "year" else date(month.year, 1, 1)
        out.unpriced.add((month >= start, key))


def _r(x: float) -> float:
    return round(x, DIGITS) + 0.0  # + 0.0: no -0.0


def _standing(
    site: Site, selection: Selection, period: str, day: date, today: date
) -> tuple[dict[Hashable, float], float]:
    """Standing charges of the period containing ``day``: per bucket key, and their total (read only:
    shared by the requests for the same period while the site is unchanged)."""
    if not selection.standing:
        return {}, 0
    start, end = period_range(period, day)
    stop = min(end, today + timedelta(days=1))  # standing_charges counts no day from ``stop`` on
    key = ("standing", selection.standing, period, start, stop)
    return _memo.get(site, key, lambda: _standing_charges(site, selection, period, day, today))


def _standing_charges(
    site: Site, selection: Selection, period: str, day: date, today: date
) -> tuple[dict[Hashable, float], float]:
    start, end = period_range(period, day)
    charges = standing_charges(site, selection.standing, start, end, today)
    per_bucket: dict[Hashable, float] = {}
    if period == "day":
        charge = charges.get(day, 0.0)
        if charge:
            hours = bucket_starts("day", day, site)
            for key, _ in hours:
                per_bucket[key] = charge / len(hours)
    else:
        for d, charge in charges.items():
            k = bucket_of(period, d, site)
            per_bucket[k] = per_bucket.get(k, 0.0) + charge
    return per_bucket, sum(charges.values())


def _make_total(
    site: Site, selection: Selection, acc: _Acc, standing: float, no_data: bool, unpriced: bool = False
) -> Total:
    value = acc.cost + standing if selection.in_currency else acc.value / MILLI
    gas = selection.quantity == MEDIUM_QUANTITY["gas"]
    return Total(
        value=_r(value),
        unit=selection.unit,
        cost=_r(acc.cost + standing),
        currency=site.currency,
        estimated=_r(acc.estimated / MILLI) if acc.estimated and not selection.in_currency else None,
        wh_equivalent=_r(acc.value / MILLI * site.gas_wh_per_dm3) if gas else None,
        standing_charge=_r(standing) if standing else None,
        no_data=True if no_data else None,
        unpriced=True if unpriced else None,
    )


def _period(
    site: Site, selection: Selection, period: str, day: date, rows: _Rows, current: bool, today: date
) -> tuple[list[Bucket], Total]:
    """The buckets and the total of the period containing ``day`` (current or previous rows)."""
    standing, standing_total = _standing(site, selection, period, day, today)
    gas = selection.quantity == MEDIUM_QUANTITY["gas"]
    total = _Acc()
    buckets: list[Bucket] = []
    for key, start in bucket_starts(period, day, site):
        found = rows.buckets.get((current, key))
        acc = found or _Acc()
        total.add(acc.value, acc.estimated, acc.cost)
        charge = standing.get(key, 0.0)
        buckets.append(
            Bucket(
                start=start,
                value=_r(acc.cost + charge if selection.in_currency else acc.value / MILLI),
                unit=selection.unit,
                cost=_r(acc.cost + charge),
                estimated=_r(acc.estimated / MILLI) if acc.estimated and not selection.in_currency else None,
                wh_equivalent=_r(acc.value / MILLI * site.gas_wh_per_dm3) if gas else None,
                no_data=None if found else True,
                unpriced=True if (current, key) in rows.unpriced else None,
            )
        )
    no_data = all(b.no_data for b in buckets)
    unpriced = any(b.unpriced for b in buckets)
    return buckets, _make_total(site, selection, total, standing_total, no_data, unpriced)


def check_split(site: Site, scope: str, split: str | None) -> None:
    """ValueError naming the problem unless ``split`` is None or "circuit" on a scope in units."""
    _check_split(split, scope, resolve_scope(site, scope) if split is not None else None)


def _check_split(split: str | None, scope: str, selection: Selection | None) -> None:
    if split is None:
        return
    if split not in SPLITS:
        raise Problem(
            "unknown-split",
            N_("unknown split %(value)s: use circuit or medium, or leave split out"),
            value=repr(split),
        )
    if split == "medium":
        if selection is not None and not selection.in_currency:
            raise Problem(
                "split-needs-money",
                N_(
                    "split=medium needs a scope summed in money (total-global, or a zone mixing media), "
                    "but %(scope)s is in %(unit)s: use split=circuit"
                ),
                scope=repr(scope),
                unit=selection.unit,
            )
        return
    if selection is not None and selection.in_currency:
        raise Problem(
            "split-needs-units",
            N_(
                "split=circuit needs a scope in units (Wh, dm³), but %(scope)s is summed in money "
                "(%(unit)s): use total-electricity, a zone, a circuit, a panel or a device"
            ),
            scope=repr(scope),
            unit=selection.unit,
        )


def _series(
    site: Site, selection: Selection, period: str, day: date, rows: _Rows, buckets: list[Bucket]
) -> list[Series]:
    keys = bucket_starts(period, day, site)
    present = {_series_key(m) for m in selection.members}
    names = {f"circuit:{c.id}": c.name for c in site.circuits}
    order = [k for k in names if k in present]
    order += sorted(k for k in present if k not in names and k != "none")
    order += ["none"] if "none" in present else []
    out = []
    for series_key in order:
        values: list[float | None] = []
        total = _Acc()
        for (key, _), bucket in zip(keys, buckets, strict=True):
            acc = rows.series.get((series_key, key)) or _Acc()
            total.add(acc.value, acc.estimated, acc.cost)
            values.append(None if bucket.no_data else _r(acc.value / MILLI))
        out.append(
            Series(
                key=series_key,
                name=names.get(series_key, "" if series_key == "none" else series_key),
                values=values,
                total=_r(total.value / MILLI),
                cost=_r(total.cost),
            )
        )
    return out


def _medium_series(site: Site, period: str, day: date, rows: _Rows, buckets: list[Bucket]) -> list[Series]:
    """split=medium (money scopes): each bucket's cost per medium (electricity, gas, water), without
    the standing charges (they are in the bucket, not in a medium's consumption)."""
    keys = bucket_starts(period, day, site)
    out = []
    for medium in ("electricity", "gas", "water"):
        quantity = MEDIUM_QUANTITY[medium]
        if not any(q == quantity for q, _ in rows.per_quantity) and quantity not in rows.quantities:
            continue
        values: list[float | None] = []
        total = _Acc()
        for (key, _), bucket in zip(keys, buckets, strict=True):
            acc = rows.per_quantity.get((quantity, key)) or _Acc()
            total.add(acc.value, acc.estimated, acc.cost)
            values.append(None if bucket.no_data else _r(acc.cost))
        out.append(
            Series(
                key=f"medium:{medium}", name=medium, values=values, total=_r(total.cost), cost=_r(total.cost)
            )
        )
    return out


async def consumption(
    store: Store,
    database: str,
    site: Site,
    scope: str,
    period: str,
    day: date,
    today: date | None = None,
    split: str | None = None,
) -> Consumption:
    """Histogram of ``scope`` over the ``period`` containing ``day`` (site-local), with the previous
    period's buckets and total, from one query.

    ``today`` (default: today in the site's zone) bounds the standing charges. ``split="circuit"``
    (scopes in units only) adds ``series``: each bucket split by the circuit of the selection's members
    (a virtual device counts in its own circuit), summing exactly to the bucket. Raises ValueError (one
    line naming the problem and the fix) for a bad scope, period, split, id or out-of-range date.
    """
    check_day(period, day)
    selection = resolve_scope(site, scope)
    _check_split(split, scope, selection)
    today = today or datetime.now(site.tz).date()
    # a period over before today: its answer is kept while its rows stay the same; a current one while
    # nothing is written (cache.py)
    past = period_range(period, day)[1] <= today
    rows = await _rows(store, database, site, selection, period, day, split == "circuit", past)
    buckets, total = _period(site, selection, period, day, rows, True, today)
    prev_buckets, prev_total = _period(site, selection, period, previous_day(period, day), rows, False, today)

    result_parts: list[Part] = []
    if selection.in_currency:  # total-global, or a scope mixing media: per medium
        for medium in selection.media:
            quantity = MEDIUM_QUANTITY[medium]
            acc = rows.quantities.get(quantity, _Acc())
            result_parts.append(
                Part(
                    medium=medium,  # type: ignore[arg-type]
                    value=_r(acc.value / MILLI),
                    unit=unit_of(quantity),
                    cost=_r(acc.cost),
                    wh_equivalent=_r(acc.value / MILLI * site.gas_wh_per_dm3) if medium == "gas" else None,
                )
            )
    return Consumption(
        scope=scope,
        period=period,  # type: ignore[arg-type]
        unit=selection.unit,
        currency=site.currency,
        buckets=buckets,
        total=total,
        previous=PreviousTotal(total=prev_total, buckets=prev_buckets),
        parts=result_parts,
        priced_from=priced_from(site),
        has_data=not total.no_data,
        series=(
            _series(site, selection, period, day, rows, buckets)
            if split == "circuit"
            else _medium_series(site, period, day, rows, buckets)
            if split == "medium"
            else []
        ),
    )


# --- summary (the "Data" table) --------------------------------------------------------------------


class Summary(BaseModel):
    """Totals of today, yesterday, this/last month, this/last year (no_data: true where nothing)."""

    scope: str
    unit: str
    currency: str
    day: date = Field(description="The site-local date taken as today.")
    today: Total
    yesterday: Total
    this_month: Total
    last_month: Total
    this_year: Total
    last_year: Total


async def summary(store: Store, database: str, site: Site, scope: str, today: date | None = None) -> Summary:
    """Three queries (day, month, year of ``today``), each with its previous period's total."""
    today = today or datetime.now(site.tz).date()
    d, m, y = [
        await consumption(store, database, site, scope, p, today, today) for p in ("day", "month", "year")
    ]
    return Summary(
        scope=scope,
        unit=d.unit,
        currency=site.currency,
        day=today,
        today=d.total,
        yesterday=d.previous.total,
        this_month=m.total,
        last_month=m.previous.total,
        this_year=y.total,
        last_year=y.previous.total,
    )


# --- raw quantities (the "Details" mode) -----------------------------------------------------------


class QuantityLine(BaseModel):
    quantity: str = Field(examples=["power_active"])
    unit: str = Field(examples=["W"])
    values: list[float | None] = Field(description="Average of the readings per bucket; None: no reading.")
    min: list[float | None]
    max: list[float | None]


class QuantitySeries(BaseModel):
    device: str
    period: Period
    starts: list[datetime] = Field(description="Local start of every bucket, with its UTC offset.")
    series: list[QuantityLine]
    has_data: bool


QUANTITIES: frozenset[str] = frozenset(str(q) for q in Quantity)


def check_quantities(site: Site, device_id: str, quantities: list[str]) -> list[str]:
    """The quantities (deduplicated, in order) of a real device; ValueError naming what is wrong."""
    if site.device(device_id) is None:
        if any(v.id == device_id for v in site.virtual_devices):
            raise Problem(
                "virtual-device",
                N_(
                    "device %(device)s is virtual: raw readings exist only for real devices, use its master "
                    "or slaves"
                ),
                device=repr(device_id),
            )
        known = ", ".join(d.id for d in site.devices)
        raise Problem(
            "unknown-device",
            N_("unknown device %(value)s: use one of %(choices)s"),
            value=repr(device_id),
            choices=known,
        )
    if not quantities:
        raise Problem("no-quantity", N_("no quantity: give at least one, e.g. quantity=power_active"))
    for q in quantities:
        if q not in QUANTITIES:
            raise Problem(
                "unknown-quantity",
                N_(
                    "unknown quantity %(value)s: use a quantity name such as power_active, voltage_l1, frequency"
                ),
                value=repr(q),
            )
    return list(dict.fromkeys(quantities))


async def quantity_series(
    store: Store,
    database: str,
    site: Site,
    device_id: str,
    quantities: list[str],
    period: str,
    day: date,
) -> QuantitySeries:
    """Average, min and max of raw readings of a real device per bucket of the period (hours of the local
    day, days of the month, months of the year, years of the decade); None where there is no reading."""
    check_day(period, day)
    wanted = check_quantities(site, device_id, quantities)
    starts = bucket_starts(period, day, site)
    start, end = period_range(period, day)
    t0 = local_midnight_utc(start, site)
    params: dict[str, Any] = {
        "site": site.site,
        "device": device_id,
        "quantities": wanted,
        "from": t0.replace(tzinfo=None),
        "end": local_midnight_utc(end, site).replace(tzinfo=None),
        "t0": int(t0.timestamp()),
        "tz": site.timezone,
    }
    key = {
        "day": "{t0:Int64} + intDiv(toInt64(toUnixTimestamp(ts)) - {t0:Int64}, 3600) * 3600",
        "month": "toDate(ts, {tz:String})",
        "year": "toStartOfMonth(toDate(ts, {tz:String}))",
        "decade": "toStartOfYear(toDate(ts, {tz:String}))",
    }[period]
    sql = (
        f"SELECT quantity, {key} AS b, avg(value), min(value), max(value) "
        f"FROM {table(database, READINGS)} FINAL "
        "WHERE site = {site:String} AND device = {device:String} AND quantity IN {quantities:Array(String)} "
        "AND ts >= {from:DateTime64(3, 'UTC')} AND ts < {end:DateTime64(3, 'UTC')} "
        "GROUP BY quantity, b"
    )
    found: dict[tuple[str, Hashable], tuple[float, float, float]] = {}
    for quantity, b, avg, low, high in await store.query(sql, params):
        found[(str(quantity), _key(period, b))] = (float(avg), float(low), float(high))
    lines = []
    for q in wanted:
        cells = [found.get((q, k)) for k, _ in starts]
        lines.append(
            QuantityLine(
                quantity=q,
                unit=unit_of(q),
                values=[_r(c[0]) if c else None for c in cells],
                min=[_r(c[1]) if c else None for c in cells],
                max=[_r(c[2]) if c else None for c in cells],
            )
        )
    return QuantitySeries(
        device=device_id,
        period=period,  # type: ignore[arg-type]
        starts=[s for _, s in starts],
        series=lines,
        has_data=bool(found),
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
        description="units when both scopes meter the same medium, else currency (values are money): "
        "different media, or a money scope (total-global, a scope mixing media) on either side."
    )
    unit: str
    currency: str
    detail: Literal["total", "detailed"]
    a: Side
    b: Side
    priced_from: date = Field(
        description="The first tariff's effective_from: consumption before it is unpriced (cost 0)."
    )


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
            "previous": PreviousTotal(
                total=money(c.previous.total), buckets=[money(b) for b in c.previous.buckets]
            ),
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
    """Two scopes side by side (C4): in units when they meter the same medium, else in money only (a
    money scope on either side: in money)."""
    if detail not in ("total", "detailed"):
        raise Problem(
            "unknown-detail",
            N_("unknown detail %(value)s: use %(choices)s"),
            value=repr(detail),
            choices="total, detailed",
        )
    kinds = (scope_kind(resolve_scope(site, a)), scope_kind(resolve_scope(site, b)))
    sides = [await consumption(store, database, site, s, period, day, today) for s in (a, b)]
    same = kinds[0] == kinds[1] and kinds[0] != "money"
    if not same:
        sides = [_in_currency(s) for s in sides]
    out = [
        Side(
            scope=s.scope,
            kind=k,
            buckets=s.buckets if detail == "detailed" else [],
            total=s.total,
            previous=s.previous if detail == "detailed" else PreviousTotal(total=s.previous.total),
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
        priced_from=priced_from(site),
    )


__all__ = [
    "MAX_DATE",
    "MIN_DATE",
    "PERIODS",
    "QUANTITIES",
    "SCOPE_HELP",
    "SPLITS",
    "Bucket",
    "Comparison",
    "Consumption",
    "Member",
    "Part",
    "PreviousTotal",
    "QuantityLine",
    "QuantitySeries",
    "Selection",
    "Series",
    "Side",
    "Summary",
    "Total",
    "bucket_starts",
    "check_day",
    "check_quantities",
    "check_split",
    "compare",
    "consumption",
    "members",
    "period_range",
    "previous_day",
    "quantity_series",
    "resolve_scope",
    "scope_kind",
    "summary",
]
