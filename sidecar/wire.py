"""The wire contract between the proxy and its probes: the x-fathom-* headers, the marks a
stored text carries when it is not what was sent, and how a non-streamed answer is read.

A leaf module: the proxy side and the probes both import it, and it imports neither.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ORIGIN_HEADER = "x-fathom-origin"
DEPLOYMENT_HEADER = "x-fathom-deployment"  # probes re-ask the deployment that answered
REQUEST_ID_HEADER = "x-fathom-request-id"
PROBE_TOKEN_HEADER = "x-fathom-probe-token"  # like every x-fathom-* header, never forwarded
NO_SAMPLE_HEADER = "x-fathom-no-sample"
# Origins a trusted caller may give its traffic (ORIGIN_HEADER); anything else is 'user'.
# 'audit': a reference audit's mirrored prompts (probes.audit), kept out of user figures.
LABELLED_ORIGINS = ("probe", "canary", "audit")

# A stored text that lost part of itself carries one of these marks: re-asking it would ask
# another question.
TRUNCATION_MARK = "[fathom: truncated "
REDACTION_MARK = "[REDACTED:"


def is_redacted(text: str) -> bool:
    """Whether redaction replaced part of a stored text (re-asking it would change it)."""
    return REDACTION_MARK in text


def is_truncated(text: str) -> bool:
    """Whether a stored text lost part of itself to the cap (re-asking it would change it)."""
    return TRUNCATION_MARK in text


# ---------------------------------------------------------------------------- requests


def message_text(content: Any) -> str:
    """Text of a message content: a string, or the text parts of a list of parts."""
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def prompt_text(body: Mapping[str, Any], chat: bool) -> str:
    """The text a request asks: its last user message (`chat`: chat, messages or responses),
    or its (first) prompt. A system prompt or `instructions` frames the question; not asked."""
    if not chat:
        prompt = body.get("prompt", "")
        return message_text(prompt[0] if isinstance(prompt, list) and prompt else prompt)
    if "messages" not in body and "input" in body:  # /v1/responses
        given = body["input"]
        if not isinstance(given, list):
            return message_text(given)
        messages: Any = [
            m for m in given if isinstance(m, dict) and m.get("type", "message") == "message"
        ]
    else:
        messages = body.get("messages")
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


# ---------------------------------------------------------------------------- answers


@dataclass(frozen=True, slots=True)
class Answer:
    """What a non-streamed OpenAI response says: the text, why it ended, what it cost."""

    text: str
    finish_reason: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @property
    def tokens(self) -> int | None:
        """Prompt plus completion tokens, or None when the upstream sent no usage."""
        if self.prompt_tokens is None or self.completion_tokens is None:
            return None
        return self.prompt_tokens + self.completion_tokens


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return ""


def parse_answer(body: bytes | str | Mapping[str, Any]) -> Answer:
    """Text, finish reason and usage of a chat, completions, responses or messages answer
    ('' when it has none)."""
    obj: Any = body
    if isinstance(body, bytes | str):
        try:
            obj = json.loads(body)
        except ValueError:
            return Answer("")
    if not isinstance(obj, Mapping):
        return Answer("")
    if isinstance(obj.get("output"), list):
        return _response_answer(obj)
    if obj.get("type") == "message" and isinstance(obj.get("content"), list):
        return _message_answer(obj)
    usage: Mapping[str, Any] = obj["usage"] if isinstance(obj.get("usage"), Mapping) else {}
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    choices = obj.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(first, Mapping):
        return Answer("", "", _int(prompt), _int(completion))
    message = first.get("message")
    if isinstance(message, Mapping):
        text = _content_text(message.get("content")) or str(message.get("refusal") or "")
    else:
        text = str(first.get("text") or "")
    return Answer(text, str(first.get("finish_reason") or ""), _int(prompt), _int(completion))


def _response_answer(obj: Mapping[str, Any]) -> Answer:
    """A `/v1/responses` answer: the output_text (or refusal) parts of its message items."""
    texts = [
        str(part.get("text") or part.get("refusal") or "")
        for item in obj["output"] if isinstance(item, Mapping) and item.get("type") == "message"
        for part in _list(item.get("content")) if isinstance(part, Mapping)
        and part.get("type") in ("output_text", "refusal")
    ]  # fmt: skip
    usage: Mapping[str, Any] = obj["usage"] if isinstance(obj.get("usage"), Mapping) else {}
    finish = response_finish(obj)
    return Answer("".join(texts), finish, _int(usage.get("input_tokens")),
                  _int(usage.get("output_tokens")))  # fmt: skip


def _message_answer(obj: Mapping[str, Any]) -> Answer:
    """An Anthropic-style `/v1/messages` answer: its text blocks."""
    texts = [str(block.get("text") or "") for block in obj["content"]
             if isinstance(block, Mapping) and block.get("type") == "text"]  # fmt: skip
    usage: Mapping[str, Any] = obj["usage"] if isinstance(obj.get("usage"), Mapping) else {}
    finish = stop_finish(obj.get("stop_reason"))
    return Answer("".join(texts), finish, _int(usage.get("input_tokens")),
                  _int(usage.get("output_tokens")))  # fmt: skip


# Finish reasons in chat's words, whatever the API: the figures (a `length` finish is a
# truncated answer to the probes) then read the same for every route.
_STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                 "tool_use": "tool_calls", "refusal": "content_filter"}  # fmt: skip
_INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}


def stop_finish(stop_reason: Any) -> str:
    """A `/v1/messages` stop_reason as a chat finish reason (unknown ones as they came)."""
    if not isinstance(stop_reason, str):
        return ""
    return _STOP_REASONS.get(stop_reason, stop_reason)


def response_finish(response: Mapping[str, Any]) -> str:
    """A `/v1/responses` response's status (and incomplete reason) as a chat finish reason."""
    status = response.get("status")
    if status == "incomplete":
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, Mapping) else None
        return _INCOMPLETE_REASONS.get(str(reason), str(reason or "incomplete"))
    if status != "completed":
        return ""
    output = _list(response.get("output"))
    calls = any(isinstance(i, Mapping) and i.get("type") == "function_call" for i in output)
    return "tool_calls" if calls else "stop"


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
