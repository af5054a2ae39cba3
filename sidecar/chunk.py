"""What one stream event says that the proxy cares about, whatever API spelled it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sidecar.toolcalls import Piece


@dataclass(frozen=True, slots=True)
class Chunk:
    """One classified stream event (chat, completions, responses or messages)."""

    content: bool = False
    done: bool = False
    usage_only: bool = False
    usage: dict[str, Any] | None = None
    finish_reason: str = ""
    model: str = ""
    error: str = ""
    text: str = ""
    reasoning: bool = False  # carries reasoning (`delta.reasoning`, a reasoning/thinking delta)
    answer: bool = False  # carries answer text or a tool call
    tool_calls: tuple[Piece, ...] = ()  # (choice, index, arguments fragment) per tool delta
    # A tool call's whole arguments, when the API restates them at its end
    # (`response.function_call_arguments.done`): they replace the fragments.
    tool_final: tuple[Piece, ...] = ()


DONE = Chunk(done=True)
EMPTY = Chunk()


def error_text(error: Any) -> str:
    """A short text for an error object (`{"message": ..., "type": ...}`) or value."""
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or error.get("code") or "error")[:200]
    return str(error)[:200]
