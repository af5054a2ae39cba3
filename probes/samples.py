"""A sampled answer as the probe worker sees it: whether it can be re-asked, the probes that
need no model, what its re-asks may cost, and where they go."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from probes.answer_kind import abstention, classify, of_kind
from probes.budget import TokenBucket
from probes.consistency import Reasked
from probes.degeneration import score_degeneration
from probes.scorer import ProbeResult
from sidecar.wire import is_redacted, is_truncated


@dataclass(frozen=True, slots=True)
class Sample:
    """One `fathom.samples` row, as UNSCORED_SAMPLES selects it."""

    ts: datetime
    request_id: str
    model: str
    deployment: str
    route: str
    finish_reason: str
    request_json: str
    response_text: str

    @classmethod
    def of(cls, row: Sequence[Any]) -> Sample:
        """From a result row; the store returns UTC times without a zone."""
        ts = row[0] if row[0].tzinfo else row[0].replace(tzinfo=UTC)
        return cls(ts, *(str(v) for v in row[1:8]))


@dataclass(frozen=True, slots=True)
class Scored:
    """A sample's probe results, why consistency is missing ('' when it is not), and whether
    the upstream was overloaded while re-asking."""

    results: tuple[ProbeResult, ...]
    skipped: str = ""
    overloaded: bool = False


def reaskable(sample: Sample) -> tuple[dict[str, Any] | None, str]:
    """(the original request, '') when the sample can be re-asked, else (None, why not).

    Re-asks send exactly the prompt that produced the answer: a stored request that lost
    part of itself to the cap or to redaction asks another question, so it is not re-asked."""
    if is_truncated(sample.request_json):
        return None, "truncated"
    if is_redacted(sample.request_json):
        return None, "redacted"
    try:
        request = json.loads(sample.request_json)
    except ValueError:
        return None, "not_json"
    if not isinstance(request, dict) or not request.get("model"):
        return None, "not_json"
    return request, ""


def cheap_probes(sample: Sample, prompt: str) -> tuple[tuple[ProbeResult, ...], bool]:
    """(degeneration and abstention results, whether the answer is informative): the probes
    that need no model and no re-ask."""
    degeneration = score_degeneration(sample.response_text, sample.finish_reason, prompt=prompt)
    kind = classify(sample.response_text, prompt)
    useful = of_kind(kind, degeneration.detail.get("flags", []))
    return (degeneration, abstention(kind)), useful


def estimate_tokens(request: Mapping[str, Any], sample: Sample) -> int:
    """Tokens one re-ask may use: ~4 characters a token for the request and the answer,
    the answer bounded by the request's max_tokens. Settled against usage afterwards."""
    answer = len(sample.response_text) // 4 + 16
    limit = request.get("max_tokens") or request.get("max_completion_tokens")
    if isinstance(limit, int) and limit > 0:
        answer = min(answer, limit)
    return len(sample.request_json) // 4 + answer


def settle(bucket: TokenBucket, estimated: int, replies: Reasked) -> None:
    """Give back (or take) the difference between estimated and reported tokens."""
    answered = [r for r in replies.replies if not r.error]
    if any(r.tokens is None for r in answered):
        return  # no usage reported: the estimate stands
    bucket.level = min(bucket.rate_per_min, bucket.level + estimated - replies.tokens)


def overloaded(error: str) -> bool:
    """Whether a probe request's error class means the upstream needs a rest."""
    return error in ("timeout", "connect", "http", "http_429") or error.startswith("http_5")


def endpoint(target: str, route: str) -> str:
    """The URL a sample of `route` is re-asked at ('.../v1' in the target is tolerated)."""
    base = target.rstrip("/").removesuffix("/v1")
    return base + ("/v1/chat/completions" if route == "chat" else "/v1/completions")
