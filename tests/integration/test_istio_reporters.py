"""istio/: who may report. The shared topology (the server behind its own
sidecar) trusts only its own proxy; the per-pod sidecar topology shares its
socket and signing key with the audit container only (injection template,
admission policy).
"""

from __future__ import annotations

import copy
import json
import signal
import stat
from pathlib import Path
from typing import Any

import istio_names
import pytest
import render_istio

from extproc.errors import ConfigError
from extproc.keys import check_key_mode
from tests import istio_injection, topology
from tests.conftest import read_entries, stack_factory
from tests.istio_manifests import (
    ISTIO,
    ROOT,
    audit_template,
    config_patch,
    containers_by_name,
    envoy_filter,
    example_app_pod,
    injected_pod,
    rendered,
    shared,
    sidecar_settings,
)


def _shared_settings() -> dict[str, str]:
    return shared("ConfigMap")["data"]  # type: ignore[no-any-return]


def _server_identity() -> str:
    pod = shared("StatefulSet")["spec"]["template"]["spec"]
    namespace = shared("StatefulSet")["metadata"]["namespace"]
    return f"spiffe://cluster.local/ns/{namespace}/sa/{pod['serviceAccountName']}"


def test_shared_server_trusts_only_its_own_proxy() -> None:
    settings = _shared_settings()
    # istio-proxy forwards to the pod IP (ORIGINAL_DST), from 127.0.0.6 / ::6.
    assert settings["EXTPROC_AUDIT_LISTEN"] == f"0.0.0.0:{istio_names.GRPC_PORT}"
    assert settings["EXTPROC_AUDIT_TRUST_XFCC_FROM"].split(",") == ["127.0.0.6/32", "::6/128"]
    assert settings["EXTPROC_AUDIT_XFCC_BY"] == _server_identity()
    assert settings["EXTPROC_AUDIT_REPORTER_IS_DESTINATION"] in ("record", "refuse")
    annotations = shared("StatefulSet")["spec"]["template"]["metadata"]["annotations"]
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
    policy = shared("AuthorizationPolicy")
    assert policy["apiVersion"] == "security.istio.io/v1" and policy["spec"]["action"] == "ALLOW"
    assert policy["spec"]["selector"] == shared("StatefulSet")["spec"]["selector"]
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
    (reporters, _) = shared("AuthorizationPolicy")["spec"]["rules"]
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
    policy = shared("NetworkPolicy")
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
    spec = shared("PeerAuthentication")["spec"]
    assert spec["mtls"]["mode"] == "STRICT"
    assert str(istio_names.GRPC_PORT) not in spec.get("portLevelMtls", {})
    assert spec["selector"] == shared("StatefulSet")["spec"]["selector"]


def test_kind_e2e_opts_its_namespace_in_as_a_reporter() -> None:
    script = (ROOT / "scripts" / "kind-e2e.sh").read_text()
    assert "extproc-audit.io/reporter=true" in script
    (reporters, _) = shared("AuthorizationPolicy")["spec"]["rules"]
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


def _mounts(container: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}


@pytest.mark.parametrize("native", [False, True], ids=["sidecar", "native-sidecar"])
def test_socket_is_shared_by_the_proxy_and_the_audit_container_only(native: bool) -> None:
    pod = injected_pod(native=native)
    containers = containers_by_name(pod)
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
    settings = sidecar_settings()
    assert settings["EXTPROC_AUDIT_LISTEN"] == f"unix:{render_istio.SOCKET_PATH}"
    assert settings["EXTPROC_AUDIT_ALLOW_REPORTER"] == f"unix:{render_istio.SOCKET_PATH}"
    cluster_patch = config_patch(envoy_filter("sidecar"), "CLUSTER")
    (endpoints,) = cluster_patch["patch"]["value"]["load_assignment"]["endpoints"]
    (lb_endpoint,) = endpoints["lb_endpoints"]
    assert lb_endpoint["endpoint"]["address"] == {"pipe": {"path": render_istio.SOCKET_PATH}}
    # The access logger goes to the same cluster: a Telemetry provider can name
    # only a Service (docs/ISTIO.md, "Per-pod sidecar").
    merged = config_patch(envoy_filter("sidecar"), "NETWORK_FILTER")["patch"]["value"]
    (logger,) = merged["typed_config"]["access_log"]
    grpc = logger["typed_config"]["common_config"]["grpc_service"]["envoy_grpc"]
    assert grpc == {"cluster_name": render_istio.LOCAL_CLUSTER}
    audit = containers_by_name(injected_pod(native=False))["extproc-audit"]
    assert audit["readinessProbe"]["exec"]["command"] == [
        "extproc-audit", "health", "--addr", f"unix:{render_istio.SOCKET_PATH}",
    ]  # fmt: skip
    assert "tcpSocket" not in audit["readinessProbe"] and "grpc" not in audit["readinessProbe"]


def test_sidecar_log_id_is_namespace_dot_pod() -> None:
    env = containers_by_name(injected_pod(native=False))["extproc-audit"]["env"]
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
    annotations = example_app_pod()["metadata"]["annotations"]
    assert "traffic.sidecar.istio.io/excludeOutboundPorts" not in annotations
    assert annotations["inject.istio.io/templates"] == "sidecar,audit"
    # EKS: the pod's AWS credentials go to the audit container only.
    apps = {c["name"] for c in example_app_pod()["spec"]["containers"]}
    assert set(annotations["eks.amazonaws.com/skip-containers"].split(",")) == apps


def test_example_app_grace_period_covers_the_audit_containers_shutdown() -> None:
    """The per-pod audit container drains like the shared server (delay, then
    drain and final publish) inside the application pod's grace period."""
    from extproc import config

    settings = sidecar_settings()
    delay = float(settings["EXTPROC_AUDIT_DRAIN_DELAY"])
    drain = float(settings["EXTPROC_AUDIT_DRAIN_TIMEOUT"])
    grace = float(settings.get("EXTPROC_AUDIT_ACCESS_LOG_GRACE", config.ACCESS_LOG_GRACE))
    assert example_app_pod()["spec"]["terminationGracePeriodSeconds"] > delay + drain + grace


def test_example_app_has_a_service_account_of_its_own() -> None:
    # The sidecar writer role is bound to the pod's service account, which every
    # container of the pod shares: never the namespace's `default` account.
    docs = rendered(ISTIO / "overlays" / "sidecar")
    pod = example_app_pod()
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
    template = audit_template()
    if (
        release not in SUPPORTED_TAGS
        and "NativeSidecars" not in istio_injection.RELEASES[release]["fields"]
    ):
        with pytest.raises(istio_injection.UnsupportedTemplate, match="NativeSidecars"):
            istio_injection.render(template, native=native, release=release)
        return
    pod = istio_injection.inject(example_app_pod(), template, native=native, release=release)
    proxy = containers_by_name(pod)["istio-proxy"]
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
    app = copy.deepcopy(example_app_pod())
    if security is not None:
        app["spec"]["securityContext"] = security
    pod = istio_injection.inject(app, audit_template(), native=False, release=release)
    expected_group = (security or {}).get("fsGroup", istio_injection.ISTIO_PROXY_ID)
    pod_security = pod["spec"]["securityContext"]
    assert pod_security["fsGroup"] == expected_group
    added = ("fsGroup", "fsGroupChangePolicy")
    kept = {k: v for k, v in pod_security.items() if k not in added}
    assert kept == {k: v for k, v in (security or {}).items() if k != "fsGroup"}
    if security is None or "fsGroup" not in security:
        assert pod_security["fsGroupChangePolicy"] == "OnRootMismatch"
    containers = containers_by_name(pod)
    audit = containers["extproc-audit"]
    assert audit["securityContext"]["runAsUser"] == AUDIT_UID
    key = Path(sidecar_settings()["EXTPROC_AUDIT_KEY"])
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
    docs = rendered(ISTIO / "overlays" / "sidecar")
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
    assert _admission_refusals(injected_pod(native=native)) == []
    # Pods without the audit container are none of its business.
    assert _admission_refusals(example_app_pod()) == []
    assert _admission_refusals({"spec": {"containers": [{"name": "a", "image": "b"}]}}) == []


@pytest.mark.parametrize("attack", ADMISSION_ATTACKS, ids=ADMISSION_ATTACKS.keys())
def test_admission_policy_rejects_pods_that_reach_the_socket_or_key(attack: str) -> None:
    pod = injected_pod(native=False)
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
        for d in rendered(ISTIO / "overlays" / "sidecar")
        if d["kind"] == "ValidatingAdmissionPolicyBinding"
    )
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert "Deny" in binding["spec"]["validationActions"]
    assert "matchResources" not in binding["spec"]  # every namespace
    # The names it guards are the template's.
    pod = injected_pod(native=False)
    injected = {v["name"] for v in pod["spec"]["volumes"]} - {"istio-envoy", "istio-data"}
    guarded = next(v for v in policy["spec"]["variables"] if v["name"] == "guarded")["expression"]
    assert {n.strip(" '") for n in guarded.strip("[]").split(",")} == injected
