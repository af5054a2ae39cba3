"""The probe worker's settings: what one worker does and how much probe traffic it may send,
checked by themselves, and the scorer it loads. Nested in the top-level settings
(fathom.settings) as `worker` and `scorer`; no numpy or torch here."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from probes.golden import Canary, load_canaries
from sidecar.config import ConfigError, require_positive
from sidecar.routing import Route

_ORDINAL = re.compile(r"-(\d+)$")


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """What one worker does and how much probe traffic it may send; checked when built."""

    k: int = 5  # re-asks per sample for the consistency probe
    requests_per_min: float = 60.0  # all probe + canary requests of one worker
    tokens_per_min: float = 60_000.0
    batch: int = 32  # samples read per query
    concurrency: int = 4  # samples re-asked at once
    lookback_s: float = 6 * 3600.0  # older unscored samples are left alone
    idle_s: float = 5.0  # pause when there is nothing to score
    timeout_s: float = 120.0  # read timeout of one probe request
    slow_s: float = 60.0  # re-asks slower than this back the worker off
    api_key: str = field(default="", repr=False)  # sent upstream as a Bearer token
    canary_interval_s: float = 300.0  # per (model, deployment)
    canaries_per_round: int = 8
    canary_lookback_s: float = 3600.0  # canaries go to what users asked in this window
    canary_files: tuple[str, ...] = ()  # golden sets beside the default (env: comma-separated)
    canary_default: bool = True  # include the packaged default golden set
    worker_index: int = -1  # -1: the trailing -N of HOSTNAME (StatefulSet ordinal), else 0
    worker_count: int = 1
    detect_interval_s: float = 300.0  # regression detection (worker 0 only)
    # Filled from other parts of the settings (fathom.settings.Settings.probe_worker):
    token: str = field(default="", repr=False)  # the proxy's probe_token: proves probe traffic
    # (model, deployment) pairs the routes configure: canaried from the start
    routed: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.worker_count < 1:
            raise ConfigError("worker_count must be at least 1")
        if not -1 <= self.worker_index < self.worker_count:
            raise ConfigError(
                f"probe worker index {self.worker_index} is not within 0..{self.worker_count - 1}"
                ": FATHOM_WORKER_COUNT must equal the number of workers (the StatefulSet's "
                "replicas), and each worker needs its own FATHOM_WORKER_INDEX"
            )
        positive = ("k", "batch", "concurrency", "requests_per_min", "tokens_per_min",
                    "lookback_s", "idle_s", "timeout_s", "slow_s", "canary_interval_s",
                    "canary_lookback_s", "detect_interval_s")  # fmt: skip
        require_positive(self, positive, "probe setting {name}")
        if self.canaries_per_round < 0:
            raise ConfigError("canaries_per_round must be >= 0 (0: no canaries)")

    def resolved(self, hostname: str) -> ProbeSettings:
        """These settings with the worker's index known: from HOSTNAME when not configured."""
        index = worker_index(self.worker_index, self.worker_count, hostname)
        return dataclasses.replace(self, worker_index=index)


@dataclass(frozen=True, slots=True)
class ScorerConfig:
    """Which model the scorer loads, where it runs, and how big its batches are (probes.scorer)."""

    model: str = ""  # a local sentence-transformers directory; "" = packaged all-MiniLM-L6-v2
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int = 0  # 0: CPU_BATCH on CPU, CUDA_BATCH on CUDA
    max_wait_ms: float = 2.0  # how long a batch waits for concurrent callers to join
    warmup_sentences: int = 0  # 0: 64 on CPU, 4096 on CUDA


def worker_index(configured: int, count: int, hostname: str) -> int:
    """The configured index, else the StatefulSet ordinal ending HOSTNAME, else 0 when alone."""
    if configured >= 0:
        return configured
    if count == 1:
        return 0  # a lone worker's hostname ordinal (a Deployment's pod hash) means nothing
    match = _ORDINAL.search(hostname)
    if match is None:
        raise ConfigError(
            f"cannot tell which of {count} probe workers this is: set FATHOM_WORKER_INDEX "
            f"(0..{count - 1}), or run the workers as a StatefulSet (pods named NAME-0, NAME-1, "
            f"...); HOSTNAME is {hostname!r}"
        )
    return int(match.group(1))


def routed_targets(routes: Sequence[Route]) -> tuple[tuple[str, str], ...]:
    """The (model, deployment) pairs of the configured routes ('*' routes name no model)."""
    pairs = {
        (route.model, upstream.deployment)
        for route in routes
        if route.model != "*"
        for upstream in route.upstreams
    }
    return tuple(sorted(pairs))


def settings_canaries(settings: ProbeSettings) -> list[Canary]:
    """The golden sets the settings name (the default one unless switched off)."""
    files = [Path(name) for name in settings.canary_files]
    return load_canaries(files, include_default=settings.canary_default)
