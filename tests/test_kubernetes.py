"""deploy/kubernetes, checked as far as this machine can: no cluster runs here.

- Every object validates against Kubernetes' own OpenAPI schemas (kubernetes-validate,
  strict: an unknown or misspelt field fails), for the oldest and newest versions the
  manifests claim to support.
- The kustomization names every manifest in the folder, and nothing else.
- Every BERTH_* variable a container gets (its env and the ConfigMap) is a setting the
  process it runs reads; every Secret key used is one the README tells the operator to
  create; the commands are Berth's.
- What Berth's design needs of each workload: the API's probes on /healthz at the port
  it listens on, rolling updates that never lose capacity; two scalers; agents on the
  host's network with the Docker socket and the same data path on both sides of the
  bind mount; NATS with three nodes, Berth's streams replicated three ways, room for
  Berth's largest message.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from berth.local import MAX_PAYLOAD
from shared.settings import AgentSettings, ApiSettings, ScalerSettings

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "deploy" / "kubernetes"
NOT_OBJECTS = {"kustomization.yaml", "nats-values.yaml"}
# The Kubernetes versions the manifests are written for (README.md says the same).
VERSIONS = ("1.29.0", "1.33.0")
SETTINGS = {"api": ApiSettings, "scaler": ScalerSettings, "agent": AgentSettings}


def _objects() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(FOLDER.glob("*.yaml")):
        if path.name in NOT_OBJECTS:
            continue
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def _named(kind: str, name: str) -> dict[str, Any]:
    return next(o for _, o in _objects() if o["kind"] == kind and o["metadata"]["name"] == name)


def _container(kind: str, name: str) -> dict[str, Any]:
    containers = _named(kind, name)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _variables(settings: type) -> set[str]:
    return {f"BERTH_{name.upper()}" for name in settings.model_fields}


def test_the_folder_has_the_workloads() -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for _, o in _objects()}
    assert {
        ("Deployment", "berth-api"),
        ("Deployment", "berth-scaler"),
        ("DaemonSet", "berth-agent"),
        ("Service", "berth-api"),
        ("ConfigMap", "berth"),
    } <= kinds


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_matches_the_kubernetes_schema(version: str) -> None:
    for file, obj in _objects():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{file}: {obj['kind']} {obj['metadata']['name']}: {exc.message}")


def test_the_kustomization_names_every_manifest() -> None:
    kustomization = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())
    manifests = {p.name for p in FOLDER.glob("*.yaml")} - NOT_OBJECTS
    assert sorted(kustomization["resources"]) == sorted(manifests)
    (chart,) = kustomization["helmCharts"]
    assert chart["name"] == "nats" and chart["repo"] == "https://nats-io.github.io/k8s/helm/charts/"
    assert (FOLDER / chart["valuesFile"]).exists()
    assert [i["name"] for i in kustomization["images"]] == ["berth"]


def test_each_process_gets_only_variables_it_reads() -> None:
    config = _named("ConfigMap", "berth")["data"]
    everyone = set().union(*(_variables(s) for s in SETTINGS.values()))
    assert set(config) <= everyone, set(config) - everyone
    for kind, name in (
        ("Deployment", "berth-api"),
        ("Deployment", "berth-scaler"),
        ("DaemonSet", "berth-agent"),
    ):
        container = _container(kind, name)
        (process,) = container["args"]
        assert process in SETTINGS, container["args"]
        berth = {k for k in _env(container) if k.startswith("BERTH_")}
        unknown = berth - _variables(SETTINGS[process])
        assert not unknown, f"{name} gets {unknown}, which {process} does not read"
        assert {"configMapRef": {"name": "berth"}} in container["envFrom"]
        # The NATS URL carries the token the chart's servers ask for.
        url = _env(container)["BERTH_NATS_URL"]
        assert url.startswith("nats://$(NATS_TOKEN)@nats"), url
        assert _env(container)["NATS_TOKEN"] == {
            "secretKeyRef": {"name": "berth", "key": "NATS_TOKEN"}
        }


def test_every_secret_key_is_one_the_readme_makes() -> None:
    readme = (FOLDER / "README.md").read_text()
    made = set(re.findall(r"--from-literal=([A-Z_]+)=", readme))
    used = set()
    for _, obj in _objects():
        for match in re.finditer(
            r"'secretKeyRef': \{'name': '([a-z-]+)', 'key': '([A-Z_]+)'\}", str(obj)
        ):
            assert match.group(1) == "berth"
            used.add(match.group(2))
    values = (FOLDER / "nats-values.yaml").read_text()
    used |= set(re.findall(r"key: ([A-Z_]+)", values))
    assert used and used <= made, f"not in README.md's `kubectl create secret`: {used - made}"


def test_the_api_is_probed_where_it_listens_and_rolls_without_losing_capacity() -> None:
    api = _named("Deployment", "berth-api")
    container = _container("Deployment", "berth-api")
    (port,) = container["ports"]
    assert port["containerPort"] == ApiSettings.model_fields["port"].default
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert api["spec"]["replicas"] >= 2
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # The drain (preStop, then uvicorn's graceful shutdown) fits in the grace period.
    assert api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 5 + 10
    assert _named("PodDisruptionBudget", "berth-api")["spec"]["minAvailable"] >= 1
    service = _named("Service", "berth-api")
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "berth-api"}


def test_two_scalers_share_the_lease() -> None:
    assert _named("Deployment", "berth-scaler")["spec"]["replicas"] == 2


def test_agents_reach_their_replicas_and_share_the_cache_path_with_docker() -> None:
    pod = _named("DaemonSet", "berth-agent")["spec"]["template"]["spec"]
    container = _container("DaemonSet", "berth-agent")
    env = _env(container)
    # Replicas run with the host's network (workers/runtimes/docker.py) on its loopback.
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["runtimeClassName"] == "nvidia"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert env["BERTH_DOCKER_HOST"] == f"unix://{mounts['docker']}"
    assert volumes["docker"] == "/var/run/docker.sock"
    # Docker, on the host, bind-mounts the cache by the agent's path: the same on both sides.
    assert env["BERTH_DATA_DIR"] == mounts["data"] == volumes["data"]
    assert env["BERTH_AGENT_ID"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_nats_has_three_nodes_for_berths_three_copies() -> None:
    values = yaml.safe_load((FOLDER / "nats-values.yaml").read_text())
    config = _named("ConfigMap", "berth")["data"]
    assert values["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert values["config"]["jetstream"]["enabled"] is True
    assert int(config["BERTH_NATS_REPLICAS"]) == values["config"]["cluster"]["replicas"]
    size = re.fullmatch(r"<< (\d+)MB >>", values["config"]["merge"]["max_payload"])
    assert size and int(size.group(1)) * 1024 * 1024 >= MAX_PAYLOAD
    assert values["config"]["merge"]["authorization"]["token"] == "<< $NATS_TOKEN >>"
