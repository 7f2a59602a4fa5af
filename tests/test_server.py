"""The audit server over real gRPC: hostile or broken ext_proc streams get a
clear status and never disturb other streams; health follows the lifecycle."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.attacks import HOSTILE_STREAMS, UNDECODABLE
from tests.conftest import AuditStack, read_entries
from tests.messages import ALS_METHOD, EXT_PROC_METHOD, request_headers, response_headers


@pytest.fixture
def server(make_stack: Any) -> Iterator[AuditStack]:
    # Both phases, so that every message kind can be thrown at the server.
    stack = make_stack(extra_args=["--ext-proc-responses"])
    stack.start_server()
    yield stack


@pytest.fixture
def stub(server: AuditStack) -> Iterator[Any]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield pb_grpc.ExternalProcessorStub(channel)


def _exchange(stub: Any, messages: list[pb.ProcessingRequest]) -> list[pb.ProcessingResponse]:
    return list(stub.Process(iter(messages), timeout=10))


def test_valid_exchange_is_continued_after_logging(stub: Any, server: AuditStack) -> None:
    replies = _exchange(stub, [request_headers(rid="good-1"), response_headers("204")])
    assert [r.WhichOneof("response") for r in replies] == ["request_headers", "response_headers"]
    assert server.stop_server() == 0
    entries = [e for e in read_entries(server.store_url, server.log_id) if e["kind"] != "writer"]
    assert [(e["kind"], e["rid"]) for e in entries] == [
        ("request", "good-1"),
        ("response", "good-1"),
    ]
    assert entries[1]["resp"]["status"] == 204


def test_request_only_stream_ends_after_the_request_entry(make_stack: Any) -> None:
    # The default: one round trip; ending the stream tells Envoy the processing
    # is complete, and the outcome comes by the access-log stream.
    stack = make_stack()
    stack.start_server()

    def messages() -> Iterator[pb.ProcessingRequest]:
        yield request_headers(rid="one-trip")
        threading.Event().wait(30)  # Envoy keeps its side open

    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        call = pb_grpc.ExternalProcessorStub(channel).Process(messages(), timeout=10)
        replies = list(call)
        assert call.code() == grpc.StatusCode.OK
    assert [r.WhichOneof("response") for r in replies] == ["request_headers"]
    assert stack.stop_server() == 0
    kinds = [e["kind"] for e in read_entries(stack.store_url, stack.log_id)]
    assert kinds == ["writer", "request", "writer"]


def test_server_ends_the_stream_after_the_response_reply(stub: Any) -> None:
    # The client never half-closes: the server must end the stream with OK on
    # its own once the exchange is complete (no cancel, see grpc#43360).
    def messages() -> Iterator[pb.ProcessingRequest]:
        yield request_headers(rid="ends-1")
        yield response_headers()
        threading.Event().wait(30)  # keep the request side open

    call = stub.Process(messages(), timeout=10)
    replies = list(call)
    assert [r.WhichOneof("response") for r in replies] == ["request_headers", "response_headers"]
    assert call.code() == grpc.StatusCode.OK


@pytest.mark.parametrize(("messages", "code"), HOSTILE_STREAMS.values(), ids=HOSTILE_STREAMS)
def test_hostile_stream_gets_a_status_and_others_are_unaffected(
    stub: Any, server: AuditStack, messages: list[Any], code: str
) -> None:
    with ThreadPoolExecutor(4) as pool:
        good = [
            pool.submit(_exchange, stub, [request_headers(rid=f"ok-{i}"), response_headers()])
            for i in range(20)
        ]
        with pytest.raises(grpc.RpcError) as failure:
            _exchange(stub, messages)
        assert all(len(f.result()) == 2 for f in good)
    assert failure.value.code().name == code
    assert failure.value.details()  # a message a human can act on
    assert len(_exchange(stub, [request_headers(), response_headers()])) == 2


@pytest.mark.parametrize("method", [EXT_PROC_METHOD, ALS_METHOD], ids=["ext_proc", "access_log"])
def test_undecodable_bytes_are_refused_without_a_failure_logged(
    server: AuditStack, stub: Any, method: str
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        kind = channel.stream_unary if method == ALS_METHOD else channel.stream_stream
        call = kind(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as failure:
            reply = call(iter([UNDECODABLE]), timeout=10)
            if method == EXT_PROC_METHOD:
                list(reply)  # the stream's status comes with its end
    # grpc.aio cannot decode the message: the caller's doing, a status naming it,
    # no failure of the server logged (with its traceback); the server goes on.
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failure.value
    assert "protobuf decoding failed" in (failure.value.details() or "")
    assert len(_exchange(stub, [request_headers(), response_headers()])) == 2
    assert server.stop_server() == 0
    log = server.server_log()
    assert "failed" not in log and "Traceback" not in log and "traceback" not in log, log


def test_health_serving_then_exit_zero_on_sigterm(server: AuditStack) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "envoy.service.ext_proc.v3.ExternalProcessor"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert server.stop_server(signal.SIGTERM) == 0
    assert "final checkpoint published" in server.server_log()
