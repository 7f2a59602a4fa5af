"""istio/: every EnvoyFilter patch yields a config the real Envoy accepts,
for the Istio releases checked; the mesh's extension provider and the
Telemetry resources name it where the filters are.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import istio_names
import jsonschema
import pytest
import render_istio

from extproc.envoyconf import (
    ACCESS_LOG_NAME,
    ACCESS_LOG_REQUEST_HEADERS,
    ACCESS_LOG_RESPONSE_HEADERS,
    EXT_PROC_FILTER,
    Endpoint,
    to_yaml,
)
from tests import envoyfilter, topology
from tests.istio_manifests import (
    ISTIO,
    ISTIO_SCHEMAS,
    MANIFESTS,
    SELF,
    SHARED_OVERLAYS,
    affinity_filter,
    audit_telemetry,
    config_patch,
    envoy_filter,
    istio_config,
    rendered,
    telemetry_contexts,
    yaml_docs,
)

# --- EnvoyFilter patches and istiod's access logger on an Istio-shaped Envoy config ----

# Overlays with an ext_proc EnvoyFilter (observe has none: only a Telemetry).
ENFORCING = ["enforce", "receipts", "gateway", "sidecar"]


def _ext_proc(overlay: str) -> dict[str, Any]:
    """The typed_config of an overlay's ext_proc filter."""
    return config_patch(envoy_filter(overlay), "HTTP_FILTER")["patch"]["value"]["typed_config"]  # type: ignore[no-any-return]


def _hcm(config: dict[str, Any], listener: int = 0) -> dict[str, Any]:
    chain = config["static_resources"]["listeners"][listener]["filter_chains"][0]
    return chain["filters"][0]["typed_config"]  # type: ignore[no-any-return]


def _http_filters(config: dict[str, Any]) -> list[str]:
    return [f["name"] for f in _hcm(config)["http_filters"]]


PORTS = {"listen": 15006, "app": 8000, "admin": 15000, "grpc": 50051}


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
    config = istio_config(filters, ports, telemetry=telemetry_contexts(overlay))
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
    docs = [affinity_filter(), *(envoy_filter(o) for o in ENFORCING)]
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
    filters = [affinity_filter(), *(envoy_filter(o) for o in [*ENFORCING, "gateway-api"])]
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
    doc = envoy_filter("enforce")
    doc["spec"]["configPatches"][0]["patch"]["operation"] = "MERGE"
    config, contexts = topology.istio_like_bootstrap(
        context="SIDECAR_INBOUND", listen=Endpoint("127.0.0.1", 1), app=Endpoint("127.0.0.1", 2),
        admin=Endpoint("127.0.0.1", 3), outbound_clusters={},
    )  # fmt: skip
    with pytest.raises(envoyfilter.UnsupportedPatch):
        envoyfilter.apply(config, contexts, doc)
    affinity = affinity_filter()
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
    receipts = rendered(ISTIO / "overlays" / "receipts")
    (settings,) = [d["data"] for d in receipts if d["kind"] == "ConfigMap"]
    assert settings["EXTPROC_AUDIT_RECEIPTS"] == "true"
    assert settings["EXTPROC_AUDIT_MODE"] == "enforce"
    # The caller's SPIFFE id and the identity the request was served as are
    # requested from Envoy for every entry (`source.principal` is not an Envoy attribute).
    attributes = _ext_proc("enforce")["request_attributes"]
    assert "connection.uri_san_peer_certificate" in attributes
    assert "connection.uri_san_local_certificate" in attributes
    assert "source.principal" not in attributes
    assert envoy_filter("gateway")["spec"]["workloadSelector"]["labels"] == {
        "istio": "ingressgateway"
    }


def test_gateway_filter_keeps_the_audit_cluster_on_a_filtered_gateway() -> None:
    """With PILOT_FILTER_GATEWAY_CLUSTER_CONFIG a gateway gets only the clusters it
    references; istiod adds the Services an EnvoyFilter names in this annotation
    (Istio 1.26+, pilot/pkg/model/envoyfilter.go: `namespace/host` is namespaced)
    and the mesh's extension providers (1.14+, push_context.go
    extraServicesForProxy): both name the audit Service's cluster."""
    annotations = envoy_filter("gateway")["metadata"]["annotations"]
    namespace, host = annotations["envoyfilter.istio.io/referenced-services"].split("/")
    cluster = _ext_proc("gateway")["grpc_service"]["envoy_grpc"]["cluster_name"]
    assert cluster == f"outbound|{istio_names.GRPC_PORT}||{host}"
    service = next(d for d in rendered(ISTIO / "overlays" / "gateway") if d["kind"] == "Service")
    assert (namespace, host.split(".")[0]) == (
        service["metadata"]["namespace"],
        service["metadata"]["name"],
    )
    (provider,) = _mesh_files()["helm"]["extensionProviders"]
    assert provider["envoyHttpAls"]["service"] == host


# --- the mesh's extension provider and the Telemetry resources -------------------------


def _mesh_files() -> dict[str, dict[str, Any]]:
    (operator,) = yaml_docs(ISTIO / "mesh" / "istio-operator.yaml")
    (values,) = yaml_docs(ISTIO / "mesh" / "istiod-values.yaml")
    return {"istioctl": operator["spec"]["meshConfig"], "helm": values["meshConfig"]}


def test_mesh_config_provider_is_rendered_from_envoyconf() -> None:
    # The same meshConfig for istioctl and for the istiod Helm chart, and the
    # provider's headers are envoyconf's lists (rendered: they cannot drift).
    meshes = _mesh_files()
    assert meshes["istioctl"] == meshes["helm"]
    (operator,) = yaml_docs(ISTIO / "mesh" / "istio-operator.yaml")
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
    (service,) = [d for d in rendered(ISTIO / "overlays" / "enforce") if d["kind"] == "Service"]
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
        o: audit_telemetry(rendered(ISTIO / "overlays" / o))
        for o in ("enforce", "gateway", "observe", "waypoint")
    }
    # Enforce: the outcome from exactly the pods whose requests the filter holds
    # (a selector applies in its own namespace only: telemetry.go).
    enforce = by_overlay["enforce"]
    selector = envoy_filter("enforce")["spec"]["workloadSelector"]["labels"]
    assert enforce["spec"]["selector"]["matchLabels"] == selector
    assert enforce["spec"]["accessLogging"][0]["match"] == {"mode": "SERVER"}
    assert enforce["metadata"]["namespace"] == render_istio.APP_NAMESPACE
    # Gateway: in the gateway's namespace; no mode (a gateway's listeners are CLIENT).
    gateway = by_overlay["gateway"]
    assert gateway["metadata"]["namespace"] == render_istio.ROOT_NAMESPACE
    gateway_selector = envoy_filter("gateway")["spec"]["workloadSelector"]["labels"]
    assert gateway["spec"]["selector"]["matchLabels"] == gateway_selector
    assert "match" not in gateway["spec"]["accessLogging"][0]
    # Ambient: the waypoint, by targetRefs, in its own namespace.
    waypoint = by_overlay["waypoint"]
    assert waypoint["spec"]["targetRefs"] == [render_istio.WAYPOINT_TARGET]
    assert "selector" not in waypoint["spec"]
    assert waypoint["metadata"]["namespace"] == render_istio.APP_NAMESPACE
    (mesh_wide,) = yaml_docs(ISTIO / "telemetry" / "mesh-wide.yaml")
    assert mesh_wide["metadata"]["namespace"] == render_istio.ROOT_NAMESPACE
    assert "selector" not in mesh_wide["spec"]


def test_audit_namespace_does_not_audit_itself() -> None:
    """The audit pods' own sidecars must not report their streams to the audit
    Service (a mesh-wide Telemetry would make them): a namespace-wide Telemetry
    there turns the provider off, and no ext_proc EnvoyFilter can select them."""
    for overlay in SHARED_OVERLAYS:
        docs = rendered(ISTIO / "overlays" / overlay)
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
            spec = envoy_filter(name)["spec"]
            if "workloadSelector" in spec:
                wanted = spec["workloadSelector"]["labels"]
                assert not wanted.items() <= pod_labels.items(), name
            else:  # targetRefs: a Gateway, in its own namespace
                assert envoy_filter(name)["metadata"]["namespace"] != istio_names.NAMESPACE


def test_telemetry_schema_catches_a_typo() -> None:
    schema = ISTIO_SCHEMAS[("telemetry.istio.io/v1", "Telemetry")]["properties"]["spec"]
    (doc,) = yaml_docs(ISTIO / "overlays" / "enforce" / "telemetry.yaml")
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
    patched, applied = envoyfilter.apply(config, contexts, affinity_filter())
    assert applied == 1
    policies = {
        c["name"]: c.get("load_balancing_policy") for c in patched["static_resources"]["clusters"]
    }
    assert policies[other] is None and policies[istio_names.OUTBOUND_CLUSTER] is not None
    (policy,) = policies[istio_names.OUTBOUND_CLUSTER]["policies"]
    hashing = policy["typed_extension_config"]["typed_config"]["consistent_hashing_lb_config"]
    assert hashing["hash_policy"] == [{"header": {"header_name": "x-forwarded-for"}}]
