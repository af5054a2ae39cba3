"""The client side of a reference audit: the same requests to the reference and the candidate.

Every request is labelled audit traffic (`origin='audit'`, never sampled) so that a Fathom
proxy in front of either side keeps it out of user figures. Each request carries its own seed,
drawn from the audit's generator, so that k answers are k independent draws on engines that
reseed per request from a fixed state (llama-cpp-python's server does).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from probes.audit_logprobs import Scored, completion_logprobs, read_echo
from probes.consistency import Reply, probe_headers
from sidecar.wire import parse_answer

ORIGIN = "audit"  # one of sidecar.wire.LABELLED_ORIGINS
Posted = tuple[dict[str, Any] | None, str]  # (response object, '') or (None, error class)


class AuditError(RuntimeError):
    """A side of the audit cannot be used; the message says which, why and what to do."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One side of the audit: where it is, which model it serves, what to call it."""

    name: str  # the deployment label its results carry
    base: str  # base URL, without /v1
    model: str

    def url(self, path: str) -> str:
        """An absolute URL under the base ('/v1/...')."""
        return self.base + path


def base_url(url: str) -> str:
    """The base URL of an OpenAI-compatible server ('.../v1' and a trailing '/' tolerated)."""
    return url.strip().rstrip("/").removesuffix("/v1")


def headers() -> dict[str, str]:
    """Headers of audit traffic: labelled, not sampled."""
    return probe_headers(ORIGIN, "", None)


def _timeout(read_s: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=read_s)


async def served_models(session: aiohttp.ClientSession, role: str, base: str) -> list[str]:
    """The model ids GET /v1/models lists, or an AuditError saying why there are none."""
    url = base + "/v1/models"
    try:
        async with session.get(url, headers=headers(), timeout=_timeout(30.0)) as resp:
            raw = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        raise AuditError(
            f"the {role} at {base} is unreachable ({reason}): is the server running there? "
            f"check --{role}"
        ) from exc
    if status >= 400:
        raise AuditError(f"the {role} at {base} answered GET /v1/models with HTTP {status}: "
                         "is it an OpenAI-compatible server?")  # fmt: skip
    try:
        data = json.loads(raw).get("data", [])
        return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]
    except (ValueError, AttributeError) as exc:
        raise AuditError(f"the {role} at {base} sent a /v1/models that is not JSON") from exc


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    body: Mapping[str, Any],
    read_timeout_s: float,
    sent_headers: Mapping[str, str] | None = None,
) -> Posted:
    """(response object, '') or (None, error class): failures never raise."""
    try:
        async with session.post(
            url, json=body, headers=sent_headers or headers(), timeout=_timeout(read_timeout_s)
        ) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                return None, f"http_{resp.status}"
    except TimeoutError:
        return None, "timeout"
    except aiohttp.ClientError as exc:
        return None, "connect" if isinstance(exc, aiohttp.ClientConnectorError) else "http"
    try:
        obj = json.loads(raw)
    except ValueError:
        return None, "bad_json"
    return (obj, "") if isinstance(obj, dict) else (None, "bad_json")


class Gate(Protocol):
    """What an audit's requests ask before they are sent (probes.audit_budget), and tell
    after: the tokens they used."""

    async def admit(self, tokens: int) -> bool:
        """Wait until one request of about `tokens` may go; False: it must not."""

    def settle(self, estimated: int, used: int | None) -> None:
        """The request admitted with `estimated` tokens used `used` (None: not reported)."""


def estimate(text_chars: int, max_tokens: int) -> int:
    """Tokens a request may use: ~4 characters a token of what is sent, plus its answer."""
    return text_chars // 4 + max_tokens + 8


@dataclass(slots=True)
class Caller:
    """Sends one side's requests, at most `concurrency` at a time; with a gate, each asks it
    first. `extra` headers go with every request (pin a deployment, prove probe traffic)."""

    endpoint: Endpoint
    session: aiohttp.ClientSession
    limit: asyncio.Semaphore
    read_timeout_s: float = 300.0
    extra: Mapping[str, str] = field(default_factory=dict)
    gate: Gate | None = None

    def headers(self) -> dict[str, str]:
        """Audit traffic's labels and this side's extra headers."""
        return {**headers(), **self.extra}

    async def _post(self, path: str, body: Mapping[str, Any], tokens: int) -> Posted:
        """One request, admitted by the gate (error class 'budget' when it is not)."""
        async with self.limit:
            if self.gate is not None and not await self.gate.admit(tokens):
                return None, "budget"
            obj, error = await post_json(
                self.session, self.endpoint.url(path), body, self.read_timeout_s, self.headers()
            )
        if self.gate is not None:
            self.gate.settle(tokens, parse_answer(obj).tokens if obj is not None else None)
        return obj, error

    async def chat(
        self, messages: Sequence[Mapping[str, Any]], temperature: float, max_tokens: int,
        seed: int | None,
    ) -> Reply:  # fmt: skip
        """One chat answer (no seed for greedy requests: nothing to draw)."""
        body: dict[str, Any] = {
            "model": self.endpoint.model, "messages": list(messages),
            "temperature": temperature, "max_tokens": max_tokens,
        }  # fmt: skip
        if seed is not None:
            body["seed"] = seed
        tokens = estimate(len(json.dumps(list(messages))), max_tokens)
        obj, error = await self._post("/v1/chat/completions", body, tokens)
        if obj is None:
            return Reply(error=error)
        answer = parse_answer(obj)
        return Reply(answer.text, answer.finish_reason, answer.tokens)

    async def complete(
        self, prompt: str, temperature: float, max_tokens: int, seed: int, top: int | None
    ) -> tuple[str, Scored | None, str]:
        """(text, logprobs of its tokens (when `top` asks for them) or None, error class) of
        one text completion."""
        body: dict[str, Any] = {
            "model": self.endpoint.model, "prompt": prompt, "temperature": temperature,
            "max_tokens": max_tokens, "seed": seed,
        }  # fmt: skip
        if top is not None:
            body["logprobs"] = top
        obj, error = await self._post("/v1/completions", body, estimate(len(prompt), max_tokens))
        if obj is None:
            return "", None, error
        return parse_answer(obj).text, completion_logprobs(obj), ""

    async def score(self, prompt: str, answer: str, top: int) -> tuple[Scored | None, str]:
        """This side's logprobs of `answer` after `prompt` (echo), or (None, why not)."""
        body = {
            "model": self.endpoint.model, "prompt": prompt + answer, "echo": True,
            "logprobs": top, "max_tokens": 1, "temperature": 0,
        }  # fmt: skip
        obj, error = await self._post("/v1/completions", body, estimate(len(prompt + answer), 1))
        if obj is None:
            return None, error
        scored = read_echo(obj, prompt, answer)
        return (scored, "") if scored is not None else (None, "no_echo")
