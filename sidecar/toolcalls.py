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


def message_tool_calls(message: Any) -> ToolCalls:
    """The tool calls of a non-streamed chat message (`message.tool_calls`)."""
    calls = ToolCalls()
    listed = message.get("tool_calls") if isinstance(message, dict) else None
    for index, call in enumerate(listed if isinstance(listed, list) else []):
        function = call.get("function") if isinstance(call, dict) else None
        arguments = function.get("arguments") if isinstance(function, dict) else None
        calls.add([(0, index, arguments if isinstance(arguments, str) else "")])
    return calls
