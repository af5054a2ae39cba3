"""`fathom simulate`: an OpenAI-compatible upstream with exact timing, faults and quality knobs.

Content events leave at absolute times (arrival + ttft + i * itl) read from one monotonic
clock, so the schedule never drifts. Faults and wire variants are chosen per model (rates,
seeded) or per request with `x-sim-*` headers, which is how tests drive them:

    x-sim-ttft-ms, x-sim-itl-ms, x-sim-tokens     timing and answer length
    x-sim-fault: http-500 | reset:N | error-event:N | stall:N:SECONDS | stall-first:SECONDS
    x-sim-wire:  nospace | crlf | ping | huge      SSE spellings the proxy must tolerate
    x-sim-trace: 1                                  each chunk carries `sim_t_ms` (send time)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import signal
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import uvloop
import yaml
from aiohttp import web

from sidecar.config import parse_hostport

FILLER = (  # noqa: SIM905 - reads better as a sentence
    "the model answers with steady tokens while the server keeps its batch full and the "
    "cache warm so every request sees a fair share of the accelerator and the queue stays "
    "short under load from many clients across regions"
).split()
LOOP = "and then again "


@dataclass(frozen=True, slots=True)
class Known:
    """A prompt the simulated model knows: what a right and a wrong answer look like."""

    correct: tuple[str, ...]
    incorrect: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One simulated model: timing, fault rates and answer quality."""

    name: str = "sim"
    ttft_ms: float = 50.0
    itl_ms: float = 20.0
    tokens: int = 32
    jitter_ms: float = 0.0
    accuracy: float = 1.0  # chance a known prompt is answered correctly
    consistency: float = 1.0  # chance a re-ask gives the same answer as before
    degeneration: float = 0.0  # chance of a repetition loop instead of an answer
    error_rate: float = 0.0  # chance of an HTTP 500
    reset_rate: float = 0.0  # chance of a connection reset mid-stream
    answers: str = ""  # JSONL of {prompt, answer | correct, incorrect}
    knowledge: dict[str, Known] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Plan:
    """What one request will get: timing, tokens and any fault."""

    ttft_s: float
    itl_s: float
    tokens: list[str]
    finish: str
    fault: str = ""
    wire: str = ""
    trace: bool = False


def normalise(prompt: str) -> str:
    """How prompts are matched against the answers file."""
    return " ".join(prompt.split()).lower()


def load_knowledge(path: Path) -> dict[str, Known]:
    """Read an answers file in the golden-set format."""
    known: dict[str, Known] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            correct = [str(item["answer"])] if "answer" in item else list(item["correct"])
            incorrect = [str(x) for x in item.get("incorrect", [])]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: expected prompt + answer|correct ({exc})") from exc
        known[normalise(item["prompt"])] = Known(tuple(map(str, correct)), tuple(incorrect))
    return known


class Simulator:
    """The aiohttp handlers; all randomness comes from one seeded generator."""

    def __init__(self, models: list[ModelSpec], seed: int) -> None:
        self.models = {m.name: m for m in models}
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = time.monotonic

    def app(self) -> web.Application:
        """The web application serving the OpenAI routes."""
        app = web.Application(middlewares=[_refusals])
        app.router.add_post("/v1/chat/completions", self.complete)
        app.router.add_post("/v1/completions", self.complete)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/health", lambda _r: _ok())
        return app

    async def list_models(self, _request: web.Request) -> web.Response:
        """GET /v1/models."""
        data = [{"id": n, "object": "model", "owned_by": "fathom-sim"} for n in self.models]
        return web.json_response({"object": "list", "data": data})

    async def embeddings(self, request: web.Request) -> web.Response:
        """POST /v1/embeddings: deterministic vectors from a hash of each input."""
        body, spec = await self._read(request)
        inputs = body.get("input", "")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        data = [
            {"object": "embedding", "index": i, "embedding": _vector(str(text))}
            for i, text in enumerate(inputs)
        ]
        tokens = sum(len(str(t).split()) for t in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return web.json_response(
            {"object": "list", "data": data, "model": spec.name, "usage": usage}
        )

    async def complete(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions and /v1/completions, streamed or not."""
        arrival = self.clock()
        body, spec = await self._read(request)
        chat = request.path.endswith("/chat/completions")
        prompt = _prompt(body, chat)
        plan = self._plan(request, body, spec, prompt)
        if plan.fault.startswith("stall-first:"):
            await asyncio.sleep(float(plan.fault.split(":")[1]))
        if plan.fault.startswith("http-"):
            status = int(plan.fault.split("-")[1])
            return _error(status, "simulated upstream failure", "server_error")
        usage = {
            "prompt_tokens": len(prompt.split()),
            "completion_tokens": len(plan.tokens),
            "total_tokens": len(prompt.split()) + len(plan.tokens),
        }
        if body.get("stream") is True:
            return await self._stream(request, body, spec, plan, usage, arrival, chat)
        await _sleep_until(self.clock, arrival + plan.ttft_s + plan.itl_s * len(plan.tokens))
        text = "".join(plan.tokens)
        choice: dict[str, Any] = {"index": 0, "finish_reason": plan.finish, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return web.json_response(_envelope(spec.name, chat, False, [choice], usage))

    async def _read(self, request: web.Request) -> tuple[dict[str, Any], ModelSpec]:
        try:
            body = await request.json()
        except ValueError:
            raise _Refused(400, "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _Refused(400, "request body must be a JSON object")
        spec = self.models.get(str(body.get("model", "")))
        if spec is None:
            message = f"The model `{body.get('model')}` does not exist."
            raise _Refused(404, message, "model_not_found")
        return body, spec

    def _plan(
        self, request: web.Request, body: dict[str, Any], spec: ModelSpec, prompt: str
    ) -> Plan:
        h = request.headers
        jitter = self.rng.uniform(0, spec.jitter_ms) if spec.jitter_ms else 0.0
        tokens = self._answer(spec, prompt, int(h.get("x-sim-tokens", spec.tokens)))
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        finish = "stop"
        if isinstance(limit, int) and 0 < limit < len(tokens):
            tokens, finish = tokens[:limit], "length"
        fault = h.get("x-sim-fault", "")
        if not fault and self.rng.random() < spec.error_rate:
            fault = "http-500"
        elif not fault and self.rng.random() < spec.reset_rate:
            fault = f"reset:{self.rng.randrange(max(1, len(tokens)))}"
        return Plan(
            ttft_s=(float(h.get("x-sim-ttft-ms", spec.ttft_ms)) + jitter) / 1e3,
            itl_s=float(h.get("x-sim-itl-ms", spec.itl_ms)) / 1e3,
            tokens=tokens,
            finish=finish,
            fault=fault,
            wire=h.get("x-sim-wire", ""),
            trace=h.get("x-sim-trace") == "1",
        )

    def _answer(self, spec: ModelSpec, prompt: str, length: int) -> list[str]:
        """The answer's tokens: right or wrong, repeatable or not, per the model's knobs."""
        key = normalise(prompt)
        # Per-prompt randomness makes a consistent model give the same answer every time.
        stable = random.Random(f"{self.seed}/{spec.name}/{key}")
        rng = stable if self.rng.random() < spec.consistency else self.rng
        if rng.random() < spec.degeneration:
            return [LOOP] * max(length, 8)
        known = spec.knowledge.get(key)
        if known is None:
            return _tokens(" ".join(rng.choice(FILLER) for _ in range(max(1, length))))
        if rng.random() < spec.accuracy:
            return _tokens(rng.choice(known.correct))
        return _tokens(rng.choice(known.incorrect) if known.incorrect else _wrong(known, rng))

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        spec: ModelSpec,
        plan: Plan,
        usage: dict[str, int],
        arrival: float,
        chat: bool,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        send = _Sender(resp, plan, self.clock, arrival)
        if chat:
            await send.event(_chunk(spec.name, chat, {"role": "assistant", "content": ""}, None))
        for i, token in enumerate(plan.tokens):
            await _sleep_until(self.clock, arrival + plan.ttft_s + plan.itl_s * i)
            if await self._fault(request, send, plan, i):
                return resp
            if plan.wire == "huge" and i == 0:
                token = "x" * (1 << 20)
            delta = {"content": token} if chat else token
            await send.event(_chunk(spec.name, chat, delta, None))
        await send.event(_chunk(spec.name, chat, {} if chat else "", plan.finish))
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            await send.event({**_envelope(spec.name, chat, True, [], usage)})
        await send.raw(b"data: [DONE]")
        await resp.write_eof()
        return resp

    async def _fault(self, request: web.Request, send: _Sender, plan: Plan, i: int) -> bool:
        """Inject the planned fault before content event i; True when the stream is over."""
        kind, _, arg = plan.fault.partition(":")
        if kind == "reset" and i == int(arg):
            if request.transport is not None:
                request.transport.abort()
            return True
        if kind == "error-event" and i == int(arg):
            await send.event({"error": {"message": "simulated failure", "type": "server_error"}})
            return True
        if kind == "stall" and i == int(arg.split(":")[0]):
            await asyncio.sleep(float(arg.split(":")[1]))
        return False


class _Sender:
    """Writes SSE events in the request's wire variant, stamping send times when tracing."""

    def __init__(self, resp: web.StreamResponse, plan: Plan, clock: Any, arrival: float) -> None:
        self._resp, self._plan, self._clock, self._arrival = resp, plan, clock, arrival
        self._eol = b"\r\n" if plan.wire == "crlf" else b"\n"

    async def event(self, obj: dict[str, Any]) -> None:
        if self._plan.trace:
            obj = {**obj, "sim_t_ms": (self._clock() - self._arrival) * 1e3}
        await self.raw(b"data:" + (b"" if self._plan.wire == "nospace" else b" ") + _dumps(obj))

    async def raw(self, line: bytes) -> None:
        ping = b": ping" + self._eol * 2 if self._plan.wire == "ping" else b""
        await self._resp.write(ping + line + self._eol * 2)


async def _sleep_until(clock: Any, target: float) -> None:
    delay = target - clock()
    if delay > 0:
        await asyncio.sleep(delay)


def _tokens(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]] if words else []


def _wrong(known: Known, rng: random.Random) -> str:
    try:
        return str(int(float(known.correct[0])) + rng.choice([-10, -3, -1, 1, 2, 7]))
    except ValueError:
        return "I am not sure, perhaps something else entirely."


def _prompt(body: dict[str, Any], chat: bool) -> str:
    if not chat:
        prompt = body.get("prompt", "")
        return str(prompt[0] if isinstance(prompt, list) and prompt else prompt)
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content", "")
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content)
    return ""


def _envelope(
    model: str, chat: bool, stream: bool, choices: list[dict[str, Any]], usage: dict[str, int]
) -> dict[str, Any]:
    kind = "chat.completion" if chat else "text_completion"
    out: dict[str, Any] = {
        "id": "cmpl-sim",
        "object": kind + ".chunk" if stream and chat else kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage:
        out["usage"] = usage
    return out


def _chunk(model: str, chat: bool, delta: Any, finish: str | None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
    if chat:
        choice["delta"] = delta
    else:
        choice["text"] = delta
    return _envelope(model, chat, True, [choice], {})


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _vector(text: str, dim: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255 - 0.5, 4) for b in digest[:dim]]


def _error(status: int, message: str, kind: str, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status)


class _Refused(Exception):
    """A request the simulated server rejects, as OpenAI does, with a JSON error."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@web.middleware
async def _refusals(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except _Refused as exc:
        return _error(exc.status, str(exc), "invalid_request_error", exc.code)
    return response


async def _ok() -> web.Response:
    return web.json_response({"status": "ok"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `fathom simulate`."""
    parser.add_argument("--listen", default="127.0.0.1:8000", help="HOST:PORT (port 0: any)")
    parser.add_argument("--config", help="YAML: {seed, models: [{name, ttft_ms, ...}]}")
    parser.add_argument("--seed", type=int, default=0)
    for f in fields(ModelSpec):
        if f.name != "knowledge":
            flag = "--" + ("model" if f.name == "name" else f.name.replace("_", "-"))
            kind = type(f.default)
            parser.add_argument(flag, type=kind, default=None, help=f"default {f.default!r}")


def specs_from(args: argparse.Namespace) -> tuple[list[ModelSpec], int]:
    """Models and seed from --config, else one model from the flags."""
    if args.config:
        data = yaml.safe_load(Path(args.config).read_text()) or {}
        raw_models = data.get("models") or []
        seed = int(data.get("seed", args.seed))
    else:
        flags = {f.name: getattr(args, "model" if f.name == "name" else f.name, None)
                 for f in fields(ModelSpec) if f.name != "knowledge"}  # fmt: skip
        raw_models = [{k: v for k, v in flags.items() if v is not None}]
        seed = args.seed
    specs = []
    for raw in raw_models:
        spec = ModelSpec(**raw)
        if spec.answers:
            spec = ModelSpec(**{**raw, "knowledge": load_knowledge(Path(spec.answers))})
        specs.append(spec)
    return specs, seed


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    specs, seed = specs_from(args)
    host, port = parse_hostport(args.listen, "listen")
    return uvloop.run(_serve(Simulator(specs, seed), host, port))


async def _serve(sim: Simulator, host: str, port: int) -> int:
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=2048).start()
    bound = runner.addresses[0]
    print(f"listening on http://{bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    return 0
