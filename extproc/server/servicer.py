"""The ext_proc servicer: capture and back-pressure only.

Enforce mode (Envoy waits for each reply): the request entry is appended and
the CONTINUE reply is sent only once the entry is durable; if the log cannot
take it, Envoy gets an ImmediateResponse 503 and the request never reaches
upstream. The request's outcome arrives by the access-log service
(server/access.py), linked to this entry by `ref`. One round trip per request.
Then the stream waits for Envoy to half-close it (when the HTTP request ends)
and ends with OK: no side resets it (see Process and docs/THREATS.md,
sidecar-reset-limit). A drain ends waiting streams with OK (release()).

With a response phase (`--receipts`, or `--ext-proc-responses` for
deployments without the access-log service), the server waits for the
response headers and logs a `response` entry, which joins the next group
commit without holding the response back (the request has already happened).

Receipts (enforce mode only): the response-headers reply sets a header naming
the log and the request entry's seq (core/receipt.py).

Observe mode: nothing waits for the disk; a log that cannot take an entry
drops it with a count. (Envoy's ext_proc `observability_mode` is accepted for
existing deployments; the shipped observe configs use the access-log service,
which loses nothing at saturation where observability_mode lost most streams:
docs/PERFORMANCE.md.)
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from extproc import metrics
from extproc.core import receipt
from extproc.core.fields import (
    DST,
    KIND,
    KIND_REQUEST,
    KIND_RESPONSE,
    OUTCOME,
    OUTCOME_ABORTED,
    OUTCOME_TIMEOUT,
    REF,
    REPORTER,
    RID,
)
from extproc.envoyconf import GRACEFUL_CLOSE
from extproc.errors import LogUnavailableError
from extproc.log.appender import AuditLog
from extproc.ratelog import RateLimitedLog
from extproc.server.builder import Claims
from extproc.server.capture import Capturer
from extproc.server.identify import StreamIdentifier
from extproc.trust.reporter import ReporterRefused

log = logging.getLogger(__name__)

MODES = ("enforce", "observe")

_CONTINUE_REQUEST = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
_CONTINUE_RESPONSE = pb.ProcessingResponse(response_headers=pb.HeadersResponse())
DENY_DETAILS = "audit_log_unavailable"
_DENY = pb.ProcessingResponse(
    immediate_response=pb.ImmediateResponse(
        status=http_status_pb2.HttpStatus(code=http_status_pb2.ServiceUnavailable),
        body=b"audit log unavailable\n",
        details=DENY_DETAILS,
        headers=pb.HeaderMutation(
            set_headers=[
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key="content-type", raw_value=b"text/plain")
                )
            ]
        ),
    )
)
_UNSUPPORTED = {
    "request_body": "request_body_mode: NONE",
    "response_body": "response_body_mode: NONE",
    "request_trailers": "request_trailer_mode: SKIP",
    "response_trailers": "response_trailer_mode: SKIP",
}


class IdleStreams:
    """Ends streams that send nothing for `timeout` seconds (a caller holding
    streams open must not pin server memory).

    A coarse clock: the watchdog ticks `TICKS` times per timeout, streams note
    the tick of their last message (a dict store, no syscall on the hot path),
    and a stream silent for a whole timeout is cancelled.
    """

    TICKS = 4

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.tick = 0
        self._last: dict[asyncio.Task[Any], int] = {}
        self.timed_out: set[asyncio.Task[Any]] = set()

    def open(self) -> asyncio.Task[Any] | None:
        task = asyncio.current_task()
        if task is not None and self.timeout > 0:
            self._last[task] = self.tick
        return task

    def touch(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None and task in self._last:
            self._last[task] = self.tick

    def close(self, task: asyncio.Task[Any] | None) -> bool:
        """Forget the stream; True if the watchdog ended it."""
        if task is None:
            return False
        self._last.pop(task, None)
        if task in self.timed_out:
            self.timed_out.discard(task)
            return True
        return False

    async def run(self) -> None:
        if self.timeout <= 0:
            return
        while True:
            await asyncio.sleep(self.timeout / self.TICKS)
            self.tick += 1
            for task, last in list(self._last.items()):
                if self.tick - last > self.TICKS and task not in self.timed_out:
                    self.timed_out.add(task)
                    metrics.STREAMS_TIMED_OUT.inc()
                    task.cancel()


class OutcomeRegistry(Protocol):
    """Where a request entry waits for its outcome (server/access.py: OutcomeMatcher)."""

    def expect(self, reporter: str, rid: str, dst: str, seq: int) -> None: ...


class ReceiptReplies:
    """Response-headers replies that set the receipt header (docs/FORMAT.md, "Receipts")."""

    def __init__(self, log_id: str, header: str = receipt.DEFAULT_HEADER) -> None:
        self._prefix = receipt.header_prefix(log_id)
        self._template = pb.ProcessingResponse(
            response_headers=pb.HeadersResponse(
                response=pb.CommonResponse(
                    header_mutation=pb.HeaderMutation(
                        set_headers=[
                            base_pb2.HeaderValueOption(
                                header=base_pb2.HeaderValue(
                                    key=receipt.validate_header_name(header)
                                ),
                                # Replace, never add to, a receipt the upstream
                                # set itself: the client must see only ours.
                                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                            )
                        ]
                    )
                )
            )
        )

    def reply(self, seq: int) -> Any:
        # A copy of a prebuilt message with one field set costs about a third
        # of building the nested message anew (upb, measured); the template
        # itself is shared by every stream, so it is never sent or changed.
        msg = pb.ProcessingResponse()
        msg.CopyFrom(self._template)
        header = msg.response_headers.response.header_mutation.set_headers[0].header
        header.raw_value = self._prefix + b"%d" % seq  # Envoy reads raw_value
        return msg


class AuditServicer(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(
        self,
        audit_log: AuditLog,
        capturer: Capturer,
        mode: str = "enforce",
        receipts: ReceiptReplies | None = None,
        *,
        identify: StreamIdentifier,
        idle: IdleStreams | None = None,
        response_phase: bool = False,
        outcomes: OutcomeRegistry | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if receipts is not None and mode != "enforce":
            # Envoy ignores every reply in observability_mode.
            raise ValueError("receipts need enforce mode")
        self.receipts = receipts
        # Wait for response headers (receipts need them) instead of ending the
        # stream after the request reply.
        self.response_phase = response_phase or receipts is not None
        self.outcomes = outcomes
        self.log = audit_log
        self.capturer = capturer
        self.mode = mode
        # No default: who may write is always stated. The access-log servicer
        # identifies its streams with the same one (server/identify.py).
        self.identify = identify
        self.reporters = identify.policy
        self.idle = idle or IdleStreams(0)
        # False once a drain ends admission: new streams get UNAVAILABLE (Envoy
        # fails the request closed), while the listener stays up for the
        # access-log streams' last batches (app.py, AuditServer.drain).
        self.admitting = True
        self._denials = RateLimitedLog(log)
        self._drops = RateLimitedLog(log)
        self._failures = RateLimitedLog(log)
        self._resets = RateLimitedLog(log)
        # Streams whose exchange is complete, waiting for Envoy's half-close,
        # and those a drain ended (release()).
        self._waiting: set[asyncio.Task[Any] | None] = set()
        self._released: set[asyncio.Task[Any] | None] = set()
        self._streams = metrics.STREAMS.labels(mode)
        self._requests = metrics.ENTRIES.labels(KIND_REQUEST)
        self._entries: dict[str, Any] = {}  # label children, bound once
        # When each reporter last had a request logged (as the access-log path
        # does): a proxy that stops reporting is an alert, whichever stream it uses.
        self._last_seen = metrics.PerReporter(metrics.REPORTER_LAST_SEEN.labels)

    async def Process(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        # One generator, no nested ones: every suspension of a grpc.aio handler
        # costs (docs/PERFORMANCE.md), so the hot path has exactly two awaits of
        # its own, the request entry's durability and the read of Envoy's
        # half-close. Messages are read with context.read(), not through
        # `request_iterator` (grpc.aio's generator over the same reads), whose
        # frame would hold the last message while the stream waits.
        if not self.admitting:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "draining: not taking new streams")
        reporter = await self.identify(context)
        seen = self._last_seen.get(reporter.label)
        self._streams.inc()
        request_seq: int | None = None
        rid = ""
        done = False  # the exchange ended as it should: no `aborted` outcome
        answered = False  # everything asked was answered: only Envoy's half-close is left
        response_seen = False
        who = reporter.fields
        idle = self.idle
        task = idle.open()
        read = context.read
        try:
            while True:
                if answered:
                    # The exchange is complete. Envoy ends the stream itself
                    # (half-close when its request ends, with
                    # ext_proc_graceful_grpc_close; envoyconf.REPORTER_RUNTIME),
                    # and then we end it with OK: neither side resets it. Ending
                    # it first makes Envoy (or the server's own sidecar) reset it,
                    # and a sidecar closes a connection whose peer resets streams
                    # faster than 33/s (nghttp2's RST_STREAM budget), with the
                    # access-log stream on it (docs/THREATS.md, sidecar-reset-limit).
                    if not self.admitting:
                        return  # draining: end it now (release())
                    self._waiting.add(task)
                msg = await read()
                self._waiting.discard(task)
                if msg is grpc.aio.EOF:
                    return
                idle.touch(task)
                which = msg.WhichOneof("request")
                if which == "request_headers":
                    if request_seq is not None or answered:
                        raise _StreamError(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            "request_headers received twice on one stream",
                        )
                    fields = self.capturer.request(msg, Claims(reporter, self.reporters))
                    msg = None  # not held while the stream waits
                    fields[KIND] = KIND_REQUEST
                    who = fields[REPORTER]
                    rid = fields[RID]
                    dst = fields.get(DST, "")
                    if self.mode == "enforce":
                        try:
                            request_seq = await self.log.append(fields)
                        except LogUnavailableError as e:
                            self._denied(e)
                            answered = True  # Envoy half-closes after the deny
                            yield _DENY
                            continue
                        self._requests.inc()
                    else:
                        request_seq = self._append_nowait(fields)
                        if request_seq is None:
                            return
                    seen.set_to_current_time()
                    if self.outcomes is not None:
                        self.outcomes.expect(reporter.id, rid, dst, request_seq)
                    # One round trip: the outcome comes by the access-log
                    # service, unless the response phase is asked for.
                    answered = done = not self.response_phase
                    yield _CONTINUE_REQUEST
                elif which == "response_headers":
                    if request_seq is None or response_seen:
                        raise _StreamError(
                            grpc.StatusCode.FAILED_PRECONDITION,
                            "response_headers before request_headers"
                            if request_seq is None
                            else "response_headers received twice on one stream",
                        )
                    response_seen = done = answered = True
                    if not self.response_phase:
                        # Not asked for (an Envoy that sends response headers
                        # anyway): its outcome comes by the access-log service.
                        yield _CONTINUE_RESPONSE
                        continue
                    reply = self._response(msg, request_seq, rid, who)
                    msg = None
                    yield reply
                    # Nothing else is asked for (bodies and trailers are not sent).
                else:
                    raise _unsupported(which)
        except asyncio.CancelledError:
            self._waiting.discard(task)
            if task in self._released:
                self._released.discard(task)
                return  # ended by a drain: OK, the exchange was complete
            if task not in idle.timed_out:
                if answered:
                    self._reset_after_reply(reporter.label)
                raise
            # Ended by the idle watchdog: the stream is gone; record the outcome below.
        except Exception as e:
            await self._abort(context, e)
        finally:
            timed_out = idle.close(task)
            if request_seq is not None and not done and self.response_phase:
                # Client gone, upstream reset or no response in time: say so.
                self._append_nowait(
                    {
                        KIND: KIND_RESPONSE,
                        REF: request_seq,
                        RID: rid,
                        OUTCOME: OUTCOME_TIMEOUT if timed_out else OUTCOME_ABORTED,
                        REPORTER: who,
                    }
                )

    def _reset_after_reply(self, label: str) -> None:
        """A stream reset by its reporter after the exchange, instead of its
        half-close: counted, it is what the sidecar rate-limits. (Envoy's
        observability_mode always resets: not counted.)"""
        if self.mode != "enforce":
            return
        metrics.STREAMS_RESET.inc()
        self._resets.warning(
            "ext_proc stream of %s reset after its reply instead of a "
            "half-close: set Envoy's runtime %s (docs/ISTIO.md)",
            label,
            GRACEFUL_CLOSE,
        )

    def release(self) -> int:
        """End every stream whose exchange is complete now, with OK (a drain:
        admission has ended). Left to the server's stop they would be
        cancelled, and Envoy (1.36, measured) answers a request whose ext_proc
        stream fails with its error status even after forwarding it. The
        number released."""
        waiting = [task for task in self._waiting if task is not None]
        for task in waiting:
            self._released.add(task)
            task.cancel()
        return len(waiting)

    def _response(self, msg: Any, request_seq: int, rid: str, who: dict[str, Any]) -> Any:
        """Log the `response` entry of a response_headers message; the reply."""
        fields = self.capturer.response(msg)
        fields.update({KIND: KIND_RESPONSE, REF: request_seq, RID: rid, REPORTER: who})
        # Not awaited: the request already happened upstream, and holding its
        # response back would not undo it. The entry is durable with the next
        # group commit (well under 1 ms).
        self._append_nowait(fields)
        return _CONTINUE_RESPONSE if self.receipts is None else self.receipts.reply(request_seq)

    def _denied(self, e: LogUnavailableError) -> None:
        metrics.DENIED.inc()
        self._denials.warning("denying request (503): %s", e)

    async def _abort(self, context: grpc.aio.ServicerContext[Any, Any], e: Exception) -> None:
        """End a failed stream with its gRPC status (abort raises)."""
        if isinstance(e, ReporterRefused):  # --reporter-is-destination refuse: not a stream error
            self.identify.refused(e, "a report")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, e.message)
            return
        if isinstance(e, _StreamError):
            code, details = e.code, e.details
        elif isinstance(e, DecodeError):
            # Bytes that are not a ProcessingRequest (grpc.aio decodes them as it
            # reads): the caller's doing, not a failure of ours to log.
            code, details = grpc.StatusCode.INVALID_ARGUMENT, _UNDECODABLE % "ProcessingRequest"
        else:
            # A bug, not the caller's doing: one line (with the traceback, never
            # the exception text: it could carry request data) per interval,
            # however many streams hit it.
            code, details = grpc.StatusCode.INTERNAL, "internal error in audit server"
            self._failures.error(
                "ext_proc stream failed: %s\n%s",
                type(e).__name__,
                "".join(traceback.format_tb(e.__traceback__)),
            )
        metrics.STREAM_ERRORS.labels(code.name).inc()
        await context.abort(code, details)

    def _append_nowait(self, fields: dict[str, Any]) -> int | None:
        """Append without waiting for the disk; the seq, or None if dropped (counted)."""
        try:
            seq = self.log.append_nowait(fields)
        except LogUnavailableError as e:
            metrics.DROPPED.labels("backpressure").inc()
            self._drops.warning("%s entry not logged: %s", fields.get(KIND), e)
            return None
        kind = fields[KIND]
        counter = self._entries.get(kind)
        if counter is None:
            counter = self._entries[kind] = metrics.ENTRIES.labels(kind)
        counter.inc()
        return seq


async def _close_reader(request_iterator: AsyncIterator[Any]) -> None:
    """Close grpc.aio's reader of a stream the client has not half-closed.

    Its async generator still holds the last message, and sits in a reference
    cycle with the call: left alone, every such stream keeps its message (up
    to --max-message-bytes) until a full garbage collection (measured: 60
    messages of 4 MiB, RSS 160 -> 450 MB; docs/PERFORMANCE.md). Closing it
    runs no I/O and does not suspend.
    """
    reader = request_iterator.__aiter__()
    aclose = getattr(reader, "aclose", None)
    if aclose is not None:
        await aclose()


_UNDECODABLE = "message is not a %s (protobuf decoding failed)"


class _StreamError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _unsupported(which: str | None) -> _StreamError:
    if which in _UNSUPPORTED:
        return _StreamError(
            grpc.StatusCode.UNIMPLEMENTED,
            f"{which} is not audited; set processing_mode {_UNSUPPORTED[which]}",
        )
    return _StreamError(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected ext_proc message: {which}")
