-- Who a request is for: the proxy's tenant header (x-tenant-id by default) or, when asked,
-- the hashed credential; '' when neither; capped per proxy process (tenant_cap) with the
-- rest as 'other'. The speed rollups gain it as the last part of their key, so that every
-- speed panel can filter by tenant; at most tenant_cap times the rows, in a table whose rows
-- are per minute or hour. Existing stores upgrade in place: old rows read '' (their rollup
-- rows too: no tenant was recorded then), and both views' queries are replaced, in one ALTER
-- each (a new key column may have no DEFAULT: a String's own is ''). On a cluster the Distributed tables gain the column without the key (they have none).
-- Placeholders as in 001.

ALTER TABLE fathom.requests{local} {on_cluster}
    ADD COLUMN IF NOT EXISTS tenant LowCardinality(String) DEFAULT '';

ALTER TABLE fathom.speed_1m{local} {on_cluster}
    ADD COLUMN IF NOT EXISTS tenant LowCardinality(String),
    MODIFY ORDER BY (model, deployment, origin, route, minute, tenant);

ALTER TABLE fathom.speed_1h{local} {on_cluster}
    ADD COLUMN IF NOT EXISTS tenant LowCardinality(String),
    MODIFY ORDER BY (model, deployment, origin, route, hour, tenant);

ALTER TABLE fathom.speed_1m_mv{local} {on_cluster}
MODIFY QUERY WITH x -> toFloat32(pow(1.05, round(log(least(greatest(x, 0.001), 1e9)) / log(1.05)))) AS bucket
SELECT
    toStartOfMinute(ts) AS minute,
    model,
    deployment,
    origin,
    route,
    tenant,
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
GROUP BY minute, model, deployment, origin, route, tenant;

ALTER TABLE fathom.speed_1h_mv{local} {on_cluster}
MODIFY QUERY SELECT
    toStartOfHour(minute) AS hour,
    model,
    deployment,
    origin,
    route,
    tenant,
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
GROUP BY hour, model, deployment, origin, route, tenant;
