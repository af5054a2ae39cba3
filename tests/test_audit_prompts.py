"""Where an audit's prompts come from, and the rows its results become."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from probes.audit_client import Endpoint, base_url
from probes.audit_prompts import PromptsError, read_prompts, stored_prompt
from probes.audit_report import AuditReport, Comparison, not_run
from probes.result import QUALITY_COLUMNS
from sidecar.wire import REDACTION_MARK, TRUNCATION_MARK


def test_a_prompts_file_takes_json_lines_and_plain_lines(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "prompt": "One?", "kind": "numeric"}\n\n  Two?  \n')
    prompts = read_prompts(path)
    assert (prompts[0].id, prompts[0].text) == ("a", "One?")
    assert prompts[1].text == "Two?" and prompts[1].messages == ({"role": "user",
                                                                  "content": "Two?"},)  # fmt: skip


@pytest.mark.parametrize(("text", "error"), [
    ("", "no prompts in it"),
    ('{"prompt": ""}\n', ":1: needs a non-empty string 'prompt'"),
    ("ok\n{not json\n", ":2: not JSON"),
])  # fmt: skip
def test_a_prompts_file_that_cannot_be_used_says_where(
    tmp_path: Path, text: str, error: str
) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(text)
    with pytest.raises(PromptsError, match=error):
        read_prompts(path)
    with pytest.raises(PromptsError, match="cannot read"):
        read_prompts(tmp_path / "missing.jsonl")


def test_stored_requests_are_mirrored_as_asked_unless_the_store_kept_less() -> None:
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]
    chat = {"model": "m", "temperature": 0.2, "messages": turns}
    prompt = stored_prompt(json.dumps(chat), "chat")
    assert prompt is not None and prompt.text == "Why?"
    assert [m["role"] for m in prompt.messages] == ["system", "user"]  # the whole conversation
    completion = stored_prompt(json.dumps({"model": "m", "prompt": "Once upon"}), "completion")
    assert completion is not None and completion.text == "Once upon"
    assert stored_prompt(json.dumps(chat) + TRUNCATION_MARK + "9 bytes]", "chat") is None
    redacted = {"model": "m", "messages": [{"role": "user", "content": REDACTION_MARK + "x]"}]}
    assert stored_prompt(json.dumps(redacted), "chat") is None
    assert stored_prompt("not json", "chat") is None


def test_base_urls_tolerate_v1_and_slashes() -> None:
    assert base_url(" http://h:1/v1/ ") == "http://h:1" == base_url("http://h:1")


def test_only_comparisons_that_ran_become_rows_and_nan_becomes_null() -> None:
    ran = Comparison("audit-mmd", "diverges", 0.2, 0.0005, 20, "s", "mmd-rbf-perm/v1/x",
                     {"floor_mmd2": math.nan})  # fmt: skip
    report = AuditReport(Endpoint("bf16", "http://a", "m"), Endpoint("int4", "http://b", "m2"),
                         0.01, (ran, not_run("logprob", "no echo")))  # fmt: skip
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    [row] = report.quality_rows(ts)
    assert set(row) == set(QUALITY_COLUMNS)
    assert (row["model"], row["deployment"], row["probe"], row["item_id"]) == (
        "m2",
        "int4",
        "audit-mmd",
        "vs:bf16",
    )
    assert (row["score"], row["passed"], row["request_id"]) == (0.0005, 0, "")
    detail = json.loads(row["detail"])
    assert detail["floor_mmd2"] is None and detail["verdict"] == "diverges"
    assert detail["reference"] == "bf16" and report.diverges
