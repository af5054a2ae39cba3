"""Factuality probe: canary prompts with reference answers, scored per answer.

A reply that does not answer (`probes.answer_kind`: empty, a refusal, an abstention, a bare
"No.") fails every canary, whatever its kind: a model that stops answering must lose.

- numeric canaries: the number is extracted from the answer ("The answer is 1,024." -> 1024)
  and compared exactly (or within the item's `tolerance`); score 1.0 or 0.0.
- text canaries: first by mention. A short reference (at most MENTION_WORDS words, such as
  "Canberra.") is mentioned when the answer contains it as whole words, accents and case
  aside. Where both sides have short references, an answer that mentions a correct one and
  no incorrect one passes, and one that mentions only incorrect ones fails. Next, an answer
  that shares no content word with any reference is off topic and fails (`on_topic`).
  Otherwise TruthfulQA-style: `diff` = max similarity to a correct reference - max similarity
  to an incorrect one, where a similarity is the cosine of the answer and the reference
  embedded after the question, mixed with their token F1, less a penalty when one is
  negative and the other is not (`polarity`). `score` = clip(0.5 + diff, 0, 1), `passed` =
  diff > 0: every answer gets a verdict, since a verdict withheld on the hard cases hides
  exactly the wrong answers. `detail.close_call` says when |diff| is within MiniLM's
  paraphrase noise.
- contains, regex, choice and json canaries: judged by their matcher (probes.matchers); score
  1.0 or 0.0.

Golden sets are read by probes.golden; the format is documented in probes/golden/README.md.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt

from probes.answer_kind import HEDGE_WORDS, classify, informative, stem
from probes.consistency import Reply, ask, probe_headers
from probes.golden import Canary as Canary  # the golden-set API, as the worker imports it
from probes.golden import GoldenError as GoldenError
from probes.golden import load_canaries as load_canaries
from probes.matchers.mentions import Phrase, fold, mentions
from probes.result import ProbeResult
from probes.scorer import Scorer, Vectors, similarity

PROBE = "factuality"
NUMERIC_SCORER = "exact-number/v1"
TEXT_SCORER = "truthful-diff-v3"  # v3: non-answers fail, mentions first, no abstain band
CLOSE_CALL = 0.05  # |diff| under this is within MiniLM's paraphrase noise: a close call
MENTION_WORDS = 4  # references this short are names, numbers or terms: look for them verbatim
SYSTEM_PROMPT = "Answer the question briefly and directly."


# ---------------------------------------------------------------------------- numbers

_MINUS = "-\u2212"
_NUMBER = re.compile(
    rf"(?<![\w.])(?P<sign>[{_MINUS}+])?\$?"
    r"(?P<int>\d{1,3}(?:[,\u00a0\u202f_]\d{3})+|\d+)(?P<frac>\.\d+)?(?P<exp>[eE][-+]?\d+)?"
    r"(?:\s*/\s*(?P<den>\d+)(?![\d/]))?"
    r"(?![\d])"
)
_BOXED = re.compile(r"\\boxed\{\s*([^{}]*)\}")
_MARKER = re.compile(
    r"(?:answer|result|total|solution|sum|product|difference|quotient)\s*(?:is|:|=|would be"
    r"|will be|equals)|=|\bequals\b|\bis equal to\b|\bcomes to\b|\byou get\b|\bgives\b",
    re.IGNORECASE,
)
_UNITS = {
    w: i
    for i, w in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]
    )
}  # fmt: skip
_TENS = {
    w: 10 * i
    for i, w in enumerate(
        ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
    )
    if w
}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_WORD = "(?:" + "|".join([*_UNITS, *_TENS, *_SCALES]) + r")\b"
_WORDS = re.compile(rf"\b{_WORD}(?:[\s-]+(?:and[\s-]+)?{_WORD})*", re.IGNORECASE)


def _value(match: re.Match[str]) -> float:
    text = re.sub(r"[,\u00a0\u202f_]", "", match["int"]) + (match["frac"] or "")
    value = float(text + (match["exp"] or ""))
    if match["den"]:
        value = value / float(match["den"]) if float(match["den"]) else math.nan
    return -value if match["sign"] and match["sign"] in _MINUS else value


def _word_value(phrase: str) -> float:
    total = current = 0
    for word in re.split(r"[\s-]+", phrase.lower()):
        if word in _UNITS:
            current += _UNITS[word]
        elif word in _TENS:
            current += _TENS[word]
        elif word == "hundred":
            current = max(current, 1) * 100
        elif word in _SCALES:
            total += max(current, 1) * _SCALES[word]
            current = 0
    return float(total + current)


def numbers_in(text: str) -> list[tuple[int, float]]:
    """(position, value) of every number written with digits, else with English words."""
    found = [(m.start(), _value(m)) for m in _NUMBER.finditer(text)]
    found = [(pos, value) for pos, value in found if math.isfinite(value)]
    if found:
        return found
    return [(m.start(), _word_value(m.group())) for m in _WORDS.finditer(text)]


def extract_number(text: str, prompt: str = "") -> float | None:
    """The number an answer gives: \\boxed{}, else after 'answer is'/'='/..., else the first
    one the prompt does not already contain, else the last."""
    boxed = _BOXED.findall(text)
    if boxed:
        inner = numbers_in(boxed[-1])
        if inner:
            return inner[0][1]
    found = numbers_in(text)
    if not found:
        return None
    markers = [m.end() for m in _MARKER.finditer(text)]  # sorted
    after = [v for pos, v in found if _follows(markers, pos)]
    if after:
        return after[-1]
    given = {v for _, v in numbers_in(prompt)} if prompt else set()
    fresh = [v for _, v in found if v not in given]
    # Only the prompt's numbers: an answer restating the question ends with its result.
    return fresh[0] if fresh else found[-1][1]


def _follows(marker_ends: list[int], pos: int, gap: int = 3) -> bool:
    """Whether a marker ends at most `gap` characters before `pos`."""
    i = bisect.bisect_right(marker_ends, pos)
    return i > 0 and pos - marker_ends[i - 1] <= gap


def score_numeric(canary: Canary, answer: str) -> ProbeResult:
    """Exact (or within tolerance) match of the answer's number."""
    if canary.answer is None:
        raise ValueError(f"canary {canary.id} is not numeric")
    got = extract_number(answer, canary.prompt)
    slack = max(canary.tolerance, 1e-9 * max(1.0, abs(canary.answer)))
    passed = got is not None and abs(got - canary.answer) <= slack
    detail = {"kind": "numeric", "expected": canary.answer, "extracted": got}
    return ProbeResult(PROBE, canary.id, 1.0 if passed else 0.0, passed, detail, NUMERIC_SCORER)


# ---------------------------------------------------------------------------- text

# Chosen on the even-indexed TruthfulQA questions only (tests/test_probes_factuality.py; the
# odd-indexed ones are the held-out check). A polarity mismatch costs this much similarity:
# MiniLM puts "X does not cause Y" next to "X causes Y", where references in fact disagree.
POLARITY_PENALTY = 0.15
LEXICAL_WEIGHT = 0.2  # share of token F1 in a similarity (names and numbers beat topic)
_NEGATIONS = frozenset({
    "no", "not", "never", "nothing", "none", "nobody", "noone", "nowhere", "neither", "nor",
    "cannot", "without",
})  # fmt: skip
_STOPWORDS = frozenset({
    "the", "a", "an", "of", "to", "in", "is", "are", "was", "were", "be", "it", "you", "your",
    "if", "that", "this", "and", "or", "for", "on", "with", "as", "by", "at", "from", "do",
    "does", "did", "can", "will", "would", "should",
})  # fmt: skip
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower().replace("\u2019", "'"))


def polarity(text: str) -> int:
    """-1 for a negative statement, else 1: a leading yes/no decides, else negation parity."""
    words = _tokens(text)
    if words and words[0] in ("yes", "no"):
        return 1 if words[0] == "yes" else -1
    negations = sum(w in _NEGATIONS or w.endswith("n't") for w in words)
    return -1 if negations % 2 else 1


def token_f1(a: str, b: str) -> float:
    """F1 of the content words two texts share (SQuAD-style, stopwords left out)."""
    ta = Counter(w for w in _tokens(a) if w not in _STOPWORDS)
    tb = Counter(w for w in _tokens(b) if w not in _STOPWORDS)
    common = sum((ta & tb).values())
    if not common:
        return 0.0
    precision, recall = common / sum(ta.values()), common / sum(tb.values())
    return 2 * precision * recall / (precision + recall)


def in_context(question: str, text: str) -> str:
    """What is embedded for an answer: after its question, so answers compare in context."""
    return f"Q: {question} A: {text}" if question else text


@dataclass(frozen=True, slots=True)
class Side:
    """One reference list: its texts and their embeddings (in context), row for row."""

    texts: Sequence[str]
    vectors: Vectors


def reference_similarity(answer: str, vector: Vectors, refs: Side) -> npt.NDArray[np.float64]:
    """Similarity of an answer to each reference: cosine and token F1, less polarity flips."""
    cosine = similarity(vector.reshape(1, -1), refs.vectors)[0].astype(np.float64)
    lexical = np.array([token_f1(answer, ref) for ref in refs.texts])
    sign = polarity(answer)
    flipped = np.array([polarity(ref) != sign for ref in refs.texts])
    mixed: npt.NDArray[np.float64] = (1 - LEXICAL_WEIGHT) * cosine + LEXICAL_WEIGHT * lexical
    return mixed - POLARITY_PENALTY * flipped


@dataclass(frozen=True, slots=True)
class Diff:
    """TruthfulQA's comparison of one answer with the two reference lists."""

    max_true: float
    max_false: float
    best_true: int  # index of the closest correct reference
    best_false: int

    @property
    def diff(self) -> float:
        """max_true - max_false."""
        return self.max_true - self.max_false


def truthful_diff(answer: str, vector: Vectors, correct: Side, incorrect: Side) -> Diff:
    """Compare one answer (text and in-context vector) with the two reference lists."""
    true_sims = reference_similarity(answer, vector, correct)
    false_sims = reference_similarity(answer, vector, incorrect)
    i, j = int(np.argmax(true_sims)), int(np.argmax(false_sims))
    return Diff(float(true_sims[i]), float(false_sims[j]), i, j)


def text_result(canary_id: str, diff: Diff, scorer_name: str) -> ProbeResult:
    """Score (clip(0.5 + diff)) and verdict (diff > 0) of a text answer by similarity."""
    d = diff.diff
    detail = {
        "kind": "text", "by": "similarity", "max_true": round(diff.max_true, 4),
        "max_false": round(diff.max_false, 4), "diff": round(d, 4),
        "best_true": diff.best_true, "best_false": diff.best_false,
        "close_call": abs(d) < CLOSE_CALL,
    }  # fmt: skip
    score = min(1.0, max(0.0, 0.5 + d))
    return ProbeResult(PROBE, canary_id, score, d > 0, detail, f"{TEXT_SCORER}/{scorer_name}")


def _content(text: str) -> set[str]:
    return {stem(w) for w in _tokens(text) if w not in _STOPWORDS and w not in HEDGE_WORDS}


def on_topic(answer: str, canary: Canary) -> bool:
    """Whether the answer shares a content word with any reference, right or wrong.

    Embedded after its question, any text lands near the references (the question dominates
    the embedding), so similarity alone would pass about half of the answers about nothing;
    an answer that uses none of the words its references use is not about them."""
    words = _content(answer)
    return any(words & _content(ref) for ref in (*canary.correct, *canary.incorrect))


def _term(reference: str) -> Phrase | None:
    """A short reference (a name, a number, a term) as a phrase to look for, else None."""
    folded = fold(reference).strip(" .!?;:,")
    return Phrase.of(folded) if folded and len(folded.split()) <= MENTION_WORDS else None


def stated(answer: str, references: Sequence[str]) -> list[int]:
    """Indexes of the short references the answer states: found on word boundaries, accents
    and case aside, and not denied ("not a fruit" states nothing; `probes.matchers.mentions`)."""
    said = fold(answer)
    found = []
    for i, ref in enumerate(references):
        term = _term(ref)
        if term is not None and any(not m.denied for m in mentions(said, [term])):
            found.append(i)
    return found


def mention_result(canary: Canary, answer: str, scorer_name: str) -> ProbeResult | None:
    """The verdict when the answer names short references of one side only, else None.

    Only items with short references on both sides decide so: where the right answer is a
    sentence, naming a wrong term may be the sentence that corrects it."""
    short = [any(_term(r) for r in side) for side in (canary.correct, canary.incorrect)]
    if not all(short):
        return None
    right, wrong = stated(answer, canary.correct), stated(answer, canary.incorrect)
    if bool(right) == bool(wrong):
        return None
    detail = {"kind": "text", "by": "mention", "correct": right, "incorrect": wrong}
    passed = bool(right)
    score = 1.0 if passed else 0.0
    return ProbeResult(PROBE, canary.id, score, passed, detail, f"{TEXT_SCORER}/{scorer_name}")


async def score_text(scorer: Scorer, canary: Canary, answer: str) -> ProbeResult:
    """A text answer's verdict: by mention when that decides, else TruthfulQA-style."""
    by_mention = mention_result(canary, answer, scorer.name)
    if by_mention is not None:
        return by_mention
    if not on_topic(answer, canary):
        detail = {"kind": "text", "by": "topic", "on_topic": False}
        return ProbeResult(PROBE, canary.id, 0.0, False, detail, f"{TEXT_SCORER}/{scorer.name}")
    texts = [answer, *canary.correct, *canary.incorrect]
    vectors = await scorer.embed([in_context(canary.prompt, t) for t in texts])
    n = 1 + len(canary.correct)
    correct, incorrect = Side(canary.correct, vectors[1:n]), Side(canary.incorrect, vectors[n:])
    diff = truthful_diff(answer, vectors[0], correct, incorrect)
    return text_result(canary.id, diff, scorer.name)


def scorer_name(canary: Canary, scorer: Scorer) -> str:
    """The `scorer` column of a canary's results."""
    if canary.matcher is not None:
        return canary.matcher.scorer
    return NUMERIC_SCORER if canary.kind == "numeric" else f"{TEXT_SCORER}/{scorer.name}"


async def score_canary(scorer: Scorer, canary: Canary, answer: str) -> ProbeResult:
    """Score one canary answer by its kind; a reply that does not answer, or loops, fails."""
    complete = canary.matcher is not None and canary.matcher.complete(answer)
    if not complete and not informative(answer, canary.prompt):
        kind = classify(answer, canary.prompt)
        detail = {"kind": canary.kind, "non_answer": "loop" if kind == "answer" else kind}
        return ProbeResult(PROBE, canary.id, 0.0, False, detail, scorer_name(canary, scorer))
    if canary.kind == "numeric":
        return score_numeric(canary, answer)
    if canary.matcher is not None:
        return score_match(canary, answer)
    return await score_text(scorer, canary, answer)


def score_match(canary: Canary, answer: str) -> ProbeResult:
    """Score (1.0 or 0.0) of a canary judged by its matcher: contains, regex, choice, json."""
    if canary.matcher is None:
        raise ValueError(f"canary {canary.id} has no matcher (kind {canary.kind})")
    verdict = canary.matcher.match(answer)
    score = 1.0 if verdict.passed else 0.0
    return ProbeResult(PROBE, canary.id, score, verdict.passed, verdict.detail,
                       canary.matcher.scorer)  # fmt: skip


# ---------------------------------------------------------------------------- asking


def canary_request(canary: Canary, model: str, max_tokens: int = 128) -> dict[str, Any]:
    """The chat request a canary is sent as (greedy: the same question, the same answer)."""
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": canary.prompt},
        ],
        "temperature": 0,
        "max_tokens": max_tokens,
    }


async def ask_canary(
    session: aiohttp.ClientSession,
    url: str,
    canary: Canary,
    model: str,
    *,
    deployment: str = "",
    headers: Mapping[str, str] | None = None,
    read_timeout_s: float = 300.0,
) -> Reply:
    """Send one canary (labelled origin='canary', never sampled, pinned to `deployment`)."""
    sent = probe_headers("canary", deployment, headers)
    return await ask(session, url, canary_request(canary, model), sent, read_timeout_s)
