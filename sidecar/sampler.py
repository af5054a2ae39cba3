"""Which answers are kept for the quality probes, and what of them may be stored.

Pure: no I/O, no clock, no randomness. The decision is a hash of the request id, so every
process (and every replay) agrees on which requests are sampled. Text is redacted before it
is stored (e-mail addresses, phone and card numbers, API keys, tokens, long secrets) and capped
with a visible marker. Building a row costs regex passes over up to a few times `max_chars`:
run it off the request path.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.chunk import Chunk
from sidecar.config import ConfigError
from sidecar.record import Record
from sidecar.sse import classify
from sidecar.wire import NO_SAMPLE_HEADER, REDACTION_MARK, TRUNCATION_MARK

SAMPLE_COLUMNS: tuple[str, ...] = (
    "ts", "request_id", "model", "deployment", "route", "origin", "stream", "finish_reason",
    "request_json", "response_text",
)  # fmt: skip
_FALSE = frozenset({"0", "false", "no", "off"})


def sample_point(request_id: str) -> float:
    """The request's fixed point in [0, 1): it is sampled when the point is below the rate."""
    digest = hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


# ---------------------------------------------------------------------------- redaction


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _is_card(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    return 13 <= len(digits) <= 19 and _luhn(digits)


_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")


def _is_phone(match: str) -> bool:
    """8-15 digits after a '+', else 9-15 in separated groups (a bare 10-digit result is math)."""
    digits = sum(ch.isdigit() for ch in match)
    if _IPV4.fullmatch(match) or _DATE.match(match):
        return False
    if match.startswith("+"):
        return 8 <= digits <= 15
    return 9 <= digits <= 15 and not match.isdigit()


def _entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(c / len(text) * math.log2(c / len(text)) for c in counts.values())


def _is_secret(match: str) -> bool:
    """Random-looking: mixed case with digits, high entropy, no words, not a path or URL."""
    body = match.rstrip("=")
    classes = (
        any(c.isupper() for c in body)
        and any(c.islower() for c in body)
        and any(c.isdigit() for c in body)
    )
    wordy = re.search(r"[a-z]{8}", body) is not None  # 8 lowercase in a row: ~3% of random keys
    return classes and not wordy and body.count("/") <= 3 and _entropy(body) >= 4.0


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: str
    pattern: re.Pattern[str]
    accept: Callable[[str], bool] | None = None
    keep_prefix_group: int = 0  # a group kept verbatim before the marker (e.g. "password=")


# Order matters: specific shapes first, so a key is called a key and not a generic secret.
_RULES: tuple[_Rule, ...] = (
    _Rule("private_key", re.compile(
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.S)),
    _Rule("bearer", re.compile(r"\b[Bb]earer\s+[A-Za-z0-9\-._~+/]{16,}=*")),
    _Rule("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    _Rule("api_key", re.compile(
        r"\b(?:sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"
        r"|xox[abposr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|hf_[A-Za-z0-9]{30,})")),
    _Rule("aws_key", re.compile(
        r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|AKPA|ANPA|ANVA|AROA|APKA|ASCA)[A-Z0-9]{16}\b")),
    _Rule("secret", re.compile(
        r"(?i)(\b(?:aws_)?(?:api[_-]?key|secret(?:[_-]?(?:access[_-]?)?key)?|access[_-]?token"
        r"|auth[_-]?token|client[_-]?secret|password|passwd|pwd)[\"']?\s*[:=]\s*[\"']?)"
        r"[^\s\"',;]{6,}"), keep_prefix_group=1),
    # Bounded parts (RFC 5321 sizes) keep the scan linear on long runs without an '@'.
    _Rule("email", re.compile(
        r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}"
        r"\.[A-Za-z]{2,24}\b")),
    _Rule("card", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"), _is_card),
    _Rule("phone", re.compile(
        r"(?<![\w.+-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,5}(?:[ .-]?\d{2,5}){1,4}"
        r"(?![\w.-]?\d)"), _is_phone),
    _Rule("secret", re.compile(r"\b[0-9a-fA-F]{32,}\b")),
    _Rule("secret", re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{32,}={0,2}"), _is_secret),
)  # fmt: skip


def redact(text: str, counts: Counter[str] | None = None) -> str:
    """`text` with secrets and personal numbers replaced by `[REDACTED:kind]` markers."""
    for rule in _RULES:
        text = rule.pattern.sub(_replacer(rule, counts), text)
    return text


def _replacer(rule: _Rule, counts: Counter[str] | None) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        if rule.accept is not None and not rule.accept(match.group()):
            return match.group()
        if counts is not None:
            counts[rule.kind] += 1
        prefix = match.group(rule.keep_prefix_group) if rule.keep_prefix_group else ""
        return f"{prefix}{REDACTION_MARK}{rule.kind}]"

    return replace


# ---------------------------------------------------------------------------- capping


def cap_text(text: str, max_chars: int) -> str:
    """At most about `max_chars`: the head, then a marker saying how much was cut."""
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}…{TRUNCATION_MARK}{len(text) - max_chars} chars]"


def _map_strings(obj: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, dict):
        return {key: _map_strings(value, fn) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_map_strings(value, fn) for value in obj]
    return obj


def _dumps(obj: Any) -> str:
    return storable(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))


def storable(text: str) -> str:
    """`text` encodable as UTF-8, for the store and /metrics: JSON lets a client send lone
    surrogates ("\\ud800"), which UTF-8 cannot encode."""
    return text.encode("utf-8", "replace").decode()


def cap_json(obj: Any, max_chars: int) -> str:
    """Serialised `obj` within `max_chars`, still valid JSON: its longest strings are cut."""
    text = _dumps(obj)
    if len(text) <= max_chars:
        return text
    obj = _map_strings(obj, functools.partial(cap_text, max_chars=max_chars))  # cheap first cut
    low, high = 0, max_chars  # the longest per-string length that fits
    best: str | None = None
    while low <= high:
        mid = (low + high) // 2
        candidate = _dumps(_map_strings(obj, functools.partial(cap_text, max_chars=mid)))
        if len(candidate) <= max_chars:
            best, low = candidate, mid + 1
        else:
            high = mid - 1
    return best if best is not None else cap_text(text, max_chars)  # structure alone too big


def request_json(body: bytes, max_chars: int) -> str:
    """The request body, redacted and capped; still JSON when it was JSON."""
    try:
        obj = json.loads(body)
    except ValueError:  # not JSON: keep it as text
        return response_text(body.decode("utf-8", "replace"), max_chars)
    # Redact only what could be kept, but a little more, so no secret is cut in half first.
    return cap_json(_map_strings(obj, lambda s: redact(s[: 2 * max_chars])), max_chars)


def response_text(answer: str, max_chars: int) -> str:
    """The answer text, redacted and capped (redacting only what could be kept)."""
    return storable(cap_text(redact(answer[: 2 * max_chars]), max_chars))


# ---------------------------------------------------------------------------- answers


@dataclass(slots=True)
class StreamAnswer:
    """Accumulates the content deltas of a stream, keeping at most `max_chars` of text."""

    max_chars: int = 1 << 20
    parts: list[str] = field(default_factory=list)
    size: int = 0
    dropped: int = 0  # characters past the cap, counted but not kept
    finish_reason: str = ""

    def add(self, chunk: Chunk) -> None:
        """Fold in one classified stream event."""
        if chunk.finish_reason:
            self.finish_reason = chunk.finish_reason
        if not chunk.text:
            return
        room = self.max_chars - self.size
        if room > 0:
            self.parts.append(chunk.text[:room])
            self.size += min(room, len(chunk.text))
        self.dropped += max(0, len(chunk.text) - max(room, 0))

    def add_data(self, data: bytes | None) -> None:
        """Fold in one SSE event's data (as `SSEParser` yields it)."""
        self.add(classify(data))

    @property
    def text(self) -> str:
        """The answer so far."""
        return "".join(self.parts)


# ---------------------------------------------------------------------------- the sampler


@dataclass(frozen=True, slots=True)
class SamplerSettings:
    """Sample rates (global and per model, exact names or globs) and the stored text's cap."""

    rate: float = 0.05
    rates: Mapping[str, float] = field(default_factory=dict)
    max_chars: int = 32_768

    def __post_init__(self) -> None:
        for name, value in {"rate": self.rate, **self.rates}.items():
            if not 0.0 <= value <= 1.0:
                raise ConfigError(
                    f"sample rates must be within [0, 1]: the rate for {name!r} is {value}"
                )
        if self.max_chars < 64:
            raise ConfigError("sample_max_chars must be at least 64")


class Sampler:
    """Decides which answers are sampled, and builds their redacted, capped rows."""

    def __init__(self, settings: SamplerSettings | None = None) -> None:
        self.settings = settings or SamplerSettings()

    def rate_for(self, model: str) -> float:
        """The model's own rate (exact name, else the longest matching glob), else the global."""
        rates = self.settings.rates
        if model in rates:
            return rates[model]
        globs = [p for p in rates if p != model and fnmatch.fnmatchcase(model, p)]
        return rates[max(globs, key=len)] if globs else self.settings.rate

    def should_sample(self, record: Record, headers: Mapping[str, str]) -> bool:
        """Sample user traffic at the model's rate, unless the client opted out."""
        if record.origin != "user":
            return False  # probe and canary answers are scored by the probes themselves
        opt_out = headers.get(NO_SAMPLE_HEADER)
        if opt_out is not None and opt_out.strip().lower() not in _FALSE:
            return False
        return sample_point(record.request_id) < self.rate_for(record.model)

    def row(self, record: Record, request_body: bytes, answer: str) -> dict[str, Any]:
        """The `fathom.samples` row: request and answer redacted and capped."""
        return {
            "ts": record.ts,
            "request_id": record.request_id,
            "model": record.model,
            "deployment": record.deployment,
            "route": record.route,
            "origin": record.origin,
            "stream": int(record.stream),
            "finish_reason": record.finish_reason,
            "request_json": request_json(request_body, self.settings.max_chars),
            "response_text": response_text(answer, self.settings.max_chars),
        }
