"""Tool calls of one answer: their arguments, gathered from stream pieces, and whether they parse.

Broken tool calls (arguments that are not a JSON object) are a known symptom of a degraded
quantization, so every call's arguments are checked once, at the end of the answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ARGUMENTS_CAP = 64 * 1024  # characters of one call's arguments kept for the check

# A streamed tool-call piece: (choice index, tool-call index, arguments fragment).
Piece = tuple[int, int, str]


def arguments_valid(arguments: str) -> bool:
    """Whether a call's arguments are what a function call takes: a JSON object."""
    try:
        return isinstance(json.loads(arguments), dict)
    except ValueError:
        return False


@dataclass(slots=True)
class ToolCalls:
    """Arguments per (choice, index); calls whose arguments outgrow the cap go unchecked."""

    arguments: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    sizes: dict[tuple[int, int], int] = field(default_factory=dict)

    def add(self, pieces: Iterable[Piece]) -> None:
        """Append streamed argument fragments to their calls."""
        for choice, index, fragment in pieces:
            key = (choice, index)
            size = self.sizes.get(key, 0) + len(fragment)
            self.sizes[key] = size
            parts = self.arguments.setdefault(key, [])
            if size <= ARGUMENTS_CAP:
                parts.append(fragment)

    def settle(self, pieces: Iterable[Piece]) -> None:
        """Replace calls' arguments with the whole arguments the API restated at their end."""
        for choice, index, arguments in pieces:
            self.sizes[(choice, index)] = len(arguments)
            self.arguments[(choice, index)] = [arguments] if len(arguments) <= ARGUMENTS_CAP else []

    def count(self) -> int:
        """How many tool calls the answer made."""
        return len(self.sizes)

    def invalid(self) -> int:
        """How many calls' arguments (within the cap) do not parse as a JSON object."""
        return sum(
            1
            for key, parts in self.arguments.items()
            if self.sizes[key] <= ARGUMENTS_CAP and not arguments_valid("".join(parts))
        )


def answer_tool_calls(answer: Any) -> ToolCalls:
    """The tool calls of a non-streamed answer: chat's `message.tool_calls`, responses'
    function_call output items, or messages' tool_use content blocks."""
    if not isinstance(answer, dict):
        return ToolCalls()
    if isinstance(answer.get("output"), list):
        items = [i for i in answer["output"] if isinstance(i, dict)]
        return _listed([i.get("arguments") for i in items if i.get("type") == "function_call"])
    if answer.get("type") == "message" and isinstance(answer.get("content"), list):
        blocks = [b for b in answer["content"] if isinstance(b, dict)]
        # The server parsed these arguments already: a JSON object, or not one.
        uses = [b.get("input") for b in blocks if b.get("type") == "tool_use"]
        return _listed([json.dumps(i) if isinstance(i, dict) else "" for i in uses])
    choices = answer.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    listed = message.get("tool_calls") if isinstance(message, dict) else None
    functions = [c.get("function") for c in _list(listed) if isinstance(c, dict)]
    return _listed([f.get("arguments") if isinstance(f, dict) else "" for f in functions])


def _listed(arguments: list[Any]) -> ToolCalls:
    calls = ToolCalls()
    for index, given in enumerate(arguments):
        calls.add([(0, index, given if isinstance(given, str) else "")])
    return calls


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
