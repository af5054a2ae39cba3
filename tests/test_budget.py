"""Probe and audit budgets and backoff, with an injected clock."""

from __future__ import annotations

import asyncio

from probes.audit_budget import AuditBudget
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


async def test_audit_requests_wait_their_turn_and_stop_ends_the_wait() -> None:
    clock = Clock()
    stop = asyncio.Event()
    gate = AuditBudget.per_minute(requests=2, tokens=1000, clock=clock, stop=stop)
    assert await gate.admit(300) and await gate.admit(300)  # a minute's two requests
    waiting = asyncio.create_task(gate.admit(300))
    await asyncio.sleep(0)  # let it find the bucket empty (the clock does not move)
    assert not waiting.done()
    stop.set()
    assert await waiting is False and gate.sent == 2


async def test_audit_tokens_are_settled_against_usage() -> None:
    clock = Clock()
    gate = AuditBudget.per_minute(requests=100, tokens=1000, clock=clock, stop=asyncio.Event())
    assert await gate.admit(600)
    gate.settle(600, 100)  # it used 100 of the 600 reserved: 500 come back
    assert gate.budget.tokens.level == 900
    assert await gate.admit(900)
    gate.settle(900, 1200)  # it used more than reserved: the next requests wait longer
    assert gate.budget.tokens.level == -300
    gate.settle(100, None)  # no usage reported: the estimate stands
    assert gate.budget.tokens.level == -300
    clock.now = 24.0  # 400 tokens later (1000 a minute)
    assert await gate.admit(100) and gate.budget.tokens.level == 0
    # A request larger than a minute's tokens takes the whole minute instead of never fitting.
    clock.now = 84.0
    assert await gate.admit(5000) and gate.budget.tokens.level == 0
