"""`fathom detect` on the real engine: what the detection CronJob runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fathom.cli import main
from tests.support.store import create, url


def test_detect_needs_the_schema_then_runs_a_round(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = url(tmp_path / "db")
    assert main(["detect", "--store", store]) == 2
    assert "missing 001_init.sql" in capsys.readouterr().err  # it never creates the schema
    create(tmp_path / "db")
    assert main(["detect", "--store", store]) == 0
    assert capsys.readouterr().out == f"detection at {store}: 0 tests, 0 regressions\n"
