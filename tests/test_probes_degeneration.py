"""The degeneration probe on hand-made healthy and broken answers."""

from __future__ import annotations

import time

import pytest

from probes.degeneration import (
    repeated_line_ratio,
    repeated_ngram_ratio,
    score_degeneration,
    tail_loop,
)

HEALTHY = {
    "prose": (
        "Photosynthesis is the process by which green plants use sunlight to make food. It "
        "takes place mainly in the leaves, inside chloroplasts. Carbon dioxide and water are "
        "turned into glucose, and oxygen is released as a by-product. This matters because it "
        "provides oxygen and forms the base of most food chains."
    ),
    "list": "Steps:\n1. Open the file.\n2. Edit the settings.\n3. Save and restart the server.",
    "japanese": "東京は日本の首都です。人口は約1400万人で、世界でも有数の大都市です。",
    "chinese_with_english": "Python 是一种编程语言，由 Guido van Rossum 创建。它很流行。",  # noqa: RUF001
    "russian": "Москва — столица России. Население около 13 миллионов человек.",
    "short": "Yes.",
    "laugh": "Haha, that's funny! hahaha",
    "table": "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n| 5 | 6 |",
}


@pytest.mark.parametrize("name", sorted(HEALTHY))
def test_healthy_answers_pass(name: str) -> None:
    result = score_degeneration(HEALTHY[name], "stop", item_id=name)
    assert result.passed is True and result.detail["flags"] == [], result.detail
    assert result.score > 0.9 and result.probe == "degeneration" and result.item_id == name


@pytest.mark.parametrize(
    ("text", "finish", "flag"),
    [
        ("The answer is: " + "I am sorry, I cannot help with that. " * 20, "stop", "loop"),
        ("the the the the the the the the the the the the the the the the the", "stop",
         "repetition"),
        ("Sure! " + "You can do it by going to the settings page and then clicking. " * 6,
         "length", "repetition"),
        ("\n".join(["- Check the configuration file"] * 5 + ["- Restart"]), "stop",
         "repeated_lines"),
        (HEALTHY["prose"], "length", "truncated"),
        ("Hello w\ufffdrld, this is \ufffd\ufffd broken", "stop", "charset"),
        ("Hello\x00 world\x1b[0m", "stop", "charset"),
        ("Thе аnswеr іs сlеаr: thе саpitаl is Раris.", "stop", "mixed_scripts"),  # noqa: RUF001
    ],
)  # fmt: skip
def test_broken_answers_are_flagged(text: str, finish: str, flag: str) -> None:
    result = score_degeneration(text, finish)
    assert flag in result.detail["flags"], result.detail
    assert result.passed is False and result.score <= 0.5


def test_empty_answers_score_zero() -> None:
    for text in ("", "   \n\t"):
        result = score_degeneration(text, "stop")
        assert (result.score, result.passed, result.detail["flags"]) == (0.0, False, ["empty"])


def test_worse_loops_score_lower() -> None:
    sentence = "This is a sentence that the model keeps repeating. "
    scores = [score_degeneration("Intro text here. " * 8 + sentence * n).score for n in (1, 4, 16)]
    assert scores[0] > scores[1] > scores[2]


def test_measures() -> None:
    assert repeated_ngram_ratio("a b c d e f") == (0.0, 3)
    ratio, grams = repeated_ngram_ratio("a b c d a b c d a b c d")
    assert grams == 9 and ratio == pytest.approx(1 - 4 / 9)
    assert tail_loop("prefix " + "abc" * 5) == (3, 15)
    assert tail_loop("no loop at the end") == (0, 0)
    ratio, lines = repeated_line_ratio("line one here\nline one here\nline two here")
    assert lines == 3 and ratio == pytest.approx(1 / 3)


def test_long_answers_are_cheap() -> None:
    text = HEALTHY["prose"] * 100 + "a" * 5000  # ~35 kB, worst case for the loop search
    start = time.perf_counter()
    result = score_degeneration(text)
    assert time.perf_counter() - start < 1.0
    assert "loop" in result.detail["flags"]


# "A cache keeps frequently used data closer to the processor".
CJK_ANSWER = "缓存把常用的数据放在离处理器更近"


@pytest.mark.parametrize(
    ("answer", "switched"),
    [
        ("La respuesta depende de lo que necesites, así que aquí tienes una visión general.", True),
        ("Die Antwort hängt davon ab, was Sie brauchen, also ein Überblick über das Thema.", True),
        (CJK_ANSWER, True),
        ("A cache keeps recently used data close to where it is needed, so reads are fast.", False),
        ("Flour, sugar, eggs, butter, milk, salt, vanilla, baking powder.", False),  # no language
        ("def f(x):\n    return x + 1  # add one to the input value here", False),
        ("Sí, claro.", False),  # too short to tell
    ],
)  # fmt: skip
def test_an_answer_in_another_language_than_its_prompt_is_flagged(
    answer: str, switched: bool
) -> None:
    prompt = "Can you explain how a cache works, and why it is faster?"
    flags = score_degeneration(answer, "stop", prompt=prompt).detail["flags"]
    assert ("language" in flags) is switched
    assert "language" not in score_degeneration(answer, "stop").detail["flags"]  # no prompt
