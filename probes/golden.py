"""Golden sets: reading and checking canary files (the format: probes/golden/README.md).

A file that cannot be used is refused whole when it is loaded, with its path, line and the
reason, so that `fathom probe` and `fathom serve --probes` stop at start rather than score
with a weaker check than the file says: unknown keys (a typo is not a silently empty list),
missing or ill-typed fields, empty lists, a bad regex or schema, an answer letter that is not
an option, a repeated id.
"""

from __future__ import annotations

import importlib.resources
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from probes.matchers import Matcher
from probes.matchers.choice import Choice
from probes.matchers.contains import Contains
from probes.matchers.json_answer import JsonAnswer
from probes.matchers.regex import Regex

KINDS = ("numeric", "text", "contains", "regex", "choice", "json")
COMMON_KEYS = ("id", "prompt", "kind", "category")
KIND_KEYS = {
    "numeric": ("answer", "tolerance"),
    "text": ("correct", "incorrect"),
    "contains": ("correct", "exclude"),
    "regex": ("pattern",),
    "choice": ("options", "answer"),
    "json": ("schema",),
}


class GoldenError(ValueError):
    """A golden-set file that cannot be used; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Canary:
    """One golden item: a prompt and what a right (and wrong) answer looks like."""

    id: str
    prompt: str
    kind: str  # one of KINDS
    answer: float | None = None  # numeric
    tolerance: float = 0.0  # numeric: |extracted - answer| allowed
    correct: tuple[str, ...] = ()  # text
    incorrect: tuple[str, ...] = ()  # text
    category: str = ""
    matcher: Matcher | None = None  # contains, regex, choice, json: the answer's judge


def default_golden() -> Path:
    """The packaged default golden set."""
    return Path(str(importlib.resources.files("probes") / "golden" / "default.jsonl"))


# ---------------------------------------------------------------------------- one item


def parse_canary(obj: Any, where: str) -> Canary:
    """One JSONL object as a Canary, or a GoldenError saying what is wrong with it."""
    if not isinstance(obj, dict):
        raise GoldenError(f"{where}: expected a JSON object")
    kind = obj.get("kind")
    if kind not in KINDS:
        raise GoldenError(f"{where}: 'kind' must be one of {KINDS}, not {kind!r}")
    allowed = {*COMMON_KEYS, *KIND_KEYS[kind]}
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise GoldenError(
            f"{where}: unknown keys {unknown} for a {kind} item (allowed: {sorted(allowed)})"
        )
    for key in ("id", "prompt"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise GoldenError(f"{where}: '{key}' must be a non-empty string")
    if not isinstance(obj.get("category", ""), str):
        raise GoldenError(f"{where}: 'category' must be a string")
    base = Canary(obj["id"], obj["prompt"], kind, category=obj.get("category", ""))
    try:
        return _PARSERS[kind](obj, base)
    except ValueError as exc:
        raise GoldenError(f"{where}: {kind} item: {exc}") from None


def _numeric(obj: dict[str, Any], base: Canary) -> Canary:
    answer, tolerance = obj.get("answer"), obj.get("tolerance", 0)
    for name, value in (("answer", answer), ("tolerance", tolerance)):
        if not _is_number(value):
            raise ValueError(f"needs a finite number '{name}'")
    if tolerance < 0:
        raise ValueError("tolerance >= 0")
    return replace(base, answer=float(obj["answer"]), tolerance=float(tolerance))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _strings(obj: dict[str, Any], key: str, required: bool = True) -> tuple[str, ...]:
    """A list of non-empty strings under `key` (() when optional and absent)."""
    if key not in obj and not required:
        return ()
    value = obj.get(key)
    if not isinstance(value, list) or not value:
        leave_out = "" if required else " (leave it out for none)"
        raise ValueError(f"needs a non-empty list '{key}'{leave_out}")
    if not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"'{key}' must hold non-empty strings")
    return tuple(value)


def _text(obj: dict[str, Any], base: Canary) -> Canary:
    correct, incorrect = _strings(obj, "correct"), _strings(obj, "incorrect")
    both = {" ".join(s.lower().split()) for s in correct} & {
        " ".join(s.lower().split()) for s in incorrect
    }
    if both:
        raise ValueError(f"{sorted(both)} on both 'correct' and 'incorrect'")
    return replace(base, correct=correct, incorrect=incorrect)


def _contains(obj: dict[str, Any], base: Canary) -> Canary:
    matcher = Contains.of(_strings(obj, "correct"), _strings(obj, "exclude", required=False))
    return replace(base, matcher=matcher)


def _regex(obj: dict[str, Any], base: Canary) -> Canary:
    pattern = obj.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("needs a non-empty string 'pattern'")
    return replace(base, matcher=Regex.of(pattern))


def _choice(obj: dict[str, Any], base: Canary) -> Canary:
    options: Any = obj.get("options")
    answer = obj.get("answer")
    texts = list(options.values()) if isinstance(options, dict) else options
    if not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError("'options' must be a list of non-empty strings, or an object "
                         "{letter: text}")  # fmt: skip
    if not isinstance(answer, str):
        raise ValueError("needs the right option's letter as a string 'answer'")
    return replace(base, matcher=Choice.of(options, answer))


def _json(obj: dict[str, Any], base: Canary) -> Canary:
    if "schema" not in obj:
        raise ValueError("needs a JSON Schema 'schema'")
    try:
        return replace(base, matcher=JsonAnswer.of(obj["schema"]))
    except ValueError as exc:
        raise ValueError(f"bad schema at {exc}") from None
    except RecursionError:
        raise ValueError("bad schema: nested too deeply") from None


_PARSERS: dict[str, Callable[[dict[str, Any], Canary], Canary]] = {
    "numeric": _numeric, "text": _text, "contains": _contains, "regex": _regex,
    "choice": _choice, "json": _json,
}  # fmt: skip


# ---------------------------------------------------------------------------- files


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"repeated keys {repeated}")
    return dict(pairs)


def _lines(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GoldenError(f"cannot read golden set {path}: {exc}") from exc
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise GoldenError(f"{path}:{line}: not UTF-8 text ({exc.reason})") from None


def _read(path: Path) -> list[tuple[str, Canary]]:
    """(file:line, canary) for each item of one JSONL file (blank lines allowed)."""
    items = []
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line, object_pairs_hook=_no_duplicate_keys)
        except (ValueError, RecursionError) as exc:
            reason = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
            raise GoldenError(f"{where}: not JSON ({reason})") from None
        items.append((where, parse_canary(obj, where)))
    return items


def _unique(items: Iterable[tuple[str, Canary]]) -> list[Canary]:
    seen: dict[str, str] = {}
    canaries = []
    for where, canary in items:
        if canary.id in seen:
            raise GoldenError(f"{where}: id {canary.id!r} already used at {seen[canary.id]}")
        seen[canary.id] = where
        canaries.append(canary)
    return canaries


def read_golden(path: Path) -> list[Canary]:
    """Canaries of one JSONL file; ids must be unique in it."""
    return _unique(_read(path))


def load_canaries(paths: Iterable[Path] = (), include_default: bool = True) -> list[Canary]:
    """The default set (unless excluded) plus user files; ids must be unique across all."""
    files = [default_golden()] if include_default else []
    files += [Path(p) for p in paths]
    return _unique(item for path in files for item in _read(path))


def by_kind(canaries: Sequence[Canary]) -> dict[str, list[Canary]]:
    """Canaries grouped by kind."""
    groups: dict[str, list[Canary]] = {kind: [] for kind in KINDS}
    for canary in canaries:
        groups[canary.kind].append(canary)
    return groups
