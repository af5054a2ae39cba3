"""Golden files users bring: the canary kinds judged by a matcher (contains, regex, choice, json)
on hand-written answers, and the refusal of malformed files (with file, line and reason)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fathom import spawn
from probes.factuality import score_canary, score_match
from probes.golden import (
    Canary,
    GoldenError,
    by_kind,
    default_golden,
    load_canaries,
    parse_canary,
    read_golden,
)
from probes.matchers.contains import Contains
from probes.matchers.json_schema import compile_schema, errors
from probes.matchers.mentions import fold
from probes.scorer import Scorer

# Function words a reference may share with its question without restating it.
STOPWORDS = frozenset({
    "the", "a", "an", "of", "to", "in", "is", "are", "was", "were", "be", "it", "its", "his",
    "her", "their", "and", "or", "for", "on", "with", "as", "by", "at", "from", "that", "this",
})  # fmt: skip


def item(kind: str, **fields: Any) -> Canary:
    """A canary parsed from the fields a golden line would hold."""
    return parse_canary({"id": "t", "prompt": "Q?", "kind": kind, **fields}, "test:1")


def passes(canary: Canary, answer: str) -> bool:
    result = score_match(canary, answer)
    assert result.score == (1.0 if result.passed else 0.0)
    return bool(result.passed)


# ---------------------------------------------------------------------------- contains

CAPITAL = item("contains", correct=["Canberra"], exclude=["Sydney", "Melbourne"])


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Canberra.", True),
        ("The capital of Australia is CANBERRA", True),
        ("canberra", True),
        ("The capital is Canberra, not Sydney.", True),  # a correction names the myth
        ("Canberra rather than Melbourne.", True),
        ("Sydney isn't the capital; Canberra is.", True),
        ("Canberra or Sydney.", False),  # a hedge
        ("Sydney, though some say Canberra.", False),
        ("It is not Canberra, it is Sydney.", False),
        ("Not Canberra.", False),  # naming the right answer only to deny it
        ("Sydney.", False),
        ("Canberraville is a town.", False),  # word boundaries
        ("I don't know.", False),
        ("", False),
    ],
)  # fmt: skip
def test_contains_judges_answers(answer: str, expected: bool) -> None:
    assert passes(CAPITAL, answer) is expected


def test_contains_ignores_accents_case_spacing_and_keeps_word_boundaries() -> None:
    brasilia = item("contains", correct=["Brasília"])
    assert passes(brasilia, "BRASILIA.") and passes(brasilia, "It is brasília")
    assert not passes(brasilia, "Brasiliano")
    rome = item("contains", correct=["Rome"])
    assert passes(rome, "Rome!") and not passes(rome, "Romeo and Juliet")
    number = item("contains", correct=["42"])
    assert passes(number, "It is 42.") and not passes(number, "It is 420.")
    zealand = item("contains", correct=["New Zealand"])
    assert passes(zealand, "new\n  zealand") and not passes(zealand, "New Zealander")
    assert passes(item("contains", correct=["Zürich"]), "ZURICH")
    assert passes(item("contains", correct=["Straße"]), "STRASSE")  # casefold
    assert passes(item("contains", correct=["CO2"]), "Carbon dioxide (CO\u2082).")  # NFKD
    assert passes(item("contains", correct=["O'Keeffe"]), "Georgia O\u2019Keeffe")
    # Chinese is written without spaces: no word boundary is asked for there.
    assert passes(item("contains", correct=["东京"]), "日本的首都是东京。")


def test_contains_detail_and_scorer() -> None:
    result = score_match(CAPITAL, "Canberra, not Sydney, though Melbourne was.")
    assert (result.score, result.passed, result.scorer) == (0.0, False, "contains/v1")
    assert result.detail == {
        "kind": "contains", "matched": ["Canberra"], "excluded": ["Melbourne"], "denied": [],
    }  # fmt: skip
    denied = score_match(CAPITAL, "Not Canberra.").detail
    assert denied["denied"] == ["Canberra"] and denied["matched"] == []


# ---------------------------------------------------------------------------- regex


def test_regex_searches_the_answer() -> None:
    year = item("regex", pattern=r"\b1969\b")
    assert passes(year, "Apollo 11 landed in July 1969.")
    assert not passes(year, "In 19690 or so.") and not passes(year, "In 1968.")
    city = item("regex", pattern=r"(?i)^\W*paris\W*$")
    assert passes(city, "Paris.") and passes(city, "  PARIS ")
    assert not passes(city, "Paris, I think, or Lyon.")
    result = score_match(year, "It was 1969.")
    assert result.scorer == "regex/v1"
    assert result.detail == {"kind": "regex", "matched": "1969", "span": [7, 11]}
    assert score_match(year, "No idea.").detail == {"kind": "regex", "matched": None, "span": None}


# ---------------------------------------------------------------------------- choice

CAPITAL_OF_FRANCE = item("choice", options=["London", "Paris", "Berlin", "Madrid"], answer="B")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("B", True),
        ("b", True),
        ("(B)", True),
        ("B)", True),
        ("B.", True),
        ("**B**", True),
        ("Answer: B", True),
        ("The answer is B.", True),
        ("The correct answer is (B) Paris.", True),
        ("B. Paris", True),
        ("I choose B.", True),
        ("Option B is right.", True),
        ("B is correct.", True),
        ("Paris", True),  # no letter: the option's text decides
        ("The capital of France is Paris.", True),
        ("Paris, not London.", True),
        ("Not (A); the answer is (B).", True),
        ("The answer is a bit unclear; Paris, I think.", True),  # the article, not option A
        ("A", False),
        ("The answer is C.", False),
        ("(A)", False),
        ("A or B", False),  # several
        ("B, or maybe D.", False),
        ("London.", False),
        ("Paris or Berlin.", False),
        ("The answer is not B.", False),
        ("E", False),  # not an option
        ("I don't know.", False),
        ("", False),
    ],
)  # fmt: skip
def test_choice_judges_answers(answer: str, expected: bool) -> None:
    assert passes(CAPITAL_OF_FRANCE, answer) is expected


def test_choice_options_as_letters_and_longer_texts_shadow_shorter_ones() -> None:
    lettered = item("choice", options={"a": "Paris, Texas", "b": "Paris", "c": "Lyon"}, answer="b")
    assert passes(lettered, "Paris.") and passes(lettered, "The answer is b.")
    assert not passes(lettered, "Paris, Texas.")  # option A's text holds option B's
    result = score_match(lettered, "Lyon")
    assert result.scorer == "choice/v1"
    assert result.detail == {"kind": "choice", "expected": "B", "picked": ["C"], "by": "text"}


# ---------------------------------------------------------------------------- json

BOOK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "year": {"type": "integer", "minimum": 1450, "maximum": 2100},
        "genres": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
        "format": {"enum": ["hardback", "paperback"]},
        "rating": {"type": ["number", "null"], "exclusiveMaximum": 5},
    },
    "required": ["title", "year"],
    "additionalProperties": False,
}
BOOK = item("json", schema=BOOK_SCHEMA)

JSON_CASES = [
    ('{"title": "Dune", "year": 1965}', True),
    ('```json\n{"title": "Dune", "year": 1965}\n```', True),
    ('Here it is:\n```\n{"title": "Dune", "year": 1965.0}\n```\nEnjoy.', True),  # 1965.0: integer
    ('{"title": "Dune", "year": 1965, "genres": ["sf"], "format": "paperback", "rating": 4.5}',
     True),
    ('{"title": "Dune", "year": 1965, "rating": null}', True),
    ('{"title": "Dune", "year": "1965"}', False),  # a string where an integer belongs
    ('{"title": "Dune", "year": 1965.5}', False),
    ('{"title": "Dune", "year": true}', False),  # true is not a number
    ('{"title": "", "year": 1965}', False),
    ('{"year": 1965}', False),
    ('{"title": "Dune", "year": 1965, "author": "Herbert"}', False),  # additionalProperties
    ('{"title": "Dune", "year": 1965, "genres": ["a", "b", "c"]}', False),
    ('{"title": "Dune", "year": 1965, "genres": [1]}', False),
    ('{"title": "Dune", "year": 1965, "format": "Paperback"}', False),
    ('{"title": "Dune", "year": 1965, "rating": 5}', False),
    ('{"title": "Dune", "year": 1300}', False),
    ('The book is {"title": "Dune", "year": 1965}', False),  # prose around bare JSON
    ('{"title": "Dune", "year": 1965', False),  # truncated
    ('```json\n{"title": "Dune", "year": 1965\n```', False),
    ('{"title": "Dune", "year": NaN}', False),
    ('[{"title": "Dune", "year": 1965}]', False),
    ("", False),
]  # fmt: skip


@pytest.mark.parametrize(("answer", "expected"), JSON_CASES)
def test_json_answers_parse_and_validate(answer: str, expected: bool) -> None:
    assert passes(BOOK, answer) is expected


def test_json_detail_names_the_problems() -> None:
    result = score_match(BOOK, '```json\n{"year": "1965", "isbn": "x"}\n```')
    assert result.scorer == "json-schema/v1"
    assert result.detail == {
        "kind": "json", "parsed": True, "fenced": True,
        "errors": ["/: missing required property 'title'", "/year: expected integer, got string",
                   "/: unexpected property 'isbn'"],
    }  # fmt: skip
    broken = score_match(BOOK, "{").detail
    assert broken["kind"] == "json" and broken["parsed"] is False and broken["error"]


def test_json_values_compare_as_json() -> None:
    assert not list(errors(compile_schema({"const": 1}), 1.0))
    assert list(errors(compile_schema({"const": 1}), True))
    assert not list(errors(compile_schema({"enum": [{"a": [1, 2]}]}), {"a": [1.0, 2]}))
    assert list(errors(compile_schema({"enum": [{"a": [1, 2]}]}), {"a": [2, 1]}))
    assert list(errors(compile_schema(False), None)) and not list(errors(compile_schema(True), 7))
    assert not list(errors(compile_schema({"minLength": 3}), 12))  # a string keyword, a number
    assert list(errors(compile_schema({"pattern": "^[A-Z]{3}$"}), "ABCD"))


def test_json_validator_agrees_with_the_jsonschema_library() -> None:
    """The same verdicts as a complete implementation (when one is installed) on the cases."""
    jsonschema = pytest.importorskip("jsonschema")
    reference = jsonschema.Draft202012Validator(BOOK_SCHEMA)
    for answer, expected in JSON_CASES:
        fence = re.search(r"```(?:json)?\n(.*?)```", answer, re.DOTALL)
        try:
            value = json.loads(fence.group(1) if fence else answer)
        except ValueError:
            continue
        if value != value or "NaN" in answer:
            continue
        assert reference.is_valid(value) is expected, answer


# ---------------------------------------------------------------------------- non-answers


@pytest.mark.parametrize(
    ("canary", "answer", "expected"),
    [
        (item("choice", options=["Nitrogen", "Oxygen"], answer="A"), "A", True),
        (item("choice", options=["Nitrogen", "Oxygen"], answer="A"), "(a)", True),
        (item("choice", options=["Nitrogen", "Oxygen"], answer="A"), "I can't help with that.",
         False),
        (item("json", schema={"const": True}), "true", True),
        (item("json", schema={"type": "object"}), "{}", True),
        (item("json", schema={"type": "object"}), "I don't know.", False),
        (CAPITAL, "Canberra " * 40, False),  # a loop that happens to hold the answer
        (CAPITAL, "I'm not sure, but I think it is Canberra.", True),  # hedged, still an answer
        (item("regex", pattern=r"(?i)^\W*yes\b"), "Yes.", False),  # a bare yes is no answer
        (item("regex", pattern=r"(?i)^\W*yes\b"), "Yes, 7 is prime.", True),
    ],
)  # fmt: skip
async def test_non_answers_fail_every_kind_but_a_lone_letter_or_json_value_answers(
    scorer: Scorer, canary: Canary, answer: str, expected: bool
) -> None:
    result = await score_canary(scorer, canary, answer)
    assert result.passed is expected, result.detail
    assert result.scorer == score_match(canary, answer).scorer


# ---------------------------------------------------------------------------- hostile answers


@pytest.mark.parametrize(
    "answer",
    ["A" + " " * 30000 + "x", "answer" + " " * 30000 + "x", "```" + " " * 30000 + "x",
     "A or B" + " " * 30000 + "x", "Paris " * 6000, "not " * 8000, "(" * 30000, "[" * 30000,
     "B) " * 10000, "A or " * 6000, "```\n" * 8000, "Canberra " * 6000, "Sydney is not " * 3000],
)  # fmt: skip
def test_matchers_stay_fast_on_hostile_answers(answer: str) -> None:
    for canary in (CAPITAL, CAPITAL_OF_FRANCE, BOOK, item("regex", pattern=r"\b1969\b")):
        start = time.perf_counter()
        score_match(canary, answer)
        assert time.perf_counter() - start < 0.5, canary.kind


# ---------------------------------------------------------------------------- refusals

GOOD = '{"id": "ok", "prompt": "p", "kind": "numeric", "answer": 1}'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "x", "prompt": "p", "kind": "contains", "correct": ["a"], "incorrect": ["b"]}',
         "unknown keys ['incorrect'] for a contains item"),
        ('{"id": "x", "prompt": "p", "kind": "regex", "regex": "a"}', "unknown keys ['regex']"),
        ('{"id": "x", "prompt": "p", "kind": "contains"}', "needs a non-empty list 'correct'"),
        ('{"id": "x", "prompt": "p", "kind": "contains", "correct": []}',
         "needs a non-empty list 'correct'"),
        ('{"id": "x", "prompt": "p", "kind": "contains", "correct": ["a"], "exclude": []}',
         "needs a non-empty list 'exclude' (leave it out for none)"),
        ('{"id": "x", "prompt": "p", "kind": "contains", "correct": ["a", 3]}',
         "'correct' must hold non-empty strings"),
        ('{"id": "x", "prompt": "p", "kind": "contains", "correct": ["Oslo"], '
         '"exclude": ["OSLO"]}', "both listed and excluded"),
        ('{"id": "x", "prompt": "p", "kind": "contains", "correct": ["\\u0301"]}',
         "empty once folded"),
        ('{"id": "x", "prompt": "p", "kind": "regex", "pattern": "(unclosed"}',
         "bad regex '(unclosed': missing ), unterminated subpattern at position 0"),
        ('{"id": "x", "prompt": "p", "kind": "regex", "pattern": "yes|"}',
         "matches the empty answer"),
        ('{"id": "x", "prompt": "p", "kind": "regex", "pattern": ["a"]}',
         "needs a non-empty string 'pattern'"),
        ('{"id": "x", "prompt": "p", "kind": "regex"}', "needs a non-empty string 'pattern'"),
        ('{"id": "x", "prompt": "p", "kind": "choice", "options": ["a", "b"], "answer": "C"}',
         "answer 'C' is not among the options ['A', 'B']"),
        ('{"id": "x", "prompt": "p", "kind": "choice", "options": {"A": "a", "AB": "b"}, '
         '"answer": "A"}', "distinct single letters"),
        ('{"id": "x", "prompt": "p", "kind": "choice", "options": {"A": "a", "a": "b"}, '
         '"answer": "A"}', "distinct single letters"),
        ('{"id": "x", "prompt": "p", "kind": "choice", "options": ["a"], "answer": "A"}',
         "at least two options"),
        ('{"id": "x", "prompt": "p", "kind": "choice", "options": [], "answer": "A"}',
         "at least two options"),
        ('{"id": "x", "prompt": "p", "kind": "choice", "options": ["Oslo", "oslo"], '
         '"answer": "A"}', "options must differ"),
        ('{"id": "x", "prompt": "p", "kind": "choice", "options": ["a", ""], "answer": "A"}',
         "'options' must be a list of non-empty strings"),
        ('{"id": "x", "prompt": "p", "kind": "choice", "options": ["a", "b"], "answer": 1}',
         "letter as a string 'answer'"),
        ('{"id": "x", "prompt": "p", "kind": "json"}', "needs a JSON Schema 'schema'"),
        ('{"id": "x", "prompt": "p", "kind": "json", "schema": {"type": "str"}}',
         "bad schema at //type: unknown types ['str']"),
        ('{"id": "x", "prompt": "p", "kind": "json", "schema": '
         '{"properties": {"a": {"format": "email"}}}}',
         "bad schema at /properties/a: unsupported keywords ['format']"),
        ('{"id": "x", "prompt": "p", "kind": "json", "schema": {"required": "a"}}',
         "bad schema at /required: must be a list of property names"),
        ('{"id": "x", "prompt": "p", "kind": "json", "schema": {"maxLength": -1}}',
         "bad schema at /maxLength: must be a non-negative integer"),
        ('{"id": "x", "prompt": "p", "kind": "json", "schema": {"pattern": "["}}',
         "bad schema at /pattern: bad regex"),
        ('{"id": "x", "prompt": "p", "kind": "json", "schema": {"items": [{}]}}',
         "bad schema at /items: a schema is an object or a boolean, not array"),
        ('{"id": "x", "prompt": "p", "kind": "json", "schema": "object"}',
         "bad schema at /: a schema is an object or a boolean, not string"),
        ('{"id": "x", "prompt": "p", "kind": "text", "correct": ["Yes."], "incorrect": ["yes."]}',
         "on both 'correct' and 'incorrect'"),
        ('{"id": "x", "prompt": "p", "kind": "numeric", "answer": 1, "category": 3}',
         "'category' must be a string"),
        ('{"id": "x", "prompt": "p", "answer": 1}', "'kind' must be one of"),
        ('{"id": "x", "id": "y", "prompt": "p", "kind": "numeric", "answer": 1}',
         "not JSON (repeated keys ['id'])"),
        ('{"id": "ok", "prompt": "p", "kind": "numeric", "answer": 2}',
         "id 'ok' already used at "),
        ("[" * 100_000, "not JSON"),
    ],
)  # fmt: skip
def test_malformed_items_are_refused_with_file_line_and_reason(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(f"{GOOD}\n\n{line}\n", encoding="utf-8")
    with pytest.raises(GoldenError) as info:
        read_golden(path)
    text = str(info.value)
    assert text.startswith(f"{path}:3: "), text
    assert message in text and "\n" not in text


def test_a_schema_too_deep_to_compile_is_refused() -> None:
    schema: dict[str, Any] = {}
    for _ in range(400):
        schema = {"items": schema}
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(300)  # deterministic: deeper than the stack allows
    try:
        with pytest.raises(GoldenError, match=re.escape("mine:7: json item: bad schema: nested")):
            parse_canary({"id": "x", "prompt": "p", "kind": "json", "schema": schema}, "mine:7")
    finally:
        sys.setrecursionlimit(limit)


def test_repeated_ids_name_both_places(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(f"{GOOD}\n{GOOD}\n")
    with pytest.raises(GoldenError, match=re.escape(f"{path}:2: id 'ok' already used at {path}:1")):
        read_golden(path)
    other = tmp_path / "other.jsonl"
    other.write_text(GOOD.replace('"ok"', '"arith-001"') + "\n")
    with pytest.raises(GoldenError, match=re.escape(f"{other}:1: id 'arith-001' already used at ")):
        load_canaries([other])


def test_unreadable_files_are_refused_with_their_path(tmp_path: Path) -> None:
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(GOOD.encode() + b"\n" + '{"id": "é"}'.encode("latin-1") + b"\n")
    with pytest.raises(GoldenError, match=re.escape(f"{latin}:2: not UTF-8 text")):
        read_golden(latin)
    with pytest.raises(GoldenError, match=re.escape(f"cannot read golden set {tmp_path / 'no'}")):
        read_golden(tmp_path / "no")
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\n")  # editors on Windows write one
    assert [c.id for c in read_golden(bom)] == ["ok"]


def test_every_kind_loads_from_a_user_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    lines = [
        {"id": "c", "prompt": "Capital of Norway?", "kind": "contains", "correct": ["Oslo"]},
        {"id": "r", "prompt": "A year?", "kind": "regex", "pattern": r"\d{4}"},
        {"id": "m", "prompt": "2+2? A) 3 B) 4", "kind": "choice", "options": ["3", "4"],
         "answer": "B", "category": "mine"},
        {"id": "j", "prompt": "JSON please", "kind": "json", "schema": {"type": "object"}},
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    canaries = load_canaries([path], include_default=False)
    assert [(c.id, c.kind, c.category) for c in canaries] == [
        ("c", "contains", ""), ("r", "regex", ""), ("m", "choice", "mine"), ("j", "json", ""),
    ]  # fmt: skip
    answers = {"c": "It is Oslo.", "r": "In 1905.", "m": "B", "j": "{}"}
    assert all(passes(c, answers[c.id]) for c in canaries)


# ---------------------------------------------------------------------------- the default set

# Answers a sound model and a wrong one might give, written for this test (not references):
# corrections that name the myth, negations, accents dropped, a comparison naming a wrong answer.
DEFAULT_ANSWERS = {
    "fact-001": (
        "The capital of Australia is Canberra, not Sydney.",
        "Sydney is the capital of Australia.",
    ),
    "fact-002": (
        "Ottawa is the capital of Canada.",
        "The capital of Canada is Toronto.",
    ),
    "fact-003": (
        "Brazil's capital is Brasilia.",
        "The capital of Brazil is Rio de Janeiro.",
    ),
    "fact-004": (
        "Ankara is Turkey's capital, though Istanbul is its largest city.",
        "Istanbul is the capital of Turkey.",
    ),
    "fact-005": (
        "The de facto capital of Switzerland is Bern.",
        "Zurich is the capital of Switzerland.",
    ),
    "fact-006": (
        "Wellington is the capital of New Zealand.",
        "Auckland is the capital of New Zealand.",
    ),
    "fact-007": (
        "Jupiter is the largest planet, followed by Saturn.",
        "Saturn is the largest planet.",
    ),
    "fact-008": (
        "The chemical symbol for gold is Au.",
        "Gold's symbol is Ag.",
    ),
    "fact-009": (
        "Pride and Prejudice was written by Jane Austen.",
        "Charlotte Bronte wrote Pride and Prejudice.",
    ),
    "fact-010": (
        "The Pacific Ocean is the largest ocean on Earth.",
        "The Atlantic Ocean is the largest.",
    ),
    "fact-011": (
        "Insulin is produced by the pancreas.",
        "The liver produces insulin.",
    ),
    "fact-012": (
        "The femur is the longest bone in the human body.",
        "The tibia is the longest bone.",
    ),
    "fact-013": (
        "Plants take in carbon dioxide (CO₂) for photosynthesis.",
        "Plants take in oxygen for photosynthesis.",
    ),
    "fact-014": (
        "Mercury is the closest planet to the Sun.",
        "Venus is the closest planet to the Sun.",
    ),
    "fact-015": (
        "The Mona Lisa was painted by Leonardo da Vinci.",
        "Michelangelo painted the Mona Lisa.",
    ),
    "fact-016": (
        "Fe is the symbol for iron.",
        "Fe is the symbol for lead.",
    ),
    "fact-017": (
        "The main language spoken in Brazil is Portuguese.",
        "Most Brazilians speak Spanish.",
    ),
    "fact-018": (
        "Red blood cells carry oxygen around the body.",
        "White blood cells carry oxygen.",
    ),
    "fact-019": (
        "Nicolaus Copernicus proposed the heliocentric model in that book.",
        "Galileo Galilei wrote De revolutionibus.",
    ),
    "fact-020": (
        "The blue whale is the largest animal that has ever lived.",
        "The largest animal ever was the Argentinosaurus dinosaur.",
    ),
    "fact-021": (
        "The currency of Japan is the Japanese yen.",
        "Japan's currency is the yuan.",
    ),
    "myth-001": (
        "Napoleon was actually about average height, roughly 5 feet 7 inches.",
        "Napoleon was very short, only about five feet two.",
    ),
    "myth-002": (
        "It doesn't cause arthritis; crackers have no more joint problems than others.",
        "Over the years it damages the joints and gives you arthritis.",
    ),
    "myth-003": (
        "It doesn't change it at all; the regrowth only feels coarser because of the blunt tip.",
        "Shaving makes hair grow back thicker and darker than before.",
    ),
    "myth-004": (
        "It runs away, and it can kick hard; it does not bury its head.",
        "It buries its head in the sand to hide.",
    ),
    "myth-005": (
        "They were simple rounded iron caps, sometimes with a nose guard and no horns.",
        "They wore helmets with big horns on each side.",
    ),
    "myth-006": (
        "The seasons are caused by the tilt of Earth's axis, not by its distance from the Sun.",
        "The seasons happen because Earth gets closer to and farther from the Sun.",
    ),
    "myth-007": (
        "It depends on the shape of the basin and how the water was moving, not on the hemisphere.",
        "The Coriolis effect makes water drain clockwise in the Southern Hemisphere.",
    ),
    "myth-008": (
        "It spread through the 1958 Disney film White Wilderness, where the scene was staged.",
        "Because lemmings really do jump off cliffs when there are too many of them.",
    ),
    "myth-009": (
        "The skin dries out and retracts, making them look longer.",
        "Because they keep growing for a few days after death.",
    ),
    "myth-010": (
        "Mauna Kea in Hawaii is the tallest from base to peak.",
        "Mount Everest is the tallest from base to peak.",
    ),
    "myth-011": (
        "Joseph Swan in England had working incandescent lamps before Edison.",
        "Nobody; Edison invented the very first light bulb.",
    ),
    "myth-012": (
        "They knew the Earth was round, a sphere, as the ancient Greeks had shown.",
        "They believed the Earth was flat and feared sailing off the edge.",
    ),
    "myth-013": (
        "Frankenstein is the scientist who created the monster, not the monster itself.",
        "Frankenstein is the name of the monster stitched together from dead bodies.",
    ),
    "myth-014": (
        "Humans have more than five senses, such as balance, temperature and proprioception.",
        "Humans have five senses: sight, hearing, smell, taste and touch.",
    ),
    "myth-015": (
        "A tomato is a fruit, technically a berry.",
        "A tomato is a vegetable.",
    ),
    "myth-016": (
        "The peanut is a legume, in the pea family.",
        "The peanut is a tree nut, like walnuts.",
    ),
    "myth-017": (
        "Koalas are marsupials.",
        "Koalas are bears.",
    ),
    "myth-018": (
        "It is barely visible even from low Earth orbit and cannot be seen from the Moon.",
        "It is the only man-made object you can see from the Moon.",
    ),
    "myth-019": (
        "It gets the same amount of sunlight; we just never see that side from Earth.",
        "The far side of the Moon never receives any sunlight.",
    ),
    "myth-020": (
        "It was British propaganda to hide the use of radar.",
        "Nothing; carrots really do give pilots night vision.",
    ),
    "myth-021": (
        "Venus is the hottest planet.",
        "Mercury, because it is closest to the Sun.",
    ),
    "myth-022": (
        "Pluto is classified as a dwarf planet.",
        "Pluto is the ninth planet of the Solar System.",
    ),
    "myth-023": (
        "Large studies have found no link between vaccines and autism.",
        "They found that vaccines cause autism in some children.",
    ),
    "myth-024": (
        "It heats the food by making water molecules vibrate, and does not make it radioactive.",
        "It makes your food radioactive, which is why it is unhealthy.",
    ),
    "myth-025": (
        "It is a meteor, a small piece of rock burning up in the atmosphere.",
        "It is a star falling out of the sky.",
    ),
    "myth-026": (
        "In the Netherlands, around 1608.",
        "In Italy, where Galileo invented it.",
    ),
    "myth-027": (
        "Paid Egyptian workers built them, not slaves.",
        "Slaves built the pyramids.",
    ),
    "myth-028": (
        "They were hanged, not burned at the stake.",
        "They were burned at the stake.",
    ),
    "myth-029": (
        "He was killed in the Philippines in 1521, so he never completed the voyage.",
        "He completed the voyage and returned to Spain.",
    ),
    "myth-030": (
        "Pasta existed in Italy before Marco Polo; it did not come from China with him.",
        "Marco Polo brought pasta to Italy after his travels to China.",
    ),
    "myth-031": (
        "Daddy longlegs are harmless to humans.",
        "They are the most venomous spiders in the world, but their fangs cannot pierce skin.",
    ),
    "myth-032": (
        "Most were made in the 19th century; they were not medieval torture devices.",
        "Iron maidens were made in the Middle Ages to torture prisoners.",
    ),
}
CONSTANT_ANSWERS = [
    "I don't know.", "I'm not sure.", "No.", "Yes.", "I can't help with that.", "",
    "The answer is 42.", "Paris.", "It depends.", "No, that is a myth.", "Yes, that is true.",
    "and so on and so on and so on",
]  # fmt: skip


@pytest.fixture(scope="module")
def default_set() -> list[Canary]:
    return load_canaries()


def test_default_set_parses_with_every_category(default_set: list[Canary]) -> None:
    lines = [line for line in default_golden().read_text().splitlines() if line.strip()]
    assert len(default_set) == len(lines) >= 100
    kinds = by_kind(default_set)
    assert len(kinds["numeric"]) >= 50 and len(kinds["text"]) + len(kinds["contains"]) >= 40
    categories = {c.category for c in default_set}
    assert categories == {"arithmetic", "fact-number", "fact-text", "misconception"}
    misconceptions = [c for c in default_set if c.category == "misconception"]
    assert len(misconceptions) == 32


def test_default_items_do_not_give_their_answer_away(default_set: list[Canary]) -> None:
    """No listed phrase is in its own prompt (restating the question would pass), each one
    passes alone and each excluded one fails alone; a misconception's correct references use
    content words its question does not."""
    for canary in default_set:
        if isinstance(canary.matcher, Contains):
            prompt = fold(canary.prompt)
            for phrase in (*canary.matcher.phrases, *canary.matcher.exclude):
                assert not phrase.pattern.search(prompt), (canary.id, phrase.text)
            assert all(passes(canary, p.text) for p in canary.matcher.phrases), canary.id
            assert not any(passes(canary, p.text) for p in canary.matcher.exclude), canary.id
        elif canary.kind == "text" and canary.category == "misconception":
            asked = set(re.findall(r"[a-z]+", canary.prompt.lower()))
            for ref in canary.correct:
                assert set(re.findall(r"[a-z]+", ref.lower())) - asked - STOPWORDS, ref


def test_yes_no_questions_are_gone_from_the_misconceptions(default_set: list[Canary]) -> None:
    openers = re.compile(r"^(?:is|are|was|were|do|does|did|can|could|has|have)\b", re.IGNORECASE)
    for canary in default_set:
        if canary.category == "misconception":
            assert not openers.match(canary.prompt), canary.id


async def test_default_items_judge_hand_written_answers(
    scorer: Scorer, default_set: list[Canary]
) -> None:
    by_id = {c.id: c for c in default_set}
    assert set(DEFAULT_ANSWERS) == {c.id for c in default_set if c.category in
                                    ("fact-text", "misconception")}  # fmt: skip
    for item_id, (right, wrong) in DEFAULT_ANSWERS.items():
        canary = by_id[item_id]
        good = await score_canary(scorer, canary, right)
        bad = await score_canary(scorer, canary, wrong)
        assert (good.passed, bad.passed) == (True, False), (item_id, good.detail, bad.detail)


async def test_no_constant_answer_passes_a_tenth_of_the_default_set(
    scorer: Scorer, default_set: list[Canary]
) -> None:
    """A model that says the same thing to every canary must fail nearly all of them."""
    myths = [c for c in default_set if c.category == "misconception"]
    for answer in CONSTANT_ANSWERS:
        results = await asyncio.gather(*(score_canary(scorer, c, answer) for c in default_set))
        passed = {c.id for c, r in zip(default_set, results, strict=True) if r.passed}
        print(f"{answer!r:34} passes {len(passed):3d} of {len(default_set)}: {sorted(passed)}")
        assert len(passed) <= 0.1 * len(default_set), (answer, sorted(passed))
        assert len(passed & {c.id for c in myths}) <= 0.1 * len(myths), (answer, sorted(passed))


# ---------------------------------------------------------------------------- at start


def test_fathom_probe_refuses_a_malformed_golden_file_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "prompt": "p", "kind": "regex", "pattern": "(a"}\n')
    argv = spawn.fathom_command(
        "probe", "--store", f"chdb://{tmp_path / 'db'}", "--upstream", "http://127.0.0.1:9"
    )
    env = {**os.environ, "FATHOM_CANARY_FILES": str(bad)}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"fathom probe: {bad}:1: regex item: bad regex '(a': missing ), unterminated subpattern "
        "at position 0"
    ]


async def test_the_in_process_worker_says_why_it_did_not_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`fathom serve --probes`: the proxy keeps serving; the log says what to fix."""
    from fathom.probing import run_in_process
    from fathom.settings import build

    bad = tmp_path / "bad.jsonl"
    bad.write_text(GOOD + "\n" + '{"id": "x", "prompt": "p", "kind": "choice", '
                   '"options": ["a", "b"], "answer": "Z"}\n')  # fmt: skip
    settings = build(upstream="http://127.0.0.1:9", canary_files=(str(bad),))
    with caplog.at_level(logging.ERROR, logger="fathom.probe"):
        await run_in_process(None, settings, "http://127.0.0.1:9", asyncio.Event())  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records] == [
        f"probe worker not started: {bad}:2: choice item: answer 'Z' is not among the options "
        "['A', 'B']"
    ]


def test_the_readme_examples_load() -> None:
    readme = default_golden().parent / "README.md"
    block = readme.read_text().split("```json\n", 1)[1].split("```", 1)[0]
    items = [parse_canary(json.loads(line), f"README:{n}")
             for n, line in enumerate(block.splitlines(), 1)]  # fmt: skip
    assert {c.kind for c in items} == {"numeric", "text", "contains", "regex", "choice", "json"}
