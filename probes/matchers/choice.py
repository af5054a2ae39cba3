"""`choice` canaries: multiple choice (MMLU-style), passed by picking the right option.

An answer picks options by letter ("B", "(B)", "B)", "B. Paris", "Answer: B", "The answer is
B", "option B", "I choose B", "B is correct") or, when it gives no letter, by stating option
texts (found as probes.matchers.mentions finds phrases; a longer option text that contains a
shorter one shadows it). It passes when it picks exactly the right option: another option,
several, or none fail. Denied picks ("not B", "Paris, not London") do not count.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from probes.matchers import Verdict
from probes.matchers.mentions import Mention, Phrase, denied, fold, mentions

SCORER = "choice/v1"
LETTERS = string.ascii_uppercase

_ALONE = re.compile(r"^[\s\[(]*([A-Za-z])[\s\])]*(?:[.:!]\s*)?$")
_SEVERAL = re.compile(r"^\s*[A-Z](?:\s*(?:,|/|\bor\b|\band\b)\s*[A-Z])+\s*(?:[.!]\s*)?$")
_LEADING = re.compile(r"^\s*[\[(]?([A-Z])[\])\.:](?=\s|$)")
_PICKS = re.compile(
    r"\b(?i:answer|option|choice|letter|choose|chose|pick|select)"
    r"(?:\s+(?i:is|would be|should be|must be|will be))?"
    r"\s*(?:[:=\-]\s*)?[\[(]?([A-Z](?!\w)|[a-z](?=[)\].,;:!]|\s*$))"
    r"|[\[(]([A-Z])[\])]"
    r"|\b([A-Z])\s+is\s+(?i:the\s+)?(?i:correct|right)\b"
)


@dataclass(frozen=True, slots=True)
class Choice:
    """Pass when the answer picks `answer` among `options` (letter -> text), and only it."""

    options: tuple[tuple[str, str], ...]
    answer: str
    texts: tuple[Phrase, ...]  # per option, in the order of `options`

    @classmethod
    def of(cls, options: Sequence[str] | Mapping[str, str], answer: str) -> Choice:
        """A matcher; ValueError for bad letters, fewer than two or repeated options, or an
        answer letter that is not an option."""
        pairs = _lettered(options)
        letters = [letter for letter, _ in pairs]
        folded = [fold(text) for _, text in pairs]
        if len(set(folded)) != len(folded):
            raise ValueError("options must differ (ignoring case, accents and spacing)")
        key = answer.strip().upper()
        if key not in letters:
            raise ValueError(f"answer {answer!r} is not among the options {letters}")
        return cls(tuple(pairs), key, tuple(Phrase.of(text) for _, text in pairs))

    @property
    def scorer(self) -> str:
        """Scorer name and version."""
        return SCORER

    def complete(self, answer: str) -> bool:
        """A lone letter ("A", "(B)") answers a multiple-choice question in full."""
        return _ALONE.match(_plain(answer)) is not None

    def match(self, answer: str) -> Verdict:
        """Judge one answer."""
        letters = letter_picks(answer)
        by = "letter"
        if not letters:
            by, letters = "text", self._text_picks(answer)
        picked = sorted(letters)
        detail = {"kind": "choice", "expected": self.answer, "picked": picked, "by": by}
        return Verdict(picked == [self.answer], detail)

    def _text_picks(self, answer: str) -> set[str]:
        text = fold(answer)
        by_text = {
            phrase.text: letter
            for (letter, _), phrase in zip(self.options, self.texts, strict=True)
        }
        found = unshadowed(mentions(text, self.texts))
        return {by_text[m.phrase] for m in found if not m.denied}


def _lettered(options: Sequence[str] | Mapping[str, str]) -> list[tuple[str, str]]:
    if isinstance(options, Mapping):
        pairs = [(str(k).strip().upper(), v) for k, v in options.items()]
    else:
        if len(options) > len(LETTERS):
            raise ValueError(f"at most {len(LETTERS)} options")
        pairs = list(zip(LETTERS, options, strict=False))  # as many letters as options
    if len(pairs) < 2:
        raise ValueError("needs at least two options")
    letters = [letter for letter, _ in pairs]
    bad = [letter for letter in letters if len(letter) != 1 or letter not in LETTERS]
    if bad or len(set(letters)) != len(letters):
        raise ValueError(f"option letters must be distinct single letters A-Z, got {letters}")
    return pairs


def _plain(answer: str) -> str:
    """NFKC (full-width letters) without markdown emphasis or code marks."""
    return unicodedata.normalize("NFKC", answer).replace("*", "").replace("`", "")


def letter_picks(answer: str) -> set[str]:
    """The option letters an answer picks explicitly (denied ones left out)."""
    text = _plain(answer)
    alone = _ALONE.match(text)
    if alone:
        return {alone.group(1).upper()}
    if _SEVERAL.match(text):  # "A or B", "A, C": a hedge names every letter
        return set(re.findall(r"[A-Z]", text))
    picks: set[str] = set()
    leading = _LEADING.match(text)
    if leading:
        picks.add(leading.group(1))
    # The negation patterns are lower case; lowering one character at a time keeps positions.
    lowered = "".join(c.lower() if len(c.lower()) == 1 else c for c in text)
    for found in _PICKS.finditer(text):
        index = next(i for i in (1, 2, 3) if found.group(i))
        start, end = found.span(index)
        if not denied(lowered, start, end):
            picks.add(found.group(index).upper())
    return picks


def unshadowed(found: list[Mention]) -> list[Mention]:
    """Mentions (sorted by start, longest first) not inside a longer one: "Paris, Texas" holds
    "Paris". Options differ once folded, so two mentions never share a span."""
    kept, reach = [], -1
    for mention in found:
        if mention.end > reach:
            kept.append(mention)
        reach = max(reach, mention.end)
    return kept
