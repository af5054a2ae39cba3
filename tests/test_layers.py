"""Imports run one way: the proxy side and the probes meet only in the wire contract
(sidecar.wire), the store and the settings; neither imports the other.

Every import statement counts, those inside functions too (read with `ast`, nothing runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The proxy side: what runs on every request, and must not load the probes (torch, the scorer).
PROXY_SIDE = (
    "sidecar.proxy", "sidecar.sampler", "sidecar.sse", "sidecar.metrics", "sidecar.record",
    "sidecar.routing", "sidecar.wire", "sidecar.store",
)  # fmt: skip
# What the probes may use of the sidecar package: the contract, the store, the settings.
PROBES_MAY_USE = ("sidecar.wire", "sidecar.store", "sidecar.config", "sidecar.routing")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def under(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def modules(package: str, keep: tuple[str, ...] = ("",)) -> list[object]:
    """One pytest param (module name, its imports) per module of `package` under `keep`."""
    named = [(module_name(p), p) for p in sorted((ROOT / package).rglob("*.py"))]
    return [
        pytest.param(name, imports(path), id=name)
        for name, path in named
        if keep == ("",) or under(name, keep)
    ]


@pytest.mark.parametrize(("name", "found"), modules("probes"))
def test_the_probes_use_only_the_contract_the_store_and_the_settings(
    name: str, found: set[str]
) -> None:
    wrong = sorted(
        m
        for m in found
        if under(m, ("sidecar",)) and m != "sidecar" and not under(m, PROBES_MAY_USE)
    )
    assert wrong == [], f"{name} imports the proxy side or the commands: {wrong}"


@pytest.mark.parametrize(("name", "found"), modules("sidecar", PROXY_SIDE))
def test_the_proxy_side_never_imports_the_probes(name: str, found: set[str]) -> None:
    assert not [m for m in found if under(m, ("probes",))], f"{name} imports the probes"


def test_the_wire_contract_is_a_leaf() -> None:
    found = imports(ROOT / "sidecar" / "wire.py")
    assert not [m for m in found if under(m, ("sidecar", "probes"))]


def test_the_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from sidecar.proxy import PROBE_TOKEN_HEADER\n")
    assert "sidecar.proxy" in imports(bad) and not under("sidecar.proxy", PROBES_MAY_USE)
