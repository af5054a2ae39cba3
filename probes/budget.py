"""How much probe traffic the upstream may get: request and token budgets, and backoff.

Probes must never crowd out users, so every re-ask and canary asks the budget first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    """`rate_per_min` units a minute, at most one minute's worth saved up."""

    rate_per_min: float
    clock: Callable[[], float]
    level: float = 0.0
    updated: float | None = None

    def _refill(self) -> None:
        now = self.clock()
        if self.updated is None:
            self.level = self.rate_per_min
        else:
            self.level = min(
                self.rate_per_min, self.level + (now - self.updated) * self.rate_per_min / 60
            )
        self.updated = now

    def take(self, amount: float) -> bool:
        """Spend `amount` if it is there; False leaves the bucket as it was."""
        self._refill()
        if amount > self.level:
            return False
        self.level -= amount
        return True

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` could be taken (0 when it can be now)."""
        self._refill()
        missing = min(amount, self.rate_per_min) - self.level
        return max(0.0, missing * 60 / self.rate_per_min) if self.rate_per_min > 0 else 60.0


@dataclass(slots=True)
class Budget:
    """Requests and tokens per minute for all probe traffic of one worker."""

    requests: TokenBucket
    tokens: TokenBucket

    @classmethod
    def per_minute(cls, requests: float, tokens: float, clock: Callable[[], float]) -> Budget:
        """A budget allowing `requests` and `tokens` a minute."""
        return cls(TokenBucket(requests, clock), TokenBucket(tokens, clock))

    def try_spend(self, requests: int, tokens: int) -> bool:
        """Reserve a batch of requests expected to use `tokens`; all or nothing."""
        if not self.requests.take(requests):
            return False
        if not self.tokens.take(tokens):
            self.requests.level += requests  # give back: nothing was sent
            return False
        return True

    def delay(self, requests: int, tokens: int) -> float:
        """Seconds to wait before `try_spend(requests, tokens)` can succeed."""
        return max(self.requests.wait_for(requests), self.tokens.wait_for(tokens))


@dataclass(slots=True)
class Backoff:
    """Exponential backoff while the upstream is slow or refusing, reset on success."""

    base_s: float = 1.0
    cap_s: float = 300.0
    failures: int = 0

    def failed(self) -> float:
        """Note a failure (error, 429/5xx, or slower than the limit); seconds to pause."""
        self.failures += 1
        return min(self.cap_s, self.base_s * 2.0 ** (self.failures - 1))

    def succeeded(self) -> None:
        """Back to full speed."""
        self.failures = 0
