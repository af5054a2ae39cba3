"""`fathom grafana push` from an installed wheel: the dashboards travel inside the package.

The wheel is built from this checkout and installed into a fresh virtualenv; the
dependencies come from the running interpreter's site-packages (a path file), so nothing is
downloaded or rebuilt. The command then runs from outside the checkout against the fake
Grafana of tests/support/fake_grafana.py, which refuses what Grafana refuses.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from tests.support.fake_grafana import CLICKHOUSE, TOKEN, FakeGrafana

ROOT = Path(__file__).resolve().parent.parent
LEFT_OUT = (".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
            "fathom-data", "fathom-demo", "fathom-spool")  # fmt: skip


def build_and_install(tmp: Path, env: dict[str, str]) -> Path:
    """The wheel of this checkout installed into a new venv; its bin directory."""
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*LEFT_OUT))
    wheels = tmp / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(source)], check=True, cwd=tmp, env=env)  # fmt: skip
    (wheel,) = wheels.glob("fathom-*.whl")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    subprocess.run([*pip, "--python", str(env_dir / "bin/python"), "install", "--no-deps",
                    "--no-index", str(wheel)], check=True, cwd=tmp, env=env)  # fmt: skip
    # After the install: with the running environment visible, pip would find the fathom
    # installed there and call the requirement satisfied.
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env_dir / "bin"


async def test_push_from_an_installed_wheel(
    tmp_path: Path, grafana_server: tuple[str, FakeGrafana]
) -> None:
    url, state = grafana_server
    # Nothing of the checkout on the path: pip would take its egg-info for an installed fathom.
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    bin_dir = await asyncio.to_thread(build_and_install, tmp_path, env)
    where = await asyncio.create_subprocess_exec(
        bin_dir / "python", "-c", "import fathom.commands.grafana as g; print(g.__file__, g.DASHBOARDS)",  # noqa: E501
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    module, dashboards = (await where.communicate())[0].decode().split()
    assert module.startswith(str(tmp_path / "venv")), "imported the checkout, not the wheel"
    assert Path(dashboards) == Path(module).parents[1] / "dashboards"
    push = await asyncio.create_subprocess_exec(
        bin_dir / "fathom", "grafana", "push", "--url", url, "--token", TOKEN,
        "--clickhouse", CLICKHOUSE, cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await push.communicate()
    assert push.returncode == 0, err.decode()
    assert "3 dashboards and 8 alert rules" in out.decode()
    assert set(state.dashboards) == {"fathom-speed", "fathom-quality", "fathom-quality-vs-speed"}
    assert len(state.rules) == 8 and "fathom-clickhouse" in state.datasources
