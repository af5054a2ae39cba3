"""The proxy's settings: where it listens, its timeouts and size limits, and its upstream pool."""

from __future__ import annotations

from dataclasses import dataclass, field

from sidecar.config import ConfigError, parse_hostport


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """How the proxy listens, relays and gives up; checked when built."""

    listen: str = "127.0.0.1:8080"
    # Timeouts in seconds. There is deliberately no total timeout: long generations are normal.
    connect_timeout_s: float = 10.0
    first_byte_timeout_s: float = 600.0
    idle_timeout_s: float = 120.0
    # Client side. A request body must arrive within body_timeout_s (else 408). Headers within
    # header_timeout_s, which aiohttp's one timer also applies to idle keep-alive connections.
    body_timeout_s: float = 30.0
    header_timeout_s: float = 60.0
    pool_limit: int = 1024  # upstream connections
    max_body_bytes: int = 32 * 1024 * 1024
    max_event_bytes: int = 16 * 1024 * 1024
    inject_usage: bool = True
    client_salt: str = field(default="", repr=False)  # '' = a random salt per process
    # Shared by the proxy and remote probe workers: only requests carrying it may call
    # themselves probe/canary traffic. Empty: only loopback clients may (in-process workers).
    probe_token: str = field(default="", repr=False)
    # Who a request is for (the `tenant` column and metric label): this header's value, else,
    # when tenant_credential, the salted credential hash (`client`; set client_salt so it is
    # the same on every replica and restart), else ''. Past tenant_cap distinct values: 'other'.
    tenant_header: str = "x-tenant-id"
    tenant_credential: bool = False
    tenant_cap: int = 64

    def __post_init__(self) -> None:
        self.listen_addr  # noqa: B018 - parsing is the check
        timeouts = ("connect_timeout_s", "first_byte_timeout_s", "idle_timeout_s",
                    "body_timeout_s", "header_timeout_s")  # fmt: skip
        for name in timeouts:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0 seconds")
        for name in ("pool_limit", "max_body_bytes", "tenant_cap"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive")

    @property
    def listen_addr(self) -> tuple[str, int]:
        """`listen` as (host, port)."""
        return parse_hostport(self.listen, "listen")
