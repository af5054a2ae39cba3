"""The consistency probe: sentence splitting, the maths, scoring with the real model, re-asking
through a real HTTP server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from probes.consistency import (
    eigen_bounds,
    eigen_consistency,
    eigenscore,
    mutual_agreement,
    reask,
    score_consistency,
    sentence_agreement,
    split_sentences,
)
from probes.scorer import Scorer
from tests.support.servers import serving

# ---------------------------------------------------------------------------- sentences


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello world. This is Dr. Smith from the U.S. Army! Is it 3.14? Yes.",
         ["Hello world.", "This is Dr. Smith from the U.S. Army!", "Is it 3.14?", "Yes."]),
        ("J. R. R. Tolkien wrote it. It is long.", ["J. R. R. Tolkien wrote it.", "It is long."]),
        ("Steps:\n- open it\n- close it\n\n1. First point. Second point.",
         ["Steps:", "open it", "close it", "First point.", "Second point."]),
        ("東京は日本の首都です。人口は多い\uff01", ["東京は日本の首都です。", "人口は多い\uff01"]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        ("x = 5. Next.\r\nLast line", ["x = 5.", "Next.", "Last line"]),
        ("It costs approx. 3 dollars, e.g. less than 4.",
         ["It costs approx. 3 dollars, e.g. less than 4."]),
        ("", []),
        ("...\n---\n", []),
        ("a\u2028b", ["a\u2028b"]),  # U+2028 is not a line end (STYLE.md)
    ],
)  # fmt: skip
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_split_sentences_is_bounded_and_linear() -> None:
    assert len(split_sentences("Yes. " * 500)) == 48
    assert len(split_sentences("Yes. " * 500, limit=5)) == 5
    for hostile in ("U.S. " * 6000, "Mr. " * 8000, "A. " * 10000, "." * 30000):
        start = time.perf_counter()
        split_sentences(hostile)
        assert time.perf_counter() - start < 0.5


# ---------------------------------------------------------------------------- maths


def unit(rows: list[list[float]]) -> np.ndarray[Any, np.dtype[np.float32]]:
    m = np.asarray(rows, dtype=np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)  # type: ignore[no-any-return]


def test_sentence_agreement() -> None:
    original = unit([[1, 0, 0], [0, 1, 0]])
    same = unit([[1, 0, 0], [0, 1, 0]])
    half = unit([[1, 0, 0], [0, 0, 1]])  # supports the first sentence only
    empty = np.zeros((0, 3), dtype=np.float32)
    assert np.allclose(sentence_agreement(original, [same, same]), [1, 1])
    assert np.allclose(sentence_agreement(original, [same, half]), [1, 0.5])
    assert np.allclose(sentence_agreement(original, [empty, same]), [0.5, 0.5])
    opposite = unit([[-1, 0, 0], [0, -1, 0]])
    assert np.allclose(sentence_agreement(original, [opposite]), [0, 0])  # clipped at 0
    with pytest.raises(ValueError):
        sentence_agreement(original, [])


def test_mutual_agreement_checks_every_answer_against_the_others() -> None:
    one = unit([[1, 0, 0]])
    two = unit([[1, 0, 0], [0, 1, 0]])  # its second claim is made by no other answer
    empty = np.zeros((0, 3), dtype=np.float32)
    first, second, third = mutual_agreement([one, two, empty])
    assert np.allclose(first, [0.5])  # supported by `two`, not by the empty answer
    assert np.allclose(second, [0.5, 0.0])
    assert len(third) == 0  # nothing of its own to check


def test_eigenscore_bounds_and_mapping() -> None:
    rng = np.random.default_rng(7)
    base = rng.normal(size=384)
    alike = unit([list(base)] * 6)
    orthogonal = np.eye(6, 384, dtype=np.float32)
    low, high = eigen_bounds(6)
    assert low < high
    assert eigenscore(alike) == pytest.approx(low, abs=0.05)
    assert eigen_consistency(eigenscore(alike), 6) == pytest.approx(1.0, abs=0.01)
    assert eigen_consistency(eigenscore(orthogonal), 6) == pytest.approx(0.0, abs=0.01)
    noisy = unit([list(base + rng.normal(scale=0.3, size=384)) for _ in range(6)])
    assert 0.05 < eigen_consistency(eigenscore(noisy), 6) < 0.95


# ---------------------------------------------------------------------------- with the model

ORIGINAL = (
    "The capital of Australia is Canberra. It was chosen as a compromise between Sydney and "
    "Melbourne."
)
PARAPHRASES = [
    "Canberra is Australia's capital city. It was picked as a compromise between Sydney and "
    "Melbourne.",
    "Australia's capital is Canberra, a compromise choice between Melbourne and Sydney.",
    "The capital city of Australia is Canberra. It was a compromise between Sydney and Melbourne.",
]
CONTRADICTIONS = [
    "The capital of Australia is Sydney. Sydney is the largest and oldest city.",
    "Melbourne is the capital of Australia. Parliament sits there.",
    "Sydney is the capital of Australia, famous for its opera house.",
]
UNRELATED = [
    "Photosynthesis converts light into chemical energy.",
    "I like to play football on Sundays.",
    "Bananas are rich in potassium.",
]


async def test_identical_answers_score_one(scorer: Scorer) -> None:
    result = await score_consistency(
        scorer, ORIGINAL, [ORIGINAL] * 5, item_id="r1", tokens=99, errors=["http_503"]
    )
    assert result is not None
    assert result.score == pytest.approx(1.0, abs=1e-3)
    assert result.detail["eigen_consistency"] == pytest.approx(1.0, abs=1e-3)
    assert result.detail["k"] == 5 and result.detail["tokens"] == 99
    assert result.detail["errors"] == ["http_503"]
    assert result.detail["sentences"] == 2 and len(result.detail["agreement"]) == 2
    assert result.passed is None and result.item_id == "r1"
    assert result.scorer == "selfcheck-emb-v3/all-MiniLM-L6-v2"
    json.loads(result.detail_json())


async def test_agreement_orders_paraphrase_contradiction_unrelated(scorer: Scorer) -> None:
    results = await asyncio.gather(
        *(score_consistency(scorer, ORIGINAL, s) for s in (PARAPHRASES, CONTRADICTIONS, UNRELATED))
    )
    para, contra, unrelated = (r.score for r in results if r is not None)
    assert para > 0.85
    assert contra < para - 0.15 and contra < 0.75  # embeddings see topic: contradictions are
    assert unrelated < 0.2  # clearly lower than paraphrases, not as low as unrelated text
    eigen = [r.detail["eigen_consistency"] for r in results if r is not None]
    assert eigen[0] > eigen[1] > eigen[2]


async def test_nothing_to_compare_gives_none(scorer: Scorer) -> None:
    assert await score_consistency(scorer, ORIGINAL, []) is None
    empty_samples = await score_consistency(scorer, ORIGINAL, ["", ""])
    assert empty_samples is not None and empty_samples.score == 0.0


LOOP = "and so on " * 40
NON_ANSWERS = ["", "I don't know.", "I'm not sure.", "No.", "Yes.", "I can't help with that.", LOOP]


@pytest.mark.parametrize("reply", NON_ANSWERS)
async def test_agreeing_on_a_non_answer_is_not_consistency(scorer: Scorer, reply: str) -> None:
    """A model that collapsed into one non-answer repeats it every time: that scores 0."""
    result = await score_consistency(scorer, reply, [reply] * 5, prompt="What is 17 x 23?")
    assert result is not None and result.score == 0.0
    assert result.detail["informative"] == [False] and result.detail["reasked"] is False


async def test_non_answers_among_the_re_asks_count_as_disagreement(scorer: Scorer) -> None:
    sound = await score_consistency(scorer, ORIGINAL, [ORIGINAL] * 4)
    mixed = await score_consistency(scorer, ORIGINAL, [ORIGINAL, ORIGINAL, "I don't know.", ""])
    assert sound is not None and mixed is not None
    assert mixed.detail["informative"] == [True, True, True, False, False]
    # Three of five answers agree fully; the two non-answers give and get nothing.
    assert mixed.score == pytest.approx(3 / 5 * 2 / 4, abs=0.02)
    assert sound.score == pytest.approx(1.0, abs=1e-3)


# ---------------------------------------------------------------------------- re-asking


@dataclass
class Upstream:
    """A tiny OpenAI-compatible server that records what it was sent."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    fail_every: int = 0  # every n-th request answers 503

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        n = len(self.bodies)
        if self.fail_every and n % self.fail_every == 0:
            return web.json_response({"error": {"message": "busy"}}, status=503)
        return web.json_response({
            "choices": [{"message": {"role": "assistant", "content": f"Answer {n}."},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3},
        })  # fmt: skip


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    state = Upstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", state.handle)
    async with serving(app) as url:
        yield state, url + "/v1/chat/completions"


async def test_reask_sends_k_labelled_non_streamed_requests(
    upstream: tuple[Upstream, str],
) -> None:
    state, url = upstream
    request = {
        "model": "m", "messages": [{"role": "user", "content": "Capital of Australia?"}],
        "temperature": 0.8, "top_p": 0.9, "max_tokens": 50, "seed": 1, "n": 3,
        "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    async with aiohttp.ClientSession() as session:
        result = await reask(session, url, request, k=5, deployment="blue",
                             headers={"Authorization": "Bearer probe-token"})  # fmt: skip
    assert len(state.bodies) == 5 and len(result.answers) == 5
    assert sorted(result.answers) == [f"Answer {i}." for i in range(1, 6)]
    assert result.tokens == 5 * 13 and result.errors == []
    for body, headers in zip(state.bodies, state.headers, strict=True):
        assert body == {
            "model": "m", "messages": request["messages"], "temperature": 0.8, "top_p": 0.9,
            "max_tokens": 50,
        }  # fmt: skip
        assert headers["x-fathom-origin"] == "probe"
        assert headers["x-fathom-no-sample"] == "1"
        assert headers["x-fathom-deployment"] == "blue"
        assert headers["authorization"] == "Bearer probe-token"


async def test_reask_counts_failures_instead_of_raising(upstream: tuple[Upstream, str]) -> None:
    state, url = upstream
    state.fail_every = 2
    async with aiohttp.ClientSession() as session:
        result = await reask(session, url, {"model": "m", "messages": []}, k=4)
        unreachable = await reask(session, "http://127.0.0.1:9/v1/chat/completions",
                                  {"model": "m"}, k=2)  # fmt: skip
    assert len(result.answers) == 2 and result.errors == ["http_503", "http_503"]
    assert result.tokens == 2 * 13
    assert unreachable.answers == [] and unreachable.errors == ["connect", "connect"]
