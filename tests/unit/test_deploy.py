"""The deployment files: Kubernetes manifests validated against the API schemas
(kubernetes-validate), KEDA's ScaledObject and the compose file checked structurally, and
every WARMSTART_* variable they set checked against the settings. Nothing is deployed here."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from warmstart.infra.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "deploy" / "k8s"


def _docs() -> dict[str, dict[str, Any]]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


DOCS = _docs()
CORE = {name: doc for name, doc in DOCS.items() if not doc["apiVersion"].startswith("keda.sh/")}


@pytest.mark.parametrize("name", sorted(CORE))
def test_core_manifests_validate_against_the_kubernetes_schema(name: str) -> None:
    kubernetes_validate.validate(CORE[name], latest_version(), strict=True)


def test_the_validator_refuses_a_broken_deployment() -> None:
    broken = copy.deepcopy(DOCS["Deployment/warmstart-worker"])
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, latest_version(), strict=True)
    unknown = copy.deepcopy(DOCS["Deployment/warmstart-worker"])
    unknown["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, latest_version(), strict=True)


def _env_names(mapping: dict[str, Any]) -> set[str]:
    return {k.removeprefix("WARMSTART_").lower() for k in mapping if k.startswith("WARMSTART_")}


def test_every_setting_the_files_set_exists_and_the_configmap_loads() -> None:
    config = DOCS["ConfigMap/warmstart-config"]["data"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    names = _env_names(config) | _env_names(compose["x-warmstart-env"])
    assert names <= set(Settings.model_fields), names - set(Settings.model_fields)
    settings = load_settings(**{k.removeprefix("WARMSTART_").lower(): v for k, v in config.items() if v != ""})
    assert settings.metrics_port and settings.metrics_host == "0.0.0.0"


def _container(name: str) -> dict[str, Any]:
    return DOCS[f"Deployment/{name}"]["spec"]["template"]["spec"]["containers"][0]


def test_probes_drain_and_resources_are_wired_to_what_the_processes_serve() -> None:
    port = int(DOCS["ConfigMap/warmstart-config"]["data"]["WARMSTART_METRICS_PORT"])
    for deployment in ("warmstart-worker", "warmstart-beat"):
        container = _container(deployment)
        assert {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"] == port
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
        annotations = DOCS[f"Deployment/{deployment}"]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)
    assert DOCS["Deployment/warmstart-beat"]["spec"]["replicas"] == 2
    worker = _container("warmstart-worker")
    assert worker["args"][0] == "worker" and _container("warmstart-beat")["args"][0] == "beat"
    drain = worker["lifecycle"]["preStop"]["exec"]["command"]
    assert drain[:2] == ["warmstart", "drain"]
    from warmstart.cli import main

    assert "drain" in main.commands and "--timeout-s" in [o for p in main.commands["drain"].params for o in p.opts]
    timeout_s = int(drain[drain.index("--timeout-s") + 1])
    grace_s = DOCS["Deployment/warmstart-worker"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace_s > timeout_s  # the drain ends before the kubelet's SIGKILL


def test_the_scaled_object_follows_desired_workers_with_a_queue_floor() -> None:
    so = DOCS["ScaledObject/warmstart-worker"]
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    assert set(spec) <= {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
                         "cooldownPeriod", "idleReplicaCount", "fallback", "advanced", "triggers"}  # fmt: skip
    target = spec["scaleTargetRef"]["name"]
    assert f"Deployment/{target}" in DOCS and _container(target)["args"][0] == "worker"
    config = DOCS["ConfigMap/warmstart-config"]["data"]
    assert spec["minReplicaCount"] == int(config["WARMSTART_SCALE_MIN_WORKERS"])
    assert spec["maxReplicaCount"] == int(config["WARMSTART_SCALE_MAX_WORKERS"])
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    triggers = {t["type"]: t for t in spec["triggers"]}
    assert set(triggers) == {"prometheus", "redis"}
    for trigger in spec["triggers"]:
        assert all(isinstance(v, str) for v in trigger["metadata"].values())  # KEDA wants strings
    prom = triggers["prometheus"]["metadata"]
    assert {"serverAddress", "query", "threshold"} <= set(prom)
    assert float(prom["threshold"]) > 0
    metric = re.search(r"warmstart_[a-z_]+", prom["query"]).group(0)
    from warmstart.scheduler.observe import BeatMetrics

    assert metric in {m.name for m in BeatMetrics("b").registry.collect()}
    redis = triggers["redis"]["metadata"]
    assert redis["listName"].startswith("infer.") and int(redis["listLength"]) > 0 and redis["address"]


def test_the_compose_file_runs_redis_minio_a_worker_a_beat_and_prometheus() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "minio", "worker", "beat", "prometheus"} <= set(services)
    assert services["worker"]["command"][0] == "worker" and services["beat"]["command"][0] == "beat"
    env = compose["x-warmstart-env"]
    assert env["WARMSTART_REDIS_URL"].startswith("redis://redis:")
    assert env["WARMSTART_S3_ENDPOINT_URL"].startswith("http://minio:")
    mount = services["prometheus"]["volumes"][0].split(":")[0]
    scrape = yaml.safe_load((ROOT / mount).read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"worker:{env['WARMSTART_METRICS_PORT']}", f"beat:{env['WARMSTART_METRICS_PORT']}"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+-slim$", dockerfile, re.M)
    assert "FROM ${BASE_IMAGE}" in dockerfile and "-c constraints.txt" in dockerfile
