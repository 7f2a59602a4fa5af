"""istio/: every manifest validates against its schema (Istio CRDs,
Kubernetes); the audit pods are locked down, spread, and outlive the drain.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import istio_names
import jsonschema
import kubernetes_validate
import kustomize_subset
import pytest

from tests.istio_manifests import (
    ISTIO,
    ISTIO_GROUPS,
    ISTIO_SCHEMAS,
    KUBERNETES_VERSION,
    MANIFESTS,
    containers_by_name,
    injected_pod,
    rendered,
    shared,
    sidecar_settings,
    variant,
    yaml_docs,
)


@pytest.mark.parametrize(("name", "doc"), MANIFESTS, ids=[m[0] for m in MANIFESTS])
def test_manifest_validates_against_its_schema(name: str, doc: dict[str, Any]) -> None:
    if any(g in doc["apiVersion"] for g in ISTIO_GROUPS):
        schema = ISTIO_SCHEMAS[(doc["apiVersion"], doc["kind"])]
        jsonschema.validate(doc["spec"], schema["properties"]["spec"])
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("native", [False, True], ids=["sidecar", "native-sidecar"])
def test_injected_pod_validates_against_the_pod_schema(native: bool) -> None:
    kubernetes_validate.validate(injected_pod(native=native), KUBERNETES_VERSION, strict=True)


def test_schema_validation_catches_a_typo() -> None:
    # The checks above must be able to fail: a misspelt field and a bad enum.
    (doc,) = yaml_docs(ISTIO / "overlays" / "enforce" / "envoyfilter.yaml")
    schema = ISTIO_SCHEMAS[(doc["apiVersion"], "EnvoyFilter")]["properties"]["spec"]
    doc["spec"]["configPatches"][0]["patch"]["operation"] = "INSERT_BEFOR"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc["spec"], schema)
    sts = next(d for d in rendered(ISTIO / "overlays" / "enforce") if d["kind"] == "StatefulSet")
    sts["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFs"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, KUBERNETES_VERSION, strict=True)


def test_audit_server_pod_is_locked_down() -> None:
    docs = {d["kind"]: d for d in rendered(ISTIO / "overlays" / "enforce")}
    pod = docs["StatefulSet"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    env = {e["name"]: e for e in container["env"]}
    assert env["EXTPROC_AUDIT_LOG_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    drain = float(docs["ConfigMap"]["data"]["EXTPROC_AUDIT_DRAIN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] >= drain + 30  # room for the final publish
    assert container["readinessProbe"]["grpc"]["port"] == 50051
    ports = {p["name"]: p for p in docs["Service"]["spec"]["ports"]}
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert docs["PodDisruptionBudget"]["spec"]["minAvailable"] == 1


def _duration(value: str) -> float:
    assert value.endswith("s"), value
    return float(value[:-1])


def test_audit_pod_proxy_outlives_the_server_drain() -> None:
    """Every ext_proc and access-log stream reaches the server through its own
    pod's istio-proxy. A regular sidecar drains terminationDrainDuration (Istio's
    default 5 s, pkg/config/mesh/mesh.go) after SIGTERM and exits
    (pkg/envoy/agent.go), while the server drains --drain-timeout plus
    --access-log-grace: the proxy must stay at least that long. With a native
    sidecar the proxy is stopped only after the server exited, so the grace period
    must hold both, one after the other."""
    from extproc import config

    docs = {d["kind"]: d for d in rendered(ISTIO / "overlays" / "enforce")}
    template = docs["StatefulSet"]["spec"]["template"]
    proxy = json.loads(template["metadata"]["annotations"]["proxy.istio.io/config"])
    settings = docs["ConfigMap"]["data"]
    drain = float(settings["EXTPROC_AUDIT_DRAIN_TIMEOUT"])
    delay = float(settings["EXTPROC_AUDIT_DRAIN_DELAY"])
    grace = float(settings.get("EXTPROC_AUDIT_ACCESS_LOG_GRACE", config.ACCESS_LOG_GRACE))
    proxy_drain = _duration(proxy["terminationDrainDuration"])
    assert proxy_drain >= delay + drain + grace
    assert template["spec"]["terminationGracePeriodSeconds"] >= delay + drain + grace + proxy_drain
    # Sized for endpoint propagation (EndpointSlice, then istiod's push): seconds.
    assert 3 <= delay <= 10


def test_audit_pods_are_spread_and_alive_is_not_ready(tmp_path: Path) -> None:
    """HA: two audit pods never share a node while another node can take one
    (a lost node would fail every enforced request pinned to them), and spread
    over zones. Liveness asks the health service "liveness" (SERVING while the
    process runs), not readiness (NOT_SERVING when fenced, failing closed on a
    self-audit, or draining): those must not restart the pod."""
    from extproc.server.app import LIVENESS_SERVICE

    sts = shared("StatefulSet")
    spec = sts["spec"]["template"]["spec"]
    spread = {c["topologyKey"]: c for c in spec["topologySpreadConstraints"]}
    labels = sts["spec"]["selector"]["matchLabels"]
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["kubernetes.io/hostname"]["maxSkew"] == 1
    assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
    assert all(c["labelSelector"]["matchLabels"] == labels for c in spread.values())
    (container,) = spec["containers"]
    assert container["livenessProbe"]["grpc"] == {"port": 50051, "service": LIVENESS_SERVICE}
    assert "service" not in container["readinessProbe"]["grpc"]
    # storageClassName: a parameter, set by a component (none by default).
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert "storageClassName" not in claim["spec"]
    docs = kustomize_subset.build(variant(tmp_path, "enforce", "storage-class"))
    (sts_with,) = [d for d in docs if d["kind"] == "StatefulSet"]
    (claim,) = sts_with["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "gp3"
    assert claim["spec"]["resources"] == sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]


def test_destination_rule_ejects_a_failing_pod_but_never_all() -> None:
    (rule,) = yaml_docs(ISTIO / "base" / "destinationrule.yaml")
    outlier = rule["spec"]["trafficPolicy"]["outlierDetection"]
    assert outlier["consecutive5xxErrors"] > 0 and outlier["consecutiveGatewayErrors"] > 0
    assert 0 < outlier["maxEjectionPercent"] <= 50  # with two pods, one stays


def test_per_pod_metrics_port_is_not_the_opentelemetry_default() -> None:
    """The audit container shares the application's network namespace, where an
    OpenTelemetry SDK's Prometheus exporter listens on 9464 by default."""
    audit = containers_by_name(injected_pod(native=False))["extproc-audit"]
    (port,) = audit["ports"]
    listen = sidecar_settings()["EXTPROC_AUDIT_METRICS_LISTEN"]
    assert port["containerPort"] == int(listen.rpartition(":")[2]) != 9464


def test_destination_rule_lifts_the_default_circuit_breaker() -> None:
    (rule,) = yaml_docs(ISTIO / "base" / "destinationrule.yaml")
    http = rule["spec"]["trafficPolicy"]["connectionPool"]["http"]
    # Envoy's default of 1024 makes observe mode drop at ~200 req/s (DESIGN.md).
    assert http["http2MaxRequests"] > 1024 and http["http1MaxPendingRequests"] > 1024
    assert rule["spec"]["host"] == istio_names.SERVICE_HOST
