"""Settings machinery, read in one place: CLI flags > env `FATHOM_*` > YAML file > defaults.

Each component defines its settings beside its code: a frozen dataclass with one default per
field that checks itself when built (raising ConfigError). The top-level settings
(`fathom.settings`) nest those parts and keep the flat names users know (`FATHOM_POOL_LIMIT`,
`probe_k:` in YAML) in one table, flat name -> (part, field). This module merges the sources
and turns each raw value into its field's type; it imports nothing of the components.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import yaml


class ConfigError(ValueError):
    """A setting that cannot be used; the message says which and how to fix it."""


# flat name -> (the root's attribute holding the part, the part's field); part '' is a field
# of the root itself.
Names = Mapping[str, tuple[str, str]]
R = TypeVar("R")
PARSE = "parse"  # field metadata: a function turning a YAML or env value into the field's type
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def parse_hostport(value: str, name: str) -> tuple[str, int]:
    """'host:port' -> (host, port), with an error that names the setting."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{name}={value!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")
    return host.strip("[]") or "0.0.0.0", int(port)


def require_positive(part: object, names: tuple[str, ...], label: str = "{name}") -> None:
    """ConfigError unless each named field of `part` is > 0 (`label` names it for the user)."""
    for name in names:
        value = getattr(part, name)
        if not value > 0:
            raise ConfigError(f"{label.format(name=name)}={value!r} must be > 0")


def load(
    root: type[R],
    names: Names,
    env: Mapping[str, str],
    config_path: str | None = None,
    flags: Mapping[str, Any] | None = None,
) -> R:
    """Merge defaults < YAML file < env `FATHOM_<NAME>` < flags into a checked `root`."""
    raw: dict[str, Any] = {}
    if config_path:
        raw.update(_read_yaml(Path(config_path), names))
    for name in names:
        value = env.get(f"FATHOM_{name.upper()}")
        if value is not None:
            raw[name] = value
    raw.update(flags or {})
    typed = {name: _coerce(name, value, _hint(root, *names[name])) for name, value in raw.items()}
    return override(root(), names, typed)


def override(settings: R, names: Names, values: Mapping[str, Any]) -> R:
    """`settings` with these flat settings (typed values) replaced; every part checks itself."""
    parts: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        if name not in names:
            raise ConfigError(f"unknown setting {name!r}")
        part, field = names[name]
        parts.setdefault(part, {})[field] = value
    top = parts.pop("", {})
    nested = {part: dataclasses.replace(getattr(settings, part), **f) for part, f in parts.items()}
    return dataclasses.replace(settings, **top, **nested)  # type: ignore[type-var]


def _read_yaml(path: Path, names: Names) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown settings in {path}: {', '.join(unknown)}")
    return data


def _hint(root: type[Any], part: str, field: str) -> tuple[Any, Callable[[Any], Any] | None]:
    """(the type of the field a flat name sets, its parser if it names one)."""
    cls = typing.get_type_hints(root)[part] if part else root
    metadata = {f.name: f.metadata for f in dataclasses.fields(cls)}
    return typing.get_type_hints(cls)[field], metadata[field].get(PARSE)


def _coerce(name: str, raw: Any, hint_and_parse: tuple[Any, Callable[[Any], Any] | None]) -> Any:
    """Turn a YAML, env or flag value into the field's type, or say why it can't be."""
    hint, parse = hint_and_parse
    origin = typing.get_origin(hint)
    try:
        if parse is not None:
            return parse(raw)
        if origin is tuple:  # tuple[str, ...]: a list, or 'a,b' from env
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return tuple(str(item).strip() for item in items if str(item).strip())
        if origin is dict or origin is Mapping:  # {name: float}: a mapping, or JSON from env
            mapping = json.loads(raw) if isinstance(raw, str) else dict(raw)
            return {str(k): float(v) for k, v in mapping.items()}
        if hint is timedelta:  # given in seconds
            return timedelta(seconds=float(raw))
        if hint is bool and isinstance(raw, str):
            if raw.lower() not in _TRUE | _FALSE:
                raise ValueError("expected true/false")
            return raw.lower() in _TRUE
        return hint(raw) if isinstance(hint, type) else raw
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"setting {name}={raw!r}: {exc}") from exc
