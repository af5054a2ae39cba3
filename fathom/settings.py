"""The top-level settings: the process's own, and one part per component, each defined and
checked beside the code that uses it.

Users name every setting flat, as they always have: flag `--upstream`, env
`FATHOM_WRITER_QUEUE_ROWS`, YAML `probe_k: 3`. NAMES maps each flat name to the one field it
sets; the field's default is the setting's only default (sidecar.config merges the sources).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from probes.audit_settings import AuditSettings
from probes.detect_settings import DetectionSettings
from probes.probe_settings import ProbeSettings, ScorerConfig, routed_targets
from sidecar import config
from sidecar.config import ConfigError, parse_hostport
from sidecar.metrics import MetricsSettings
from sidecar.proxy_settings import ProxySettings
from sidecar.routing import RoutingSettings
from sidecar.sampler import SamplerSettings
from sidecar.store.writer import WriterSettings


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a Fathom process reads; frozen and passed down, a part to each component."""

    store: str = "chdb://./fathom-data"  # chdb:///path, http://user:pass@host:8123/fathom, none
    admin: str = "127.0.0.1:9464"  # /metrics, /healthz, /readyz, /drain of `fathom serve`
    grace_s: float = 30.0  # how long a stop waits for streams, the probe worker, the writer
    # GET /drain (the model server's preStop) keeps relaying new requests this long, while
    # the pod's removal from the Service reaches every node; then it answers them 503.
    drain_settle_s: float = 5.0
    probes: bool = False  # `fathom serve` runs the probe worker in-process
    # Only check the schema version at start, never apply it. Always so for a server store,
    # whose schema `fathom schema apply` owns; for the embedded store, a choice.
    schema_check_only: bool = False
    probe_admin: str = ""  # HOST:PORT of `fathom probe`'s /healthz and /metrics; '' = none
    # Proxy processes of `fathom serve` on the one port: a number, or 'auto' (the CPUs this
    # process may use); fathom.workers runs them when more than one.
    workers: str = "1"
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    writer: WriterSettings = field(default_factory=WriterSettings)
    worker: ProbeSettings = field(default_factory=ProbeSettings)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)

    def __post_init__(self) -> None:
        self.admin_addr  # noqa: B018 - parsing is the check
        if self.probe_admin:
            parse_hostport(self.probe_admin, "probe_admin")
        if self.probes and self.store == "none":
            raise ConfigError("probes=true needs a store: the worker reads samples from it")
        if self.workers != "auto" and not (self.workers.isdigit() and int(self.workers) >= 1):
            raise ConfigError(f"workers must be a positive number or 'auto' (got {self.workers!r})")
        if self.probes and self.workers != "1":
            raise ConfigError(
                "probes=true runs in a single proxy process (workers=1); with several "
                "workers, put the store on a ClickHouse server and run `fathom probe` beside them"
            )

    @property
    def admin_addr(self) -> tuple[str, int]:
        """`admin` as (host, port)."""
        return parse_hostport(self.admin, "admin")

    def probe_worker(self, hostname: str) -> ProbeSettings:
        """The worker's settings with what other parts decide: its index (HOSTNAME's ordinal
        when not configured), the proxy's probe token, and the routed deployments."""
        routed = routed_targets(self.routing.routes)
        worker = dataclasses.replace(self.worker, token=self.proxy.probe_token, routed=routed)
        return worker.resolved(hostname)


def _same(part: str, *names: str) -> dict[str, tuple[str, str]]:
    return {name: (part, name) for name in names}


# flat name (FATHOM_<NAME>, YAML key, flag) -> (part, field); part '' = Settings' own field
NAMES: dict[str, tuple[str, str]] = {
    **_same("", "store", "admin", "grace_s", "drain_settle_s", "probes", "schema_check_only",
            "probe_admin", "workers"),
    **_same("routing", "upstream", "deployment", "routes"),
    **_same("proxy", "listen", "connect_timeout_s", "first_byte_timeout_s", "idle_timeout_s",
            "body_timeout_s", "header_timeout_s", "pool_limit", "max_body_bytes",
            "max_event_bytes", "inject_usage", "client_salt", "probe_token", "tenant_header",
            "tenant_credential", "tenant_cap"),
    **_same("metrics", "provider", "model_label_cap", "otlp"),
    "sample_rate": ("sampler", "rate"),
    "sample_rates": ("sampler", "rates"),
    "sample_max_chars": ("sampler", "max_chars"),
    "writer_queue_rows": ("writer", "queue_rows"),
    "writer_batch_rows": ("writer", "batch_rows"),
    "writer_insert_max_rows": ("writer", "insert_max_rows"),
    "writer_flush_s": ("writer", "flush_s"),
    **_same("writer", "spool_dir", "spool_max_bytes", "spool_ephemeral"),
    **{f"probe_{name}": ("worker", name) for name in (
        "k", "requests_per_min", "tokens_per_min", "batch", "concurrency", "lookback_s",
        "idle_s", "timeout_s", "slow_s", "api_key")},
    **_same("worker", "canary_interval_s", "canaries_per_round", "canary_files",
            "canary_default", "worker_index", "worker_count", "detect_interval_s"),
    "scorer_model": ("scorer", "model"),
    "scorer_device": ("scorer", "device"),
    "detect_window_s": ("detection", "window"),
    "detect_baseline_s": ("detection", "baseline"),
    **{f"audit_{name}": ("audit", name) for name in (
        "rate", "prompts", "canaries", "requests_per_min", "tokens_per_min", "interval_s", "k",
        "alpha", "temperature", "max_tokens", "template", "logprob_pairs", "permutations",
        "concurrency", "comparisons")},
    "audit_timeout_s": ("audit", "read_timeout_s"),
}  # fmt: skip
# CLI flags that `fathom serve` exposes; every setting is also settable by env and YAML.
FLAGS: dict[str, str] = {
    "upstream": "OpenAI-compatible upstream base URL, e.g. http://127.0.0.1:8000",
    "listen": "HOST:PORT the proxy listens on",
    "admin": "HOST:PORT of the admin server (/metrics, /healthz, /readyz)",
    "store": "store URL: chdb:///path (embedded) or http://user:pass@host:8123/fathom; 'none'",
    "deployment": "deployment label recorded with every request",
    "workers": "proxy processes on the one port: a number or 'auto' (the CPUs available)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags shared by commands that read Settings."""
    parser.add_argument("--config", help="YAML settings file (env FATHOM_CONFIG)")
    for name, help_text in FLAGS.items():
        parser.add_argument(f"--{name}", help=f"{help_text} (env FATHOM_{name.upper()})")


def load(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Merge defaults < YAML < env < CLI flags into checked Settings."""
    env = os.environ if env is None else env
    flags = {name: getattr(args, name) for name in FLAGS if getattr(args, name, None) is not None}
    if getattr(args, "probes", None):
        flags["probes"] = True
    path = getattr(args, "config", None) or env.get("FATHOM_CONFIG")
    return config.load(Settings, NAMES, env, path, flags)


def build(**values: Any) -> Settings:
    """Settings from flat names and typed values (tests, the demo): `build(sample_rate=1.0)`."""
    return override(Settings(), **values)


def override(settings: Settings, **values: Any) -> Settings:
    """`settings` with these flat settings (typed values) replaced, checked again."""
    return config.override(settings, NAMES, values)
