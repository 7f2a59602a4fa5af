"""The shipped Istio-shaped topology on loopback, for the tests and scripts/attack.py.

The audit server behind its own sidecar (real Envoy): the sidecar terminates
mTLS, writes the caller's certificate into `x-forwarded-client-cert` and
forwards from 127.0.0.6, as Istio's inbound clusters do; the server trusts
XFCC only from there (`--trust-xfcc-from`) and only the element its own
sidecar wrote (`--xfcc-by`). Identities are SPIFFE ids of a test mesh;
certificates come from tests/pki.py.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from extproc import processes
from extproc.envoyconf import ClientTLS, Endpoint, layered_runtime, to_yaml
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
    pki: TestCA, listen_port: int, admin_port: int, audit_port: int, xfcc_mode: str
) -> dict[str, Any]:
    """The audit server's own Istio sidecar, as far as reporters are concerned:
    terminate mTLS, write the peer into XFCC (SANITIZE_SET as the StatefulSet pins
    it, or Istio's default APPEND_FORWARD), forward from 127.0.0.6."""
    hcm = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": _inbound_hcm(xfcc_mode),
    }
    listener = {
        "name": "inbound",
        "address": Endpoint("127.0.0.1", listen_port).address(),
        "filter_chains": [{"transport_socket": _downstream_tls(pki), "filters": [hcm]}],
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
    pki: TestCA,
    workdir: Path,
    audit_port: int,
    xfcc_mode: str = SANITIZE,
    *,
    binary: str | None = None,
) -> Iterator[Sidecar]:
    """The server's own sidecar (real Envoy, `binary` or the venv's) in front of
    `audit_port`."""
    port, admin = processes.free_port(), processes.free_port()
    config = workdir / f"sidecar-{port}.yaml"
    config.write_text(to_yaml(sidecar_config(pki, port, admin, audit_port, xfcc_mode)))
    with (workdir / f"sidecar-{port}.log").open("ab") as log:
        sidecar = processes.start_envoy(config, log, binary=binary)
        try:
            processes.wait_until(lambda: processes.envoy_ready(admin), "audit sidecar", sidecar)
            yield Sidecar(port, admin)
        finally:
            processes.stop(sidecar, sig=signal.SIGKILL)
