"""The measuring reverse proxy: bytes pass through untouched, one Record per request."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from sidecar.chunk import Chunk
from sidecar.metrics import LabelCap
from sidecar.proxy_settings import ProxySettings
from sidecar.record import Record
from sidecar.routing import Upstream
from sidecar.sampler import StreamAnswer, storable
from sidecar.sse import PartTiming, SSEParser, StreamTiming, classify
from sidecar.toolcalls import answer_tool_calls
from sidecar.wire import (
    DEPLOYMENT_HEADER,
    LABELLED_ORIGINS,
    ORIGIN_HEADER,
    PROBE_TOKEN_HEADER,
    REQUEST_ID_HEADER,
    parse_answer,
)

# RFC 9110 hop-by-hop headers, plus those the proxy recomputes for its own connections.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "trailers", "transfer-encoding", "upgrade", "host", "content-length"}
)  # fmt: skip
MEASURED = ("chat", "completion", "embedding", "responses", "messages")
# Routes whose streams give usage only when asked (`stream_options.include_usage`); responses
# and messages streams always end with it, and their servers may refuse the option.
ASK_USAGE = ("chat", "completion")
LOOPBACK = frozenset({"127.0.0.1", "::1"})
ANSWER_CAP = 1024 * 1024  # bytes of a non-streamed body kept for parsing usage and the answer

Clock = Callable[[], float]


def route_of(path: str) -> str:
    """Which operation a request path is (a value of sidecar.record.ROUTES)."""
    path = path.rstrip("/")
    for suffix, route in _SUFFIXES:
        if path.endswith(suffix):
            return route
    return "other"


_SUFFIXES = (
    ("/chat/completions", "chat"),
    ("/completions", "completion"),
    ("/embeddings", "embedding"),
    # With /v1: .../chat/completions/{id}/messages and .../threads/{id}/messages are not these.
    ("/v1/responses", "responses"),
    ("/v1/messages", "messages"),  # Anthropic-style, as vLLM and llama.cpp serve it
)


@dataclass(slots=True)
class Exchange:
    """One request in flight: its record plus what the proxy needs while relaying it."""

    record: Record
    t0: float
    timing: StreamTiming = field(default_factory=StreamTiming)
    parts: PartTiming = field(default_factory=PartTiming)
    strip_usage: bool = False
    sample: bool = False
    body: bytes = b""
    answer: StreamAnswer = field(default_factory=StreamAnswer)


class ProxyError(Exception):
    """A failure before the client got a response: becomes a JSON error and a record."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


OnRecord = Callable[[Record, list[float]], None]
OnAnswer = Callable[[Record, bytes, str], None]
ShouldSample = Callable[[Record, Mapping[str, str]], bool]


class Proxy:
    """An aiohttp handler that relays requests to the upstream and measures them."""

    def __init__(
        self,
        settings: ProxySettings,
        session: aiohttp.ClientSession,
        pick: Callable[[str, str], Upstream],
        on_record: OnRecord,
        clock: Clock,
        rng: random.Random,
        should_sample: ShouldSample | None = None,
        on_answer: OnAnswer | None = None,
        refusing: Callable[[], bool] = lambda: False,
        answer_chars: int = 0,  # characters of a sampled answer kept for on_answer
    ) -> None:
        self._settings = settings
        self._answer_chars = answer_chars
        self._refusing = refusing
        self._session = session
        self._pick = pick
        self._on_record = on_record
        self._clock = clock
        self._should_sample = should_sample
        self._on_answer = on_answer
        self._rng = rng  # request ids: unique, not secret (os.urandom would be a syscall each)
        self._salt = settings.client_salt.encode() or rng.randbytes(16)
        self._tenants = LabelCap(settings.tenant_cap)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Relay one request; always leaves exactly one Record behind."""
        t0 = self._clock()
        answer = StreamAnswer(self._answer_chars)
        ex = Exchange(record=self._new_record(request), t0=t0, answer=answer)
        try:
            return await self._relay(request, ex)
        except ProxyError as exc:
            ex.record.status, ex.record.error = exc.status, exc.error
            ex.record.error_detail = str(exc)[:200]
            response = _json_error(exc.status, exc.error, str(exc))
            if exc.status == 408:
                await _answer_and_close(request, response)
            elif exc.error == "draining":
                response.headers["Retry-After"] = "1"
                response.force_close()  # the client's pool must not keep this pod's connection
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            ex.record.error = ex.record.error or "client_cancelled"
            raise
        finally:
            ex.record.e2e_ms = (self._clock() - t0) * 1e3
            self._finish(ex)

    def _new_record(self, request: web.Request) -> Record:
        origin = request.headers.get(ORIGIN_HEADER, "user")
        auth = request.headers.get("Authorization") or request.remote or ""
        client = _client_hash(self._salt, auth)
        return Record(
            ts=datetime.now(UTC),
            request_id=f"{self._rng.getrandbits(128):032x}",
            route=route_of(request.path),
            origin=origin if origin in LABELLED_ORIGINS and self._prober(request) else "user",
            path=request.path[:256],
            client=client,
            tenant=self._tenant_of(request, client),
        )

    def _tenant_of(self, request: web.Request, client: str) -> str:
        """The tenant a request is for: its tenant header, or its hashed credential, capped."""
        header = self._settings.tenant_header
        named = request.headers.get(header, "") if header else ""
        if not named and self._settings.tenant_credential:
            named = client
        return self._tenants(named) if named else ""

    def _prober(self, request: web.Request) -> bool:
        """Whether a request may label itself probe traffic (unsampled, routable by header)."""
        token = self._settings.probe_token
        if not token:
            return request.remote in LOOPBACK
        offered = request.headers.get(PROBE_TOKEN_HEADER, "")
        return hmac.compare_digest(offered.encode("utf-8", "replace"), token.encode())

    async def _relay(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        rec = ex.record
        if self._refusing():
            # Drained: the model server may already be gone, and a 503 is what clients retry.
            raise ProxyError(503, "draining", "this replica is shutting down: retry the request")
        if _dot_segments(request.path):
            raise ProxyError(400, "bad_request", "request path has '.' or '..' segments")
        body = await _read_body(
            request, self._settings.max_body_bytes, self._settings.body_timeout_s
        )
        rec.request_bytes = len(body)
        body = self._inspect(ex, body)
        pinned = request.headers.get(DEPLOYMENT_HEADER, "") if rec.origin != "user" else ""
        upstream = self._pick(rec.model, pinned)
        rec.deployment = upstream.deployment
        rec.upstream = upstream.url.host or ""
        rec.extra["upstream_port"] = upstream.url.port  # for the span (sidecar.spans)
        if self._should_sample and rec.route in MEASURED:
            ex.sample = self._should_sample(rec, request.headers)
        # rel_url: an absolute-form target (GET http://host/x) names no upstream, only a path.
        url = upstream.url.with_path(
            upstream.url.path.rstrip("/") + request.rel_url.raw_path, encoded=True
        ).with_query(request.query_string)
        resp = await self._open(request, url, body)
        try:
            rec.status = resp.status
            if resp.status >= 400:
                rec.error = "upstream_http"
            try:
                first = await self._read(resp, first=True)
            except UpstreamBroke as exc:
                status = 504 if exc.error == "upstream_timeout" else 502
                raise ProxyError(status, exc.error, str(exc)) from exc
            rec.ttfb_ms = (self._clock() - ex.t0) * 1e3
            is_sse = resp.headers.get("Content-Type", "").startswith("text/event-stream")
            if is_sse and _identity(resp):
                return await self._relay_stream(request, resp, ex, first)
            return await self._relay_body(request, resp, ex, first)
        finally:
            # A fully read body frees the connection for reuse; anything else must not be.
            if resp.content.at_eof():
                resp.release()
            else:
                resp.close()

    def _inspect(self, ex: Exchange, body: bytes) -> bytes:
        """Read model and stream flags; ask for usage when the client streams without it."""
        rec = ex.record
        if rec.route not in MEASURED or not body:
            return body
        try:
            obj = json.loads(body)
        except ValueError:
            return body  # the upstream will answer it; the record shows its status
        if not isinstance(obj, dict):
            return body
        model = obj.get("model")
        # Client-chosen text: only a string, cut, and valid UTF-8 (JSON allows lone surrogates).
        rec.model = storable(model[:200]) if isinstance(model, str) else ""
        rec.stream = obj.get("stream") is True
        ex.body = body
        options = obj.get("stream_options")
        wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        ask = rec.route in ASK_USAGE and self._settings.inject_usage
        if rec.stream and not wants_usage and ask:
            obj["stream_options"] = {**(options or {}), "include_usage": True}
            ex.strip_usage = True
            return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        return body

    async def _open(self, request: web.Request, url: URL, body: bytes) -> aiohttp.ClientResponse:
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in HOP_BY_HOP and not k.lower().startswith("x-fathom-")
        }
        try:
            async with asyncio.timeout(self._settings.first_byte_timeout_s):
                return await self._session.request(
                    request.method, url, headers=headers, data=body or None,
                    allow_redirects=False,
                )  # fmt: skip
        except TimeoutError as exc:
            raise ProxyError(504, "upstream_timeout", "upstream sent no response in time") from exc
        except aiohttp.ClientConnectorError as exc:
            raise ProxyError(502, "upstream_connect", f"cannot connect to upstream: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise ProxyError(502, "upstream_connect", f"upstream failed: {exc!r}") from exc

    async def _read(self, resp: aiohttp.ClientResponse, first: bool = False) -> bytes:
        """Next chunk of the upstream body; b'' at its end. Timeouts: first byte, then idle."""
        limit = self._settings.first_byte_timeout_s if first else self._settings.idle_timeout_s
        try:
            async with asyncio.timeout(limit):
                return await resp.content.readany()
        except TimeoutError as exc:
            raise UpstreamBroke("upstream_timeout", f"upstream idle for {limit:g} s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamBroke("stream_error", f"upstream body failed: {exc!r}") from exc

    async def _relay_stream(
        self, request: web.Request, resp: aiohttp.ClientResponse, ex: Exchange, first: bytes
    ) -> web.StreamResponse:
        out = await self._start(request, resp, ex, first, streaming=True)
        parser = SSEParser(self._settings.max_event_bytes)
        chunk = first
        while True:
            now = self._clock()
            events = parser.feed(chunk, now) if chunk else parser.finish(now)
            # The events of one upstream chunk leave in one write, as they came.
            passed = b"".join(e.raw for e in events if self._observe(ex, classify(e.data), now))
            if passed:
                await out.write(passed)
                ex.record.response_bytes += len(passed)
            if not chunk:
                break
            try:
                chunk = await self._read(resp)
            except UpstreamBroke as exc:
                return await self._break(request, out, ex, exc)
        await out.write_eof()
        return out

    def _observe(self, ex: Exchange, chunk: Chunk, now: float) -> bool:
        """Fold one stream event into the record; False when the client must not see it."""
        rec = ex.record
        if chunk.content:
            ex.timing.content_at(now)
            ex.parts.note(chunk, now)
            if ex.sample and chunk.text:
                ex.answer.add(chunk)
        if chunk.tool_final:
            ex.parts.settle(chunk)
        if chunk.finish_reason:
            rec.finish_reason = chunk.finish_reason[:32]
            rec.extra["response_model"] = chunk.model[:200]  # the model that answered
        if chunk.usage:
            rec.apply_usage(chunk.usage)
        if chunk.error:
            rec.error, rec.error_detail = "stream_error", chunk.error
        rec.chunks += 1 if chunk.content else 0
        return not (ex.strip_usage and chunk.usage_only)

    async def _relay_body(
        self, request: web.Request, resp: aiohttp.ClientResponse, ex: Exchange, first: bytes
    ) -> web.StreamResponse:
        out = await self._start(request, resp, ex, first, streaming=False)
        kept = bytearray(first)
        chunk = first
        while chunk:
            try:
                chunk = await self._read(resp)
            except UpstreamBroke as exc:
                return await self._break(request, out, ex, exc)
            await out.write(chunk)
            ex.record.response_bytes += len(chunk)
            if len(kept) < ANSWER_CAP:
                kept += chunk
        await out.write_eof()
        if ex.record.route in MEASURED and resp.status < 400 and _identity(resp):
            _read_answer(ex, bytes(kept))
        return out

    async def _start(
        self,
        request: web.Request,
        resp: aiohttp.ClientResponse,
        ex: Exchange,
        first: bytes,
        streaming: bool,
    ) -> web.StreamResponse:
        headers = CIMultiDict(
            (k, v) for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP
        )
        if not streaming and "Content-Length" in resp.headers:
            headers["Content-Length"] = resp.headers["Content-Length"]
        if streaming:
            headers["X-Accel-Buffering"] = "no"
            headers.setdefault("Cache-Control", "no-cache")
        headers[REQUEST_ID_HEADER] = ex.record.request_id
        out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=headers)
        await out.prepare(request)
        if not streaming and first:
            await out.write(first)
            ex.record.response_bytes += len(first)
        return out

    async def _break(
        self, request: web.Request, out: web.StreamResponse, ex: Exchange, exc: UpstreamBroke
    ) -> web.StreamResponse:
        """The upstream failed mid-body: end the client's response so it sees a failure too."""
        rec = ex.record
        rec.error, rec.error_detail = exc.error, str(exc)[:200]
        if exc.error == "upstream_timeout" and rec.stream:
            # An explicit SSE error event: clients report it instead of hanging or retrying.
            await out.write(_error_event(rec.route, exc.error, str(exc)))
            await out.write_eof()
        elif request.transport is not None:
            request.transport.abort()  # mirror the upstream's broken body
        return out

    def _finish(self, ex: Exchange) -> None:
        rec, timing = ex.record, ex.timing
        if timing.first is not None:
            rec.ttft_ms = (timing.first - ex.t0) * 1e3
        if rec.tokens_source == "none" and rec.stream and timing.events:
            rec.output_tokens, rec.tokens_source = timing.events, "counted"
        itl = timing.itl_ms()
        if itl is not None:
            rec.itl_mean_ms, rec.itl_p50_ms, rec.itl_p99_ms, rec.itl_max_ms = itl
        rec.decode_tps = timing.decode_tps(rec.output_tokens) if rec.stream else None
        rec.fold_parts(ex.parts, ex.t0)
        rec.sampled = ex.sample and not rec.error and self._on_answer is not None
        self._on_record(rec, timing.gaps)
        if rec.sampled and self._on_answer is not None:
            self._on_answer(rec, ex.body, ex.answer.text)


class UpstreamBroke(Exception):
    """The upstream body ended abnormally after the response had started."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error


def _client_hash(salt: bytes, credential: str) -> str:
    """Who called, without keeping the credential: a salted hash of it."""
    # aiohttp keeps undecodable header bytes as surrogates: hash them as they came.
    return hashlib.sha256(salt + credential.encode("utf-8", "surrogateescape")).hexdigest()[:16]


async def _read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise ProxyError(413, "bad_request", f"request body over {limit} bytes")
    body = bytearray()
    try:
        # One deadline for the whole body: a client dripping a byte at a time is cut too.
        async with asyncio.timeout(timeout_s):
            async for chunk in request.content.iter_any():
                body += chunk
                if len(body) > limit:
                    raise ProxyError(413, "bad_request", f"request body over {limit} bytes")
    except TimeoutError as exc:
        message = f"request body not received within {timeout_s:g} s (body_timeout_s)"
        raise ProxyError(408, "client_timeout", message) from exc
    return bytes(body)


def _dot_segments(path: str) -> bool:
    """Whether a decoded path has '.' or '..' segments: they could leave the upstream's path."""
    return any(segment in (".", "..") for segment in path.split("/"))


async def _answer_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Send `response`, then hang up: lingering to read the rest of a too-slow body helps no one."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    if request.transport is not None:
        request.transport.close()  # once the response is flushed


def _identity(resp: aiohttp.ClientResponse) -> bool:
    return resp.headers.get("Content-Encoding", "identity").lower() == "identity"


def _read_answer(ex: Exchange, body: bytes) -> None:
    """Usage, model, finish reason and answer text of a non-streamed response."""
    try:
        obj = json.loads(body)
    except ValueError:
        return
    if not isinstance(obj, dict):
        return
    if isinstance(obj.get("usage"), dict):
        ex.record.apply_usage(obj["usage"])
    answer = parse_answer(obj)  # the sampler's reading of a response: one reading for both
    ex.record.finish_reason = answer.finish_reason[:32]
    if isinstance(obj.get("model"), str):
        ex.record.extra["response_model"] = obj["model"][:200]
    ex.record.count_tools(answer_tool_calls(obj))
    if ex.sample:
        ex.answer.add(Chunk(text=answer.text))


def _error_event(route: str, error: str, message: str) -> bytes:
    """An SSE error event as the route's clients read one: typed APIs name it `error`."""
    named: dict[str, object]
    if route == "responses":
        named = {"type": "error", "code": error, "message": message, "param": None}
    elif route == "messages":
        named = {"type": "error", "error": {"type": error, "message": message}}
    else:
        chat = {"error": {"message": message, "type": error, "code": 504}}
        return b"data: " + json.dumps(chat).encode() + b"\n\n"
    return b"event: error\ndata: " + json.dumps(named).encode() + b"\n\n"


def _json_error(status: int, error: str, message: str) -> web.Response:
    body = {"error": {"message": message, "type": error, "code": status}}
    return web.json_response(body, status=status)
