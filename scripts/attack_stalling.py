"""Stalling or stopping the server (docs/THREATS.md): hostile messages, floods and
loads, each measured against its budget while honest traffic flows.
"""

from __future__ import annotations

import asyncio
import threading
import time
from functools import partial
from typing import Any

import grpc
from attack_lab import (
    P99_MS,
    SERVER_RSS_MB,
    STALL_MS,
    STALLING,
    Findings,
    Honest,
    LoopProbe,
    Server,
    attack,
    code_of,
    destined,
    exchange,
    expect_refused,
    honest_load,
    nothing_lost,
    p99,
    peak_rss_mb,
    refused,
    send_raw_access_log,
)

from extproc import processes
from tests import attacks as A
from tests.messages import EXT_PROC_METHOD, request_headers, response_headers
from tests.topology import ALLOWED

# --- Stalling or stopping the server -------------------------------------------------------


@attack(
    "als-500k", STALLING,
    "one access-log message of 500,000 empty entries (0.95 MiB) a second, by an allowed "
    "reporter, while enforce traffic flows (review 2)",
    "test_access_intake.py::test_500k_entry_access_log_message_is_refused_while_enforce_requests"
    "_go_on; scripts/bench_hostile.py als phase", "mesh",
)  # fmt: skip
def als_500k(server: Server, f: Findings) -> None:
    # Honest traffic beside the attack: 100 requests/s (the load itself is
    # another attack's, sidecar-reset-limit).
    seconds, rate = (5.0, 100.0) if server.lab.quick else (9.0, 100.0)
    message = A.empty_entries_message(A.HOSTILE_ENTRIES)
    label = {"reporter": ALLOWED, "budget": "message"}
    before = server.metric("extproc_audit_access_budget_refused_total", **label)
    envoy_before = _envoy_failures(server)
    errors: list[grpc.RpcError | None] = []
    stop = threading.Event()

    def attacker() -> None:
        with server.channel() as channel:
            while not stop.wait(0 if not errors else 1.0):
                errors.append(send_raw_access_log(channel, message))

    thread = threading.Thread(target=attacker)
    with LoopProbe(f"127.0.0.1:{server.stack.health_port}") as probe:
        thread.start()
        try:
            honest = honest_load(server.stack.envoy_port, rate, seconds)
        finally:
            stop.set()
            thread.join()
    codes = {code_of(e) for e in errors}
    f.check(codes == {"RESOURCE_EXHAUSTED"}, f"the messages ended {codes}")
    counted = server.metric("extproc_audit_access_budget_refused_total", **label) - before
    f.check(
        counted == A.HOSTILE_ENTRIES * len(errors),
        f"budget refusals counted {counted:.0f}, sent {A.HOSTILE_ENTRIES * len(errors)}",
    )
    _honest_budget(f, server, honest, probe, envoy_before)
    f.note(f"{len(errors)} messages refused")
    nothing_lost(f, server, honest)


ENVOY_FAILURES = (
    "cluster.extproc_audit.upstream_cx_destroy_remote_with_active_rq",
    "http.ingress_http.downstream_rq_5xx",
    "http.ingress_http.ext_proc.streams_failed",
    "http.ingress_http.ext_proc.message_timeouts",
    "access_logs.grpc_access_log.logs_dropped",
)


def _logs_written(server: Server) -> int:
    stats = processes.envoy_stats(server.stack.admin_port, "access_logs.grpc_access_log.")
    return stats.get("access_logs.grpc_access_log.logs_written", 0)


def _envoy_failures(server: Server) -> dict[str, int]:
    """The reporting Envoy's counters of what failed: requests, ext_proc, access logs."""
    stats = processes.envoy_stats(server.stack.admin_port)
    return {n.rsplit(".", 1)[-1]: stats.get(n, 0) for n in ENVOY_FAILURES}


def _honest_budget(
    f: Findings,
    server: Server,
    honest: Honest,
    probe: LoopProbe,
    envoy_before: dict[str, int],
    *,
    p99_bound: bool = True,
) -> None:
    """The honest requests' budgets while an attack ran: p99 (unless the load
    itself is the attack), failures, the loop, RSS."""
    after = _envoy_failures(server)
    envoy = {k: after[k] - envoy_before[k] for k in after if after[k] > envoy_before[k]}
    f.check(
        honest.failed == 0 and not envoy,
        f"{honest.failed} of {len(honest.statuses)} honest requests failed; Envoy {envoy}",
    )
    if p99_bound:
        f.within("p99", p99(honest.latencies_ms), P99_MS, "ms")
    f.note(f"{honest.failed} of {len(honest.statuses)} failed")
    f.within("loop stall", probe.max_ms, STALL_MS, "ms")
    assert server.stack.server is not None
    f.within("RSS peak", peak_rss_mb(server.stack.server.pid), SERVER_RSS_MB, "MB")


@attack(
    "many-headers", STALLING,
    "one ext_proc message of 60,000 headers (the event loop was busy 243 s)",
    "test_capture.py::test_header_count_past_the_bound_is_counted_not_stored; "
    "scripts/bench_hostile.py", "mesh",
)  # fmt: skip
def many_headers(server: Server, f: Findings) -> None:
    count = 5 if server.lab.quick else 20
    data = A.many_headers_request(A.MANY_HEADERS)
    answers = []
    with server.channel() as channel, LoopProbe(f"127.0.0.1:{server.stack.health_port}") as probe:
        call = channel.stream_stream(
            EXT_PROC_METHOD, request_serializer=None, response_deserializer=None
        )
        for _ in range(count):
            started = time.perf_counter()
            replies = list(call(iter([data, response_headers().SerializeToString()]), timeout=30))
            answers.append((time.perf_counter() - started) * 1000)
            f.check(len(replies) == 2, f"{len(replies)} replies")
            time.sleep(0.05)  # the probe's turn
    f.check(probe.samples > count, f"the loop was probed {probe.samples} times only")
    f.within("loop stall", probe.max_ms, STALL_MS, "ms")
    f.note(f"{count} messages of {len(data):,} bytes answered in at most {max(answers):,.0f} ms")

    def check() -> None:
        mine = [e for e in server.entries() if e.get("rid") == "many-headers"
                and e["kind"] == "request"]  # fmt: skip
        omitted = [e.get("req", {}).get("headers_omitted", 0) for e in mine]
        f.check(len(mine) == count and min(omitted) >= A.MANY_HEADERS - 300,
                f"{len(mine)} entries, headers_omitted {omitted}")  # fmt: skip
        f.note(f"{min(omitted):,} headers of each counted, not stored")

    f.afterwards(check)


@attack(
    "stream-flood", STALLING,
    "1,000 streams held open on one connection by an allowed reporter",
    "(no test: --max-streams-per-connection and --stream-idle-timeout are gRPC settings)",
    "direct",
)  # fmt: skip
def stream_flood(server: Server, f: Findings) -> None:
    streams = 300 if server.lab.quick else 1000
    before = server.metric("extproc_audit_streams_total")
    timed_out = server.metric("extproc_audit_streams_timed_out_total")
    seen = asyncio.run(_flood(server, streams, before))
    f.check(0 < seen[0] <= 100, f"{seen[0]:.0f} streams admitted at once on one connection")
    f.note(f"{seen[0]:.0f} of {streams} streams admitted at once (bound 100)")
    ended = server.metric("extproc_audit_streams_timed_out_total") - timed_out
    f.check(ended >= seen[0], f"only {ended:.0f} silent streams ended by the idle timeout")
    f.note(f"{ended:.0f} silent streams ended after 2 s; honest exchange {seen[1]:.0f} ms")


async def _flood(server: Server, streams: int, before: float) -> tuple[float, float]:
    """Open `streams` silent ext_proc streams on one connection; (streams the
    server admitted after 1 s, ms of an honest exchange on another connection)."""
    release = asyncio.Event()

    async def silent() -> Any:
        await release.wait()
        return
        yield  # an async generator that sends nothing

    creds = server.lab.credentials(ALLOWED)
    async with grpc.aio.secure_channel(server.address, creds) as channel:
        call = channel.stream_stream(
            EXT_PROC_METHOD, request_serializer=None, response_deserializer=None
        )
        calls = [call(silent()) for _ in range(streams)]
        await asyncio.sleep(1.0)
        admitted = server.metric("extproc_audit_streams_total") - before
        started = time.perf_counter()
        with server.channel() as other:
            await asyncio.to_thread(exchange, other, destined("flood-honest", ALLOWED))
        honest_ms = (time.perf_counter() - started) * 1000
        await asyncio.sleep(2.5)  # the idle timeout (2 s) ends the silent ones
        release.set()
        for c in calls:
            c.cancel()
    return admitted, honest_ms


@attack(
    "hostile-streams", STALLING,
    "bytes that are not protobuf, and streams out of order",
    "test_server.py::test_hostile_stream_gets_a_status_and_others_are_unaffected[*], "
    "test_undecodable_bytes_end_the_stream_not_the_server", "mesh",
)  # fmt: skip
def hostile_streams(server: Server, f: Findings) -> None:
    mark = len(server.log_text())
    with server.channel() as channel:
        raw = channel.stream_stream(
            EXT_PROC_METHOD, request_serializer=None, response_deserializer=None
        )
        error = refused(lambda: list(raw(iter([A.UNDECODABLE]), timeout=10)))
        expect_refused(f, error, "INVALID_ARGUMENT", "undecodable ext_proc bytes")
        error = send_raw_access_log(channel, A.UNDECODABLE)
        expect_refused(f, error, "INVALID_ARGUMENT", "undecodable access-log bytes")
        for name, (messages, code) in A.HOSTILE_STREAMS.items():
            expect_refused(f, refused(partial(exchange, channel, messages)), code, name)
        honest = exchange(
            channel, [request_headers("/orders", "after-hostile"), response_headers()]
        )
    f.check(len(honest) == 2, "the next honest stream was not answered")
    log = server.log_text()[mark:]
    f.check("failed" not in log and "raceback" not in log, "a failure of the server logged")
    f.note(f"{len(A.HOSTILE_STREAMS) + 2} streams ended with their status; the next one answered")


@attack(
    "forged-status", STALLING,
    '`:status "²00"` and other non-ASCII digits (each stream failed INTERNAL with a traceback)',
    "test_stream_failures.py, test_capture.py::test_unparseable_status_is_stored_as_data_not_an"
    "_exception[*]", "mesh",
)  # fmt: skip
def forged_status(server: Server, f: Findings) -> None:
    before = server.metric("extproc_audit_stream_errors_total", code="INTERNAL")
    mark = len(server.log_text())
    with server.channel() as channel:
        for i, status in enumerate(A.FORGED_STATUSES):
            replies = exchange(
                channel, [request_headers("/s", f"status-{i}"), response_headers(status)]
            )
            f.check(len(replies) == 2, f"{status!r}: {len(replies)} replies")
    errors = server.metric("extproc_audit_stream_errors_total", code="INTERNAL") - before
    f.check(errors == 0, f"{errors:.0f} streams failed INTERNAL")
    log = server.log_text()[mark:]
    f.check("stream failed" not in log and "Traceback" not in log, "a failure logged")

    def check() -> None:
        stored = {e["rid"]: e["resp"] for e in server.entries() if e["kind"] == "response"
                  and e.get("rid", "").startswith("status-")}  # fmt: skip
        raw = [stored.get(f"status-{i}", {}) for i in range(len(A.FORGED_STATUSES))]
        f.check(
            [(r.get("status"), r.get("status_raw")) for r in raw]
            == [(None, s) for s in A.FORGED_STATUSES],
            f"stored as {raw}",
        )
        f.note("stored as data (status null, status_raw); 0 INTERNAL, no traceback")

    f.afterwards(check)


@attack(
    "sidecar-reset-limit", STALLING,
    "an HTTP client sends 1,000 requests/s through one reporter for 20 s; each ext_proc "
    "stream used to end with RST_STREAM, and past 1,000 resets, then 33/s (nghttp2), the "
    "server's own sidecar closed the reporter's connection, with the access-log stream on it",
    "test_server.py::test_answered_stream_is_never_ended_first_so_no_side_resets_it[*], "
    "test_drain_ends_answered_streams_with_ok_not_a_failure, "
    "test_reporters.py::test_no_ext_proc_stream_is_reset_through_the_own_sidecar[*]",
    "load",
)  # fmt: skip
def sidecar_reset_limit(server: Server, f: Findings) -> None:
    seconds, rate = (4.0, 500.0) if server.lab.quick else (20.0, 1000.0)
    envoy_before = _envoy_failures(server)
    resets = _stream_resets(server)
    written = _logs_written(server)
    logged = server.metric("extproc_audit_access_entries_total", reporter=ALLOWED)
    with LoopProbe(f"127.0.0.1:{server.stack.health_port}") as probe:
        started = time.monotonic()
        honest = honest_load(server.stack.envoy_port, rate, seconds, workers=32)
        took = time.monotonic() - started
    time.sleep(1.0)  # Envoy flushes its access logs every 0.2 s
    f.note(f"{len(honest.statuses):,} requests in {took:.0f} s "
           f"({len(honest.statuses) / took:,.0f}/s, {rate:,.0f}/s offered)")  # fmt: skip
    reset = {k: v - resets[k] for k, v in _stream_resets(server).items() if v > resets[k]}
    f.check(not reset, f"ext_proc streams reset: {reset}")
    f.note(f"streams reset {sum(reset.values())}")
    closed = _envoy_failures(server)["upstream_cx_destroy_remote_with_active_rq"]
    closed -= envoy_before["upstream_cx_destroy_remote_with_active_rq"]
    f.check(closed == 0, f"the own sidecar closed the reporting Envoy's connection {closed} "
            "times with streams on it (HTTP/2 GOAWAY: its RST_STREAM rate limit)")  # fmt: skip
    f.note(f"reporter connections closed {closed}")
    written = _logs_written(server) - written
    logged = server.metric("extproc_audit_access_entries_total", reporter=ALLOWED) - logged
    f.note(f"Envoy wrote {written:,} access-log entries, the server logged {logged:,.0f} "
           "(the gap alert ExtprocAuditAccessLogGap sees the difference)")  # fmt: skip
    # The load is the attack: p99 is what this machine gives at that rate, shown
    # against the bound only (a saturated 2-core VM is not a stall of the server).
    f.note(f"p99 {p99(honest.latencies_ms):,.0f} ms")
    _honest_budget(f, server, honest, probe, envoy_before, p99_bound=False)
    nothing_lost(f, server, honest)


def _stream_resets(server: Server) -> dict[str, int]:
    """ext_proc streams reset, as the reporting Envoy and the server's own sidecar count them."""
    reporter = processes.envoy_stats(server.stack.admin_port, "cluster.extproc_audit.upstream_rq_")
    sidecar = processes.envoy_stats(server.sidecar_admin, "http.inbound_50051.downstream_rq_")
    counted = {**reporter, **sidecar}
    names = (
        "cluster.extproc_audit.upstream_rq_tx_reset",
        "cluster.extproc_audit.upstream_rq_rx_reset",
        "http.inbound_50051.downstream_rq_rx_reset",
        "http.inbound_50051.downstream_rq_tx_reset",
    )
    return {n: counted.get(n, 0) for n in names}
