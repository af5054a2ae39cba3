"""What one request will get: its schedule, its faults and its wire variant. Pure.

Per-request headers override the model's knobs, which is how tests drive faults:

    x-sim-ttft-ms, x-sim-itl-ms, x-sim-jitter-ms, x-sim-tokens    timing and answer length
    x-sim-reasoning-tokens: N  (not completions) N reasoning events come first: chat's
                               delta.reasoning_content, responses' reasoning_text deltas,
                               messages' thinking deltas
    x-sim-tool-calls: N        (not completions) N tool calls after the answer text, 3 events
                               each (chat: name, arguments in two; responses: the
                               function_call item, arguments in two; messages: the tool_use
                               block, input JSON in two)
    x-sim-tool-calls-broken: M the last M of them carry arguments that are not JSON
    x-sim-fault: comma-separated, any of
        http-STATUS            answer with that HTTP error and an OpenAI-style JSON body
        reset:N                connection reset (RST) instead of content event N
        close:N                end the body cleanly instead of content event N: no finish, no [DONE]
        error-event:N          `data: {"error": {...}}` (responses, messages: their typed
                               `error` event) instead of content event N, then end
        stall:N:S[:reset|:close]  event N and the rest come S seconds later (or the end does)
        stall-first:S          nothing at all, not even headers, for S seconds; then on time
      N counts content events, reasoning and tool calls included (reset:0 breaks before the
      first); N past the answer's last event acts in place of the finish chunk. Not streamed:
      reset and close drop the connection, error-event answers 500, at the time event N would
      have been sent.
    x-sim-wire: comma-separated, any of  nospace | crlf | ping | huge[:BYTES]
    x-sim-seed: N              this request's randomness comes from (server seed, N)
    x-sim-trace: 1             each chunk carries sim_t_ms (sent) and sim_due_ms (scheduled)
                               (ms after arrival), and x-sim-arrival-monotonic is sent
Responses say what the answer is in `x-sim-answer`: correct, incorrect, filler, loop, empty.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fathom.sim.answers import answer
from fathom.sim.models import MAX_TOKENS, BadKnob, ModelSpec
from fathom.sim.wire import Wire, parse_wire, usage
from fathom.sim.zoo import MEMBERS
from sidecar.wire import message_text, prompt_text


@dataclass(frozen=True, slots=True)
class Faults:
    """Faults for one request; -1 positions mean 'not at all'."""

    http_status: int = 0
    first_byte_stall_s: float = 0.0
    reset_at: int = -1
    close_at: int = -1
    error_at: int = -1
    stall_at: int = -1
    stall_s: float = 0.0

    def ending(self, events: int) -> tuple[int, str] | None:
        """Where the stream ends early and how (reset, close, error), if it does.

        The position is a content event, or `events` for the finish chunk, which also stands
        for any position past the answer's end.
        """
        ends = [(min(at, events), kind) for at, kind in
                ((self.reset_at, "reset"), (self.close_at, "close"), (self.error_at, "error"))
                if at >= 0]  # fmt: skip
        return min(ends, default=None)


def parse_faults(text: str) -> Faults:
    """Parse an `x-sim-fault` header."""
    found: dict[str, Any] = {}
    try:
        for item in filter(None, (p.strip() for p in text.split(","))):
            found.update(_fault(item))
    except ValueError:
        raise BadKnob(f"x-sim-fault: cannot read {text!r}; see `fathom simulate --help`") from None
    return Faults(**found)


def _fault(item: str) -> dict[str, Any]:
    kind, _, arg = item.partition(":")
    parts = arg.split(":") if arg else []
    if kind.startswith("http-") and not arg:
        status = int(kind[5:])
        if not 400 <= status <= 599:
            raise ValueError(status)
        return {"http_status": status}
    if kind == "stall-first" and len(parts) == 1:
        return {"first_byte_stall_s": _seconds(parts[0])}
    if kind in ("reset", "close", "error-event") and len(parts) == 1:
        return {kind.replace("error-event", "error") + "_at": _position(parts[0])}
    if kind == "stall" and len(parts) in (2, 3):
        at = _position(parts[0])
        out: dict[str, Any] = {"stall_at": at, "stall_s": _seconds(parts[1])}
        if len(parts) == 3:
            if parts[2] not in ("reset", "close"):
                raise ValueError(parts[2])
            out[parts[2] + "_at"] = at
        return out
    raise ValueError(item)


def _position(text: str) -> int:
    if not text.isdigit():
        raise ValueError(text)
    return int(text)


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1e6:
        raise ValueError(text)
    return value


def random_faults(spec: ModelSpec, rng: random.Random, events: int) -> Faults:
    """Faults drawn at the model's injection rates (one draw per kind, in a fixed order)."""

    def hit(rate: float) -> bool:
        return rng.random() < rate

    def where() -> int:
        return rng.randrange(max(1, events))

    if hit(spec.error_rate):
        return Faults(http_status=spec.error_status)
    first = spec.stall_s if hit(spec.stall_first_rate) else 0.0
    reset = where() if hit(spec.reset_rate) else -1
    error = where() if hit(spec.error_event_rate) else -1
    stall = where() if hit(spec.stall_rate) else -1
    return Faults(first_byte_stall_s=first, reset_at=reset, error_at=error, stall_at=stall,
                  stall_s=spec.stall_s if stall >= 0 else 0.0)  # fmt: skip


def number(headers: Mapping[str, str], name: str, default: float) -> float:
    """A non-negative number from header `name`, else `default`."""
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadKnob(f"{name}: {raw!r} is not a number") from None
    if not 0 <= value < 1e9:
        raise BadKnob(f"{name}: {raw!r} must be >= 0")
    return value


def schedule(
    ttft_s: float, itl_s: float, jitter_s: float, events: int, faults: Faults, rng: random.Random
) -> list[float]:
    """Send times of the content events, in seconds after arrival; never decreasing.

    Stalls shift what comes after them: a server that hung then carries on at its pace.
    """
    due: list[float] = []
    for i in range(events):
        t = faults.first_byte_stall_s + ttft_s + i * itl_s
        t += rng.uniform(0.0, jitter_s) if jitter_s else 0.0
        if 0 <= faults.stall_at <= i:
            t += faults.stall_s
        due.append(max(t, due[-1]) if due else t)
    return due


def zoo_member(headers: Mapping[str, str], spec: ModelSpec, elapsed_s: float) -> str:
    """The zoo member degrading this answer: the x-sim-zoo header's, else the model's once
    its time has come, else ''."""
    member = headers.get("x-sim-zoo")
    if member is not None:
        if member and member not in MEMBERS:
            raise BadKnob(f"x-sim-zoo: one of {', '.join(MEMBERS)}")
        return member
    return spec.zoo if spec.zoo and elapsed_s >= spec.zoo_after_s else ""


APIS = ("chat", "completion", "responses", "messages")  # the routes the simulator answers
TYPED_APIS = ("responses", "messages")  # streamed as typed events (fathom.sim.typed)


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything one generation request will get, decided before the first byte."""

    model: str
    api: str  # one of APIS
    stream: bool
    tokens: tuple[str, ...]  # one per answer-text event
    finish: str  # stop | length
    kind: str  # what the answer is: correct, incorrect, filler, loop, empty
    due: tuple[float, ...]  # send times after arrival (s): each content event, then the finish
    faults: Faults
    wire: Wire
    trace: bool
    include_usage: bool
    usage: dict[str, Any]
    reasoning: int = 0  # reasoning events before the answer text (not completions)
    tools: tuple[str, ...] = ()  # arguments of each tool call after the answer text

    @property
    def chat(self) -> bool:
        """Whether the answer is a chat completion (else a text completion, when not typed)."""
        return self.api == "chat"

    @property
    def events(self) -> int:
        """Content events: reasoning, answer text, then three per tool call."""
        return self.reasoning + len(self.tokens) + TOOL_EVENTS * len(self.tools)


TOOL_EVENTS = 3  # a tool call streams as its name, then its arguments in two pieces


def tool_arguments(count: int, broken: int) -> tuple[str, ...]:
    """Arguments of `count` tool calls; the last `broken` are cut short (not JSON)."""
    calls = [f'{{"city": "Paris", "call": {i}}}' for i in range(count)]
    return tuple(c[:-1] if i >= count - broken else c for i, c in enumerate(calls))


def make_plan(
    headers: Mapping[str, str],
    body: Mapping[str, Any],
    spec: ModelSpec,
    api: str,
    rng: random.Random,
    seed: int,
    elapsed_s: float = 0.0,
) -> Plan:
    """Decide a request's answer, faults and schedule from its body, headers and model
    (`api`: one of APIS; `elapsed_s`: time since the simulator started, for the model's zoo
    switch)."""
    chat = api != "completion"  # a conversation: chat, responses or messages
    length = int(number(headers, "x-sim-tokens", spec.tokens))
    if length > MAX_TOKENS:
        raise BadKnob(f"x-sim-tokens: at most {MAX_TOKENS}")
    limit = _max_tokens(body)
    member = zoo_member(headers, spec, elapsed_s)
    said = answer(spec, prompt_text(body, chat), length, limit, rng, seed, member)
    tokens, finish = said.tokens, "length" if said.kind == "loop" else "stop"
    if limit and len(tokens) > limit:
        tokens, finish = tokens[:limit], "length"
    reasoning, tools = _reasoning_and_tools(headers, spec, chat)
    finish = "tool_calls" if tools else finish
    events = reasoning + len(tokens) + TOOL_EVENTS * len(tools)
    fault_header = headers.get("x-sim-fault")
    faults = (
        parse_faults(fault_header) if fault_header is not None
        else random_faults(spec, rng, events)
    )  # fmt: skip
    ttft_s = number(headers, "x-sim-ttft-ms", spec.ttft_ms) / 1e3
    itl_s = number(headers, "x-sim-itl-ms", spec.itl_ms) / 1e3
    jitter_s = number(headers, "x-sim-jitter-ms", spec.jitter_ms) / 1e3
    due = schedule(ttft_s, itl_s, jitter_s, events, faults, rng)
    finish_due = due[-1] if due else faults.first_byte_stall_s + ttft_s
    if faults.stall_at >= events:  # a stall past the answer's end holds the finish back
        finish_due += faults.stall_s
    options = body.get("stream_options")
    return Plan(
        model=spec.name, api=api, stream=body.get("stream") is True, tokens=tokens,
        finish=finish, kind=said.kind, due=(*due, finish_due), faults=faults,
        wire=parse_wire(headers.get("x-sim-wire", "")), trace=headers.get("x-sim-trace") == "1",
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        usage=usage(prompt_tokens(body, api), events, reasoning),
        reasoning=reasoning, tools=tools,
    )  # fmt: skip


def _reasoning_and_tools(
    headers: Mapping[str, str], spec: ModelSpec, chat: bool
) -> tuple[int, tuple[str, ...]]:
    """Reasoning events and tool-call arguments of a conversation (none for completions)."""
    reasoning = int(number(headers, "x-sim-reasoning-tokens", spec.reasoning_tokens))
    calls = int(number(headers, "x-sim-tool-calls", spec.tool_calls))
    broken = int(number(headers, "x-sim-tool-calls-broken", spec.tool_calls_broken))
    if reasoning + calls > MAX_TOKENS:
        raise BadKnob(f"x-sim-reasoning-tokens, x-sim-tool-calls: at most {MAX_TOKENS}")
    if not chat:
        return 0, ()
    return reasoning, tool_arguments(calls, min(broken, calls))


def _max_tokens(body: Mapping[str, Any]) -> int:
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def prompt_tokens(body: Mapping[str, Any], api: str) -> int:
    """Whitespace tokens of every prompt message and system prompt (chat, messages: `system`,
    responses: `instructions` and `input`), or of every prompt (completions)."""
    if api == "responses":
        given = body.get("input")
        items = given if isinstance(given, list) else [{"content": given}]
        framing = [{"content": body.get("instructions")}]
        return _words([m for m in [*framing, *items] if isinstance(m, dict)])
    if api != "completion":
        return _words([{"content": body.get("system")}, *_messages(body)])
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        return len(prompt)  # a prompt given as token ids
    prompts = prompt if isinstance(prompt, list) else [prompt]
    return sum(len(p) if isinstance(p, list) else len(message_text(p).split()) for p in prompts)


def _words(messages: list[dict[str, Any]]) -> int:
    return sum(len(message_text(m.get("content")).split()) for m in messages)


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
