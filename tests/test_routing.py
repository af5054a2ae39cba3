"""Traffic split by weight between deployments of one model."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from yarl import URL

from fathom import settings as config
from sidecar.config import ConfigError
from sidecar.routing import Router, Upstream, audited_pairs, parse_routes

ROUTES = [
    {
        "model": "llama",
        "upstreams": [
            {"url": "http://127.0.0.1:9001", "deployment": "fast", "weight": 3},
            {"url": "http://127.0.0.1:9002", "deployment": "sound", "weight": 1},
        ],
    },
    {"model": "*", "upstreams": [{"url": "http://127.0.0.1:9003", "deployment": "catch-all"}]},
]


def test_weights_split_traffic() -> None:
    default = Upstream(URL("http://127.0.0.1:9000"), "default")
    router = Router(default, parse_routes(ROUTES), random.Random(1))
    picks = Counter(router.pick("llama").deployment for _ in range(4000))
    assert set(picks) == {"fast", "sound"}
    assert 0.72 < picks["fast"] / 4000 < 0.78
    assert router.pick("other-model").deployment == "catch-all"
    assert {router.pick("llama", "sound").deployment for _ in range(50)} == {"sound"}
    assert router.pick("llama", "not-configured").deployment in {"fast", "sound"}
    assert [u.deployment for u in router.upstreams()] == ["default", "fast", "sound", "catch-all"]


def test_no_routes_means_the_default() -> None:
    default = Upstream(URL("http://127.0.0.1:9000"), "default")
    assert Router(default, (), random.Random(0)).pick("anything") is default


@pytest.mark.parametrize(
    "bad",
    [
        [{"model": "m"}],
        [{"model": "m", "upstreams": [{"url": "ftp://x", "deployment": "d"}]}],
        [{"model": "m", "upstreams": [{"url": "http://x", "deployment": "d", "weight": 0}]}],
    ],
)
def test_bad_routes_are_rejected(bad: list[dict[str, object]]) -> None:
    with pytest.raises(ConfigError, match="routes"):
        config.load(None, {"FATHOM_ROUTES": __import__("json").dumps(bad)})


AUDITED = [{**ROUTES[0], "reference": {"url": "http://127.0.0.1:9009", "deployment": "bf16"}}]


def test_a_reference_gets_only_traffic_that_pins_it() -> None:
    default = Upstream(URL("http://127.0.0.1:9000"), "default")
    routes = parse_routes(AUDITED)
    router = Router(default, routes, random.Random(1))
    assert {router.pick("llama").deployment for _ in range(500)} == {"fast", "sound"}
    pinned = router.pick("llama", "bf16")
    assert (pinned.deployment, str(pinned.url)) == ("bf16", "http://127.0.0.1:9009")
    # Probes re-ask and canary the routed upstreams; the reference is the audit's alone.
    assert "bf16" not in [u.deployment for u in router.upstreams()]
    assert [(m, d, r.deployment) for m, d, r in audited_pairs(routes)] == [
        ("llama", "fast", "bf16"), ("llama", "sound", "bf16")
    ]  # fmt: skip
    assert audited_pairs(parse_routes(ROUTES)) == ()


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ({"url": "http://x"}, r"routes\[0\].reference: expected \{url, deployment\}"),
        ({"url": "ftp://x", "deployment": "r"}, "must be http"),
        ("http://x", r"expected \{url, deployment\}"),
        ({"url": "http://x", "deployment": "fast"}, "give the reference its own name"),
    ],
)
def test_bad_references_say_what_is_wrong(reference: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.load(None, {"FATHOM_ROUTES": json.dumps([{**ROUTES[0], "reference": reference}])})
    star = [{**ROUTES[1], "reference": {"url": "http://x", "deployment": "r"}}]
    with pytest.raises(ConfigError, match="a reference audits one model; name it in `model`"):
        config.load(None, {"FATHOM_ROUTES": json.dumps(star)})
