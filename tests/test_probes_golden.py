"""Golden files users bring: the canary kinds judged by a matcher (contains, regex, choice, json)
on hand-written answers, and the refusal of malformed files (with file, line and reason)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from probes.factuality import score_match
from probes.golden import Canary, GoldenError, load_canaries, parse_canary, read_golden
from probes.matchers.json_schema import compile_schema, errors
from sidecar import spawn


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
    import asyncio

    from probes.worker import run_in_process
    from sidecar.config import Settings

    bad = tmp_path / "bad.jsonl"
    bad.write_text(GOOD + "\n" + '{"id": "x", "prompt": "p", "kind": "choice", '
                   '"options": ["a", "b"], "answer": "Z"}\n')  # fmt: skip
    settings = Settings(upstream="http://127.0.0.1:9", canary_files=(str(bad),))
    with caplog.at_level(logging.ERROR, logger="fathom.probe"):
        await run_in_process(None, settings, "http://127.0.0.1:9", asyncio.Event())  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records] == [
        f"probe worker not started: {bad}:2: choice item: answer 'Z' is not among the options "
        "['A', 'B']"
    ]
