"""Waiting for something that happens on its own schedule: poll it, with a deadline.

Never a blind sleep (STYLE 7): each helper returns as soon as the condition holds and fails
with what it saw when the time runs out.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from collections.abc import Awaitable, Callable, Sequence

from fathom import spawn

Check = Callable[[], bool] | Callable[[], Awaitable[bool]]


async def until(
    check: Check, within: float = 20.0, every: float = 0.05, what: str | Callable[[], str] = ""
) -> None:
    """Poll `check()` (plain or async) every `every` s until it holds; fail after `within` s,
    saying `what` (or what `what()` says then) was not met."""
    deadline = time.monotonic() + within
    while True:
        held = check()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() >= deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"{said or 'condition'} not met in {within:g} s")
        await asyncio.sleep(every)


def wait_for_line(
    child: spawn.Child, pattern: str, timeout: float, unlike: Sequence[str] = ()
) -> str:
    """Poll a child's output until a line matches (one not in `unlike`); fail if it exits or
    the time runs out."""
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while True:
        seen = [line for line in list(child.output) if regex.search(line) and line not in unlike]
        if seen:
            return seen[-1]
        if child.process.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(list(child.output)[-20:])
            raise spawn.SpawnError(f"no line matching {pattern!r} in time:\n{tail}")
        time.sleep(0.1)
