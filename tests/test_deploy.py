"""deploy/ and the Dockerfile: every layout renders, validates, and keeps its promises.

Real tools, no cluster: `kubectl kustomize` renders each overlay (alone and with the
legacy-sidecar component), kubernetes-validate checks the result against the schemas of
the stated minimum Kubernetes (1.29; 1.25 for the legacy layout) and the newest it ships, no
field that is alpha at the minimum is used, and the real settings loader reads the rendered
Fathom config.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from fathom import settings as config
from fathom.settings import Settings, override
from sidecar.config import parse_hostport
from tests.support.deploy import (
    DEPLOY,
    KUBERNETES,
    NEWEST,
    SECRET_EXAMPLE,
    Doc,
    containers,
    every_container,
    example_secrets,
    find,
    model_pod,
    one,
    pod_specs,
    port,
    render,
    sidecar,
)

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
OLDEST = "1.25"  # the oldest schemas kubernetes-validate ships; the legacy layout must fit
LAYOUTS = ("embedded", "clickhouse", "embedded+legacy", "clickhouse+legacy")
STATE_MOUNT = "/var/lib/fathom"
VLLM_EXIT_S = 30  # what vLLM takes from SIGTERM to exit with nothing in flight


def overlay_dir(layout: str, scratch: Path) -> Path:
    """The directory to render for a layout; '+legacy' layouts are a user overlay in scratch."""
    overlay, _, legacy = layout.partition("+")
    if not legacy:
        return DEPLOY / "overlays" / overlay
    user = scratch / layout
    user.mkdir(parents=True, exist_ok=True)
    # kustomize takes only relative paths to other kustomizations.
    resources = os.path.relpath(DEPLOY / "overlays" / overlay, user)
    component = os.path.relpath(DEPLOY / "components" / "legacy-sidecar", user)
    kustomization = {"resources": [resources], "components": [component]}
    (user / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return user


@pytest.fixture(scope="session")
def renders(kubectl: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    """Every layout rendered once for the whole module."""
    scratch = tmp_path_factory.mktemp("layouts")
    return {layout: render(kubectl, overlay_dir(layout, scratch)) for layout in LAYOUTS}


def settings_of(docs: list[Doc], tmp_path: Path) -> Settings:
    """What the real settings loader makes of the rendered ConfigMap and the sidecar's env."""
    workloads = [d for d in docs if d["kind"] in ("StatefulSet", "Deployment")]
    pod = next(
        w["spec"]["template"]["spec"]
        for w in workloads
        if "fathom" in containers(w["spec"]["template"]["spec"], "initContainers")
        or "fathom" in containers(w["spec"]["template"]["spec"])
    )
    mounted = next(v for v in pod["volumes"] if v["name"] == "fathom-config")
    data = one(docs, "ConfigMap", mounted["configMap"]["name"])["data"]
    (tmp_path / "fathom.yaml").write_text(data["fathom.yaml"])
    env = {e["name"]: e["value"] for e in sidecar(pod).get("env", []) if "value" in e}
    assert env.pop("FATHOM_CONFIG") == "/etc/fathom/fathom.yaml"
    return config.load(None, {**env, "FATHOM_CONFIG": str(tmp_path / "fathom.yaml")})


# ---- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_validates_against_kubernetes(
    renders: dict[str, list[Doc]], layout: str
) -> None:
    versions = [KUBERNETES, NEWEST] + ([OLDEST] if layout.endswith("+legacy") else [])
    for doc in renders[layout]:
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(part) for part in exc.path)
                pytest.fail(
                    f"{layout} {doc['kind']}/{doc['metadata']['name']} {version}: "
                    f"{where}: {exc.message}"
                )
            except kubernetes_validate.SchemaNotFoundError as exc:
                pytest.fail(f"{layout}: {exc.message}")


# Fields (by the end of their path) that a feature gate guards, and the first release where
# that gate is on by default (beta or GA), from the Kubernetes feature-gate reference. The
# schemas list a field from its alpha release on, so validation alone cannot catch them.
ON_BY_DEFAULT: dict[str, tuple[str, str]] = {
    "initContainers.restartPolicy": ("1.29", "SidecarContainers"),
    "lifecycle.preStop.sleep": ("1.30", "PodLifecycleSleepAction"),
    "lifecycle.postStart.sleep": ("1.30", "PodLifecycleSleepAction"),
    "accessModes=ReadWriteOncePod": ("1.27", "ReadWriteOncePod"),
    "spec.persistentVolumeClaimRetentionPolicy": ("1.27", "StatefulSetAutoDeletePVC"),
    "spec.unhealthyPodEvictionPolicy": ("1.27", "PDBUnhealthyPodEvictionPolicy"),
    "labels['apps.kubernetes.io/pod-index']": ("1.28", "PodIndexLabel"),
    "updateStrategy.rollingUpdate.maxUnavailable": ("1.35", "MaxUnavailableStatefulSet"),
    "spec.trafficDistribution": ("1.31", "ServiceTrafficDistribution"),
}
# Gates whose absence the code handles: a missing pod-index label reads as '' and the probe
# worker then takes its ordinal from the hostname.
DEGRADES_GRACEFULLY = {"PodIndexLabel"}


def paths(node: Any, prefix: str = "") -> Iterator[str]:
    """Every field path of an object (list indices dropped), plus `path=value` for strings."""
    if prefix:
        yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list):
        for item in node:
            yield from paths(item, prefix)
    elif isinstance(node, str):
        yield f"{prefix}={node}"
        yield f"{prefix}[{node}]"  # fieldRef paths such as metadata.labels['...']


def gated_features(docs: list[Doc]) -> dict[str, str]:
    """Feature gate -> the release where it is on by default, for every gated field used."""
    used = {}
    for doc in docs:
        for path in paths(doc):
            for suffix, (version, gate) in ON_BY_DEFAULT.items():
                if path.endswith(suffix) or path.endswith(f"={suffix}"):
                    used[gate] = version
    return used


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_field_is_off_by_default_at_the_minimum_version(
    renders: dict[str, list[Doc]], layout: str
) -> None:
    minimum = OLDEST if layout.endswith("+legacy") else KUBERNETES
    used = gated_features(renders[layout])
    late = {
        gate: v
        for gate, v in used.items()
        if version_key(v) > version_key(minimum) and gate not in DEGRADES_GRACEFULLY
    }
    assert not late, f"{layout} needs gates off by default in {minimum}: {late}"
    if not layout.endswith("+legacy"):
        # The stated minimum is tight: native sidecars are what needs it.
        assert used["SidecarContainers"] == KUBERNETES


def test_the_gate_check_sees_a_sleep_hook(renders: dict[str, list[Doc]]) -> None:
    """The check is not vacuous: the preStop sleep the manifests used to have is caught."""
    doc = json.loads(json.dumps(one(renders["clickhouse"], "StatefulSet", "model-server")))
    doc["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"] = {
        "sleep": {"seconds": 10}
    }
    assert gated_features([doc])["PodLifecycleSleepAction"] == "1.30"


@pytest.mark.parametrize("layout", ["embedded", "clickhouse"])
def test_sidecar_is_native_with_probes_and_resources(
    renders: dict[str, list[Doc]], layout: str
) -> None:
    pod = model_pod(renders[layout])
    assert "fathom" not in containers(pod)
    fathom = containers(pod, "initContainers")["fathom"]
    assert fathom["restartPolicy"] == "Always"
    admin = port(fathom, "admin")
    paths = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = fathom[probe]["httpGet"]
        assert http["port"] in ("admin", admin), f"{probe} must use the admin port"
        paths[probe] = http["path"]
    assert paths == {
        "startupProbe": "/healthz",
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
    }
    assert set(fathom["resources"]["requests"]) >= {"cpu", "memory"}
    assert "memory" in fathom["resources"]["limits"]
    assert fathom["lifecycle"]["preStop"] == {"httpGet": {"path": "/drain", "port": admin}}
    assert fathom["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("overlay", ["embedded", "clickhouse"])
def test_legacy_sidecar_is_the_same_container_in_containers(
    renders: dict[str, list[Doc]], overlay: str
) -> None:
    native = containers(model_pod(renders[overlay]), "initContainers")["fathom"]
    legacy_pod = model_pod(renders[f"{overlay}+legacy"])
    assert "fathom" not in containers(legacy_pod, "initContainers")
    legacy = containers(legacy_pod)["fathom"]
    # Both hooks wait on the drain: the kubelet runs them together in this layout.
    drain = {"httpGet": {"path": "/drain", "port": port(native, "admin")}}
    assert legacy["lifecycle"]["preStop"] == drain
    assert containers(legacy_pod)["vllm"]["lifecycle"]["preStop"] == drain
    drop = {"restartPolicy"}
    assert {k: v for k, v in legacy.items() if k not in drop} == {
        k: v for k, v in native.items() if k not in drop
    }


@pytest.mark.parametrize("layout", LAYOUTS)
def test_settings_ports_and_grace_period_agree(
    renders: dict[str, list[Doc]], layout: str, tmp_path: Path
) -> None:
    docs = renders[layout]
    settings = settings_of(docs, tmp_path)
    pod = model_pod(docs)
    fathom = sidecar(pod)
    assert settings.proxy.listen_addr == ("0.0.0.0", port(fathom, "proxy"))
    # The kubelet probes the pod IP: an admin server on loopback would fail every probe.
    assert settings.admin_addr == ("0.0.0.0", port(fathom, "admin"))
    assert settings.routing.upstream == f"http://127.0.0.1:{port(containers(pod)['vllm'], 'vllm')}"
    assert settings.writer.spool_dir.startswith(STATE_MOUNT + "/")

    # vLLM's preStop waits on Fathom's drain, on the port Fathom's admin server really uses.
    hook = containers(pod)["vllm"]["lifecycle"]["preStop"]["httpGet"]
    assert (hook["path"], hook["port"]) == ("/drain", settings.admin_addr[1])
    # The drain, vLLM's exit, then Fathom's stop, whose flush waits up to grace_s for a store
    # that hangs before it spools.
    needed = settings.drain_settle_s + settings.grace_s + VLLM_EXIT_S + settings.grace_s
    assert pod["terminationGracePeriodSeconds"] >= needed


@pytest.mark.parametrize("layout", LAYOUTS)
def test_service_sends_clients_to_the_sidecar(renders: dict[str, list[Doc]], layout: str) -> None:
    docs = renders[layout]
    service = one(docs, "Service", "model-server")
    labels = one(docs, "StatefulSet", "model-server")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    target_ports = [p["targetPort"] for p in service["spec"]["ports"]]
    assert target_ports == [port(sidecar(model_pod(docs)), "proxy")]


def test_no_secret_value_is_rendered(renders: dict[str, list[Doc]]) -> None:
    secrets = example_secrets()
    assert secrets, f"{SECRET_EXAMPLE} holds no example values"
    for layout, docs in renders.items():
        text = yaml.safe_dump_all(docs)
        assert not find(docs, "Secret"), f"{layout} renders a Secret: users create their own"
        for key, value in secrets.items():
            for form in (value, base64.b64encode(value.encode()).decode()):
                assert form not in text, f"{layout} renders the value of {key}"
            password = re.search(r"://[^:/@]+:([^@]+)@", value)
            assert password is None or password.group(1) not in text


def test_secret_references_match_the_example(renders: dict[str, list[Doc]]) -> None:
    secrets = example_secrets()
    references = set()
    for docs in renders.values():
        for _, pod in pod_specs(docs):
            for env in (e for c in every_container(pod) for e in c.get("env", [])):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    references.add((ref["name"], ref["key"]))
                    assert env["name"] == ref["key"], "the env name is the secret key"
    assert references == {("fathom-store", key) for key in secrets}


@pytest.mark.parametrize("layout", ["clickhouse", "clickhouse+legacy"])
def test_probe_workers_split_by_ordinal(renders: dict[str, list[Doc]], layout: str) -> None:
    docs = renders[layout]
    workers = one(docs, "StatefulSet", "fathom-probe-worker")
    assert one(docs, "Service", workers["spec"]["serviceName"])["spec"]["clusterIP"] == "None"
    probe = containers(workers["spec"]["template"]["spec"])["probe"]
    env = {e["name"]: e for e in probe["env"]}
    index = env["FATHOM_WORKER_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert index == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert env["FATHOM_WORKER_COUNT"]["value"] == str(workers["spec"]["replicas"])
    assert "--upstream" in probe["args"]


def probe_worker(docs: list[Doc]) -> Doc:
    workers = one(docs, "StatefulSet", "fathom-probe-worker")
    return containers(workers["spec"]["template"]["spec"])["probe"]


@pytest.mark.parametrize("layout", ["clickhouse", "clickhouse+legacy"])
def test_probe_workers_run_on_cpu_with_probes_metrics_and_thread_caps(
    renders: dict[str, list[Doc]], layout: str
) -> None:
    probe = probe_worker(renders[layout])
    env = {e["name"]: e.get("value") for e in probe["env"]}
    limits = probe["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits and env["FATHOM_SCORER_DEVICE"] == "cpu"
    assert probe["image"].startswith("fathom:")
    # torch's pools sized to the CPU limit, not to the node.
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == limits["cpu"]
    admin = parse_hostport(env["FATHOM_PROBE_ADMIN"], "probe_admin")
    assert admin == ("0.0.0.0", port(probe, "admin"))
    for kind in ("startupProbe", "livenessProbe"):
        assert probe[kind]["httpGet"] == {"path": "/healthz", "port": "admin"}


def test_gpu_probes_component_moves_workers_onto_gpus(kubectl: str, tmp_path: Path) -> None:
    user = {
        "resources": [os.path.relpath(DEPLOY / "overlays" / "clickhouse", tmp_path)],
        "components": [os.path.relpath(DEPLOY / "components" / "gpu-probes", tmp_path)],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(user))
    docs = render(kubectl, tmp_path)
    probe = probe_worker(docs)
    env = {e["name"]: e.get("value") for e in probe["env"]}
    assert probe["image"].startswith("fathom-gpu:") and env["FATHOM_SCORER_DEVICE"] == "cuda"
    assert probe["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert env["FATHOM_PROBE_ADMIN"] == "0.0.0.0:9464"  # the rest of the env is kept
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


@pytest.mark.parametrize("layout", ["clickhouse", "clickhouse+legacy"])
def test_detection_does_not_depend_on_worker_0(renders: dict[str, list[Doc]], layout: str) -> None:
    cron = one(renders[layout], "CronJob", "fathom-detect")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["detect"] and "nodeSelector" not in pod
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"


def test_worker_count_follows_replicas_in_a_user_overlay(kubectl: str, tmp_path: Path) -> None:
    """The recipe the clickhouse overlay documents: `replicas:` plus its replacements block."""
    base = yaml.safe_load((DEPLOY / "overlays" / "clickhouse" / "kustomization.yaml").read_text())
    user = {
        "resources": [os.path.relpath(DEPLOY / "overlays" / "clickhouse", tmp_path)],
        "replicas": [{"name": "fathom-probe-worker", "count": 5}],
        "replacements": base["replacements"][1:],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(user))
    workers = one(render(kubectl, tmp_path), "StatefulSet", "fathom-probe-worker")
    env = {e["name"]: e for e in workers["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert workers["spec"]["replicas"] == 5
    assert env["FATHOM_WORKER_COUNT"]["value"] == "5"


@pytest.mark.parametrize("layout", ["embedded", "embedded+legacy"])
def test_embedded_is_one_pod_on_a_volume(
    renders: dict[str, list[Doc]], layout: str, tmp_path: Path
) -> None:
    docs = renders[layout]
    assert [name for name, _ in pod_specs(docs)] == ["model-server"]
    workload = one(docs, "StatefulSet", "model-server")
    assert workload["spec"]["replicas"] == 1  # a StatefulSet deletes its pod before replacing it
    claims = {c["metadata"]["name"]: c["spec"] for c in workload["spec"]["volumeClaimTemplates"]}
    # Only ReadWriteOncePod keeps a second pod on the same node from opening the store.
    modes = ["ReadWriteOnce"] if layout.endswith("+legacy") else ["ReadWriteOncePod"]
    assert claims["state"]["accessModes"] == modes
    mounts = {m["name"]: m["mountPath"] for m in sidecar(model_pod(docs))["volumeMounts"]}
    assert mounts["state"] == STATE_MOUNT
    settings = settings_of(docs, tmp_path)
    assert settings.store.startswith(f"chdb://{STATE_MOUNT}/")
    assert settings.probes is True
    env = {e["name"]: e.get("value") for e in sidecar(model_pod(docs))["env"]}
    assert env["OMP_NUM_THREADS"] == "1"  # torch's pools would take every core of the node


@pytest.mark.parametrize("layout", LAYOUTS)
def test_spool_and_model_cache_outlive_the_pod(
    renders: dict[str, list[Doc]], layout: str, tmp_path: Path
) -> None:
    docs = renders[layout]
    workload = one(docs, "StatefulSet", "model-server")
    claims = {c["metadata"]["name"] for c in workload["spec"]["volumeClaimTemplates"]}
    pod = model_pod(docs)
    assert claims >= {"state", "hf-cache"}
    assert not {v["name"] for v in pod["volumes"]} & claims, "an emptyDir shadows a claim"
    settings = settings_of(docs, tmp_path)
    assert settings.writer.spool_dir.startswith(STATE_MOUNT + "/")
    assert not settings.writer.spool_ephemeral
    vllm_mounts = {m["name"] for m in containers(pod)["vllm"]["volumeMounts"]}
    assert "hf-cache" in vllm_mounts
    # The default retention (Retain) keeps a scaled-down pod's spool for when it comes back.
    assert workload["spec"].get("persistentVolumeClaimRetentionPolicy") is None


def test_images_are_pinned(renders: dict[str, list[Doc]]) -> None:
    for layout, docs in renders.items():
        for name, pod in pod_specs(docs):
            for c in every_container(pod):
                tag = c["image"].rpartition(":")[2]
                assert "/" not in tag and tag not in ("", "latest"), f"{layout} {name}: {c}"


# ---- Grafana provisioning --------------------------------------------------------------------


def grafana_kind(path: Path) -> str | None:
    """The sidecar label a provisioning file needs, None for a dashboard-provider file."""
    if path.suffix == ".json":
        return "grafana_dashboard"
    document = yaml.safe_load(path.read_text())
    if "providers" in document:
        return None
    return "grafana_datasource" if "datasources" in document else "grafana_alert"


def assert_configmaps_match(docs: list[Doc], source: Path) -> None:
    """Every provisioning file under `source` is one labelled ConfigMap with the same text."""
    labels = ("grafana_dashboard", "grafana_alert", "grafana_datasource")
    rendered = []
    for cm in find(docs, "ConfigMap"):
        label = [k for k in cm["metadata"].get("labels", {}) if k in labels]
        if label:
            ((key, value),) = cm["data"].items()
            rendered.append((key, label[0], hashlib.sha256(value.encode()).hexdigest()))
            assert len(value.encode()) < 1024 * 1024, f"{key}: over the ConfigMap size limit"
    expected = []
    for path in sorted(p for p in source.rglob("*") if p.suffix in (".json", ".yaml", ".yml")):
        kind = grafana_kind(path)
        if kind:
            expected.append((path.name, kind, hashlib.sha256(path.read_bytes()).hexdigest()))
    stale = sorted(set(rendered) ^ set(expected))
    assert sorted(rendered) == sorted(expected), (
        f"deploy/grafana differs from {source} in {[name for name, *_ in stale]}: "
        "run `make deploy-sync`"
    )


def test_dashboard_configmaps_equal_the_files_in_dashboards(
    renders: dict[str, list[Doc]],
) -> None:
    for docs in renders.values():
        assert_configmaps_match(docs, DASHBOARDS)


def load_sync_script() -> Any:
    """deploy/sync_dashboards.py as a module (deploy/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sync_dashboards", DEPLOY / "sync_dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is being built.
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_sync_script_turns_every_kind_of_file_into_configmaps(kubectl: str, tmp_path: Path) -> None:
    source = tmp_path / "dashboards"
    (source / "alerts").mkdir(parents=True)
    (source / "speed.json").write_text('{"title": "Speed", "panels": []}\n')
    (source / "Quality Overview.json").write_text('{"title": "Quality"}\n')
    (source / "datasource.yaml").write_text(
        "apiVersion: 1\ndatasources:\n  - name: Fathom\n"
        "    secureJsonData: {password: $FATHOM_CLICKHOUSE_PASSWORD}\n"
    )
    (source / "alerts" / "rules.yaml").write_text("apiVersion: 1\ngroups: []\n")
    (source / "provider.yaml").write_text("apiVersion: 1\nproviders: []\n")
    (source / "README.md").write_text("not provisioning\n")
    target = tmp_path / "grafana"
    target.mkdir()
    load_sync_script().sync(source, target)
    assert_configmaps_match(render(kubectl, target), source)


def test_sync_script_refuses_a_literal_datasource_password(tmp_path: Path) -> None:
    module = load_sync_script()
    (tmp_path / "ds.yaml").write_text(
        "datasources:\n  - name: Fathom\n    secureJsonData: {password: hunter2}\n"
    )
    with pytest.raises(module.SyncError, match=r"secureJsonData\.password is a literal"):
        module.plan(tmp_path)
    (tmp_path / "ds.yaml").unlink()
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "speed.json").write_text("{}")
    with pytest.raises(module.SyncError, match="same ConfigMap name"):
        module.plan(tmp_path)


# ---- the image ---------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    steps = []
    for line in re.sub(r"\\\n", " ", path.read_text()).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            steps.append((word.upper(), rest.strip()))
    return steps


def test_dockerfile_is_slim_non_root_and_offline() -> None:
    steps = dockerfile_instructions(ROOT / "Dockerfile")
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    images = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
        for word, rest in steps
        if word == "FROM"
    ]
    for image in images:
        tag = image.partition(":")[2]
        assert "slim" in tag and not tag.startswith("latest"), image
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    users = [rest for word, rest in final if word == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), "USER must be a numeric uid"
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert "HF_HUB_OFFLINE=1" in env.split()
    assert not re.search(r"\bFATHOM_\w+=", env), "image env would override the config file"
    (entrypoint,) = [rest for word, rest in final if word == "ENTRYPOINT"]
    assert json.loads(entrypoint)[-1] == "fathom", "exec form, so SIGTERM reaches fathom"
    assert args["TORCH_INDEX_URL"].endswith("/cpu"), "the sidecar image uses CPU torch"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "*.env"} <= set(ignored)


# ---- the schema step ---------------------------------------------------------------------------


def schema_job(docs: list[Doc]) -> Doc:
    (job,) = find(docs, "Job")
    return job


@pytest.mark.parametrize("layout", ["clickhouse", "clickhouse+legacy"])
def test_schema_job_is_named_per_release_and_gitops_safe(
    renders: dict[str, list[Doc]], layout: str
) -> None:
    job = schema_job(renders[layout])
    (container,) = job["spec"]["template"]["spec"]["containers"]
    tag = container["image"].rpartition(":")[2]
    assert job["metadata"]["name"] == f"fathom-schema-{tag}"
    assert "ttlSecondsAfterFinished" not in job["spec"], "GitOps would recreate it every sync"
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PreSync"
    assert container["args"][:2] == ["schema", "apply"]
    env = {e["name"] for e in container["env"]}
    assert env == {"FATHOM_SCHEMA_STORE"}, "only the Job holds the DDL credential"


def test_schema_job_name_follows_the_image_in_a_user_overlay(kubectl: str, tmp_path: Path) -> None:
    """The recipe the clickhouse overlay documents: `images:` plus its first replacements."""
    base = yaml.safe_load((DEPLOY / "overlays" / "clickhouse" / "kustomization.yaml").read_text())
    user = {
        "resources": [os.path.relpath(DEPLOY / "overlays" / "clickhouse", tmp_path)],
        "images": [{"name": "fathom", "newName": "registry.example/fathom", "newTag": "0.2.0"}],
        "replacements": base["replacements"][:1],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(user))
    job = schema_job(render(kubectl, tmp_path))
    assert job["metadata"]["name"] == "fathom-schema-0.2.0"
    assert job["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":0.2.0")


@pytest.mark.parametrize("layout", ["clickhouse", "clickhouse+legacy"])
def test_weekly_report_is_dated_and_served_from_its_node(
    renders: dict[str, list[Doc]], layout: str
) -> None:
    docs = renders[layout]
    cron = one(docs, "CronJob", "fathom-weekly-report")
    job_pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    args = job_pod["containers"][0]["args"]
    assert "{date}" in args[args.index("--out") + 1]  # one file per week
    server = one(docs, "Deployment", "fathom-reports")
    server_pod = server["spec"]["template"]["spec"]
    assert server["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = server_pod["containers"]
    assert container["args"][0] == "reports"
    assert [m.get("readOnly") for m in container["volumeMounts"]] == [True]

    def claim(pod: Doc) -> str:
        (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        return str(volume["persistentVolumeClaim"]["claimName"])

    assert claim(job_pod) == claim(server_pod)
    modes = one(docs, "PersistentVolumeClaim", claim(server_pod))["spec"]["accessModes"]
    # ReadWriteOnce is shared by pods on one node only: the report pod follows the server.
    assert modes == ["ReadWriteOnce"]
    (term,) = job_pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= (
        server["spec"]["template"]["metadata"]["labels"].items()
    )
    selector = one(docs, "Service", "fathom-reports")["spec"]["selector"]
    assert selector.items() <= server["spec"]["template"]["metadata"]["labels"].items()


# ---- adding Fathom to a Deployment of your own ---------------------------------------------------


def test_add_sidecar_component_adds_the_same_sidecar_to_the_named_deployment_only(
    kubectl: str, tmp_path: Path
) -> None:
    example = DEPLOY / "examples" / "add-sidecar"
    docs = render(kubectl, example)
    mine = one(docs, "Deployment", "my-vllm")
    pod = mine["spec"]["template"]["spec"]
    base = render(kubectl, DEPLOY / "base")
    base_pod = model_pod(base)
    native = containers(base_pod, "initContainers")["fathom"]
    assert containers(pod, "initContainers")["fathom"] == native
    # The model server (container 0) waits on the drain, as in deploy/base.
    drain = containers(base_pod)["vllm"]["lifecycle"]
    assert pod["containers"][0]["lifecycle"] == drain
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["state"]
    settings = settings_of(docs, tmp_path)
    assert settings.writer.spool_ephemeral is True  # counted as dropped, not silently lost
    base_settings = settings_of(base, tmp_path)
    assert override(settings, spool_ephemeral=False) == base_settings
    # The drain, vLLM's exit, the flush, and one more replay of the ephemeral spool.
    needed = settings.drain_settle_s + 3 * settings.grace_s + VLLM_EXIT_S
    assert pod["terminationGracePeriodSeconds"] >= needed
    # GPU rollouts: no surge pod waiting for a GPU; a deadline past vLLM's startup budget.
    startup = containers(base_pod)["vllm"]["startupProbe"]
    assert mine["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert (
        mine["spec"]["progressDeadlineSeconds"]
        > startup["periodSeconds"] * startup["failureThreshold"]
    )
    # The other Deployment is left exactly as it was.
    original = list(yaml.safe_load_all((example / "model" / "deployment.yaml").read_text()))
    untouched = one(original, "Deployment", "my-frontend")
    assert one(docs, "Deployment", "my-frontend") == untouched
    for doc in docs:
        for version in (KUBERNETES, NEWEST):
            kubernetes_validate.validate(doc, version, strict=True)
    assert gated_features(docs) == {"SidecarContainers": KUBERNETES}
