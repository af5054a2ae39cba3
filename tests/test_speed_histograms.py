"""The speed rollups' log-bucketed histograms on chDB: percentiles within the bucket error."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from sidecar.store.client import Store
from tests.support.store import HISTOGRAM_ERROR, opened

LEVELS = (0.5, 0.9, 0.95, 0.99)
COLUMNS = ("ts", "request_id", "route", "model", "deployment", "origin", "stream", "error",
           "ttft_ms", "e2e_ms", "decode_tps")  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with opened(tmp_path / "db", schema=True) as fresh:
        yield fresh


def percentile_sql(column: str, level: float, table: str) -> str:
    """The read the dashboards use, for one column and level."""
    index = LEVELS.index(level) + 1
    return (
        f"SELECT nullIf(quantilesExactWeightedMerge(0.5, 0.9, 0.95, 0.99)({column}_hist)"
        f"[{index}], 0) FROM fathom.{table}"
    )


def test_histogram_percentiles_are_within_the_bucket_error(store: Store) -> None:
    rng = np.random.default_rng(20261205)
    n = 20_000
    # Stored as Float32, so the exact quantiles are of the Float32 values too.
    data = {
        "ttft_ms": rng.lognormal(np.log(300), 0.6, n).astype(np.float32),
        "e2e_ms": rng.lognormal(np.log(4000), 1.2, n).astype(np.float32),  # a long tail
        "decode_tps": rng.normal(60, 8, n).clip(1, None).astype(np.float32),
    }
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
    failed = n  # one failed request with a huge latency: not a latency measurement
    rows = [
        [start + timedelta(milliseconds=i * 100), f"h{i}", "chat", "m", "d", "user", 1,
         "upstream_timeout" if i == failed else "",
         float(data["ttft_ms"][i]) if i < n else 9e6, float(data["e2e_ms"][i]) if i < n else 9e6,
         float(data["decode_tps"][i]) if i < n else 0.5]
        for i in range(n + 1)
    ]  # fmt: skip
    store.insert_sync("fathom.requests", COLUMNS, rows)
    for column, values in data.items():
        for level in LEVELS:
            # The order statistic a histogram can only approximate: no interpolation.
            exact = float(np.quantile(values, level, method="inverted_cdf"))
            for table in ("speed_1m", "speed_1h"):
                got = store.query_sync(percentile_sql(column, level, table))[0][0]
                assert abs(got / exact - 1) <= HISTOGRAM_ERROR + 1e-6, (column, level, table)


def test_nothing_measured_reads_null_and_extremes_stay_in_range(store: Store) -> None:
    ts = datetime.now(UTC) - timedelta(hours=1)
    rows = [
        [ts, "z1", "chat", "m", "d", "user", 0, "", None, 0.0, None],  # not streamed, e2e 0
        [ts, "z2", "chat", "m", "d", "user", 0, "", None, 3.0e38, None],  # absurd, still kept
    ]
    store.insert_sync("fathom.requests", COLUMNS, rows)
    assert store.query_sync(percentile_sql("ttft_ms", 0.5, "speed_1m")) == [(None,)]
    low = store.query_sync(percentile_sql("e2e_ms", 0.5, "speed_1m"))[0][0]  # the lower of two
    high = store.query_sync(percentile_sql("e2e_ms", 0.99, "speed_1m"))[0][0]
    # Clamped to the histogram's range [0.001, 1e9] rather than lost or overflowing the key.
    assert low == pytest.approx(0.001, rel=HISTOGRAM_ERROR) and high == pytest.approx(1e9, rel=0.03)
