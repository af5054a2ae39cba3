"""Settings per component, names as users know them: every flat setting (env FATHOM_<NAME>,
YAML key, flag) still loads into the one nested field that owns it, every name the docs and
the manifests use is one of them, and each setting has exactly one default."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from fathom import settings as fathom_settings
from fathom.settings import NAMES, Settings
from sidecar.config import ConfigError
from sidecar.routing import parse_routes

ROOT = Path(__file__).resolve().parent.parent
# The flat names as they were when settings were one flat class: the contract with users
# (FATHOM_* in their manifests, keys in their YAML). Each goes to exactly this field.
FLAT: dict[str, str] = {
    "upstream": "routing.upstream", "listen": "proxy.listen", "admin": "admin",
    "store": "store", "deployment": "routing.deployment", "provider": "metrics.provider",
    "connect_timeout_s": "proxy.connect_timeout_s",
    "first_byte_timeout_s": "proxy.first_byte_timeout_s",
    "idle_timeout_s": "proxy.idle_timeout_s", "grace_s": "grace_s",
    "drain_settle_s": "drain_settle_s", "body_timeout_s": "proxy.body_timeout_s",
    "header_timeout_s": "proxy.header_timeout_s", "pool_limit": "proxy.pool_limit",
    "max_body_bytes": "proxy.max_body_bytes", "max_event_bytes": "proxy.max_event_bytes",
    "inject_usage": "proxy.inject_usage", "model_label_cap": "metrics.model_label_cap",
    "otlp": "metrics.otlp",
    "client_salt": "proxy.client_salt", "sample_rate": "sampler.rate",
    "sample_rates": "sampler.rates", "sample_max_chars": "sampler.max_chars",
    "writer_queue_rows": "writer.queue_rows", "writer_batch_rows": "writer.batch_rows",
    "writer_insert_max_rows": "writer.insert_max_rows", "writer_flush_s": "writer.flush_s",
    "spool_dir": "writer.spool_dir", "spool_max_bytes": "writer.spool_max_bytes",
    "spool_ephemeral": "writer.spool_ephemeral", "probes": "probes",
    "schema_check_only": "schema_check_only", "routes": "routing.routes",
    "probe_k": "worker.k", "probe_requests_per_min": "worker.requests_per_min",
    "probe_tokens_per_min": "worker.tokens_per_min", "probe_batch": "worker.batch",
    "probe_concurrency": "worker.concurrency", "probe_lookback_s": "worker.lookback_s",
    "probe_idle_s": "worker.idle_s", "probe_timeout_s": "worker.timeout_s",
    "probe_slow_s": "worker.slow_s", "probe_api_key": "worker.api_key",
    "probe_token": "proxy.probe_token", "canary_interval_s": "worker.canary_interval_s",
    "canaries_per_round": "worker.canaries_per_round", "canary_files": "worker.canary_files",
    "canary_default": "worker.canary_default", "scorer_model": "scorer.model",
    "scorer_device": "scorer.device", "worker_index": "worker.worker_index",
    "worker_count": "worker.worker_count", "detect_interval_s": "worker.detect_interval_s",
    "detect_window_s": "detection.window", "detect_baseline_s": "detection.baseline",
    "probe_admin": "probe_admin", "tenant_header": "proxy.tenant_header",
    "tenant_credential": "proxy.tenant_credential", "tenant_cap": "proxy.tenant_cap",
    "workers": "workers",
    **{f"audit_{name}": f"audit.{name}" for name in (
        "rate", "prompts", "canaries", "requests_per_min", "tokens_per_min", "interval_s", "k",
        "alpha", "temperature", "max_tokens", "template", "logprob_pairs", "permutations",
        "concurrency", "comparisons")},
    "audit_timeout_s": "audit.read_timeout_s",
}  # fmt: skip
# Fields of the parts that no flat name sets, and why.
NOT_SETTABLE: dict[str, str] = {
    "writer.retry_s": "internal timing", "writer.retry_max_s": "internal timing",
    "writer.log_every_s": "internal timing",
    "worker.canary_lookback_s": "internal window",
    "worker.token": "copied from proxy.probe_token by Settings.probe_worker",
    "worker.routed": "derived from routing.routes by Settings.probe_worker",
    "scorer.batch_size": "bench knob", "scorer.max_wait_ms": "bench knob",
    "scorer.warmup_sentences": "bench knob",
    "audit.canary_max_tokens": "method constant (docs/audit.md)",
    "audit.logprob_temperature": "method constant: the gap estimates the symmetrised KL at 1",
    "audit.top_logprobs": "method constant", "audit.min_gap": "method constant",
    "audit.seed": "`fathom audit --seed`; fixed in `fathom serve` (repeatable draws)",
}  # fmt: skip
# Every DetectionSettings field but the windows: the tests' parameters (bench/detect.py).
DETECTION_PARAMETERS = "detection."
# FATHOM_* names in the docs and manifests that are not settings of fathom.settings.
NOT_SETTINGS = {
    "CONFIG": "the path of the YAML file itself",
    "SCHEMA_STORE": "`fathom schema apply`'s store, kept apart from the sidecar's",
    "CLICKHOUSE_HOST": "Grafana's datasource", "CLICKHOUSE_PORT": "Grafana's datasource",
    "CLICKHOUSE_USER": "Grafana's datasource", "CLICKHOUSE_PASSWORD": "Grafana's datasource",
    "CLICKHOUSE_SECURE": "Grafana's datasource", "GRAFANA_TOKEN": "`fathom grafana push`",
    "RUNBOOK_BASE": "`fathom grafana`", "ALERT_WEBHOOK_URL": "Grafana's contact point",
}  # fmt: skip
# Values that a generic rule cannot make up (strings, structures); the rest change the default.
VALUES: dict[str, Any] = {
    "upstream": "http://model:8000", "listen": "0.0.0.0:18080", "admin": "0.0.0.0:19464",
    "store": "http://u:p@clickhouse:8123/fathom", "deployment": "fp8", "provider": "vllm",
    "otlp": "traces",
    "client_salt": "pepper", "sample_rate": 0.5, "sample_rates": {"llama-*": 0.25},
    "spool_dir": "/var/spool/fathom", "probes": True,
    "routes": [{"model": "m", "upstreams": [{"url": "http://a:1", "deployment": "a"}]}],
    "probe_api_key": "sk-probe", "probe_token": "tok", "canary_files": ["a.jsonl", "b.jsonl"],
    "scorer_model": "/models/minilm", "scorer_device": "cpu", "probe_admin": "0.0.0.0:9465",
    "tenant_header": "x-org",
    "workers": "auto",
    "audit_template": "Q: {prompt}\nA:", "audit_comparisons": ["mmd", "canary"],
}  # fmt: skip


def field_path(settings: Settings, path: str) -> Any:
    value: Any = settings
    for name in path.split("."):
        value = getattr(value, name)
    return value


def part_fields() -> dict[str, dataclasses.Field[Any]]:
    """'part.field' (or 'field' of Settings itself) -> the dataclass field."""
    found: dict[str, dataclasses.Field[Any]] = {}
    for top in dataclasses.fields(Settings):
        default = getattr(Settings(), top.name)
        if dataclasses.is_dataclass(default):
            found |= {f"{top.name}.{f.name}": f for f in dataclasses.fields(default)}
        else:
            found[top.name] = top
    return found


def new_value(name: str) -> Any:
    """A usable value for `name` that differs from its default."""
    if name in VALUES:
        return VALUES[name]
    default = field_path(Settings(), FLAT[name])
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default * 2
    if isinstance(default, timedelta):
        return default.total_seconds() * 2
    raise AssertionError(f"no test value for {name}")


def expected(name: str, value: Any) -> Any:
    """What the nested field holds once `value` is loaded."""
    if name == "routes":
        return parse_routes(value)
    if name in ("canary_files", "audit_comparisons"):
        return tuple(value)
    if isinstance(field_path(Settings(), FLAT[name]), timedelta):
        return timedelta(seconds=value)
    return value


def env_text(value: Any) -> str:
    if isinstance(value, dict) or (
        isinstance(value, list) and value and isinstance(value[0], dict)
    ):
        return json.dumps(value)
    if isinstance(value, list):
        return ",".join(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def test_every_flat_name_maps_to_its_one_field() -> None:
    assert {name: ".".join(p for p in path if p) for name, path in NAMES.items()} == FLAT
    assert len(set(NAMES.values())) == len(NAMES), "two names set one field"
    fields = part_fields()
    assert set(FLAT.values()) <= set(fields)
    unset = {p for p in fields if p not in FLAT.values() and not p.startswith(DETECTION_PARAMETERS)}
    assert unset == set(NOT_SETTABLE), "a new field: give it a flat name or say why not"


@pytest.mark.parametrize("name", sorted(FLAT))
def test_each_name_loads_from_env_and_yaml_into_its_field(name: str, tmp_path: Path) -> None:
    value = new_value(name)
    want = expected(name, value)
    assert field_path(Settings(), FLAT[name]) != want, "the test value must not be the default"
    from_env = fathom_settings.load(None, {f"FATHOM_{name.upper()}": env_text(value)})
    assert field_path(from_env, FLAT[name]) == want
    path = tmp_path / "fathom.yaml"
    path.write_text(yaml.safe_dump({name: value}))
    from_yaml = fathom_settings.load(None, {"FATHOM_CONFIG": str(path)})
    assert field_path(from_yaml, FLAT[name]) == want
    assert fathom_settings.build(**{name: want}) == from_yaml


@pytest.mark.parametrize("name", sorted(FLAT))
def test_each_setting_has_one_default_the_fields(name: str) -> None:
    """The default a user gets is the owning field's, written once, in the component."""
    field = part_fields()[FLAT[name]]
    has_default = field.default is not dataclasses.MISSING
    default = field.default if has_default else field.default_factory()  # type: ignore[misc]
    assert field_path(Settings(), FLAT[name]) == default
    assert field_path(fathom_settings.load(None, {}), FLAT[name]) == default


def test_the_flags_load_into_their_fields() -> None:
    parser = argparse.ArgumentParser()
    fathom_settings.add_arguments(parser)
    argv = [arg for name in fathom_settings.FLAGS for arg in (f"--{name}", VALUES[name])]
    loaded = fathom_settings.load(parser.parse_args(argv), {})
    for name in fathom_settings.FLAGS:
        assert field_path(loaded, FLAT[name]) == VALUES[name]


def test_the_worker_gets_what_other_parts_decide() -> None:
    settings = fathom_settings.build(
        probe_token="tok", worker_count=3, routes=parse_routes(VALUES["routes"])
    )
    worker = settings.probe_worker("fathom-probe-worker-2")
    assert (worker.token, worker.routed, worker.worker_index) == ("tok", (("m", "a"),), 2)


def documented_env_names() -> set[str]:
    """FATHOM_* names in the README, the docs, the manifests and the dashboards."""
    files = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *(ROOT / "docs").glob("*.md")]
    files += [p for d in ("deploy", "dashboards") for p in (ROOT / d).rglob("*") if p.is_file()]
    names: set[str] = set()
    for path in files:
        names |= set(re.findall(r"FATHOM_([A-Z0-9_]*[A-Z0-9])", path.read_text(errors="ignore")))
    return names


# Backticked words in the docs that look like settings (a duration, or a settings family)...
SETTING_LIKE = re.compile(
    r"[a-z0-9_]+_s|(probe|writer|spool|sample|canary|canaries|detect|max|worker|scorer|pool"
    r"|inject|model_label|schema_check|audit)_[a-z0-9_]+"
)
NOT_SETTING_WORDS = {  # ...but are not
    "zoo_after_s": "a knob of `fathom simulate`",
    "max_tokens": "a parameter of an OpenAI API request (docs/audit.md)",
}


def documented_yaml_keys() -> set[str]:
    """Keys of the shipped fathom.yaml files and of the README's YAML examples, and the
    setting-like names the README and the docs quote."""
    keys: set[str] = set()
    for path in (ROOT / "deploy").rglob("fathom.yaml"):
        keys |= set(yaml.safe_load(path.read_text()))
    readme = (ROOT / "README.md").read_text()
    for block in re.findall(r"```yaml\n(.*?)```", readme, re.S):
        keys |= set(yaml.safe_load(block))
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        quoted = re.findall(r"`([a-z][a-z0-9_]+)(?::[^`]*)?`", path.read_text())
        keys |= {w for w in quoted if SETTING_LIKE.fullmatch(w)} - set(NOT_SETTING_WORDS)
    return keys


def test_every_documented_name_is_a_setting_that_loads() -> None:
    env_names = documented_env_names() - set(NOT_SETTINGS)
    assert len(env_names) >= 10, "the scan found too little: are the docs still there?"
    assert sorted(n.lower() for n in env_names if n.lower() not in FLAT) == []
    keys = documented_yaml_keys()
    assert {"upstream", "listen", "routes", "probe_requests_per_min", "grace_s"} <= keys
    assert sorted(keys - set(FLAT)) == []


def test_reading_the_settings_loads_no_probe_machinery() -> None:
    """`fathom serve` reads the probe settings too, but a sidecar without --probes must not
    pay for numpy, torch or the scorer."""
    code = (
        "import sys, fathom.commands.serve; "
        "print(sorted(m for m in ('numpy', 'torch', 'probes.scorer', 'probes.worker') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FATHOM_AUDIT_K": "1"}, "audit_k=1 must be >= 2"),
        ({"FATHOM_AUDIT_RATE": "1.5"}, r"audit_rate=1.5 must be in \[0, 1\]"),
        ({"FATHOM_AUDIT_COMPARISONS": "mmd,kl"}, "choose among canary, mmd, logprob"),
        ({"FATHOM_AUDIT_REQUESTS_PER_MIN": "0"}, "requests_per_min=0.0 must be > 0"),
        ({"FATHOM_AUDIT_TEMPLATE": "no prompt"}, "audit_template must contain"),
    ],
)
def test_bad_audit_settings_say_which(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        fathom_settings.load(None, env)
