-- Reasoning and tool calls, measured apart from the answer (DESIGN.md, timing definitions):
--   ttfr_ms        t0 -> first reasoning event (delta.reasoning / reasoning_content), streams only
--   ttfa_ms        t0 -> first answer event (answer text or a tool call): the TTFT a user of a
--                  reasoning model feels; ttft_ms keeps its meaning (first content of any kind)
--   ttft_tool_ms   t0 -> first tool-call event
--   reasoning_tokens from usage (completion_tokens_details.reasoning_tokens) or counted
--                  reasoning events, as reasoning_source says ('usage', 'counted', 'none')
--   tool_calls, tool_calls_invalid (arguments that do not parse as a JSON object)
-- Existing stores upgrade in place: the columns are added (old rows read NULL or 0), the
-- speed rollups gain the same figures and their views' queries are replaced, in one ALTER
-- each, so no insert falls between two views. Placeholders as in 001.

ALTER TABLE fathom.requests{local} {on_cluster}
    ADD COLUMN IF NOT EXISTS ttfr_ms Nullable(Float32) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS ttfa_ms Nullable(Float32) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS ttft_tool_ms Nullable(Float32) CODEC(ZSTD(1)),
    ADD COLUMN IF NOT EXISTS reasoning_tokens UInt32 CODEC(T64, ZSTD(1)),
    ADD COLUMN IF NOT EXISTS reasoning_source LowCardinality(String) DEFAULT 'none',
    ADD COLUMN IF NOT EXISTS tool_calls UInt32 CODEC(T64, ZSTD(1)),
    ADD COLUMN IF NOT EXISTS tool_calls_invalid UInt32 CODEC(T64, ZSTD(1));

ALTER TABLE fathom.speed_1m{local} {on_cluster}
    ADD COLUMN IF NOT EXISTS reasoning_tokens SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS tool_calls SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS tool_calls_invalid SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS ttfr_ms AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Float32),
    ADD COLUMN IF NOT EXISTS ttfa_ms AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Float32),
    ADD COLUMN IF NOT EXISTS ttft_tool_ms AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Float32);

ALTER TABLE fathom.speed_1h{local} {on_cluster}
    ADD COLUMN IF NOT EXISTS reasoning_tokens SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS tool_calls SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS tool_calls_invalid SimpleAggregateFunction(sum, UInt64),
    ADD COLUMN IF NOT EXISTS ttfr_ms AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Float32),
    ADD COLUMN IF NOT EXISTS ttfa_ms AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Float32),
    ADD COLUMN IF NOT EXISTS ttft_tool_ms AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Float32);

ALTER TABLE fathom.speed_1m_mv{local} {on_cluster}
MODIFY QUERY SELECT
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
    quantilesTDigestStateIf(0.5, 0.9, 0.95, 0.99)(decode_tps, error = '') AS decode_tps,
    sum(toUInt64(reasoning_tokens)) AS reasoning_tokens,
    sum(toUInt64(tool_calls)) AS tool_calls,
    sum(toUInt64(tool_calls_invalid)) AS tool_calls_invalid,
    quantilesTDigestStateIf(0.5, 0.9, 0.95, 0.99)(ttfr_ms, error = '') AS ttfr_ms,
    quantilesTDigestStateIf(0.5, 0.9, 0.95, 0.99)(ttfa_ms, error = '') AS ttfa_ms,
    quantilesTDigestStateIf(0.5, 0.9, 0.95, 0.99)(ttft_tool_ms, error = '') AS ttft_tool_ms
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
    quantilesTDigestMergeState(0.5, 0.9, 0.95, 0.99)(ttfb_ms) AS ttfb_ms,
    quantilesTDigestMergeState(0.5, 0.9, 0.95, 0.99)(ttft_ms) AS ttft_ms,
    quantilesTDigestMergeState(0.5, 0.9, 0.95, 0.99)(e2e_ms) AS e2e_ms,
    quantilesTDigestMergeState(0.5, 0.9, 0.95, 0.99)(itl_mean_ms) AS itl_mean_ms,
    quantilesTDigestMergeState(0.5, 0.9, 0.95, 0.99)(itl_p99_ms) AS itl_p99_ms,
    quantilesTDigestMergeState(0.5, 0.9, 0.95, 0.99)(decode_tps) AS decode_tps,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(tool_calls) AS tool_calls,
    sum(tool_calls_invalid) AS tool_calls_invalid,
    quantilesTDigestMergeState(0.5, 0.9, 0.95, 0.99)(ttfr_ms) AS ttfr_ms,
    quantilesTDigestMergeState(0.5, 0.9, 0.95, 0.99)(ttfa_ms) AS ttfa_ms,
    quantilesTDigestMergeState(0.5, 0.9, 0.95, 0.99)(ttft_tool_ms) AS ttft_tool_ms
FROM fathom.speed_1m{local}
GROUP BY hour, model, deployment, origin, route;
