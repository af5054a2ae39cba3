"""deploy/components for operations: the Prometheus Operator's PodMonitor and rules, the
NetworkPolicies, and the disruption budgets, rendered with the clickhouse overlay.

The rules' metric names are checked against what real `fathom serve` and `fathom probe`
processes export; the CRD objects against the fields the operator's CRDs require.
"""

from __future__ import annotations

import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from fathom import spawn
from tests.support import deploy
from tests.support.deploy import Doc
from tests.support.processes import probe_command, serve_command
from tests.support.scrape import figures

COMPONENTS = ("prometheus-operator", "network-policy")
# Metrics the rules may read that other exporters of kube-prometheus-stack provide.
KUBE_STATE_METRICS = {"kube_pod_container_status_restarts_total"}


@pytest.fixture(scope="module")
def ops(kubectl: str, tmp_path_factory: pytest.TempPathFactory) -> list[Doc]:
    user = tmp_path_factory.mktemp("ops")
    kustomization = {
        "resources": [os.path.relpath(deploy.DEPLOY / "overlays" / "clickhouse", user)],
        "components": [os.path.relpath(deploy.DEPLOY / "components" / c, user) for c in COMPONENTS],
    }
    (user / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return deploy.render(kubectl, user)


def test_core_objects_validate_and_crds_have_their_required_fields(ops: list[Doc]) -> None:
    for doc in ops:
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            continue
        for version in (deploy.KUBERNETES, deploy.NEWEST):
            kubernetes_validate.validate(doc, version, strict=True)
    monitor = deploy.one(ops, "PodMonitor", "fathom")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert set(endpoint) <= {"port", "path", "interval"} and endpoint["path"] == "/metrics"
    rule = deploy.one(ops, "PrometheusRule", "fathom")
    for group in rule["spec"]["groups"]:
        assert set(group) == {"name", "rules"}
        for item in group["rules"]:
            assert set(item) <= {"alert", "expr", "for", "labels", "annotations"}
            assert item["labels"]["severity"] in ("warning", "critical")
            assert "for" not in item or re.fullmatch(r"\d+[smh]", item["for"])
    for doc in (monitor, rule):
        assert doc["metadata"]["labels"]["release"], "kube-prometheus-stack selects by it"


def test_pod_monitor_scrapes_every_admin_port(ops: list[Doc]) -> None:
    expression = deploy.one(ops, "PodMonitor", "fathom")["spec"]["selector"]["matchExpressions"][0]
    port_name = deploy.one(ops, "PodMonitor", "fathom")["spec"]["podMetricsEndpoints"][0]["port"]
    scraped = set()
    for name, pod in deploy.pod_specs(ops):
        every = [*pod.get("initContainers", []), *pod["containers"]]
        admin = [c for c in every if any(p["name"] == port_name for p in c.get("ports", []))]
        if admin:
            scraped.add(name)
    assert scraped == {"model-server", "fathom-probe-worker"}
    assert set(expression["values"]) == scraped and expression["operator"] == "In"


def rule_items(ops: list[Doc]) -> Iterator[Doc]:
    for group in deploy.one(ops, "PrometheusRule", "fathom")["spec"]["groups"]:
        yield from group["rules"]


def exported(url: str) -> set[str]:
    """Metric names in a real /metrics page."""
    with urllib.request.urlopen(url, timeout=30) as resp:
        return set(figures(resp.read().decode()))


def test_rules_read_metrics_fathom_really_exports(
    ops: list[Doc], simulator: str, tmp_path: Path
) -> None:
    serve = serve_command(simulator, tmp_path / "store")
    probe = probe_command(tmp_path / "empty", simulator)
    env = {"FATHOM_SPOOL_DIR": str(tmp_path / "spool"), "FATHOM_PROBE_ADMIN": "127.0.0.1:0"}
    with (
        spawn.running(serve, ["proxy", "admin"], env) as sidecar_process,
        spawn.running(probe, ["admin"], env) as worker,
    ):
        names = exported(sidecar_process.addresses["admin"] + "/metrics")
        names |= exported(worker.addresses["admin"] + "/metrics")
    for item in rule_items(ops):
        used = set(re.findall(r"\b((?:fathom|kube)_[a-z_]+)\b", item["expr"]))
        assert used, item["alert"]
        assert used <= names | KUBE_STATE_METRICS, f"{item['alert']}: {used - names}"
        grouped = set().union(*(
            {s.strip() for s in m.split(",")} for m in re.findall(r"by \(([^)]*)\)", item["expr"])
        ))  # fmt: skip
        text = " ".join(item["annotations"].values())
        labels = set(re.findall(r"\$labels\.(\w+)", text))
        assert labels <= grouped, f"{item['alert']} names labels its expr drops: {labels}"
    alerts = {item["alert"] for item in rule_items(ops)}
    assert {"FathomRowsDropped", "FathomSpoolNearlyFull", "FathomWriterLagging",
            "FathomRestarting"} <= alerts  # fmt: skip


def policies(ops: list[Doc]) -> list[Doc]:
    return deploy.find(ops, "NetworkPolicy")


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and In expressions) selects these labels."""
    assert set(selector) <= {"matchLabels", "matchExpressions"}, selector
    ok = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        ok = ok and labels.get(expression["key"]) in expression["values"]
    return ok


def template_labels(ops: list[Doc]) -> dict[str, dict[str, str]]:
    out = {}
    for doc in ops:
        spec = doc.get("spec", {})
        if doc["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" in spec:
            out[doc["metadata"]["name"]] = spec["template"]["metadata"]["labels"]
    return out


def test_only_fathom_reaches_the_model_port_and_only_monitoring_the_admin_port(
    ops: list[Doc],
) -> None:
    pod = deploy.model_pod(ops)
    model_port = deploy.port(deploy.containers(pod)["vllm"], "vllm")
    admin_port = deploy.port(deploy.sidecar(pod), "admin")
    labels = template_labels(ops)["model-server"]
    ingress = [p for p in policies(ops) if "Ingress" in p["spec"]["policyTypes"]]
    rules = [r for p in ingress if selects(p["spec"]["podSelector"], labels)
             for r in p["spec"]["ingress"]]  # fmt: skip
    assert rules, "no ingress policy selects the model-server pods"
    opened = {p["port"]: r.get("from") for r in rules for p in r["ports"]}
    assert model_port not in opened  # vLLM only over the pod's loopback, from Fathom
    assert opened[admin_port] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


def test_every_fathom_pod_may_reach_dns_and_the_store_and_nothing_else_of_fathom_is_open(
    ops: list[Doc],
) -> None:
    (egress,) = [p for p in policies(ops) if p["metadata"]["name"] == "fathom-egress"]
    store = urlsplit(deploy.example_secrets()["FATHOM_STORE"])
    namespace = (store.hostname or "").split(".")[1]  # service.namespace.svc
    for name, labels in template_labels(ops).items():
        if name == "fathom-reports":
            continue  # reads its claim, talks to nothing
        assert selects(egress["spec"]["podSelector"], labels), f"{name} has no egress rule"
    ports = {(p["port"], p["protocol"]) for r in egress["spec"]["egress"] for p in r["ports"]}
    assert {(53, "UDP"), (store.port, "TCP")} <= ports
    to_store = [r for r in egress["spec"]["egress"] if any(p["port"] == store.port
                                                          for p in r["ports"])]  # fmt: skip
    assert to_store[0]["to"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
    ]


def test_disruption_budgets_let_one_pod_go_at_a_time(ops: list[Doc]) -> None:
    labels = template_labels(ops)
    for name in ("model-server", "fathom-probe-worker"):
        budget = deploy.one(ops, "PodDisruptionBudget", name)["spec"]
        assert budget["maxUnavailable"] == 1 and "minAvailable" not in budget
        assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        assert selects(budget["selector"], labels[name])
