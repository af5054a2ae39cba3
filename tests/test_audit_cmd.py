"""`fathom audit` against real `fathom simulate` processes: two identical simulators do not
diverge, a degraded zoo member does, an unreachable side is an error, and the results of an
audit of stored prompts are recorded in fathom.quality."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fathom.cli import main
from fathom.commands.simulate import run_simulator_process
from fathom.spawn import free_port
from sidecar.store.client import open_store
from sidecar.store.schema import apply_schema

pytestmark = pytest.mark.timeout(300)

# Sound: arithmetic computed, a repeatable canonical answer 60% of the time, a fresh draw else.
SOUND: dict[str, Any] = {"ttft_ms": 0, "itl_ms": 0, "tokens": 12, "consistency": 0.6}
FAST = ["-n", "8", "-k", "4", "--canaries", "40", "--permutations", "500"]


def simulator(**knobs: Any) -> dict[str, Any]:
    return {"seed": 7, "models": {"sim": {**SOUND, **knobs}}}


@pytest.fixture(scope="module")
def sound() -> Iterator[str]:
    with run_simulator_process(simulator()) as url:
        yield url


@pytest.fixture(scope="module")
def twin() -> Iterator[str]:
    """The same model, served again: the same seed, the same knobs."""
    with run_simulator_process(simulator()) as url:
        yield url


@pytest.fixture(scope="module")
def abstaining() -> Iterator[str]:
    with run_simulator_process(simulator(zoo="abstain")) as url:
        yield url


def audit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["audit", *args])
    out, err = capsys.readouterr()
    return code, out, err


def verdicts(out: str) -> dict[str, str]:
    """Comparison -> verdict, from the printed table."""
    found = {}
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0].startswith("audit-") and not cells[0].endswith(":"):
            found[cells[0]] = " ".join(cells[1:3]) if cells[1] == "not" else cells[1]
    return found


def test_the_same_model_served_twice_does_not_diverge(
    sound: str, twin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = audit(capsys, "--reference", sound, "--candidate", twin, *FAST)
    assert code == 0, out + err
    assert verdicts(out) == {"audit-canary": "same", "audit-mmd": "same",
                             "audit-logprob": "not run"}  # fmt: skip
    # The simulator returns no logprobs: the report says so instead of comparing nothing.
    assert "audit-logprob: the reference returns no completion logprobs" in out
    assert "verdict: no divergence found" in out
    assert "fathom audit: canaries: 40/40" in err  # progress goes to stderr


def test_a_model_that_abstains_diverges(
    sound: str, abstaining: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = audit(capsys, "--reference", sound, "--candidate", abstaining, *FAST)
    assert code == 1, out + err
    assert verdicts(out)["audit-canary"] == "DIVERGES"
    assert verdicts(out)["audit-mmd"] == "DIVERGES"
    # Every canary the sound simulator passes (the arithmetic it computes) is lost.
    lost = re.search(r"audit-canary: (\d+) lost, 0 gained of 40 canaries \(passed: "
                     r"reference (\d+), candidate 0\)", out)  # fmt: skip
    assert lost is not None and lost[1] == lost[2] and int(lost[1]) >= 7, out
    assert "verdict: the candidate DIVERGES from the reference (audit-canary, audit-mmd)" in out


def test_an_unreachable_side_is_an_error_that_says_which(
    sound: str, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    code, out, err = audit(capsys, "--reference", sound, "--candidate", nowhere, *FAST)
    assert code == 2 and out == ""
    assert f"the candidate at {nowhere} is unreachable" in err and "check --candidate" in err
    code, _, err = audit(capsys, "--reference", sound, "--candidate", sound, "--only", "mmd,x")
    assert code == 2 and "--only 'mmd,x': choose among canary, mmd, logprob" in err


def test_a_prompts_file_is_mirrored(
    sound: str, twin: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "What is 12 + 30?"}\nWhat is 7 x 6?\n\nWhat is 2 + 2?\n')
    code, out, err = audit(capsys, "--reference", sound, "--candidate", twin, "--prompts",
                           str(prompts), "--only", "mmd", "-k", "3")  # fmt: skip
    assert code == 0, out + err
    assert "fathom audit: 3 prompts, 0 canaries" in err and "3 prompts x 3 answers" in out


def test_stored_prompts_are_mirrored_and_the_results_recorded(
    sound: str, abstaining: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"chdb://{tmp_path / 'db'}"
    store = open_store(url)
    try:
        apply_schema(store)
        rows = [sample_row(i) for i in range(6)]
        store.insert_sync("fathom.samples", list(rows[0]), [list(r.values()) for r in rows])
    finally:
        store.close()
    names = ["--candidate-name", "sim-int4", "--reference-name", "sim-bf16"]
    code, out, err = audit(capsys, "--reference", sound, "--candidate", abstaining, "--store",
                           url, "--record", "--only", "mmd", "-k", "3", *names)  # fmt: skip
    assert code == 1, out + err
    assert "fathom audit: 6 prompts" in err and "recorded 1 results in fathom.quality" in err
    store = open_store(url)
    try:
        [(deployment, probe, item, score, passed, detail)] = store.query_sync(
            "SELECT deployment, probe, item_id, score, passed, detail FROM fathom.quality"
        )
    finally:
        store.close()
    assert (deployment, probe, item, passed) == ("sim-int4", "audit-mmd", "vs:sim-bf16", 0)
    assert json.loads(detail)["verdict"] == "diverges" and score < 0.01


def sample_row(i: int) -> dict[str, Any]:
    body = {"model": "sim", "messages": [{"role": "user", "content": f"What is {i} + 10?"}]}
    return {
        "ts": datetime.now(UTC), "request_id": f"r{i}", "model": "sim", "deployment": "prod",
        "route": "chat", "origin": "user", "stream": 0, "finish_reason": "stop",
        "request_json": json.dumps(body), "response_text": f"{i + 10}",
    }  # fmt: skip
