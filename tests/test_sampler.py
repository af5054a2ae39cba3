"""The sampler: deterministic decisions, rates, redaction, caps, answer extraction, rows."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.record import Record
from sidecar.sampler import (
    SAMPLE_COLUMNS,
    Sampler,
    SamplerSettings,
    StreamAnswer,
    cap_json,
    cap_text,
    redact,
    request_json,
    sample_point,
)
from sidecar.sse import SSEParser
from sidecar.wire import NO_SAMPLE_HEADER, is_truncated, parse_answer


def record(request_id: str = "r1", model: str = "m", origin: str = "user") -> Record:
    return Record(
        ts=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), request_id=request_id, route="chat",
        model=model, deployment="blue", origin=origin, stream=True,
    )  # fmt: skip


# ---------------------------------------------------------------------------- decisions


def test_decision_is_a_pure_function_of_the_request_id() -> None:
    assert sample_point("abc") == sample_point("abc")
    assert 0.0 <= sample_point("abc") < 1.0 and sample_point("abc") != sample_point("abd")
    one, other = (
        Sampler(SamplerSettings(rate=0.5)),
        Sampler(SamplerSettings(rate=0.5)),
    )  # e.g. two proxy processes
    ids = [f"req-{i}" for i in range(200)]
    assert [one.should_sample(record(i), {}) for i in ids] == [
        other.should_sample(record(i), {}) for i in ids
    ]


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5])
def test_sampled_share_matches_the_rate(rate: float) -> None:
    sampler = Sampler(SamplerSettings(rate=rate))
    n = 20_000
    hits = sum(sampler.should_sample(record(f"{i:08x}-req"), {}) for i in range(n))
    sd = (rate * (1 - rate) / n) ** 0.5
    assert abs(hits / n - rate) < 4 * sd, (hits / n, rate)


def test_rate_edges_and_per_model_rates() -> None:
    ids = [f"id{i}" for i in range(500)]
    assert not any(Sampler(SamplerSettings(rate=0.0)).should_sample(record(i), {}) for i in ids)
    assert all(Sampler(SamplerSettings(rate=1.0)).should_sample(record(i), {}) for i in ids)
    sampler = Sampler(
        SamplerSettings(rate=0.0, rates={"llama-*": 0.5, "llama-3-70b": 1.0, "qwen*": 0.0})
    )
    assert sampler.rate_for("llama-3-70b") == 1.0  # exact name beats the glob
    assert sampler.rate_for("llama-3-8b") == 0.5
    assert sampler.rate_for("gpt-4o") == 0.0 and sampler.rate_for("qwen2") == 0.0
    assert all(sampler.should_sample(record(i, model="llama-3-70b"), {}) for i in ids)
    with pytest.raises(ValueError, match="within"):
        Sampler(SamplerSettings(rate=1.5))
    with pytest.raises(ValueError, match="within"):
        Sampler(SamplerSettings(rates={"m": -0.1}))


def test_opt_out_header_and_probe_traffic_are_never_sampled() -> None:
    sampler = Sampler(SamplerSettings(rate=1.0))
    assert not sampler.should_sample(record(), {NO_SAMPLE_HEADER: "1"})
    assert not sampler.should_sample(record(), {NO_SAMPLE_HEADER: "yes"})
    assert sampler.should_sample(record(), {NO_SAMPLE_HEADER: "false"})
    assert not sampler.should_sample(record(origin="probe"), {})
    assert not sampler.should_sample(record(origin="canary"), {})


# ---------------------------------------------------------------------------- redaction

SECRETS = {
    "email": ["john.doe+tag@example.co.uk", "a_b@mail.example.org"],
    "phone": ["+1 415 555 2671", "(415) 555-2671", "020 7946 0958", "+442079460958",
              "415.555.2671"],
    "card": ["4111 1111 1111 1111", "5500-0055-5555-5559", "378282246310005"],
    "api_key": ["sk-proj-abcdefghijklmnopqrstuvwxyz0123456789",
                "sk-ant-api03-AbCdEf0123456789xyzXYZ", "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
                "AIzaSyA1234567890abcdefghijklmnopqrstuv"],
    "bearer": ["Bearer abcdef0123456789ABCDEFxyz", "bearer 0123456789abcdef0123"],
    "jwt": ["eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFU"],
    "aws_key": ["AKIAIOSFODNN7EXAMPLE", "ASIAY34FZKBOKMUTVV7A"],
    "secret": ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
               "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
               "dGhpcyBpcyBhIHNlY3JldCBrZXkgdGhhdCBpcyBsb25n=="],
}  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "secret"), [(k, s) for k, values in SECRETS.items() for s in values]
)
def test_each_secret_kind_is_redacted(kind: str, secret: str) -> None:
    counts: Counter[str] = Counter()
    text = f"Please use {secret} for this."
    out = redact(text, counts)
    assert secret not in out and f"[REDACTED:{kind}]" in out, out
    assert out.startswith("Please use ") and out.endswith(" for this.")
    assert counts == Counter({kind: 1})


def test_named_secrets_keep_their_name() -> None:
    out = redact('password: hunter2222, "api_key": "abcd1234efgh", aws_secret_access_key=xyz123abc')
    assert out == (
        'password: [REDACTED:secret], "api_key": "[REDACTED:secret]", '
        "aws_secret_access_key=[REDACTED:secret]"
    )


def test_private_key_blocks_are_redacted() -> None:
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK\n-----END RSA PRIVATE KEY-----"
    assert redact(f"key:\n{pem}\nend") == "key:\n[REDACTED:private_key]\nend"


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 1,024. In 1969 the world had 3,600,000,000 people.",
        "Pi is 3.14159265358979 and e is 2.718281828.",
        "4111 1111 1111 1112 fails the Luhn check.",
        "1234567890 is ten digits of arithmetic, 123456789 * 9 = 1111111101.",
        "Visit https://example.com/docs/GettingStarted/Installation2024/index.html today.",
        "src/components/HeaderNavigation/NavigationMenuItemList.tsx",
        "uuid 123e4567-e89b-12d3-a456-426614174000, ip 192.168.100.200, 2024-01-15 12:30.",
        "ISBN 978-3-16-148410-0, order 12345678, call me maybe.",
        "transformers.models.bert.modeling_bert.BertForSequenceClassification",
        "The password must be at least 8 characters.",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(
    "text",
    ["-1-" * 11_000, "a@" + "b." * 16_000, "1" * 32_768, "12345 " * 6_000, "x" * 32_768,
     "Bearer " * 5_000, "password=" * 4_000],
)  # fmt: skip
def test_redaction_stays_linear_on_hostile_input(text: str) -> None:
    start = time.perf_counter()
    redact(text)
    assert time.perf_counter() - start < 0.5


# ---------------------------------------------------------------------------- caps


def test_cap_text_marks_what_was_cut() -> None:
    assert cap_text("short", 10) == "short"
    capped = cap_text("x" * 100, 10)
    assert capped.startswith("x" * 10) and "truncated 90 chars" in capped
    assert is_truncated(capped) and not is_truncated("x" * 10)


@settings(max_examples=60, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=300),
        lambda inner: (
            st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
        ),
        max_leaves=20,
    ),
    st.integers(min_value=64, max_value=400),
)
def test_capped_json_is_valid_and_within_the_cap_when_possible(obj: object, cap: int) -> None:
    out = cap_json(obj, cap)
    if len(json.dumps(obj, ensure_ascii=False, separators=(",", ":"))) <= cap:
        assert json.loads(out) == obj
        return
    try:
        json.loads(out)
    except ValueError:
        assert is_truncated(out)  # the structure alone is over the cap: cut as text, marked
        return
    assert len(out) <= cap


def test_request_json_is_redacted_capped_and_still_json() -> None:
    body = {
        "model": "m", "temperature": 0.7,
        "messages": [{"role": "user", "content": "mail bob@example.com " + "word " * 2000}],
    }  # fmt: skip
    out = request_json(json.dumps(body).encode(), 1000)
    obj = json.loads(out)
    assert len(out) <= 1000 and obj["model"] == "m" and obj["temperature"] == 0.7
    content = obj["messages"][0]["content"]
    assert content.startswith("mail [REDACTED:email] word") and is_truncated(content)
    assert request_json(b"not json sk-abcdefghijklmnop1234", 100) == "not json [REDACTED:api_key]"


# ---------------------------------------------------------------------------- answers


def test_parse_answer_reads_chat_completions_and_parts() -> None:
    chat = {
        "choices": [{"message": {"role": "assistant", "content": "Hi."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2},
    }
    answer = parse_answer(json.dumps(chat).encode())
    assert (answer.text, answer.finish_reason, answer.tokens) == ("Hi.", "stop", 7)
    assert parse_answer({"choices": [{"text": "Once", "finish_reason": "length"}]}).text == "Once"
    parts = {
        "choices": [
            {"message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}
        ]
    }
    assert parse_answer(parts).text == "ab"
    refusal = {"choices": [{"message": {"content": None, "refusal": "No."}}]}
    assert parse_answer(refusal).text == "No."
    assert parse_answer(b"{not json").text == "" and parse_answer({"choices": []}).tokens is None


def test_stream_answer_accumulates_content_deltas_up_to_a_cap() -> None:
    def event(delta: dict[str, object], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"

    stream = (
        event({"role": "assistant"}) + event({"reasoning_content": "thinking"})
        + event({"content": "Hello, "}) + event({"content": "world"})
        + event({}, finish="stop") + b"data: [DONE]\n\n"
    )  # fmt: skip
    parser = SSEParser()
    answer, capped = StreamAnswer(), StreamAnswer(max_chars=8)
    for i in range(0, len(stream), 7):  # events split across reads
        for ev in parser.feed(stream[i : i + 7], 0.0):
            answer.add_data(ev.data)
            capped.add_data(ev.data)
    assert answer.text == "Hello, world" and answer.finish_reason == "stop"
    assert capped.text == "Hello, w" and capped.dropped == 4


def test_row_has_the_samples_columns() -> None:
    sampler = Sampler(SamplerSettings(rate=1.0, max_chars=200))
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    row = sampler.row(record(), body, "Call me on +1 415 555 2671. " + "z" * 400)
    assert tuple(row) == SAMPLE_COLUMNS
    assert row["stream"] == 1 and row["origin"] == "user" and row["deployment"] == "blue"
    assert json.loads(row["request_json"])["messages"][0]["content"] == "hi"
    assert row["response_text"].startswith("Call me on [REDACTED:phone].")
    assert is_truncated(row["response_text"])


def test_lone_surrogates_from_a_client_still_give_a_storable_row() -> None:
    # JSON allows "\ud800"; Python decodes it to a lone surrogate, which UTF-8 cannot encode.
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi \\ud800 there"}]}'
    row = Sampler(SamplerSettings(rate=1.0, max_chars=200)).row(record(), body, "answer \udc00 end")
    for column in ("request_json", "response_text"):
        row[column].encode("utf-8")  # raises UnicodeEncodeError if a surrogate is left
    assert json.loads(row["request_json"])["messages"][0]["content"] == "hi ? there"
    assert row["response_text"] == "answer ? end"
