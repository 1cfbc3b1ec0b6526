"""Consumption histograms (requirement C) from ClickHouse through ``ews_analytics``.

``GET /api/v1/consumption?scope=…&period=day|month|year|decade&date=YYYY-MM-DD`` returns the analytics
library's ``Consumption`` as is: values in canonical units (Wh, dm³, or the currency for
``total-global``), bucket ``start`` in the site's local time with its UTC offset. ``date`` defaults to
today in the site's time zone. ``GET /api/v1/consumption/compare?a=…&b=…`` puts two scopes side by side
(C4: units when they meter the same thing, money otherwise). ``/api/v1/consumption/datalogger.csv``
gives the buckets as CSV (C5), columns ``start,quantity,unit,value,cost,currency``: ``start`` is the
bucket's local start with its UTC offset (ISO 8601), ``quantity`` the counter summed
(``energy_active_import``, ``water_volume``, ``gas_volume``) or ``cost`` for money scopes, ``value``
in ``unit``, ``cost`` in ``currency``. Bad parameters: 400 with one line; database not created yet: 503.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from typing import Any, TypeVar

from ews_analytics import Comparison, Consumption, compare, consumption, resolve_scope
from ews_contracts.roles import Permission
from ews_contracts.site import Site
from ews_contracts.text import one_line
from litestar import Request, Response, Router, get
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.params import Parameter

from ..guards import requires
from ..storage import require_store, store_error

T = TypeVar("T")

CSV_HEADER = ("start", "quantity", "unit", "value", "cost", "currency")

SCOPE_TEXT = (
    "total-electricity, total-global, zone:<id>, circuit:<id>, panel:<id>, gateway:<id> or device:<id>"
)
SCOPE = Parameter(str, query="scope", default="total-electricity", description=SCOPE_TEXT)
SCOPE_A = Parameter(str, query="a", description=f"First scope: {SCOPE_TEXT}")
SCOPE_B = Parameter(str, query="b", description=f"Second scope: {SCOPE_TEXT}")
DETAIL = Parameter(
    str, query="detail", default="detailed", description="total (totals only) or detailed (with buckets)"
)
PERIOD = Parameter(str, query="period", default="day", description="day, month, year or decade")
DAY = Parameter(
    str, query="date", default=None, description="A local date (YYYY-MM-DD) in the period; default today"
)


def bad_request(message: str) -> HTTPException:
    return HTTPException(status_code=400, detail=one_line(message, limit=2000))


def parse_day(raw: str | None, site: Site) -> date:
    if raw is None or raw == "":
        return datetime.now(site.tz).date()
    try:
        return datetime.strptime(raw, "%Y-%m-%d").date()
    except ValueError:
        raise bad_request(f"invalid date {raw!r}: use YYYY-MM-DD, e.g. 2025-03-30") from None


async def _answer(
    request: Request[Any, Any, State],
    scopes: tuple[str, ...],
    day: str | None,
    query: Callable[[Any, date], Awaitable[T]],
    check: Callable[[], None] = lambda: None,
) -> T:
    """Validate the scopes and the date before touching the store, then run ``query(store, day)``:
    bad parameters -> 400 naming them, an unreachable store -> 503."""
    state = request.app.state
    when = parse_day(day, state.site)
    try:
        for scope in scopes:
            resolve_scope(state.site, scope)
        check()
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    store = await require_store(state)
    try:
        return await query(store, when)
    except ValueError as exc:  # bad period (or scope): the analytics library names it
        raise bad_request(str(exc)) from None
    except Exception as exc:
        raise store_error(exc) from None


async def _query(request: Request[Any, Any, State], scope: str, period: str, day: str | None) -> Consumption:
    state = request.app.state
    return await _answer(
        request,
        (scope,),
        day,
        lambda store, when: consumption(store, state.database, state.site, scope, period, when),
    )


@get(
    "/consumption",
    guards=[requires(Permission.VIEW_CONSUMPTION)],
    operation_id="getConsumption",
    summary="Consumption histogram of a scope over a day, month, year or decade",
    description="Buckets: hours of a local day (23 or 25 on DST days), days of a month, months of a year, "
    "years of the decade ending with the date's year; previous.total is the preceding period's total.",
    tags=["consumption"],
)
async def get_consumption(
    request: Request[Any, Any, State],
    scope_: str = SCOPE,
    period: str = PERIOD,
    day: str | None = DAY,
) -> Consumption:
    return await _query(request, scope_, period, day)


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
    "kinds (electricity vs gas): values in the site's currency only. detail=total gives the totals only.",
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
    state = request.app.state

    def check_detail() -> None:
        if detail not in ("total", "detailed"):
            raise ValueError(f"unknown detail {detail!r}: use total or detailed")

    return await _answer(
        request,
        (a, b),
        day,
        lambda store, when: compare(store, state.database, state.site, a, b, period, when, detail),
        check_detail,
    )


def to_csv(result: Consumption, quantity: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for b in result.buckets:
        writer.writerow((b.start.isoformat(), quantity, b.unit, repr(b.value), repr(b.cost), result.currency))
    return out.getvalue()


@get(
    "/consumption/datalogger.csv",
    guards=[requires(Permission.VIEW_CONSUMPTION)],
    operation_id="getConsumptionCsv",
    summary="datalogger.csv: the buckets of the same query as CSV",
    description="Columns start (local time with UTC offset), quantity, unit, value, cost, currency.",
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
    result = await _query(request, scope, period, day)
    first = result.buckets[0].start.date().isoformat() if result.buckets else "empty"
    name = f"datalogger-{scope.replace(':', '-')}-{period}-{first}.csv"
    return Response(
        to_csv(result, quantity_of(request.app.state.site, scope)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


router = Router(path="/api/v1", route_handlers=[get_consumption, get_comparison, get_consumption_csv])
