"""`contains` canaries: the answer states one of the listed phrases and none of the excluded.

Phrases are found as probes.matchers.mentions finds them (accents, case and spacing ignored,
whole words, denials not counted). An excluded phrase the answer asserts fails it even when a
listed one is there too: "Canberra or Sydney" hedges and is wrong; "Canberra, not Sydney"
passes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from probes.matchers import Verdict
from probes.matchers.mentions import Phrase, fold, mentions

SCORER = "contains/v1"


@dataclass(frozen=True, slots=True)
class Contains:
    """Pass when any of `phrases` is asserted and none of `exclude` is."""

    phrases: tuple[Phrase, ...]
    exclude: tuple[Phrase, ...] = ()

    @classmethod
    def of(cls, phrases: Sequence[str], exclude: Sequence[str] = ()) -> Contains:
        """A matcher; ValueError for an empty list, empty phrases or a phrase on both lists."""
        if not phrases:
            raise ValueError("needs at least one phrase")
        both = {fold(p) for p in phrases} & {fold(e) for e in exclude}
        if both:
            raise ValueError(f"{sorted(both)} both listed and excluded")
        return cls(tuple(map(Phrase.of, phrases)), tuple(map(Phrase.of, exclude)))

    @property
    def scorer(self) -> str:
        """Scorer name and version."""
        return SCORER

    def complete(self, answer: str) -> bool:
        """Never: a phrase or pattern found in a bare or looping reply is no answer."""
        return False

    def match(self, answer: str) -> Verdict:
        """Judge one answer."""
        text = fold(answer)
        found = mentions(text, self.phrases)
        matched = [m.phrase for m in found if not m.denied]
        excluded = [m.phrase for m in mentions(text, self.exclude) if not m.denied]
        detail = {
            "kind": "contains", "matched": _unique(matched), "excluded": _unique(excluded),
            "denied": _unique(m.phrase for m in found if m.denied),
        }  # fmt: skip
        return Verdict(bool(matched) and not excluded, detail)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
