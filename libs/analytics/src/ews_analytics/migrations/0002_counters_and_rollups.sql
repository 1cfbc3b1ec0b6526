-- 0002: exact, order-independent consumption (integer milli-units), estimated gaps, local-date rollups.
-- Replaces 0001's energy_hourly/counter_state (derived data: `ews replay` rebuilds it from the stream).
-- Every statement is idempotent. No PARTITION BY: one insert = one part = atomic.

-- Every counter reading the aggregator has used, after pulse weighting, in milli-units (mWh, cm³ ...).
-- Hourly consumption is a pure function of this set: a duplicate replaces itself, a late reading is
-- inserted at its place. `wrap_milli` = the value at which the raw register wraps (0: it does not).
-- `batch` = the aggregator batch that wrote it (recovery reconciles batches above the checkpoint).
CREATE TABLE IF NOT EXISTS {database}.counter_readings
(
    site        LowCardinality(String),
    device      LowCardinality(String),
    quantity    LowCardinality(String),
    ts          DateTime64(3, 'UTC'),
    value_milli Int64,
    wrap_milli  Int64,
    batch       UInt64
)
ENGINE = ReplacingMergeTree
ORDER BY (site, device, quantity, ts);

-- Consumption per device, counter and UTC hour, as a sum of signed corrections ("deltas"): the
-- aggregator adds the pieces of new intervals and subtracts the pieces of an interval a late reading
-- split. `day` = the site-local date of the hour (the rollup key). `estimated_milli` = the part of
-- `value_milli` spread pro rata over a gap (an interval longer than the gap threshold).
-- `cost` = value x the price of the hour (tariff in force on the local date, time-of-use window).
CREATE TABLE IF NOT EXISTS {database}.consumption_hourly
(
    site            LowCardinality(String),
    device          LowCardinality(String),
    quantity        LowCardinality(String),
    hour            DateTime('UTC'),
    day             Date,
    value_milli     Int64,
    estimated_milli Int64,
    cost            Float64
)
ENGINE = SummingMergeTree((value_milli, estimated_milli, cost))
ORDER BY (site, hour, device, quantity, day);

-- Local-date rollups, maintained by ClickHouse on every insert into consumption_hourly.
-- Time first in the sorting keys: a period of every device of a site is one contiguous range.
CREATE TABLE IF NOT EXISTS {database}.consumption_daily
(
    site            LowCardinality(String),
    device          LowCardinality(String),
    quantity        LowCardinality(String),
    day             Date,
    value_milli     Int64,
    estimated_milli Int64,
    cost            Float64
)
ENGINE = SummingMergeTree((value_milli, estimated_milli, cost))
ORDER BY (site, day, device, quantity);

CREATE TABLE IF NOT EXISTS {database}.consumption_monthly
(
    site            LowCardinality(String),
    device          LowCardinality(String),
    quantity        LowCardinality(String),
    month           Date,
    value_milli     Int64,
    estimated_milli Int64,
    cost            Float64
)
ENGINE = SummingMergeTree((value_milli, estimated_milli, cost))
ORDER BY (site, month, device, quantity);

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.consumption_daily_mv TO {database}.consumption_daily AS
SELECT site, device, quantity, day, value_milli, estimated_milli, cost FROM {database}.consumption_hourly;

CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.consumption_monthly_mv TO {database}.consumption_monthly AS
SELECT site, device, quantity, toStartOfMonth(day) AS month, value_milli, estimated_milli, cost
FROM {database}.consumption_hourly;

-- The last batch whose writes are complete, per site (see counter_readings.batch).
CREATE TABLE IF NOT EXISTS {database}.aggregator_checkpoints
(
    site  LowCardinality(String),
    batch UInt64,
    at    DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(batch)
ORDER BY site;

DROP TABLE IF EXISTS {database}.energy_hourly;
DROP TABLE IF EXISTS {database}.counter_state;
