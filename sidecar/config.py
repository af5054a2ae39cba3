"""Settings, read in one place: CLI flags > env `FATHOM_*` > YAML file > defaults."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sidecar.routing import Route, parse_routes, parse_upstream_url


class ConfigError(ValueError):
    """A setting that cannot be used; the message says which and how to fix it."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything `fathom serve` needs; frozen and passed down."""

    upstream: str = ""
    listen: str = "127.0.0.1:8080"
    admin: str = "127.0.0.1:9464"
    store: str = "chdb://./fathom-data"
    deployment: str = "default"
    provider: str = "openai"
    # Timeouts in seconds. There is deliberately no total timeout: long generations are normal.
    connect_timeout_s: float = 10.0
    first_byte_timeout_s: float = 600.0
    idle_timeout_s: float = 120.0
    grace_s: float = 30.0
    # GET /drain (the model server's preStop) keeps relaying new requests this long, while
    # the pod's removal from the Service reaches every node; then it answers them 503.
    drain_settle_s: float = 5.0
    # Client side. A request body must arrive within body_timeout_s (else 408). Headers within
    # header_timeout_s, which aiohttp's one timer also applies to idle keep-alive connections.
    body_timeout_s: float = 30.0
    header_timeout_s: float = 60.0
    pool_limit: int = 1024
    max_body_bytes: int = 32 * 1024 * 1024
    max_event_bytes: int = 16 * 1024 * 1024
    inject_usage: bool = True
    model_label_cap: int = 64
    client_salt: str = ""
    sample_rate: float = 0.05
    sample_rates: dict[str, float] = field(default_factory=dict)
    sample_max_chars: int = 32_768
    writer_queue_rows: int = 100_000
    writer_batch_rows: int = 10_000
    writer_insert_max_rows: int = 50_000
    writer_flush_s: float = 1.0
    spool_dir: str = "./fathom-spool"
    spool_max_bytes: int = 1024 * 1024 * 1024
    # spool_dir is on a volume deleted with the pod (emptyDir): rows still spooled at exit
    # are replayed once more, and counted as dropped if the store does not take them.
    spool_ephemeral: bool = False
    probes: bool = False
    # Only check the schema version at start, never apply it. Always so for a server store,
    # whose schema `fathom schema apply` owns; for the embedded store, a choice.
    schema_check_only: bool = False
    # Per-model traffic split: [{model, upstreams: [{url, deployment, weight}]}] (YAML or JSON).
    routes: tuple[Route, ...] = ()
    # probe worker (read and range-checked by probes.probe_settings.ProbeSettings.from_settings)
    probe_k: int = 5  # re-asks per sample for the consistency probe
    probe_requests_per_min: float = 60.0  # all probe + canary requests of one worker
    probe_tokens_per_min: float = 60_000.0
    probe_batch: int = 32  # samples read per query
    probe_concurrency: int = 4  # samples re-asked at once
    probe_lookback_s: float = 6 * 3600.0  # older unscored samples are left alone
    probe_idle_s: float = 5.0  # pause when there is nothing to score
    probe_timeout_s: float = 120.0  # read timeout of one probe request
    probe_slow_s: float = 60.0  # re-asks slower than this back the worker off
    probe_api_key: str = field(default="", repr=False)  # sent upstream as a Bearer token
    # Shared by the proxy and remote probe workers: only requests carrying it may call
    # themselves probe/canary traffic. Empty: only loopback clients may (in-process workers).
    probe_token: str = field(default="", repr=False)
    canary_interval_s: float = 300.0  # per (model, deployment)
    canaries_per_round: int = 8
    canary_files: tuple[str, ...] = ()  # golden sets beside the default (env: comma-separated)
    canary_default: bool = True  # include the packaged default golden set
    scorer_model: str = ""  # a local sentence-transformers directory; '' = all-MiniLM-L6-v2
    scorer_device: str = "auto"  # auto | cpu | cuda | cuda:N
    worker_index: int = -1  # -1: the trailing -N of HOSTNAME (StatefulSet ordinal), else 0
    worker_count: int = 1
    detect_interval_s: float = 300.0  # regression detection (worker 0 only)
    detect_window_s: float = 6 * 3600.0  # detection judges this window...
    detect_baseline_s: float = 7 * 86400.0  # ...against this much history before it
    probe_admin: str = ""  # HOST:PORT of `fathom probe`'s /healthz and /metrics; '' = none

    @property
    def listen_addr(self) -> tuple[str, int]:
        """`listen` as (host, port)."""
        return parse_hostport(self.listen, "listen")

    @property
    def admin_addr(self) -> tuple[str, int]:
        """`admin` as (host, port)."""
        return parse_hostport(self.admin, "admin")


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(Settings)}
# CLI flags that `fathom serve` exposes; every field is also settable by env and YAML.
FLAGS: dict[str, str] = {
    "upstream": "OpenAI-compatible upstream base URL, e.g. http://127.0.0.1:8000",
    "listen": "HOST:PORT the proxy listens on",
    "admin": "HOST:PORT of the admin server (/metrics, /healthz, /readyz)",
    "store": "store URL: chdb:///path (embedded) or http://user:pass@host:8123/fathom; 'none'",
    "deployment": "deployment label recorded with every request",
}


def parse_hostport(value: str, name: str) -> tuple[str, int]:
    """'host:port' -> (host, port), with an error that names the setting."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{name}={value!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")
    return host.strip("[]") or "0.0.0.0", int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags shared by commands that read Settings."""
    parser.add_argument("--config", help="YAML settings file (env FATHOM_CONFIG)")
    for name, help_text in FLAGS.items():
        parser.add_argument(f"--{name}", help=f"{help_text} (env FATHOM_{name.upper()})")


def load(args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Merge defaults < YAML < env < CLI flags into a validated Settings."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    config_path = getattr(args, "config", None) or env.get("FATHOM_CONFIG")
    if config_path:
        values.update(_read_yaml(Path(config_path)))
    for name in FIELDS:
        raw = env.get(f"FATHOM_{name.upper()}")
        if raw is not None:
            values[name] = _coerce(name, raw)
    for name in FLAGS:
        flag = getattr(args, name, None)
        if flag is not None:
            values[name] = flag
    if getattr(args, "probes", None):
        values["probes"] = True
    return validate(Settings(**values))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown settings in {path}: {', '.join(unknown)}")
    return {name: _coerce(name, value) for name, value in data.items()}


def _coerce(name: str, raw: Any) -> Any:
    """Turn a YAML or env value into the field's type, or say why it can't be."""
    hint = typing.get_type_hints(Settings)[name]
    try:
        if name == "routes":
            return parse_routes(json.loads(raw) if isinstance(raw, str) else raw)
        if typing.get_origin(hint) is tuple:  # tuple[str, ...]: a list, or 'a,b' from env
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return tuple(str(item).strip() for item in items if str(item).strip())
        if isinstance(raw, str) and hint is not str:
            if hint is bool:
                if raw.lower() not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                    raise ValueError("expected true/false")
                return raw.lower() in {"1", "true", "yes", "on"}
            if typing.get_origin(hint) is dict:
                return {str(k): float(v) for k, v in json.loads(raw).items()}
            return hint(raw)
        if typing.get_origin(hint) is dict:
            return {str(k): float(v) for k, v in dict(raw).items()}
        if isinstance(hint, type) and not isinstance(hint, types.GenericAlias):
            return hint(raw)
        return raw
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"setting {name}={raw!r}: {exc}") from exc


def validate(settings: Settings) -> Settings:
    """Check ranges and formats; returns the settings unchanged when they are usable."""
    settings.listen_addr, settings.admin_addr  # noqa: B018 - parsing is the check
    if settings.probe_admin:
        parse_hostport(settings.probe_admin, "probe_admin")
    if settings.upstream:
        try:
            parse_upstream_url(settings.upstream)
        except ValueError as exc:
            raise ConfigError(f"upstream: {exc}") from exc
    timeouts = ("connect_timeout_s", "first_byte_timeout_s", "idle_timeout_s", "writer_flush_s",
                "body_timeout_s", "header_timeout_s")  # fmt: skip
    for name in timeouts:
        if getattr(settings, name) <= 0:
            raise ConfigError(f"{name} must be > 0 seconds")
    rates = [settings.sample_rate, *settings.sample_rates.values()]
    if any(not 0.0 <= rate <= 1.0 for rate in rates):
        raise ConfigError("sample rates must be within [0, 1]")
    if settings.probes and settings.store == "none":
        raise ConfigError("probes=true needs a store: the worker reads samples from it")
    sizes = ("pool_limit", "max_body_bytes", "writer_queue_rows", "writer_batch_rows",
             "writer_insert_max_rows")  # fmt: skip
    for name in sizes:
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name} must be positive")
    return settings
