"""The proxy with the real `openai` client against a real `fathom simulate` process."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import openai
import pytest

from fathom.spawn import free_port
from sidecar.wire import REQUEST_ID_HEADER
from tests.support.polling import until
from tests.support.proxied import proxied

MESSAGES = [{"role": "user", "content": "Tell me about batching."}]
CREATED = re.compile(rb'"created":\d+')


async def raw_stream(base: str, body: dict[str, object], headers: dict[str, str]) -> list[bytes]:
    """The raw bytes of a streamed response, as separate SSE events, `created` normalised."""
    async with aiohttp.ClientSession() as session:
        url = base + "/v1/chat/completions"
        async with session.post(url, json=body, headers=headers) as resp:
            data = await resp.read()
    return [CREATED.sub(b'"created":0', e) for e in data.split(b"\n\n")]


@pytest.mark.parametrize("include_usage", [False, True])
async def test_stream_bytes_identical_to_direct(simulator: str, include_usage: bool) -> None:
    body: dict[str, object] = {"model": "sim", "messages": MESSAGES, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    async with proxied(simulator) as proxy:
        direct = await raw_stream(simulator, body, {})
        through = await raw_stream(proxy.url, body, {})
        assert through == direct
        [record] = proxy.records.values()
    assert (b'"usage"' in b"".join(direct)) is include_usage
    # Usage is known either way: the proxy asked for it and kept the extra chunk to itself.
    assert record.tokens_source == "usage" and record.output_tokens == 8
    assert record.input_tokens == 4 and record.chunks == 8


async def test_openai_async_client_stream_and_not(simulator: str) -> None:
    async with proxied(simulator) as proxy:
        direct = openai.AsyncOpenAI(base_url=simulator + "/v1", api_key="sk-direct")
        through = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-proxied")
        for client_kind in ("plain", "stream"):
            answers = []
            for client in (direct, through):
                if client_kind == "plain":
                    out = await client.chat.completions.create(model="sim", messages=MESSAGES)
                    answers.append((out.choices[0].message.content, out.usage))
                else:
                    stream = await client.chat.completions.create(
                        model="sim", messages=MESSAGES, stream=True
                    )
                    parts = [c.choices[0].delta.content async for c in stream if c.choices]
                    answers.append(("".join(p or "" for p in parts), None))
            assert answers[0] == answers[1]
        completion = await through.completions.create(model="sim", prompt="Hi", max_tokens=3)
        assert completion.choices[0].finish_reason == "length"
        embedding = await through.embeddings.create(model="sim", input=["a b", "c"])
        assert len(embedding.data) == 2
        routes = sorted(r.route for r in proxy.records.values())
        assert routes == ["chat", "chat", "completion", "embedding"]
        by_route = {r.route: r for r in proxy.records.values()}
        assert by_route["embedding"].input_tokens == 3
        assert by_route["completion"].finish_reason == "length"
        assert all(r.error == "" and r.status == 200 for r in proxy.records.values())


async def test_openai_sync_client(simulator: str) -> None:
    async with proxied(simulator) as proxy:

        def call() -> tuple[str, list[str]]:
            client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-sync")
            plain = client.chat.completions.create(model="sim", messages=MESSAGES)
            stream = client.chat.completions.create(model="sim", messages=MESSAGES, stream=True)
            parts = [c.choices[0].delta.content or "" for c in stream if c.choices]
            return plain.choices[0].message.content or "", parts

        plain, parts = await asyncio.to_thread(call)
        assert plain == "".join(parts) and len(parts) == 10  # role chunk, 8 tokens, finish
        streamed = [r for r in proxy.records.values() if r.stream]
        assert len(streamed) == 1 and streamed[0].ttft_ms is not None
        assert streamed[0].ttft_ms >= 30.0 and streamed[0].itl_p50_ms is not None
        assert 9.0 < streamed[0].itl_p50_ms < 12.0


async def test_passthrough_of_other_routes_and_headers(simulator: str) -> None:
    async with proxied(simulator) as proxy, aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/v1/models") as resp:
            assert resp.status == 200
            body = await resp.read()
            assert json.loads(body)["data"][0]["id"] == "sim"
            request_id = resp.headers[REQUEST_ID_HEADER]
        async with session.get(proxy.url + "/nowhere?x=1") as resp:
            assert resp.status == 404
        assert proxy.record(request_id).route == "other"
        assert proxy.record(request_id).response_bytes == len(body)


async def test_tokens_counted_when_usage_cannot_be_had(simulator: str) -> None:
    async with proxied(simulator, inject_usage=False) as proxy:
        body = {"model": "sim", "messages": MESSAGES, "stream": True}
        await raw_stream(proxy.url, body, {})
        [record] = proxy.records.values()
    assert record.tokens_source == "counted" and record.output_tokens == 8


@pytest.mark.parametrize("wire", ["nospace", "crlf", "ping", "huge"])
async def test_wire_variants_pass_through_and_are_measured(simulator: str, wire: str) -> None:
    body = {"model": "sim", "messages": MESSAGES, "stream": True}
    headers = {"x-sim-wire": wire}
    async with proxied(simulator) as proxy:
        direct = await raw_stream(simulator, body, headers)
        through = await raw_stream(proxy.url, body, headers)
        [record] = proxy.records.values()
    if wire == "ping":
        # The keep-alive sent before the usage chunk the proxy asked for (and strips) remains.
        direct, through = ([e for e in x if e != b": ping"] for x in (direct, through))
    assert through == direct
    assert record.chunks == 8 and record.tokens_source == "usage" and record.error == ""


async def test_upstream_down_gives_502_json() -> None:
    async with proxied(f"http://127.0.0.1:{free_port()}") as proxy:
        client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model="sim", messages=MESSAGES)
        [record] = proxy.records.values()
    assert caught.value.status_code == 502
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "upstream_connect"
    assert record.error == "upstream_connect" and record.status == 502


async def fault(proxy_url: str, fault_spec: str, stream: bool = True) -> BaseException | None:
    client = openai.AsyncOpenAI(base_url=proxy_url + "/v1", api_key="k", max_retries=0)
    try:
        out = await client.chat.completions.create(
            model="sim", messages=MESSAGES, stream=stream,
            extra_headers={"x-sim-fault": fault_spec},
        )  # fmt: skip
        if stream:
            async for _ in out:  # type: ignore[union-attr]
                pass
    except openai.OpenAIError as exc:
        return exc
    return None


@pytest.mark.parametrize(
    ("spec", "stream", "exc_type", "error"),
    [
        ("http-500", False, openai.InternalServerError, "upstream_http"),
        ("reset:3", True, openai.APIConnectionError, "stream_error"),
        ("error-event:3", True, openai.APIError, "stream_error"),
    ],
)
async def test_faults_reach_client_as_direct_and_are_recorded(
    simulator: str, spec: str, stream: bool, exc_type: type[Exception], error: str
) -> None:
    async with proxied(simulator) as proxy:
        direct = await fault(simulator, spec, stream)
        through = await fault(proxy.url, spec, stream)
        [record] = proxy.records.values()
    assert type(direct) is type(through) and isinstance(through, exc_type)
    assert record.error == error


async def test_stall_past_idle_timeout(simulator: str) -> None:
    async with proxied(simulator, idle_timeout_s=0.3) as proxy:
        through = await fault(proxy.url, "stall:2:3")
        [record] = proxy.records.values()
    assert isinstance(through, openai.APIError) and "idle" in str(through)
    assert record.error == "upstream_timeout" and record.chunks == 2


async def test_no_first_byte_in_time_gives_504(simulator: str) -> None:
    async with proxied(simulator, first_byte_timeout_s=0.3) as proxy:
        through = await fault(proxy.url, "stall-first:3", stream=False)
        [record] = proxy.records.values()
    assert isinstance(through, openai.APIStatusError) and through.status_code == 504
    assert record.error == "upstream_timeout" and record.status == 504


async def test_client_disconnect_cancels_upstream(simulator: str) -> None:
    body = {"model": "sim", "messages": MESSAGES, "stream": True}
    async with proxied(simulator) as proxy:
        async with aiohttp.ClientSession() as session:
            resp = await session.post(
                proxy.url + "/v1/chat/completions", json=body, headers={"x-sim-tokens": "500"}
            )
            await resp.content.readuntil(b"\n\n")
            await resp.content.readuntil(b"\n\n")
            resp.close()  # the client goes away mid-stream
        # The record appears once the handler has been cancelled.
        await until(lambda: bool(proxy.records), within=2.0, every=0.01)
        [record] = proxy.records.values()
    assert record.error == "client_cancelled"
    assert record.chunks < 20 and record.e2e_ms < 2000


async def test_body_over_limit_gives_413(simulator: str) -> None:
    async with proxied(simulator, max_body_bytes=1024) as proxy, aiohttp.ClientSession() as s:
        body = {"model": "sim", "messages": [{"role": "user", "content": "x" * 5000}]}
        async with s.post(proxy.url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"]["type"] == "bad_request"
        [record] = proxy.records.values()
    assert record.error == "bad_request"
