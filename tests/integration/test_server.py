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

from extproc import processes
from extproc.envoyconf import GRACEFUL_CLOSE
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


class _HeldOpen:
    """A client's request side: the messages, then open until release() (Envoy's
    half-close comes when its HTTP request ends)."""

    def __init__(self, *messages: pb.ProcessingRequest) -> None:
        self.messages = messages
        self.released = threading.Event()

    def __iter__(self) -> Iterator[pb.ProcessingRequest]:
        yield from self.messages
        self.released.wait(30)

    def release(self) -> None:
        self.released.set()


@pytest.mark.parametrize("phases", ["request", "request+response"])
def test_answered_stream_is_never_ended_first_so_no_side_resets_it(
    make_stack: Any, phases: str
) -> None:
    """Ending the stream right after the reply makes Envoy (or the server's own
    sidecar) reset it, and a sidecar closes a connection whose peer resets
    streams past 33/s, with the access-log stream on it (sidecar-reset-limit):
    the server waits for Envoy's half-close and only then ends it, with OK."""
    both = phases == "request+response"
    stack = make_stack(extra_args=["--ext-proc-responses"] if both else [])
    stack.start_server()
    requests = [request_headers(rid=f"one-trip-{phases}")]
    requests += [response_headers()] if both else []
    client = _HeldOpen(*requests)
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        call = pb_grpc.ExternalProcessorStub(channel).Process(iter(client), timeout=10)
        replies = [next(call) for _ in requests]
        assert [r.WhichOneof("response") for r in replies] == [
            r.WhichOneof("request") for r in requests
        ]
        ended = threading.Event()
        call.add_done_callback(lambda _: ended.set())
        assert not ended.wait(1.0), f"the server ended the stream first: {call.code()}"
        client.release()  # Envoy's half-close
        assert list(call) == []
        assert call.code() == grpc.StatusCode.OK
    assert stack.stop_server() == 0
    kinds = [e["kind"] for e in read_entries(stack.store_url, stack.log_id)]
    assert kinds == ["writer", "request", *(["response"] if both else []), "writer"]


def test_drain_ends_answered_streams_with_ok_not_a_failure(make_stack: Any) -> None:
    """On SIGTERM the streams waiting for Envoy's half-close end with OK when
    admission ends: cancelled at the listener's stop, Envoy would answer their
    requests (already forwarded upstream) with its error status."""
    stack = make_stack(extra_args=["--drain-timeout", "20"])
    stack.start_server()
    clients = [_HeldOpen(request_headers(rid=f"held-{i}")) for i in range(5)]
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        calls = [
            pb_grpc.ExternalProcessorStub(channel).Process(iter(c), timeout=30) for c in clients
        ]
        for call in calls:
            assert next(call).WhichOneof("response") == "request_headers"
        assert stack.server is not None
        stack.server.send_signal(signal.SIGTERM)
        for call in calls:
            assert list(call) == []
            assert call.code() == grpc.StatusCode.OK
        for client in clients:
            client.release()
    assert stack.stop_server() == 0
    drain = stack.server_log().split("shutting down", 1)[1]
    assert "ended 5 answered ext_proc streams with OK" in drain
    assert "reset after its reply" not in drain and "failed" not in drain


def test_reset_after_the_reply_is_counted_and_named(make_stack: Any) -> None:
    """A reporter that resets its streams instead of half-closing them (an Envoy
    without ext_proc_graceful_grpc_close) is what the own sidecar rate-limits:
    the server says which reporter, and counts it."""
    stack = make_stack()
    stack.start_server()
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        # gRPC reports a reset either as a cancel or, depending on which of the
        # stream's events it sees first, as an end of messages: some are counted
        # (how many depends on timing: reset until one is, 600 at most).
        for i in range(600):
            client = _HeldOpen(request_headers(rid=f"reset-after-reply-{i}"))
            call = pb_grpc.ExternalProcessorStub(channel).Process(iter(client), timeout=10)
            assert next(call).WhichOneof("response") == "request_headers"
            call.cancel()
            client.release()
            if i % 30 == 29 and "reset after its reply" in stack.server_log():
                break
    processes.wait_until(
        lambda: "reset after its reply" in stack.server_log(), "the reset logged", stack.server
    )
    line = next(x for x in stack.server_log().splitlines() if "reset after its reply" in x)
    assert "unauthenticated" in line and GRACEFUL_CLOSE in line
    assert stack.stop_server() == 0


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
