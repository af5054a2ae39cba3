"""Finding what an answer says: accent- and case-insensitive phrases on word boundaries.

Text is folded (NFKD, combining marks dropped, casefolded, whitespace runs made one space), so
"BRASILIA" finds "Brasília". A phrase matches only where it is not part of a longer word:
"Rome" is not found in "Romeo", "42" not in "420". Scripts written without spaces between
words (Chinese, Japanese, Thai, ...) have no such boundaries, so none is asked for there.

A mention right after a negation ("not Sydney", "rather than Sydney", "none were burned",
"nothing radioactive") or right before one ("Sydney is not ...", "Sydney isn't ...") is a
denial: answers correct a misconception by naming it ("Canberra, not Sydney"), and naming the
right answer only to deny it ("not Canberra") is no answer.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

_SPACES = re.compile(r"\s+")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'", "\u201c": '"',
                         "\u201d": '"'})  # fmt: skip
# Scripts that do not separate words with spaces: CJK, kana, Thai, Lao, Khmer, Myanmar.
_UNSPACED = re.compile(
    r"[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff"
    r"\uf900-\ufaff\U00020000-\U0003134f]"
)
_DENIED_BEFORE = re.compile(
    r"(?:\b(?:not|no|nothing|none|nor|never|rather than|instead of|other than)|n't)"
    r"\s+(?:(?:the|a|an|its|their|in|at|by|on|of|from|to|is|are|was|were|be)\s+)?[\[(\"']?$"
)
_DENIED_AFTER = re.compile(r"^[\s,]*(?:is|are|was|were|does|do|did|has|have|had)(?:\s+not\b|n't\b)")
_LOOK = 40  # characters either side searched for a negation


def fold(text: str) -> str:
    """Text as it is compared: NFKD without combining marks, casefolded, one space per run."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_QUOTES))
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _SPACES.sub(" ", bare.casefold()).strip()


def _bounded(edge: str) -> bool:
    """Whether a phrase edge must sit on a word boundary."""
    return (edge.isalnum() or edge == "_") and not _UNSPACED.match(edge)


def phrase_pattern(folded: str) -> re.Pattern[str]:
    """The pattern finding one folded phrase on word boundaries."""
    left = r"(?<!\w)" if _bounded(folded[0]) else ""
    right = r"(?!\w)" if _bounded(folded[-1]) else ""
    return re.compile(left + re.escape(folded) + right)


def denied(folded_text: str, start: int, end: int) -> bool:
    """Whether the mention at [start, end) of a folded text is negated right before or after."""
    before = folded_text[max(0, start - _LOOK) : start]
    after = folded_text[end : end + _LOOK]
    return bool(_DENIED_BEFORE.search(before) or _DENIED_AFTER.match(after))


@dataclass(frozen=True, slots=True)
class Phrase:
    """A phrase as written in the golden item, and its compiled folded pattern."""

    text: str
    pattern: re.Pattern[str]

    @classmethod
    def of(cls, text: str) -> Phrase:
        """The phrase for `text`; ValueError when nothing is left of it once folded."""
        folded = fold(text)
        if not folded:
            raise ValueError(f"{text!r} is empty once folded")
        return cls(text, phrase_pattern(folded))


@dataclass(frozen=True, slots=True)
class Mention:
    """Where a phrase occurs in a folded answer, and whether that occurrence is denied."""

    phrase: str
    start: int
    end: int
    denied: bool


def mentions(folded_text: str, phrases: Iterable[Phrase]) -> list[Mention]:
    """Every occurrence of every phrase in a folded text, in order of position."""
    found = [
        Mention(p.text, m.start(), m.end(), denied(folded_text, m.start(), m.end()))
        for p in phrases
        for m in p.pattern.finditer(folded_text)
    ]
    return sorted(found, key=lambda m: (m.start, -m.end))
