"""The Envoy configuration of the ext_proc filter, from one source.

envoy/*.yaml in the repository are rendered from here (scripts/render_envoy.py;
a test fails if they drift), and the demo and tests render the same config
with their own ports. Tuned per DESIGN.md's measured pitfalls: circuit
breakers far above Envoy's default of 1024 requests, a short deferred close in
observe mode, per-message timeout that fails closed in enforce mode.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import yaml

from extproc.attributes import REQUEST_ATTRIBUTES

EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
EXT_PROC_CLUSTER = "extproc_audit"
ACCESS_LOG_NAME = "extproc-audit"
# Headers an access-log entry carries besides method, path, authority, user
# agent, referer, forwarded-for and request id (which Envoy always sends):
# what an auditor asks of a request after the fact. Redacted like any other.
ACCESS_LOG_REQUEST_HEADERS = (
    "authorization",
    "content-length",
    "content-type",
    "cookie",
    "x-forwarded-client-cert",
)
ACCESS_LOG_RESPONSE_HEADERS = (
    "content-length",
    "content-type",
    "location",
    "set-cookie",
    "www-authenticate",
)
_TYPE = "type.googleapis.com/"
# Envoy's runtime flag (1.34+, off by default) that makes its ext_proc client
# end a stream by half-closing it and waiting for the server's status, instead
# of closing and resetting it (RST_STREAM) at once. Every reporting Envoy needs
# it: the server waits for that half-close, so that no side resets a stream. A
# reset per request past 33/s makes the audit server's own sidecar (nghttp2's
# RST_STREAM budget: 1,000, then 33/s) close the reporter's connection, with
# the access-log stream on it (docs/THREATS.md, sidecar-reset-limit).
GRACEFUL_CLOSE = "envoy.reloadable_features.ext_proc_graceful_grpc_close"
# Envoy runtime of every reporter: bootstrap() below, and Istio's meshConfig
# (defaultConfig.runtimeValues, scripts/render_istio.py) for the mesh's proxies.
REPORTER_RUNTIME: dict[str, bool] = {GRACEFUL_CLOSE: True}
# The HTTP status of a request refused because its entry could not be logged:
# the server's own deny (ImmediateResponse) and Envoy's status_on_error agree.
FAIL_CLOSED_STATUS = "ServiceUnavailable"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def address(self) -> dict[str, Any]:
        return {"socket_address": {"address": self.host, "port_value": self.port}}


@dataclass(frozen=True)
class SocketPath:
    """A Unix domain socket (`serve --listen unix:PATH`): the per-pod topology,
    where only the proxy and the audit container mount the socket's volume."""

    path: str

    is_ip = True  # a fixed address: STATIC cluster, no DNS

    def address(self) -> dict[str, Any]:
        return {"pipe": {"path": self.path}}


@dataclass(frozen=True)
class ClientTLS:
    """Envoy's client certificate for `serve --tls-cert/--tls-key/--client-ca` (files)."""

    cert_chain: str
    private_key: str
    trusted_ca: str
    sni: str = ""
    server_san: str = ""  # require this URI or DNS SAN on the audit server's certificate

    def transport_socket(self) -> dict[str, Any]:
        validation: dict[str, Any] = {"trusted_ca": {"filename": self.trusted_ca}}
        if self.server_san:
            san_type = "URI" if "://" in self.server_san else "DNS"
            validation["match_typed_subject_alt_names"] = [
                {"san_type": san_type, "matcher": {"exact": self.server_san}}
            ]
        context: dict[str, Any] = {
            "@type": _TYPE + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": self.cert_chain},
                        "private_key": {"filename": self.private_key},
                    }
                ],
                "validation_context": validation,
            },
        }
        if self.sni:
            context["sni"] = self.sni
        return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def ext_proc_filter(
    cluster: str = EXT_PROC_CLUSTER, *, response_phase: bool = False
) -> dict[str, Any]:
    """The blocking (enforce) filter: an http_connection_manager HTTP filter entry.

    Request headers only: the request entry is durable before Envoy forwards,
    and the outcome arrives by the access-log service (access_log()), batched.
    `response_phase`: also send response headers (one more round trip per
    request), for `serve --receipts` or a server that logs the outcome from
    ext_proc (`--ext-proc-responses`).
    """
    return {
        "name": EXT_PROC_FILTER,
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": cluster}},
            # Fail closed: no request without its entry. And say so with a 503
            # (what docs promise): without status_on_error Envoy answers 500
            # when the audit server cannot be reached or fails the stream.
            "failure_mode_allow": False,
            "status_on_error": {"code": FAIL_CLOSED_STATUS},
            "processing_mode": {
                "request_header_mode": "SEND",
                "response_header_mode": "SEND" if response_phase else "SKIP",
                "request_body_mode": "NONE",
                "response_body_mode": "NONE",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
            # The WAL's group commit answers in ~1 ms; a stalled log must not
            # hold requests for long: past this Envoy fails the request.
            "message_timeout": "1s",
            "request_attributes": list(REQUEST_ATTRIBUTES),
            # We never mutate request headers (receipts only touch the response):
            # spare Envoy the route cache recomputation.
            "disable_clear_route_cache": True,
        },
    }


def access_log(
    cluster: str = EXT_PROC_CLUSTER,
    *,
    log_name: str = ACCESS_LOG_NAME,
    request_headers: tuple[str, ...] = ACCESS_LOG_REQUEST_HEADERS,
    response_headers: tuple[str, ...] = ACCESS_LOG_RESPONSE_HEADERS,
) -> dict[str, Any]:
    """Envoy's gRPC access logger (ALS) to the audit server: an HCM access_log entry.

    Batched on one long-lived stream (flushed every 0.2 s or at 64 KiB), after
    the response: the observe path for all traffic, and the outcome of enforced
    requests. Envoy counts what it wrote and dropped in
    access_logs.grpc_access_log.logs_written / logs_dropped.
    """
    return {
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
            "common_config": {
                "log_name": log_name,
                "grpc_service": {"envoy_grpc": {"cluster_name": cluster}},
                "transport_api_version": "V3",
                "buffer_flush_interval": "0.2s",
                "buffer_size_bytes": 65536,
            },
            "additional_request_headers_to_log": list(request_headers),
            "additional_response_headers_to_log": list(response_headers),
        },
    }


def ext_proc_cluster(
    endpoint: Endpoint | SocketPath, name: str = EXT_PROC_CLUSTER, tls: ClientTLS | None = None
) -> dict[str, Any]:
    limits = {
        "priority": "DEFAULT",
        "max_connections": 1024,
        "max_pending_requests": 65536,
        "max_requests": 65536,
        "max_retries": 3,
    }
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if endpoint.is_ip else "STRICT_DNS",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        # Past this many concurrent streams Envoy opens another
                        # connection; the kernel spreads connections over
                        # `serve --workers` processes (SO_REUSEPORT), so a low
                        # cap is what spreads the load.
                        "max_concurrent_streams": 8,
                        "connection_keepalive": {"interval": "30s", "timeout": "5s"},
                    }
                },
            }
        },
        "circuit_breakers": {"thresholds": [limits, {**limits, "priority": "HIGH"}]},
        "load_assignment": _load_assignment(name, endpoint),
    }
    if tls is not None:
        cluster["transport_socket"] = tls.transport_socket()
    return cluster


def _load_assignment(name: str, endpoint: Endpoint | SocketPath) -> dict[str, Any]:
    return {
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": endpoint.address()}}]}],
    }


def bootstrap(
    *,
    listen: Endpoint,
    ext_proc: Endpoint | SocketPath | None,
    upstream: Endpoint | None,
    admin: Endpoint,
    mode: str = "enforce",
    node_id: str = "extproc-audit-demo",
    ext_proc_tls: ClientTLS | None = None,
    response_phase: bool = False,
    access_logs: bool = True,
    enforce_prefixes: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """A complete Envoy bootstrap: one listener, the audit, then the router.

    `ext_proc`: the audit server, for both the blocking filter (enforce mode)
    and the access-log stream (both modes; `access_logs=False` leaves it out).
    `mode="observe"`: the access-log stream only, no added latency.
    `enforce_prefixes`: in enforce mode, block only routes under these path
    prefixes (the sensitive ones); every request is still access-logged.
    `upstream=None` answers every request with a direct_response and
    `ext_proc=None` leaves the audit out (benchmark baselines).
    """
    if mode not in ("enforce", "observe"):
        raise ValueError(f"mode must be enforce or observe, not {mode!r}")
    blocking = ext_proc is not None and mode == "enforce"
    if upstream is None:
        action: dict[str, Any] = {
            "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
        }
    else:
        action = {"route": {"cluster": "app", "timeout": "15s"}}
    routes: list[dict[str, Any]] = []
    if blocking and enforce_prefixes is not None:
        routes += [{"match": {"prefix": p}, **action} for p in enforce_prefixes]
        routes.append(
            {
                "match": {"prefix": "/"},
                **action,
                # Observe-only here: access-logged, never held.
                "typed_per_filter_config": {
                    EXT_PROC_FILTER: {
                        "@type": _TYPE
                        + "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
                        "disabled": True,
                    }
                },
            }
        )
    else:
        routes.append({"match": {"prefix": "/"}, **action})
    hcm: dict[str, Any] = {
        "@type": _TYPE
        + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress_http",
        "generate_request_id": True,
        "route_config": {
            "name": "local",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            *([ext_proc_filter(response_phase=response_phase)] if blocking else []),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _TYPE + "envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    if ext_proc is not None and access_logs:
        hcm["access_log"] = [access_log()]
    clusters = [ext_proc_cluster(ext_proc, tls=ext_proc_tls)] if ext_proc is not None else []
    if upstream is not None:
        clusters.append(
            {
                "name": "app",
                "type": "STATIC" if upstream.is_ip else "STRICT_DNS",
                "connect_timeout": "1s",
                "load_assignment": _load_assignment("app", upstream),
            }
        )
    return {
        "node": {"id": node_id, "cluster": "extproc-audit"},
        "admin": {"address": {"socket_address": {"address": admin.host, "port_value": admin.port}}},
        "layered_runtime": layered_runtime(),
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": {
                        "socket_address": {"address": listen.host, "port_value": listen.port}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


def layered_runtime(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """Envoy's runtime: a static layer with REPORTER_RUNTIME (or `values`), and
    the admin layer Envoy has by default (as Istio's bootstrap does)."""
    static = dict(REPORTER_RUNTIME if values is None else values)
    return {
        "layers": [
            {"name": "static", "static_layer": static},
            {"name": "admin", "admin_layer": {}},
        ]
    }


def to_yaml(config: dict[str, Any], header: str = "") -> str:
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    return header + body
