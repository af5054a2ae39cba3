-- Fathom's tables. Placeholders are filled by sidecar/store/schema.py:
--   {on_cluster}      '' or 'ON CLUSTER name'
--   {local}           '' or '_local' (cluster: the replicated tables behind Distributed ones)
--   {engine:T}        MergeTree / ReplicatedMergeTree(...) for table T; {agg_engine:T} likewise
--   {ttl:T}           retention in days for table T (`fathom schema apply --ttl-days T=N`)
--   {dedup_window}    how many recent inserts (blocks) each table remembers for deduplication
-- The writer inserts every batch with an insert_deduplication_token; the deduplication
-- windows make a batch replayed from the spool after a crash land exactly once, in the
-- tables and in the rollup the materialized view feeds, as long as fewer inserts than the
-- window reached the table in between (10000: minutes even with a hundred sidecars).

CREATE DATABASE IF NOT EXISTS fathom {on_cluster};

CREATE TABLE IF NOT EXISTS fathom.requests{local} {on_cluster}
(
    ts             DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    request_id     String CODEC(ZSTD(1)),
    route          LowCardinality(String),
    model          LowCardinality(String),
    deployment     LowCardinality(String),
    origin         LowCardinality(String),
    stream         UInt8,
    status         UInt16,
    error          LowCardinality(String),
    error_detail   String CODEC(ZSTD(3)),
    finish_reason  LowCardinality(String),
    input_tokens   UInt32 CODEC(T64, ZSTD(1)),
    output_tokens  UInt32 CODEC(T64, ZSTD(1)),
    tokens_source  LowCardinality(String),
    ttfb_ms        Nullable(Float32) CODEC(ZSTD(1)),
    ttft_ms        Nullable(Float32) CODEC(ZSTD(1)),
    e2e_ms         Float32 CODEC(ZSTD(1)),
    itl_mean_ms    Nullable(Float32) CODEC(ZSTD(1)),
    itl_p50_ms     Nullable(Float32) CODEC(ZSTD(1)),
    itl_p99_ms     Nullable(Float32) CODEC(ZSTD(1)),
    itl_max_ms     Nullable(Float32) CODEC(ZSTD(1)),
    decode_tps     Nullable(Float32) CODEC(ZSTD(1)),
    chunks         UInt32 CODEC(T64, ZSTD(1)),
    sampled        UInt8,
    client         String CODEC(ZSTD(1)),
    upstream       LowCardinality(String),
    path           LowCardinality(String),
    request_bytes  UInt64 CODEC(T64, ZSTD(1)),
    response_bytes UInt64 CODEC(T64, ZSTD(1)),
    -- "what happened to request X?" without scanning the partition
    INDEX request_id_bf request_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = {engine:requests}
PARTITION BY toDate(ts)
ORDER BY (model, deployment, origin, ts)
TTL toDateTime(ts) + INTERVAL {ttl:requests} DAY
SETTINGS {dedup_window};

CREATE TABLE IF NOT EXISTS fathom.samples{local} {on_cluster}
(
    ts             DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    request_id     String,
    model          LowCardinality(String),
    deployment     LowCardinality(String),
    route          LowCardinality(String),
    origin         LowCardinality(String),
    stream         UInt8,
    finish_reason  LowCardinality(String),
    request_json   String CODEC(ZSTD(3)),
    response_text  String CODEC(ZSTD(3))
)
ENGINE = {engine:samples}
PARTITION BY toDate(ts)
ORDER BY (model, deployment, ts)
TTL toDateTime(ts) + INTERVAL {ttl:samples} DAY
SETTINGS {dedup_window};

CREATE TABLE IF NOT EXISTS fathom.quality{local} {on_cluster}
(
    ts             DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    request_id     String,
    model          LowCardinality(String),
    deployment     LowCardinality(String),
    probe          LowCardinality(String),
    item_id        String,
    score          Float32,
    passed         Nullable(UInt8),
    detail         String CODEC(ZSTD(3)),
    scorer         LowCardinality(String)
)
ENGINE = {engine:quality}
PARTITION BY toDate(ts)
ORDER BY (model, deployment, probe, ts)
TTL toDateTime(ts) + INTERVAL {ttl:quality} DAY
SETTINGS {dedup_window};

CREATE TABLE IF NOT EXISTS fathom.regressions{local} {on_cluster}
(
    ts             DateTime64(3, 'UTC'),
    model          LowCardinality(String),
    deployment     LowCardinality(String),
    probe          LowCardinality(String),
    test           LowCardinality(String),
    statistic      Float64,
    baseline       Float64,
    current        Float64,
    n_baseline     UInt32,
    n_current      UInt32
)
ENGINE = {engine:regressions}
PARTITION BY toDate(ts)
ORDER BY (model, deployment, probe, ts)
TTL toDateTime(ts) + INTERVAL {ttl:regressions} DAY
SETTINGS {dedup_window};

-- Per-minute rollup of speed per model/deployment/origin, fed by the view below. Read it with
-- countMerge(requests), quantilesTDigestMerge(0.5, 0.9, 0.95, 0.99)(ttft_ms), ... GROUP BY.
CREATE TABLE IF NOT EXISTS fathom.requests_1m{local} {on_cluster}
(
    minute         DateTime('UTC'),
    model          LowCardinality(String),
    deployment     LowCardinality(String),
    origin         LowCardinality(String),
    requests       AggregateFunction(count),
    errors         AggregateFunction(countIf, UInt8),
    output_tokens  AggregateFunction(sum, UInt32),
    ttft_ms        AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Nullable(Float32)),
    itl_ms         AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Nullable(Float32)),
    decode_tps     AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Nullable(Float32)),
    e2e_ms         AggregateFunction(quantilesTDigest(0.5, 0.9, 0.95, 0.99), Float32)
)
ENGINE = {agg_engine:requests_1m}
PARTITION BY toDate(minute)
ORDER BY (model, deployment, origin, minute)
TTL minute + INTERVAL {ttl:requests_1m} DAY
-- A replayed batch reaches the view again: its own window keeps the rollup exactly-once too.
SETTINGS {dedup_window};

CREATE MATERIALIZED VIEW IF NOT EXISTS fathom.requests_1m_mv{local} {on_cluster}
TO fathom.requests_1m{local}
AS SELECT
    toStartOfMinute(ts) AS minute,
    model,
    deployment,
    origin,
    countState() AS requests,
    countIfState(toUInt8(error != '')) AS errors,
    sumState(output_tokens) AS output_tokens,
    quantilesTDigestState(0.5, 0.9, 0.95, 0.99)(ttft_ms) AS ttft_ms,
    quantilesTDigestState(0.5, 0.9, 0.95, 0.99)(itl_mean_ms) AS itl_ms,
    quantilesTDigestState(0.5, 0.9, 0.95, 0.99)(decode_tps) AS decode_tps,
    quantilesTDigestState(0.5, 0.9, 0.95, 0.99)(e2e_ms) AS e2e_ms
FROM fathom.requests{local}
GROUP BY minute, model, deployment, origin;
