"""The EnvoyFilter patch semantics istio/ uses, applied to an Istio-shaped Envoy config.

Only what our EnvoyFilters contain is implemented: HTTP_FILTER INSERT_BEFORE the
router of an http_connection_manager, and CLUSTER ADD; anything else raises, so
a new kind of patch cannot pass the tests unapplied. The bootstrap mimics the
parts of an Istio proxy the patches touch: an inbound (or gateway) listener
whose HCM ends with envoy.filters.http.router, Istio's cluster names, and the
listener's patch context recorded beside it (Istio knows it from the listener's
direction; plain Envoy config has no such field).
"""

from __future__ import annotations

import copy
from typing import Any

from extproc.envoyconf import Endpoint, ext_proc_cluster

HCM = "envoy.filters.network.http_connection_manager"
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
    outbound_clusters: dict[str, Endpoint],
) -> tuple[dict[str, Any], dict[str, str]]:
    """An Envoy bootstrap shaped like an Istio sidecar's inbound listener (or a
    gateway's), and the patch context of each listener by name.

    outbound_clusters: stand-ins for Istio's outbound|PORT||HOST clusters.
    """
    name = "virtualInbound" if context == "SIDECAR_INBOUND" else f"0.0.0.0_{listen.port}"
    app_cluster = f"inbound|{app.port}||" if context == "SIDECAR_INBOUND" else "outbound|8000||app"
    hcm = {
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
    clusters += [ext_proc_cluster(ep, name=cluster) for cluster, ep in outbound_clusters.items()]
    config = {
        "node": {"id": "sidecar~10.0.0.1~app-0.demo~demo.svc.cluster.local", "cluster": "app.demo"},
        "admin": {"address": _address(admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": name,
                    "address": _address(listen),
                    "filter_chains": [
                        {"filters": [{"name": HCM, "typed_config": hcm}]},
                    ],
                }
            ],
            "clusters": clusters,
        },
    }
    return config, {name: context}


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
    for patch in envoy_filter["spec"]["configPatches"]:
        kind, match = patch["applyTo"], patch.get("match", {})
        operation, value = patch["patch"]["operation"], patch["patch"]["value"]
        if kind == "CLUSTER" and operation == "ADD":
            if set(match) - {"context"}:
                raise UnsupportedPatch(f"CLUSTER ADD with match {match}")
            resources["clusters"].append(copy.deepcopy(value))
            applied += 1
        elif kind == "HTTP_FILTER" and operation == "INSERT_BEFORE":
            applied += _insert_before(resources["listeners"], contexts, match, value)
        else:
            raise UnsupportedPatch(f"{kind} {operation}")
    return config, applied


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
