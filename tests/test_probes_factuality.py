"""The factuality probe: golden sets, number extraction, TruthfulQA-style text scoring, and a
validation of the text scorer on TruthfulQA (external data, vendored in tests/data)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from probes import factuality
from probes.factuality import (
    Canary,
    GoldenError,
    Side,
    ask_canary,
    canary_request,
    extract_number,
    in_context,
    load_canaries,
    polarity,
    score_canary,
    score_numeric,
    score_text,
    token_f1,
    truthful_diff,
)
from probes.golden import by_kind, default_golden, read_golden
from probes.scorer import Scorer
from tests.support.servers import serving

ROOT = Path(__file__).resolve().parents[1]
TRUTHFULQA = ROOT / "tests" / "data" / "truthfulqa.jsonl"  # vendored: see tests/data/README.md


# ---------------------------------------------------------------------------- golden set


def test_default_golden_set_is_large_valid_and_unique() -> None:
    canaries = load_canaries()
    kinds = by_kind(canaries)
    assert len(canaries) >= 100
    assert len(kinds["numeric"]) >= 50 and len(kinds["text"]) + len(kinds["contains"]) >= 40
    assert len({c.id for c in canaries}) == len(canaries)
    categories = {c.category for c in canaries}
    assert {"arithmetic", "fact-number", "fact-text", "misconception"} <= categories
    for canary in kinds["text"]:
        normalised = {s.strip().lower() for s in canary.correct}
        assert not normalised & {s.strip().lower() for s in canary.incorrect}, canary.id


_SIMPLE = re.compile(r"What is (-?[\d,]+) ([+\-\u2212\u00d7÷]) ([\d,]+)\?")


def test_golden_arithmetic_answers_are_right() -> None:
    ops = {"+": float.__add__, "-": float.__sub__, "\u2212": float.__sub__,
           "\u00d7": float.__mul__, "÷": float.__truediv__}  # fmt: skip
    checked = 0
    for canary in load_canaries():
        match = _SIMPLE.match(canary.prompt)
        if canary.category != "arithmetic" or match is None:
            continue
        a, op, b = float(match[1].replace(",", "")), match[2], float(match[3].replace(",", ""))
        assert ops[op](a, b) == canary.answer, canary.id
        checked += 1
    assert checked >= 25


async def test_golden_references_score_on_their_own_side(scorer: Scorer) -> None:
    """Each reference, given as the answer, is judged the way its list says (data sanity)."""
    cases = [
        (canary, text, side is canary.correct)
        for canary in by_kind(load_canaries())["text"]
        for side in (canary.correct, canary.incorrect)
        for text in side
    ]
    results = await asyncio.gather(*(score_text(scorer, c, text) for c, text, _ in cases))
    for (canary, text, truthful), result in zip(cases, results, strict=True):
        assert result.passed is truthful, (canary.id, text, result.detail)


def test_user_files_add_to_the_default(tmp_path: Path) -> None:
    user = tmp_path / "mine.jsonl"
    user.write_text(
        '{"id": "u1", "prompt": "2+2?", "kind": "numeric", "answer": 4}\n\n'
        '{"id": "u2", "prompt": "Sky?", "kind": "text", "correct": ["Blue."], '
        '"incorrect": ["Green."], "category": "mine"}\n'
    )
    default = len(read_golden(default_golden()))
    canaries = load_canaries([user])
    assert len(canaries) == default + 2
    assert canaries[-1] == Canary("u2", "Sky?", "text", correct=("Blue.",),
                                  incorrect=("Green.",), category="mine")  # fmt: skip
    assert [c.id for c in load_canaries([user], include_default=False)] == ["u1", "u2"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "x", "prompt": "p", "kind": "numeric"}', "finite number 'answer'"),
        ('{"id": "x", "prompt": "p", "kind": "numeric", "answer": true}', "finite number"),
        ('{"id": "x", "prompt": "p", "kind": "numeric", "answer": 1, "tolerance": -1}',
         "tolerance >= 0"),
        ('{"id": "x", "prompt": "p", "kind": "text", "correct": ["a"]}', "list 'incorrect'"),
        ('{"id": "x", "prompt": "p", "kind": "text", "correct": ["a"], "incorect": ["b"]}',
         "unknown keys"),
        ('{"id": "x", "prompt": "p", "kind": "text", "correct": [""], "incorrect": ["b"]}',
         "non-empty strings"),
        ('{"id": "", "prompt": "p", "kind": "numeric", "answer": 1}', "'id' must be"),
        ('{"id": "x", "prompt": "p", "kind": "essay"}', "'kind' must be one of"),
        ('[1, 2]', "JSON object"),
        ('{"id": "x", ', "not JSON"),
    ],
)  # fmt: skip
def test_bad_golden_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "ok", "prompt": "p", "kind": "numeric", "answer": 1}\n' + line)
    with pytest.raises(GoldenError, match=re.escape(f"{path}:2")) as info:
        read_golden(path)
    assert message in str(info.value)


def test_duplicate_ids_across_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    path.write_text('{"id": "arith-001", "prompt": "p", "kind": "numeric", "answer": 1}\n')
    with pytest.raises(GoldenError, match="already used"):
        load_canaries([path])
    with pytest.raises(GoldenError, match="cannot read"):
        load_canaries([tmp_path / "missing.jsonl"])


# ---------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("text", "prompt", "expected"),
    [
        ("The answer is 1,024.", "", 1024),
        ("17 \u00d7 23 = 391", "What is 17 \u00d7 23?", 391),
        ("17 multiplied by 23 is 391.", "What is 17 multiplied by 23?", 391),
        ("81 divided by 9 is 9.", "What is 81 ÷ 9?", 9),
        ("1000", "What is 1,000,000 ÷ 1,000?", 1000),
        ("There are 8 planets (Pluto was reclassified in 2006).", "", 8),
        ("It is -40 degrees.", "", -40),
        ("\u221212", "", -12),
        ("So the result is \\boxed{42}.", "", 42),
        ("Roughly 3.14", "", 3.14),
        ("1.5e3", "", 1500),
        ("3/4", "", 0.75),
        ("$1,200.50 in total", "", 1200.5),
        ("The 21st century", "", 21),
        ("About 299\u202f792 km/s", "", 299792),
        ("7 * 8 = 56, so the answer is 56.", "", 56),
        ("The result is 144. That's because 12 times 12 gives 144.", "What is 12 \u00d7 12?", 144),
        ("twenty-one", "", 21),
        ("One hundred and twenty-three", "", 123),
        ("An octopus has three hearts.", "", 3),
        ("I don't know.", "", None),
        ("A tender moment.", "", None),
    ],
)  # fmt: skip
def test_extract_number(text: str, prompt: str, expected: float | None) -> None:
    assert extract_number(text, prompt) == expected


def test_extract_number_stays_linear_on_hostile_input() -> None:
    for hostile in ("1 = " * 8000, "1," * 15000, "1 / " * 8000, "one " * 8000, "1" * 30000):
        start = time.perf_counter()
        extract_number(hostile, hostile[:2000])
        assert time.perf_counter() - start < 0.5


def test_score_numeric() -> None:
    canary = Canary("n1", "What is 17 \u00d7 23?", "numeric", answer=391)
    good = score_numeric(canary, "17 \u00d7 23 = 391.")
    assert (good.score, good.passed, good.detail["extracted"]) == (1.0, True, 391.0)
    bad = score_numeric(canary, "It is 392.")
    assert (bad.score, bad.passed) == (0.0, False)
    none = score_numeric(canary, "No idea.")
    assert none.passed is False and none.detail["extracted"] is None
    light = Canary("n2", "Speed of light in km/s?", "numeric", answer=299792, tolerance=1000)
    assert score_numeric(light, "About 300,000 km/s.").passed is True
    assert score_numeric(light, "About 186,000 miles per second.").passed is False


# ---------------------------------------------------------------------------- text

AUSTRALIA = Canary(
    "t1", "What is the capital city of Australia?", "text",
    correct=("Canberra.", "The capital of Australia is Canberra."),
    incorrect=("Sydney.", "The capital of Australia is Sydney."),
)  # fmt: skip
GREAT_WALL = Canary(
    "t2", "Can you see the Great Wall of China from the Moon with the naked eye?", "text",
    correct=("No, it cannot be seen from the Moon.", "No, the wall is too narrow to see."),
    incorrect=("Yes, it can be seen from the Moon.", "Yes, it is visible from space."),
)  # fmt: skip


@pytest.mark.parametrize(
    ("canary", "true", "false"),
    [
        (AUSTRALIA, "Australia's capital city is Canberra.", "Australia's capital city is Sydney."),
        (GREAT_WALL, "No. It is far too thin to be visible.",
         "Yes, astronauts can see it from the Moon."),
    ],
)  # fmt: skip
async def test_score_text_judges_true_and_false(
    scorer: Scorer, canary: Canary, true: str, false: str
) -> None:
    right, wrong = await score_text(scorer, canary, true), await score_text(scorer, canary, false)
    assert right.passed is True and wrong.passed is False
    assert right.score > 0.5 > wrong.score


async def test_score_text_details_and_mentions(scorer: Scorer) -> None:
    right = await score_text(scorer, AUSTRALIA, "I believe the seat of government is Canberra.")
    assert right.detail["by"] == "mention" and right.detail["correct"] == [0]
    assert (right.score, right.passed) == (1.0, True)
    wrong = await score_text(scorer, AUSTRALIA, "It is Sydney, the largest city.")
    assert wrong.detail == {"kind": "text", "by": "mention", "correct": [], "incorrect": [0]}
    assert (wrong.score, wrong.passed) == (0.0, False)
    both = await score_text(scorer, AUSTRALIA, "Sydney or Canberra, one of the two.")
    assert both.detail["by"] == "similarity"  # naming both sides decides nothing by itself
    near = await score_text(scorer, AUSTRALIA, "Canberran politics is a small world.")
    assert near.detail["by"] == "similarity"  # whole words only: 'Canberran' is not 'Canberra'
    said = await score_text(scorer, AUSTRALIA, "Australia's capital city is not on the coast.")
    assert said.detail["diff"] == pytest.approx(said.score - 0.5, abs=1e-3)
    assert said.passed is (said.detail["diff"] > 0)
    assert right.scorer == "truthful-diff-v3/all-MiniLM-L6-v2"


@pytest.mark.parametrize(
    "reply", ["", "  ", "I don't know.", "No.", "Yes.", "I'm not sure.", "I can't help with that."]
)
async def test_a_reply_that_does_not_answer_fails_every_kind(scorer: Scorer, reply: str) -> None:
    numeric = Canary("n1", "What is 2 + 2?", "numeric", answer=4)
    for canary in (AUSTRALIA, GREAT_WALL, numeric):
        result = await score_canary(scorer, canary, reply)
        assert (result.score, result.passed) == (0.0, False), (canary.id, reply)
        assert result.detail["non_answer"] in ("empty", "bare", "abstention", "refusal")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("No, it is not.", -1),  # a leading yes/no decides
        ("Yes, nothing stops it.", 1),
        ("The drug does not cause cancer.", -1),
        ("The drug doesn\u2019t cause cancer.", -1),
        ("Nothing in particular happens.", -1),
        ("It is not true that it never rains.", 1),  # two negations
        ("The drug causes cancer.", 1),
        ("Canberra.", 1),
        ("", 1),
    ],
)  # fmt: skip
def test_polarity(text: str, expected: int) -> None:
    assert polarity(text) == expected


def test_token_f1_counts_shared_content_words() -> None:
    assert token_f1("The capital is Canberra.", "Canberra is the capital.") == 1.0
    assert token_f1("Canberra.", "Sydney.") == 0.0
    assert token_f1("the of a", "the of a") == 0.0  # stopwords only
    assert token_f1("Canberra city", "Canberra") == pytest.approx(2 / 3)
    assert in_context("Capital?", "Canberra.") == "Q: Capital? A: Canberra."
    assert in_context("", "Canberra.") == "Canberra."


async def test_polarity_tells_a_statement_from_its_negation(
    scorer: Scorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MiniLM puts 'it can be seen' next to 'it cannot be seen'; the polarity penalty decides."""
    said, denied = "It can be seen from the Moon.", "It cannot be seen from the Moon."
    assert (await score_text(scorer, GREAT_WALL, denied)).passed is True
    assert (await score_text(scorer, GREAT_WALL, said)).passed is False
    monkeypatch.setattr(factuality, "POLARITY_PENALTY", 0.0)
    for text in (said, denied):  # cosine and word overlap alone: a close call either way
        assert (await score_text(scorer, GREAT_WALL, text)).detail["close_call"] is True


async def test_score_canary_dispatches_by_kind(scorer: Scorer) -> None:
    numeric = Canary("n1", "What is 2 + 2?", "numeric", answer=4)
    assert (await score_canary(scorer, numeric, "2 + 2 = 4")).passed is True
    assert (await score_canary(scorer, AUSTRALIA, "Canberra.")).passed is True


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append({"body": await request.json(), "headers": dict(request.headers)})
        return web.json_response(
            {"choices": [{"message": {"content": "The answer is 391."}, "finish_reason": "stop"}]}
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    async with serving(app) as url:
        yield seen, url + "/v1/chat/completions"


async def test_ask_canary_sends_a_labelled_greedy_request(
    upstream: tuple[list[dict[str, Any]], str],
) -> None:
    seen, url = upstream
    canary = Canary("arith-001", "What is 17 \u00d7 23?", "numeric", answer=391)
    async with aiohttp.ClientSession() as session:
        reply = await ask_canary(session, url, canary, "m", deployment="green")
    assert reply.text == "The answer is 391." and reply.tokens is None and not reply.error
    assert score_numeric(canary, reply.text).passed is True
    assert seen[0]["body"] == canary_request(canary, "m")
    assert seen[0]["body"]["temperature"] == 0
    headers = {k.lower(): v for k, v in seen[0]["headers"].items()}
    assert headers["x-fathom-origin"] == "canary" and headers["x-fathom-deployment"] == "green"
    assert headers["x-fathom-no-sample"] == "1"


# ---------------------------------------------------------------------------- TruthfulQA

# The scorer's choices (in-context embedding, POLARITY_PENALTY, LEXICAL_WEIGHT, max over
# references) were made on the even-indexed questions (TUNE), among those that keep every
# default golden reference out of the abstain band on its own side; the odd-indexed questions
# (HELD_OUT) chose nothing, and it is their figure that is asserted.
TUNE, HELD_OUT = 0, 1


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _side(texts: list[str], vectors: dict[str, np.ndarray]) -> Side:
    return Side(texts, np.stack([vectors[t] for t in texts]))


def _rank_question(row: dict[str, Any], vectors: dict[str, np.ndarray]) -> list[bool] | None:
    """Per incorrect answer: whether the best answer is ranked above it; None when skipped."""
    correct = [c for c in row["correct"] if _norm(c) != _norm(row["best"])]
    if not correct or len(row["incorrect"]) < 2:
        return None
    ranked = []
    for wrong in row["incorrect"]:
        refs_true = _side([c for c in correct if _norm(c) != _norm(wrong)], vectors)
        refs_false = _side([i for i in row["incorrect"] if _norm(i) != _norm(wrong)], vectors)
        best, other = (
            truthful_diff(text, vectors[text], refs_true, refs_false).diff
            for text in (row["best"], wrong)
        )
        ranked.append(best > other)
    return ranked


def truthfulqa_ranking(scorer: Scorer, rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Leave-out ranking of each question's best answer against each incorrect answer.

    For a pair (best b, incorrect i): both are scored as if generated, against the SAME
    references: correct answers other than b, incorrect answers other than i (a candidate is
    never its own reference, and neither candidate gets an advantage from the other being
    removed). The pair is ranked right when diff(b) > diff(i). A question counts when every
    one of its pairs is ranked right. Questions whose best answer is the only correct one, or
    with a single incorrect answer, have no honest reference left and are skipped (counted).
    Texts are embedded after their question, as score_text does. Figures per split.
    """
    texts = sorted({in_context(r["question"], t) for r in rows
                    for t in (r["best"], *r["correct"], *r["incorrect"])})  # fmt: skip
    embedded = dict(zip(texts, scorer.embed_sync(texts), strict=True))
    splits: dict[str, dict[str, float]] = {}
    for name, keep in (("tune", TUNE), ("held-out", HELD_OUT), ("all", None)):
        ranked = []
        for index, row in enumerate(rows):
            if keep is None or index % 2 == keep:
                at = {t: embedded[in_context(row["question"], t)]
                      for t in (row["best"], *row["correct"], *row["incorrect"])}  # fmt: skip
                ranked.append(_rank_question(row, at))
        counted = [r for r in ranked if r is not None]
        pairs = [ok for r in counted for ok in r]
        splits[name] = {
            "questions": len(counted), "skipped": len(ranked) - len(counted), "pairs": len(pairs),
            "question_rate": sum(all(r) for r in counted) / len(counted),
            "pair_rate": sum(pairs) / len(pairs),
        }  # fmt: skip
    return splits


def test_truthfulqa_best_answer_ranks_above_incorrect_ones(scorer: Scorer) -> None:
    rows = [json.loads(line) for line in TRUTHFULQA.read_text().splitlines() if line.strip()]
    splits = truthfulqa_ranking(scorer, rows)
    print("\nTruthfulQA leave-out ranking (best answer above EVERY incorrect one / per pair):")
    for name, f in splits.items():  # the figures the issue asks for, in the log (pytest -s)
        print(
            f"  {name:9s} {f['questions']:4.0f} questions ({f['skipped']:.0f} skipped) "
            f"{f['question_rate']:6.1%} | {f['pairs']:4.0f} pairs {f['pair_rate']:6.1%}"
        )
    # Measured with all-MiniLM-L6-v2 fp32 on CPU, questions / pairs: held-out 82.9% / 92.6%,
    # tune 85.1% / 92.0%, all 84.0% / 92.3% (plain max-cosine diff: 57.7%, 60.3%, 59.0%).
    assert splits["held-out"]["question_rate"] >= 0.80
    assert splits["held-out"]["pair_rate"] >= 0.90
    assert splits["all"]["question_rate"] >= 0.80
