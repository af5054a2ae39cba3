"""Canary rounds, one part of the probe worker: every `canary_interval_s`, a rotating subset of
the canaries goes to each (model, deployment) that users asked lately (or that the routes
configure) and that hashes to this worker; the answers are scored and stored (request_id '').
Also here: which canaries a round sends, in what order, and what they may cost."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from probes import worker_sql
from probes.consistency import Reply
from probes.factuality import SYSTEM_PROMPT, Canary, ask_canary, score_canary
from probes.probe_settings import ProbeSettings
from probes.result import QUALITY_COLUMNS
from probes.samples import overloaded
from probes.scorer import Scorer
from probes.traffic import ProbeTraffic
from probes.worker_stats import WorkerStats
from sidecar.store.client import Store

CANARY_MAX_TOKENS = 128  # probes.factuality.canary_request's default


def canary_tokens(canary: Canary) -> int:
    """Tokens one canary may use (the same ~4 characters a token)."""
    return (len(SYSTEM_PROMPT) + len(canary.prompt)) // 4 + 16 + CANARY_MAX_TOKENS


def rotation(canaries: Sequence[Canary], per_round: int, round_index: int) -> list[Canary]:
    """Round `round_index`'s canaries: the next `per_round` of the set, wrapping around."""
    n = len(canaries)
    return [canaries[(round_index * per_round + j) % n] for j in range(min(per_round, n))]


def canary_order(canaries: Sequence[Canary]) -> list[Canary]:
    """The canaries in the order rounds take them: shuffled by id, the same in every worker.

    Golden files group their items (the arithmetic first, then the facts...): in file order a
    round would hold one kind only, and a regression that breaks another kind would find no
    evidence in it. Shuffled, every round samples the whole set."""
    return sorted(canaries, key=lambda c: hashlib.sha256(c.id.encode()).digest())


class CanaryRounds:
    """Sends, scores and stores the canary rounds of this worker's targets when they are due."""

    def __init__(
        self,
        store: Store,
        traffic: ProbeTraffic,
        scorer: Scorer,
        canaries: Sequence[Canary],
        settings: ProbeSettings,
        stats: WorkerStats,
        clock: Callable[[], float],
    ) -> None:
        self.store, self.traffic, self.settings, self.stats = store, traffic, settings, stats
        self._scorer, self._clock = scorer, clock
        self.canaries = canary_order(canaries)
        self._targets: list[tuple[str, str]] = []
        self._targets_at = -float("inf")  # when the targets were last read
        self._due: dict[tuple[str, str], float] = {}

    async def if_due(self) -> None:
        """A canary round for each of this worker's targets whose interval has passed."""
        s = self.settings
        if not self.canaries or s.canaries_per_round == 0:
            return
        now = self._clock()
        if now - self._targets_at >= min(s.canary_interval_s, 60.0):
            since = datetime.fromtimestamp(now, UTC) - timedelta(seconds=s.canary_lookback_s)
            parameters = worker_sql.targets_parameters(
                since, s.worker_index, s.worker_count, s.routed
            )
            rows = await self.store.query(worker_sql.CANARY_TARGETS, parameters)
            self._targets, self._targets_at = [(str(m), str(d)) for m, d in rows], now
        for target in self._targets:
            if self.traffic.pause:
                return
            if self._due.get(target, -float("inf")) <= now and await self.round(*target):
                self._due[target] = now + s.canary_interval_s

    async def round(self, model: str, deployment: str) -> bool:
        """Send, score and store one round of canaries; False when the budget said not now."""
        s, traffic = self.settings, self.traffic
        round_index = int(self._clock() // s.canary_interval_s)
        chosen = rotation(self.canaries, s.canaries_per_round, round_index)
        if not traffic.budget.try_spend(len(chosen), sum(map(canary_tokens, chosen))):
            self.stats.canary_rounds_deferred += 1
            return False
        url = traffic.url("chat")
        replies = await asyncio.gather(*(
            ask_canary(traffic.session, url, canary, model, deployment=deployment,
                       headers=traffic.headers, read_timeout_s=traffic.timeout_s)
            for canary in chosen
        ))  # fmt: skip
        self.stats.canaries_sent += len(chosen)
        await self._score(model, deployment, chosen, replies)
        if any(overloaded(r.error) for r in replies):
            traffic.rest()
        return True

    async def _score(
        self, model: str, deployment: str, chosen: Sequence[Canary], replies: Sequence[Reply]
    ) -> None:
        """Score the answered canaries and store them in one insert (request_id '')."""
        answered = [(c, r) for c, r in zip(chosen, replies, strict=True) if not r.error]
        self.stats.canaries_failed += len(chosen) - len(answered)
        if not answered:
            return
        results = await asyncio.gather(
            *(score_canary(self._scorer, canary, reply.text) for canary, reply in answered)
        )
        ts = datetime.fromtimestamp(self._clock(), UTC)
        rows = [result.to_row(ts, "", model, deployment) for result in results]
        values = [[row[c] for c in QUALITY_COLUMNS] for row in rows]
        await self.store.insert("fathom.quality", QUALITY_COLUMNS, values)
        self.stats.canaries_scored += len(results)
