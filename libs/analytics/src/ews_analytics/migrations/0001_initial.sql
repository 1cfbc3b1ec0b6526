-- 0001: raw readings, hourly energy and cost, and the aggregator's counter state.
-- `{database}` is replaced by the (validated) database name. Every statement is idempotent.

-- Every value of every ReadingTaken. One row per (site, device, quantity, time): a duplicate event
-- (redelivery, replay, re-publish with a new event_id) replaces itself when parts merge.
CREATE TABLE IF NOT EXISTS {database}.readings
(
    site     LowCardinality(String),
    device   LowCardinality(String),
    quantity LowCardinality(String),
    ts       DateTime64(3, 'UTC'),
    value    Float64,
    profile  LowCardinality(String),
    event_id String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (site, device, quantity, ts);

-- Consumption per device, counter quantity and UTC hour. The aggregator rewrites the row of the
-- hour it is filling with the hour's running total; `last_end` (end of the last interval included)
-- is the version: FINAL / argMax keeps the most complete row, and an interval ending at or before
-- `last_end` is known to be included already (redelivery after a crash never adds it twice).
-- `cost` = value in kWh or m³ x the price of the tariff in force on the hour's local date.
CREATE TABLE IF NOT EXISTS {database}.energy_hourly
(
    site     LowCardinality(String),
    device   LowCardinality(String),
    quantity LowCardinality(String),
    hour     DateTime('UTC'),
    value    Float64,
    cost     Float64,
    last_end DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(last_end)
ORDER BY (site, device, quantity, hour);

-- The last counter reading per (site, device, quantity) the aggregator has used: a restart (or
-- another aggregator process) continues exactly from it. Newest `ts` wins.
CREATE TABLE IF NOT EXISTS {database}.counter_state
(
    site     LowCardinality(String),
    device   LowCardinality(String),
    quantity LowCardinality(String),
    ts       DateTime64(3, 'UTC'),
    value    Float64
)
ENGINE = ReplacingMergeTree(ts)
ORDER BY (site, device, quantity);
