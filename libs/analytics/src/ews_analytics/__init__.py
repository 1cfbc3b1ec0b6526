"""Analytics store contract: the ClickHouse schema and the read queries.

The aggregator writes, the gateway-api reads; both import this library and nothing of each other.
Same SQL on chDB (embedded) and a ClickHouse server.

Design (``migrations/0002_counters_and_rollups.sql``)
-----------------------------------------------------
Consumption is a pure function of the *set* of counter readings, so arrival order, duplicates,
redelivery and replays cannot change it:

- ``readings`` — every value of every ``ReadingTaken`` (raw, ReplacingMergeTree on
  ``(site, device, quantity, ts)``: a duplicate replaces itself).
- ``counter_readings`` — the counter readings used (pulse counts × weight applied), in integer
  milli-units (mWh, cm³), with the value at which the raw register wraps.
- ``consumption_hourly`` — per device, counter and UTC hour, a SummingMergeTree of signed integer
  corrections: the aggregator adds the pro rata pieces of each new interval between two consecutive
  readings and, when a late reading splits an interval, subtracts the old interval's pieces and adds
  the two new ones. Integers make the sums exact and order-independent (to the milli-unit). Each row
  carries the hour's site-local ``day``; ``estimated_milli`` is the part spread over a gap; ``cost`` is
  priced with the tariff of the hour's local date and time-of-use window (a later price change never
  rewrites it), 0 before the first tariff's ``effective_from`` (no price in force: ``unpriced``).
- ``consumption_daily`` / ``consumption_monthly`` — local-date rollups maintained by materialized
  views on every insert into the hourly table: month, year and decade queries read a few thousand
  rows whatever the history length.
- ``aggregator_checkpoints`` — the last batch whose writes are complete; on start-up the aggregator
  reconciles the hours touched by later batches (a crash between inserts), so nothing is lost or
  counted twice.

Hours are UTC hours: site-local day/month/year buckets are exact in every zone whose offset is a whole
number of hours (DST days have 23 or 25 hourly buckets). In half-hour zones an hour counts in the
local day where it starts.
"""

from .costs import (
    MEDIUM_QUANTITY,
    PRICE_FIELD,
    PriceBook,
    cost_of,
    medium_of,
    priced_from,
    standing_charges,
    tariff_in_force,
)
from .queries import (
    MAX_DATE,
    MIN_DATE,
    PERIODS,
    QUANTITIES,
    SCOPE_HELP,
    SCOPE_KINDS,
    SPLITS,
    TOTAL_SCOPES,
    Bucket,
    Comparison,
    Consumption,
    Member,
    Part,
    PreviousTotal,
    Problem,
    QuantityLine,
    QuantitySeries,
    Selection,
    Series,
    Side,
    Summary,
    Total,
    bucket_starts,
    check_day,
    check_quantities,
    check_split,
    compare,
    consumption,
    members,
    period_range,
    previous_day,
    quantity_series,
    resolve_scope,
    scope_kind,
    summary,
)
from .schema import (
    CHECKPOINTS,
    COUNTER_READINGS,
    DAILY,
    ENERGY_HOURLY,
    HOURLY,
    MONTHLY,
    PROJECTIONS,
    READINGS,
    check_database,
    migrate,
    migrations,
    table,
    truncate_projections,
)

__all__ = [
    "CHECKPOINTS",
    "COUNTER_READINGS",
    "DAILY",
    "ENERGY_HOURLY",
    "HOURLY",
    "MAX_DATE",
    "MEDIUM_QUANTITY",
    "MIN_DATE",
    "MONTHLY",
    "PERIODS",
    "PRICE_FIELD",
    "PROJECTIONS",
    "QUANTITIES",
    "READINGS",
    "SCOPE_HELP",
    "SCOPE_KINDS",
    "SPLITS",
    "TOTAL_SCOPES",
    "Bucket",
    "Comparison",
    "Consumption",
    "Member",
    "Part",
    "PreviousTotal",
    "Problem",
    "PriceBook",
    "QuantityLine",
    "QuantitySeries",
    "Selection",
    "Series",
    "Side",
    "Summary",
    "Total",
    "bucket_starts",
    "check_database",
    "check_day",
    "check_quantities",
    "check_split",
    "compare",
    "consumption",
    "cost_of",
    "medium_of",
    "members",
    "migrate",
    "migrations",
    "period_range",
    "previous_day",
    "priced_from",
    "quantity_series",
    "resolve_scope",
    "scope_kind",
    "standing_charges",
    "summary",
    "table",
    "tariff_in_force",
    "truncate_projections",
]
