"""`/v1/responses` and Anthropic-style `/v1/messages` answers: typed stream events and whole
bodies, for a Plan. Pure.

An answer is a run of parts, each a run of the plan's content events: reasoning, the answer
text, then each tool call (3 events: the call opening, its arguments in two). A part's opening
events leave just before its first content event and its closing events just after its last,
so the content events keep the plan's schedule exactly. Field names follow the `openai`
client's typed models (openai/types/responses) and Anthropic's streaming documentation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fathom.sim.plan import TOOL_EVENTS, Plan
from fathom.sim.wire import reasoning_piece

Event = tuple[str, dict[str, Any]]  # (type, the event's JSON object, `type` included)
TOOL_NAME = "lookup"
# The types of events that carry a delta of text (answer or reasoning) or arguments.
DELTAS = frozenset({"response.output_text.delta", "response.reasoning_text.delta",
                    "response.function_call_arguments.delta", "content_block_delta"})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Part:
    """One output item (responses) or content block (messages) and its content events."""

    kind: str  # reasoning | text | tool
    first: int  # its first content event
    count: int
    call: int = -1  # tool calls: which one


def parts(plan: Plan) -> list[Part]:
    """The parts of a plan's answer, in order; empty ones left out."""
    out: list[Part] = []
    if plan.reasoning:
        out.append(Part("reasoning", 0, plan.reasoning))
    if plan.tokens:
        out.append(Part("text", plan.reasoning, len(plan.tokens)))
    start = plan.reasoning + len(plan.tokens)
    out += [Part("tool", start + TOOL_EVENTS * c, TOOL_EVENTS, c) for c in range(len(plan.tools))]
    return out


class TypedStream:
    """The events of one typed stream, grouped by when they leave."""

    def __init__(self, plan: Plan, created: int) -> None:
        self.plan, self.created = plan, created
        self.responses = plan.api == "responses"
        self._parts = parts(plan)
        self._sequence = 0

    def opening(self) -> list[Event]:
        """Events sent at once: the response (or message) has started."""
        if self.responses:
            shell = response_object(self.plan, self.created, "in_progress", [], None)
            return self._numbered([("response.created", {"response": shell}),
                                   ("response.in_progress", {"response": shell})])  # fmt: skip
        message = {**message_object(self.plan, []), "stop_reason": None}
        message["usage"] = {"input_tokens": self.plan.usage["prompt_tokens"], "output_tokens": 1}
        return [("message_start", {"type": "message_start", "message": message})]

    def at(self, i: int) -> list[Event]:
        """Content event i, with the opening or closing events of its part around it."""
        index, part = next((n, p) for n, p in enumerate(self._parts)
                           if p.first <= i < p.first + p.count)  # fmt: skip
        step = i - part.first
        build = (
            _ResponseEvents(self.plan, index)
            if self.responses
            else _MessageEvents(self.plan, index)
        )
        events = build.open(part) if step == 0 and part.kind != "tool" else []
        events.append(build.content(part, step))
        if step == part.count - 1:
            events += build.close(part)
        return self._numbered(events)

    def closing(self) -> list[Event]:
        """Events after the last content event: usage and how the answer finished."""
        plan = self.plan
        if self.responses:
            status = "incomplete" if plan.finish == "length" else "completed"
            done = response_object(plan, self.created, status, response_output(plan),
                                   response_usage(plan))  # fmt: skip
            return self._numbered([(f"response.{status}", {"response": done})])
        delta = {"stop_reason": stop_reason(plan.finish), "stop_sequence": None}
        usage = {"output_tokens": plan.usage["completion_tokens"]}
        return [("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}),
                ("message_stop", {"type": "message_stop"})]  # fmt: skip

    def error(self) -> Event:
        """An error event in place of the rest of the stream."""
        message = "simulated failure mid-stream"
        if self.responses:
            body = {"code": "server_error", "message": message, "param": None}
            return self._numbered([("error", body)])[0]
        return ("error", {"type": "error", "error": {"type": "api_error", "message": message}})

    def _numbered(self, events: list[Event]) -> list[Event]:
        """Responses' events carry their type and a sequence number; messages' their type."""
        if not self.responses:
            return events
        out = []
        for kind, body in events:
            out.append((kind, {"type": kind, **body, "sequence_number": self._sequence}))
            self._sequence += 1
        return out


class _ResponseEvents:
    """The events of one output item of a `/v1/responses` stream."""

    def __init__(self, plan: Plan, index: int) -> None:
        self.plan, self.index = plan, index

    def open(self, part: Part) -> list[Event]:
        item = {**response_item(self.plan, part, done=False), "status": "in_progress"}
        events: list[Event] = [
            ("response.output_item.added", {"output_index": self.index, "item": item})
        ]
        if part.kind == "text":
            events.append(
                ("response.content_part.added", {**self._at(part), "part": _text_part("")})
            )
        return events

    def content(self, part: Part, step: int) -> Event:
        if part.kind == "reasoning":
            delta = reasoning_piece(part.first + step)
            return ("response.reasoning_text.delta", {**self._at(part), "delta": delta})
        if part.kind == "text":
            token = self.plan.tokens[step]
            return (
                "response.output_text.delta",
                {**self._at(part), "delta": token, "logprobs": []},
            )
        if step == 0:
            return self.open(part)[0]
        arguments = self.plan.tools[part.call]
        half = len(arguments) // 2
        piece = arguments[:half] if step == 1 else arguments[half:]
        body = {"item_id": _item_id(part), "output_index": self.index, "delta": piece}
        return ("response.function_call_arguments.delta", body)

    def close(self, part: Part) -> list[Event]:
        item = response_item(self.plan, part, done=True)
        done = ("response.output_item.done", {"output_index": self.index, "item": item})
        if part.kind == "tool":
            arguments = {"item_id": _item_id(part), "output_index": self.index,
                         "arguments": self.plan.tools[part.call]}  # fmt: skip
            return [("response.function_call_arguments.done", arguments), done]
        if part.kind == "text":
            text = "".join(self.plan.tokens)
            return [("response.output_text.done", {**self._at(part), "text": text, "logprobs": []}),
                    ("response.content_part.done", {**self._at(part), "part": _text_part(text)}),
                    done]  # fmt: skip
        return [done]

    def _at(self, part: Part) -> dict[str, Any]:
        return {"item_id": _item_id(part), "output_index": self.index, "content_index": 0}


class _MessageEvents:
    """The events of one content block of a `/v1/messages` stream."""

    def __init__(self, plan: Plan, index: int) -> None:
        self.plan, self.index = plan, index

    def open(self, part: Part) -> list[Event]:
        block = message_block(self.plan, part, done=False)
        body = {"type": "content_block_start", "index": self.index, "content_block": block}
        return [("content_block_start", body)]

    def content(self, part: Part, step: int) -> Event:
        if part.kind == "tool" and step == 0:
            return self.open(part)[0]
        if part.kind == "reasoning":
            delta = {"type": "thinking_delta", "thinking": reasoning_piece(part.first + step)}
        elif part.kind == "text":
            delta = {"type": "text_delta", "text": self.plan.tokens[step]}
        else:
            arguments = self.plan.tools[part.call]
            half = len(arguments) // 2
            piece = arguments[:half] if step == 1 else arguments[half:]
            delta = {"type": "input_json_delta", "partial_json": piece}
        return ("content_block_delta",
                {"type": "content_block_delta", "index": self.index, "delta": delta})  # fmt: skip

    def close(self, _part: Part) -> list[Event]:
        return [("content_block_stop", {"type": "content_block_stop", "index": self.index})]


def _item_id(part: Part) -> str:
    return {"reasoning": "rs_sim", "text": "msg_sim"}.get(part.kind, f"fc_sim_{part.call}")


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def response_item(plan: Plan, part: Part, done: bool) -> dict[str, Any]:
    """A `/v1/responses` output item, as it opens (empty) or as it ends."""
    if part.kind == "reasoning":
        pieces = map(reasoning_piece, range(plan.reasoning)) if done else ()
        content = [{"type": "reasoning_text", "text": "".join(pieces)}] if done else []
        return {"id": "rs_sim", "type": "reasoning", "summary": [], "content": content}
    if part.kind == "text":
        content = [_text_part("".join(plan.tokens))] if done else []
        return {"id": "msg_sim", "type": "message", "role": "assistant", "status": "completed",
                "content": content}  # fmt: skip
    return {"id": _item_id(part), "type": "function_call", "call_id": f"call_{part.call}",
            "name": TOOL_NAME, "arguments": plan.tools[part.call] if done else "",
            "status": "completed"}  # fmt: skip


def response_output(plan: Plan) -> list[dict[str, Any]]:
    """A whole response's output items."""
    return [response_item(plan, part, done=True) for part in parts(plan)]


def response_usage(plan: Plan) -> dict[str, Any]:
    """The usage object of a response (input, output and reasoning tokens)."""
    prompt, completion = plan.usage["prompt_tokens"], plan.usage["completion_tokens"]
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": plan.reasoning},
            "total_tokens": prompt + completion}  # fmt: skip


def response_object(
    plan: Plan,
    created: int,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    """A `response` object; a fixed id keeps answers byte-comparable across requests."""
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {"id": "resp_sim", "object": "response", "created_at": created, "status": status,
            "error": None, "incomplete_details": incomplete, "instructions": None,
            "model": plan.model, "output": output, "parallel_tool_calls": True,
            "tool_choice": "auto", "tools": [], "usage": usage}  # fmt: skip


def stop_reason(finish: str) -> str:
    """A plan's finish in `/v1/messages` words."""
    return {"length": "max_tokens", "tool_calls": "tool_use"}.get(finish, "end_turn")


def message_block(plan: Plan, part: Part, done: bool) -> dict[str, Any]:
    """A `/v1/messages` content block, as it opens (empty) or whole."""
    if part.kind == "reasoning":
        text = "".join(map(reasoning_piece, range(plan.reasoning))) if done else ""
        return {"type": "thinking", "thinking": text, "signature": ""}
    if part.kind == "text":
        return {"type": "text", "text": "".join(plan.tokens) if done else ""}
    arguments: Any = {}
    if done:  # a broken call's input cannot be an object: the server's raw text stands in
        arguments = _object_or_text(plan.tools[part.call])
    return {"type": "tool_use", "id": f"toolu_sim_{part.call}", "name": TOOL_NAME,
            "input": arguments}  # fmt: skip


def message_object(plan: Plan, content: list[dict[str, Any]]) -> dict[str, Any]:
    """A `/v1/messages` message; a fixed id keeps answers byte-comparable across requests."""
    usage = {"input_tokens": plan.usage["prompt_tokens"],
             "output_tokens": plan.usage["completion_tokens"]}  # fmt: skip
    return {"id": "msg_sim", "type": "message", "role": "assistant", "model": plan.model,
            "content": content, "stop_reason": stop_reason(plan.finish),
            "stop_sequence": None, "usage": usage}  # fmt: skip


def whole(plan: Plan, created: int) -> dict[str, Any]:
    """The non-streamed answer of a typed API."""
    if plan.api == "responses":
        status = "incomplete" if plan.finish == "length" else "completed"
        return response_object(plan, created, status, response_output(plan), response_usage(plan))
    return message_object(plan, [message_block(plan, part, done=True) for part in parts(plan)])


def _object_or_text(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments
