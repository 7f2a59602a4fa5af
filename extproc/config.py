"""`serve`'s settings: every default defined once, checked by the object itself.

The command line, `serve --workers` children and the tests all build a
ServeConfig, and every one of them gets the same checks: a bad value is a
ConfigError (exit 2) before any file, port or store is touched. This module
imports only the pure core and trust policy (the reporter options build a
trust.policy.ReporterPolicy), so the command line can show defaults without
loading the server.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from extproc.core import layout
from extproc.core.bundle import MAX_BUNDLE_BYTES
from extproc.core.checkpoint import validate_origin_prefix
from extproc.core.receipt import DEFAULT_HEADER, validate_header_name
from extproc.core.redact import RedactionPolicy
from extproc.errors import ConfigError
from extproc.trust.policy import DESTINATION_CHECKS as DESTINATION_CHECKS  # option choices
from extproc.trust.policy import ReporterPolicy
from extproc.trust.sources import XFCC_MODES as XFCC_MODES  # option choices
from extproc.trust.sources import parse_networks

MODES = ("enforce", "observe")
RETENTION_MODES = ("COMPLIANCE", "GOVERNANCE")

LISTEN = "0.0.0.0:50051"
METRICS_LISTEN = "0.0.0.0:9464"
WAL_DIR = Path("extproc-wal")
ORIGIN_PREFIX = "extproc-audit"
BUNDLE_MAX_ENTRIES = 10_000
BUNDLE_MAX_BYTES = 16 << 20
BUNDLE_MAX_AGE = 0.5  # seconds an entry may wait before its bundle is sealed
RETRY_MAX_DELAY = 30.0  # seconds between store retries, at most
MAX_BACKLOG_BYTES = 128 << 20  # unpublished bytes before requests are denied
DRAIN_TIMEOUT = 20.0
# SIGTERM: seconds the server still takes new streams after its readiness went
# NOT_SERVING, so the callers' proxies learn the endpoint is gone (Kubernetes
# EndpointSlices, then istiod's EDS push) before anything is refused.
DRAIN_DELAY = 5.0
# SIGTERM: time Envoy gets to flush its access logs (istiod's config flushes every 1 s).
ACCESS_LOG_GRACE = 2.0
HEARTBEAT_INTERVAL = 60.0
SELF_AUDIT_INTERVAL = 300.0  # seconds between self-audits of the published log
# Cost per caller, bounded before any work (docs/THREATS.md). Envoy itself
# sends at most 100 headers in 60 KiB by default (max_headers_count,
# max_request_headers_kb), and access-log batches of its 64 KiB buffer.
MAX_MESSAGE_BYTES = 1 << 20
MAX_HEADERS = 256
MAX_HEADER_BYTES = 128 * 1024
MAX_STREAMS_PER_CONNECTION = 100
MAX_CONNECTION_AGE = 1800.0
STREAM_IDLE_TIMEOUT = 300.0
OUTCOME_WINDOW = 300.0  # seconds an enforced request waits for its access-log outcome
# Access-log intake, checked when a message's entry count is known and before
# any entry is built. Envoy sends a batch at 64 KiB (envoy/*.yaml) or 16 KiB
# (istiod's default) of ~300-byte entries: ~220 or ~55 per message; one stream
# is one Envoy worker thread, ~25,000 entries/s at saturation on the 2-core
# benchmark machine (docs/PERFORMANCE.md).
MAX_ACCESS_LOG_ENTRIES = 5_000  # per message
MAX_ACCESS_LOG_RATE = 50_000  # entries per second per stream
MAX_REPORTER_ACCESS_LOG_RATE = 100_000  # entries per second per reporter, all its streams
MAX_VALUE_BYTES = 2048
RECEIPT_HEADER = DEFAULT_HEADER
RESPONSE_HEADERS = frozenset(
    {"content-type", "content-length", "location", "set-cookie", "www-authenticate"}
)


def check_address(value: str, option: str, *, unix: bool = False, off: bool = False) -> None:
    """HOST:PORT (IPv6 in brackets), `unix:PATH` where allowed, `off` where allowed."""
    if off and value == "off":
        return
    if unix and value.startswith("unix:"):
        if len(value) == len("unix:"):
            raise ConfigError(f"{option} {value!r}: unix: needs a socket path")
        return
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        forms = "HOST:PORT" + (" or unix:PATH" if unix else "") + (" or off" if off else "")
        raise ConfigError(f"{option} {value!r} must be {forms}")
    host = host.strip("[]")
    if host and host != "localhost" and not _is_hostname(host):
        raise ConfigError(f"{option} {value!r}: {host!r} is not an address or host name")


def _is_hostname(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return all(part.replace("-", "").isalnum() for part in host.split("."))
    return True


@dataclass
class ServeConfig:
    store: str
    key: Path
    listen: str = LISTEN
    log_id: str = "default"
    wal_dir: Path = WAL_DIR
    mode: str = "enforce"
    origin_prefix: str = ORIGIN_PREFIX
    metrics_listen: str = METRICS_LISTEN
    bundle_max_entries: int = BUNDLE_MAX_ENTRIES
    bundle_max_bytes: int = BUNDLE_MAX_BYTES
    bundle_max_age: float = BUNDLE_MAX_AGE
    gzip: bool = False
    retention_days: int | None = None
    retention_mode: str = "COMPLIANCE"
    allow_no_object_lock: bool = False
    max_backlog_bytes: int = MAX_BACKLOG_BYTES
    drain_timeout: float = DRAIN_TIMEOUT
    drain_delay: float = DRAIN_DELAY  # SIGTERM: keep taking streams this long, NOT_SERVING
    # Above this resident size (MB), drain as on SIGTERM and exit 0 for the
    # orchestrator to restart the process: grpc.aio leaks native memory per
    # stream (docs/PERFORMANCE.md). 0: never.
    max_rss_mb: int = 0
    access_log_grace: float = ACCESS_LOG_GRACE
    heartbeat_interval: float = HEARTBEAT_INTERVAL  # idle writer appends a heartbeat; 0: never
    self_audit_interval: float = SELF_AUDIT_INTERVAL  # 0: no self-audit
    self_audit_fail_closed: bool = False  # NOT_SERVING while the published log has a hole
    reuse_port: bool = False  # set for `--workers`: several processes share the port
    redaction: RedactionPolicy = field(default_factory=RedactionPolicy)
    response_headers: frozenset[str] | None = RESPONSE_HEADERS  # None: all
    proof_listen: str = "off"  # live proof API address (docs/PROOFS.md); off by default
    receipt_header: str | None = None  # enforce mode: set this response header; None: off
    # Who may report (trust/policy.py, docs/THREATS.md).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    trust_xfcc_from: tuple[str, ...] = ()
    xfcc_by: str | None = None
    allow_reporters: tuple[str, ...] = ()
    reporter_is_destination: str = "off"
    xfcc_mode: str = XFCC_MODES[0]
    allow_unauthenticated: bool = False  # a plaintext listener without XFCC trust: development
    health_listen: str = "off"  # plaintext gRPC health only (probes of a TLS listener)
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_headers: int = MAX_HEADERS
    max_header_bytes: int = MAX_HEADER_BYTES
    max_streams_per_connection: int = MAX_STREAMS_PER_CONNECTION
    max_connection_age: float = MAX_CONNECTION_AGE  # seconds; 0: never
    stream_idle_timeout: float = STREAM_IDLE_TIMEOUT  # seconds; 0: never
    # ext_proc: wait for response headers and log a `response` entry (two-phase
    # filter config, no access-log service); receipts imply it.
    ext_proc_responses: bool = False
    outcome_window: float = OUTCOME_WINDOW
    max_access_log_entries: int = MAX_ACCESS_LOG_ENTRIES
    max_access_log_rate: float = MAX_ACCESS_LOG_RATE
    max_reporter_access_log_rate: float = MAX_REPORTER_ACCESS_LOG_RATE

    def __post_init__(self) -> None:
        self.validate()

    def replace(self, **changes: object) -> ServeConfig:
        """A copy with some settings changed, checked again."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def unix_socket(self) -> str | None:
        return self.listen[len("unix:") :] if self.listen.startswith("unix:") else None

    def validate(self) -> None:
        """Raise ConfigError, naming the option, for any setting serve cannot run with."""
        if not self.store:
            raise ConfigError("--store is required (or EXTPROC_AUDIT_STORE)")
        from extproc.store import check_store_url  # pure: the URL grammar, no client

        try:
            check_store_url(self.store)
        except ConfigError as e:
            raise ConfigError(f"--store: {e}") from None
        if not str(self.key):
            raise ConfigError("--key is required (or EXTPROC_AUDIT_KEY)")
        layout.validate_log_id(self.log_id)
        validate_origin_prefix(self.origin_prefix)  # a newline would forge checkpoint lines
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.retention_mode not in RETENTION_MODES:
            raise ConfigError(f"--retention-mode must be one of {', '.join(RETENTION_MODES)}")
        if self.retention_days is not None and self.retention_days < 1:
            raise ConfigError("--retention-days must be at least 1")
        check_address(self.listen, "--listen", unix=True)
        check_address(self.metrics_listen, "--metrics-listen", off=True)
        check_address(self.proof_listen, "--proof-listen", off=True)
        check_address(self.health_listen, "--health-listen", off=True)
        at_least: list[tuple[str, float, float]] = [
            ("--bundle-max-entries", self.bundle_max_entries, 1),
            ("--bundle-max-bytes", self.bundle_max_bytes, 64 * 1024),
            ("--max-backlog-bytes", self.max_backlog_bytes, 1024),
            ("--drain-timeout", self.drain_timeout, 0),
            ("--drain-delay", self.drain_delay, 0),
            ("--max-rss-mb", self.max_rss_mb, 0),
            ("--access-log-grace", self.access_log_grace, 0),
            ("--heartbeat-interval", self.heartbeat_interval, 0),
            ("--self-audit-interval", self.self_audit_interval, 0),
            ("--max-message-bytes", self.max_message_bytes, 64 * 1024),
            ("--max-headers", self.max_headers, 8),
            ("--max-header-bytes", self.max_header_bytes, 4096),
            ("--max-streams-per-connection", self.max_streams_per_connection, 1),
            ("--max-connection-age", self.max_connection_age, 0),
            ("--stream-idle-timeout", self.stream_idle_timeout, 0),
            ("outcome window", self.outcome_window, 1),
            ("--max-access-log-entries", self.max_access_log_entries, 1),
            ("--max-access-log-rate", self.max_access_log_rate, 1),
            ("--max-reporter-access-log-rate", self.max_reporter_access_log_rate, 1),
        ]
        for option, value, least in at_least:
            if not value >= least:  # also refuses NaN
                raise ConfigError(f"{option} must be at least {least:g}, not {value:g}")
        if self.bundle_max_bytes > MAX_BUNDLE_BYTES:  # readers refuse larger bundles
            raise ConfigError(
                f"--bundle-max-bytes must be at most {MAX_BUNDLE_BYTES} (the format's bundle "
                f"bound, docs/FORMAT.md), not {self.bundle_max_bytes}"
            )
        if not self.bundle_max_age > 0:
            raise ConfigError(f"--bundle-max-age must be positive, not {self.bundle_max_age:g}")
        if self.receipt_header is not None:
            validate_header_name(self.receipt_header)
            if self.mode != "enforce":
                raise ConfigError(
                    "--receipts needs --mode enforce (envoy ignores replies in observe mode)"
                )
        self._validate_reporters()

    def _validate_reporters(self) -> None:
        tls = (self.tls_cert, self.tls_key, self.client_ca)
        if any(tls) and not all(tls):
            raise ConfigError(
                "--tls-cert, --tls-key and --client-ca go together: the server's certificate "
                "and key, and the CA that signs the reporters' client certificates"
            )
        if all(tls) and self.trust_xfcc_from:
            raise ConfigError("--trust-xfcc-from is for a plaintext listener behind a sidecar")
        self.reporter_policy()  # checks the rest of the reporter options

    def reporter_policy(self) -> ReporterPolicy:
        transport = (
            "tls"
            if self.tls_cert and self.tls_key and self.client_ca
            else "unix"
            if self.unix_socket is not None
            else "plain"
        )
        return ReporterPolicy(
            transport=transport,
            unix_path=self.unix_socket or "",
            trust_xfcc_from=parse_networks(self.trust_xfcc_from, "--trust-xfcc-from"),
            xfcc_by=self.xfcc_by,
            allow=self.allow_reporters,
            destination=self.reporter_is_destination,
            xfcc_mode=self.xfcc_mode,
            allow_unauthenticated=self.allow_unauthenticated,
        )

    def grpc_options(self) -> list[tuple[str, int]]:
        """Per-connection bounds and keepalive for the ingest listener."""
        options = [
            # SO_REUSEPORT only when asked: otherwise a second server on the same
            # port would silently share it instead of failing to start.
            ("grpc.so_reuseport", int(self.reuse_port)),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
            # Find dead peers; accept Envoy's own keepalive pings (every 30 s,
            # envoyconf.py) instead of answering them with GOAWAY too_many_pings.
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_ping_strikes", 2),
        ]
        if self.max_connection_age > 0:
            # New streams move to a new connection (load spreads after scale-out);
            # streams in flight finish on the old one (no grace limit).
            options.append(("grpc.max_connection_age_ms", int(self.max_connection_age * 1000)))
        return options
