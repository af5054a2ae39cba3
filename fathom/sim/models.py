"""Simulated models: their knobs, the YAML file that lists them, and the answers they know."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from fathom.sim.zoo import MEMBERS


class SimConfigError(ValueError):
    """A simulator setting or file that cannot be used; the message says which and why."""


class BadKnob(ValueError):
    """A request header the simulator cannot follow; answered with a 400."""


@dataclass(frozen=True, slots=True)
class Known:
    """A prompt the simulated model knows: what right and wrong answers look like."""

    correct: tuple[str, ...]
    incorrect: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One simulated model: timing, fault injection rates and answer quality."""

    name: str = "sim"
    ttft_ms: float = 50.0  # request arrival -> first content event
    itl_ms: float = 20.0  # between content events
    tokens: int = 32  # answer length (content events) when the answer is filler
    jitter_ms: float = 0.0  # each event is late by uniform(0, jitter_ms), seeded
    accuracy: float = 1.0  # chance a known prompt is answered correctly
    consistency: float = 1.0  # chance an ask gets the prompt's canonical answer
    degeneration: float = 0.0  # chance of a repetition loop or an empty answer
    error_rate: float = 0.0  # chance of an HTTP error (error_status) instead of an answer
    error_status: int = 500
    reset_rate: float = 0.0  # chance of a connection reset mid-stream
    error_event_rate: float = 0.0  # chance of an error event mid-stream
    stall_rate: float = 0.0  # chance of a stall of stall_s mid-stream
    stall_first_rate: float = 0.0  # chance of a stall of stall_s before the first byte
    stall_s: float = 1.0
    answers: str = ""  # JSONL: {prompt, answer | correct: [...], incorrect: [...]}
    zoo: str = ""  # a degradation zoo member (fathom.sim.zoo) that takes over the answers...
    zoo_after_s: float = 0.0  # ...this long after the simulator started
    reasoning_tokens: int = 0  # chat streams: reasoning events before the answer
    tool_calls: int = 0  # chat: tool calls after the answer text (finish_reason tool_calls)
    tool_calls_broken: int = 0  # how many of them (the last ones) carry arguments that are not JSON
    knowledge: Mapping[str, Known] = field(default_factory=dict, compare=False, repr=False)


KNOBS: dict[str, Any] = {f.name: f.default for f in fields(ModelSpec) if f.name != "knowledge"}
KNOB_HELP = {
    "ttft_ms": "request arrival -> first content event",
    "itl_ms": "between content events",
    "tokens": "length of filler answers, in content events",
    "jitter_ms": "each event late by uniform(0, JITTER_MS), seeded",
    "accuracy": "chance a known prompt is answered correctly",
    "consistency": "chance an ask gets the prompt's canonical answer",
    "degeneration": "chance of a repetition loop or an empty answer",
    "error_rate": "chance of an HTTP error (--error-status) instead of an answer",
    "error_status": "status of injected HTTP errors",
    "reset_rate": "chance of a connection reset mid-stream",
    "error_event_rate": "chance of an error event mid-stream",
    "stall_rate": "chance of a stall of --stall-s mid-stream",
    "stall_first_rate": "chance of a stall of --stall-s before the first byte",
    "stall_s": "length of injected stalls",
    "answers": "JSONL of {prompt, answer | correct, incorrect} the model knows",
    "zoo": f"degrade every answer this way: {', '.join(MEMBERS)}",
    "zoo_after_s": "seconds after start when the zoo member takes over",
    "reasoning_tokens": "chat: reasoning events (delta.reasoning_content) before the answer",
    "tool_calls": "chat: tool calls after the answer text, 3 events each when streamed",
    "tool_calls_broken": "how many of the tool calls (the last) have arguments that are not JSON",
}
MAX_TOKENS = 1_000_000  # an answer is built in memory before it is sent
RATES = ("accuracy", "consistency", "degeneration", "error_rate", "reset_rate",
         "error_event_rate", "stall_rate", "stall_first_rate")  # fmt: skip


def normalise(prompt: str) -> str:
    """How prompts are matched against the answers file: whitespace and case do not count."""
    return " ".join(prompt.split()).lower()


def make_spec(raw: Mapping[str, Any], base_dir: Path | None = None) -> ModelSpec:
    """A checked ModelSpec from YAML or flag values; `answers` is read relative to base_dir."""
    unknown = sorted(set(raw) - set(KNOBS))
    name = raw.get("name", KNOBS["name"])
    if unknown:
        raise SimConfigError(f"model {name!r}: unknown keys {unknown}; known: {sorted(KNOBS)}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            values[key] = type(KNOBS[key])(value)
        except (TypeError, ValueError):
            kind = {int: "an integer", float: "a number"}.get(type(KNOBS[key]), "a string")
            raise SimConfigError(f"model {name!r}: {key}={value!r} is not {kind}") from None
    spec = ModelSpec(**values)
    _check(spec)
    if not spec.answers:
        return spec
    path = Path(spec.answers)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    return ModelSpec(**{**values, "answers": str(path), "knowledge": load_knowledge(path)})


def _check(spec: ModelSpec) -> None:
    for key in RATES:
        if not 0.0 <= getattr(spec, key) <= 1.0:
            raise SimConfigError(f"model {spec.name!r}: {key} must be in [0, 1]")
    if spec.zoo and spec.zoo not in MEMBERS:
        raise SimConfigError(f"model {spec.name!r}: zoo must be one of {', '.join(MEMBERS)}")
    for key in ("ttft_ms", "itl_ms", "tokens", "jitter_ms", "stall_s", "zoo_after_s",
                "reasoning_tokens", "tool_calls", "tool_calls_broken"):  # fmt: skip
        if getattr(spec, key) < 0:
            raise SimConfigError(f"model {spec.name!r}: {key} must be >= 0")
    if spec.tokens > MAX_TOKENS:
        raise SimConfigError(f"model {spec.name!r}: tokens must be <= {MAX_TOKENS}")
    if not 400 <= spec.error_status <= 599:
        raise SimConfigError(f"model {spec.name!r}: error_status must be 4xx or 5xx")


def load_config(path: Path, defaults: Mapping[str, Any]) -> tuple[list[ModelSpec], int | None]:
    """Models (with `defaults` under each one's own keys) and the seed from a YAML file."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SimConfigError(f"cannot read simulator config {path}: {exc}") from None
    if not isinstance(data, dict) or set(data) - {"seed", "models"}:
        raise SimConfigError(f"{path}: expected a mapping with keys 'seed' and 'models'")
    raw = data.get("models") or []
    if isinstance(raw, dict):  # {name: {knobs}} reads better than a list of named entries
        raw = [{"name": name, **(knobs or {})} for name, knobs in raw.items()]
    if not raw or not all(isinstance(m, dict) for m in raw):
        raise SimConfigError(f"{path}: 'models' must list at least one model mapping")
    specs = [make_spec({**defaults, **m}, path.parent) for m in raw]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SimConfigError(f"{path}: model names must be unique, got {names}")
    seed = data.get("seed")
    return specs, None if seed is None else int(seed)


def load_knowledge(path: Path) -> dict[str, Known]:
    """Read an answers file: the golden-set format, TruthfulQA's and Wikidata's too."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SimConfigError(f"cannot read answers file {path}: {exc}") from None
    known: dict[str, Known] = {}
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                prompt, item = _known(json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                raise SimConfigError(
                    f"{path}:{number}: expected prompt + answer | correct [+ incorrect] ({exc})"
                ) from None
            known[normalise(prompt)] = item
    return known


def _known(item: dict[str, Any]) -> tuple[str, Known]:
    prompt = str(item["prompt"] if "prompt" in item else item["question"])
    for key in ("answer", "correct", "best", "targets"):
        if key in item:
            value = item[key]
            correct = tuple(str(x) for x in value) if isinstance(value, list) else (str(value),)
            break
    else:
        raise KeyError("answer")
    if not correct:
        raise ValueError("no correct answer")
    return prompt, Known(correct, tuple(str(x) for x in item.get("incorrect", [])))
