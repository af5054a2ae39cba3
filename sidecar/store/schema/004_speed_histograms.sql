-- Fixed-size latency histograms in the speed rollups, so that reading a week costs the same at
-- a million requests as at a billion. A t-digest state grows with the values it has seen, and
-- so does merging it; a histogram's size is bounded by its number of buckets.
-- Buckets are 5 % wide on a log scale: value x (clamped to [0.001, 1e9]) counts in bucket
-- k = round(ln(x) / ln(1.05)), which holds [1.05^(k-0.5), 1.05^(k+0.5)) and is stored as its
-- centre 1.05^k: at most 568 distinct values per state, whatever the traffic. The state is that
-- of quantilesExactWeighted (a hash table from value to count). Read percentiles as
--   nullIf(quantilesExactWeightedMerge(0.5, 0.9, 0.95, 0.99)(ttft_ms_hist)[3], 0)
-- a bucket centre within 2.5 % of the exact value (1.05^0.5 = 1.0247), NULL where nothing was
-- measured (an empty state reads 0, which no clamped value is). The same levels as the
-- t-digests, so that a panel's p50, p95 and p99 of one column share one merge.
-- Like the t-digests, over answered requests only. (sumMap over Map(bucket, count) would give
-- the same figures at several times this state's engine CPU per inserted row: docs/grafana.md.)
-- Existing stores upgrade in place: the columns are added (old rows read empty states), both
-- views' queries are replaced in one ALTER each, then the minute rollup is backfilled from the
-- raw requests stored before (the hourly view passes the backfill on). The t-digest columns
-- stay, with what they hold, but the views no longer fill them: nothing reads them, and they
-- cost engine time on every insert.
-- A batch that reaches the store between the view change and the backfill is counted in both:
-- that window is the time between two statements, and a few requests counted twice move no
-- percentile. Hours older than fathom.requests' retention (30 days; speed_1h keeps 365) have
-- no raw rows left to backfill from: their percentiles read NULL. Placeholders as in 001; the
-- backfill names the tables without {local}, so on a cluster it reads and writes the
-- Distributed ones.

ALTER TABLE fathom.speed_1m{local} {on_cluster}
    ADD COLUMN IF NOT EXISTS ttfb_ms_hist AggregateFunction(quantilesExactWeighted(0.5, 0.9, 0.95, 0.99), Float32, UInt8),
    ADD COLUMN IF NOT EXISTS ttft_ms_hist AggregateFunction(quantilesExactWeighted(0.5, 0.9, 0.95, 0.99), Float32, UInt8),
    ADD COLUMN IF NOT EXISTS e2e_ms_hist AggregateFunction(quantilesExactWeighted(0.5, 0.9, 0.95, 0.99), Float32, UInt8),
    ADD COLUMN IF NOT EXISTS itl_mean_ms_hist AggregateFunction(quantilesExactWeighted(0.5, 0.9, 0.95, 0.99), Float32, UInt8),
    ADD COLUMN IF NOT EXISTS itl_p99_ms_hist AggregateFunction(quantilesExactWeighted(0.5, 0.9, 0.95, 0.99), Float32, UInt8),
    ADD COLUMN IF NOT EXISTS decode_tps_hist AggregateFunction(quantilesExactWeighted(0.5, 0.9, 0.95, 0.99), Float32, UInt8),
    ADD COLUMN IF NOT EXISTS ttfr_ms_hist AggregateFunction(quantilesExactWeighted(0.5, 0.9, 0.95, 0.99), Float32, UInt8),
    ADD COLUMN IF NOT EXISTS ttfa_ms_hist AggregateFunction(quantilesExactWeighted(0.5, 0.9, 0.95, 0.99), Float32, UInt8),
    ADD COLUMN IF NOT EXISTS ttft_tool_ms_hist AggregateFunction(quantilesExactWeighted(0.5, 0.9, 0.95, 0.99), Float32, UInt8);

ALTER TABLE fathom.speed_1h{local} {on_cluster}
    ADD COLUMN IF NOT EXISTS ttfb_ms_hist AggregateFunction(quantilesExactWeighted(0.5, 0.9, 0.95, 0.99), Float32, UInt8),
    ADD COLUMN IF NOT EXISTS ttft_ms_hist AggregateFunction(quantilesExactWeighted(0.5, 0.9, 0.95, 0.99), Float32, UInt8),
    ADD COLUMN IF NOT EXISTS e2e_ms_hist AggregateFunction(quantilesExactWeighted(0.5, 0.9, 0.95, 0.99), Float32, UInt8),
    ADD COLUMN IF NOT EXISTS itl_mean_ms_hist AggregateFunction(quantilesExactWeighted(0.5, 0.9, 0.95, 0.99), Float32, UInt8),
    ADD COLUMN IF NOT EXISTS itl_p99_ms_hist AggregateFunction(quantilesExactWeighted(0.5, 0.9, 0.95, 0.99), Float32, UInt8),
    ADD COLUMN IF NOT EXISTS decode_tps_hist AggregateFunction(quantilesExactWeighted(0.5, 0.9, 0.95, 0.99), Float32, UInt8),
    ADD COLUMN IF NOT EXISTS ttfr_ms_hist AggregateFunction(quantilesExactWeighted(0.5, 0.9, 0.95, 0.99), Float32, UInt8),
    ADD COLUMN IF NOT EXISTS ttfa_ms_hist AggregateFunction(quantilesExactWeighted(0.5, 0.9, 0.95, 0.99), Float32, UInt8),
    ADD COLUMN IF NOT EXISTS ttft_tool_ms_hist AggregateFunction(quantilesExactWeighted(0.5, 0.9, 0.95, 0.99), Float32, UInt8);

ALTER TABLE fathom.speed_1m_mv{local} {on_cluster}
MODIFY QUERY WITH x -> toFloat32(pow(1.05, round(log(least(greatest(x, 0.001), 1e9)) / log(1.05)))) AS bucket
SELECT
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
    sum(toUInt64(reasoning_tokens)) AS reasoning_tokens,
    sum(toUInt64(tool_calls)) AS tool_calls,
    sum(toUInt64(tool_calls_invalid)) AS tool_calls_invalid,
    quantilesExactWeightedStateIf(0.5, 0.9, 0.95, 0.99)(bucket(ifNull(ttfb_ms, 0)), toUInt8(1), error = '' AND ttfb_ms IS NOT NULL) AS ttfb_ms_hist,
    quantilesExactWeightedStateIf(0.5, 0.9, 0.95, 0.99)(bucket(ifNull(ttft_ms, 0)), toUInt8(1), error = '' AND ttft_ms IS NOT NULL) AS ttft_ms_hist,
    quantilesExactWeightedStateIf(0.5, 0.9, 0.95, 0.99)(bucket(ifNull(e2e_ms, 0)), toUInt8(1), error = '' AND e2e_ms IS NOT NULL) AS e2e_ms_hist,
    quantilesExactWeightedStateIf(0.5, 0.9, 0.95, 0.99)(bucket(ifNull(itl_mean_ms, 0)), toUInt8(1), error = '' AND itl_mean_ms IS NOT NULL) AS itl_mean_ms_hist,
    quantilesExactWeightedStateIf(0.5, 0.9, 0.95, 0.99)(bucket(ifNull(itl_p99_ms, 0)), toUInt8(1), error = '' AND itl_p99_ms IS NOT NULL) AS itl_p99_ms_hist,
    quantilesExactWeightedStateIf(0.5, 0.9, 0.95, 0.99)(bucket(ifNull(decode_tps, 0)), toUInt8(1), error = '' AND decode_tps IS NOT NULL) AS decode_tps_hist,
    quantilesExactWeightedStateIf(0.5, 0.9, 0.95, 0.99)(bucket(ifNull(ttfr_ms, 0)), toUInt8(1), error = '' AND ttfr_ms IS NOT NULL) AS ttfr_ms_hist,
    quantilesExactWeightedStateIf(0.5, 0.9, 0.95, 0.99)(bucket(ifNull(ttfa_ms, 0)), toUInt8(1), error = '' AND ttfa_ms IS NOT NULL) AS ttfa_ms_hist,
    quantilesExactWeightedStateIf(0.5, 0.9, 0.95, 0.99)(bucket(ifNull(ttft_tool_ms, 0)), toUInt8(1), error = '' AND ttft_tool_ms IS NOT NULL) AS ttft_tool_ms_hist
FROM fathom.requests{local}
GROUP BY minute, model, deployment, origin, route;

ALTER TABLE fathom.speed_1h_mv{local} {on_cluster}
MODIFY QUERY SELECT
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
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(tool_calls) AS tool_calls,
    sum(tool_calls_invalid) AS tool_calls_invalid,
    quantilesExactWeightedMergeState(0.5, 0.9, 0.95, 0.99)(ttfb_ms_hist) AS ttfb_ms_hist,
    quantilesExactWeightedMergeState(0.5, 0.9, 0.95, 0.99)(ttft_ms_hist) AS ttft_ms_hist,
    quantilesExactWeightedMergeState(0.5, 0.9, 0.95, 0.99)(e2e_ms_hist) AS e2e_ms_hist,
    quantilesExactWeightedMergeState(0.5, 0.9, 0.95, 0.99)(itl_mean_ms_hist) AS itl_mean_ms_hist,
    quantilesExactWeightedMergeState(0.5, 0.9, 0.95, 0.99)(itl_p99_ms_hist) AS itl_p99_ms_hist,
    quantilesExactWeightedMergeState(0.5, 0.9, 0.95, 0.99)(decode_tps_hist) AS decode_tps_hist,
    quantilesExactWeightedMergeState(0.5, 0.9, 0.95, 0.99)(ttfr_ms_hist) AS ttfr_ms_hist,
    quantilesExactWeightedMergeState(0.5, 0.9, 0.95, 0.99)(ttfa_ms_hist) AS ttfa_ms_hist,
    quantilesExactWeightedMergeState(0.5, 0.9, 0.95, 0.99)(ttft_tool_ms_hist) AS ttft_tool_ms_hist
FROM fathom.speed_1m{local}
GROUP BY hour, model, deployment, origin, route;

-- Only the histograms: the other columns of these rows read zero and empty maps, which add
-- nothing when the engine merges them into the rows the view wrote.
INSERT INTO fathom.speed_1m (minute, model, deployment, origin, route, ttfb_ms_hist, ttft_ms_hist, e2e_ms_hist, itl_mean_ms_hist, itl_p99_ms_hist, decode_tps_hist, ttfr_ms_hist, ttfa_ms_hist, ttft_tool_ms_hist)
WITH x -> toFloat32(pow(1.05, round(log(least(greatest(x, 0.001), 1e9)) / log(1.05)))) AS bucket
SELECT
    toStartOfMinute(ts) AS minute,
    model,
    deployment,
    origin,
    route,
    quantilesExactWeightedStateIf(0.5, 0.9, 0.95, 0.99)(bucket(ifNull(ttfb_ms, 0)), toUInt8(1), error = '' AND ttfb_ms IS NOT NULL) AS ttfb_ms_hist,
    quantilesExactWeightedStateIf(0.5, 0.9, 0.95, 0.99)(bucket(ifNull(ttft_ms, 0)), toUInt8(1), error = '' AND ttft_ms IS NOT NULL) AS ttft_ms_hist,
    quantilesExactWeightedStateIf(0.5, 0.9, 0.95, 0.99)(bucket(ifNull(e2e_ms, 0)), toUInt8(1), error = '' AND e2e_ms IS NOT NULL) AS e2e_ms_hist,
    quantilesExactWeightedStateIf(0.5, 0.9, 0.95, 0.99)(bucket(ifNull(itl_mean_ms, 0)), toUInt8(1), error = '' AND itl_mean_ms IS NOT NULL) AS itl_mean_ms_hist,
    quantilesExactWeightedStateIf(0.5, 0.9, 0.95, 0.99)(bucket(ifNull(itl_p99_ms, 0)), toUInt8(1), error = '' AND itl_p99_ms IS NOT NULL) AS itl_p99_ms_hist,
    quantilesExactWeightedStateIf(0.5, 0.9, 0.95, 0.99)(bucket(ifNull(decode_tps, 0)), toUInt8(1), error = '' AND decode_tps IS NOT NULL) AS decode_tps_hist,
    quantilesExactWeightedStateIf(0.5, 0.9, 0.95, 0.99)(bucket(ifNull(ttfr_ms, 0)), toUInt8(1), error = '' AND ttfr_ms IS NOT NULL) AS ttfr_ms_hist,
    quantilesExactWeightedStateIf(0.5, 0.9, 0.95, 0.99)(bucket(ifNull(ttfa_ms, 0)), toUInt8(1), error = '' AND ttfa_ms IS NOT NULL) AS ttfa_ms_hist,
    quantilesExactWeightedStateIf(0.5, 0.9, 0.95, 0.99)(bucket(ifNull(ttft_tool_ms, 0)), toUInt8(1), error = '' AND ttft_tool_ms IS NOT NULL) AS ttft_tool_ms_hist
FROM fathom.requests
WHERE ts < now()
GROUP BY minute, model, deployment, origin, route
-- a month of many series is millions of groups: past 1 GB they go to disk rather than fail
SETTINGS max_bytes_before_external_group_by = 1000000000;
