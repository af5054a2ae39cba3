"""The embedding scorer (real all-MiniLM-L6-v2 on CPU) and the common ProbeResult.

The model is loaded once per test session: the `scorer` fixture of tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from probes.result import QUALITY_COLUMNS, ProbeResult
from probes.scorer import (
    Scorer,
    ScorerConfig,
    ScorerError,
    load_scorer,
    pick_device,
    resolve_model,
)

ROOT = Path(__file__).resolve().parents[1]


def test_vectors_are_unit_length_and_meaningful(scorer: Scorer) -> None:
    texts = ["The cat sat on the mat.", "A cat was sitting on the mat.", "Stock prices fell."]
    vectors = scorer.embed_sync(texts)
    assert vectors.shape == (3, scorer.dim) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.7 > 0.2 > sims[0, 2]


def test_duplicates_are_encoded_once_and_order_is_kept(scorer: Scorer) -> None:
    before = scorer.stats.encoded
    texts = ["alpha beta", "a much longer sentence about gamma", "alpha beta", "delta"]
    vectors = scorer.embed_sync(texts)
    assert scorer.stats.encoded - before == 3
    assert np.array_equal(vectors[0], vectors[2])
    alone = scorer.embed_sync(["delta"])
    assert np.allclose(alone[0], vectors[3], atol=1e-5)


async def test_concurrent_callers_share_one_batch(scorer: Scorer) -> None:
    batches = scorer.stats.batches
    groups = [[f"question number {i} about topic {j}" for j in range(3)] for i in range(8)]
    results = await asyncio.gather(*(scorer.embed(g) for g in groups))
    assert scorer.stats.batches - batches == 1  # eight callers, one model call
    for group, got in zip(groups, results, strict=True):
        assert np.allclose(got, scorer.embed_sync(group), atol=1e-5)


async def test_embed_handles_empty_input_and_cancelled_callers(scorer: Scorer) -> None:
    assert (await scorer.embed([])).shape == (0, scorer.dim)
    doomed = asyncio.ensure_future(scorer.embed(["never mind"]))
    survivor = asyncio.ensure_future(scorer.embed(["still wanted"]))
    await asyncio.sleep(0)  # both are queued before one of them gives up
    doomed.cancel()
    assert (await survivor).shape == (1, scorer.dim)
    assert doomed.cancelled()


def test_warm_up_reports_device_dtype_batch_and_rate(scorer: Scorer) -> None:
    report = scorer.warm_up(8)
    line = report.line()
    assert report.per_second > 0 and report.sentences == 8
    assert "device=cpu" in line and "dtype=float32" in line and "batch=32" in line


def test_load_logs_the_throughput_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="probes.scorer"):
        small = load_scorer(ScorerConfig(device="cpu", batch_size=8, warmup_sentences=8))
    small.close()
    assert any("sentences/s" in r.getMessage() and "batch=8" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_device_and_model_errors_say_what_to_do(tmp_path: Path) -> None:
    assert pick_device("auto", cuda_available=False) == "cpu"
    assert pick_device("auto", cuda_available=True) == "cuda"
    assert pick_device("cuda:1", cuda_available=True) == "cuda:1"
    with pytest.raises(ScorerError, match="no CUDA"):
        pick_device("cuda", cuda_available=False)
    with pytest.raises(ScorerError, match="expected auto"):
        pick_device("tpu", cuda_available=True)
    with pytest.raises(ScorerError, match="no sentence-transformers model"):
        resolve_model(str(tmp_path))
    path, name = resolve_model("")
    assert name == "all-MiniLM-L6-v2" and (path / "modules.json").is_file()


def test_probe_result_row_matches_quality_columns() -> None:
    result = ProbeResult("factuality", "arith-001", 1.0, True, {"extracted": 391.0}, "x/v1")
    ts = datetime(2026, 1, 2, tzinfo=UTC)
    row = result.to_row(ts, "", "m", "d")
    assert tuple(row) == QUALITY_COLUMNS
    assert row["passed"] == 1 and json.loads(row["detail"]) == {"extracted": 391.0}
    assert (
        ProbeResult("consistency", "", 0.5, None, {}, "s").to_row(ts, "r", "m", "d")["passed"]
        is None
    )
    with pytest.raises(ValueError, match="within"):
        ProbeResult("p", "", 1.5, None, {}, "s")
    with pytest.raises(ValueError, match="within"):
        ProbeResult("p", "", float("nan"), None, {}, "s")
    with pytest.raises(ValueError):  # NaN in detail would break JSON readers
        ProbeResult("p", "", 0.5, None, {"x": float("nan")}, "s").detail_json()


def test_probe_modules_do_not_import_torch() -> None:
    code = (
        "import sys, probes.scorer, probes.consistency, probes.factuality, "
        "probes.degeneration, sidecar.sampler; print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
