"""deploy/ as the deploy tests read it: rendered with `kubectl kustomize`, objects picked out.

Real tools, no cluster: a failed render or a missing kubectl fails the test that asked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SECRET_EXAMPLE = DEPLOY / "overlays" / "clickhouse" / "store.env.example"
KUBERNETES = "1.29"  # the minimum the README states: native sidecars are on by default
NEWEST = "1.37"  # the newest schemas kubernetes-validate ships: nothing removed since

Doc = dict[str, Any]


def find_kubectl() -> str:
    """kubectl (with kustomize v5+): $FATHOM_KUBECTL, the virtualenv's bin/, then PATH."""
    candidates = [
        os.environ.get("FATHOM_KUBECTL"),
        str(Path(sys.executable).parent / "kubectl"),
        shutil.which("kubectl"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "kubectl not found: the deploy tests render deploy/ with `kubectl kustomize`. "
        "`make test` installs it on a fresh machine; or set FATHOM_KUBECTL=/path/to/kubectl",
        pytrace=False,
    )


def kubectl() -> str:
    """A kubectl whose kustomize knows components, labels and replacements (v5.0-v5.8 tried)."""
    path = find_kubectl()
    out = subprocess.run(
        [path, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30
    )
    version = json.loads(out.stdout or "{}").get("kustomizeVersion", "")
    major = re.match(r"v?(\d+)\.", version)
    if out.returncode != 0 or not major or int(major.group(1)) < 5:
        pytest.fail(f"{path}: need kubectl with kustomize >= v5, got {version!r} {out.stderr}")
    return path


def render(kubectl: str, directory: Path) -> list[Doc]:
    """`kubectl kustomize DIR` as a list of objects; a failed build fails the test."""
    out = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory} failed:\n{out.stderr}", pytrace=False)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


# ---- reading rendered objects


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    """Objects of a kind (and name)."""
    return [
        doc
        for doc in docs
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    """The single object of a kind and name."""
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    """(workload name, pod spec) of every workload, CronJobs included."""
    for doc in docs:
        spec = doc.get("spec", {})
        if doc["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" in spec:
            yield doc["metadata"]["name"], spec["template"]["spec"]


def model_pod(docs: list[Doc]) -> Doc:
    """The pod spec of the model server with its Fathom sidecar."""
    spec: Doc = one(docs, "StatefulSet", "model-server")["spec"]["template"]["spec"]
    return spec


def containers(pod: Doc, field: str = "containers") -> dict[str, Doc]:
    """Containers of a pod spec by name."""
    return {c["name"]: c for c in pod.get(field) or []}


def every_container(pod: Doc) -> list[Doc]:
    """Init (sidecar) and regular containers of a pod spec."""
    return [*(pod.get("initContainers") or []), *pod["containers"]]


def sidecar(pod: Doc) -> Doc:
    """The Fathom container, wherever the layout put it."""
    both = containers(pod) | containers(pod, "initContainers")
    return both["fathom"]


def port(container: Doc, name: str) -> int:
    """A container port by name."""
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    return int(ports[name])


def example_secrets() -> dict[str, str]:
    """KEY=value pairs of the example env file."""
    lines = SECRET_EXAMPLE.read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}
