"""Settings precedence (flags > env > YAML > defaults) and the errors a user sees."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from fathom import settings as config
from sidecar.config import ConfigError


def flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_precedence(tmp_path: Path) -> None:
    path = tmp_path / "fathom.yaml"
    path.write_text("upstream: http://yaml:1\ndeployment: from-yaml\nidle_timeout_s: 7\n")
    env = {"FATHOM_DEPLOYMENT": "from-env", "FATHOM_IDLE_TIMEOUT_S": "9"}
    settings = config.load(flags("--config", str(path), "--deployment", "from-flag"), env)
    assert settings.routing.upstream == "http://yaml:1"
    assert settings.routing.deployment == "from-flag"
    assert settings.proxy.idle_timeout_s == 9.0
    assert config.load(flags("--config", str(path)), {}).routing.deployment == "from-yaml"
    assert config.load(flags(), {}).routing.deployment == "default"


def test_env_types() -> None:
    env = {
        "FATHOM_INJECT_USAGE": "false",
        "FATHOM_POOL_LIMIT": "2048",
        "FATHOM_SAMPLE_RATES": '{"llama": 0.5}',
    }
    settings = config.load(flags(), env)
    assert settings.proxy.inject_usage is False
    assert settings.proxy.pool_limit == 2048
    assert settings.sampler.rates == {"llama": 0.5}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FATHOM_LISTEN": "nonsense"}, "listen='nonsense' is not HOST:PORT"),
        ({"FATHOM_IDLE_TIMEOUT_S": "0"}, "idle_timeout_s must be > 0"),
        ({"FATHOM_INJECT_USAGE": "maybe"}, "inject_usage"),
        ({"FATHOM_SAMPLE_RATE": "1.5"}, "sample rates must be within [0, 1]"),
        ({"FATHOM_POOL_LIMIT": "many"}, "pool_limit"),
    ],
)
def test_bad_values_say_which_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config.load(flags(), env)


def test_bad_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("upstrem: http://typo\n")
    with pytest.raises(ConfigError, match=r"unknown settings .*: upstrem"):
        config.load(flags("--config", str(path)), {})
    with pytest.raises(ConfigError, match="cannot read config file"):
        config.load(flags("--config", str(tmp_path / "missing.yaml")), {})


def test_serve_without_upstream_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    from fathom.cli import main

    assert main(["serve", "--listen", "127.0.0.1:0"]) == 2
    assert "no upstream" in capsys.readouterr().err
