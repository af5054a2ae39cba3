"""Token log-likelihoods for a reference audit: reading them from OpenAI-style completions, and
comparing two servers on the same text, as llama.cpp judges its quantizations.

A server scores a given continuation when `/v1/completions` honours `echo` with `logprobs`
(llama-cpp-python's server, vLLM): the prompt and the answer are sent as the prompt, and the
answer's tokens are found at the end of what comes back (`read_echo`). Servers that return
logprobs only for the tokens they generate (OpenAI, llama.cpp's own server) cannot score another
server's answer; the audit says so and runs without this comparison.

Per prompt, each side's answer is scored by both sides. The divergence of the prompt is

    d = gap(candidate's answer) + gap(reference's answer),
    gap(answer) = (log p_own(answer) - log p_other(answer)) / tokens,

an estimate of the symmetrised KL divergence per token when answers are sampled at
temperature 1. Swapping the two answers (which side wrote which) turns d into -d; under "same
model" the two answers are exchangeable, so d is symmetric about 0, which is what
`probes.audit_stats.sign_flip_test` needs. Top-1 agreement: the share of
positions of the scored answers where both sides' most likely next token is the same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from probes.audit_stats import FloatArray


@dataclass(frozen=True, slots=True)
class Scored:
    """One server's log-probabilities of the tokens of one text, and its top-1 at each."""

    tokens: tuple[str, ...]
    logprobs: FloatArray
    top1: tuple[str, ...]  # '' where the server gave no top logprobs

    @property
    def total(self) -> float:
        """Log-likelihood of the whole text."""
        return float(np.sum(self.logprobs))


EMPTY = Scored((), np.zeros(0), ())


def _choice(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    return first if isinstance(first, Mapping) else None


def _top1(entry: Any) -> str:
    if not isinstance(entry, Mapping) or not entry:
        return ""
    best = max(entry.items(), key=lambda kv: kv[1] if isinstance(kv[1], int | float) else -1e30)
    return str(best[0])


def completion_logprobs(body: Mapping[str, Any]) -> Scored | None:
    """The logprobs of a `/v1/completions` response's tokens, or None when it has none."""
    choice = _choice(body)
    logprobs = choice.get("logprobs") if choice else None
    if not isinstance(logprobs, Mapping):
        return None
    tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
        return None
    tops = logprobs.get("top_logprobs")
    tops = tops if isinstance(tops, list) and len(tops) == len(tokens) else [None] * len(tokens)
    lps = np.array([float(v) if isinstance(v, int | float) else math.nan for v in values])
    return Scored(tuple(str(t) for t in tokens), lps, tuple(_top1(t) for t in tops))


def read_echo(body: Mapping[str, Any], prompt: str, answer: str) -> Scored | None:
    """The scores of `answer`'s tokens in an echo response to `prompt + answer`.

    The answer's tokens are the last ones whose text makes up the answer (a token that
    straddles the prompt and the answer is left out), once the tokens generated after the echo
    are dropped: servers differ on whether those come back (vLLM: yes; llama-cpp-python: all
    but the last). None when the response has no logprobs, or its tokens do not spell the
    answer (the server tokenizes otherwise than it detokenizes)."""
    scored = completion_logprobs(body)
    if scored is None:
        return None
    choice = _choice(body) or {}
    text = str(choice.get("text") or "")
    extra = text[len(prompt + answer) :] if text.startswith(prompt + answer) else ""
    ends = [len(scored.tokens)]
    tail = ""
    for i in range(len(scored.tokens) - 1, -1, -1):
        tail = scored.tokens[i] + tail
        if not tail or not extra.startswith(tail):
            break
        ends.append(i)
    for end in reversed(ends):  # the most generated tokens dropped first
        span = _answer_span(scored, end, answer)
        if span is not None:
            return span
    return None


def _answer_span(scored: Scored, end: int, answer: str) -> Scored | None:
    """The tokens before `end` that spell `answer`, or None when they do not."""
    if not answer:
        return EMPTY
    joined = ""
    for start in range(end - 1, -1, -1):
        joined = scored.tokens[start] + joined
        if len(joined) < len(answer):
            continue
        if joined == answer:
            first = start
        elif joined.endswith(answer):
            first = start + 1
        else:
            return None
        values = scored.logprobs[first:end]
        if values.size and not np.all(np.isfinite(values)):
            return None
        return Scored(scored.tokens[first:end], values, scored.top1[first:end])
    return None


# ---------------------------------------------------------------------------- comparing


def gap(own: Scored, other: Scored) -> float:
    """(log p_own - log p_other) of one text, per token of the own side; 0 for an empty text."""
    if not own.tokens:
        return 0.0
    return (own.total - other.total) / len(own.tokens)


@dataclass(frozen=True, slots=True)
class PromptScores:
    """Both answers to one prompt, each scored by its own side and by the other."""

    candidate_own: Scored
    candidate_by_reference: Scored
    reference_own: Scored
    reference_by_candidate: Scored

    @property
    def divergence(self) -> float:
        """d: how much more each side likes its own answer than the other side does."""
        return gap(self.candidate_own, self.candidate_by_reference) + gap(
            self.reference_own, self.reference_by_candidate
        )

    def top1_agreement(self) -> tuple[int, int]:
        """(positions where both sides' top-1 agree, positions compared)."""
        agree = total = 0
        for a, b in (
            (self.candidate_own, self.candidate_by_reference),
            (self.reference_own, self.reference_by_candidate),
        ):
            if a.tokens != b.tokens:
                continue  # different tokenizers: positions do not line up
            both = [(x, y) for x, y in zip(a.top1, b.top1, strict=True) if x and y]
            agree += sum(x == y for x, y in both)
            total += len(both)
        return agree, total


def mean_abs_difference(pairs: Sequence[tuple[Scored, Scored]]) -> float:
    """Mean |a - b| per token over texts both sides tokenized alike (NaN when none)."""
    diffs = [np.abs(a.logprobs - b.logprobs) for a, b in pairs if a.tokens == b.tokens]
    flat = np.concatenate(diffs) if diffs else np.zeros(0)
    return float(flat.mean()) if flat.size else math.nan
