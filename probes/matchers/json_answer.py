"""`json` canaries: the answer is JSON (bare, or in a ```json fence) that fits a schema.

Structured-output requests break in ways that text scores hide: prose around the object, a
truncated object, a missing field, a string where a number belongs. The answer passes when the
whole answer, or the content of its first ``` fence (prose around the fence is allowed), parses
as JSON (NaN and Infinity refused, as JSON itself does) and validates against the item's schema
(probes.matchers.json_schema).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from probes.matchers import Verdict
from probes.matchers.json_schema import Schema, compile_schema, errors

SCORER = "json-schema/v1"
SHOWN_ERRORS = 3  # validation errors kept in `detail`
_FENCE = re.compile(r"```[ \t]*(?:json[ \t]*)?\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)


class _NotJson(ValueError):
    pass


def _refuse(constant: str) -> Any:
    raise _NotJson(f"{constant} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400: JSON has no infinities either
        raise _NotJson(f"{text} is out of range")
    return value


def parse_answer(answer: str) -> tuple[Any, bool]:
    """(the JSON value, whether it was fenced); ValueError when there is none."""
    fence = _FENCE.search(answer)
    text = fence.group(1) if fence else answer
    try:
        return json.loads(text, parse_constant=_refuse, parse_float=_finite), fence is not None
    except RecursionError:
        raise ValueError("nested too deeply") from None


@dataclass(frozen=True, slots=True)
class JsonAnswer:
    """Pass when the answer is JSON valid against `schema`."""

    schema: Schema

    @classmethod
    def of(cls, schema: Any) -> JsonAnswer:
        """A matcher; json_schema.SchemaError (a ValueError) for a schema it cannot check."""
        return cls(compile_schema(schema))

    @property
    def scorer(self) -> str:
        """Scorer name and version."""
        return SCORER

    def complete(self, answer: str) -> bool:
        """Any JSON value ("{}", "true") is an answer in form; the schema judges it."""
        try:
            parse_answer(answer)
        except ValueError:
            return False
        return True

    def match(self, answer: str) -> Verdict:
        """Judge one answer."""
        try:
            value, fenced = parse_answer(answer)
        except ValueError as exc:
            return Verdict(False, {"kind": "json", "parsed": False, "error": str(exc)[:200]})
        try:
            problems = list(itertools.islice(errors(self.schema, value), SHOWN_ERRORS))
        except RecursionError:  # a deep schema met by an answer nested as deep
            problems = ["/: nested too deeply to check"]
        detail = {"kind": "json", "parsed": True, "fenced": fenced, "errors": problems}
        return Verdict(not problems, detail)
