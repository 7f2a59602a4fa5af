"""The one way an ingest stream learns its reporter: ext_proc and the
access-log service both call a StreamIdentifier when a stream opens, before
any of its messages is read (trust/policy.py decides; this reads the gRPC
context and answers a refusal)."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from extproc import metrics
from extproc.ratelog import RateLimitedLog
from extproc.trust.policy import ReporterPolicy
from extproc.trust.reporter import Reporter, ReporterRefused

log = logging.getLogger(__name__)


class StreamIdentifier:
    """A stream's reporter by `policy`; a caller that may not report gets
    PERMISSION_DENIED. Costs one `auth_context()` or metadata read per stream,
    and only what the listener's identity source reads."""

    def __init__(self, policy: ReporterPolicy) -> None:
        self.policy = policy
        self._auth_context = policy.source.needs_auth_context
        self._metadata = policy.source.needs_metadata
        self._refusals = RateLimitedLog(log)

    async def __call__(self, context: grpc.aio.ServicerContext[Any, Any]) -> Reporter:
        try:
            return self.policy.identify(
                context.peer(),
                context.auth_context() if self._auth_context else None,
                context.invocation_metadata() if self._metadata else (),
            )
        except ReporterRefused as e:
            self.refused(e, "a reporter")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, e.message)
            raise  # not reached: abort raises

    def refused(self, e: ReporterRefused, what: str) -> None:
        """Count a refusal, and say so (at most one line per interval)."""
        metrics.REPORTERS_REFUSED.labels(e.reason).inc()
        self._refusals.warning("refused %s (%s): %s", what, e.reason, e.message)
