"""The degradation zoo against the probes: no member's answers look healthy.

The zoo's answers come from the simulator's own word lists (fathom/sim/zoo.py) and its own
arithmetic, never from a golden file; the bounds asserted here are the issue's requirements,
not figures read off the code.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from fathom.sim.answers import answer
from fathom.sim.models import ModelSpec
from fathom.sim.zoo import MEMBERS
from probes.answer_kind import classify, informative, score_abstention
from probes.consistency import score_consistency
from probes.degeneration import score_degeneration
from probes.factuality import Canary, load_canaries, score_canary
from probes.scorer import Scorer

SOUND = ModelSpec(name="sound", tokens=24)
# Members that keep the sound answer's content: other probes catch them (degeneration's
# repetition for `verbose`, answer shape for `terse`), not the canaries.
CONTENT_KEPT = {"verbose"}


def replies(member: str, prompt: str, asks: int = 1, seed: int = 0) -> list[str]:
    """What a simulated model degraded by `member` answers to `prompt`, `asks` times."""
    rng = random.Random(f"{member}/{prompt}/{seed}")
    said = [answer(SOUND, prompt, 24, 128, rng, seed, member) for _ in range(asks)]
    return ["".join(a.tokens) for a in said]


# ---------------------------------------------------------------------------- answer kinds


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("", "empty"),
        ("  ...  ", "empty"),
        ("I don't know.", "abstention"),
        ("I\u2019m not sure.", "abstention"),
        ("I really have no idea.", "abstention"),
        ("It depends.", "abstention"),
        ("I don't know the answer to your question about Canberra.", "abstention"),
        ("I'm sorry, but I can't help with that.", "refusal"),
        ("As an AI language model, I cannot answer questions about Canberra.", "refusal"),
        ("No.", "bare"),
        ("Yes, absolutely.", "bare"),
        ("OK", "bare"),
        ("Canberra.", "answer"),
        ("I'm not sure, but I think it is Canberra.", "answer"),
        ("The answer is 42.", "answer"),
        ("No, the capital is Canberra, not Sydney.", "answer"),
    ],
)  # fmt: skip
def test_answer_kinds(reply: str, kind: str) -> None:
    assert classify(reply, "What is the capital of Australia, Canberra or Sydney?") == kind
    assert score_abstention(reply).passed is (classify(reply) == "answer")


def test_a_loop_is_not_informative() -> None:
    assert informative("Canberra is the capital.")
    assert not informative("and so on " * 30)
    assert not informative("I don't know.")


# ---------------------------------------------------------------------------- the members


def test_every_member_is_told_apart_from_the_sound_answer() -> None:
    prompt = "Explain how a cache works."
    sound = replies("", prompt)[0]
    for member in MEMBERS:
        if member != "wrong":  # confident wrong facts need a fact: filler stays filler
            assert replies(member, prompt)[0] != sound, member
    assert replies("wrong", "What is 17 \u00d7 23?")[0] != replies("", "What is 17 \u00d7 23?")[0]


async def test_no_member_passes_more_than_a_tenth_of_the_golden_set(scorer: Scorer) -> None:
    canaries = load_canaries()
    sound_share = await pass_share(scorer, canaries, "")
    assert sound_share > 0.2  # the simulator's own arithmetic passes the arithmetic items
    for member in sorted(set(MEMBERS) - CONTENT_KEPT):
        share = await pass_share(scorer, canaries, member)
        assert share <= 0.10, (member, share)


async def pass_share(scorer: Scorer, canaries: list[Canary], member: str) -> float:
    results = await asyncio.gather(
        *(score_canary(scorer, c, replies(member, c.prompt)[0]) for c in canaries)
    )
    return sum(bool(r.passed) for r in results) / len(results)


@pytest.mark.parametrize("member", ["abstain", "no", "yes", "refuse", "empty", "loop", "drift"])
async def test_consistency_falls_for_members_that_stop_answering_or_drift(
    scorer: Scorer, member: str
) -> None:
    prompt = "Explain how a cache works."
    sound = replies("", prompt, asks=6)
    degraded = replies(member, prompt, asks=6)
    before = await score_consistency(scorer, sound[0], sound[1:], prompt=prompt)
    after = await score_consistency(scorer, degraded[0], degraded[1:], prompt=prompt)
    assert before is not None and after is not None
    assert before.score > 0.9 and after.score < 0.4, (member, before.score, after.score)


@pytest.mark.parametrize(
    ("member", "flag"),
    [("loop", "loop"), ("verbose", "repetition"), ("empty", "empty"), ("language", "language")],
)
def test_degeneration_flags_members_that_break_the_form(member: str, flag: str) -> None:
    prompt = "Can you explain how a cache works, and why it is faster?"
    assert score_degeneration(replies("", prompt)[0], prompt=prompt).passed is True
    result = score_degeneration(replies(member, prompt)[0], prompt=prompt)
    assert result.passed is False and flag in result.detail["flags"]


@pytest.mark.parametrize("member", ["abstain", "no", "yes", "refuse", "empty"])
def test_abstention_probe_fails_members_that_stop_answering(member: str) -> None:
    prompt = "Explain how a cache works."
    assert score_abstention(replies("", prompt)[0], prompt).passed is True
    assert score_abstention(replies(member, prompt)[0], prompt).passed is False
