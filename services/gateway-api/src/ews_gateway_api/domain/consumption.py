"""Consumption histograms (requirement C) from ClickHouse through ``ews_analytics``.

``GET /api/v1/consumption?scope=…&period=day|month|year|decade&date=YYYY-MM-DD[&split=circuit]`` returns
the analytics library's ``Consumption`` as is: values in canonical units (Wh, dm³, or the currency for
``total-global``), bucket ``start`` in the site's local time with its UTC offset, ``no_data: true`` on
buckets no reading covered, ``previous.buckets`` the preceding period's, ``series`` the buckets split by
circuit with ``split=circuit``. ``date`` defaults to today in the site's time zone and must lie (with its
period) within 1970-01-01 … 2200-12-31. ``GET /api/v1/consumption/compare?a=…&b=…`` puts two scopes side
by side (C4: units when they meter the same thing, money otherwise). ``/api/v1/consumption/summary``
gives today, yesterday, this/last month and this/last year. ``/api/v1/consumption/quantities`` averages a
real device's raw readings (power, voltage …) per bucket. ``/api/v1/consumption/datalogger.csv`` gives
the buckets as CSV (C5), columns ``start,quantity,unit,value,cost,currency,unpriced``: ``start`` is the
bucket's local start with its UTC offset (ISO 8601), ``quantity`` the counter summed
(``energy_active_import``, ``water_volume``, ``gas_volume``) or ``cost`` for money scopes (total-global,
a zone, circuit, panel or gateway mixing media), ``value`` in ``unit``, ``cost`` in ``currency``,
``unpriced`` ``true`` when some of the bucket's consumption is from before the first tariff (no price in
force: it costs 0), else ``false``. Bad parameters: 400 with one line; database not reachable or not
created yet: 503.

Pages call the ``load_*`` functions with ``site_state(request)``: they validate and raise the same
400/503 ``HTTPException`` as the routes.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from typing import Any, TypeVar, get_args

from ews_analytics import (
    MAX_DATE,
    MIN_DATE,
    PERIODS,
    QUANTITIES,
    SCOPE_HELP,
    SCOPE_KINDS,
    SPLITS,
    TOTAL_SCOPES,
    Comparison,
    Consumption,
    Problem,
    QuantitySeries,
    Summary,
    check_day,
    check_quantities,
    check_split,
    compare,
    consumption,
    quantity_series,
    resolve_scope,
    summary,
)
from ews_contracts.roles import Permission
from ews_contracts.site import ID_PATTERN, Site
from ews_contracts.store import Store
from ews_contracts.text import one_line
from litestar import Request, Response, Router, get
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.params import Parameter

from ..errors import ApiError
from ..guards import requires
from ..i18n import N_
from ..openapi import date_regex, date_schema, enum_schema
from ..sites import SITE_PARAMETER, site_state
from ..storage import require_store, store_error

T = TypeVar("T")

CSV_HEADER = ("start", "quantity", "unit", "value", "cost", "currency", "unpriced")

SCOPE_TEXT = SCOPE_HELP
DETAILS: tuple[str, ...] = get_args(Comparison.model_fields["detail"].annotation)


def _fits(periods: tuple[str, ...]) -> Any:
    """Whether ``check_day`` takes a date with each of ``periods`` (a decade ends with the date's year: the
    first nine years of MIN_DATE … MAX_DATE have no whole decade)."""

    def fits(day: date) -> bool:
        try:
            for period in periods:
                check_day(period, day)
        except ValueError:
            return False
        return True

    return fits


# what the handlers take, in the OpenAPI document (schema_extra: the handlers check the values themselves,
# with their own codes — unknown-scope, unknown-period, invalid-date …)
SCOPE_PATTERN = "^(?:{}|(?:{}):{})$".format(
    "|".join(TOTAL_SCOPES), "|".join(SCOPE_KINDS), ID_PATTERN.removeprefix("^").removesuffix("$")
)
SCOPE_SCHEMA = {"pattern": SCOPE_PATTERN, "max_length": 64}
ANY_DAY = date_schema(date_regex(MIN_DATE, MAX_DATE, _fits(("year",))), empty=True)
PERIOD_DAY = date_schema(date_regex(MIN_DATE, MAX_DATE, _fits(PERIODS)), empty=True)
ID_SCHEMA = {"pattern": ID_PATTERN, "max_length": 32}

SCOPE = Parameter(
    str, query="scope", default="total-electricity", description=SCOPE_TEXT, schema_extra=SCOPE_SCHEMA
)
SCOPE_A = Parameter(str, query="a", description=f"First scope: {SCOPE_TEXT}", schema_extra=SCOPE_SCHEMA)
SCOPE_B = Parameter(str, query="b", description=f"Second scope: {SCOPE_TEXT}", schema_extra=SCOPE_SCHEMA)
DETAIL = Parameter(
    str,
    query="detail",
    default="detailed",
    description="total (totals only) or detailed (with buckets)",
    schema_extra=enum_schema(DETAILS),
)
PERIOD = Parameter(
    str,
    query="period",
    default="day",
    description="day, month, year or decade",
    schema_extra=enum_schema(PERIODS),
)
DAY = Parameter(
    str,
    query="date",
    default=None,
    description="A local date (YYYY-MM-DD) in the period, 1970-01-01 … 2200-12-31 (the whole period too: "
    "a decade ends with the date's year, so from 1979 on); empty or absent: today",
    schema_extra=PERIOD_DAY,
)
SPLIT = Parameter(
    str,
    query="split",
    default=None,
    description="circuit: add series, the buckets split by circuit (scopes in units only); medium: split by "
    "medium (scopes in money only); empty or absent: no split",
    schema_extra=enum_schema((*SPLITS, "")),
)
TODAY = Parameter(
    str,
    query="date",
    default=None,
    description="The local date taken as today (YYYY-MM-DD), 1970-01-01 … 2200-12-31; empty or absent: today",
    schema_extra=ANY_DAY,
)
DEVICE = Parameter(str, query="device", description="A real (non-virtual) device id", schema_extra=ID_SCHEMA)
QUANTITY = Parameter(
    list[str],
    query="quantity",
    description="A quantity (repeatable), e.g. power_active, voltage_l1",
    schema_extra={"min_items": 1, "items": {"type": "string", "enum": sorted(QUANTITIES)}},
)


def bad_parameter(exc: ValueError) -> HTTPException:
    """400 for a request the analytics cannot answer: its code and message, translated when shown."""
    if isinstance(exc, Problem):
        return ApiError(400, exc.code, exc.message, **exc.params)
    return bad_request(str(exc))


def bad_request(message: str) -> HTTPException:
    return HTTPException(status_code=400, detail=one_line(message, limit=2000))


def parse_day(raw: str | date | None, site: Site) -> date:
    if isinstance(raw, date):
        return raw
    if raw is None or raw == "":
        return datetime.now(site.tz).date()
    try:
        return datetime.strptime(raw, "%Y-%m-%d").date()
    except ValueError:
        raise ApiError(
            400, "invalid-date", N_("invalid date %(date)s: use YYYY-MM-DD, e.g. 2025-03-30"), date=repr(raw)
        ) from None


async def _answer(state: State, check: Callable[[], None], query: Callable[[Store], Awaitable[T]]) -> T:
    """Validate the parameters (``check``) before touching the store, then run ``query(store)``:
    bad parameters -> 400 naming them, an unreachable or unmigrated store -> 503."""
    try:
        check()
    except ValueError as exc:
        raise bad_parameter(exc) from None
    store = await require_store(state)
    try:
        return await query(store)
    except ValueError as exc:  # the analytics library names the problem
        raise bad_parameter(exc) from None
    except Exception as exc:
        raise store_error(exc) from None


def _check_scope_period(state: State, scopes: tuple[str, ...], period: str, when: date) -> None:
    for scope in scopes:
        resolve_scope(state.site, scope)
    check_day(period, when)


async def load_consumption(
    state: State, scope: str, period: str, day: str | date | None, split: str | None = None
) -> Consumption:
    """``GET /consumption`` without the request: ``day`` a date, 'YYYY-MM-DD' or None (today);
    ``split`` None or "circuit". Raises HTTPException 400 (bad parameter) or 503 (store)."""
    when = parse_day(day, state.site)
    split = split or None

    def check() -> None:
        _check_scope_period(state, (scope,), period, when)
        check_split(state.site, scope, split)

    return await _answer(
        state,
        check,
        lambda store: consumption(store, state.database, state.site, scope, period, when, split=split),
    )


async def load_comparison(
    state: State, a: str, b: str, period: str, day: str | date | None, detail: str = "detailed"
) -> Comparison:
    """``GET /consumption/compare`` without the request (400/503 as HTTPException)."""
    when = parse_day(day, state.site)

    def check() -> None:
        _check_scope_period(state, (a, b), period, when)
        if detail not in ("total", "detailed"):
            raise ValueError(f"unknown detail {detail!r}: use total or detailed")

    return await _answer(
        state, check, lambda store: compare(store, state.database, state.site, a, b, period, when, detail)
    )


async def load_summary(state: State, scope: str, today: str | date | None = None) -> Summary:
    """``GET /consumption/summary`` without the request (400/503 as HTTPException)."""
    when = parse_day(today, state.site)
    return await _answer(
        state,
        lambda: _check_scope_period(state, (scope,), "year", when),
        lambda store: summary(store, state.database, state.site, scope, when),
    )


async def load_quantity_series(
    state: State, device: str, quantities: list[str], period: str, day: str | date | None
) -> QuantitySeries:
    """``GET /consumption/quantities`` without the request (400/503 as HTTPException)."""
    when = parse_day(day, state.site)

    def check() -> None:
        check_quantities(state.site, device, quantities)
        check_day(period, when)

    return await _answer(
        state,
        check,
        lambda store: quantity_series(store, state.database, state.site, device, quantities, period, when),
    )


@get(
    "/consumption",
    guards=[requires(Permission.VIEW_CONSUMPTION)],
    operation_id="getConsumption",
    summary="Consumption histogram of a scope over a day, month, year or decade",
    description="Buckets: hours of a local day (23 or 25 on DST days), days of a month, months of a year, "
    "years of the decade ending with the date's year; no_data: true on buckets no reading covered; "
    "previous: the preceding period's total and buckets; split=circuit adds series (one per circuit, "
    "values aligned with buckets, summing to them). A zone, circuit, panel or gateway holding one medium "
    "answers in its unit (Wh, dm³); holding several, in money with parts per medium, like total-global. "
    "Consumption before the first tariff (priced_from) costs 0 and its buckets and totals say unpriced: true.",
    tags=["consumption"],
)
async def get_consumption(
    request: Request[Any, Any, State],
    scope_: str = SCOPE,
    period: str = PERIOD,
    day: str | None = DAY,
    split: str | None = SPLIT,
) -> Consumption:
    return await load_consumption(site_state(request), scope_, period, day, split)


@get(
    "/consumption/summary",
    guards=[requires(Permission.VIEW_CONSUMPTION)],
    operation_id="getConsumptionSummary",
    summary="Totals of today, yesterday, this and last month, this and last year",
    description="Each total has value, unit, cost, currency, and no_data: true when no reading covered it.",
    tags=["consumption"],
)
async def get_consumption_summary(
    request: Request[Any, Any, State], scope_: str = SCOPE, day: str | None = TODAY
) -> Summary:
    return await load_summary(site_state(request), scope_, day)


@get(
    "/consumption/quantities",
    guards=[requires(Permission.VIEW_CONSUMPTION)],
    operation_id="getQuantitySeries",
    summary="Average, min and max of a device's measured quantities per bucket (e.g. power over a day)",
    description="Raw readings of a real device averaged per hour of a local day, day of a month, month of a "
    "year or year of a decade; null where there is no reading. quantity is repeatable.",
    tags=["consumption"],
)
async def get_quantity_series(
    request: Request[Any, Any, State],
    device: str = DEVICE,
    quantity: list[str] = QUANTITY,
    period: str = PERIOD,
    day: str | None = DAY,
) -> QuantitySeries:
    return await load_quantity_series(site_state(request), device, quantity, period, day)


def quantity_of(site: Site, scope: str) -> str:
    selection = resolve_scope(site, scope)
    if selection.in_currency:
        return "cost"
    if len(selection.groups) == 1:
        return str(next(iter(selection.groups)))
    return "energy_active_import"


@get(
    "/consumption/compare",
    guards=[requires(Permission.VIEW_CONSUMPTION)],
    operation_id="compareConsumption",
    summary="Two scopes side by side (devices, zones, circuits …)",
    description="Same kind of meter (e.g. two electricity scopes): values in their unit and cost; different "
    "kinds (electricity vs gas), or a scope in money (total-global, one mixing media) on either side: values "
    "in the site's currency only. detail=total gives the totals only.",
    tags=["consumption"],
)
async def get_comparison(
    request: Request[Any, Any, State],
    a: str = SCOPE_A,
    b: str = SCOPE_B,
    period: str = PERIOD,
    day: str | None = DAY,
    detail: str = DETAIL,
) -> Comparison:
    return await load_comparison(site_state(request), a, b, period, day, detail)


def to_csv(result: Consumption, quantity: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for b in result.buckets:
        unpriced = "true" if b.unpriced else "false"
        writer.writerow(
            (b.start.isoformat(), quantity, b.unit, repr(b.value), repr(b.cost), result.currency, unpriced)
        )
    return out.getvalue()


@get(
    "/consumption/datalogger.csv",
    guards=[requires(Permission.VIEW_CONSUMPTION)],
    operation_id="getConsumptionCsv",
    summary="datalogger.csv: the buckets of the same query as CSV",
    description="Columns start (local time with UTC offset), quantity, unit, value, cost, currency, "
    "unpriced (true when some of the bucket's consumption is from before the first tariff: cost 0).",
    media_type="text/csv",
    tags=["consumption"],
)
async def get_consumption_csv(
    request: Request[Any, Any, State],
    scope_: str = SCOPE,
    period: str = PERIOD,
    day: str | None = DAY,
) -> Response[str]:
    scope = scope_
    result = await load_consumption(site_state(request), scope, period, day)
    first = result.buckets[0].start.date().isoformat() if result.buckets else "empty"
    name = f"datalogger-{scope.replace(':', '-')}-{period}-{first}.csv"
    return Response(
        to_csv(result, quantity_of(site_state(request).site, scope)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


router = Router(
    path="/api/v1",
    parameters=SITE_PARAMETER,
    route_handlers=[
        get_consumption,
        get_comparison,
        get_consumption_csv,
        get_consumption_summary,
        get_quantity_series,
    ],
)
