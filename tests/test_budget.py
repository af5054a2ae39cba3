"""Probe budgets and backoff, with an injected clock."""

from __future__ import annotations

from probes.budget import Backoff, Budget


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_caps_requests_and_tokens_per_minute() -> None:
    clock = Clock()
    budget = Budget.per_minute(requests=10, tokens=1000, clock=clock)
    assert budget.try_spend(6, 600)
    assert not budget.try_spend(6, 100)  # only 4 requests left
    assert not budget.try_spend(1, 500)  # only 400 tokens left; the request is given back
    assert budget.try_spend(4, 400)
    assert not budget.try_spend(1, 1)
    assert abs(budget.delay(1, 100) - 6.0) < 1e-9  # tokens refill at 1000/min: 100 in 6 s
    clock.now = 6.0
    assert budget.try_spend(1, 100)
    clock.now = 600.0  # long idle: never more than one minute's worth saved up
    assert budget.try_spend(10, 1000) and not budget.try_spend(1, 1)


def test_backoff_doubles_to_a_cap_and_resets() -> None:
    backoff = Backoff(base_s=1, cap_s=5)
    assert [backoff.failed() for _ in range(5)] == [1, 2, 4, 5, 5]
    backoff.succeeded()
    assert backoff.failed() == 1
