"""The SSE parser and stream timing: pure functions, so tested exhaustively."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.sse import PartTiming, SSEParser, StreamTiming, classify, percentile
from sidecar.toolcalls import ARGUMENTS_CAP, ToolCalls, answer_tool_calls, arguments_valid


def parse_all(
    chunks: list[bytes], max_event_bytes: int = 1 << 24
) -> list[tuple[bytes, bytes | None]]:
    parser = SSEParser(max_event_bytes)
    events = [e for i, c in enumerate(chunks) for e in parser.feed(c, float(i))]
    events += parser.finish(float(len(chunks)))
    return [(e.raw, e.data) for e in events]


def chunk(delta: dict[str, object], **extra: object) -> bytes:
    return json.dumps({"choices": [{"index": 0, "delta": delta}], **extra}).encode()


STREAM = (
    b": ping\r\n\r\n"
    b"data: " + chunk({"role": "assistant"}) + b"\n\n"
    b"data:" + chunk({"content": "Hel"}) + b"\r\n\r\n"
    b"event: message\rdata: " + chunk({"content": "lo"}) + b"\r\r"
    b'data: {"choices": [],\n'
    b'data:  "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\n\n'
    b"data: [DONE]\n\n"
)


def test_tolerant_forms_parse_to_the_same_events() -> None:
    events = parse_all([STREAM])
    datas = [d for _, d in events]
    assert datas[0] is None  # the keep-alive comment is an event with no data
    assert [classify(d).text for d in datas] == ["", "", "Hel", "lo", "", ""]
    usage = classify(datas[4])
    assert usage.usage_only and usage.usage == {"prompt_tokens": 3, "completion_tokens": 2}
    assert classify(datas[5]).done
    assert b"".join(raw for raw, _ in events) == STREAM


def test_every_split_point_gives_the_same_events() -> None:
    whole = parse_all([STREAM])
    for cut in range(1, len(STREAM)):
        assert parse_all([STREAM[:cut], STREAM[cut:]]) == whole, cut
    assert parse_all([bytes([b]) for b in STREAM]) == whole


def test_cr_at_chunk_end_waits_for_a_possible_lf() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r", 0.0) == []
    assert parser.feed(b"\n", 1.0) == []
    events = parser.feed(b"\r\n", 2.0)
    assert [(e.raw, e.data, e.at) for e in events] == [(b"data: a\r\n\r\n", b"a", 2.0)]


def test_unicode_line_separator_does_not_split() -> None:
    text = "a\u2028b\u0085c"
    data = chunk({"content": text})
    [(_, parsed)] = parse_all([b"data: " + data + b"\n\n"])
    assert classify(parsed).text == text


def test_megabyte_line_arriving_in_small_reads() -> None:
    content = "x" * (1 << 20)
    stream = b"data: " + chunk({"content": content}) + b"\n\n"
    reads = [stream[i : i + 65536] for i in range(0, len(stream), 65536)]
    [(raw, data)] = parse_all(reads)
    assert raw == stream and classify(data).text == content


def test_oversized_event_passes_through_unparsed_and_parsing_resumes() -> None:
    big = b"data: " + b"y" * 5000 + b"\n\n"
    small = b"data: " + chunk({"content": "ok"}) + b"\n\n"
    events = parse_all([big[:3000], big[3000:], small], max_event_bytes=1024)
    assert b"".join(raw for raw, _ in events) == big + small
    assert all(data is None for _, data in events[:-1])
    assert classify(events[-1][1]).text == "ok"


def test_invalid_utf8_is_tolerated() -> None:
    stream = b'data: {"choices":[{"delta":{"content":"a\xff\xfeb"}}]}\n\n'
    [(raw, data)] = parse_all([stream])
    assert raw == stream
    parsed = classify(data)
    assert parsed.content and parsed.text == "a\ufffd\ufffdb"


def test_truncated_stream_keeps_its_tail() -> None:
    events = parse_all([b"data: " + chunk({"content": "a"}) + b'\n\ndata: {"cho'])
    assert events[-1] == (b'data: {"cho', b'{"cho')
    assert not classify(events[-1][1]).content


def test_classify_content_kinds() -> None:
    assert classify(chunk({"reasoning_content": "think"})).content
    assert classify(chunk({"reasoning": "think"})).content
    assert classify(chunk({"tool_calls": [{"index": 0}]})).content
    assert not classify(chunk({"role": "assistant"})).content
    assert not classify(chunk({"content": ""})).content
    completion = json.dumps({"choices": [{"text": "hi", "finish_reason": "length"}]}).encode()
    parsed = classify(completion)
    assert parsed.content and parsed.text == "hi" and parsed.finish_reason == "length"


def test_classify_error_event() -> None:
    parsed = classify(b'{"error": {"message": "overloaded", "code": 503}}')
    assert parsed.error == "overloaded" and not parsed.content
    assert classify(b"not json") == classify(None)
    assert classify(b"[1, 2]") == classify(None)


def test_stream_timing_figures() -> None:
    timing = StreamTiming()
    for t in (1.0, 1.010, 1.030, 1.060):
        timing.content_at(t)
    itl = timing.itl_ms()
    assert itl is not None
    mean, p50, p99, worst = itl
    assert abs(mean - 20.0) < 1e-9 and abs(p50 - 20.0) < 1e-9 and abs(worst - 30.0) < 1e-9
    assert 29.0 < p99 <= 30.0
    decode = timing.decode_tps(4)
    assert decode is not None and abs(decode - 3 / 0.06) < 1e-6
    assert StreamTiming().itl_ms() is None and timing.decode_tps(1) is None


def test_percentile_interpolates() -> None:
    assert percentile([0.0, 10.0], 0.5) == 5.0
    assert percentile([3.0], 0.99) == 3.0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_fuzz_no_byte_lost_and_splits_do_not_matter(data: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    events = parse_all(pieces, max_event_bytes=64)
    assert b"".join(raw for raw, _ in events) == data
    for _, parsed in events:
        classify(parsed)  # must never raise


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=10), st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_fuzz_generated_streams_roundtrip_content(texts: list[str], eol: bytes) -> None:
    stream = b"".join(b"data: " + chunk({"content": t}) + eol + eol for t in texts)
    events = parse_all([stream[i : i + 7] for i in range(0, len(stream), 7)])
    assert [classify(d).text for _, d in events] == texts


def tool_delta(index: int, arguments: str, head: bool = False) -> dict[str, object]:
    call: dict[str, object] = {"index": index, "function": {"arguments": arguments}}
    if head:
        call.update(id=f"call_{index}", type="function", function={"name": "f", "arguments": ""})
    return {"tool_calls": [call]}


def test_reasoning_then_answer_then_tool_calls_are_told_apart() -> None:
    timing = PartTiming()
    deltas: list[dict[str, object]] = [
        {"role": "assistant", "content": ""},
        {"reasoning_content": "Let me"},
        {"reasoning": " think"},
        {"content": "Sure."},
        tool_delta(0, "", head=True),
        tool_delta(0, '{"city": '),
        tool_delta(1, "", head=True),
        tool_delta(0, '"Paris"}'),
        tool_delta(1, '{"city": "Rome"'),  # never closed: broken arguments
    ]
    for at, delta in enumerate(deltas):
        parsed = classify(chunk(delta))
        assert parsed.content == (at > 0)  # the role-only event is not content
        if parsed.content:
            timing.note(parsed, float(at))
    first = classify(chunk({"reasoning_content": "x"}))
    assert first.reasoning and not first.answer and first.text == ""
    assert classify(chunk({"content": "x"})).answer
    assert (timing.reasoning_at, timing.answer_at, timing.tool_at) == (1.0, 3.0, 4.0)
    assert timing.reasoning_events == 2
    assert timing.tools is not None
    assert (timing.tools.count(), timing.tools.invalid()) == (2, 1)


def test_an_answer_without_reasoning_starts_with_its_first_token() -> None:
    timing = PartTiming()
    for at, text in enumerate(["a", "b"]):
        timing.note(classify(chunk({"content": text})), float(at))
    assert (timing.reasoning_at, timing.answer_at, timing.tool_at, timing.tools) == (
        None, 0.0, None, None,
    )  # fmt: skip
    completion = classify(json.dumps({"choices": [{"text": "hi"}]}).encode())
    assert completion.answer and not completion.reasoning


def test_tool_calls_of_several_choices_and_without_index_are_kept_apart() -> None:
    data = json.dumps({"choices": [
        {"index": 0, "delta": {"tool_calls": [{"function": {"arguments": "{}"}}]}},
        {"index": 1, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "["}}]}},
    ]}).encode()  # fmt: skip
    parsed = classify(data)
    assert parsed.tool_calls == ((0, 0, "{}"), (1, 0, "["))
    calls = ToolCalls()
    calls.add(parsed.tool_calls)
    assert (calls.count(), calls.invalid()) == (2, 1)


def test_tool_call_arguments_must_be_a_json_object_and_are_capped() -> None:
    assert arguments_valid('{"a": [1, 2]}') and arguments_valid("{}")
    assert not any(arguments_valid(a) for a in ("", "[1]", "3", '{"a": 1', "null"))
    calls = ToolCalls()
    calls.add([(0, 0, '{"a": "'), (0, 0, "x" * ARGUMENTS_CAP), (0, 0, '"}')])
    assert calls.count() == 1 and calls.invalid() == 0  # past the cap: not checked
    assert sum(map(len, calls.arguments[(0, 0)])) < ARGUMENTS_CAP  # nor kept


def test_tool_calls_of_a_whole_message() -> None:
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
        {"id": "b", "type": "function", "function": {"name": "f", "arguments": '{"x": '}},
        {"id": "c", "type": "function", "function": {"name": "f"}},
    ]}  # fmt: skip
    calls = answer_tool_calls({"choices": [{"index": 0, "message": message}]})
    assert (calls.count(), calls.invalid()) == (3, 2)
    assert answer_tool_calls({"choices": [{"message": {"content": "hi"}}]}).count() == 0
    assert answer_tool_calls({"choices": []}).count() == 0 and answer_tool_calls([]).count() == 0


def test_tool_calls_of_whole_responses_and_messages_answers() -> None:
    output = [{"type": "reasoning", "summary": []},
              {"type": "function_call", "call_id": "a", "name": "f", "arguments": '{"x": 1}'},
              {"type": "function_call", "call_id": "b", "name": "f", "arguments": "{"}]  # fmt: skip
    calls = answer_tool_calls({"object": "response", "output": output})
    assert (calls.count(), calls.invalid()) == (2, 1)
    content = [{"type": "text", "text": "Let me look."},
               {"type": "tool_use", "id": "t", "name": "f", "input": {"x": 1}}]  # fmt: skip
    calls = answer_tool_calls({"type": "message", "content": content})
    assert (calls.count(), calls.invalid()) == (1, 0)
