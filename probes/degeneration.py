"""Degeneration probe: cheap checks for broken answers, run on every sample (CPU, no model).

Each check yields a severity in [0, 1] and, past its threshold, a flag:
- `empty`: no visible text (severity 1).
- `repetition`: share of repeated word 4-grams (CJK characters count as words), and
  `loop`: the share of the answer's last 2000 characters (trailing blanks aside) taken by a
  tail that repeats itself at least 3 times (at least 60 characters of it).
- `repeated_lines`: share of non-trivial lines that repeat an earlier line.
- `truncated`: the upstream stopped at its length limit (finish_reason == "length"; 0.5).
- `charset`: U+FFFD replacement characters and control characters (10x their share), and
  `mixed_scripts`: words mixing letters of unrelated scripts (5x their share).
- `language`: a prompt answered in another language than its own (`language_of`: the
  language whose common function words it uses most, or another script; answers of at least
  `Limits.min_words` words; severity 1). Only when the prompt is given.
`score` = 1 - the largest severity; `passed` = no flag raised.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

from probes.result import ProbeResult

PROBE = "degeneration"
SCORER = "rules/v1"
NGRAM = 4
TAIL_WINDOW = 2000  # characters of the end inspected for a loop
MAX_PERIOD = 300  # longest repeating unit looked for, in characters

_EOL = re.compile(r"\r\n|\r|\n")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters
# Scripts that legitimately share words (Japanese mixes kana and kanji) form one family.
_FAMILY = {"HIRAGANA": "CJK", "KATAKANA": "CJK", "CJK": "CJK", "HANGUL": "HANGUL"}


@dataclass(frozen=True, slots=True)
class Limits:
    """Flag thresholds (on each check's raw measure)."""

    repetition: float = 0.35  # share of repeated 4-grams
    min_ngrams: int = 12  # shorter texts are too short to judge repetition
    loop: float = 0.3  # share of the inspected tail that loops
    loop_min_chars: int = 60
    repeated_lines: float = 0.5
    min_lines: int = 4
    bad_chars: float = 0.0  # any replacement or control character
    mixed_words: float = 0.05
    min_words: int = 8  # shorter answers are too short to tell their language


def repeated_ngram_ratio(text: str, n: int = NGRAM) -> tuple[float, int]:
    """(share of n-grams that repeat an earlier one, number of n-grams)."""
    tokens = _TOKEN.findall(text.lower())
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0, 0
    return 1.0 - len(set(grams)) / len(grams), len(grams)


def tail_loop(text: str) -> tuple[int, int]:
    """(period, characters) of the longest periodic tail that repeats at least 3 times."""
    tail = text.rstrip()[-TAIL_WINDOW:]
    best = (0, 0)
    for period in range(1, min(MAX_PERIOD, len(tail) // 3) + 1):
        length = period
        while length < len(tail) and tail[-length - 1] == tail[-length - 1 + period]:
            length += 1
        if length >= 3 * period and length > best[1]:
            best = (period, length)
            if length == len(tail):
                break  # the whole window loops: a longer period cannot cover more
    return best


def repeated_line_ratio(text: str) -> tuple[float, int]:
    """(share of lines repeating an earlier line, number of lines); short lines ignored."""
    lines = [ln.strip() for ln in _EOL.split(text)]
    lines = [ln for ln in lines if len(ln) >= 8 and any(c.isalnum() for c in ln)]
    if not lines:
        return 0.0, 0
    return 1.0 - len(set(lines)) / len(lines), len(lines)


def bad_characters(text: str) -> dict[str, int]:
    """Counts of U+FFFD replacement characters and control characters (tab and EOLs allowed)."""
    replacement = text.count("\ufffd")
    control = sum(1 for c in text if unicodedata.category(c) in ("Cc", "Cs") and c not in "\t\n\r")
    return {"replacement": replacement, "control": control}


def _family(ch: str) -> str:
    name = unicodedata.name(ch, "")
    script = name.split(" ", 1)[0]
    return _FAMILY.get(script, script)


def mixed_script_words(text: str) -> tuple[int, int, dict[str, int]]:
    """(words mixing script families, words, letters per family)."""
    words = _WORD.findall(text)
    letters: Counter[str] = Counter()
    mixed = 0
    for word in words:
        families = {_family(c) for c in word}
        letters.update(_family(c) for c in word)
        mixed += len(families) > 1
    return mixed, len(words), dict(letters)


# Common function words per language: a text is in the language whose words it uses most.
# A list of nouns or a code block uses none, and is in no language here.
_FUNCTION_WORDS = {
    "en": "the a an of to in on at for with and or but is are was were be it this that these "
          "those you your we they he she what which who how why when where do does did not "
          "can will would should from by as if than then so there their about",
    "es": "el la los las de del que y en un una es por con para se lo como más pero sus le "
          "ya o este sí porque esta entre cuando muy sin sobre también me hasta hay donde",
    "fr": "le la les de des du et est un une que qui dans pour pas sur au avec ce il elle "
          "sont ne se plus par mais ou son sa ses leur nous vous être avoir cette",
    "de": "der die das und ist ein eine nicht zu den von mit sich des auf für im dem auch es "
          "an werden aus er hat dass sie nach wird bei einer um am sind noch wie",
    "it": "il lo la gli le di che e è un una per non con del della sono si ma come anche "
          "questo nel alla più se ci da al",
    "pt": "o a os as de do da que e é um uma para com não no na por mais se como mas ao dos "
          "das ele ela são também",
}  # fmt: skip
_LANGUAGES = {lang: frozenset(words.split()) for lang, words in _FUNCTION_WORDS.items()}
_LATIN = re.compile(r"[a-zà-öø-ÿ]")


def language_of(text: str) -> tuple[str, int]:
    """(the language a text is written in, words): 'en', 'es', ..., 'other-script' when most
    letters are not Latin, '' when no language's function words reach MIN_SHARE."""
    words = _TOKEN.findall(text.lower())
    letters = [c for c in text.lower() if c.isalpha()]
    if letters and sum(bool(_LATIN.match(c)) for c in letters) < len(letters) / 2:
        return "other-script", len(words)
    shares = {
        lang: sum(w in vocabulary for w in words) / len(words)
        for lang, vocabulary in _LANGUAGES.items()
    } if words else {}  # fmt: skip
    best = max(shares, key=shares.__getitem__, default="")
    return (best if best and shares[best] >= MIN_SHARE else ""), len(words)


MIN_SHARE = 0.15  # of a text's words: prose in any of these languages has 30% or more


def score_degeneration(
    text: str,
    finish_reason: str = "",
    *,
    prompt: str = "",
    item_id: str = "",
    limits: Limits | None = None,
) -> ProbeResult:
    """Severities, flags and the score of one answer (to `prompt`, when known)."""
    lim = limits or Limits()
    if not text.strip():
        detail = {"flags": ["empty"], "chars": len(text), "finish_reason": finish_reason}
        return ProbeResult(PROBE, item_id, 0.0, False, detail, SCORER)
    measures, severities, flags = _measure(text, finish_reason, lim)
    if prompt and switched_language(prompt, text, lim):
        severities["language"] = 1.0
        flags.append("language")
    score = 1.0 - max(severities.values())
    detail = {
        "flags": flags,
        "chars": len(text),
        "finish_reason": finish_reason,
        "severity": {k: round(v, 4) for k, v in severities.items()},
        **measures,
    }
    return ProbeResult(PROBE, item_id, round(score, 6), not flags, detail, SCORER)


def switched_language(prompt: str, text: str, lim: Limits) -> bool:
    """A prompt in one language answered, at some length, in another."""
    asked, _ = language_of(prompt)
    said, words = language_of(text)
    return bool(asked and said) and asked != said and words >= lim.min_words


def _measure(
    text: str, finish_reason: str, lim: Limits
) -> tuple[dict[str, object], dict[str, float], list[str]]:
    ngram_ratio, ngrams = repeated_ngram_ratio(text)
    period, loop_chars = tail_loop(text)
    line_ratio, lines = repeated_line_ratio(text)
    bad = bad_characters(text)
    mixed, words, letters = mixed_script_words(text)
    inspected = min(len(text.rstrip()), TAIL_WINDOW)
    loop_share = loop_chars / inspected if loop_chars >= lim.loop_min_chars else 0.0
    bad_share = (bad["replacement"] + bad["control"]) / len(text)
    mixed_share = mixed / words if words else 0.0
    severities = {
        "repetition": ngram_ratio if ngrams >= lim.min_ngrams else 0.0,
        "loop": loop_share,
        "repeated_lines": line_ratio if lines >= lim.min_lines else 0.0,
        "truncated": 0.5 if finish_reason == "length" else 0.0,
        "charset": min(1.0, 10 * bad_share),
        "mixed_scripts": min(1.0, 5 * mixed_share),
    }
    raised = {
        "repetition": severities["repetition"] > lim.repetition,
        "loop": loop_share > lim.loop,
        "repeated_lines": severities["repeated_lines"] > lim.repeated_lines,
        "truncated": finish_reason == "length",
        "charset": bad_share > lim.bad_chars,
        "mixed_scripts": mixed_share > lim.mixed_words,
    }
    measures: dict[str, object] = {
        "ngram_repeat": round(ngram_ratio, 4), "ngrams": ngrams,
        "loop_period": period, "loop_chars": loop_chars,
        "line_repeat": round(line_ratio, 4), "lines": lines,
        **bad, "mixed_words": mixed, "words": words, "scripts": letters,
    }  # fmt: skip
    return measures, severities, [name for name, up in raised.items() if up]
