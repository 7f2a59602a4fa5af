"""The messages scripts/bench_hostile.py sends: the shapes (normal, 12k, 60k,
wide, als5k, als500k), their serialized bytes, and a raw gRPC client that
sends pre-serialized ext_proc and access-log messages and checks the replies."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.accesslog.v3 import als_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
ALS_METHOD = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
MAX_MESSAGE = 4 * 1024 * 1024  # serve --max-message-bytes for this benchmark

# A typical request's headers (also the log core's sample entry, bench_core.py).
NORMAL_HEADERS = {
    ":authority": "orders.shop.svc.cluster.local:8080",
    ":path": "/api/v1/orders/1234?page=2",
    ":method": "GET",
    ":scheme": "https",
    "user-agent": "python-requests/2.32.3",
    "accept": "application/json",
    "authorization": "Bearer eyJhbGciOi.payload.sig",
    "x-forwarded-proto": "https",
    "x-request-id": "7e59400f-0006-4cb6-9fab-22160a9ab58f",
    "x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7",
    "x-envoy-attempt-count": "1",
}


@dataclass(frozen=True)
class Shape:
    name: str
    headers: int  # extra headers after the normal ones
    value_bytes: int
    what: str
    entries: int = 0  # > 0: an access-log message of this many empty HTTP entries instead

    @property
    def access_log(self) -> bool:
        return self.entries > 0


SHAPES = {
    "normal": Shape("normal", 0, 0, "11 typical headers"),
    "12k": Shape("12k", 12_000, 40, "12,000 headers, 40-byte values"),
    "60k": Shape("60k", 60_000, 57, "60,000 headers, 57-byte values"),
    "wide": Shape("wide", 2_080, 2_000, "2,080 headers, 2,000-byte values"),
    "als5k": Shape("als5k", 0, 0, "access log: 5,000 empty entries", entries=5_000),
    "als500k": Shape("als500k", 0, 0, "access log: 500,000 empty entries", entries=500_000),
}
SIDE_SHAPES = ("60k", "wide")  # the 4 MiB ones, sent during phase 2
ALS_SIDE_SHAPES = ("als500k",)  # the security review's access-log message, phase 2's als phase
FLOOD_SHAPES = ("als5k",)  # the largest access-log message the budgets admit, the flood phase


@functools.cache
def message(shape: Shape) -> bytes:
    """The serialized message of this shape (ext_proc or access log)."""
    return als_message(shape) if shape.access_log else request_message(shape)


def als_message(shape: Shape) -> bytes:
    """A serialized StreamAccessLogsMessage: an identifier and `shape.entries`
    empty HTTPAccessLogEntry (2 bytes each on the wire)."""
    msg = als_pb2.StreamAccessLogsMessage()
    msg.identifier.node.id = "bench-hostile"
    msg.identifier.log_name = "bench-hostile"
    entries = msg.http_logs.log_entry
    for _ in range(shape.entries):
        entries.add()
    data: bytes = msg.SerializeToString()
    if len(data) + 5 > MAX_MESSAGE:
        raise SystemExit(f"{shape.name}: {len(data)} bytes does not fit {MAX_MESSAGE}")
    return data


def request_message(shape: Shape) -> bytes:
    """A serialized ProcessingRequest carrying request_headers of this shape."""
    headers = [
        base_pb2.HeaderValue(key=k, raw_value=v.encode())
        for k, v in {**NORMAL_HEADERS, "x-request-id": f"{shape.name}-bench"}.items()
    ]
    value = (b"0123456789abcdef" * (shape.value_bytes // 16 + 1))[: shape.value_bytes]
    headers += [
        base_pb2.HeaderValue(key=f"h{i:05d}", raw_value=value) for i in range(shape.headers)
    ]
    msg = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(headers=headers), end_of_stream=True
        )
    )
    data: bytes = msg.SerializeToString()
    if len(data) + 5 > MAX_MESSAGE:  # 5: gRPC's length prefix
        raise SystemExit(f"{shape.name}: {len(data)} bytes does not fit {MAX_MESSAGE}")
    return data


RESPONSE = pb.ProcessingResponse  # for parsing replies
RESPONSE_HEADERS: bytes = pb.ProcessingRequest(
    response_headers=pb.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[
                base_pb2.HeaderValue(key=":status", raw_value=b"200"),
                base_pb2.HeaderValue(key="content-type", raw_value=b"application/json"),
            ]
        ),
        end_of_stream=True,
    )
).SerializeToString()


class Client:
    """Raw ext_proc and access-log streams over one gRPC channel: pre-serialized
    bytes in, replies checked; each exchange on its own stream."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(
            address, options=[("grpc.max_send_message_length", -1)]
        )
        self._call = self.channel.stream_stream(
            METHOD, request_serializer=None, response_deserializer=None
        )
        self._als = self.channel.stream_unary(
            ALS_METHOD, request_serializer=None, response_deserializer=None
        )

    def send(self, shape: Shape, data: bytes, timeout: float = 60.0) -> tuple[float, str]:
        """Seconds until the answer, and the gRPC status: an ext_proc exchange
        (always OK) or one access-log message on its own stream (OK, or
        RESOURCE_EXHAUSTED when a budget refused it); anything else raises."""
        if not shape.access_log:
            return self.exchange(data, timeout), "OK"
        started = time.perf_counter()
        try:
            self._als(iter([data]), timeout=timeout)
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()  # a grpc.Call
            if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
        return time.perf_counter() - started, code.name

    def exchange(self, request: bytes, timeout: float = 60.0) -> float:
        """Seconds until the request_headers reply; raises if the exchange fails.

        The server either ends the stream after the request reply (the default:
        the outcome comes by the access-log service) or also answers the
        response headers (`--ext-proc-responses`); both end with status OK.
        """
        started = time.perf_counter()
        replies = self._call(iter([request, RESPONSE_HEADERS]), timeout=timeout)
        first = RESPONSE.FromString(next(replies))
        elapsed = time.perf_counter() - started
        rest = [RESPONSE.FromString(r).WhichOneof("response") for r in replies]
        if first.WhichOneof("response") != "request_headers" or rest not in (
            [],
            ["response_headers"],
        ):
            raise RuntimeError(f"unexpected replies: {first.WhichOneof('response')}, {rest}")
        return elapsed

    def close(self) -> None:
        self.channel.close()
