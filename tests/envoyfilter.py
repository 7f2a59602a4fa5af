"""The EnvoyFilter patch semantics istio/ uses, applied to an Istio-shaped Envoy config.

Only what our EnvoyFilters contain is implemented: HTTP_FILTER INSERT_BEFORE the
router of an http_connection_manager, NETWORK_FILTER MERGE into an HCM, CLUSTER
ADD, and CLUSTER MERGE on a cluster matched by service and port; anything else
raises, so a new kind of patch cannot pass the tests unapplied. MERGE is
protobuf merge as istiod does it (pilot/pkg/networking/core/envoyfilter/,
istio pkg/proto/merge): messages merge field by field, repeated fields are
appended, scalars replaced.

The config is tests/topology.py `istio_like_bootstrap`: the parts of an Istio
proxy the patches touch, and each listener's patch context recorded beside it.
`apply_telemetry` puts the access logger istiod renders for a Telemetry
(scripts/render_istio.istiod_http_als) where istiod puts it.
"""

from __future__ import annotations

import copy
import re
from typing import Any

HCM = "envoy.filters.network.http_connection_manager"
ROUTER = "envoy.filters.http.router"


class UnsupportedPatch(Exception):
    """An EnvoyFilter patch this applier does not implement."""


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
