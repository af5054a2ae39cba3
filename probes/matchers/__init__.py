"""Answer matchers for canary kinds with a decidable answer: contains, regex, choice, json.

A matcher is built once when its golden item is loaded (a bad pattern or schema is refused
then, with the item's file and line) and judges each answer to pass or fail; the factuality
probe turns its verdict into a score of 1.0 or 0.0. Numeric and text canaries are scored in
probes.factuality.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether an answer passes, and what was found in it (JSON-able)."""

    passed: bool
    detail: dict[str, Any]


class Matcher(Protocol):
    """What a canary kind with a decidable answer provides."""

    @property
    def scorer(self) -> str:
        """Scorer name with its version, e.g. "contains/v1" (the quality row's `scorer`)."""
        ...

    def match(self, answer: str) -> Verdict:
        """Judge one answer."""
        ...

    def complete(self, answer: str) -> bool:
        """Whether the reply's form alone makes it a full answer of this kind (a lone option
        letter, a JSON value), which the non-answer check must not call bare or empty."""
        ...
