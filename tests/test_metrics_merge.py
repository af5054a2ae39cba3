"""The workers' /metrics pages merged into one (sidecar.metrics_merge), and the worker count
that `--workers auto` resolves to (fathom.workers.available_cpus)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fathom import settings as fathom_settings
from fathom.workers import available_cpus, count
from sidecar.config import ConfigError
from sidecar.metrics_merge import merge
from tests.support.scrape import figures

WORKER_0 = """# HELP gen_ai_client_operation_duration_seconds d
# TYPE gen_ai_client_operation_duration_seconds histogram
gen_ai_client_operation_duration_seconds_bucket{model="a",le="0.1"} 2.0
gen_ai_client_operation_duration_seconds_bucket{model="a",le="+Inf"} 3.0
gen_ai_client_operation_duration_seconds_count{model="a"} 3.0
gen_ai_client_operation_duration_seconds_sum{model="a"} 0.5
# HELP fathom_requests_errors_total e
# TYPE fathom_requests_errors_total counter
fathom_requests_errors_total{error_type="upstream_timeout"} 1.0
# HELP fathom_writer_queue_rows q
# TYPE fathom_writer_queue_rows gauge
fathom_writer_queue_rows 10.0
# HELP fathom_writer_store_up u
# TYPE fathom_writer_store_up gauge
fathom_writer_store_up 1.0
"""
WORKER_1 = """# HELP gen_ai_client_operation_duration_seconds d
# TYPE gen_ai_client_operation_duration_seconds histogram
gen_ai_client_operation_duration_seconds_bucket{model="a",le="0.1"} 1.0
gen_ai_client_operation_duration_seconds_bucket{model="a",le="+Inf"} 4.0
gen_ai_client_operation_duration_seconds_count{model="a"} 4.0
gen_ai_client_operation_duration_seconds_sum{model="a"} 2.0
gen_ai_client_operation_duration_seconds_bucket{model="b",le="0.1"} 1.0
gen_ai_client_operation_duration_seconds_bucket{model="b",le="+Inf"} 1.0
gen_ai_client_operation_duration_seconds_count{model="b"} 1.0
gen_ai_client_operation_duration_seconds_sum{model="b"} 0.05
# HELP fathom_writer_queue_rows q
# TYPE fathom_writer_queue_rows gauge
fathom_writer_queue_rows 5.0
# HELP fathom_writer_store_up u
# TYPE fathom_writer_store_up gauge
fathom_writer_store_up 0.0
"""


def series(page: str) -> dict[str, float]:
    """Sample line (name and labels) -> value."""
    lines = [line for line in page.splitlines() if line and not line.startswith("#")]
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines}


def test_histograms_and_counters_sum_per_label_set() -> None:
    merged = series(merge([WORKER_0, WORKER_1]).decode())
    name = "gen_ai_client_operation_duration_seconds"
    assert merged[f'{name}_bucket{{le="0.1",model="a"}}'] == 3.0
    assert merged[f'{name}_bucket{{le="+Inf",model="a"}}'] == 7.0
    assert merged[f'{name}_count{{model="a"}}'] == 7.0
    assert merged[f'{name}_sum{{model="a"}}'] == 2.5
    assert merged[f'{name}_count{{model="b"}}'] == 1.0  # seen by one worker only
    assert merged['fathom_requests_errors_total{error_type="upstream_timeout"}'] == 1.0


def test_gauges_sum_but_up_gauges_take_the_minimum() -> None:
    merged = figures(merge([WORKER_0, WORKER_1]).decode())
    assert merged["fathom_writer_queue_rows"] == 15.0
    assert merged["fathom_writer_store_up"] == 0.0  # one writer cannot reach the store


def test_each_workers_request_count_is_its_own_series() -> None:
    merged = series(merge([WORKER_0, WORKER_1]).decode())
    assert merged['fathom_worker_requests_total{worker="0"}'] == 3.0
    assert merged['fathom_worker_requests_total{worker="1"}'] == 5.0


@pytest.mark.parametrize(
    ("cpu_max", "cap"), [("max 100000", None), ("150000 100000", 2), ("50000 100000", 1)]
)
def test_auto_is_the_affinity_capped_by_the_cgroup_quota(
    tmp_path: Path, cpu_max: str, cap: int | None
) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    cpus = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path / "cpu.max") == (cpus if cap is None else min(cpus, cap))
    assert available_cpus(tmp_path / "absent") == cpus


def test_workers_setting_is_a_positive_number_or_auto() -> None:
    assert count(fathom_settings.build(workers="3").workers) == 3
    for wrong in ("0", "-1", "two", ""):
        with pytest.raises(ConfigError, match="workers must be"):
            fathom_settings.build(workers=wrong)
    with pytest.raises(ConfigError, match="fathom probe"):
        fathom_settings.build(workers="2", probes=True)
