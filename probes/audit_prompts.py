"""Where a reference audit's prompts come from: a file, the stored samples, or the golden set.

A prompts file holds one prompt a line: a JSON object with "prompt" (and optionally "id"; a
golden-set line works) or plain text. Stored samples are mirrored as they were asked (a chat
request's messages, a completion's prompt), unless the store kept less than was sent
(truncated or redacted: re-asking would ask another question).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probes.audit_report import AuditPrompt
from probes.audit_sql import RECENT_PROMPTS
from probes.golden import Canary
from sidecar.wire import is_redacted, is_truncated, prompt_text

if TYPE_CHECKING:
    from sidecar.store.client import Store

OVERFETCH = 4  # stored samples read per prompt wanted: some cannot be mirrored


class PromptsError(ValueError):
    """A prompts file that cannot be used; the message names the file and line."""


def _id(text: str) -> str:
    return "p-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def read_prompts(path: Path) -> list[AuditPrompt]:
    """The prompts of a file (JSON objects with "prompt", or plain text lines)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptsError(f"cannot read prompts file {path}: {exc}") from exc
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        obj: Any = line
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise PromptsError(f"{path}:{number}: not JSON ({exc})") from None
            if not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
                raise PromptsError(f"{path}:{number}: needs a non-empty string 'prompt'")
            prompts.append(AuditPrompt.of(str(obj.get("id") or _id(obj["prompt"])), obj["prompt"]))
        else:
            prompts.append(AuditPrompt.of(_id(line.strip()), line.strip()))
    if not prompts:
        raise PromptsError(f"{path}: no prompts in it")
    return prompts


def golden_prompts(canaries: Sequence[Canary]) -> list[AuditPrompt]:
    """Canary prompts as prompts to mirror (their answers are not needed for that)."""
    return [AuditPrompt.of(c.id, c.prompt) for c in canaries]


def stored_prompt(request_json: str, route: str) -> AuditPrompt | None:
    """A stored request as a prompt to mirror, or None when it cannot be re-asked as it was."""
    if is_truncated(request_json) or is_redacted(request_json):
        return None
    try:
        body = json.loads(request_json)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    chat = route == "chat"
    text = prompt_text(body, chat)
    if not text.strip():
        return None
    messages = body.get("messages") if chat else None
    if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
        kept = tuple({"role": m.get("role"), "content": m.get("content")} for m in messages)
        return AuditPrompt(_id(request_json), text, kept)
    return AuditPrompt.of(_id(request_json), text)


async def recent_prompts(store: Store, model: str, n: int) -> list[AuditPrompt]:
    """Up to n of the newest stored requests of `model` that can be mirrored."""
    rows = await store.query(RECENT_PROMPTS, {"model": model, "limit": n * OVERFETCH})
    found = [stored_prompt(str(body), str(route)) for body, route, _ in rows]
    return [p for p in found if p is not None][:n]
