"""Envoy's gRPC access-log service (ALS): one `access` entry per HTTP request.

`envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs` is a
long-lived client stream: Envoy sends batches of finished requests, flushed
every 0.2 s or at 64 KiB (envoyconf.access_log), and never waits for an
answer. So entries are appended without waiting for the disk (they are
durable with the next group commit, well under a millisecond later), and a
log that cannot take them counts each one it drops. What Envoy wrote and
dropped on its side is in its own counters (access_logs.grpc_access_log.*),
to compare with extproc_audit_access_entries_total (docs/ARCHITECTURE.md).

What a message may cost is known as soon as it is parsed (its entry count)
and checked before any entry is built: entries per message, per second per
stream and per second per reporter (AccessLimits; over budget, the stream ends
with RESOURCE_EXHAUSTED), then room in the backlog for each entry; a large
message is sequenced in chunks with the event loop free between them, so
that enforce requests keep flowing (docs/THREATS.md).

The stream is authenticated exactly like ext_proc, by the same
StreamIdentifier (server/identify.py, trust/policy.py). An
`access` entry of a request that was also held by ext_proc (enforce mode)
links to that request's entry with `ref` (OutcomeMatcher). TCP access logs
are refused: counted, not logged (the audit is of HTTP requests).
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from extproc import config, metrics
from extproc.core.fields import (
    BODY_BYTES,
    CLAIMED,
    CLUSTER,
    CONFLICT,
    DETAILS,
    DST,
    DST_PRINCIPAL,
    DURATION_US,
    FAILURE,
    FLAGS,
    HEADERS,
    HEADERS_OMITTED,
    HOST,
    KIND,
    KIND_ACCESS,
    LOG,
    NO_REQUEST,
    ORIGINAL_PATH,
    PARTIAL,
    PROTOCOL,
    REF,
    REPORTER,
    REQ,
    RESP,
    RID,
    ROUTE,
    SEQ,
    SRC,
    START_MS,
    STATUS,
    TIMING,
    TRUNC,
    UPSTREAM,
    UPSTREAM_TX_US,
    dotted,
)
from extproc.core.redact import RedactionPolicy
from extproc.errors import LogUnavailableError, OverBudgetError
from extproc.log.appender import AuditLog
from extproc.ratelog import RateLimitedLog
from extproc.server.builder import UNKNOWN_REPORTER, Claims, EntryBuilder, HeaderMap
from extproc.server.identify import StreamIdentifier
from extproc.server.servicer import _UNDECODABLE, _close_reader
from extproc.trust.policy import ReporterPolicy
from extproc.trust.reporter import Reporter, ReporterRefused
from extproc.trust.xfcc import XFCC_HEADER

log = logging.getLogger(__name__)

ACCESS_LOG_SERVICE = "envoy.service.accesslog.v3.AccessLogService"
# Dotted paths `trunc` names (core/fields.py), joined once.
_ORIGINAL_PATH = dotted(REQ, ORIGINAL_PATH)
_DETAILS = dotted(RESP, DETAILS)
_UPSTREAM_CLUSTER = dotted(UPSTREAM, CLUSTER)
_UPSTREAM_FAILURE = dotted(UPSTREAM, FAILURE)
_CLAIMED_DST_PRINCIPAL = dotted(REPORTER, CLAIMED, DST_PRINCIPAL)

_METHODS = tuple(
    "" if v.name == "METHOD_UNSPECIFIED" else v.name
    for v in sorted(base_pb2.RequestMethod.DESCRIPTOR.values, key=lambda v: v.number)
)
_PROTOCOLS = {
    accesslog_pb2.HTTPAccessLogEntry.HTTP10: "HTTP/1.0",
    accesslog_pb2.HTTPAccessLogEntry.HTTP11: "HTTP/1.1",
    accesslog_pb2.HTTPAccessLogEntry.HTTP2: "HTTP/2",
    accesslog_pb2.HTTPAccessLogEntry.HTTP3: "HTTP/3",
}
# Envoy's own short names (%RESPONSE_FLAGS%), in the order Envoy prints them.
_FLAG_CODES = {
    "failed_local_healthcheck": "LH",
    "no_healthy_upstream": "UH",
    "upstream_request_timeout": "UT",
    "local_reset": "LR",
    "upstream_remote_reset": "UR",
    "upstream_connection_failure": "UF",
    "upstream_connection_termination": "UC",
    "upstream_overflow": "UO",
    "no_route_found": "NR",
    "delay_injected": "DI",
    "fault_injected": "FI",
    "rate_limited": "RL",
    "unauthorized_details": "UAEX",
    "rate_limit_service_error": "RLSE",
    "downstream_connection_termination": "DC",
    "upstream_retry_limit_exceeded": "URX",
    "stream_idle_timeout": "SI",
    "invalid_envoy_request_headers": "IH",
    "downstream_protocol_error": "DPE",
    "upstream_max_stream_duration_reached": "UMSDR",
    "response_from_cache_filter": "RFCF",
    "no_filter_config_found": "NFCF",
    "duration_timeout": "DT",
    "upstream_protocol_error": "UPE",
    "no_cluster_found": "NC",
    "overload_manager": "OM",
    "dns_resolution_failure": "DF",
    "downstream_remote_reset": "DR",
}
DEFAULT_OUTCOME_WINDOW = config.OUTCOME_WINDOW
DEFAULT_OUTCOME_PENDING = 100_000  # request entries waiting at most


class _SeenCounter:
    """ACCESS_ENTRIES of one reporter; counting also sets REPORTER_LAST_SEEN."""

    __slots__ = ("_count", "_seen")

    def __init__(self, count: Any, seen: Any) -> None:
        self._count, self._seen = count, seen

    def inc(self, amount: float = 1) -> None:
        self._count.inc(amount)
        self._seen.set_to_current_time()


def address_text(address: Any) -> str:
    """An envoy.config.core.v3.Address as Envoy's attributes print it (`ip:port`, `[ip6]:port`)."""
    kind = address.WhichOneof("address")
    if kind == "socket_address":
        sa = address.socket_address
        host = f"[{sa.address}]" if ":" in sa.address else sa.address
        return f"{host}:{sa.port_value}"
    if kind == "pipe":
        return f"unix:{address.pipe.path}"
    return ""


class OutcomeMatcher:
    """Request entries of enforce mode waiting for the access-log entry with their outcome.

    Keyed by (reporter id, request id, local address): what the same Envoy
    reports on both streams for the same request. The caller's own outbound
    entry for a request id propagated downstream has another local address,
    and another proxy's entry another reporter, so neither takes the match.
    Bounded in count and age; what expires unmatched is counted.

    A request has one outcome. Once matched, the request is remembered (same
    bounds) with the seq of its first outcome entry, so that a second outcome
    for it (another stream under the same identity, or a reused request id)
    is linked too, and marked as a conflict naming the first: neither one
    silently wins (docs/FORMAT.md, `conflict`).
    """

    def __init__(
        self,
        window: float = DEFAULT_OUTCOME_WINDOW,
        max_pending: int = DEFAULT_OUTCOME_PENDING,
        clock: Any = time.monotonic,
    ) -> None:
        self.window = window
        self.max_pending = max_pending
        self._clock = clock
        self._pending: OrderedDict[tuple[str, str, str], tuple[int, float]] = OrderedDict()
        # Matched requests: key -> (request seq, first outcome's seq, when matched).
        self._matched: OrderedDict[tuple[str, str, str], tuple[int, int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending) + len(self._matched)

    def expect(self, reporter: str, rid: str, dst: str, seq: int) -> None:
        if not rid:
            return
        now = self._clock()
        pending = self._pending
        key = (reporter, rid, dst)
        pending[key] = (seq, now)
        self._matched.pop(key, None)  # a new request entry: its outcome is still to come
        while pending and (
            len(pending) > self.max_pending or next(iter(pending.values()))[1] < now - self.window
        ):
            pending.popitem(last=False)
            metrics.OUTCOMES.labels("expired").inc()
        self._forget_old(now)

    def take(self, reporter: str, rid: str, dst: str) -> tuple[int, int | None] | None:
        """(the request entry's seq, None) for its first outcome; (that seq, the
        first outcome's seq) for a later one; None if no request waits.

        After a first match, call `taken` with the outcome entry's seq before
        the next take."""
        key = (reporter, rid, dst)
        found = self._pending.pop(key, None)
        if found is not None:
            return found[0], None
        matched = self._matched.get(key)
        return None if matched is None else (matched[0], matched[1])

    def taken(self, reporter: str, rid: str, dst: str, ref: int, outcome: int) -> None:
        """Remember that entry `outcome` was the first outcome of request entry `ref`."""
        now = self._clock()
        self._matched[(reporter, rid, dst)] = (ref, outcome, now)
        self._forget_old(now)

    def _forget_old(self, now: float) -> None:
        matched = self._matched
        while matched and (
            len(matched) > self.max_pending or next(iter(matched.values()))[2] < now - self.window
        ):
            matched.popitem(last=False)


class AccessCapture:
    """Entry fields from an HTTPAccessLogEntry, through the one entry builder
    the ext_proc capture uses too (server/builder.py): same names, bounds,
    redaction, truncation and identity."""

    def __init__(
        self,
        policy: RedactionPolicy,
        max_headers: int = config.MAX_HEADERS,
        max_header_bytes: int = config.MAX_HEADER_BYTES,
        reporters: ReporterPolicy | None = None,
    ) -> None:
        self.policy = policy
        self.builder = EntryBuilder(
            policy, max_headers=max_headers, max_header_bytes=max_header_bytes
        )
        self.reporters = reporters  # --reporter-is-destination, as for ext_proc
        self._anonymous = Claims(UNKNOWN_REPORTER)  # fields() without a stream (tests, benchmarks)

    def claims(self, reporter: Reporter, node: str, stream: dict[str, Any]) -> Claims:
        """A stream's reporter and what its identifier claims (node id, cluster, log name)."""
        return Claims(
            reporter,
            self.reporters,
            node=node,
            cluster=stream.get(CLUSTER, ""),
            log=stream.get(LOG, ""),
        )

    def _headers(
        self, pairs: Any, extra: list[tuple[str, str]], section: str, trunc: list[str]
    ) -> HeaderMap:
        builder = self.builder
        total = len(pairs) + len(extra)
        if not total:
            return _NO_HEADERS
        # Keys of a upb map iterate natively; .items() goes through the Python
        # Mapping mixin (a generator and a lookup per pair). No more are read
        # than the builder may look at.
        if pairs:
            keys = (
                pairs if len(pairs) <= builder.max_headers else islice(pairs, builder.max_headers)
            )
            extra += [(k, pairs[k]) for k in keys]
        return builder.headers(extra, total, section, trunc)

    def fields(self, e: Any, claims: Claims | None = None) -> dict[str, Any]:
        """The fields of an `access` entry. `claims`: the stream's reporter and
        what it claims (the `reporter` field; may raise ReporterRefused under
        --reporter-is-destination refuse)."""
        # The hot path of observe mode (one call per request): each protobuf
        # field is read once, a value goes through policy.truncate() only when
        # it may be too long, and empty header maps cost one len(). `trunc`
        # names what was cut in the order the fields are built.
        builder = self.builder
        common = e.common_properties
        request = e.request
        trunc: list[str] = []
        req, xfcc = self._request(request, e.protocol_version, trunc)
        resp = self._response(e.response, trunc)
        has = common.HasField
        tls = common.tls_properties if has("tls_properties") else None
        fields: dict[str, Any] = {
            REQ: req,
            RESP: resp,
            SRC: builder.source(
                address_text(common.downstream_remote_address)
                if has("downstream_remote_address")
                else "",
                "access_log:downstream_remote_address",
                _uri_san(tls.peer_certificate_properties) if tls is not None else "",
                "access_log:peer_certificate",
                xfcc,
                trunc,
            ),
        }
        if has("downstream_local_address"):
            fields[DST] = address_text(common.downstream_local_address)
        short = self.policy.short_chars
        upstream: dict[str, Any] = {}
        if has("upstream_remote_address"):
            upstream[HOST] = address_text(common.upstream_remote_address)
        if v := common.upstream_cluster:
            upstream[CLUSTER] = (
                v if len(v) <= short else builder.bounded(v, _UPSTREAM_CLUSTER, trunc)
            )
        if v := common.upstream_transport_failure_reason:
            upstream[FAILURE] = builder.bounded(v, _UPSTREAM_FAILURE, trunc)
        if upstream:
            fields[UPSTREAM] = upstream
        if v := common.route_name:
            fields[ROUTE] = v if len(v) <= short else builder.bounded(v, ROUTE, trunc)
        if has("response_flags"):
            set_flags = common.response_flags.ListFields()
            codes = [_FLAG_CODES.get(fd.name, fd.name) for fd, _ in set_flags]
            if codes:
                fields[FLAGS] = ",".join(codes)
        if timing := _timing(common):
            fields[TIMING] = timing
        if common.intermediate_log_entry:
            fields[PARTIAL] = True
        if (
            not request.request_method
            and not request.path
            and not e.response.HasField("response_code")
        ):
            # A listener-level access log (istiod adds one for connections no
            # filter chain took): a connection, not an HTTP request.
            fields[NO_REQUEST] = True
        fields[RID] = builder.rid(request.request_id, trunc)
        local = _uri_san(tls.local_certificate_properties) if tls is not None else ""
        fields[KIND] = KIND_ACCESS
        if len(local) > short:
            local = builder.bounded(local, _CLAIMED_DST_PRINCIPAL, trunc)
        fields[REPORTER] = (claims or self._anonymous).field(local)
        if trunc:
            fields[TRUNC] = trunc
        return fields

    def _request(
        self, request: Any, protocol_version: int, trunc: list[str]
    ) -> tuple[dict[str, Any], str | bytes | None]:
        """`req` of an access entry, and the request's XFCC header as sent (the
        source's identity, builder.source)."""
        builder = self.builder
        logged = request.request_headers
        extra = []
        # Request properties Envoy always sends, stored as the headers they are
        # (unless the logger was told to log that header too: then once).
        for name, value in (
            ("user-agent", request.user_agent),
            ("referer", request.referer),
            ("x-forwarded-for", request.forwarded_for),
        ):
            if value and name not in logged:
                extra.append((name, value))
        h = self._headers(logged, extra, REQ, trunc)
        method = request.request_method
        req = builder.request_line(
            _METHODS[method] if method < len(_METHODS) else "",
            request.scheme,
            request.authority,
            request.path,
            trunc,
        )
        req[HEADERS] = h.stored
        if h.omitted:
            req[HEADERS_OMITTED] = h.omitted
        if protocol := _PROTOCOLS.get(protocol_version):
            req[PROTOCOL] = protocol
        if v := request.request_body_bytes:
            req[BODY_BYTES] = v
        if v := request.original_path:
            req[ORIGINAL_PATH] = builder.bounded(self.policy.url(v), _ORIGINAL_PATH, trunc)
        return req, h.raw.get(XFCC_HEADER)

    def _response(self, response: Any, trunc: list[str]) -> dict[str, Any]:
        """`resp` of an access entry: without a response code (no response
        was sent), `status: null` and no `status_raw`."""
        builder = self.builder
        r = self._headers(response.response_headers, [], RESP, trunc)
        resp: dict[str, Any] = {}
        if response.HasField("response_code"):
            code = response.response_code.value
            if 100 <= code <= 999:
                resp[STATUS] = code
            else:
                builder.status(resp, str(code), trunc)
        else:
            resp[STATUS] = None
        resp[HEADERS] = r.stored
        if r.omitted:
            resp[HEADERS_OMITTED] = r.omitted
        short = self.policy.short_chars
        if v := response.response_code_details:
            resp[DETAILS] = v if len(v) <= short else builder.bounded(v, _DETAILS, trunc)
        if v := response.response_body_bytes:
            resp[BODY_BYTES] = v
        return resp


_NO_HEADERS = HeaderMap({}, {}, 0, {})


def _timing(common: Any) -> dict[str, int]:
    """`timing`: when the request started, how long it took, and when it went upstream."""
    has = common.HasField
    timing: dict[str, int] = {}
    if has("start_time"):
        start = common.start_time
        timing[START_MS] = start.seconds * 1000 + start.nanos // 1_000_000
    if has("duration"):
        timing[DURATION_US] = _micros(common.duration)
    elif has("time_to_last_downstream_tx_byte"):
        timing[DURATION_US] = _micros(common.time_to_last_downstream_tx_byte)
    if has("time_to_first_upstream_tx_byte"):
        # When Envoy started sending the request upstream: in enforce mode,
        # after its request entry was durable.
        timing[UPSTREAM_TX_US] = _micros(common.time_to_first_upstream_tx_byte)
    return timing


def _micros(duration: Any) -> int:
    return int(duration.seconds) * 1_000_000 + int(duration.nanos) // 1000


def _uri_san(cert: Any) -> str:
    for san in cert.subject_alt_name:
        if san.WhichOneof("san") == "uri":
            return str(san.uri)
    return ""


# Entries sequenced between two yields of the event loop: a few ms of work, so
# that enforce requests keep flowing while a large message is logged. A batch
# of Envoy's 64 KiB buffer (~220 entries) is one chunk: no yield at all.
ACCESS_LOG_CHUNK = 256
BUDGETS = ("message", "stream_rate", "reporter_rate")  # the label of each refusal


@dataclass(frozen=True)
class AccessLimits:
    """What one access-log message, stream and reporter may cost, checked when
    a message's entry count is known (right after parsing) and before any of
    its entries is built (docs/THREATS.md, "Stalling or stopping the server")."""

    max_entries: int = config.MAX_ACCESS_LOG_ENTRIES  # per message
    stream_rate: float = config.MAX_ACCESS_LOG_RATE  # entries per second per stream
    reporter_rate: float = config.MAX_REPORTER_ACCESS_LOG_RATE  # all of one reporter's streams


class RateBudget:
    """Entries a second, as a token bucket that saves up one second's worth
    (and at least one message of `floor` entries)."""

    __slots__ = ("_at", "_clock", "_tokens", "burst", "rate")

    def __init__(self, rate: float, floor: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = max(rate, floor)
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()

    def available(self) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        return self._tokens

    def take(self, count: int) -> None:
        self._tokens -= count


class AccessLogServicer(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        audit_log: AuditLog,
        capture: AccessCapture,
        identify: StreamIdentifier,
        outcomes: OutcomeMatcher,
        limits: AccessLimits = AccessLimits(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = audit_log
        self.capture = capture
        self.identify = identify  # the ext_proc servicer's: same reporter rules
        self.outcomes = outcomes
        self.limits = limits
        self._clock = clock
        self._drops = RateLimitedLog(log)
        self._tcp = RateLimitedLog(log)
        self._over_budget = RateLimitedLog(log)
        self._errors = RateLimitedLog(log)
        self._entries = metrics.PerReporter(
            lambda label: _SeenCounter(
                metrics.ACCESS_ENTRIES.labels(label), metrics.REPORTER_LAST_SEEN.labels(label)
            )
        )
        # One budget per reporter across its streams (a caller opening more
        # streams gets no more), bounded in count like the metric labels.
        self._reporter_budgets = metrics.PerReporter(
            lambda _: RateBudget(limits.reporter_rate, limits.max_entries, clock)
        )
        self._refused = metrics.PerReporter(
            lambda label: {b: metrics.ACCESS_BUDGET_REFUSED.labels(label, b) for b in BUDGETS}
        )
        self._streams: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._matched = metrics.OUTCOMES.labels("matched")
        self._unmatched = metrics.OUTCOMES.labels("unmatched")
        self._conflicts = metrics.OUTCOMES.labels("conflict")
        self._conflict_log = RateLimitedLog(log)

    def _counter(self, reporter: Reporter) -> _SeenCounter:
        """The reporter's entry counter, and its last-seen gauge set with it (a
        reporter seen before and silent now has stopped reporting: an alert)."""
        return self._entries.get(reporter.label)

    async def StreamAccessLogs(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        reporter = await self.identify(context)
        metrics.ACCESS_STREAMS.inc()
        counter = self._counter(reporter)
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        status: tuple[grpc.StatusCode, str] | None = None
        try:
            await self._read(request_iterator, reporter, counter)
        except OverBudgetError as e:
            status = (grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except DecodeError:  # bytes that are not a message: the caller's doing
            status = (grpc.StatusCode.INVALID_ARGUMENT, _UNDECODABLE % "StreamAccessLogsMessage")
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # Ended by close(): answer OK, so Envoy opens a new stream next time.
        except Exception as e:
            # Never echo the exception text: it could carry request data.
            self._errors.error(
                "access-log stream of %s failed (%s); traceback:\n%s",
                reporter.id or reporter.peer,
                type(e).__name__,
                "".join(traceback.format_tb(e.__traceback__)),
            )
            status = (grpc.StatusCode.INTERNAL, "internal error in audit server")
        finally:
            if task is not None:
                self._streams.discard(task)
            # A stream refused mid-way would otherwise keep its last message
            # (up to --max-message-bytes, ~25 MB parsed for a 500,000-entry one)
            # until a garbage collection: measured, RSS +27 MB per refusal.
            await _close_reader(request_iterator)
        if status is not None:
            await context.abort(*status)
        return als_pb2.StreamAccessLogsResponse()

    async def close(self, linger: float) -> None:
        """Shutdown, once no new stream can come: end each stream right after
        its next batch, a whole flush interval before Envoy sends another (the
        protocol has no acknowledgement: a batch Envoy writes as the stream ends
        is lost); after `linger` seconds, end those still silent."""
        self._closing = True
        if self._streams and linger > 0:
            await asyncio.wait(list(self._streams), timeout=linger)
        for task in list(self._streams):
            task.cancel()

    async def _read(
        self, request_iterator: AsyncIterator[Any], reporter: Reporter, counter: Any
    ) -> None:
        stream: dict[str, Any] = {}
        node = ""
        budget = RateBudget(self.limits.stream_rate, self.limits.max_entries, self._clock)
        async for msg in request_iterator:
            if msg.HasField("identifier"):
                ident = msg.identifier
                node = self.capture.policy.truncate(ident.node.id)[0]
                stream = {
                    LOG: self.capture.policy.truncate(ident.log_name)[0],
                    CLUSTER: self.capture.policy.truncate(ident.node.cluster)[0],
                }
            kind = msg.WhichOneof("log_entries")
            if kind == "http_logs":
                entries = msg.http_logs.log_entry
                self._admit(len(entries), reporter, budget)
                await self._log_batch(entries, reporter, node, stream, counter)
                if self._closing:
                    return  # drain: end the stream right after a batch (close())
            elif kind == "tcp_logs":
                n = len(msg.tcp_logs.log_entry)
                metrics.ACCESS_REFUSED.labels("tcp").inc(n)
                self._tcp.warning(
                    "%d TCP access-log entries refused (HTTP only; use envoyHttpAls, "
                    "not envoyTcpAls) from %s",
                    n,
                    reporter.id or reporter.peer,
                )

    def _admit(self, count: int, reporter: Reporter, stream: RateBudget) -> None:
        """Take `count` entries from the stream's and the reporter's budgets, or
        refuse the whole message (OverBudgetError, counted) before any entry of
        it is built."""
        limits = self.limits
        mine = self._reporter_budgets.get(reporter.label)
        if count > limits.max_entries:
            budget, why = "message", f"over --max-access-log-entries ({limits.max_entries})"
        elif count > stream.available():
            budget = "stream_rate"
            why = f"over --max-access-log-rate ({limits.stream_rate:g} entries/s per stream)"
        elif count > mine.available():
            budget = "reporter_rate"
            why = (
                f"over --max-reporter-access-log-rate ({limits.reporter_rate:g} entries/s "
                "per reporter)"
            )
        else:
            stream.take(count)
            mine.take(count)
            return
        self._refused.get(reporter.label)[budget].inc(count)
        metrics.DROPPED.labels("budget").inc(count)
        message = f"access-log message of {count} entries refused: {why}"
        self._over_budget.warning("%s (reporter %s)", message, reporter.id or reporter.peer)
        raise OverBudgetError(message)

    async def _log_batch(
        self,
        entries: Any,
        reporter: Reporter,
        node: str,
        stream: dict[str, Any],
        counter: Any,
    ) -> None:
        """Log one message's entries, admitted by its budgets. They are reserved
        in the backlog before any is built (a message that does not fit is
        dropped whole, counted), then sequenced in chunks of ACCESS_LOG_CHUNK
        with a yield of the event loop between two (docs/PERFORMANCE.md)."""
        count = len(entries)
        if not count:
            return
        try:
            self.log.reserve(count)
        except LogUnavailableError as e:
            metrics.DROPPED.labels("backpressure").inc(count)
            self._drops.warning("%d access-log entries not logged: %s", count, e)
            return
        left, it = count, iter(entries)
        try:
            while left:
                size = min(left, ACCESS_LOG_CHUNK)
                left -= size
                self._log_chunk(islice(it, size), size, reporter, node, stream, counter)
                if left:
                    await asyncio.sleep(0)
        finally:
            if left:  # the stream ended between two chunks (shutdown, reset, an error)
                self.log.release(left)
                metrics.DROPPED.labels("stream_ended").inc(left)

    def _log_chunk(
        self,
        entries: Iterator[Any],
        size: int,
        reporter: Reporter,
        node: str,
        stream: dict[str, Any],
        counter: Any,
    ) -> None:
        """Append `size` reserved entries without awaiting: the chunk goes to the
        log in one call (one timestamp, one flush start), each entry captured as
        the log takes it, so that only one entry's fields are alive at a time
        (docs/PERFORMANCE.md)."""
        matched = [0, 0]  # first outcomes, conflicting ones
        try:
            first = self.log.append_batch_nowait(
                self._entries_of(entries, reporter, node, stream, matched), reserved=size
            )
        except LogUnavailableError as e:
            metrics.DROPPED.labels("backpressure").inc(size)
            self._drops.warning("%d access-log entries not logged: %s", size, e)
            return
        counter.inc(self.log.size - first)
        self._matched.inc(matched[0])
        self._unmatched.inc(size - matched[0] - matched[1])
        if matched[1]:
            self._conflicts.inc(matched[1])
            self._conflict_log.warning(
                "%d access-log entries are a second outcome of a request already matched "
                "(stored with `conflict`) from %s",
                matched[1],
                reporter.id or reporter.peer,
            )

    def _entries_of(
        self,
        entries: Any,
        reporter: Reporter,
        node: str,
        stream: dict[str, Any],
        matched: list[int],
    ) -> Iterator[dict[str, Any]]:
        capture, reporter_id = self.capture.fields, reporter.id
        claims = self.capture.claims(reporter, node, stream)
        # No request entry waits for its outcome (observe mode): no lookups.
        take = self.outcomes.take if len(self.outcomes) else None
        for e in entries:
            try:
                fields = capture(e, claims)
            except ReporterRefused as refused:  # --reporter-is-destination refuse
                self.identify.refused(refused, "an access-log entry")
                continue
            if take is not None and PARTIAL not in fields:
                key = (reporter_id, fields[RID], fields.get(DST, ""))
                found = take(*key)
                if found is not None:
                    fields[REF], first = found
                    if first is not None:
                        fields[CONFLICT] = first  # docs/FORMAT.md
                    matched[first is not None] += 1
                    yield fields
                    if first is None:  # the log has numbered it: the request's first outcome
                        self.outcomes.taken(*key, fields[REF], fields[SEQ])
                    continue
            yield fields
