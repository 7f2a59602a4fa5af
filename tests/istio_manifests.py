"""istio/ as the Istio tests read it (tests/integration/test_istio_*.py): its
manifests rendered, its EnvoyFilters applied to an Istio-shaped Envoy config,
the settings the reporter topologies share.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import istio_names
import kustomize_subset
import render_istio
import yaml

from extproc.envoyconf import Endpoint
from tests import envoyfilter, istio_injection, topology

ROOT = Path(__file__).resolve().parents[1]
ISTIO = ROOT / "istio"
CRDS = ROOT / "tests" / "schemas" / "istio-crds.gen.yaml"  # vendored from istio/istio
OVERLAYS = sorted(p.parent for p in (ISTIO / "overlays").glob("*/kustomization.yaml"))
KUBERNETES_VERSION = "1.32"  # the oldest still supported upstream that has every field we use
ISTIO_GROUPS = (".istio.io/",)


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def rendered(overlay: Path) -> list[dict[str, Any]]:
    return kustomize_subset.build(overlay)


def audit_template() -> str:
    (operator,) = yaml_docs(ISTIO / "injection" / "istio-operator-audit-template.yaml")
    return operator["spec"]["values"]["sidecarInjectorWebhook"]["templates"]["audit"]  # type: ignore[no-any-return]


def example_app_pod() -> dict[str, Any]:
    """A pod of overlays/sidecar/example-app.yaml, as its Deployment creates it."""
    deployment = next(
        d for d in rendered(ISTIO / "overlays" / "sidecar") if d["kind"] == "Deployment"
    )
    template = deployment["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "httpbin-7d9c5b8f4-x2x7q", **template["metadata"]},
        "spec": template["spec"],
    }


def injected_pod(*, native: bool) -> dict[str, Any]:
    """The example app's pod after istiod's "sidecar" and "audit" templates
    (tests/istio_injection.py), with istio-proxy a regular or a native sidecar."""
    return istio_injection.inject(example_app_pod(), audit_template(), native=native)


# Standalone manifests, applied with kubectl apply -f (not part of an overlay).
STANDALONE = sorted((ISTIO / "telemetry").glob("*.yaml"))


def all_manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = [
        (f"{o.name}:{d['kind']}/{d['metadata']['name']}", d) for o in OVERLAYS for d in rendered(o)
    ]
    docs += [(f"{p.parent.name}/{p.name}", d) for p in STANDALONE for d in yaml_docs(p)]
    return docs


MANIFESTS = all_manifests()
SHARED_OVERLAYS = ["enforce", "receipts", "observe", "gateway", "waypoint"]


def variant(tmp_path: Path, overlay: str, components: str) -> Path:
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


def istio_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for crd in yaml_docs(CRDS):
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


ISTIO_SCHEMAS = istio_schemas()


# Where each ext_proc EnvoyFilter lives: the gateway's is a component (it adds to
# an overlay), the others belong to their overlay.
ENVOYFILTER_FILES = {
    "gateway": ISTIO / "components" / "gateway" / "envoyfilter.yaml",
    "gateway-api": ISTIO / "components" / "gateway-api" / "envoyfilter.yaml",
}


def envoy_filter(overlay: str) -> dict[str, Any]:
    path = ENVOYFILTER_FILES.get(overlay, ISTIO / "overlays" / overlay / "envoyfilter.yaml")
    (doc,) = yaml_docs(path)
    return doc


def affinity_filter() -> dict[str, Any]:
    (doc,) = yaml_docs(ISTIO / "base" / "envoyfilter-affinity.yaml")
    return doc


def config_patch(doc: dict[str, Any], apply_to: str) -> dict[str, Any]:
    patches: list[dict[str, Any]] = doc["spec"]["configPatches"]
    (patch,) = [p for p in patches if p["applyTo"] == apply_to]
    return patch


def istio_config(
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
        else config_patch(envoy_filter(overlay), "HTTP_FILTER")["match"]["context"]
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
    docs = [] if overlay is None else [envoy_filter(overlay)]
    if affinity and not local:
        docs.append(affinity_filter())
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


def with_istio_stats(config: dict[str, Any]) -> dict[str, Any]:
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


def telemetry_contexts(overlay: str) -> tuple[str, ...]:
    """Where the overlay's Telemetry puts the access logger (the sidecar overlay
    has none: its EnvoyFilter adds the logger). The shipped Telemetry for
    sidecars is SERVER only; the outbound side is validated too, for a
    Telemetry without `match` (CLIENT_AND_SERVER)."""
    return {
        "sidecar": (),
        "gateway": ("GATEWAY",),
        "gateway-api": ("GATEWAY",),
    }.get(overlay, ("SIDECAR_INBOUND", "SIDECAR_OUTBOUND"))


def audit_telemetry(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The overlay's Telemetry that turns the provider on (not the base's own)."""
    (doc,) = [d for d in docs if d["kind"] == "Telemetry" and d["metadata"]["name"] != SELF]
    return doc


SELF = "extproc-audit-self"


def shared(kind: str) -> dict[str, Any]:
    return next(d for d in rendered(ISTIO / "overlays" / "enforce") if d["kind"] == kind)


def sidecar_settings() -> dict[str, str]:
    docs = rendered(ISTIO / "overlays" / "sidecar")
    return next(d for d in docs if d["kind"] == "ConfigMap")["data"]  # type: ignore[no-any-return]


def containers_by_name(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = pod["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}
