"""Consumption histograms (requirement C) from ClickHouse through ``ews_analytics.consumption``.

``GET /api/v1/consumption?scope=…&period=day|month|year|decade&date=YYYY-MM-DD`` returns the analytics
library's ``Consumption`` as is: values in canonical units (Wh, dm³, or the currency for
``total-global``), bucket ``start`` in the site's local time with its UTC offset. ``date`` defaults to
today in the site's time zone. ``/api/v1/consumption/datalogger.csv`` gives the same buckets as CSV
(requirement C5). Bad parameters: 400 with one line; analytics database not created yet: 503.
"""

from __future__ import annotations

import csv
import io
from datetime import date, datetime
from typing import Any

from ews_analytics import Consumption, consumption, resolve_scope
from ews_contracts.roles import Permission
from ews_contracts.site import Site
from litestar import Request, Response, Router, get
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.params import Parameter

from ..guards import requires
from ..storage import require_store, store_error

CSV_HEADER = ("start", "quantity", "unit", "value", "cost", "currency")

SCOPE = Parameter(
    str,
    query="scope",
    default="total-electricity",
    description="total-electricity, total-global, zone:<id>, circuit:<id> or device:<id>",
)
PERIOD = Parameter(str, query="period", default="day", description="day, month, year or decade")
DAY = Parameter(
    str, query="date", default=None, description="A local date (YYYY-MM-DD) in the period; default today"
)


def bad_request(message: str) -> HTTPException:
    return HTTPException(status_code=400, detail=" ".join(message.split()))


def parse_day(raw: str | None, site: Site) -> date:
    if raw is None or raw == "":
        return datetime.now(site.tz).date()
    try:
        return datetime.strptime(raw, "%Y-%m-%d").date()
    except ValueError:
        raise bad_request(f"invalid date {raw!r}: use YYYY-MM-DD, e.g. 2025-03-30") from None


async def _query(request: Request[Any, Any, State], scope: str, period: str, day: str | None) -> Consumption:
    state = request.app.state
    site: Site = state.site
    when = parse_day(day, site)
    try:
        resolve_scope(site, scope)  # validate before touching the store
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    store = await require_store(state)
    try:
        return await consumption(store, state.database, site, scope, period, when)
    except ValueError as exc:  # bad period (or scope): the analytics library names it
        raise bad_request(str(exc)) from None
    except Exception as exc:
        raise store_error(exc) from None


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
        return next(iter(selection.groups))
    return "energy_active_import"


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


router = Router(path="/api/v1", route_handlers=[get_consumption, get_consumption_csv])
