"""Kubernetes manifests: each overlay renders with kustomize and validates against the Kubernetes schema;
every service is probed, bounded, unprivileged, covered by a disruption budget and given only its secrets."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deployment.repository import ROOT, SECRETS, SERVICES, secrets_read_by

OVERLAYS = sorted(path.name for path in (ROOT / "deploy" / "k8s" / "overlays").iterdir())
#: The oldest Kubernetes release we support and the newest the validator knows.
VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]
AUTOSCALED = {"inference", "screening"}


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to render the overlays"
    result = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def resource(overlay: str, kind: str, name: str) -> dict[str, Any]:
    [found] = [r for r in rendered(overlay) if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def container(overlay: str, service: str) -> dict[str, Any]:
    [found] = resource(overlay, "Deployment", f"clinomic-{service}")["spec"]["template"]["spec"]["containers"]
    return found


def each() -> list[tuple[str, str]]:
    return [(overlay, service) for overlay in OVERLAYS for service in SERVICES]


def test_there_is_a_development_and_a_production_overlay() -> None:
    assert OVERLAYS == ["development", "production"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_conforms_to_the_kubernetes_schema(overlay: str, version: str) -> None:
    for item in rendered(overlay):
        kubernetes_validate.validate(item, version, strict=True)


def test_kubernetes_schema_rejects_an_unknown_field() -> None:
    deployment = dict(resource("production", "Deployment", "clinomic-gateway"), replica=3)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_stores_no_secret(overlay: str) -> None:
    assert [r["metadata"]["name"] for r in rendered(overlay) if r["kind"] == "Secret"] == []


@pytest.mark.parametrize(("overlay", "service"), each())
def test_service_is_reachable_on_its_port(overlay: str, service: str) -> None:
    spec = resource(overlay, "Service", f"clinomic-{service}")["spec"]
    assert spec["ports"] == [{"name": "http", "port": SERVICES[service], "targetPort": "http"}]
    assert container(overlay, service)["ports"] == [{"name": "http", "containerPort": SERVICES[service]}]


@pytest.mark.parametrize(("overlay", "service"), each())
def test_service_is_probed_for_start_liveness_and_readiness(overlay: str, service: str) -> None:
    probes = container(overlay, service)
    assert probes["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert probes["startupProbe"]["httpGet"]["path"] == "/health/live"


@pytest.mark.parametrize(("overlay", "service"), each())
def test_service_requests_and_limits_cpu_and_memory(overlay: str, service: str) -> None:
    resources = container(overlay, service)["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


@pytest.mark.parametrize(("overlay", "service"), each())
def test_service_runs_unprivileged_on_a_read_only_root(overlay: str, service: str) -> None:
    pod = resource(overlay, "Deployment", f"clinomic-{service}")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container(overlay, service)["securityContext"]
    assert security == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]}}


@pytest.mark.parametrize(("overlay", "service"), each())
def test_service_has_a_disruption_budget_for_its_pods(overlay: str, service: str) -> None:
    budget = resource(overlay, "PodDisruptionBudget", f"clinomic-{service}")["spec"]
    deployment = resource(overlay, "Deployment", f"clinomic-{service}")["spec"]
    assert budget["selector"] == deployment["selector"]


@pytest.mark.parametrize(("overlay", "service"), each())
def test_only_inference_and_screening_scale_horizontally_on_cpu(overlay: str, service: str) -> None:
    scalers = [r for r in rendered(overlay) if r["kind"] == "HorizontalPodAutoscaler"
               and r["spec"]["scaleTargetRef"]["name"] == f"clinomic-{service}"]
    assert len(scalers) == (service in AUTOSCALED)
    for scaler in scalers:
        assert scaler["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        assert scaler["spec"]["minReplicas"] <= scaler["spec"]["maxReplicas"]


@pytest.mark.parametrize(("overlay", "service"), each())
def test_service_receives_exactly_its_secrets_from_secret_objects(overlay: str, service: str) -> None:
    env = container(overlay, service)["env"]
    from_secrets = {e["name"] for e in env if "secretKeyRef" in e.get("valueFrom", {})}
    plain = {e["name"] for e in env if "value" in e}
    assert from_secrets == secrets_read_by(service) - {"DATABASE_URL"}
    assert plain & SECRETS == set()


@pytest.mark.parametrize(("overlay", "replication"), [("development", "1"), ("production", "3")])
def test_overlay_sets_the_topic_replication_factor(overlay: str, replication: str) -> None:
    config = resource(overlay, "ConfigMap", "clinomic-config")["data"]
    assert config["KAFKA_TOPIC_REPLICATION_FACTOR"] == replication


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_connects_to_kafka_and_postgresql_over_verified_tls(overlay: str) -> None:
    config = resource(overlay, "ConfigMap", "clinomic-config")["data"]
    postgres = resource(overlay, "ConfigMap", "clinomic-postgres")["data"]
    assert config["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and config["KAFKA_SSL_CAFILE"]
    assert postgres["PGSSLMODE"] == "verify-full" and postgres["PGSSLROOTCERT"]
