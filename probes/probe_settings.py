"""The probe worker's settings: what one worker does and how much probe traffic it may send,
read from the top-level Settings and checked by themselves."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from probes.factuality import Canary, load_canaries
from probes.scorer import ScorerConfig
from sidecar.config import ConfigError, Settings

_ORDINAL = re.compile(r"-(\d+)$")


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """What one worker does and how much probe traffic it may send."""

    k: int = 5
    requests_per_min: float = 60.0
    tokens_per_min: float = 60_000.0
    batch: int = 32
    concurrency: int = 4
    lookback_s: float = 6 * 3600.0
    idle_s: float = 5.0
    timeout_s: float = 120.0
    slow_s: float = 60.0
    api_key: str = field(default="", repr=False)
    token: str = field(default="", repr=False)  # proves to the proxy that this is probe traffic
    canary_interval_s: float = 300.0
    canaries_per_round: int = 8
    canary_lookback_s: float = 3600.0  # canaries go to what users asked in this window
    worker_index: int = 0
    worker_count: int = 1
    detect_interval_s: float = 300.0
    detect_window_s: float = 6 * 3600.0  # the window judged against the baseline before it
    detect_baseline_s: float = 7 * 86400.0
    # (model, deployment) pairs the routes configure: canaried from the start
    routed: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_settings(
        cls, settings: Settings, env: Mapping[str, str] | None = None
    ) -> ProbeSettings:
        """The worker's settings; the index from HOSTNAME's ordinal when not configured."""
        env = os.environ if env is None else env
        count = settings.worker_count
        return cls(
            k=settings.probe_k,
            requests_per_min=settings.probe_requests_per_min,
            tokens_per_min=settings.probe_tokens_per_min,
            batch=settings.probe_batch,
            concurrency=settings.probe_concurrency,
            lookback_s=settings.probe_lookback_s,
            idle_s=settings.probe_idle_s,
            timeout_s=settings.probe_timeout_s,
            slow_s=settings.probe_slow_s,
            api_key=settings.probe_api_key,
            token=settings.probe_token,
            canary_interval_s=settings.canary_interval_s,
            canaries_per_round=settings.canaries_per_round,
            worker_index=worker_index(settings.worker_index, count, env.get("HOSTNAME", "")),
            worker_count=count,
            detect_interval_s=settings.detect_interval_s,
            detect_window_s=settings.detect_window_s,
            detect_baseline_s=settings.detect_baseline_s,
            routed=routed_targets(settings),
        ).validate()

    def validate(self) -> ProbeSettings:
        """Check ranges; returns self, or raises ConfigError naming the setting."""
        if self.worker_count < 1:
            raise ConfigError("worker_count must be at least 1")
        if not 0 <= self.worker_index < self.worker_count:
            raise ConfigError(
                f"probe worker index {self.worker_index} is not within 0..{self.worker_count - 1}"
                ": FATHOM_WORKER_COUNT must equal the number of workers (the StatefulSet's "
                "replicas), and each worker needs its own FATHOM_WORKER_INDEX"
            )
        positive = ("k", "batch", "concurrency", "requests_per_min", "tokens_per_min",
                    "lookback_s", "idle_s", "timeout_s", "slow_s", "canary_interval_s",
                    "canary_lookback_s", "detect_interval_s", "detect_window_s",
                    "detect_baseline_s")  # fmt: skip
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"probe setting {name}={getattr(self, name)!r} must be > 0")
        if self.canaries_per_round < 0:
            raise ConfigError("canaries_per_round must be >= 0 (0: no canaries)")
        return self


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


def routed_targets(settings: Settings) -> tuple[tuple[str, str], ...]:
    """The (model, deployment) pairs of the configured routes ('*' routes name no model)."""
    pairs = {
        (route.model, upstream.deployment)
        for route in settings.routes
        if route.model != "*"
        for upstream in route.upstreams
    }
    return tuple(sorted(pairs))


def scorer_config(settings: Settings) -> ScorerConfig:
    """The scorer the settings ask for."""
    return ScorerConfig(model=settings.scorer_model, device=settings.scorer_device)


def settings_canaries(settings: Settings) -> list[Canary]:
    """The golden sets the settings name (the default one unless switched off)."""
    files = [Path(name) for name in settings.canary_files]
    return load_canaries(files, include_default=settings.canary_default)
