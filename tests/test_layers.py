"""Imports run one way (ARCHITECTURE.md): commands (fathom) -> {proxy side, probes, report}
-> {store, wire}. The proxy side and the probes meet only in the wire contract (sidecar.wire),
the store and the settings; neither imports the other, and nothing imports the commands.

Every import statement counts, those inside functions too (read with `ast`, nothing runs).
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fathom", "sidecar", "probes")
# What the probes may use of the sidecar package: the contract, the store, the settings.
PROBES_MAY_USE = ("sidecar.wire", "sidecar.store", "sidecar.config", "sidecar.routing")
# The layers inside the commands package that sit below the commands themselves.
BELOW_COMMANDS = ("fathom.report", "fathom.sim")


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


def package_graph() -> dict[str, set[str]]:
    """Top-level package -> the other top-level packages its modules import."""
    graph: dict[str, set[str]] = {package: set() for package in PACKAGES}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for name in imports(path):
                top = name.split(".")[0]
                if top in PACKAGES and top != package:
                    graph[package].add(top)
    return graph


def test_the_package_graph_has_no_loop() -> None:
    graph = package_graph()
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError
    assert order.index("sidecar") < order.index("probes") < order.index("fathom")
    assert graph["sidecar"] == set(), "the proxy side and the store import nothing above them"


@pytest.mark.parametrize(("name", "found"), modules("probes"))
def test_the_probes_use_only_the_contract_the_store_and_the_settings(
    name: str, found: set[str]
) -> None:
    wrong = sorted(
        m
        for m in found
        if (under(m, ("sidecar",)) and m != "sidecar" and not under(m, PROBES_MAY_USE))
        or under(m, ("fathom",))
    )
    assert wrong == [], f"{name} imports the proxy side or the commands: {wrong}"


@pytest.mark.parametrize(("name", "found"), modules("sidecar"))
def test_the_proxy_side_never_imports_the_probes_or_the_commands(
    name: str, found: set[str]
) -> None:
    assert not [m for m in found if under(m, ("probes", "fathom"))], name


@pytest.mark.parametrize(("name", "found"), modules("fathom", BELOW_COMMANDS))
def test_the_report_and_the_simulator_never_import_a_command(name: str, found: set[str]) -> None:
    assert not [m for m in found if under(m, ("fathom.commands", "fathom.cli"))], name


def test_the_wire_contract_is_a_leaf() -> None:
    found = imports(ROOT / "sidecar" / "wire.py")
    assert not [m for m in found if under(m, PACKAGES)]


def test_the_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from sidecar.proxy import PROBE_TOKEN_HEADER\n")
    assert "sidecar.proxy" in imports(bad) and not under("sidecar.proxy", PROBES_MAY_USE)


def test_a_loop_between_packages_is_caught() -> None:
    graph = package_graph() | {"sidecar": {"probes"}}
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(graph).static_order())


def test_tests_and_benches_share_code_only_through_tests_support() -> None:
    """No test module is imported as a library (nor conftest): what tests and benches share
    lives once in tests/support."""
    wrong = sorted(
        f"{module_name(path)} imports {name}"
        for folder in ("tests", "bench")
        for path in (ROOT / folder).rglob("*.py")
        for name in imports(path)
        if under(name, ("tests",)) and name != "tests" and not under(name, ("tests.support",))
    )
    assert wrong == []


@pytest.mark.parametrize(
    "path",
    sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py")),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_module_opens_with_what_it_is_for(path: Path) -> None:
    assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no module docstring"
