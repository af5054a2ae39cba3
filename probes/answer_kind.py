"""Is this an answer at all? Sorts a reply into an answer or one of the ways of not answering.

A reply that does not answer must never look healthy: it fails every canary with a known
answer, it supports nothing in the consistency probe, and the abstention probe counts it.
The kinds, checked in this order:

- `empty`: no letter or digit.
- `refusal`: a refusal phrase ("I can't help with that", "as an AI") with nothing new beside it.
- `abstention`: an abstention phrase ("I don't know", "I'm not sure", "no idea") with nothing
  new beside it.
- `bare`: no content word at all: "No.", "Yes.", "OK", "Maybe."
- `answer`: anything else.

"Nothing new" means no content word outside the phrase lists' own vocabulary and the prompt's
words, unless the reply still picks one ("but", "I think", "probably"): "I'm not sure, but I
think it is Canberra." is a (hedged) answer, "I don't know the answer to your question about
Canberra." is not. The lists are English; a reply in another language is an `answer` here,
left to the other probes (degeneration flags an answer in another language than its prompt).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Literal

from probes.degeneration import score_degeneration
from probes.result import ProbeResult

PROBE = "abstention"
SCORER = "answer-kind/v1"
Kind = Literal["answer", "empty", "refusal", "abstention", "bare"]

_REFUSALS = (
    "i can't help", "i cannot help", "i can not help", "i can't assist", "i cannot assist",
    "i'm unable to", "i am unable to", "i'm not able to", "i am not able to", "i won't",
    "i will not", "i must decline", "i can't provide", "i cannot provide", "i can't answer",
    "i cannot answer", "i can't do that", "i cannot do that", "i can't comply",
    "i cannot comply", "as an ai", "as a language model", "i'm sorry, but", "i am sorry, but",
    "i'm not allowed", "i am not allowed", "not able to help", "unable to help",
)  # fmt: skip
_ABSTENTIONS = (
    "i don't know", "i do not know", "i dont know", "i'm not sure", "i am not sure",
    "im not sure", "not sure", "no idea", "i have no idea", "i can't say", "i cannot say",
    "i'm not certain", "i am not certain", "i don't have", "i do not have", "unknown",
    "hard to say", "difficult to say", "cannot be determined", "can't be determined",
    "it is unclear", "it's unclear", "no information", "not enough information",
    "i have no information", "i'm uncertain", "i am uncertain", "no comment", "who knows",
    "i couldn't say", "i could not say", "i don't remember", "i do not remember",
    "it depends", "that depends",
)  # fmt: skip


def _vocabulary(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Words of the phrases above and of the filler around them: none of them carries an answer.
HEDGE_WORDS = _vocabulary(
    "i im i'm me my you your we it its it's this that these those there here the a an of to "
    "in on at for with about and or but so if as is are was were be been being am do does did "
    "don't dont doesn't didn't not no yes yeah yep nope ok okay sure maybe perhaps possibly "
    "probably well hmm um uh oh sorry apologies unfortunately afraid can can't cannot could "
    "couldn't would wouldn't will won't shall should must may might have has had know knew "
    "known unknown idea say said tell sure certain uncertain unclear clear hard difficult "
    "really exactly quite very just only that's what which who whom whose when where why how "
    "answer answers question questions information info enough help assist provide able unable "
    "ai language model assistant allowed decline comply determined determine remember think "
    "believe guess thing things something anything nothing everything any some all none "
    "one true false correct right wrong please thank thanks n't let else entirely other "
    "different exact specific depends depend request requests topic matter"
)  # fmt: skip
_STOPWORDS = _vocabulary(
    "yes no yeah yep nope ok okay sure maybe perhaps possibly well hmm um uh oh the a an it "
    "is are was were be this that so and or but not true false correct right indeed of course "
    "certainly absolutely definitely"
)  # fmt: skip
_ASSERTING = frozenset({"but", "think", "believe", "probably", "likely", "guess", "suspect"})
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def normalise(text: str) -> str:
    """Lower case, straight apostrophes, accents kept (word matching is on these)."""
    return unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'").replace("`", "'")


def words(text: str) -> list[str]:
    """Words of a normalised text (letters and digits, inner apostrophes kept)."""
    return _WORD.findall(normalise(text))


def stem(word: str) -> str:
    """A crude stem, enough to tell a prompt's words in a reply: "founded" ~ "founding"."""
    word = word.removesuffix("'s")
    return word[:5] if len(word) > 5 else word


def _has_phrase(text: str, phrases: tuple[str, ...]) -> bool:
    return any(re.search(rf"(?<!\w){re.escape(p)}(?!\w)", text) for p in phrases)


def classify(reply: str, prompt: str = "") -> Kind:
    """What kind of reply `reply` is to `prompt` (see the module docstring)."""
    found = words(reply)
    if not found:
        return "empty"
    text = normalise(reply)
    content = [w for w in found if w not in HEDGE_WORDS]
    asked = {stem(w) for w in words(prompt)}
    news = [w for w in content if stem(w) not in asked]
    # "I'm not sure, but I think it is Canberra": a hedge that still picks an answer.
    picks = bool(content) and not _ASSERTING.isdisjoint(found)
    if not news and not picks:
        if _has_phrase(text, _REFUSALS):
            return "refusal"
        if _has_phrase(text, _ABSTENTIONS):
            return "abstention"
    if all(w in _STOPWORDS for w in found):
        return "bare"
    return "answer"


LOOPING = frozenset({"loop", "repetition", "repeated_lines"})  # degeneration flags


def informative(reply: str, prompt: str = "") -> bool:
    """Whether a reply can agree with anything or pass a canary: an answer that does not loop
    or repeat itself."""
    kind = classify(reply, prompt)
    if kind != "answer":
        return False
    return of_kind(kind, score_degeneration(reply).detail.get("flags", []))


def of_kind(kind: Kind, flags: Iterable[str]) -> bool:
    """`informative` from a reply's kind and its degeneration flags, when both are known."""
    return kind == "answer" and LOOPING.isdisjoint(flags)


def score_abstention(reply: str, prompt: str = "") -> ProbeResult:
    """The abstention probe: 1 (passed) for an answer, 0 for any way of not answering."""
    return abstention(classify(reply, prompt))


def abstention(kind: Kind) -> ProbeResult:
    """The abstention probe's result for a reply of `kind`."""
    ok = kind == "answer"
    return ProbeResult(PROBE, "", 1.0 if ok else 0.0, ok, {"answer_kind": kind}, SCORER)
