"""`fathom simulate` as a real process, driven by the real `openai` client and raw HTTP.

One simulator process serves every model these tests need (see CONFIG); a few tests start
their own process to check the command line itself.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import signal
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from fathom import spawn
from fathom.commands.simulate import run_simulator_process, running_simulator
from fathom.sim.answers import LOOP
from fathom.sim.models import (
    BadKnob,
    ModelSpec,
    SimConfigError,
    load_config,
    load_knowledge,
    normalise,
)
from fathom.sim.plan import Faults, parse_faults, schedule
from fathom.sim.wire import Wire, parse_wire

ROOT = Path(__file__).resolve().parent.parent
ITEMS: list[dict[str, Any]] = [
    {"id": "n1", "prompt": "What is 17 times 23? Answer with just the number.", "answer": 391},
    {"id": "n2", "prompt": "What is 48 + 76?", "answer": 124},
    {"id": "n3", "prompt": "How many legs does a spider have?", "answer": 8},
    {"id": "n4", "prompt": "What is the boiling point of water in Celsius?", "answer": 100},
    {"id": "t1", "prompt": "What is the capital city of Australia?",
     "correct": ["Canberra.", "The capital of Australia is Canberra."],
     "incorrect": ["Sydney.", "The capital of Australia is Melbourne."]},
    {"id": "t2", "prompt": "Who wrote Hamlet?", "correct": ["William Shakespeare."],
     "incorrect": ["Christopher Marlowe.", "Francis Bacon."]},
    {"id": "t3", "prompt": "What is the chemical symbol for gold?", "correct": ["Au"]},
    {"id": "t4", "prompt": "What colour is a clear daytime sky?", "answer": "Blue."},
]  # fmt: skip
INSTANT = {"ttft_ms": 0, "itl_ms": 0}
CONFIG: dict[str, Any] = {
    "seed": 11,
    "models": {
        "sim": {"ttft_ms": 30, "itl_ms": 10, "tokens": 8},
        "sound": {**INSTANT, "accuracy": 1.0, "consistency": 1.0},
        "wrong": {**INSTANT, "accuracy": 0.0, "consistency": 1.0},
        "stubborn": {**INSTANT, "accuracy": 0.5, "consistency": 1.0},
        "flaky": {**INSTANT, "accuracy": 0.5, "consistency": 0.2},
        "loopy": {**INSTANT, "degeneration": 1.0, "tokens": 12},
        "failing": {**INSTANT, "error_rate": 1.0, "error_status": 503},
        "resetting": {**INSTANT, "tokens": 6, "reset_rate": 1.0},
        "sometimes": {**INSTANT, "error_rate": 0.3},
    },
}
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about batching."}]


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sim") / "answers.jsonl"
    path.write_text("\n".join(json.dumps(item) for item in ITEMS) + "\n\n")
    return path


@pytest.fixture(scope="module")
def sim(answers: Path) -> Iterator[str]:
    """Base URL of one simulator process serving every model of CONFIG."""
    config = {**CONFIG, "models": {name: {**knobs, "answers": str(answers)}
                                   for name, knobs in CONFIG["models"].items()}}  # fmt: skip
    with run_simulator_process(config) as url:
        yield url


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="sk-sim", max_retries=0)


def aclient(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-sim", max_retries=0)


async def raw(
    base: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """Status and whole body of one chat completion request, as bytes."""
    url = base + "/v1/chat/completions"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers or {}) as resp,
    ):
        return resp.status, await resp.read()


def events(data: bytes) -> list[Any]:
    """The data of each SSE event of a plainly spelled stream: JSON objects, then '[DONE]'."""
    assert data.endswith(b"\n\n") and b"\r" not in data
    out: list[Any] = []
    for event in data[:-2].split(b"\n\n"):
        assert event.startswith(b"data: "), event[:40]
        payload = event[6:]
        out.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return out


def right(item: dict[str, Any], text: str) -> bool:
    correct = item["correct"] if "correct" in item else [item["answer"]]
    return normalise(text) in {normalise(str(c)) for c in correct}


@pytest.fixture(scope="module")
def api(sim: str) -> Iterator[openai.OpenAI]:
    """One synchronous client for the shared simulator: its connections are reused."""
    with client(sim) as out:
        yield out


def ask(api: openai.OpenAI, model: str, prompt: str) -> str:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": prompt},
    ]
    out = api.chat.completions.create(model=model, messages=messages)
    return out.choices[0].message.content or ""


# --- the command line and the API for other tests ------------------------------------------


def test_first_line_announces_the_port_and_sigterm_stops_it_mid_stream() -> None:
    argv = spawn.fathom_command("simulate", "--listen", "127.0.0.1:0", "--itl-ms", "1000")
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline().rstrip("\n")
        match = re.fullmatch(r"listening on http://127\.0\.0\.1:(\d+)", first)
        assert match and int(match.group(1)) > 0, first
        base = first.removeprefix("listening on ")
        stream = client(base).chat.completions.create(model="sim", messages=USER, stream=True)
        next(iter(stream))  # the role chunk: the stream is open, the next token 1 s away
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert time.monotonic() - started < 5
    finally:
        process.kill()
        process.wait()


def test_process_from_flags_and_models_listed() -> None:
    with run_simulator_process(["--model", "tiny", "--tokens", "3", "--itl-ms", "0"]) as base:
        assert [m.id for m in client(base).models.list()] == ["tiny"]
        out = client(base).chat.completions.create(model="tiny", messages=USER)
        assert out.usage is not None and out.usage.completion_tokens == 3
        assert get_json(base + "/health") == {"status": "ok", "models": ["tiny"]}


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


async def test_in_process_simulator_has_the_same_canonical_answers(sim: str) -> None:
    spec = ModelSpec(name="sound", ttft_ms=0, itl_ms=0, tokens=10)
    async with running_simulator([spec], seed=11) as base:
        here = await aclient(base).chat.completions.create(model="sound", messages=USER)
    there = await aclient(sim).chat.completions.create(
        model="sound", messages=USER, extra_headers={"x-sim-tokens": "10"}
    )
    assert here.choices[0].message.content == there.choices[0].message.content
    assert len((here.choices[0].message.content or "").split()) == 10


def test_bad_config_exits_2_with_a_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  m:\n    ttf_ms: 5\n")
    argv = spawn.fathom_command("simulate", "--listen", "127.0.0.1:0", "--config", str(bad))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "unknown keys ['ttf_ms']" in done.stderr and done.stdout == ""


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("models: {m: {accuracy: 1.5}}", "accuracy must be in [0, 1]"),
        ("models: {m: {tokens: many}}", "tokens='many' is not an integer"),
        ("models: [{name: a}, {name: a}]", "must be unique"),
        ("models: {m: {answers: missing.jsonl}}", "cannot read answers file"),
        ("modles: {}", "expected a mapping with keys 'seed' and 'models'"),
    ],
)
def test_config_errors_say_what_is_wrong(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text(yaml_text)
    with pytest.raises(SimConfigError, match=re.escape(message)):
        load_config(path, {})


def test_config_defaults_fill_what_models_leave_out(tmp_path: Path, answers: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text(f"seed: 3\nmodels:\n  - name: a\n    answers: {answers.name}\n  - name: b\n")
    (tmp_path / answers.name).write_text(answers.read_text())
    specs, seed = load_config(path, {"itl_ms": 5.0, "name": "ignored"})
    assert seed == 3 and [s.name for s in specs] == ["a", "b"]
    assert [s.itl_ms for s in specs] == [5.0, 5.0] and len(specs[0].knowledge) == len(ITEMS)


def test_the_default_golden_set_loads_as_answers() -> None:
    path = ROOT / "probes" / "golden" / "default.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    known = load_knowledge(path)
    assert len(known) == len(lines)
    for line in lines:
        expect = line["correct"] if "correct" in line else [str(line["answer"])]
        assert known[normalise(line["prompt"])].correct == tuple(expect)


# --- wire format ------------------------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [False, True])
async def test_chat_stream_wire_format(sim: str, include_usage: bool) -> None:
    messages = [{"role": "system", "content": "You are  terse."}, *USER]
    body: dict[str, Any] = {"model": "sim", "messages": messages, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    status, data = await raw(sim, body)
    got = events(data)
    assert status == 200 and got[-1] == "[DONE]"
    chunks = got[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "sim" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:9]]
    assert len(content) == 8 and all(len(t.split()) == 1 for t in content)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:9])
    finish = chunks[9]["choices"][0]
    assert finish["delta"] == {} and finish["finish_reason"] == "stop"
    if include_usage:
        assert len(chunks) == 11 and chunks[10]["choices"] == []
        assert chunks[10]["usage"] == {"prompt_tokens": 3 + 4, "completion_tokens": 8,
                                       "total_tokens": 15}  # fmt: skip
    else:
        assert len(chunks) == 10
    assert all("usage" not in c for c in chunks[:10])


def test_sync_client_whole_answers_usage_and_max_tokens(sim: str) -> None:
    out = client(sim).chat.completions.create(model="sim", messages=USER)
    assert out.object == "chat.completion" and out.choices[0].finish_reason == "stop"
    text = out.choices[0].message.content or ""
    assert len(text.split()) == 8 and out.choices[0].message.role == "assistant"
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (4, 8)
    cut = client(sim).chat.completions.create(model="sim", messages=USER, max_tokens=3)
    assert cut.choices[0].finish_reason == "length" and cut.usage is not None
    assert cut.usage.completion_tokens == 3
    assert cut.choices[0].message.content == " ".join(text.split()[:3])


async def test_async_client_streams_what_it_answers_whole(sim: str) -> None:
    api = aclient(sim)
    whole = await api.chat.completions.create(model="sim", messages=USER)
    stream = await api.chat.completions.create(
        model="sim", messages=USER, stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    parts, usage = [], None
    async for chunk in stream:
        parts += [c.delta.content or "" for c in chunk.choices]
        usage = chunk.usage or usage
    assert "".join(parts) == whole.choices[0].message.content
    assert usage is not None and usage.completion_tokens == 8


async def test_completions_route_streamed_and_not(sim: str) -> None:
    api = aclient(sim)
    whole = await api.completions.create(model="sim", prompt="Once upon a time")
    assert whole.object == "text_completion" and whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (4, 8)
    stream = await api.completions.create(model="sim", prompt="Once upon a time", stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks][-2:] == [None, "stop"]
    assert len(chunks) == 9  # 8 content events and the finish: no role chunk on this route


def test_embeddings_are_deterministic_in_both_encodings(sim: str) -> None:
    api = client(sim)
    first = api.embeddings.create(model="sim", input=["alpha", "beta"])  # base64 by default
    again = api.embeddings.create(model="sim", input=["alpha", "beta"], encoding_format="float")
    wide = api.embeddings.create(model="sim", input="alpha", dimensions=64)
    vectors = [d.embedding for d in first.data]
    assert [len(v) for v in vectors] == [8, 8] and vectors[0] != vectors[1]
    for float_vector, vector in zip(again.data, vectors, strict=True):
        assert float_vector.embedding == pytest.approx(vector, abs=1e-6)
    assert len(wide.data[0].embedding) == 64
    assert first.usage.prompt_tokens == 2


async def test_refusals_are_openai_style_json(sim: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await aclient(sim).chat.completions.create(model="nope", messages=USER)
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "model_not_found"
    for body, headers, expect in [
        ({"model": "sim", "messages": USER}, {"x-sim-tokens": "many"}, "x-sim-tokens"),
        ({"model": "sim", "messages": USER}, {"x-sim-fault": "explode:1"}, "x-sim-fault"),
        ({"model": "sim", "messages": USER}, {"x-sim-wire": "fancy"}, "x-sim-wire"),
    ]:
        status, data = await raw(sim, body, headers)
        error = json.loads(data)["error"]
        assert status == 400 and error["type"] == "invalid_request_error"
        assert expect in error["message"]
    async with aiohttp.ClientSession() as session:
        async with session.post(sim + "/v1/chat/completions", data=b"{not json") as resp:
            assert resp.status == 400 and "JSON" in (await resp.json())["error"]["message"]
        async with session.get(sim + "/v1/nothing") as resp:
            assert resp.status == 404 and (await resp.json())["error"]["message"].startswith(
                "Invalid URL"
            )


# --- faults -----------------------------------------------------------------------------------


async def create(base: str, fault: str) -> Any:
    """A non-streamed chat completion with a fault."""
    api = aclient(base)
    return await api.chat.completions.create(
        model="sim",
        messages=USER,
        extra_headers={"x-sim-fault": fault},
    )


async def collect(
    base: str, fault: str, model: str = "sim", **headers: str
) -> tuple[list[str], list[float], BaseException | None, str | None]:
    """Content, receive times (s after sending), the error (if any) and the finish reason."""
    parts: list[str] = []
    times: list[float] = []
    finish = None
    api = aclient(base)
    sent = time.monotonic()
    try:
        stream = await api.chat.completions.create(
            model=model, messages=USER, stream=True,
            extra_headers={"x-sim-fault": fault, **headers} if fault else headers,
        )  # fmt: skip
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
                    times.append(time.monotonic() - sent)
                finish = choice.finish_reason or finish
    except openai.OpenAIError as exc:
        return parts, times, exc, finish
    return parts, times, None, finish


@pytest.mark.parametrize(("fault", "status", "kind"), [
    ("http-503", 503, openai.InternalServerError),
    ("http-429", 429, openai.RateLimitError),
    ("http-400", 400, openai.BadRequestError),
])  # fmt: skip
async def test_http_errors(sim: str, fault: str, status: int, kind: type[Exception]) -> None:
    for stream in (False, True):
        with pytest.raises(kind) as caught:
            await aclient(sim).chat.completions.create(
                model="sim",
                messages=USER,
                stream=stream,
                extra_headers={"x-sim-fault": fault},
            )
        assert isinstance(caught.value, openai.APIStatusError)
        assert caught.value.status_code == status
        assert isinstance(caught.value.body, dict) and "simulated" in caught.value.body["message"]


async def test_reset_mid_stream_after_n_events(sim: str) -> None:
    parts, _, error, finish = await collect(sim, "reset:3")
    assert len(parts) == 3 and finish is None
    assert isinstance(error, openai.APIConnectionError)
    parts, _, error, finish = await collect(sim, "reset:99")  # past the end: instead of finish
    assert len(parts) == 8 and finish is None
    assert isinstance(error, openai.APIConnectionError)
    with pytest.raises(openai.APIConnectionError):  # not streamed: no answer at all
        await create(sim, "reset:3")


async def test_error_event_mid_stream(sim: str) -> None:
    parts, _, error, finish = await collect(sim, "error-event:2")
    assert len(parts) == 2 and finish is None
    assert isinstance(error, openai.APIError) and "simulated failure" in str(error)
    status, data = await raw(sim, {"model": "sim", "messages": USER, "stream": True},
                             {"x-sim-fault": "error-event:2"})  # fmt: skip
    assert status == 200 and events(data)[-1]["error"]["type"] == "server_error"
    with pytest.raises(openai.InternalServerError):  # not streamed: a 500 at that point
        await create(sim, "error-event:2")


async def test_clean_close_mid_stream_has_no_finish_and_no_done(sim: str) -> None:
    status, data = await raw(sim, {"model": "sim", "messages": USER, "stream": True},
                             {"x-sim-fault": "close:4"})  # fmt: skip
    got = events(data)
    assert status == 200 and len(got) == 5 and "[DONE]" not in got  # the role chunk + 4
    assert all(c["choices"][0]["finish_reason"] is None for c in got)


async def test_stall_mid_stream_then_continue_or_reset(sim: str) -> None:
    itl = {"x-sim-itl-ms": "20", "x-sim-ttft-ms": "0"}
    parts, times, error, finish = await collect(sim, "stall:2:0.4", **itl)
    assert error is None and finish == "stop" and len(parts) == 8
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[1] >= 0.4 + 0.02 - 0.005  # the stall adds to the usual gap
    assert max(gaps[2:]) < 0.3  # then the old rhythm, shifted: no burst, no second stall
    parts, times, error, finish = await collect(sim, "stall:1:0.3:reset", **itl)
    assert len(parts) == 1 and isinstance(error, openai.APIConnectionError)


async def test_stall_before_first_byte(sim: str) -> None:
    started = time.monotonic()
    status, data = await raw(sim, {"model": "sim", "messages": USER, "stream": True},
                             {"x-sim-fault": "stall-first:0.4", "x-sim-trace": "1"})  # fmt: skip
    assert status == 200 and time.monotonic() - started >= 0.4
    first = events(data)[1]  # then the schedule runs from there: 400 ms + the 30 ms TTFT
    assert first["sim_due_ms"] == 430 and first["sim_t_ms"] >= 430
    async with aiohttp.ClientSession() as session:
        url = sim + "/v1/chat/completions"
        body = {"model": "sim", "messages": USER}
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):  # not even the status line comes early
            async with session.post(url, json=body, headers={"x-sim-fault": "stall-first:1"},
                                    timeout=aiohttp.ClientTimeout(total=0.3)):  # fmt: skip
                pass
        assert time.monotonic() - started < 0.9


async def test_injection_rates_per_model(sim: str) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        await aclient(sim).chat.completions.create(model="failing", messages=USER)
    assert caught.value.status_code == 503
    parts, _, error, _ = await collect(sim, "", model="resetting")
    assert isinstance(error, openai.APIConnectionError) and len(parts) < 6
    failures = 0
    for _ in range(60):
        status, _ = await raw(sim, {"model": "sometimes", "messages": USER})
        failures += status == 500
    assert 6 <= failures <= 30  # binomial(60, 0.3): mean 18, sd 3.5


def test_fault_and_wire_headers_parse_and_compose() -> None:
    faults = parse_faults("stall:2:0.5:reset, error-event:4 ,stall-first:0.1")
    assert faults == Faults(first_byte_stall_s=0.1, reset_at=2, error_at=4, stall_at=2,
                            stall_s=0.5)  # fmt: skip
    assert faults.ending(8) == (2, "reset") and Faults(close_at=30).ending(8) == (8, "close")
    assert parse_faults("") == Faults() and Faults().ending(8) is None
    for bad in ["http-200", "http-5xx", "reset", "reset:-1", "stall:1", "stall:1:x",
                "stall:1:1:maybe", "stall-first:-1", "boom"]:  # fmt: skip
        with pytest.raises(BadKnob):
            parse_faults(bad)
    assert parse_wire("crlf, huge:100") == Wire(crlf=True, huge_bytes=100)
    assert parse_wire("huge").huge_bytes == 1 << 20
    with pytest.raises(BadKnob):
        parse_wire("huge:lots")


def test_schedule_is_absolute_and_stalls_shift_what_follows() -> None:
    faults = Faults(first_byte_stall_s=0.5, stall_at=2, stall_s=1.0)
    due = schedule(0.05, 0.02, 0.0, 5, faults, random.Random(0))
    assert due == pytest.approx([0.55, 0.57, 1.59, 1.61, 1.63])
    jittered = schedule(0.05, 0.001, 0.01, 50, Faults(), random.Random(0))
    assert jittered == sorted(jittered)  # jitter larger than the gap never reorders events
    assert all(0 <= d - (0.05 + i * 0.001) <= 0.01 + 1e-9 for i, d in enumerate(jittered))


# --- wire variants ----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["nospace", "crlf", "ping", "huge", "crlf,nospace,ping"])
async def test_wire_variants(sim: str, variant: str) -> None:
    body = {"model": "sim", "messages": USER, "stream": True}
    _, plain = await raw(sim, body)
    status, data = await raw(sim, body, {"x-sim-wire": variant})
    assert status == 200
    eol = b"\r\n" if "crlf" in variant else b"\n"
    if "crlf" in variant:
        assert data.count(b"\n") == data.count(b"\r\n") and data.endswith(b"\r\n\r\n")
    blocks = data[: -2 * len(eol)].split(eol + eol)
    data_blocks = [b for b in blocks if b.startswith(b"data:")]
    assert len(data_blocks) == len(events(plain))
    if "ping" in variant:
        assert blocks.count(b": ping") == len(data_blocks)
    if "nospace" in variant:
        assert all(not b.startswith(b"data: ") for b in data_blocks)
    if variant == "huge":
        sizes = sorted(len(b) for b in data_blocks)
        assert sizes[-1] > 1 << 20 and sizes[-2] < 1000  # one huge event, the others small
    parts, _, error, finish = await collect(sim, "", **{"x-sim-wire": variant})
    assert error is None and finish == "stop"
    assert "".join(parts) == "".join(
        e["choices"][0]["delta"].get("content", "") for e in events(plain)[:-1]
    )


# --- timing -----------------------------------------------------------------------------------


async def test_schedule_seen_by_the_client(sim: str) -> None:
    ttft, itl = 100.0, 25.0
    headers = {"x-sim-ttft-ms": str(ttft), "x-sim-itl-ms": str(itl), "x-sim-trace": "1"}
    parts, times, error, _ = await collect(sim, "", **headers)
    assert error is None and len(parts) == 8
    late = [t * 1e3 - (ttft + i * itl) for i, t in enumerate(times)]
    assert min(late) >= 0, late  # never early: the request left before it arrived there
    assert max(late) < 60, late  # generous: a loaded 2-core machine, the client in Python


async def test_schedule_holds_at_concurrency(sim: str) -> None:
    """50 simultaneous streams: the simulator's own send stamps vs its schedule."""
    headers = {"x-sim-ttft-ms": "40", "x-sim-itl-ms": "10", "x-sim-tokens": "20",
               "x-sim-trace": "1"}  # fmt: skip
    body = {"model": "sim", "messages": USER, "stream": True}
    results = await asyncio.gather(*(raw(sim, body, headers) for _ in range(50)))
    by_index: list[list[float]] = [[] for _ in range(20)]
    for _, data in results:
        content = [e for e in events(data)[:-1] if e["choices"][0]["delta"].get("content")]
        assert [e["sim_due_ms"] for e in content] == [40 + 10 * i for i in range(20)]
        for i, event in enumerate(content):
            by_index[i].append(event["sim_t_ms"] - event["sim_due_ms"])
    late = sorted(x for lates in by_index for x in lates)
    assert late[0] >= 0  # never early
    # No drift: sleeping relative to the previous send would add up, event after event.
    medians = [statistics.median(lates) for lates in by_index]
    assert max(medians) < 5, medians
    assert late[int(0.99 * len(late))] < 100, late[-10:]  # generous: a loaded 2-core machine


async def test_jitter_is_seeded_and_bounded(sim: str) -> None:
    headers = {"x-sim-ttft-ms": "10", "x-sim-itl-ms": "5", "x-sim-jitter-ms": "4",
               "x-sim-trace": "1", "x-sim-seed": "42"}  # fmt: skip
    body = {"model": "sim", "messages": USER, "stream": True}
    runs = []
    for _ in range(2):
        _, data = await raw(sim, body, headers)
        runs.append([e["sim_due_ms"] for e in events(data)[1:9]])
    assert runs[0] == runs[1] and runs[0] == sorted(runs[0])
    base = [10 + 5 * i for i in range(8)]
    assert all(0 <= d - b <= 4 for d, b in zip(runs[0], base, strict=True))
    assert runs[0] != base


# --- answers and their quality ----------------------------------------------------------------


def test_accuracy_one_is_always_right_and_matching_is_loose(api: openai.OpenAI) -> None:
    for item in ITEMS:
        assert right(item, ask(api, "sound", item["prompt"])), item["id"]
        shouted = "  " + item["prompt"].upper().replace(" ", "   ") + "\n"
        assert right(item, ask(api, "sound", shouted)), item["id"]


def test_accuracy_zero_is_never_right_but_plausible(api: openai.OpenAI) -> None:
    for item in ITEMS:
        for _ in range(3):
            answer = ask(api, "wrong", item["prompt"])
            assert answer and not right(item, answer), (item["id"], answer)
            if "incorrect" in item:
                assert answer in item["incorrect"]
            elif isinstance(item.get("answer"), int):
                assert answer.lstrip("-").isdigit()  # a wrong number, not prose


def test_consistent_models_repeat_themselves_even_when_wrong(api: openai.OpenAI) -> None:
    verdicts = set()
    for item in ITEMS:
        answers = {ask(api, "stubborn", item["prompt"]) for _ in range(4)}
        assert len(answers) == 1, item["id"]
        verdicts.add(right(item, answers.pop()))
    assert verdicts == {True, False}  # accuracy 0.5: some prompts right, some always wrong


def test_inconsistent_models_vary_between_asks(api: openai.OpenAI) -> None:
    varied, correct, total = 0, 0, 0
    for item in ITEMS:
        answers = [ask(api, "flaky", item["prompt"]) for _ in range(10)]
        varied += len(set(answers)) > 1
        correct += sum(right(item, a) for a in answers)
        total += len(answers)
    assert varied >= len(ITEMS) - 1
    assert 0.25 <= correct / total <= 0.75


def test_unknown_prompts_get_filler_deterministic_per_prompt(api: openai.OpenAI) -> None:
    one = {ask(api, "sound", "Describe your favourite cache.") for _ in range(3)}
    two = ask(api, "sound", "Describe a queue.")
    assert len(one) == 1 and two not in one
    assert len(two.split()) == ModelSpec().tokens and two[0].isupper()
    flaky = {ask(api, "flaky", "Describe your favourite cache.") for _ in range(5)}
    assert len(flaky) > 1


def test_degenerate_answers_loop_or_are_empty(api: openai.OpenAI) -> None:
    kinds = set()
    for n in range(12):
        out = api.chat.completions.create(model="loopy", messages=[
            {"role": "user", "content": f"Question number {n}?"}])  # fmt: skip
        text, finish = out.choices[0].message.content or "", out.choices[0].finish_reason
        assert out.usage is not None and out.usage.completion_tokens == len(text.split())
        if text:
            assert text.split() == " ".join([LOOP] * 12).split()[:12]
            assert finish == "length"
            kinds.add("loop")
        else:
            assert finish == "stop"
            kinds.add("empty")
    assert kinds == {"loop", "empty"}


def test_loop_length_follows_max_tokens(api: openai.OpenAI) -> None:
    out = api.chat.completions.create(model="loopy", messages=[
        {"role": "user", "content": "Question number 0?"}], max_tokens=30)  # fmt: skip
    text = out.choices[0].message.content or ""
    assert text == "" or len(text.split()) == 30
