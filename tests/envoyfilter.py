"""The EnvoyFilter patch semantics istio/ uses, applied to an Istio-shaped Envoy config.

Only what our EnvoyFilters contain is implemented: HTTP_FILTER INSERT_BEFORE the
router of an http_connection_manager, NETWORK_FILTER MERGE into an HCM, CLUSTER
ADD, and CLUSTER MERGE on a cluster matched by service and port; anything else
raises, so a new kind of patch cannot pass the tests unapplied. MERGE is
protobuf merge as istiod does it (pilot/pkg/networking/core/envoyfilter/,
istio pkg/proto/merge): messages merge field by field, repeated fields are
appended, scalars replaced.

The bootstrap mimics the parts of an Istio proxy the patches touch: an inbound
(or gateway) listener whose HCM ends with envoy.filters.http.router, optionally
an outbound listener in front of it, Istio's cluster names, and each listener's
patch context recorded beside it (Istio knows it from the listener's direction;
plain Envoy config has no such field). `apply_telemetry` puts the access
logger istiod renders for a Telemetry (scripts/render_istio.istiod_http_als)
where istiod puts it.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import render_istio  # scripts/: the mesh config istiod renders the proxies' bootstrap from

from extproc.envoyconf import Endpoint, ext_proc_cluster

HCM = "envoy.filters.network.http_connection_manager"
APP_HOST = "app.demo.svc.cluster.local"
ROUTER = "envoy.filters.http.router"
_TYPE = "type.googleapis.com/"


class UnsupportedPatch(Exception):
    """An EnvoyFilter patch this applier does not implement."""


def istio_like_bootstrap(
    *,
    context: str,
    listen: Endpoint,
    app: Endpoint,
    admin: Endpoint,
    outbound_clusters: dict[str, Endpoint | list[Endpoint]],
    outbound: Endpoint | None = None,
    istio_version: str = "1.28.2",
) -> tuple[dict[str, Any], dict[str, str]]:
    """An Envoy bootstrap shaped like an Istio sidecar's inbound listener (or a
    gateway's), and the patch context of each listener by name.

    outbound_clusters: stand-ins for Istio's outbound|PORT||HOST clusters, as
    istiod renders them with istio/base/destinationrule.yaml (LEAST_REQUEST,
    its circuit breakers and HTTP/2 options), one or more endpoints (pods).
    outbound: also a sidecar outbound listener there (context SIDECAR_OUTBOUND),
    whose route goes to the inbound listener through outbound|8000||APP_HOST,
    as a caller's own sidecar would.
    istio_version: the proxy's ISTIO_VERSION (node metadata), which an
    EnvoyFilter's match.proxy.proxyVersion is matched against.
    """
    name = "virtualInbound" if context == "SIDECAR_INBOUND" else f"0.0.0.0_{listen.port}"
    app_cluster = f"inbound|{app.port}||" if context == "SIDECAR_INBOUND" else "outbound|8000||app"
    hcm: dict[str, Any] = {
        "@type": _TYPE
        + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": f"inbound_0.0.0.0_{app.port}",
        "route_config": {
            "name": "inbound|http|8000",
            "virtual_hosts": [
                {
                    "name": "inbound|http|8000",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": app_cluster, "timeout": "15s"},
                        }
                    ],
                }
            ],
        },
        # Istio's own filters sit before the router; ours must land between.
        "http_filters": [
            {
                "name": "envoy.filters.http.fault",
                "typed_config": {
                    "@type": _TYPE + "envoy.extensions.filters.http.fault.v3.HTTPFault"
                },
            },
            {
                "name": ROUTER,
                "typed_config": {"@type": _TYPE + "envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    clusters = [_static(app_cluster, app)]
    for cluster, eps in outbound_clusters.items():
        pods = eps if isinstance(eps, list) else [eps]
        rendered = ext_proc_cluster(pods[0], name=cluster)
        rendered["lb_policy"] = "LEAST_REQUEST"
        rendered["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
            {"endpoint": {"address": ep.address()}} for ep in pods
        ]
        clusters.append(rendered)
    listeners = [
        {
            "name": name,
            "address": _address(listen),
            "filter_chains": [{"filters": [{"name": HCM, "typed_config": hcm}]}],
        }
    ]
    contexts = {name: context}
    if outbound is not None:
        out_cluster = f"outbound|8000||{APP_HOST}"
        out_hcm = copy.deepcopy(hcm)
        out_hcm["stat_prefix"] = f"outbound_0.0.0.0_{outbound.port}"
        out_hcm["route_config"] = {
            "name": "8000",
            "virtual_hosts": [
                {
                    "name": f"{APP_HOST}:8000",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": out_cluster, "timeout": "15s"},
                        }
                    ],
                }
            ],
        }
        out_hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] == ROUTER]
        out_name = f"0.0.0.0_{outbound.port}"
        listeners.append(
            {
                "name": out_name,
                "address": _address(outbound),
                "filter_chains": [{"filters": [{"name": HCM, "typed_config": out_hcm}]}],
            }
        )
        contexts[out_name] = "SIDECAR_OUTBOUND"
        clusters.append(_static(out_cluster, listen))
    for built in clusters:
        # istiod names every cluster's stats "<name>;" (cluster_builder.go), for
        # the cluster_name tag of its bootstrap.
        built["alt_stat_name"] = f"{built['name']};"
    config = {
        "node": {
            "id": "sidecar~10.0.0.1~app-0.demo~demo.svc.cluster.local",
            "cluster": "app.demo",
            "metadata": {"ISTIO_VERSION": istio_version},
        },
        "admin": {"address": _address(admin)},
        "layered_runtime": istiod_runtime(render_istio.mesh_config()),
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }
    return config, contexts


def istiod_runtime(mesh_config: dict[str, Any]) -> dict[str, Any]:
    """The bootstrap runtime istiod gives every proxy from meshConfig
    defaultConfig.runtimeValues: a static layer ("true"/"false" turned into
    booleans, other values kept as strings), then the admin layer
    (pkg/bootstrap/config.go extractRuntimeFlags, envoy_bootstrap.json)."""
    values = mesh_config.get("defaultConfig", {}).get("runtimeValues", {})
    layer = {k: {"true": True, "false": False}.get(v, v) for k, v in values.items()}
    return {
        "layers": [
            {"name": "global config", "static_layer": layer},
            {"name": "admin", "admin_layer": {}},
        ]
    }


def _address(ep: Endpoint) -> dict[str, Any]:
    return {"socket_address": {"address": ep.host, "port_value": ep.port}}


def _static(name: str, ep: Endpoint) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(ep)}}]}],
        },
    }


def apply(
    config: dict[str, Any], contexts: dict[str, str], envoy_filter: dict[str, Any]
) -> tuple[dict[str, Any], int]:
    """The config with the EnvoyFilter's patches applied, and how many applied."""
    config = copy.deepcopy(config)
    resources = config["static_resources"]
    applied = 0
    version = config["node"]["metadata"]["ISTIO_VERSION"]
    for patch in envoy_filter["spec"]["configPatches"]:
        kind, match = patch["applyTo"], dict(patch.get("match", {}))
        operation, value = patch["patch"]["operation"], patch["patch"]["value"]
        if not _proxy_matches(match.pop("proxy", None), version):
            continue
        if kind == "CLUSTER" and operation == "ADD":
            if set(match) - {"context"}:
                raise UnsupportedPatch(f"CLUSTER ADD with match {match}")
            resources["clusters"].append(copy.deepcopy(value))
            applied += 1
        elif kind == "CLUSTER" and operation == "MERGE":
            gateway = "GATEWAY" in contexts.values()
            for cluster in resources["clusters"]:
                if _cluster_matches(cluster["name"], match, gateway=gateway):
                    proto_merge(cluster, value)
                    applied += 1
        elif kind == "HTTP_FILTER" and operation == "INSERT_BEFORE":
            applied += _insert_before(resources["listeners"], contexts, match, value)
        elif kind == "NETWORK_FILTER" and operation == "MERGE":
            applied += _merge_network_filter(resources["listeners"], contexts, match, value)
        else:
            raise UnsupportedPatch(f"{kind} {operation}")
    return config, applied


def _proxy_matches(proxy: dict[str, Any] | None, version: str) -> bool:
    """istiod's proxyMatch (pilot/pkg/model/envoyfilter.go): proxyVersion is a
    regular expression matched (RE2 MatchString: anywhere, so anchor it) against
    the proxy's ISTIO_VERSION."""
    if proxy is None:
        return True
    if set(proxy) != {"proxyVersion"}:
        raise UnsupportedPatch(f"proxy match {proxy}")
    return re.search(proxy["proxyVersion"], version) is not None


def _insert_before(
    listeners: list[dict[str, Any]],
    contexts: dict[str, str],
    match: dict[str, Any],
    value: dict[str, Any],
) -> int:
    wanted = match["listener"]["filterChain"]["filter"]
    if set(match) - {"context", "listener"} or set(match["listener"]) != {"filterChain"}:
        raise UnsupportedPatch(f"HTTP_FILTER match {match}")
    if wanted["name"] != HCM:
        raise UnsupportedPatch(f"network filter {wanted['name']}")
    count = 0
    for listener in listeners:
        if match["context"] not in ("ANY", contexts[listener["name"]]):
            continue
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                if network_filter["name"] != HCM:
                    continue
                filters = network_filter["typed_config"]["http_filters"]
                names = [f["name"] for f in filters]
                sub = wanted["subFilter"]["name"]
                if sub in names:
                    filters.insert(names.index(sub), copy.deepcopy(value))
                    count += 1
    return count


def proto_merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """Protobuf merge of a patch in its JSON form: nested messages merge,
    repeated fields are appended, scalars replaced. An Any merges only into an
    Any of the same type (istiod's util.MergeAnyWithAny unpacks both)."""
    if "@type" in patch and target.get("@type", patch["@type"]) != patch["@type"]:
        raise UnsupportedPatch(f"merge of {patch['@type']} into {target['@type']}")
    for key, value in patch.items():
        current = target.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            proto_merge(current, value)
        elif isinstance(value, list) and isinstance(current, list):
            current.extend(copy.deepcopy(value))
        else:
            target[key] = copy.deepcopy(value)


def _cluster_matches(name: str, match: dict[str, Any], *, gateway: bool) -> bool:
    """istiod's clusterMatch (envoyfilter/cluster_patch.go) for the fields we use:
    the cluster's name parsed as direction|port|subset|host."""
    wanted = match.get("cluster", {})
    if set(match) - {"context", "cluster"} or set(wanted) - {"service", "portNumber"}:
        raise UnsupportedPatch(f"CLUSTER MERGE with match {match}")
    parts = name.split("|")
    if len(parts) != 4:
        return False
    direction, port, _subset, host = parts
    context = {"inbound": "SIDECAR_INBOUND"}.get(
        direction, "GATEWAY" if gateway else "SIDECAR_OUTBOUND"
    )
    if match.get("context", "ANY") not in ("ANY", context):
        return False
    if "service" in wanted and wanted["service"] != host:
        return False
    return "portNumber" not in wanted or str(wanted["portNumber"]) == port


def _hcms(
    listeners: list[dict[str, Any]], contexts: dict[str, str], context: str
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(listener, HCM network filter) of every listener in `context` (or ANY)."""
    found = []
    for listener in listeners:
        if context not in ("ANY", contexts[listener["name"]]):
            continue
        for chain in listener["filter_chains"]:
            found += [(listener, f) for f in chain["filters"] if f["name"] == HCM]
    return found


def _merge_network_filter(
    listeners: list[dict[str, Any]],
    contexts: dict[str, str],
    match: dict[str, Any],
    value: dict[str, Any],
) -> int:
    if set(match) - {"context", "listener"} or match["listener"] != {
        "filterChain": {"filter": {"name": HCM}}
    }:
        raise UnsupportedPatch(f"NETWORK_FILTER match {match}")
    if set(value) - {"name", "typed_config"} or value.get("name", HCM) != HCM:
        raise UnsupportedPatch(f"NETWORK_FILTER value {sorted(value)}")
    count = 0
    for _, network_filter in _hcms(listeners, contexts, match["context"]):
        proto_merge(network_filter["typed_config"], value["typed_config"])
        count += 1
    return count


def apply_telemetry(
    config: dict[str, Any],
    contexts: dict[str, str],
    hcm_entry: dict[str, Any],
    listener_entry: dict[str, Any],
    *,
    listener_contexts: tuple[str, ...],
) -> dict[str, Any]:
    """The config with a Telemetry's access logger where istiod puts it
    (pilot/pkg/networking/core/accesslog.go): on the HTTP connection manager of
    each listener of the given contexts (setHTTPAccessLog), and on the listener
    itself for connections no chain takes (setListenerAccessLog). A Telemetry
    with `match.mode: SERVER` covers SIDECAR_INBOUND only; gateways are CLIENT
    (pilot/pkg/model/telemetry.go, workloadMode)."""
    config = copy.deepcopy(config)
    listeners = config["static_resources"]["listeners"]
    for context in listener_contexts:
        for listener, network_filter in _hcms(listeners, contexts, context):
            network_filter["typed_config"].setdefault("access_log", []).append(
                copy.deepcopy(hcm_entry)
            )
            if listener_entry not in listener.get("access_log", []):
                listener.setdefault("access_log", []).append(copy.deepcopy(listener_entry))
    return config
