"""What one access-log message, stream and reporter may cost (issue 16, attack 2).

A security review sent one 0.95 MiB StreamAccessLogsMessage holding 500,000
empty HTTPAccessLogEntry: the server built 500,000 entries in one synchronous
batch, its event loop was blocked 6.3-11 s (every enforce request meanwhile
missed its deadline: a fail-closed outage), RSS reached 2.5 GB and the backlog
bound was passed. Every budget here is checked when a message's entry count is
known and before any entry of it is built: entries per message, per second per
stream and per second per reporter (across its streams); each entry counts
against the backlog; the event loop yields between chunks.

The servicer's intake runs in-process (a real AuditLog on a temporary WAL, a
fake gRPC context) for the budgets and the fuzz tests; the attack itself is
sent over real gRPC to `serve` with real Envoy in front.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2 as al
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from extproc import processes
from extproc.core.redact import RedactionPolicy
from extproc.log.appender import AuditLog
from extproc.log.wal import WAL
from extproc.server import access
from extproc.server.access import AccessCapture, AccessLimits, AccessLogServicer, OutcomeMatcher
from extproc.server.builder import Claims
from extproc.server.identify import StreamIdentifier
from extproc.trust.policy import ReporterPolicy
from extproc.trust.reporter import Reporter
from tests.attacks import HOSTILE_ENTRIES, empty_entries_message
from tests.budget import FUZZ, MIB, within_budget
from tests.conftest import AuditStack, read_entries
from tests.helpers import run
from tests.integration.test_appender import open_faked_log
from tests.messages import ALS_METHOD

SECRET = "secret-S1"  # request data an exception may carry: never logged


def http_message(count: int, rid: str = "r") -> als_pb2.StreamAccessLogsMessage:
    msg = als_pb2.StreamAccessLogsMessage()
    for i in range(count):
        e = msg.http_logs.log_entry.add()
        e.request.request_id = f"{rid}-{i}"
        e.request.path = "/orders"
        e.request.request_method = base_pb2.GET
    return msg


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- the intake in-process ---------------------------------------------------------------


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class FakeContext:
    """What the servicer asks of grpc.aio's context; abort() raises as grpc's does."""

    def peer(self) -> str:
        return "ipv4:10.0.0.1:40000"

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class Identified(StreamIdentifier):
    """The servicers' StreamIdentifier, with every stream this reporter."""

    def __init__(self, reporter: Reporter) -> None:
        super().__init__(ReporterPolicy(allow_unauthenticated=True))
        self.reporter = reporter

    async def __call__(self, context: Any) -> Reporter:
        return self.reporter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingCapture(AccessCapture):
    """The real capture, counting the entries it built (`fail_at`: raise on that one)."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__(RedactionPolicy())
        self.built = 0
        self.fail_at = fail_at

    def fields(self, e: Any, claims: Claims | None = None) -> dict[str, Any]:
        if self.built == self.fail_at:
            raise RuntimeError(f"capture failed on {SECRET}")
        self.built += 1
        return super().fields(e, claims)


def reporter(name: str) -> Reporter:
    return Reporter("mtls", f"spiffe://cluster.local/ns/test/sa/{name}", "ipv4:10.0.0.1:40000")


class Intake:
    """An AccessLogServicer on a real AuditLog (temporary WAL, syncs faked)."""

    def __init__(
        self,
        log: AuditLog,
        limits: AccessLimits,
        who: Reporter,
        capture: CountingCapture | None = None,
    ) -> None:
        self.log = log
        self.clock = Clock()
        self.capture = capture or CountingCapture()
        self.who = who
        self.servicer = AccessLogServicer(
            log,
            self.capture,
            Identified(who),
            OutcomeMatcher(),
            limits,
            clock=self.clock,
        )

    async def stream(
        self, messages: Iterable[als_pb2.StreamAccessLogsMessage], who: Reporter | None = None
    ) -> str:
        """One access-log stream; its gRPC status ("OK" or the code of the abort)."""
        if who is not None:
            self.servicer.identify = Identified(who)

        async def requests() -> AsyncIterator[als_pb2.StreamAccessLogsMessage]:
            for msg in messages:
                yield msg

        try:
            await self.servicer.StreamAccessLogs(requests(), FakeContext())
        except Aborted as e:
            return str(e.code.name)
        finally:
            self.servicer.identify = Identified(self.who)
        return "OK"


def with_intake(
    scenario: Callable[[Intake], Any],
    limits: AccessLimits,
    who: Reporter,
    capture: CountingCapture | None = None,
    **log_options: Any,
) -> None:
    async def main() -> None:
        with tempfile.TemporaryDirectory(prefix="intake-") as wal_dir:
            log, _ = open_faked_log(WAL(Path(wal_dir), sync=False), **log_options)
            try:
                await scenario(Intake(log, limits, who, capture))
                await log.flush()
            finally:
                log.close()

    run(main, timeout=60)


@pytest.mark.parametrize(
    ("count", "status"),
    [(0, "OK"), (1, "OK"), (100, "OK"), (101, "RESOURCE_EXHAUSTED"), (5000, "RESOURCE_EXHAUSTED")],
)
def test_access_log_message_over_its_entry_budget_is_refused_before_any_entry_is_built(
    count: int, status: str
) -> None:
    who = reporter(f"entries-{count}")
    label = who.id
    before = metric("extproc_audit_access_budget_refused_total", reporter=label, budget="message")

    async def scenario(intake: Intake) -> None:
        assert await intake.stream([http_message(count)]) == status
        admitted = count if status == "OK" else 0
        assert intake.capture.built == admitted and intake.log.size == admitted
        assert intake.log.reserved == 0

    with_intake(scenario, AccessLimits(max_entries=100), who)
    refused = metric("extproc_audit_access_budget_refused_total", reporter=label, budget="message")
    assert refused - before == (0 if status == "OK" else count)


def test_review_message_of_500k_entries_is_refused_with_a_clear_status() -> None:
    msg = als_pb2.StreamAccessLogsMessage.FromString(empty_entries_message(HOSTILE_ENTRIES))

    async def scenario(intake: Intake) -> None:
        with pytest.raises(Aborted) as refused:
            await intake.servicer.StreamAccessLogs(_aiter([msg]), FakeContext())
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details == (
            "access-log message of 500000 entries refused: over --max-access-log-entries (5000)"
        )
        assert intake.capture.built == 0

    with_intake(scenario, AccessLimits(), reporter("review"))


def test_stream_over_its_rate_is_refused_and_more_streams_get_no_more_than_the_reporter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    who, other = reporter("rate"), reporter("rate-other")
    limits = AccessLimits(max_entries=100, stream_rate=100, reporter_rate=150)

    async def scenario(intake: Intake) -> None:
        # One second's worth at once, then nothing more until the clock moves.
        assert await intake.stream([http_message(60), http_message(60)]) == "RESOURCE_EXHAUSTED"
        # A second stream of the same reporter: its own stream budget is full,
        # the reporter's has 90 left.
        assert await intake.stream([http_message(80)]) == "OK"
        assert await intake.stream([http_message(20)]) == "RESOURCE_EXHAUSTED"
        # Another reporter is not affected.
        assert await intake.stream([http_message(80)], who=other) == "OK"
        intake.clock.now += 1.0  # a second later: budgets refilled
        assert await intake.stream([http_message(80)]) == "OK"
        assert intake.capture.built == 60 + 80 + 80 + 80 == intake.log.size

    with caplog.at_level(logging.WARNING, logger="extproc.server.access"):
        with_intake(scenario, limits, who)
    refused = {
        b: metric("extproc_audit_access_budget_refused_total", reporter=who.id, budget=b)
        for b in access.BUDGETS
    }
    assert refused == {"message": 0, "stream_rate": 60, "reporter_rate": 20}
    # Logged, at most one line per interval.
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert lines == [
        "access-log message of 60 entries refused: over --max-access-log-rate "
        f"(100 entries/s per stream) (reporter {who.id})"
    ]


def test_large_message_yields_the_event_loop_between_chunks() -> None:
    count = 2000
    turns: list[int] = []

    async def scenario(intake: Intake) -> None:
        done = asyncio.Event()

        async def other_stream() -> None:  # what an enforce request needs: loop turns
            while not done.is_set():
                turns.append(intake.log.size)
                await asyncio.sleep(0)

        probe = asyncio.create_task(other_stream())
        await asyncio.sleep(0)
        assert await intake.stream([http_message(count)]) == "OK"
        done.set()
        await probe
        assert intake.log.size == count

    with_intake(scenario, AccessLimits(), reporter("chunks"))
    # The other task ran between the chunks, each time seeing more of the message logged.
    seen = sorted({size for size in turns if 0 < size < count})
    assert len(seen) >= count // access.ACCESS_LOG_CHUNK - 1, seen


def test_message_that_does_not_fit_the_backlog_is_dropped_whole_before_any_entry_is_built() -> None:
    before = metric("extproc_audit_dropped_total", reason="backpressure")

    async def scenario(intake: Intake) -> None:
        # 1,000 entries at the first estimate (512 bytes) do not fit in 64 KiB.
        assert await intake.stream([http_message(1000), http_message(10)]) == "OK"
        assert intake.capture.built == 10 and intake.log.size == 10
        assert intake.log.reserved == 0

    with_intake(scenario, AccessLimits(), reporter("backlog"), max_backlog_bytes=64 * 1024)
    assert metric("extproc_audit_dropped_total", reason="backpressure") - before == 1000


def test_stream_ended_between_chunks_gives_back_the_rest_and_counts_it() -> None:
    before = metric("extproc_audit_dropped_total", reason="stream_ended")
    count = 2000

    async def scenario(intake: Intake) -> None:
        task = asyncio.create_task(intake.stream([http_message(count)]))
        while intake.log.size == 0:  # noqa: ASYNC110 - every turn: until the first chunk is in
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        logged = intake.log.size
        assert 0 < logged < count and logged % access.ACCESS_LOG_CHUNK == 0
        assert intake.log.reserved == 0
        assert metric("extproc_audit_dropped_total", reason="stream_ended") - before == (
            count - logged
        )

    with_intake(scenario, AccessLimits(), reporter("ended"))


def test_entry_that_fails_to_build_ends_the_stream_with_internal_and_no_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    capture = CountingCapture(fail_at=300)

    async def scenario(intake: Intake) -> None:
        assert await intake.stream([http_message(1000)]) == "INTERNAL"
        assert intake.log.size == 300  # what was built before it stays logged
        assert intake.log.reserved == 0

    with caplog.at_level(logging.ERROR, logger="extproc.server.access"):
        with_intake(scenario, AccessLimits(), reporter("internal"), capture)
    assert "failed (RuntimeError)" in caplog.text
    assert SECRET not in caplog.text


async def _aiter(
    messages: Iterable[als_pb2.StreamAccessLogsMessage],
) -> AsyncIterator[als_pb2.StreamAccessLogsMessage]:
    for msg in messages:
        yield msg


# --- fuzz: arbitrary and structurally generated messages through the intake ------------------

FUZZ_LIMITS = AccessLimits(max_entries=40, stream_rate=100, reporter_rate=150)
_text = st.text(max_size=40)
_entry = st.builds(
    lambda path, rid, method, status, headers, sans, partial: _make_entry(
        path, rid, method, status, headers, sans, partial
    ),
    _text,
    _text,
    st.integers(-5, 20),
    st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    st.dictionaries(_text, _text, max_size=4),
    st.lists(_text, max_size=3),
    st.booleans(),
)


def _make_entry(
    path: str,
    rid: str,
    method: int,
    status: int | None,
    headers: dict[str, str],
    sans: list[str],
    partial: bool,
) -> al.HTTPAccessLogEntry:
    e = al.HTTPAccessLogEntry()
    e.request.path = path
    e.request.request_id = rid
    e.request.request_method = method  # out of range too: upb keeps unknown enum values
    e.request.request_headers.update(headers)
    if status is not None:
        e.response.response_code.value = status
    for san in sans:
        e.common_properties.tls_properties.peer_certificate_properties.subject_alt_name.add(uri=san)
    e.common_properties.intermediate_log_entry = partial
    return e


@st.composite
def _messages(draw: st.DrawFn) -> als_pb2.StreamAccessLogsMessage:
    msg = als_pb2.StreamAccessLogsMessage()
    if draw(st.booleans()):
        msg.identifier.node.id = draw(_text)
        msg.identifier.node.cluster = draw(_text)
        msg.identifier.log_name = draw(_text)
    kind = draw(st.sampled_from(["http", "http", "tcp", "none"]))
    if kind == "http":
        # Many entries, most of them alike or empty (the review's shape), around the bounds.
        distinct = draw(st.lists(_entry, max_size=4))
        count = draw(st.one_of(st.integers(0, 45), st.sampled_from([30, 39, 40, 41, 120])))
        entries = msg.http_logs.log_entry
        for i in range(count):
            if distinct:
                entries.append(distinct[i % len(distinct)])
            else:
                entries.add()
    elif kind == "tcp":
        for _ in range(draw(st.integers(0, 200))):
            msg.tcp_logs.log_entry.add()
    return msg


def _model(messages: list[als_pb2.StreamAccessLogsMessage], reporter_left: float) -> list[int]:
    """The entries each http message may append, in order, until the first refusal
    (the clock stands still: no refill)."""
    stream_left: float = FUZZ_LIMITS.stream_rate
    admitted = []
    for msg in messages:
        if msg.WhichOneof("log_entries") != "http_logs":
            continue
        n = len(msg.http_logs.log_entry)
        if n > FUZZ_LIMITS.max_entries or n > stream_left or n > reporter_left:
            admitted.append(-n)  # refused: the stream ends here
            break
        stream_left -= n
        reporter_left -= n
        admitted.append(n)
    return admitted


def _fuzz_intake(streams: list[list[als_pb2.StreamAccessLogsMessage]]) -> None:
    """Each stream through one servicer (one reporter, the clock standing still):
    only a gRPC status comes out, and what is appended is exactly what the
    budgets admit, never more."""

    async def scenario(intake: Intake) -> None:
        reporter_left: float = FUZZ_LIMITS.reporter_rate
        for messages in streams:
            expected = _model(messages, reporter_left)
            size = intake.log.size
            status = await intake.stream(messages)
            admitted = sum(n for n in expected if n > 0)
            reporter_left -= admitted
            assert status == ("RESOURCE_EXHAUSTED" if expected and expected[-1] < 0 else "OK")
            assert intake.log.size - size == admitted
            assert intake.log.reserved == 0

    with within_budget(memory=8 * MIB, cpu=5.0):
        with_intake(scenario, FUZZ_LIMITS, reporter("fuzz"))


@FUZZ
@given(st.lists(st.lists(_messages(), max_size=5), min_size=1, max_size=3))
def test_generated_access_log_streams_get_a_status_and_never_pass_a_budget_fuzz(
    streams: list[list[als_pb2.StreamAccessLogsMessage]],
) -> None:
    _fuzz_intake(streams)


@FUZZ
@given(st.lists(st.binary(max_size=2048), min_size=1, max_size=3))
def test_arbitrary_access_log_bytes_get_a_status_and_never_pass_a_budget_fuzz(
    raw: list[bytes],
) -> None:
    messages = []
    for data in raw:
        try:  # grpc's deserializer: what does not parse ends the stream before us
            messages.append(als_pb2.StreamAccessLogsMessage.FromString(data))
        except DecodeError:
            continue
    _fuzz_intake([messages])


# --- the attack over real gRPC, real Envoy in front -----------------------------------------


def _send_raw(address: str, data: bytes, timeout: float = 30.0) -> grpc.RpcError | None:
    """One access-log stream carrying these bytes; the error it ended with, if any."""
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_unary(ALS_METHOD, request_serializer=None, response_deserializer=None)
        try:
            call(iter([data]), timeout=timeout)
        except grpc.RpcError as e:
            return e
    return None


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text: str = r.read().decode()
    return text


def _sample(text: str, series: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(series))


def _peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


@pytest.mark.envoy
def test_500k_entry_access_log_message_is_refused_while_enforce_requests_go_on(
    make_stack: Any,
) -> None:
    metrics_port = processes.free_port()
    stack: AuditStack = make_stack(
        extra_args=["--metrics-listen", f"127.0.0.1:{metrics_port}"]
    ).start()
    assert stack.server is not None
    address = f"127.0.0.1:{stack.grpc_port}"
    hostile = empty_entries_message(HOSTILE_ENTRIES)
    assert len(hostile) < 1 << 20  # under --max-message-bytes: it reaches the servicer
    errors: list[grpc.RpcError | None] = []
    stop = threading.Event()

    def attacker() -> None:
        while not stop.is_set() and len(errors) < 8:
            errors.append(_send_raw(address, hostile))
            stop.wait(0.2)

    thread = threading.Thread(target=attacker)
    thread.start()
    rounds = []
    try:
        while len(errors) < 3:  # enforce requests all along, until three were refused
            rounds.append(stack.send(20, concurrency=4))
    finally:
        stop.set()
        thread.join()
    request_ids = [rid for r in rounds for rid in r.request_ids]
    for r in rounds:
        assert r.errors == 0 and 503 not in r.statuses, r.statuses
    for e in errors:
        assert e is not None and e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "500000 entries refused" in e.details()
    text = _scrape(metrics_port)
    assert _sample(
        text,
        'extproc_audit_access_budget_refused_total{budget="message",reporter="unauthenticated"}',
    ) == HOSTILE_ENTRIES * len(errors)
    assert _sample(text, 'extproc_audit_dropped_total{reason="budget"}') == (
        HOSTILE_ENTRIES * len(errors)
    )
    # Before the budgets the server peaked at 2.5 GB on one such message.
    assert _peak_rss_mb(stack.server.pid) < 400
    assert stack.stop_server() == 0
    entries = read_entries(stack.store_url, stack.log_id)
    requests = {e["rid"] for e in entries if e["kind"] == "request"}
    outcomes = {e["rid"] for e in entries if e["kind"] == "access" and "ref" in e}
    assert request_ids and set(request_ids) <= requests  # durable before they were forwarded
    assert set(request_ids) <= outcomes  # Envoy's own access-log stream unaffected
    assert not [e for e in entries if e.get("node") == "attacker"]
    assert stack.verify().returncode == 0


def test_access_log_rate_is_set_by_option_or_environment_and_refused_over_grpc(
    make_stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXTPROC_AUDIT_MAX_ACCESS_LOG_RATE", "100")
    stack: AuditStack = make_stack(extra_args=["--max-access-log-entries", "60"])
    stack.start_server()
    address = f"127.0.0.1:{stack.grpc_port}"
    sixty = http_message(60, "a").SerializeToString()
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_unary(ALS_METHOD, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as refused:
            call(iter([sixty, sixty]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "over --max-access-log-rate (100 entries/s" in refused.value.details()
        too_many = http_message(61, "b").SerializeToString()
        with pytest.raises(grpc.RpcError) as refused:
            call(iter([too_many]), timeout=10)
        assert "over --max-access-log-entries (60)" in refused.value.details()
    assert stack.stop_server() == 0
    access_entries = [
        e for e in read_entries(stack.store_url, stack.log_id) if e["kind"] == "access"
    ]
    assert [e["rid"] for e in access_entries] == [f"a-{i}" for i in range(60)]
