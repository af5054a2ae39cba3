"""What several commands share: finding and opening the store, reading times and durations,
and the one error a command prints before it exits."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.store.client import Store

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class CommandError(Exception):
    """A command cannot go on; the message says why and what to do."""


def parse_duration(text: str) -> timedelta:
    """'90s', '30m', '1h', '7d', '2w' -> timedelta."""
    match = _DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30m, 1h or 7d")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; a time without a zone is taken as UTC."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def store_setting(flag: str | None) -> str:
    """The store a command's --store names, else the settings' (FATHOM_STORE, the YAML file)."""
    from fathom import settings
    from sidecar.config import ConfigError

    if flag:
        return flag
    try:
        return settings.load(None).store
    except ConfigError as exc:
        raise CommandError(str(exc)) from exc


def open_store_setting(flag: str | None) -> Store:
    """Open the store of `store_setting`, or say which one cannot be opened and why."""
    from sidecar.store.client import StoreError, open_store

    url = store_setting(flag)
    try:
        return open_store(url)
    except StoreError as exc:
        raise CommandError(f"cannot open the store {safe_url(url)}: {exc}") from exc


def schema_missing(exc: Exception) -> bool:
    """Whether a store error means the schema was never applied there."""
    return "UNKNOWN_TABLE" in str(exc) or "UNKNOWN_DATABASE" in str(exc)


def safe_url(url: str) -> str:
    """A store URL without its password, for messages."""
    return re.sub(r"//[^/@]*@", "//***@", url)
