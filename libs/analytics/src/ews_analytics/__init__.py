"""Analytics store contract: the ClickHouse schema and the read queries.

The aggregator writes, the gateway-api reads; both import this library and nothing of each other.
Same SQL on chDB (embedded) and a ClickHouse server.

Design
------
Tables (``migrations/0001_initial.sql``), all ``ReplacingMergeTree`` so that every write is an
idempotent upsert:

- ``readings`` — every value of every ``ReadingTaken``, keyed ``(site, device, quantity, ts)``:
  a duplicate event (JetStream redelivery, ``ews replay``, a re-publish with a new event_id)
  replaces itself.
- ``energy_hourly`` — consumption per ``(site, device, quantity, UTC hour)`` for every cumulative
  counter (``ews_contracts.quantities.COUNTERS``; Ea+, water and gas are priced). The aggregator
  turns consecutive counter readings of a device into intervals, splits each interval pro rata over
  the UTC hours it covers, and rewrites the row of each hour it touches with the hour's running
  total. ``last_end`` (end of the last interval included) is the row version: reads use ``FINAL``
  and get the most complete row; after a crash, an interval ending at or before the hour's
  ``last_end`` is known to be included and is not added again. One row per device, counter and
  hour (instead of one per interval) keeps year and decade queries small.
  ``cost`` is written with the tariff in force on the hour's local date (``Site.tariff_on``), so a
  later price change never rewrites past costs.
- ``counter_state`` — the last counter reading used per ``(site, device, quantity)`` (newest
  ``ts`` wins), so a restarted aggregator continues exactly where it stopped.
- ``schema_migrations`` — applied migration versions (see ``schema.migrate``).

Why it is idempotent: a reading not newer than the device's last counter reading makes no interval
(duplicate, replay, late), and the raw row replaces itself; the aggregator writes ``energy_hourly``
before ``counter_state`` and acks the messages only after both, so a crash in between at worst
recomputes identical intervals, which ``last_end`` recognises. Replaying the stream into an empty
database gives the same numbers because the stream order is the same.

Hours are UTC hours: site-local day/month/year buckets are exact for every time zone whose offset
is a whole number of hours (Europe/Paris and most others; DST days have 23 or 25 hourly buckets).
In zones with half-hour offsets a local bucket boundary falls inside a UTC hour; that hour counts
in the bucket where it starts.

Scaling note: one aggregator per site keeps the per-device order these rules rely on; a consumer
group across sites must partition by device subject (``ews.<site>.reading.<device>``).
"""

from .costs import MEDIUM_QUANTITY, PRICE_FIELD, cost_of, medium_of
from .queries import (
    PERIODS,
    Bucket,
    Consumption,
    PreviousTotal,
    Selection,
    Total,
    bucket_starts,
    consumption,
    period_range,
    previous_day,
    resolve_scope,
)
from .schema import COUNTER_STATE, ENERGY_HOURLY, READINGS, check_database, migrate, migrations, table

__all__ = [
    "COUNTER_STATE",
    "ENERGY_HOURLY",
    "MEDIUM_QUANTITY",
    "PERIODS",
    "PRICE_FIELD",
    "READINGS",
    "Bucket",
    "Consumption",
    "PreviousTotal",
    "Selection",
    "Total",
    "bucket_starts",
    "check_database",
    "consumption",
    "cost_of",
    "medium_of",
    "migrate",
    "migrations",
    "period_range",
    "previous_day",
    "resolve_scope",
    "table",
]
