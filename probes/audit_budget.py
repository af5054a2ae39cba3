"""The mirrored audit's budget: requests and tokens per minute for all its traffic.

Every audit request, to either side, asks `admit` before it is sent and waits its turn (in
order: one lock) until the budget has room, so that however many comparisons run, audit
traffic never crowds out users. Tokens are estimated before and settled against the usage the
server reports after, as the probe budget does (probes.samples.settle).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from probes.budget import Budget

MIN_WAIT_S = 0.05  # a wait shorter than this is spent polling, not sleeping


@dataclass(slots=True)
class AuditBudget:
    """One budget for every audit request of a process; `stop` ends every wait."""

    budget: Budget
    stop: asyncio.Event
    sent: int = 0  # requests admitted
    waited_s: float = 0.0  # time requests spent waiting for the budget
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def per_minute(
        cls, requests: float, tokens: float, clock: Callable[[], float], stop: asyncio.Event
    ) -> AuditBudget:
        """A budget of `requests` and `tokens` a minute."""
        return cls(Budget.per_minute(requests, tokens, clock), stop)

    async def admit(self, tokens: int) -> bool:
        """Wait until one request of about `tokens` fits; False once `stop` is set."""
        # A request larger than a minute's tokens could never fit: it takes the whole minute.
        tokens = min(tokens, int(self.budget.tokens.rate_per_min))
        loop = asyncio.get_running_loop()
        async with self._lock:
            while not self.stop.is_set():
                if self.budget.try_spend(1, tokens):
                    self.sent += 1
                    return True
                delay = max(MIN_WAIT_S, self.budget.delay(1, tokens))
                started = loop.time()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), delay)
                self.waited_s += loop.time() - started
        return False

    def settle(self, estimated: int, used: int | None) -> None:
        """Give back (or take) what a request used beside its estimate, when reported."""
        if used is None:
            return
        bucket = self.budget.tokens
        estimated = min(estimated, int(bucket.rate_per_min))
        bucket.level = min(bucket.rate_per_min, bucket.level + estimated - used)
