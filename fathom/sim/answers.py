"""What a simulated model answers: right or wrong, repeatable or not, fluent or degenerate.

Every (model, prompt) has a canonical answer drawn from a generator seeded by the server seed,
the model and the prompt, so it is the same on every ask and in every process. An ask gets
that canonical draw with probability `consistency`; otherwise a fresh draw from the request's
generator. Both draws answer a known prompt correctly with probability `accuracy`, so a
consistent model repeats its mistakes (what only canaries catch) and an inconsistent one
flips between answers (what re-asking catches).
"""

from __future__ import annotations

import operator
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from fathom.sim import zoo
from fathom.sim.models import Known, ModelSpec, normalise

SENTENCES = (
    "That depends on what you need it for, so here is a general overview.",
    "Most systems handle this by keeping a small amount of state close to where it is used.",
    "The usual approach is to start simple, measure, and change one thing at a time.",
    "In practice the trade-off is between latency and throughput, and both matter.",
    "A good rule of thumb is to write down the assumptions before tuning anything.",
    "Many people find it easier to reason about the problem with a concrete example.",
    "The details vary between implementations, but the underlying idea is the same.",
    "It is worth checking the documentation, since defaults change between versions.",
    "When in doubt, prefer the option that is easier to observe and to undo.",
    "This usually works well, although there are edge cases at very large scale.",
    "Historically the first designs were simpler, and later ones added caching.",
    "The short answer is yes, with a few caveats that are described below.",
)
LOOP = "and so on"
NOT_SURE = "I am not sure, but I believe it is something else entirely."


@dataclass(frozen=True, slots=True)
class Answer:
    """The tokens of an answer (one per content event) and what kind of answer it is."""

    tokens: tuple[str, ...]
    kind: str  # correct | incorrect | filler | loop | empty


def answer(
    spec: ModelSpec,
    prompt: str,
    length: int,
    limit: int,
    rng: random.Random,
    seed: int,
    member: str = "",
) -> Answer:
    """Answer `prompt` per the model's quality knobs, degraded the zoo `member`'s way if any.

    `length` sizes filler; loops run to `limit` (max_tokens; 0: none), as they do on real
    servers, else to `length`.
    """
    sound = _sound(spec, prompt, length, limit, rng, seed)
    if not member or (member == "wrong" and sound.kind == "filler"):
        return sound
    text = zoo.degrade(member, " ".join(sound.tokens), limit, rng)
    return Answer(tokenize(text), "loop" if member == "loop" else member)


def _sound(
    spec: ModelSpec, prompt: str, length: int, limit: int, rng: random.Random, seed: int
) -> Answer:
    key = normalise(prompt)
    canonical = rng.random() < spec.consistency
    draw = random.Random(f"{seed}/{spec.name}/{key}") if canonical else rng
    if draw.random() < spec.degeneration:
        if draw.random() < 0.5:
            return Answer((), "empty")
        size = max(1, limit or length)
        return Answer(tokenize(" ".join([LOOP] * size))[:size], "loop")
    known = spec.knowledge.get(key) or solve(prompt)
    if known is None:
        return Answer(_filler(draw, length), "filler")
    if draw.random() < spec.accuracy:
        return Answer(tokenize(draw.choice(known.correct)), "correct")
    return Answer(tokenize(wrong(known, spec.knowledge, draw)), "incorrect")


_SUM = re.compile(
    r"what is (-?\d[\d,]*) *([-+\u2212\u00d7x*\u00f7/]) *(-?\d[\d,]*)\?", re.IGNORECASE
)
_OPS: dict[str, Callable[[int, int], float]] = {
    "+": operator.add, "-": operator.sub, "\u2212": operator.sub, "\u00d7": operator.mul,
    "x": operator.mul, "*": operator.mul, "\u00f7": operator.truediv, "/": operator.truediv,
}  # fmt: skip


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def solve(prompt: str) -> Known | None:
    """The simulator's own arithmetic: "What is 17 x 23?" -> 391, computed, not looked up."""
    match = _SUM.search(prompt)
    if match is None:
        return None
    a, b = (int(match.group(i).replace(",", "")) for i in (1, 3))
    if match.group(2) in "\u00f7/" and b == 0:
        return None
    value = _OPS[match.group(2).lower()](a, b)
    text = str(int(value)) if float(value).is_integer() else f"{value:.4g}"
    return Known((f"The answer is {text}.",), ())


def tokenize(text: str) -> tuple[str, ...]:
    """Split text into content-event tokens; joined, they give the text (spaces normalised)."""
    words = text.split()
    # Leading spaces, as BPE tokens have them: a cut answer has no dangling space.
    return tuple(words[:1]) + tuple(" " + w for w in words[1:])


def wrong(known: Known, knowledge: Mapping[str, Known], rng: random.Random) -> str:
    """A plausible wrong answer: a listed one, a nearby number or another prompt's answer."""
    right = {normalise(c) for c in known.correct}
    if known.incorrect:
        candidates = [i for i in known.incorrect if normalise(i) not in right]
        if candidates:
            return rng.choice(candidates)
    number = _nearby_number(known.correct[0], rng)
    if number is not None:
        return number
    others = list(knowledge.values())
    for _ in range(8):
        other = rng.choice(others).correct[0] if others else NOT_SURE
        if normalise(other) not in right:
            return other
    return NOT_SURE


def _nearby_number(text: str, rng: random.Random) -> str | None:
    """`text` with its one number moved a little ("The answer is 391." -> "... 398."), or None
    when it holds no number or several."""
    found = _NUMBER.findall(text)
    if len(found) != 1:
        return None
    number = found[0]
    offset = rng.choice([-10, -3, -2, -1, 1, 2, 7, 11])
    decimals = len(number.partition(".")[2])
    moved = f"{float(number) + offset * 10.0**-decimals:.{decimals}f}"
    return _NUMBER.sub(moved, text, count=1)


def _filler(rng: random.Random, length: int) -> tuple[str, ...]:
    words: list[str] = []
    while len(words) < length:
        words.extend(rng.choice(SENTENCES).split())
    return tokenize(" ".join(words[:length]))
