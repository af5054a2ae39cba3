"""Hostile clients and hostile bytes, over real sockets: the proxy answers cleanly or refuses.

Already covered elsewhere and not repeated here: a body over the limit by Content-Length (413,
tests/test_proxy.py), the SSE parser fuzzed in isolation (tests/test_sse.py), label folding
of the metrics class (tests/test_serve.py). This file adds what a hostile peer does on the wire:
slow bodies and headers, absurd headers, bodies that are not what they claim, SSRF attempts
through the request target and headers, fuzzed SSE through the whole proxy, hostile model names.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import json
import queue
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from hypothesis import example, given, settings
from hypothesis import strategies as st
from yarl import URL

from fathom import settings as config
from fathom.settings import Settings
from sidecar.config import ConfigError
from sidecar.record import Record
from sidecar.wire import ORIGIN_HEADER, PROBE_TOKEN_HEADER, REQUEST_ID_HEADER
from tests.support.proxied import Proxied, proxied
from tests.support.servers import serving

CHAT = "/v1/chat/completions"
HELLO = {"model": "sim", "messages": [{"role": "user", "content": "hi"}]}


# ---------------------------------------------------------------------------- wire helpers


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw TCP connection to a server's base URL."""
    parsed = URL(url)
    return await asyncio.open_connection(parsed.host, parsed.port)


async def until_closed(reader: asyncio.StreamReader, deadline_s: float = 5.0) -> bytes:
    """Everything the server sends until it closes; fails the test if it never does."""
    async with asyncio.timeout(deadline_s):
        return await reader.read()


async def exchange(url: str, request: bytes) -> bytes:
    """Send raw request bytes on a fresh connection; the raw response up to the close."""
    reader, writer = await connect(url)
    try:
        writer.write(request)
        await writer.drain()
        return await until_closed(reader)
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def json_body(response: bytes) -> dict[str, object]:
    body: dict[str, object] = json.loads(response.split(b"\r\n\r\n", 1)[1])
    return body


def post_head(path: str, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}".encode()


@dataclass(slots=True)
class Mirror:
    """An upstream that keeps what the proxy sent it; SSE payloads are served by `x-fuzz` key."""

    seen: list[tuple[str, str, str, bytes]] = field(default_factory=list)  # path, host, type, body
    streams: dict[str, list[bytes]] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = request.headers
        self.seen.append((request.raw_path, headers.get("Host", ""),
                          headers.get("Content-Type", ""), body))  # fmt: skip
        pieces = self.streams.get(request.headers.get("x-fuzz", ""))
        if pieces is None:
            return web.json_response({"ok": True})
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        for piece in pieces:
            await out.write(piece)
        await out.write_eof()
        return out


@contextlib.asynccontextmanager
async def mirror_upstream() -> AsyncIterator[tuple[Mirror, str]]:
    """A Mirror served on a free port of 127.0.0.1; yields it and its base URL."""
    mirror = Mirror()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", mirror.handle)
    async with serving(app) as url:
        yield mirror, url


# ---------------------------------------------------------------------------- slow clients


def test_client_timeouts_default_and_are_configurable() -> None:
    assert (Settings().proxy.body_timeout_s, Settings().proxy.header_timeout_s) == (30.0, 60.0)
    env = {"FATHOM_BODY_TIMEOUT_S": "5", "FATHOM_HEADER_TIMEOUT_S": "7.5"}
    loaded = config.load(None, env)
    assert (loaded.proxy.body_timeout_s, loaded.proxy.header_timeout_s) == (5.0, 7.5)
    with pytest.raises(ConfigError, match="body_timeout_s must be > 0"):
        config.load(None, {"FATHOM_BODY_TIMEOUT_S": "0"})


async def drip(writer: asyncio.StreamWriter, byte: bytes, every_s: float) -> None:
    """Send one byte at a time, forever, as a slowloris client does (until the server hangs up)."""
    with contextlib.suppress(ConnectionError):
        while not writer.is_closing():
            writer.write(byte)
            await writer.drain()
            await asyncio.sleep(every_s)  # pacing the attack, not waiting for a result


@pytest.mark.parametrize("style", ["stalled", "dripping", "chunked"])
async def test_slow_body_gets_408_json_and_a_record(simulator: str, style: str) -> None:
    chunked = style == "chunked"
    length = "Transfer-Encoding: chunked" if chunked else "Content-Length: 1000"
    async with proxied(simulator, body_timeout_s=0.5) as proxy:
        reader, writer = await connect(proxy.url)
        start = time.perf_counter()
        # A start of the body, then (stalled) nothing or (dripping) a byte every 50 ms.
        writer.write(post_head(CHAT, f"{length}\r\n\r\n") + (b"40\r\n" if chunked else b""))
        writer.write(b'{"model": "sim"')
        dripper = asyncio.create_task(drip(writer, b" ", 0.05)) if style == "dripping" else None
        response = await until_closed(reader)  # the server closes: no lingering on this client
        elapsed = time.perf_counter() - start
        if dripper is not None:
            dripper.cancel()
        writer.close()
        [record] = proxy.records.values()
    assert status_of(response) == 408 and 0.45 < elapsed < 3.0
    assert json_body(response)["error"] == {
        "message": "request body not received within 0.5 s (body_timeout_s)",
        "type": "client_timeout",
        "code": 408,
    }
    assert (record.route, record.status, record.error) == ("chat", 408, "client_timeout")


async def test_slow_headers_are_cut_at_the_header_timeout(simulator: str) -> None:
    async with proxied(simulator, header_timeout_s=0.5) as proxy:
        timings = []
        for style in ("stalled", "dripping"):
            reader, writer = await connect(proxy.url)
            start = time.perf_counter()
            writer.write(post_head(CHAT, "X-Slow: "))
            dripper = asyncio.create_task(drip(writer, b"a", 0.05)) if style == "dripping" else None
            response = await until_closed(reader)
            timings.append(time.perf_counter() - start)
            if dripper is not None:
                dripper.cancel()
            writer.close()
            assert response == b""  # closed without a word: there is no request to answer
        assert not proxy.records
    assert all(0.45 < t < 3.0 for t in timings), timings


async def test_header_timeout_does_not_cut_a_long_stream(simulator: str) -> None:
    body = {**HELLO, "stream": True}
    async with proxied(simulator, header_timeout_s=0.2) as proxy, aiohttp.ClientSession() as s:
        headers = {"x-sim-tokens": "50", "x-sim-itl-ms": "10"}  # about 0.5 s of streaming
        async with s.post(proxy.url + CHAT, json=body, headers=headers) as resp:
            data = await resp.read()
        [record] = proxy.records.values()
    assert data.rstrip().endswith(b"data: [DONE]")
    assert record.error == "" and record.output_tokens == 50 and record.e2e_ms > 400


# ---------------------------------------------------------------------------- absurd headers

ABSURD = {
    "header line over 8190 bytes": post_head(CHAT, "X-Big: " + "a" * 9000 + "\r\n\r\n"),
    "request target over 8190 bytes": b"GET /v1/models?" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
    "200 headers": post_head(CHAT, "".join(f"X-H{i}: v\r\n" for i in range(200)) + "\r\n"),
    "control byte in a header": post_head(CHAT, "Authorization: Bearer k\x01\r\n\r\n"),
    "header without a colon": post_head(CHAT, "NoColonHere\r\n\r\n"),
    "TLS on the HTTP port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    "conflicting lengths": post_head(CHAT, "Content-Length: 3\r\nContent-Length: 5\r\n\r\nabc"),
}


async def test_absurd_headers_get_400_and_close_and_the_proxy_lives_on(simulator: str) -> None:
    async with proxied(simulator) as proxy, aiohttp.ClientSession() as session:
        for name, request in ABSURD.items():
            response = await exchange(proxy.url, request)
            assert status_of(response) == 400, name
        assert not proxy.records  # refused by the HTTP parser, before the proxy saw a request
        async with session.post(proxy.url + CHAT, json=HELLO) as resp:
            assert resp.status == 200


async def test_chunked_body_over_the_limit_gets_413(simulator: str) -> None:
    chunks = b"".join(b"400\r\n" + b"x" * 1024 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    request = post_head(CHAT, "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n") + chunks
    async with proxied(simulator, max_body_bytes=1024) as proxy:
        response = await exchange(proxy.url, request)
        [record] = proxy.records.values()
    assert status_of(response) == 413
    assert json_body(response)["error"]["type"] == "bad_request"  # type: ignore[index]
    assert record.error == "bad_request"


# ---------------------------------------------------------------------------- odd bodies

MALFORMED = [b'{"model": "sim", "messages": [', b"[1, 2]", b'"sim"', b"",
             b'{"model": 7, "messages": []}', b'{"model": {"$ne": null}}']  # fmt: skip


async def test_malformed_json_passes_through_and_is_recorded_as_unknown_model(
    simulator: str,
) -> None:
    async with proxied(simulator) as proxy, aiohttp.ClientSession() as session:
        for body in MALFORMED:
            answers = []
            for base in (simulator, proxy.url):
                headers = {"Content-Type": "application/json"}
                async with session.post(base + CHAT, data=body, headers=headers) as resp:
                    answers.append((resp.status, await resp.read()))
            assert answers[0] == answers[1], body  # the upstream decides, and its answer arrives
        records = sorted(proxy.records.values(), key=lambda r: r.request_bytes)
        metrics = proxy.service.metrics.exposition().decode()
    assert sorted(r.request_bytes for r in records) == sorted(len(b) for b in MALFORMED)
    # Unknown model: '' in the store (the probe worker skips it), 'unknown' as a metrics label.
    assert all(r.model == "" and r.route == "chat" and r.status >= 400 for r in records)
    assert all(r.error == "upstream_http" for r in records)
    assert 'gen_ai_request_model="unknown"' in metrics


ODD_BODIES = [
    ("text/plain", b'{"model": "m", "messages": []}', "m"),
    ("application/x-www-form-urlencoded", b"model=m&prompt=hi", ""),
    ("application/json", b'{"model": "m", "messages": [{"content": "\xff\xfe\xc3("}]}', ""),
    ("application/json", b'{"model": "m", "stream": true, "messages": "\xc0\xaf"}', ""),
    ("application/json; charset=latin-1", b'{"model": "m", "prompt": "caf\xe9"}', ""),
    ("application/octet-stream", bytes(range(256)), ""),
]


async def test_odd_content_types_and_invalid_utf8_pass_through_byte_identical() -> None:
    async with mirror_upstream() as (mirror, base), proxied(base) as proxy:
        async with aiohttp.ClientSession() as session:
            for content_type, body, _ in ODD_BODIES:
                headers = {"Content-Type": content_type}
                async with session.post(proxy.url + CHAT, data=body, headers=headers) as resp:
                    assert resp.status == 200 and await resp.json() == {"ok": True}
        records = list(proxy.records.values())
    assert [(ctype, sent) for _, _, ctype, sent in mirror.seen] == [b[:2] for b in ODD_BODIES]
    assert [r.model for r in records] == [b[2] for b in ODD_BODIES]  # JSON is read, whatever type
    assert not any(r.stream for r in records)  # unparsed: nothing injected, nothing re-serialised


# ---------------------------------------------------------------------------- SSRF


@contextlib.asynccontextmanager
async def evil_listener() -> AsyncIterator[tuple[str, list[bytes]]]:
    """Where an attacker wants the proxy to connect: yields its host:port and what reached it."""
    hits: list[bytes] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hits.append(await reader.read(100))
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}", hits
    finally:
        server.close()
        await server.wait_closed()


def ssrf_cases(evil: str) -> list[tuple[str, str, int, str | None]]:
    """(name, request head, status, path the configured upstream must see; None: refused)."""
    return [
        ("absolute-form", f"GET http://{evil}/v1/models HTTP/1.1", 200, "/base/v1/models"),
        ("absolute https", f"GET https://{evil}/v1/x?a=1 HTTP/1.1", 200, "/base/v1/x?a=1"),
        ("host headers", f"GET /v1/models HTTP/1.1\r\nX-Forwarded-Host: {evil}\r\n"
         f"Forwarded: host={evil};proto=http\r\nX-Forwarded-Proto: http", 200, "/base/v1/models"),
        ("network-path", f"GET //{evil}/v1/models HTTP/1.1", 200, f"/base//{evil}/v1/models"),
        ("encoded slashes", f"GET /%2F%2F{evil}/x HTTP/1.1", 200, f"/base/%2F%2F{evil}/x"),
        ("pinned deployment", f"GET /v1/models HTTP/1.1\r\nx-fathom-origin: probe\r\n"
         f"x-fathom-deployment: http://{evil}", 200, "/base/v1/models"),
        ("dot-dot", "GET /v1/../../admin HTTP/1.1", 400, None),
        ("encoded dot-dot", "GET /v1/%2e%2E/%2e%2e%2Fadmin HTTP/1.1", 400, None),
        ("dot", "GET /v1/./models HTTP/1.1", 400, None),
        ("CONNECT", f"CONNECT {evil} HTTP/1.1", 404, None),
        ("authority only", f"GET http://{evil} HTTP/1.1", 404, None),
        ("asterisk", "OPTIONS * HTTP/1.1", 404, None),
        ("userinfo", f"GET @{evil}/v1/models HTTP/1.1", 400, None),
    ]  # fmt: skip


async def test_upstream_is_fixed_by_configuration_never_by_the_request() -> None:
    async with evil_listener() as (evil, hits), mirror_upstream() as (mirror, base):
        upstream_host = URL(base).raw_authority
        async with proxied(base + "/base") as proxy:
            for name, head, status, path in ssrf_cases(evil):
                before = len(mirror.seen)
                request = f"{head}\r\nHost: {evil}\r\nConnection: close\r\n\r\n".encode()
                response = await exchange(proxy.url, request)
                assert status_of(response) == status, (name, response[:200])
                if path is None:
                    assert len(mirror.seen) == before, name
                    continue
                seen_path, seen_host, _, _ = mirror.seen[-1]
                assert (seen_path, seen_host) == (path, upstream_host), name
    assert hits == []


# ---------------------------------------------------------------------------- SSE fuzzing

# SSE-shaped events from hostile parts; the stream is then cut into reads at random points.
PREFIXES = [b"data: ", b"data:", b": ping", b"event: x\ndata: ", b"data: \r\ndata: ", b""]
PAYLOADS = [b'{"choices":[{"delta":{"content":"hi"}}]}', b'{"choices":[{"text":"t"}]}',
            b'{"choices":[{"delta":{"content":"\xff\xfe\xc3"}}]}', b"[DONE]", b"y" * 300,
            b'{"error":{"message":"boom"}}', b'{"choices":[{"delta":{"content":"cut',
            b'{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}']  # fmt: skip
ENDINGS = [b"\n\n", b"\r\n\r\n", b"\r\r", b"\n", b"\r", b""]
EVENT = st.builds(
    lambda *parts: b"".join(parts),
    st.sampled_from(PREFIXES),
    st.one_of(st.sampled_from(PAYLOADS), st.binary(max_size=30)),
    st.sampled_from(ENDINGS),
)
STREAM_REQUEST = json.dumps(
    {**HELLO, "stream": True, "stream_options": {"include_usage": True}}
).encode()


def fetch_fuzzed(url: str, mirror: Mirror, records: queue.Queue[Record], key: str) -> bytes:
    """POST a streamed chat whose answer is the payload stored under `key`; wait for its record."""
    parsed = URL(url)
    conn = http.client.HTTPConnection(parsed.host or "", parsed.port, timeout=5)
    try:
        conn.request("POST", CHAT, STREAM_REQUEST, {"x-fuzz": key, "Content-Type": "json"})
        resp = conn.getresponse()
        data, request_id = resp.read(), resp.getheader(REQUEST_ID_HEADER)
    finally:
        conn.close()
    while (record := records.get(timeout=5)).request_id != request_id:
        pass  # a record of an earlier example that was still finishing
    assert record.e2e_ms < 5000
    return data


def fuzz_through(proxy: Proxied, mirror: Mirror) -> int:
    """Hypothesis: any bytes, cut anywhere, arrive unchanged and every stream ends."""
    records: queue.Queue[Record] = queue.Queue()
    proxy.service.listeners.append(records.put)
    examples: list[str] = []

    # The generated examples are not all the same from run to run (they shift with the code
    # under test), so the error event the final assertion needs is given explicitly.
    @settings(max_examples=60, deadline=None, database=None, derandomize=True)
    @given(st.lists(EVENT, max_size=20), st.lists(st.integers(0, 2000), max_size=10))
    @example([b'data: {"error":{"message":"boom"}}\n\n'], [7])
    def check(events: list[bytes], cuts: list[int]) -> None:
        stream, key = b"".join(events), str(len(examples))
        examples.append(key)
        points = sorted({0, len(stream), *(min(c, len(stream)) for c in cuts)})
        mirror.streams[key] = [stream[a:b] for a, b in itertools.pairwise(points) if b > a]
        assert fetch_fuzzed(proxy.url, mirror, records, key) == stream

    check()
    return len(examples)


async def test_fuzzed_sse_passes_through_the_proxy_unchanged_and_never_hangs() -> None:
    async with mirror_upstream() as (mirror, base), proxied(base, max_event_bytes=256) as proxy:
        examples = await asyncio.to_thread(fuzz_through, proxy, mirror)
        records = list(proxy.records.values())
    assert examples == len(records) == 61  # 60 generated, 1 given
    assert {r.error for r in records} == {"", "stream_error"}  # error events were met and read
    assert sum(r.chunks for r in records) > 0  # content events were found, not just bytes


# ---------------------------------------------------------------------------- model names


async def test_hostile_model_names_keep_metrics_bounded_and_renderable(simulator: str) -> None:
    names = ["x" * 100_000, "\\ud800x", "a\\nb", "\\u0000"] + [f"m-{i}" for i in range(20)]
    async with proxied(simulator, model_label_cap=4) as proxy, aiohttp.ClientSession() as s:
        for name in names:  # the JSON escapes arrive as lone surrogates and control characters
            body = ('{"model": "' + name + '", "messages": []}').encode()
            async with s.post(proxy.url + CHAT, data=body) as resp:
                assert resp.status == 404  # the simulator knows only "sim"
        async with s.get(proxy.service.addresses["admin"] + "/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        models = {r.model for r in proxy.records.values()}
    labels = {line.split('gen_ai_request_model="')[1].split('"')[0]
              for line in text.splitlines() if 'gen_ai_request_model="' in line}  # fmt: skip
    # Too long or not printable: 'other'. The lone surrogate reached metrics already repaired.
    assert labels == {"?x", "m-0", "m-1", "m-2", "other"}
    assert "?x" in models and "a\nb" in models and "\x00" in models  # stored as valid UTF-8
    assert max(len(m) for m in models) == 200


@pytest.mark.parametrize(
    ("token", "offered", "origin"),
    [
        ("", None, "probe"),  # no token configured: loopback clients (in-process workers) may
        ("s3cret-token", None, "user"),  # configured: a bare label is a user's request
        ("s3cret-token", "wrong", "user"),
        ("s3cret-token", "s3cret-token", "probe"),
    ],
)
async def test_only_a_proven_prober_may_label_its_traffic(
    simulator: str, token: str, offered: str | None, origin: str
) -> None:
    headers = {ORIGIN_HEADER: "probe"} | ({PROBE_TOKEN_HEADER: offered} if offered else {})
    body = {"model": "sim", "messages": [{"role": "user", "content": "hi"}]}
    url = "/v1/chat/completions"
    async with (
        proxied(simulator, probe_token=token) as proxy,
        aiohttp.ClientSession() as s,
        s.post(proxy.url + url, json=body, headers=headers) as r,
    ):
        assert r.status == 200
        request_id = r.headers[REQUEST_ID_HEADER]
    assert proxy.record(request_id).origin == origin
