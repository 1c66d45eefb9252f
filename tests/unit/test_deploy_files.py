"""The deployment files, checked offline the way such files are checked without a cluster or a
Docker engine: the Kubernetes manifests against the API's schemas (kubernetes-validate), the
compose file against the Compose Specification's schema (vendored in tests/schemas), the
Dockerfile by hadolint; and all of them against streamer itself: every setting they set exists,
ports, names, labels and topics agree."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from streamer.settings import Settings, to_env
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.30.0"
#: every STREAMER_* variable streamer reads (passwords included: to_env leaves out the unset ones)
SETTINGS = set(to_env(Settings())) | {
    "STREAMER_REDIS__PASSWORD",
    "STREAMER_REDIS__USERNAME",
    "STREAMER_KAFKA__SASL_PASSWORD",
    "STREAMER_KAFKA__SASL_USERNAME",
    "STREAMER_KAFKA__SASL_MECHANISM",
    "STREAMER_METRICS__ADVERTISE_HOST",
    "STREAMER_MODEL_PATH",
    "STREAMER_FUSED_CELL_FROM",
}
METRICS_PORT = Settings().metrics.port


def manifests(folder: Path = K8S) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> resource, for the resources the folder's kustomization lists."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    out = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((folder / name).read_text()):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def test_every_manifest_is_valid_kubernetes() -> None:
    docs = manifests()
    assert {kind for kind, _ in docs} == {
        "ConfigMap",
        "Secret",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ScaledObject",
    }
    for (kind, _), doc in docs.items():
        if kind == "ScaledObject":
            continue  # a KEDA resource: checked below
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    for patch in sorted((K8S / "gpu").glob("*-gpu.yaml")):
        # A strategic-merge patch is a partial resource: valid, if not complete.
        doc = yaml.safe_load(patch.read_text())
        assert doc["metadata"]["name"] in {name for _, name in docs}, patch.name


def test_the_manifests_agree_with_each_other_and_with_streamer() -> None:
    docs = manifests()
    config = docs[("ConfigMap", "streamer-config")]["data"]
    secret = docs[("Secret", "streamer-secrets")]["stringData"]
    deployment = docs[("Deployment", "streamer-worker")]
    pod = deployment["spec"]["template"]
    (worker,) = pod["spec"]["containers"]
    labels = pod["metadata"]["labels"]

    assert set(config) | set(secret) <= SETTINGS, (set(config) | set(secret)) - SETTINGS
    assert {e["name"] for e in worker["env"]} <= SETTINGS
    # The values parse as streamer's settings do (a typo in a choice or a number fails here).
    fields: dict[str, Any] = {}
    for key, value in config.items():
        *groups, last = key.removeprefix("STREAMER_").lower().split("__")
        target = fields
        for g in groups:
            target = target.setdefault(g, {})
        target[last] = value
    Settings.model_validate(fields)

    # Selectors pick the pods; the probes, scraping and service use the metrics port.
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert (
        docs[("PodDisruptionBudget", "streamer-worker")]["spec"]["selector"]["matchLabels"]
        == labels
    )
    assert docs[("Service", "streamer-worker-metrics")]["spec"]["selector"] == labels
    port = int(config["STREAMER_METRICS__PORT"])
    assert worker["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert worker[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, probe
    assert pod["spec"]["securityContext"]["runAsNonRoot"]
    # A worker stopping finishes its batch in flight: more than the default 30 s to do it.
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 60

    # KEDA scales the Deployment on the workers' own group and topic, up to the partitions.
    scaled = docs[("ScaledObject", "streamer-worker")]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == config["STREAMER_APP_ID"]
    assert meta["topic"] == config["STREAMER_TOPICS__EVENTS"]
    assert meta["bootstrapServers"] == config["STREAMER_KAFKA__BOOTSTRAP_SERVERS"]
    assert int(meta["lagThreshold"]) > 0
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    assert scaled["spec"]["maxReplicaCount"] <= int(config["STREAMER_TOPICS__PARTITIONS"])


def test_the_gpu_overlay_asks_for_a_gpu_and_the_cuda_image() -> None:
    kustomization = yaml.safe_load((K8S / "gpu" / "kustomization.yaml").read_text())
    assert kustomization["resources"] == [".."]
    patches = {p["path"] for p in kustomization["patches"]}
    assert patches == {p.name for p in (K8S / "gpu").glob("*-gpu.yaml")}
    deployment = yaml.safe_load((K8S / "gpu" / "deployment-gpu.yaml").read_text())
    (worker,) = deployment["spec"]["template"]["spec"]["containers"]
    assert worker["image"].endswith(":cuda")
    for part in ("requests", "limits"):
        assert worker["resources"][part]["nvidia.com/gpu"] == "1"
    config = yaml.safe_load((K8S / "gpu" / "configmap-gpu.yaml").read_text())
    assert config["data"] == {"STREAMER_DEVICE": "cuda"}
    merged = {**manifests()[("ConfigMap", "streamer-config")]["data"], **config["data"]}
    assert Settings.model_validate({"device": merged["STREAMER_DEVICE"]}).device == "cuda"


def test_the_compose_file_is_valid_and_complete() -> None:
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    jsonschema.validate(compose, schema)
    services = compose["services"]
    assert set(services) == {"kafka", "redis", "worker", "prometheus", "grafana"}
    # KRaft: no ZooKeeper, the broker is its own controller.
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    worker = services["worker"]
    assert set(worker["environment"]) <= SETTINGS
    assert worker["environment"]["STREAMER_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert worker["environment"]["STREAMER_REDIS__URL"].startswith("redis://redis:")
    assert (DEPLOY / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()
    for dep in ("kafka", "redis"):
        assert worker["depends_on"][dep]["condition"] == "service_healthy"
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            assert (DEPLOY / source).exists(), (name, source)
    # Prometheus finds every worker replica, on the port the workers serve.
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "compose.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["port"] == METRICS_PORT
    assert int(worker["environment"]["STREAMER_METRICS__PORT"]) == METRICS_PORT


def test_the_dockerfile_passes_hadolint_and_runs_a_worker_unprivileged() -> None:
    dockerfile = DEPLOY / "docker" / "Dockerfile"
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    r = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    text = dockerfile.read_text()
    assert re.search(r"^USER 10001", text, re.M), "the worker must not run as root"
    assert f"EXPOSE {METRICS_PORT}" in text
    assert f"127.0.0.1:{METRICS_PORT}/metrics" in text  # the health check asks the worker
    assert 'ENTRYPOINT ["streamer"]' in text
    # The image copies what pip needs to install streamer; .dockerignore lets exactly that in.
    copied = set(re.findall(r"^COPY (?!--from)(.+) /src/", text, re.M))
    sources = {s for line in copied for s in line.split()}
    assert sources == {"pyproject.toml", "README.md", "streamer", "workers"}
    allowed = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    assert set(allowed) == sources


@pytest.mark.parametrize("bad", ["replicas: two", "maxUnavailable: []"])
def test_the_schema_check_can_fail(bad: str) -> None:
    """The validation above is not vacuous: a broken Deployment is refused."""
    doc = yaml.safe_load((K8S / "deployment.yaml").read_text())
    key, value = bad.split(": ")
    target = doc["spec"] if key == "replicas" else doc["spec"]["strategy"]["rollingUpdate"]
    target[key] = yaml.safe_load(value)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
