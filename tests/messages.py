"""Hand-made wire messages, as Envoy sends them: ext_proc ProcessingRequests and
access-log (ALS) entries. What a caller that talks to the audit server's port
itself (a test, or an attacker in scripts/attack.py) puts on the wire."""

from __future__ import annotations

from collections.abc import Iterator

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2 as al
from envoy.service.accesslog.v3 import als_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import duration_pb2, timestamp_pb2, wrappers_pb2  # type: ignore[import-untyped]

from extproc.attributes import ATTR_NAMESPACE

EXT_PROC_METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
ALS_METHOD = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
SPIFFE = "spiffe://cluster.local/ns/shop/sa/frontend"  # the caller of an audited request
SERVED_AS = "spiffe://cluster.local/ns/shop/sa/api"  # the identity it was served as
SIDECAR_NODE = "sidecar~10.0.0.5~web-1.shop~shop.svc.cluster.local"


def header_map(**pairs: str) -> pb.HttpHeaders:
    """Headers as Envoy sends them (values in raw_value); `_` in a name is `-`."""
    return pb.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[
                base_pb2.HeaderValue(key=k.replace("_", "-"), raw_value=v.encode())
                for k, v in pairs.items()
            ]
        ),
        end_of_stream=True,
    )


def request_headers(
    path: str = "/x", rid: str = "r-1", method: str = "GET", **attributes: str
) -> pb.ProcessingRequest:
    """A request_headers message; `attributes`: Envoy attributes by name (dots as is)."""
    h = header_map(**{":method": method, ":path": path, ":scheme": "http", ":authority": "svc"})
    h.headers.headers.append(base_pb2.HeaderValue(key="x-request-id", raw_value=rid.encode()))
    msg = pb.ProcessingRequest(request_headers=h)
    if attributes:
        msg.attributes[ATTR_NAMESPACE].update(attributes)
    return msg


def response_headers(status: str = "200") -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_headers=header_map(**{":status": status}))


def socket_address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=host, port_value=port)
    )


def _tls(caller: str, served_as: str) -> al.TLSProperties:
    def san(uri: str) -> al.TLSProperties.CertificateProperties:
        names = [al.TLSProperties.CertificateProperties.SubjectAltName(uri=uri)] if uri else []
        return al.TLSProperties.CertificateProperties(subject_alt_name=names)

    return al.TLSProperties(
        peer_certificate_properties=san(caller), local_certificate_properties=san(served_as)
    )


def http_entry(
    *,
    path: str = "/orders?page=2&token=tok-S1",
    request_headers: dict[str, str] | None = None,
    response_headers: dict[str, str] | None = None,
    status: int | None = 200,
    rid: str = "rid-1",
    referer: str = "",
    tls: bool = False,
    served_as: str = SERVED_AS,
) -> al.HTTPAccessLogEntry:
    """One finished request as Envoy's access logger reports it; `tls`: the
    caller's certificate (SPIFFE) and the one it was served as (`served_as`,
    "" for none) are in it."""
    common = al.AccessLogCommon(
        downstream_remote_address=socket_address("10.0.0.7", 41000),
        downstream_local_address=socket_address("10.0.0.5", 8080),
        upstream_remote_address=socket_address("10.0.0.9", 9000),
        upstream_cluster="inbound|8080||",
        route_name="default",
        start_time=timestamp_pb2.Timestamp(seconds=1_780_000_000, nanos=123_000_000),
        duration=duration_pb2.Duration(seconds=0, nanos=4_500_000),
        response_flags=al.ResponseFlags(
            upstream_connection_failure=True, upstream_retry_limit_exceeded=True
        ),
    )
    if tls:
        common.tls_properties.CopyFrom(_tls(SPIFFE, served_as))
    request = al.HTTPRequestProperties(
        request_method=base_pb2.POST,
        scheme="https",
        authority="api.shop",
        path=path,
        request_id=rid,
        user_agent="curl/8",
        referer=referer,
        request_body_bytes=42,
    )
    request.request_headers.update(request_headers or {})
    response = al.HTTPResponseProperties(
        response_code_details="via_upstream", response_body_bytes=7
    )
    if status is not None:
        response.response_code.CopyFrom(wrappers_pb2.UInt32Value(value=status))
    response.response_headers.update(response_headers or {})
    return al.HTTPAccessLogEntry(
        common_properties=common,
        protocol_version=al.HTTPAccessLogEntry.HTTP2,
        request=request,
        response=response,
    )


def als_messages(
    batches: list[list[al.HTTPAccessLogEntry]],
    node: str = SIDECAR_NODE,
    cluster: str = "web.shop",
) -> Iterator[als_pb2.StreamAccessLogsMessage]:
    """One access-log stream: the identifier (what the reporter says it is) on
    the first message, then a message per batch."""
    ident = als_pb2.StreamAccessLogsMessage.Identifier(
        node=base_pb2.Node(id=node, cluster=cluster), log_name="extproc-audit"
    )
    for i, batch in enumerate(batches):
        msg = als_pb2.StreamAccessLogsMessage(
            http_logs=als_pb2.StreamAccessLogsMessage.HTTPAccessLogEntries(log_entry=batch)
        )
        if i == 0:
            msg.identifier.CopyFrom(ident)
        yield msg
