"""Which upstream a request goes to: one default, or per-model weighted splits for A/B."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from yarl import URL

from sidecar.config import PARSE, ConfigError


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a request goes and the deployment label its record carries."""

    url: URL
    deployment: str
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Route:
    """Requests for `model` ('*' for any) are split across `upstreams` by weight. A
    `reference` (the validated deployment of the same model) gets no user request: only
    audit traffic that pins its deployment reaches it."""

    model: str
    upstreams: tuple[Upstream, ...]
    reference: Upstream | None = None


def _routes_setting(raw: Any) -> tuple[Route, ...]:
    """The `routes` setting from YAML (a list) or env (JSON)."""
    return parse_routes(json.loads(raw) if isinstance(raw, str) else raw)


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    """Where requests go: the default upstream and its label, and per-model splits."""

    upstream: str = ""  # OpenAI-compatible base URL; also where `fathom probe` sends probes
    deployment: str = "default"  # the label of the default upstream's records
    # Per-model traffic split: [{model, upstreams: [{url, deployment, weight}],
    # reference: {url, deployment}}] (YAML or JSON; `reference` optional).
    routes: tuple[Route, ...] = field(default=(), metadata={PARSE: _routes_setting})

    def __post_init__(self) -> None:
        if self.upstream:
            try:
                parse_upstream_url(self.upstream)
            except ValueError as exc:
                raise ConfigError(f"upstream: {exc}") from exc


class Router:
    """Picks an upstream per request; randomness is injected so tests are repeatable."""

    def __init__(self, default: Upstream, routes: Sequence[Route], rng: random.Random) -> None:
        self._default = default
        self._routes = {route.model: route for route in routes}
        self._rng = rng

    def pick(self, model: str, deployment: str = "") -> Upstream:
        """The upstream for one request of `model`; probes may pin a configured deployment."""
        route = self._routes.get(model) or self._routes.get("*")
        if route is None:
            return self._default
        for upstream in route.upstreams if deployment else ():
            if upstream.deployment == deployment:
                return upstream
        if deployment and route.reference and route.reference.deployment == deployment:
            return route.reference
        if len(route.upstreams) == 1:
            return route.upstreams[0]
        weights = [u.weight for u in route.upstreams]
        return self._rng.choices(route.upstreams, weights=weights)[0]

    def upstreams(self) -> list[Upstream]:
        """Every distinct upstream, the default first (the probe worker re-asks through these)."""
        seen = {self._default.url: self._default}
        for route in self._routes.values():
            for upstream in route.upstreams:
                seen.setdefault(upstream.url, upstream)
        return list(seen.values())


def parse_routes(raw: Sequence[Mapping[str, Any]]) -> tuple[Route, ...]:
    """Read the `routes` setting: [{model, upstreams: [{url, deployment, weight}],
    reference: {url, deployment}}]."""
    routes = []
    for i, item in enumerate(raw):
        try:
            ups = tuple(
                Upstream(
                    parse_upstream_url(u["url"]), str(u["deployment"]), float(u.get("weight", 1))
                )
                for u in item["upstreams"]
            )
            model = str(item["model"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"routes[{i}]: expected {{model, upstreams: [{{url, deployment, weight}}]}} ({exc})"
            ) from exc
        if not ups or any(u.weight < 0 for u in ups) or sum(u.weight for u in ups) <= 0:
            raise ValueError(f"routes[{i}] ({model}): weights must be >= 0 and not all 0")
        reference = None
        if item.get("reference") is not None:
            reference = parse_reference(item["reference"], model, ups, f"routes[{i}]")
        routes.append(Route(model, ups, reference))
    return tuple(routes)


def parse_reference(raw: Any, model: str, ups: Sequence[Upstream], where: str) -> Upstream:
    """A route's `reference: {url, deployment}`, or ValueError saying what is wrong."""
    try:
        reference = Upstream(parse_upstream_url(raw["url"]), str(raw["deployment"]), 0.0)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}.reference: expected {{url, deployment}} ({exc})") from exc
    if model == "*":
        raise ValueError(f"{where}.reference: a reference audits one model; name it in `model`")
    if not reference.deployment:
        raise ValueError(f"{where}.reference: give the reference a deployment name")
    if any(u.deployment == reference.deployment for u in ups):
        raise ValueError(
            f"{where}.reference: deployment {reference.deployment!r} also names one of the "
            "route's upstreams; give the reference its own name (its results carry it)"
        )
    return reference


def audited_pairs(routes: Sequence[Route]) -> tuple[tuple[str, str, Upstream], ...]:
    """(model, candidate deployment, reference) for every upstream of a route with a reference."""
    return tuple(
        (route.model, upstream.deployment, route.reference)
        for route in routes
        if route.reference is not None
        for upstream in route.upstreams
    )


def parse_upstream_url(raw: object) -> URL:
    """An upstream base URL, or ValueError saying what a valid one looks like."""
    url = URL(str(raw))
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"upstream URL {raw!r} must be http(s)://host[:port][/path]")
    return url
