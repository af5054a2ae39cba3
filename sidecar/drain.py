"""Draining before the model server stops: what the model container's preStop hook calls.

When a pod is deleted, Kubernetes stops its main containers (the model server) first and a
native sidecar only after they have exited. Streams relayed by Fathom would die with the
model server, so the model server's preStop hook asks Fathom to drain (GET /drain on the admin
port): /readyz turns 503 at once; new requests are still relayed for `drain_settle_s`, while
the endpoint removal reaches every node, then answered 503 with Retry-After; the call returns
when the requests in flight have finished, or after `grace_s`. Only then does the model
server get its SIGTERM.

The same hook runs when the kubelet restarts the model server alone (a failed liveness
probe). So after a drain Fathom watches the upstream's port: once it has been closed and
then accepts again, the drain is over and the pod serves again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("fathom.drain")
WATCH_S = 0.25  # how often a drained sidecar looks at the upstream's port


@dataclass(frozen=True, slots=True)
class Drained:
    """What GET /drain answers."""

    drained: bool
    in_flight: int
    waited_s: float


class Drain:
    """In-flight requests, and the drain state the proxy and /readyz read."""

    def __init__(
        self,
        settle_s: float,
        grace_s: float,
        upstream: tuple[str, int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settle_s, self.grace_s, self.upstream = settle_s, grace_s, upstream
        self._clock = clock
        self.in_flight = 0
        self.started = False  # /readyz says 503
        self.refusing = False  # new requests get 503 + Retry-After
        self.phase = ""  # for /readyz: draining, drained, upstream gone
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[Drained] | None = None
        self._watch: asyncio.Task[None] | None = None

    def enter(self) -> None:
        """A request begins."""
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        """A request has ended."""
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def run(self) -> Drained:
        """Drain (once; concurrent callers share it) and say how it went."""
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="fathom-drain")
        # A hook that hangs up must not cancel the drain the others wait on.
        return await asyncio.shield(self._task)

    async def _drain(self) -> Drained:
        t0 = self._clock()
        self.started, self.phase = True, "draining"
        log.info("draining: not ready; relaying new requests for %.0f s more", self.settle_s)
        await asyncio.sleep(self.settle_s)
        self.refusing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.grace_s)
        result = Drained(self.in_flight == 0, self.in_flight, round(self._clock() - t0, 3))
        log.info("drained: %s", result)
        self.phase = "drained"
        self._watch = asyncio.create_task(self._resume_when_back(), name="fathom-drain-watch")
        return result

    async def _resume_when_back(self) -> None:
        """End the drain once the upstream's port has closed and opened again."""
        await self._until_upstream(accepting=False)
        self.phase = "upstream gone"
        await self._until_upstream(accepting=True)
        log.info("the model server is back: serving again")
        self.started = self.refusing = False
        self.phase = ""
        self._task = None

    async def _until_upstream(self, accepting: bool) -> None:
        """Poll the upstream's port until it does (or no longer does) accept connections."""
        # Polling: another container's port sends no event to await.
        while await _accepts(self.upstream) != accepting:  # noqa: ASYNC110
            await asyncio.sleep(WATCH_S)

    async def close(self) -> None:
        """Cancel the drain's tasks (shutdown)."""
        for task in (self._task, self._watch):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def _accepts(address: tuple[str, int]) -> bool:
    """Whether something listens at host:port."""
    try:
        async with asyncio.timeout(WATCH_S):
            _, writer = await asyncio.open_connection(*address)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
