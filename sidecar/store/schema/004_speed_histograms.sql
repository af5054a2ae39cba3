-- Fixed-size latency histograms in the speed rollups, so that reading a week costs the same at
-- a million requests as at a billion. A t-digest state grows with the values it has seen (an
-- hourly state held ~55 centroids at 1M rows and ~550 at 10M), and so does merging it; a
-- histogram's size is bounded by its number of buckets.
-- Buckets are 5 % wide on a log scale: bucket k holds values in [1.05^(k-0.5), 1.05^(k+0.5)),
-- stored as Map(bucket k, count), k = round(ln(x) / ln(1.05)) with x clamped to [0.001, 1e9]
-- (k from -142 to 425: at most 568 entries whatever the traffic). Read a percentile as
--   pow(1.05, quantileExactWeightedOrNullArray(0.95)(mapKeys(ttft_ms_hist), mapValues(ttft_ms_hist)))
-- which is the bucket's geometric centre, within 2.5 % of the exact value (1.05^0.5 = 1.0247);
-- NULL where nothing was measured. Like the t-digests before, over answered requests only.
-- Existing stores upgrade in place: the columns are added (old rows read empty maps), both
-- views' queries are replaced in one ALTER each, then the minute rollup is backfilled from the
-- raw requests stored before (the hourly view passes the backfill on). The t-digest columns
-- stay, with what they hold, but the views no longer fill them: nothing reads them, and each
-- cost engine time on every insert.
-- The backfill reads every request row (seconds per ten million on 2 cores). A batch that
-- reaches the store between the view change and the backfill is counted in both: that window
-- is the time between two statements, and a few requests counted twice move no percentile.
-- Hours older than fathom.requests' retention (30 days; speed_1h keeps 365) have no raw rows
-- left to backfill from: their percentiles read NULL. Placeholders as in 001; the backfill
-- names the tables without {local}, so on a cluster it reads and writes the Distributed ones.

ALTER TABLE fathom.speed_1m{local} {on_cluster}
    ADD COLUMN IF NOT EXISTS ttfb_ms_hist SimpleAggregateFunction(sumMap, Map(Int16, UInt64)),
    ADD COLUMN IF NOT EXISTS ttft_ms_hist SimpleAggregateFunction(sumMap, Map(Int16, UInt64)),
    ADD COLUMN IF NOT EXISTS e2e_ms_hist SimpleAggregateFunction(sumMap, Map(Int16, UInt64)),
    ADD COLUMN IF NOT EXISTS itl_mean_ms_hist SimpleAggregateFunction(sumMap, Map(Int16, UInt64)),
    ADD COLUMN IF NOT EXISTS itl_p99_ms_hist SimpleAggregateFunction(sumMap, Map(Int16, UInt64)),
    ADD COLUMN IF NOT EXISTS decode_tps_hist SimpleAggregateFunction(sumMap, Map(Int16, UInt64)),
    ADD COLUMN IF NOT EXISTS ttfr_ms_hist SimpleAggregateFunction(sumMap, Map(Int16, UInt64)),
    ADD COLUMN IF NOT EXISTS ttfa_ms_hist SimpleAggregateFunction(sumMap, Map(Int16, UInt64)),
    ADD COLUMN IF NOT EXISTS ttft_tool_ms_hist SimpleAggregateFunction(sumMap, Map(Int16, UInt64));

ALTER TABLE fathom.speed_1h{local} {on_cluster}
    ADD COLUMN IF NOT EXISTS ttfb_ms_hist SimpleAggregateFunction(sumMap, Map(Int16, UInt64)),
    ADD COLUMN IF NOT EXISTS ttft_ms_hist SimpleAggregateFunction(sumMap, Map(Int16, UInt64)),
    ADD COLUMN IF NOT EXISTS e2e_ms_hist SimpleAggregateFunction(sumMap, Map(Int16, UInt64)),
    ADD COLUMN IF NOT EXISTS itl_mean_ms_hist SimpleAggregateFunction(sumMap, Map(Int16, UInt64)),
    ADD COLUMN IF NOT EXISTS itl_p99_ms_hist SimpleAggregateFunction(sumMap, Map(Int16, UInt64)),
    ADD COLUMN IF NOT EXISTS decode_tps_hist SimpleAggregateFunction(sumMap, Map(Int16, UInt64)),
    ADD COLUMN IF NOT EXISTS ttfr_ms_hist SimpleAggregateFunction(sumMap, Map(Int16, UInt64)),
    ADD COLUMN IF NOT EXISTS ttfa_ms_hist SimpleAggregateFunction(sumMap, Map(Int16, UInt64)),
    ADD COLUMN IF NOT EXISTS ttft_tool_ms_hist SimpleAggregateFunction(sumMap, Map(Int16, UInt64));

ALTER TABLE fathom.speed_1m_mv{local} {on_cluster}
MODIFY QUERY WITH x -> map(toInt16(round(log(least(greatest(x, 0.001), 1e9)) / log(1.05))), toUInt64(1)) AS bucket
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
    sumMapIf(bucket(ifNull(ttfb_ms, 0)), error = '' AND ttfb_ms IS NOT NULL) AS ttfb_ms_hist,
    sumMapIf(bucket(ifNull(ttft_ms, 0)), error = '' AND ttft_ms IS NOT NULL) AS ttft_ms_hist,
    sumMapIf(bucket(ifNull(e2e_ms, 0)), error = '' AND e2e_ms IS NOT NULL) AS e2e_ms_hist,
    sumMapIf(bucket(ifNull(itl_mean_ms, 0)), error = '' AND itl_mean_ms IS NOT NULL) AS itl_mean_ms_hist,
    sumMapIf(bucket(ifNull(itl_p99_ms, 0)), error = '' AND itl_p99_ms IS NOT NULL) AS itl_p99_ms_hist,
    sumMapIf(bucket(ifNull(decode_tps, 0)), error = '' AND decode_tps IS NOT NULL) AS decode_tps_hist,
    sumMapIf(bucket(ifNull(ttfr_ms, 0)), error = '' AND ttfr_ms IS NOT NULL) AS ttfr_ms_hist,
    sumMapIf(bucket(ifNull(ttfa_ms, 0)), error = '' AND ttfa_ms IS NOT NULL) AS ttfa_ms_hist,
    sumMapIf(bucket(ifNull(ttft_tool_ms, 0)), error = '' AND ttft_tool_ms IS NOT NULL) AS ttft_tool_ms_hist
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
    sumMap(ttfb_ms_hist) AS ttfb_ms_hist,
    sumMap(ttft_ms_hist) AS ttft_ms_hist,
    sumMap(e2e_ms_hist) AS e2e_ms_hist,
    sumMap(itl_mean_ms_hist) AS itl_mean_ms_hist,
    sumMap(itl_p99_ms_hist) AS itl_p99_ms_hist,
    sumMap(decode_tps_hist) AS decode_tps_hist,
    sumMap(ttfr_ms_hist) AS ttfr_ms_hist,
    sumMap(ttfa_ms_hist) AS ttfa_ms_hist,
    sumMap(ttft_tool_ms_hist) AS ttft_tool_ms_hist
FROM fathom.speed_1m{local}
GROUP BY hour, model, deployment, origin, route;

-- Only the histograms: the other columns of these rows read zero and empty maps, which add
-- nothing when the engine merges them into the rows the view wrote.
INSERT INTO fathom.speed_1m (minute, model, deployment, origin, route, ttfb_ms_hist, ttft_ms_hist, e2e_ms_hist, itl_mean_ms_hist, itl_p99_ms_hist, decode_tps_hist, ttfr_ms_hist, ttfa_ms_hist, ttft_tool_ms_hist)
WITH x -> map(toInt16(round(log(least(greatest(x, 0.001), 1e9)) / log(1.05))), toUInt64(1)) AS bucket
SELECT
    toStartOfMinute(ts) AS minute,
    model,
    deployment,
    origin,
    route,
    sumMapIf(bucket(ifNull(ttfb_ms, 0)), error = '' AND ttfb_ms IS NOT NULL) AS ttfb_ms_hist,
    sumMapIf(bucket(ifNull(ttft_ms, 0)), error = '' AND ttft_ms IS NOT NULL) AS ttft_ms_hist,
    sumMapIf(bucket(ifNull(e2e_ms, 0)), error = '' AND e2e_ms IS NOT NULL) AS e2e_ms_hist,
    sumMapIf(bucket(ifNull(itl_mean_ms, 0)), error = '' AND itl_mean_ms IS NOT NULL) AS itl_mean_ms_hist,
    sumMapIf(bucket(ifNull(itl_p99_ms, 0)), error = '' AND itl_p99_ms IS NOT NULL) AS itl_p99_ms_hist,
    sumMapIf(bucket(ifNull(decode_tps, 0)), error = '' AND decode_tps IS NOT NULL) AS decode_tps_hist,
    sumMapIf(bucket(ifNull(ttfr_ms, 0)), error = '' AND ttfr_ms IS NOT NULL) AS ttfr_ms_hist,
    sumMapIf(bucket(ifNull(ttfa_ms, 0)), error = '' AND ttfa_ms IS NOT NULL) AS ttfa_ms_hist,
    sumMapIf(bucket(ifNull(ttft_tool_ms, 0)), error = '' AND ttft_tool_ms IS NOT NULL) AS ttft_tool_ms_hist
FROM fathom.requests
WHERE ts < now()
GROUP BY minute, model, deployment, origin, route;
