"""istio/: every manifest parses, every overlay renders (as kustomize would)
and the generated files are fresh; the platform variants (kustomize
Components) render, validate and open exactly their endpoint.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kustomize_subset
import pytest
import render_istio
import yaml

from tests.istio_manifests import (
    ISTIO,
    ISTIO_GROUPS,
    ISTIO_SCHEMAS,
    KUBERNETES_VERSION,
    OVERLAYS,
    ROOT,
    SHARED_OVERLAYS,
    audit_telemetry,
    audit_template,
    rendered,
    variant,
    yaml_docs,
)

YAML_FILES = sorted(ISTIO.rglob("*.yaml"))


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
    docs = rendered(overlay)
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

    assert keyed(_docs_text(result.stdout)) == keyed(rendered(overlay))


def _docs_text(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_observe_overlay_switches_both_sides() -> None:
    # Observe is Envoy's access-log service through Istio's supported path (a
    # Telemetry naming the mesh's provider): no filter holds a request.
    docs = rendered(ISTIO / "overlays" / "observe")
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert config_map["data"]["EXTPROC_AUDIT_MODE"] == "observe"
    filters = [d for d in docs if d["kind"] == "EnvoyFilter"]
    assert [f["metadata"]["name"] for f in filters] == ["extproc-audit-affinity"]
    assert "HTTP_FILTER" not in {p["applyTo"] for f in filters for p in f["spec"]["configPatches"]}
    tel = audit_telemetry(docs)
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
# Every component on every shared-topology overlay (the gateway overlay is the
# gateway component already), and all of them at once: the combinations the docs name.
VARIANTS = [
    (o, c) for o in SHARED_OVERLAYS for c in COMPONENT_NAMES if (o, c) != ("gateway", "gateway")
] + [("enforce", "+".join(COMPONENT_NAMES))]


def test_components_exist() -> None:
    assert COMPONENT_NAMES == [
        "aws-web-identity", "eks-pod-identity", "gateway", "gateway-api", "gke-cloud-dns",
        "native-sidecar", "nodelocal-dns", "storage-class",
    ]  # fmt: skip
    for name in COMPONENT_NAMES:
        (spec,) = yaml_docs(COMPONENTS / name / "kustomization.yaml")
        assert spec["kind"] == "Component", name


@pytest.mark.parametrize(("overlay", "components"), VARIANTS, ids=[f"{o}-{c}" for o, c in VARIANTS])
def test_platform_variant_renders_and_validates(
    tmp_path: Path, overlay: str, components: str
) -> None:
    """Each platform component on each shared-topology overlay: it renders (and as
    kubectl kustomize renders it, where kubectl is installed), every document
    validates against its schema, and the overlay's own resources are unchanged
    but for what the component adds."""
    docs = kustomize_subset.build(variant(tmp_path, overlay, components))
    plain = rendered(ISTIO / "overlays" / overlay)
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
    docs = kustomize_subset.build(variant(tmp_path, "enforce", name))
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
    assert base == next(d for d in rendered(ISTIO / "overlays" / "enforce")
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
    assert "sidecar.istio.io/nativeSidecar" in audit_template()
