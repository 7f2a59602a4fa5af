"""Envoy on loopback for the tests and scripts/attack.py: every bootstrap a
test builds by hand is built here, and every Envoy a test starts is started
by `start_envoy` (written to the test's directory, ready before it returns).

The bootstraps: the reporting Envoy of a stack is extproc.envoyconf.bootstrap
(tests/conftest.py AuditStack); `on_loopback` moves a shipped envoy/*.yaml onto
a test's ports; `sidecar_config` is the audit server's own sidecar;
`istio_like_bootstrap` an Istio proxy for the EnvoyFilter tests
(tests/envoyfilter.py applies the patches).

The shipped Istio-shaped topology on loopback:

The audit server behind its own sidecar (real Envoy): the sidecar terminates
mTLS, writes the caller's certificate into `x-forwarded-client-cert` and
forwards from 127.0.0.6, as Istio's inbound clusters do; the server trusts
XFCC only from there (`--trust-xfcc-from`) and only the element its own
sidecar wrote (`--xfcc-by`). Identities are SPIFFE ids of a test mesh;
certificates come from tests/pki.py.
"""

from __future__ import annotations

import copy
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import render_istio  # scripts/: the mesh config istiod renders the proxies' bootstrap from

from extproc import processes
from extproc.envoyconf import ClientTLS, Endpoint, ext_proc_cluster, layered_runtime, to_yaml
from tests.envoyfilter import HCM, ROUTER
from tests.pki import TestCA

ALLOWED = "spiffe://test.mesh/ns/shop/sa/frontend"  # a reporter on the allow-list
INTRUDER = "spiffe://test.mesh/ns/admin/sa/ceo"  # a valid mesh identity, not allowed
AUDIT_SERVER_ID = "spiffe://test.mesh/ns/extproc-audit/sa/extproc-audit"
ALLOW_SHOP = "spiffe://test.mesh/ns/shop/*"
# serve behind its own sidecar, as the StatefulSet runs it (--xfcc-mode SANITIZE_SET, the default).
XFCC_SERVER_ARGS = [
    "--trust-xfcc-from", "127.0.0.6/32", "--xfcc-by", AUDIT_SERVER_ID,
    "--allow-reporter", ALLOW_SHOP,
]  # fmt: skip
APPEND, SANITIZE = "APPEND_FORWARD", "SANITIZE_SET"
APP_HOST = "app.demo.svc.cluster.local"  # the app behind an Istio-like proxy
_TYPE = "type.googleapis.com/envoy."


def tls_server_args(pki: TestCA) -> list[str]:
    """serve with native mTLS: a server certificate, client certificates of the CA required."""
    server = pki.issue("audit-server", uris=(AUDIT_SERVER_ID,), ips=("127.0.0.1",))
    return [
        "--tls-cert", str(server.cert), "--tls-key", str(server.key),
        "--client-ca", str(pki.cert), "--allow-reporter", ALLOW_SHOP,
    ]  # fmt: skip


def client_credentials(pki: TestCA, identity: str | None) -> grpc.ChannelCredentials:
    """gRPC client credentials with a certificate for `identity` (None: TLS without one)."""
    ca = pki.cert.read_bytes()
    if identity is None:
        return grpc.ssl_channel_credentials(ca)
    issued = pki.issue(identity.rsplit("/", 1)[-1], uris=(identity,))
    return grpc.ssl_channel_credentials(ca, issued.key.read_bytes(), issued.cert.read_bytes())


def envoy_client_tls(pki: TestCA, identity: str = ALLOWED) -> ClientTLS:
    """The reporting Envoy's client certificate towards the audit server (or its sidecar)."""
    issued = pki.issue(identity.rsplit("/", 1)[-1], uris=(identity,))
    return ClientTLS(str(issued.cert), str(issued.key), str(pki.cert))


def _downstream_tls(pki: TestCA) -> dict[str, Any]:
    own = pki.issue("audit-sidecar", uris=(AUDIT_SERVER_ID,), ips=("127.0.0.1",))
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": f"{_TYPE}extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(own.cert)},
                        "private_key": {"filename": str(own.key)},
                    }
                ],
                "validation_context": {"trusted_ca": {"filename": str(pki.cert)}},
            },
        },
    }


def _inbound_hcm(xfcc_mode: str) -> dict[str, Any]:
    route = {"match": {"prefix": "/"}, "route": {"cluster": "inbound", "timeout": "0s"}}
    return {
        "@type": f"{_TYPE}extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager",
        "stat_prefix": "inbound_50051",
        "codec_type": "HTTP2",
        "forward_client_cert_details": xfcc_mode,
        "set_current_client_cert_details": {"subject": True, "dns": True, "uri": True},
        "route_config": {
            "virtual_hosts": [{"name": "inbound", "domains": ["*"], "routes": [route]}]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": f"{_TYPE}extensions.filters.http.router.v3.Router"},
            }
        ],
    }


def _inbound_cluster(audit_port: int) -> dict[str, Any]:
    endpoint = {"endpoint": {"address": Endpoint("127.0.0.1", audit_port).address()}}
    return {
        "name": "inbound",
        "type": "STATIC",
        "connect_timeout": "1s",
        # Istio's inbound clusters forward from 127.0.0.6 (InboundPassthroughBindIpv4).
        "upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0}},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": f"{_TYPE}extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {"cluster_name": "inbound", "endpoints": [{"lb_endpoints": [endpoint]}]},
    }


def sidecar_config(
    pki: TestCA | None, listen_port: int, admin_port: int, audit_port: int, xfcc_mode: str
) -> dict[str, Any]:
    """The audit server's own Istio sidecar, as far as reporters are concerned:
    terminate mTLS, write the peer into XFCC (SANITIZE_SET as the StatefulSet pins
    it, or Istio's default APPEND_FORWARD), forward from 127.0.0.6. `pki` None:
    the plaintext filter chain a PERMISSIVE port would add (no client certificate,
    so Envoy removes a caller's own XFCC)."""
    hcm = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": _inbound_hcm(xfcc_mode),
    }
    chain: dict[str, Any] = {"filters": [hcm]}
    if pki is not None:
        chain["transport_socket"] = _downstream_tls(pki)
    listener = {
        "name": "inbound",
        "address": Endpoint("127.0.0.1", listen_port).address(),
        "filter_chains": [chain],
    }
    return {
        "admin": {"address": Endpoint("127.0.0.1", admin_port).address()},
        # istiod gives every proxy, this one too, the mesh's runtimeValues
        # (istio/mesh/, render_istio.runtime_values: envoyconf.REPORTER_RUNTIME).
        "layered_runtime": layered_runtime(),
        "static_resources": {"listeners": [listener], "clusters": [_inbound_cluster(audit_port)]},
    }


@dataclass(frozen=True)
class Sidecar:
    port: int  # its mTLS listener, where reporters connect
    admin_port: int


@contextmanager
def audit_sidecar(
    pki: TestCA | None,
    workdir: Path,
    audit_port: int,
    xfcc_mode: str = SANITIZE,
    *,
    binary: str | None = None,
) -> Iterator[Sidecar]:
    """The server's own sidecar (real Envoy, `binary` or the venv's) in front of
    `audit_port` (`pki` None: plaintext, see `sidecar_config`)."""
    port, admin = processes.free_port(), processes.free_port()
    config = sidecar_config(pki, port, admin, audit_port, xfcc_mode)
    sidecar = start_envoy(config, workdir, admin, name=f"sidecar-{port}", binary=binary)
    try:
        yield Sidecar(port, admin)
    finally:
        processes.stop(sidecar, sig=signal.SIGKILL)


def start_envoy(
    config: dict[str, Any],
    workdir: Path,
    admin_port: int,
    *,
    name: str = "envoy",
    binary: str | None = None,
) -> subprocess.Popen[bytes]:
    """Envoy (`binary` or the venv's) on `config`, written to workdir/NAME.yaml,
    its output appended to workdir/NAME.log; returns once its admin port
    (`admin_port`, the config's) says it is ready. The caller stops it."""
    path = workdir / f"{name}.yaml"
    path.write_text(to_yaml(config))
    with (workdir / f"{name}.log").open("ab") as log:
        envoy = processes.start_envoy(path, log, binary=binary)
    try:
        processes.wait_until(lambda: processes.envoy_ready(admin_port), name, envoy)
    except BaseException:
        processes.stop(envoy, sig=signal.SIGKILL)
        raise
    return envoy


def on_loopback(config: dict[str, Any], ports: dict[int, int]) -> dict[str, Any]:
    """A shipped Envoy config with every socket address moved to 127.0.0.1 and
    its port mapped by `ports` (shipped port -> this test's; an unmapped port
    fails); nothing else changes. Changes `config` in place and returns it."""

    def move(node: object) -> None:
        if isinstance(node, dict):
            if "socket_address" in node:
                address = node["socket_address"]
                address["address"] = "127.0.0.1"
                address["port_value"] = ports[address["port_value"]]
            for value in node.values():
                move(value)
        elif isinstance(node, list):
            for value in node:
                move(value)

    move(config)
    return config


# --- an Istio proxy, for the EnvoyFilter tests ---------------------------------------------------


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
        + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
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
                "typed_config": {"@type": _TYPE + "extensions.filters.http.fault.v3.HTTPFault"},
            },
            {
                "name": ROUTER,
                "typed_config": {"@type": _TYPE + "extensions.filters.http.router.v3.Router"},
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
