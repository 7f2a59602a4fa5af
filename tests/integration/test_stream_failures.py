"""A hostile `:status` and unexpected failures in a stream handler.

`"²00".isdigit()` is True and int() takes it: the review's forged status
ended each stream with INTERNAL and a full traceback in the log, with no
rate limit. A status is now data (three ASCII digits, 100-999, else `null`
with `status_raw`), and a failure the code did not expect logs at most one
line per interval however many streams hit it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from extproc.core.redact import RedactionPolicy
from extproc.server.capture import Capturer
from extproc.server.identify import StreamIdentifier
from extproc.server.servicer import AuditServicer
from extproc.trust.policy import ReporterPolicy
from tests.attacks import FORGED_STATUSES
from tests.conftest import AuditStack, read_entries
from tests.integration.test_server import server, stub  # noqa: F401
from tests.messages import request_headers, response_headers


def test_non_ascii_status_is_stored_as_data_not_an_internal_error(
    stub: Any,  # noqa: F811
    server: AuditStack,  # noqa: F811
) -> None:
    for i, status in enumerate(FORGED_STATUSES):
        replies = list(
            stub.Process(iter([request_headers(rid=f"s{i}"), response_headers(status)]), timeout=10)
        )
        assert [r.WhichOneof("response") for r in replies] == [
            "request_headers",
            "response_headers",
        ]
    assert server.stop_server() == 0
    responses = [
        e for e in read_entries(server.store_url, server.log_id) if e["kind"] == "response"
    ]
    assert [(e["resp"]["status"], e["resp"]["status_raw"]) for e in responses] == [
        (None, "²00"),
        (None, "２00"),
        (None, "20x"),
    ]
    assert "Traceback" not in server.server_log() and "stream failed" not in server.server_log()


class _Aborted(Exception):
    pass


class _Context:
    """grpc.aio's ServicerContext, as far as the servicer uses it: the stream's
    messages come by read(), then EOF (the client's half-close)."""

    def __init__(self, messages: list[Any]) -> None:
        self._messages = list(messages)

    async def read(self) -> Any:
        return self._messages.pop(0) if self._messages else grpc.aio.EOF

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise _Aborted(code)


class _BrokenCapturer(Capturer):
    def request(self, msg: Any, claims: Any = None) -> dict[str, Any]:
        raise RuntimeError("request data in the message: " + "-".join(["SECRET", "S1"]))


def test_unexpected_failures_log_one_line_per_interval_without_their_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    servicer = AuditServicer(
        None,  # type: ignore[arg-type]
        _BrokenCapturer(RedactionPolicy()),
        identify=StreamIdentifier(ReporterPolicy(allow_unauthenticated=True)),
    )

    async def one_stream() -> None:
        async def unused() -> AsyncIterator[pb.ProcessingRequest]:
            raise AssertionError("the servicer reads with context.read()")
            yield  # an async generator

        context = _Context([request_headers()])
        with pytest.raises(_Aborted) as aborted:
            async for _ in servicer.Process(unused(), context):
                pass
        assert aborted.value.args == (grpc.StatusCode.INTERNAL,)

    async def many() -> None:
        for _ in range(50):
            await one_stream()

    with caplog.at_level(logging.ERROR, logger="extproc.server.servicer"):
        asyncio.run(many())
    lines = [r.getMessage() for r in caplog.records if "stream failed" in r.getMessage()]
    assert len(lines) == 1 and "RuntimeError" in lines[0]
    assert "SECRET-S1" not in caplog.text
