-- Speed rollups that dashboards and speed alerts read, so their cost grows with the time range
-- and the number of deployments, not with requests: per minute (alerts, ranges up to a day)
-- and per hour (longer ranges: a week is 168 rows per series), the hourly one fed from the
-- minute one. Placeholders as in 001.
-- New tables rather than more columns on requests_1m: `route` joins the key (an
-- AggregatingMergeTree's sorting key is what it aggregates by), and the breakdowns need the
-- view's query replaced; tables of their own get both without touching a rollup that is in use.
-- Latency states cover answered requests only (error = ''): a failed request's timings say
-- how it failed, not how fast the deployment is. Counts cover every request.
-- Read with sum(requests), sumMap(statuses), quantilesTDigestMerge(0.5, 0.9, 0.95, 0.99)(e2e_ms).
-- Rows written before this migration are not in the rollup; docs/grafana.md has the backfill.

CREATE TABLE IF NOT EXISTS fathom.speed_1m{local} {on_cluster}
(
    minute         DateTime('UTC'),
    model          LowCardinality(String),
    deployment     LowCardinality(String),
    origin         LowCardinality(String),
    route          LowCardinality(String),
    requests       SimpleAggregateFunction(sum, UInt64),
    streams        SimpleAggregateFunction(sum, UInt64),
    input_tokens   SimpleAggregateFunction(sum, UInt64),
    output_tokens  SimpleAggregateFunction(sum, UInt64),
    -- counts per HTTP status, per error class ('' = none) and per finish_reason
    statuses       SimpleAggregateFunction(sumMap, Map(String, UInt64)),
    errors         SimpleAggregateFunction(sumMap, Map(String, UInt64)),
    finish_reasons SimpleAggregateFunction(sumMap, Map(String, UInt64)),
    ttfb_ms        AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Float32),
    ttft_ms        AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Float32),
    e2e_ms         AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Float32),
    itl_mean_ms    AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Float32),
    itl_p99_ms     AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Float32),
    decode_tps     AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Float32)
)
ENGINE = {agg_engine:speed_1m}
PARTITION BY toDate(minute)
ORDER BY (model, deployment, origin, route, minute)
TTL minute + INTERVAL {ttl:speed_1m} DAY
SETTINGS {dedup_window};

CREATE MATERIALIZED VIEW IF NOT EXISTS fathom.speed_1m_mv{local} {on_cluster}
TO fathom.speed_1m{local}
AS SELECT
    toStartOfMinute(ts) AS minute,
    model,
    deployment,
    origin,
    route,
    count() AS requests,
    countIf(stream = 1) AS streams,
    sum(toUInt64(input_tokens)) AS input_tokens,
    sum(toUInt64(output_tokens)) AS output_tokens,
    sumMap(map(toString(status), toUInt64(1))) AS statuses,
    sumMap(map(toString(error), toUInt64(1))) AS errors,
    sumMap(map(toString(finish_reason), toUInt64(1))) AS finish_reasons,
    quantilesTDigestStateIf(0.5, 0.9, 0.95, 0.99)(ttfb_ms, error = '') AS ttfb_ms,
    quantilesTDigestStateIf(0.5, 0.9, 0.95, 0.99)(ttft_ms, error = '') AS ttft_ms,
    quantilesTDigestStateIf(0.5, 0.9, 0.95, 0.99)(e2e_ms, error = '') AS e2e_ms,
    quantilesTDigestStateIf(0.5, 0.9, 0.95, 0.99)(itl_mean_ms, error = '') AS itl_mean_ms,
    quantilesTDigestStateIf(0.5, 0.9, 0.95, 0.99)(itl_p99_ms, error = '') AS itl_p99_ms,
    quantilesTDigestStateIf(0.5, 0.9, 0.95, 0.99)(decode_tps, error = '') AS decode_tps
FROM fathom.requests{local}
GROUP BY minute, model, deployment, origin, route;

CREATE TABLE IF NOT EXISTS fathom.speed_1h{local} {on_cluster}
(
    hour           DateTime('UTC'),
    model          LowCardinality(String),
    deployment     LowCardinality(String),
    origin         LowCardinality(String),
    route          LowCardinality(String),
    requests       SimpleAggregateFunction(sum, UInt64),
    streams        SimpleAggregateFunction(sum, UInt64),
    input_tokens   SimpleAggregateFunction(sum, UInt64),
    output_tokens  SimpleAggregateFunction(sum, UInt64),
    -- counts per HTTP status, per error class ('' = none) and per finish_reason
    statuses       SimpleAggregateFunction(sumMap, Map(String, UInt64)),
    errors         SimpleAggregateFunction(sumMap, Map(String, UInt64)),
    finish_reasons SimpleAggregateFunction(sumMap, Map(String, UInt64)),
    ttfb_ms        AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Float32),
    ttft_ms        AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Float32),
    e2e_ms         AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Float32),
    itl_mean_ms    AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Float32),
    itl_p99_ms     AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Float32),
    decode_tps     AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Float32)
)
ENGINE = {agg_engine:speed_1h}
PARTITION BY toYYYYMM(hour)
ORDER BY (model, deployment, origin, route, hour)
TTL hour + INTERVAL {ttl:speed_1h} DAY
SETTINGS {dedup_window};

-- The hourly rollup is fed from the minute one: each insert's minute rows, already aggregated,
-- are merged per hour, so requests are aggregated once.
CREATE MATERIALIZED VIEW IF NOT EXISTS fathom.speed_1h_mv{local} {on_cluster}
TO fathom.speed_1h{local}
AS SELECT
    toStartOfHour(minute) AS hour,
    model,
    deployment,
    origin,
    route,
    sum(requests) AS requests,
    sum(streams) AS streams,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sumMap(statuses) AS statuses,
    sumMap(errors) AS errors,
    sumMap(finish_reasons) AS finish_reasons,
    quantilesTDigestMergeState(0.5, 0.9, 0.95, 0.99)(ttfb_ms) AS ttfb_ms,
    quantilesTDigestMergeState(0.5, 0.9, 0.95, 0.99)(ttft_ms) AS ttft_ms,
    quantilesTDigestMergeState(0.5, 0.9, 0.95, 0.99)(e2e_ms) AS e2e_ms,
    quantilesTDigestMergeState(0.5, 0.9, 0.95, 0.99)(itl_mean_ms) AS itl_mean_ms,
    quantilesTDigestMergeState(0.5, 0.9, 0.95, 0.99)(itl_p99_ms) AS itl_p99_ms,
    quantilesTDigestMergeState(0.5, 0.9, 0.95, 0.99)(decode_tps) AS decode_tps
FROM fathom.speed_1m{local}
GROUP BY hour, model, deployment, origin, route;
