"""`fathom detect` on the real engine: what the detection CronJob runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fathom.cli import main
from sidecar.store.client import open_store
from sidecar.store.schema import apply_schema


def test_detect_needs_the_schema_then_runs_a_round(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"chdb://{tmp_path / 'db'}"
    assert main(["detect", "--store", url]) == 2
    assert "missing 001_init.sql" in capsys.readouterr().err  # it never creates the schema
    store = open_store(url)
    apply_schema(store)
    store.close()
    assert main(["detect", "--store", url]) == 0
    assert capsys.readouterr().out == f"detection at {url}: 0 tests, 0 regressions\n"
