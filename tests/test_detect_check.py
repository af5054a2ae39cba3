"""`fathom check` as a deploy gate: exit 1 on a regression, 0 without, 2 when it cannot tell."""

from __future__ import annotations

import argparse
import asyncio
import io
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from fathom.commands import check
from fathom.commands.common import parse_duration
from fathom.spawn import fathom_command
from probes.detect import REGRESSION_COLUMNS, DetectionSettings, load_series
from probes.result import QUALITY_COLUMNS, ProbeResult
from sidecar.store.client import open_store
from tests.support.seeded import NOW, open_seeded
from tests.support.store import url


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A seeded store on disk, closed so that other processes can open it."""
    path = tmp_path_factory.mktemp("check") / "db"
    open_seeded(path).close()
    yield url(path)


def fathom_check(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run `fathom check` as a CI job would."""
    return subprocess.run(
        fathom_command("check", *argv), capture_output=True, text=True, timeout=120, check=False
    )


def test_a_regression_fails_the_gate(store_url: str) -> None:
    done = fathom_check("--store", store_url, "--since", "6h", "--at", NOW.isoformat())
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    q2 = [line for line in lines if line.startswith("q2 ") and " shape " not in line]
    assert len(q2) == 2 and all("REGRESSION (cusum" in line for line in q2)
    # the seeded answers all have one length: the shape test sees no change anywhere
    shapes = [line for line in lines if " shape " in line]
    assert len(shapes) == 3 and all("ks +0.00" in line and line.endswith(" ok") for line in shapes)
    # the canary rows carry item ids, so the per-item test judged them (threshold item_h)
    (canary,) = [line for line in q2 if " factuality " in line]
    assert f"/{DetectionSettings().item_h:.2f} (" in canary and canary.endswith(", sprt)")
    healthy = [line for line in lines if line.startswith(("fp16 ", "awq ")) and "shape" not in line]
    assert len(healthy) == 4 and all(line.endswith(" ok") for line in healthy)
    assert lines[-1] == "regression in: q2"


def test_a_healthy_deployment_passes_the_gate(store_url: str) -> None:
    done = fathom_check(
        "--store", store_url, "--since", "6h", "--at", NOW.isoformat(), "--deployment", "fp16"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "no regression"
    assert "q2" not in done.stdout


def args(store_url: str, **overrides: object) -> argparse.Namespace:
    """Parsed `fathom check` flags."""
    parser = argparse.ArgumentParser()
    check.add_arguments(parser)
    parsed = parser.parse_args(["--store", store_url, "--since", "6h", "--at", NOW.isoformat()])
    for name, value in overrides.items():
        setattr(parsed, name, value)
    return parsed


def test_recorded_findings_fail_the_gate_too(store_url: str) -> None:
    store = open_store(store_url)
    try:
        store.insert_sync(
            "fathom.regressions",
            REGRESSION_COLUMNS,
            [
                [
                    NOW - timedelta(minutes=30),
                    "qwen-7b",
                    "awq",
                    "consistency",
                    "welch",
                    4.2,
                    0.65,
                    0.55,
                    700,
                    40,
                ]
            ],
        )
    finally:
        store.close()
    out = io.StringIO()
    code = asyncio.run(check._check(args(store_url, deployment="awq"), out))
    assert code == 1
    assert "REGRESSION (welch, recorded)" in out.getvalue()


def test_an_empty_window_passes_unless_data_is_required(store_url: str) -> None:
    long_ago = NOW - timedelta(days=30)
    out = io.StringIO()
    assert asyncio.run(check._check(args(store_url, at=long_ago), out)) == 0
    assert "nothing to judge" in out.getvalue()
    strict = args(store_url, at=long_ago, require_data=True)
    assert asyncio.run(check._check(strict, io.StringIO())) == 1


def test_series_without_enough_baseline_say_so(store_url: str) -> None:
    out = io.StringIO()
    short = args(store_url, baseline=timedelta(hours=1), deployment="fp16")
    assert asyncio.run(check._check(short, out)) == 0
    rows = [line for line in out.getvalue().splitlines() if line.startswith("fp16 ")]
    quality = [row for row in rows if " shape " not in row]
    assert len(quality) == 2 and all(row.endswith("too little data") for row in quality)


def test_usage_and_store_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    check.add_arguments(parser)
    with pytest.raises(SystemExit) as usage:
        parser.parse_args(["--since", "an hour"])
    assert usage.value.code == 2
    assert "not a duration" in capsys.readouterr().err
    unreachable = args("http://user:secret@127.0.0.1:9/fathom")
    assert check.run(unreachable) == 2
    err = capsys.readouterr().err
    assert err.startswith("fathom check: ") and "secret" not in err
    empty = args(f"chdb://{tmp_path / 'no-schema'}")
    assert check.run(empty) == 2
    assert "fathom schema apply" in capsys.readouterr().err


def test_durations() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("1.5h") == timedelta(minutes=90)
    assert parse_duration("2w") == timedelta(days=14)
    for bad in ("", "0h", "1y", "h"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)


def test_an_audit_that_diverged_fails_the_gate_and_is_not_a_detection_series(
    store_url: str,
) -> None:
    def verdict(probe: str, p_value: float, minutes_ago: int) -> list[object]:
        result = ProbeResult(probe, "vs:bf16", p_value, p_value >= 0.01, {}, "audit-v1")
        row = result.to_row(NOW - timedelta(minutes=minutes_ago), "", "qwen-7b", "int4")
        return [row[c] for c in QUALITY_COLUMNS]

    store = open_store(store_url)
    try:  # mmd diverged at the latest audit; logprob diverged once, then passed
        rows = [verdict("audit-mmd", 0.002, 20), verdict("audit-logprob", 0.001, 50)]
        rows += [verdict("audit-logprob", 0.4, 10)]
        store.insert_sync("fathom.quality", QUALITY_COLUMNS, rows)
    finally:
        store.close()
    out = io.StringIO()
    assert asyncio.run(check._check(args(store_url, deployment="int4"), out)) == 1
    lines = out.getvalue().splitlines()
    (mmd,) = [line for line in lines if " audit-mmd " in line]
    assert "vs bf16 p=0.002" in mmd and mmd.endswith("REGRESSION (audit)")
    (logprob,) = [line for line in lines if " audit-logprob " in line]
    assert "vs bf16 p=0.4" in logprob and logprob.endswith(" ok")
    assert lines[-1] == "regression in: int4"
    # No CUSUM or SPRT runs on p-values: the detector never sees the audits' rows.
    series = asyncio.run(load_series_of(store_url, "int4"))
    assert series == []


async def load_series_of(store_url: str, deployment: str) -> list[object]:
    store = open_store(store_url)
    try:
        return list(await load_series(store, NOW, DetectionSettings(), deployment))
    finally:
        store.close()
