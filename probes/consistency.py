"""Consistency probe: does the model say the same thing when asked again?

SelfCheckGPT-style, with sentence embeddings instead of an NLI model: every sentence of an
answer looks for its closest sentence in each other answer; a claim the model only made once
finds no support. EigenScore (INSIDE, Chen et al. 2024) over the k+1 answer embeddings is a
second, whole-answer view, kept in `detail`.

The re-asks use the original's sampling parameters, so the original is one more draw from the
same model: checking every answer against the others estimates what checking the original
alone does, with k+1 anchors instead of one (`python bench/consistency_views.py` compares the
views on a real model; figures in docs/measurements.md).

Only informative answers agree (`informative`): a refusal, an abstention ("I don't know"), a
bare "No.", an empty answer or one that loops or repeats itself supports nothing and is
supported by nothing, however many times it comes back. A model that collapses into one
non-answer is not consistent; it scores 0.

Score mapping (documented contract):
- a sample whose original answer is not informative scores 0 and is not re-asked;
- else `score` = mean over the k+1 answers of the mean over its sentences of (mean over the
  other answers of max(0, max cosine to that answer's sentences)), where an answer that is
  not informative has no sentences: it contributes 0 and supports nothing. Identical
  informative answers give 1.0, unrelated ones about 0.1-0.3.
- `detail.informative` = which of the k+1 answers (the original first) counted.
- `detail.agreement` = that support per sentence of the original answer (`weakest`: its
  least supported); `detail.selfcheck` = their mean, SelfCheckGPT's original-only score.
- `detail.eigen_consistency` = EigenScore over the informative answers rescaled to [0, 1]
  between its bounds for unit vectors: 1 = all answers the same direction, 0 = all mutually
  orthogonal (0 when fewer than two are informative).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np

from probes.answer_kind import informative
from probes.result import ProbeResult
from probes.scorer import Scorer, Vectors, similarity
from sidecar.wire import DEPLOYMENT_HEADER, NO_SAMPLE_HEADER, ORIGIN_HEADER, parse_answer

PROBE = "consistency"
SCORER = "selfcheck-emb-v3"  # v3: only informative answers agree
EIGEN_ALPHA = 1e-3  # the INSIDE paper's regulariser
MAX_SENTENCES = 48  # per answer: bounds the cost of one very long answer

# Lines end with CRLF, CR or LF only (str.splitlines also splits on U+2028).
_EOL = re.compile(r"\r\n|\r|\n")
_BULLET = re.compile(r"^\s*(?:[-*•+>]|#{1,6}|\d{1,3}[.)])\s+")
# A sentence end: terminal punctuation (closing quotes/brackets may follow), then space + start
# of a new sentence; CJK full stops need no space.
_END = re.compile(
    # Possessive runs that start only at a run's beginning keep the scan linear ("....").
    "(?<![.!?\u2026])[.!?\u2026]++[\"'\u201d\u2019)\\]]*+"
    "(?=\\s+[\"'\u201c\u2018(\\[]?[A-Z0-9\u00c0-\u00de])"
    "|[\u3002\uff01\uff1f]++"
)
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "approx",
     "no", "fig", "inc", "ltd", "co", "corp", "jan", "feb", "mar", "apr", "jun", "jul", "aug",
     "sep", "sept", "oct", "nov", "dec", "u.s", "u.k", "a.m", "p.m", "cf", "al", "ca", "vol"}
)  # fmt: skip
_WORD_BEFORE = re.compile(r"([\w.]+)$")
_HAS_WORD = re.compile(r"\w")


def split_sentences(text: str, limit: int = MAX_SENTENCES) -> list[str]:
    """Sentences of an answer: lines, list items and sentence ends; abbreviations kept whole."""
    sentences: list[str] = []
    for line in _EOL.split(text):
        line = _BULLET.sub("", line).strip()
        start = 0
        for match in _END.finditer(line):
            # Only the last few characters decide (and keep long lines linear).
            before = line[max(start, match.start() - 16) : match.start()]
            if match.group()[0] == "." and _is_abbreviation(before):
                continue
            sentences.append(line[start : match.end()].strip())
            start = match.end()
        sentences.append(line[start:].strip())
    return [s for s in sentences if _HAS_WORD.search(s)][:limit]


def _is_abbreviation(before: str) -> bool:
    word = _WORD_BEFORE.search(before)
    if word is None:
        return False
    token = word.group(1).lower().rstrip(".")
    # Single letters are initials ("J. R. R. Tolkien"); dotted tokens are acronyms ("U.S.").
    initial = len(token) == 1 and token.isalpha()
    return token in _ABBREVIATIONS or initial or ("." in token and len(token) <= 5)


# ---------------------------------------------------------------------------- the maths


def sentence_agreement(original: Vectors, samples: Sequence[Vectors]) -> Vectors:
    """Per original sentence: mean over samples of max(0, best cosine in that sample)."""
    if not samples:
        raise ValueError("agreement needs at least one sample")
    support = np.zeros((len(original), len(samples)), dtype=np.float32)
    for j, sample in enumerate(samples):
        if len(sample):
            support[:, j] = np.clip(similarity(original, sample).max(axis=1), 0.0, 1.0)
    agreement: Vectors = support.mean(axis=1)
    return agreement


def mutual_agreement(answers: Sequence[Vectors]) -> list[Vectors]:
    """`sentence_agreement` of every answer's sentences with all the other answers."""
    return [
        sentence_agreement(sentences, [*answers[:i], *answers[i + 1 :]])
        for i, sentences in enumerate(answers)
    ]


def eigenscore(answers: Vectors, alpha: float = EIGEN_ALPHA) -> float:
    """INSIDE's EigenScore: (1/K) log det(Z^T J_d Z + alpha I) of K answer embeddings."""
    z = answers / np.linalg.norm(answers, axis=1, keepdims=True).clip(min=1e-12)
    centred = z - z.mean(axis=1, keepdims=True)  # J_d: each embedding centred over its features
    gram = centred.astype(np.float64) @ centred.T.astype(np.float64)
    eigenvalues = np.linalg.eigvalsh(gram + alpha * np.eye(len(z)))
    return float(np.mean(np.log(np.clip(eigenvalues, alpha * 1e-3, None))))


def eigen_bounds(k: int, alpha: float = EIGEN_ALPHA) -> tuple[float, float]:
    """(lowest, highest) EigenScore of k unit vectors: all alike vs all orthogonal."""
    low = (math.log(k + alpha) + (k - 1) * math.log(alpha)) / k
    return low, math.log(1 + alpha)


def eigen_consistency(score: float, k: int, alpha: float = EIGEN_ALPHA) -> float:
    """EigenScore mapped onto [0, 1]: 1 = all answers alike, 0 = all orthogonal."""
    low, high = eigen_bounds(k, alpha)
    return float(min(1.0, max(0.0, (high - score) / (high - low))))


# ---------------------------------------------------------------------------- the probe


def non_answer(item_id: str, scorer_name: str, k: int) -> ProbeResult:
    """The consistency of a sample whose answer is no answer: 0, without re-asking."""
    detail = {"k": k, "informative": [False], "reasked": False}
    return ProbeResult(PROBE, item_id, 0.0, None, detail, f"{SCORER}/{scorer_name}")


async def score_consistency(
    scorer: Scorer,
    original: str,
    samples: Sequence[str],
    *,
    prompt: str = "",
    item_id: str = "",
    tokens: int = 0,
    errors: Sequence[str] = (),
) -> ProbeResult | None:
    """Agreement of `original` with re-asked `samples`; None when no sample came back."""
    if not samples:
        return None
    answers = [original, *samples]
    # Off the loop: the loop check takes milliseconds on a long answer, and `serve --probes`
    # shares this loop with the proxy.
    useful = await asyncio.to_thread(lambda: [informative(a, prompt) for a in answers])
    if not useful[0]:
        return non_answer(item_id, scorer.name, len(samples))
    whole = [a for a, u in zip(answers, useful, strict=True) if u]
    kept = [a if u else "" for a, u in zip(answers, useful, strict=True)]
    per_answer, vectors = await _embed(scorer, kept, whole)
    mutual = mutual_agreement(per_answer)
    agreement = mutual[0]
    eigen = eigenscore(vectors) if len(whole) > 1 else math.nan
    detail = {
        "k": len(samples),
        "informative": useful,
        "sentences": len(agreement),
        "agreement": [round(float(a), 4) for a in agreement],
        "weakest": int(np.argmin(agreement)),
        "selfcheck": round(float(agreement.mean()), 4),
        "eigenscore": None if math.isnan(eigen) else round(eigen, 4),
        "eigen_consistency": 0.0 if math.isnan(eigen) else round(
            eigen_consistency(eigen, len(whole)), 4),
        "tokens": tokens,
        "errors": list(errors),
    }  # fmt: skip
    # An answer that is no answer contributes 0 and supports nothing (its sentences are none).
    score = float(np.clip(np.mean([m.mean() if len(m) else 0.0 for m in mutual]), 0.0, 1.0))
    return ProbeResult(PROBE, item_id, score, None, detail, f"{SCORER}/{scorer.name}")


async def _embed(
    scorer: Scorer, answers: Sequence[str], whole: Sequence[str]
) -> tuple[list[Vectors], Vectors]:
    """The sentence vectors of each answer (none for "") and the vectors of `whole`, in one
    batch."""
    sentences = [split_sentences(a) for a in answers]
    vectors = await scorer.embed([*(t for ss in sentences for t in ss), *whole])
    per_answer, n = [], 0
    for ss in sentences:
        per_answer.append(vectors[n : n + len(ss)])
        n += len(ss)
    return per_answer, vectors[n:]


# ---------------------------------------------------------------------------- re-asking


@dataclass(frozen=True, slots=True)
class Reply:
    """One probe request's outcome: the answer, or the error class when there is none."""

    text: str = ""
    finish_reason: str = ""
    tokens: int | None = None  # prompt + completion, from usage; None when not reported
    error: str = ""


@dataclass(frozen=True, slots=True)
class Reasked:
    """k re-asks of one sampled request."""

    replies: tuple[Reply, ...]

    @property
    def answers(self) -> list[str]:
        """Texts of the replies that succeeded."""
        return [r.text for r in self.replies if not r.error]

    @property
    def tokens(self) -> int:
        """Tokens the upstream reported for all replies."""
        return sum(r.tokens or 0 for r in self.replies)

    @property
    def errors(self) -> list[str]:
        """Error classes of the replies that failed."""
        return [r.error for r in self.replies if r.error]


def reask_body(request: Mapping[str, Any]) -> dict[str, Any]:
    """The sampled request as one non-streamed re-ask with the original sampling parameters."""
    body = {k: v for k, v in request.items() if k not in ("stream", "stream_options", "n")}
    # A fixed seed would make the k samples one sample k times: the probe needs the spread.
    body.pop("seed", None)
    return body


def probe_headers(origin: str, deployment: str, extra: Mapping[str, str] | None) -> dict[str, str]:
    """Headers that label probe traffic, keep it out of sampling and pin the deployment."""
    headers = {ORIGIN_HEADER: origin, NO_SAMPLE_HEADER: "1", **(extra or {})}
    if deployment:
        headers[DEPLOYMENT_HEADER] = deployment
    return headers


async def ask(
    session: aiohttp.ClientSession,
    url: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    read_timeout_s: float = 300.0,
) -> Reply:
    """Send one non-streamed request; failures become an error class, never an exception."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30.0, sock_read=read_timeout_s)
    try:
        async with session.post(url, json=body, headers=headers, timeout=timeout) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                return Reply(error=f"http_{resp.status}")
    except TimeoutError:
        return Reply(error="timeout")
    except aiohttp.ClientError as exc:
        return Reply(error="connect" if isinstance(exc, aiohttp.ClientConnectorError) else "http")
    try:
        json.loads(raw)
    except ValueError:
        return Reply(error="bad_json")
    answer = parse_answer(raw)
    return Reply(answer.text, answer.finish_reason, answer.tokens)


async def reask(
    session: aiohttp.ClientSession,
    url: str,
    request: Mapping[str, Any],
    *,
    k: int,  # the worker's probe_k
    deployment: str = "",
    headers: Mapping[str, str] | None = None,
    read_timeout_s: float = 300.0,
) -> Reasked:
    """Re-ask a sampled request k times (k separate requests: many servers ignore `n`)."""
    body = reask_body(request)
    sent = probe_headers("probe", deployment, headers)
    replies = await asyncio.gather(
        *(ask(session, url, body, sent, read_timeout_s) for _ in range(k))
    )
    return Reasked(tuple(replies))
