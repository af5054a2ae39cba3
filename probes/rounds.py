"""Canary rounds: which canaries a round sends, in what order, and what they may cost."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from probes.factuality import SYSTEM_PROMPT, Canary

CANARY_MAX_TOKENS = 128  # probes.factuality.canary_request's default


def canary_tokens(canary: Canary) -> int:
    """Tokens one canary may use (the same ~4 characters a token)."""
    return (len(SYSTEM_PROMPT) + len(canary.prompt)) // 4 + 16 + CANARY_MAX_TOKENS


def rotation(canaries: Sequence[Canary], per_round: int, round_index: int) -> list[Canary]:
    """Round `round_index`'s canaries: the next `per_round` of the set, wrapping around."""
    n = len(canaries)
    return [canaries[(round_index * per_round + j) % n] for j in range(min(per_round, n))]


def canary_order(canaries: Sequence[Canary]) -> list[Canary]:
    """The canaries in the order rounds take them: shuffled by id, the same in every worker.

    Golden files group their items (the arithmetic first, then the facts...): in file order a
    round would hold one kind only, and a regression that breaks another kind would find no
    evidence in it. Shuffled, every round samples the whole set."""
    return sorted(canaries, key=lambda c: hashlib.sha256(c.id.encode()).digest())
