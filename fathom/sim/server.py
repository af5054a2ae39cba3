"""The simulator's aiohttp application: OpenAI routes answered on an exact schedule.

Content events leave at absolute times (arrival + due[i]) read from one monotonic clock, so
the schedule never drifts, and never before their time (see `sleep_until`). Every event is
written, and so flushed, on its own; TCP_NODELAY is set on every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from fathom.sim import typed, wire
from fathom.sim.models import BadKnob, ModelSpec
from fathom.sim.plan import TOOL_EVENTS, TYPED_APIS, Plan, make_plan
from fathom.sim.zoo import MEMBERS

Clock = Callable[[], float]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
ERROR_EVENT = {"error": {"message": "simulated failure mid-stream", "type": "server_error",
                         "param": None, "code": None}}  # fmt: skip


class Refused(Exception):
    """A request the simulated server rejects, as OpenAI does, with a JSON error."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class Simulator:
    """The request handlers; randomness comes from one seeded generator (or x-sim-seed)."""

    def __init__(
        self,
        models: Sequence[ModelSpec],
        seed: int = 0,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        self.models = {m.name: m for m in models}
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock, self.wall = clock, wall
        self.started = clock()

    def app(self) -> web.Application:
        """The web application serving the OpenAI routes."""
        app = web.Application(middlewares=[_json_errors])
        app.router.add_post("/v1/chat/completions", self.complete)
        app.router.add_post("/v1/completions", self.complete)
        app.router.add_post("/v1/responses", self.complete)
        app.router.add_post("/v1/messages", self.complete)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/health", self.health)
        app.router.add_post("/sim/zoo", self.switch_zoo)
        return app

    async def switch_zoo(self, request: web.Request) -> web.Response:
        """POST /sim/zoo {"model", "member"}: degrade a model's answers from now on ('' ends)."""
        try:
            body = await request.json()
            name, member = str(body["model"]), str(body["member"])
        except (ValueError, KeyError, TypeError):
            raise Refused(400, 'expected {"model": NAME, "member": ZOO_MEMBER or ""}') from None
        spec = self.models.get(name)
        if spec is None:
            raise Refused(404, f"no model {name!r}", "model_not_found")
        if member and member not in MEMBERS:
            raise Refused(400, f"member must be one of {', '.join(MEMBERS)}, or '' for none")
        self.models[name] = dataclasses.replace(spec, zoo=member, zoo_after_s=0.0)
        return web.json_response({"model": name, "member": member})

    async def health(self, _request: web.Request) -> web.Response:
        """GET /health."""
        return web.json_response({"status": "ok", "models": list(self.models)})

    async def list_models(self, _request: web.Request) -> web.Response:
        """GET /v1/models."""
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "fathom-sim"}
                for name in self.models]  # fmt: skip
        return web.json_response({"object": "list", "data": data})

    async def embeddings(self, request: web.Request) -> web.Response:
        """POST /v1/embeddings: deterministic vectors from a hash of each input."""
        body, spec = await self._read(request)
        raw = body.get("input", "")
        texts = [str(x) for x in raw] if isinstance(raw, list) else [str(raw)]
        dimensions = body.get("dimensions", 8)
        if not isinstance(dimensions, int) or not 1 <= dimensions <= 4096:
            raise Refused(400, "dimensions must be an integer in [1, 4096]")
        as_base64 = body.get("encoding_format") == "base64"
        data = [{"object": "embedding", "index": i,
                 "embedding": wire.embedding(text, dimensions, as_base64)}
                for i, text in enumerate(texts)]  # fmt: skip
        tokens = sum(len(t.split()) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return web.json_response(
            {"object": "list", "data": data, "model": spec.name, "usage": usage}
        )

    async def complete(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions, /v1/completions, /v1/responses and /v1/messages,
        streamed or not."""
        arrival = self.clock()
        body, spec = await self._read(request)
        api = API_OF_PATH[request.path.rstrip("/")]
        try:
            plan = make_plan(
                request.headers, body, spec, api, self._rng(request), self.seed,
                arrival - self.started,
            )  # fmt: skip
        except BadKnob as exc:
            raise Refused(400, str(exc)) from None
        await sleep_until(self.clock, arrival + plan.faults.first_byte_stall_s)
        if plan.faults.http_status:
            status = plan.faults.http_status
            body = wire.error_body(status, f"simulated upstream failure ({status})")
            return web.json_response(body, status=status)
        if plan.stream:
            return await self._stream(request, plan, arrival)
        return await self._whole(request, plan, arrival)

    def _rng(self, request: web.Request) -> random.Random:
        """The request's randomness: the shared generator, or its own one if it names a seed."""
        own = request.headers.get("x-sim-seed")
        return self.rng if own is None else random.Random(f"{self.seed}/request/{own}")

    async def _read(self, request: web.Request) -> tuple[dict[str, Any], ModelSpec]:
        try:
            body = await request.json()
        except ValueError:
            raise Refused(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(body, dict):
            raise Refused(400, "The request body must be a JSON object.")
        spec = self.models.get(str(body.get("model", "")))
        if spec is None:
            message = (
                f"The model `{body.get('model')}` does not exist or you do not have access to it."
            )
            raise Refused(404, message, "model_not_found")
        return body, spec

    async def _whole(self, request: web.Request, plan: Plan, arrival: float) -> web.StreamResponse:
        """A non-streamed answer, sent when its last token would have been."""
        ending = plan.faults.ending(plan.events)
        if ending is not None:
            at, kind = ending
            await sleep_until(self.clock, arrival + plan.due[at])
            if kind == "error":
                return web.json_response(wire.error_body(500, "simulated failure"), status=500)
            _abort(request, rst=kind == "reset")
            return web.Response()  # never sent: the connection is gone
        await sleep_until(self.clock, arrival + plan.due[-1])
        if plan.api in TYPED_APIS:
            out = typed.whole(plan, int(self.wall()))
            return web.json_response(out, headers={"x-sim-answer": plan.kind})
        text = "".join(plan.tokens)
        extra: dict[str, Any] = {}
        if plan.reasoning:
            extra["reasoning_content"] = "".join(map(wire.reasoning_piece, range(plan.reasoning)))
        if plan.tools:
            extra["tool_calls"] = wire.tool_calls_message(plan.tools)
        out = wire.completion(
            plan.model, plan.chat, int(self.wall()), text, plan.finish, plan.usage, extra
        )
        return web.json_response(out, headers={"x-sim-answer": plan.kind})

    async def _stream(self, request: web.Request, plan: Plan, arrival: float) -> web.StreamResponse:
        headers = {**SSE_HEADERS, "x-sim-answer": plan.kind}
        if plan.trace:  # CLOCK_MONOTONIC is one clock for every process on the machine
            headers["x-sim-arrival-monotonic"] = f"{arrival:.6f}"
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        _nodelay(request)
        events = _Events(resp, plan, self.clock, arrival, int(self.wall()))
        with contextlib.suppress(ConnectionResetError):  # the client went away: nothing to do
            await self._events(request, events, plan, arrival)
        return resp

    async def _events(
        self, request: web.Request, events: _Events, plan: Plan, arrival: float
    ) -> None:
        if plan.api in TYPED_APIS:
            return await self._typed_events(request, events, plan, arrival)
        if plan.chat:
            role = {"role": "assistant", "content": ""}
            await events.chunk(role, None, plan.faults.first_byte_stall_s)
        ending = plan.faults.ending(plan.events)
        for i, due in enumerate(plan.due):
            await sleep_until(self.clock, arrival + due)
            if ending is not None and i == ending[0]:
                return await events.end_with(request, ending[1], due)
            if i < plan.events:
                await events.content(i, due)
        await events.chunk({} if plan.chat else "", plan.finish, plan.due[-1])
        if plan.include_usage:
            choices: list[dict[str, Any]] = []
            envelope = wire.envelope(plan.model, plan.chat, True, events.created, choices)
            await events.send(wire.dumps({**envelope, "usage": plan.usage}), plan.due[-1])
        await events.done()

    async def _typed_events(
        self, request: web.Request, events: _Events, plan: Plan, arrival: float
    ) -> None:
        """A responses or messages stream: typed events on the plan's schedule, no [DONE]."""
        stream = typed.TypedStream(plan, events.created)
        start = plan.faults.first_byte_stall_s
        for kind, body in stream.opening():
            await events.send(wire.dumps(body), start, kind)
        ending = plan.faults.ending(plan.events)
        for i, due in enumerate(plan.due):
            await sleep_until(self.clock, arrival + due)
            if ending is not None and i == ending[0]:
                return await events.end_with(request, ending[1], due, stream.error())
            if i < plan.events:
                for kind, body in stream.at(i):
                    encoded = wire.dumps(body)
                    if kind in typed.DELTAS:  # not the part's opening or closing events
                        encoded = events.padded(i, encoded)
                    await events.send(encoded, due, kind)
        for kind, body in stream.closing():
            await events.send(wire.dumps(body), plan.due[-1], kind)
        await events.resp.write_eof()


# The routes that generate, by path: their API (fathom.sim.plan.APIS).
API_OF_PATH = {"/v1/chat/completions": "chat", "/v1/completions": "completion",
               "/v1/responses": "responses", "/v1/messages": "messages"}  # fmt: skip


class _Events:
    """Writes the SSE events of one response, stamping send times when tracing."""

    def __init__(
        self, resp: web.StreamResponse, plan: Plan, clock: Clock, arrival: float, created: int
    ) -> None:
        self.resp, self.plan, self.clock, self.arrival = resp, plan, clock, arrival
        self.created = created
        self.contents = wire.ContentChunks(plan.model, plan.chat, created)

    async def send(self, encoded: bytes, due: float, event: str = "") -> None:
        """One event (named `event`, when given); with tracing, stamped with when it was due
        and when it left (ms)."""
        if self.plan.trace:
            sent = (self.clock() - self.arrival) * 1e3
            stamps = {"sim_t_ms": round(sent, 3), "sim_due_ms": round(due * 1e3, 3)}
            encoded = wire.with_fields(encoded, stamps)
        await self.resp.write(wire.sse(encoded, self.plan.wire, event))

    def padded(self, i: int, encoded: bytes) -> bytes:
        """Event i, padded when it is the first answer-text event of a `huge` wire variant."""
        if i == self.plan.reasoning and self.plan.wire.huge_bytes and self.plan.tokens:
            return wire.with_fields(encoded, {"sim_padding": "x" * self.plan.wire.huge_bytes})
        return encoded

    async def chunk(self, delta: dict[str, Any] | str, finish: str | None, due: float) -> None:
        """A chunk of the answer other than content: the role, the finish."""
        model, chat = self.plan.model, self.plan.chat
        await self.send(wire.dumps(wire.chunk(model, chat, self.created, delta, finish)), due)

    async def content(self, i: int, due: float) -> None:
        """Content event i: reasoning, then one token each (the first one padded, for the
        `huge` wire variant), then the tool calls."""
        plan = self.plan
        if not plan.reasoning <= i < plan.reasoning + len(plan.tokens):
            await self.chunk(self._aside(i), None, due)
            return
        encoded = self.contents.encode(plan.tokens[i - plan.reasoning])
        if i == plan.reasoning and self.plan.wire.huge_bytes:
            encoded = wire.with_fields(encoded, {"sim_padding": "x" * self.plan.wire.huge_bytes})
        await self.send(encoded, due)

    def _aside(self, i: int) -> dict[str, Any]:
        """The delta of content event i that is not answer text: reasoning or a tool call."""
        plan = self.plan
        if i < plan.reasoning:
            return {"reasoning_content": wire.reasoning_piece(i)}
        call, part = divmod(i - plan.reasoning - len(plan.tokens), TOOL_EVENTS)
        return wire.tool_call_deltas(call, plan.tools[call])[part]

    async def end_with(
        self, request: web.Request, kind: str, due: float, error: typed.Event | None = None
    ) -> None:
        """End the stream early: an error event (chat's, or `error` as a typed event),
        a clean close or a reset."""
        if kind == "error" and error is not None:
            await self.send(wire.dumps(error[1]), due, error[0])
        elif kind == "error":
            await self.send(wire.dumps(ERROR_EVENT), due)
        if kind == "reset":
            _abort(request, rst=True)
        else:
            await self.resp.write_eof()

    async def done(self) -> None:
        """`data: [DONE]` and the end of the body."""
        await self.resp.write(wire.sse(b"[DONE]", self.plan.wire))
        await self.resp.write_eof()


async def sleep_until(clock: Clock, target: float) -> None:
    """Return at `target` or just after, never before.

    uvloop's timers count whole milliseconds (a delay is rounded to the nearest one), so a
    sleep can wake up to 0.5 ms early: sleep again for what is left. That last fraction of
    a millisecond rounds to a zero-delay timer, a few loop turns, which measured later than
    rounding every delay up (p50 0.4-0.6 ms late vs 0.8-1.2 ms) at the same CPU cost.
    """
    while (left := target - clock()) > 0:  # noqa: ASYNC110 - a deadline, not a condition
        await asyncio.sleep(left)


def _nodelay(request: web.Request) -> None:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _abort(request: web.Request, rst: bool) -> None:
    """Drop the connection; with `rst`, as a reset (SO_LINGER 0) rather than a FIN."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if rst and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort() if rst else transport.close()


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors as OpenAI spells them: a JSON body with message, type, param and code."""
    try:
        return await handler(request)
    except Refused as exc:
        return web.json_response(wire.error_body(exc.status, str(exc), exc.code), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = f"Invalid URL ({request.method} {request.path})"
        return web.json_response(wire.error_body(exc.status, message), status=exc.status)


async def start(sim: Simulator, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Serve `sim` on host:port (port 0: any free one); the runner and the bound base URL."""
    # A short shutdown timeout: simulated streams are not worth waiting for on exit.
    runner = web.AppRunner(sim.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=4096).start()
    bound_host, bound_port = runner.addresses[0][:2]
    if ":" in bound_host:
        bound_host = f"[{bound_host}]"
    return runner, f"http://{bound_host}:{bound_port}"
