"""Prometheus metrics: every loss, denial and delay is visible here.

Names say their unit: `_total` counts events, `_seconds` times, `_entries`
log entries. No `*_created` series: prometheus_client would export one per
counter and histogram (the Unix time it was created), which reads like a
count next to `*_total`; a counter's reset is visible as a drop anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# prometheus_client declares it without annotations.
disable_created_metrics()  # type: ignore[no-untyped-call]

STREAMS = Counter("extproc_audit_streams_total", "ext_proc streams handled, by mode", ["mode"])
ENTRIES = Counter(
    "extproc_audit_entries_total",
    "ext_proc entries appended to the log, by kind (access-log entries: "
    "extproc_audit_access_entries_total; every entry: extproc_audit_log_entries)",
    ["kind"],
)
DENIED = Counter(
    "extproc_audit_denied_total",
    "Requests denied with 503 because the log could not take their entry (enforce mode)",
)
DROPPED = Counter(
    "extproc_audit_dropped_total",
    "Observe-mode exchanges or outcome entries not logged, by reason",
    ["reason"],
)
BACKPRESSURE = Counter(
    "extproc_audit_backpressure_total",
    "Entries refused by the log, by cause (backlog, wal)",
    ["cause"],
)
STREAM_ERRORS = Counter(
    "extproc_audit_stream_errors_total",
    "ext_proc streams ended with a gRPC error status, by code",
    ["code"],
)
WAL_COMMIT_SECONDS = Histogram(
    "extproc_audit_wal_commit_seconds",
    "Time of one WAL group commit (write + fsync)",
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0),
)
WAL_BATCH_ENTRIES = Histogram(
    "extproc_audit_wal_batch_entries",
    "Entries per WAL group commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024),
)
LOG_SIZE = Gauge(
    "extproc_audit_log_entries", "Durable entries in the log (its tree size in the WAL)"
)
PUBLISHED_SIZE = Gauge(
    "extproc_audit_published_entries",
    "Entries under the latest published checkpoint (its tree size)",
)
PUBLISH_ERRORS = Counter(
    "extproc_audit_publish_errors_total", "Failed object store writes (retried)"
)
OBJECTS_WRITTEN = Counter(
    "extproc_audit_objects_written_total", "Objects written to the store, by kind", ["kind"]
)
FENCED = Gauge(
    "extproc_audit_fenced",
    "1 when publishing stopped because another writer's object was found (fork)",
)
REPORTERS_REFUSED = Counter(
    "extproc_audit_reporters_refused_total",
    "Ingest streams refused with PERMISSION_DENIED before anything was logged, by reason "
    "(not_allowed, untrusted_peer, no_identity, destination_mismatch)",
    ["reason"],
)
DESTINATION_MISMATCHES = Counter(
    "extproc_audit_destination_mismatches_total",
    "Entries whose reporter is not the proxy of the workload that served the request "
    "(recorded in the entry: --reporter-is-destination record)",
)
STREAMS_CLOSED_BY_PEER = Counter(
    "extproc_audit_streams_closed_by_peer_total",
    "Streams whose final status could not be sent: the caller had already closed them",
)
STREAMS_RESET = Counter(
    "extproc_audit_streams_reset_total",
    "Enforce-mode ext_proc streams the reporter reset after their reply instead of "
    "half-closing them "
    "(an Envoy without ext_proc_graceful_grpc_close: docs/ISTIO.md); a lower bound, gRPC "
    "reports some resets as a half-close",
)
STREAMS_TIMED_OUT = Counter(
    "extproc_audit_streams_timed_out_total",
    "Ingest streams ended because they sent nothing for --stream-idle-timeout seconds",
)
FOREIGN_OBJECTS = Counter(
    "extproc_audit_foreign_objects_total",
    "Objects not written by this log's writer found at a key of its log, by kind; the writer "
    "records each in the log and continues in a new epoch",
    ["kind"],
)
STORE_WORM = Gauge(
    "extproc_audit_store_worm",
    "1 when the store keeps what is published write-once under retention (S3 Object Lock); "
    "0 for a local directory or a bucket without Object Lock (--allow-no-object-lock), where "
    "anyone with write access can change or delete published objects",
)
EPOCH = Gauge(
    "extproc_audit_epoch",
    "The writer's epoch: raised by a foreign object at a key it had to write or a key rotation",
)
ACCESS_STREAMS = Counter(
    "extproc_audit_access_log_streams_total", "Access-log (ALS) streams opened by reporters"
)
ACCESS_ENTRIES = Counter(
    "extproc_audit_access_entries_total",
    "HTTP access-log entries logged, by reporter id (compare with Envoy's "
    "access_logs.grpc_access_log.logs_written: docs/ARCHITECTURE.md)",
    ["reporter"],
)
ACCESS_REFUSED = Counter(
    "extproc_audit_access_refused_total",
    "Access-log entries refused, by type (tcp: the audit is of HTTP requests)",
    ["type"],
)
ACCESS_BUDGET_REFUSED = Counter(
    "extproc_audit_access_budget_refused_total",
    "Access-log entries refused whole with their message before any was built, by reporter "
    "and budget (message: --max-access-log-entries, stream_rate: --max-access-log-rate, "
    "reporter_rate: --max-reporter-access-log-rate); the stream ended with RESOURCE_EXHAUSTED",
    ["reporter", "budget"],
)
OUTCOMES = Counter(
    "extproc_audit_outcomes_total",
    "Access-log entries matched to the enforce-mode request entry they complete (matched), "
    "not matched (unmatched: the route was not enforced, or the request entry is gone), and "
    "request entries whose outcome never came within the window (expired)",
    ["result"],
)
OBJECTS_CONFIRMED = Counter(
    "extproc_audit_objects_confirmed_total",
    "Objects the store showed back with the SHA-256 written, by kind: only these count as "
    "published",
    ["kind"],
)
OBJECTS_REPAIRED = Counter(
    "extproc_audit_objects_repaired_total",
    "Writes the store acknowledged but did not keep, written again from the WAL, by kind",
    ["kind"],
)
BACKLOG_BYTES = Gauge(
    "extproc_audit_backlog_bytes",
    "WAL bytes appended but not yet published (requests are refused above "
    "extproc_audit_backlog_limit_bytes)",
)
BACKLOG_LIMIT = Gauge(
    "extproc_audit_backlog_limit_bytes", "The backlog bound (--max-backlog-bytes)"
)
LAST_CHECKPOINT = Gauge(
    "extproc_audit_last_checkpoint_timestamp_seconds",
    "Time of the newest checkpoint the store confirmed (0 before the first)",
)
REPORTER_LAST_SEEN = Gauge(
    "extproc_audit_reporter_last_seen_timestamp_seconds",
    "When each authenticated reporter (its SPIFFE ID, XFCC identity or peer) last sent an "
    "entry: a reporter seen before and silent now has stopped reporting",
    ["reporter"],
)
SELF_AUDIT_RUNS = Counter(
    "extproc_audit_self_audit_runs_total",
    "Self-audits of the published log, by result (ok, repaired: a gap filled from the WAL, "
    "failed: a problem the WAL cannot repair, error: the store could not be read)",
    ["result"],
)
WITNESS_REQUESTS = Counter(
    "extproc_audit_witness_requests_total",
    "add-checkpoint requests to each --witness, by result (ok, conflict: the witness saw "
    "another tree, refused, unreachable, bad_cosignature)",
    ["witness", "result"],
)
WITNESSED_SIZE = Gauge(
    "extproc_audit_witnessed_size",
    "Tree size of the latest checkpoint cosigned by --witness-quorum witnesses, in entries",
)
SELF_AUDIT_UNREPAIRED = Gauge(
    "extproc_audit_self_audit_unrepaired",
    "Problems the last self-audit found in the published log and could not repair",
)
SELF_AUDIT_VERIFIED = Gauge(
    "extproc_audit_self_audit_verified_entries",
    "Entries of the published log the self-audit has verified, from the store, with the "
    "verifier's code",
)
SELF_AUDIT_LAST_OK = Gauge(
    "extproc_audit_self_audit_last_success_timestamp_seconds",
    "Time the self-audit last found the published log valid",
)


T = TypeVar("T")

# Distinct reporter labels per metric: a caller cycling identities (each
# allowed one costs a certificate) cannot grow the metrics without bound.
MAX_REPORTER_LABELS = 1000


class PerReporter(Generic[T]):
    """Metric children by reporter label, made on first use; past
    MAX_REPORTER_LABELS distinct labels the rest share "other"."""

    def __init__(self, make: Callable[[str], T]) -> None:
        self._make = make
        self._children: dict[str, T] = {}

    def get(self, label: str) -> T:
        child = self._children.get(label)
        if child is None:
            if len(self._children) >= MAX_REPORTER_LABELS:
                label = "other"
                child = self._children.get(label)
            if child is None:
                child = self._children[label] = self._make(label)
        return child
