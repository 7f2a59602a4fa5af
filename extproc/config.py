"""`serve`'s settings: each declared once, checked by the object itself.

Each setting is a ServeConfig field; one that is a command-line option carries
its help, group, converter and default (extproc/options.py), and the command
line generates `serve`'s parser and builds the ServeConfig from them
(extproc/cli/serve.py). The command line, `serve --workers` children and the
tests all build a ServeConfig, and every one of them gets the same checks: a
bad value is a ConfigError (exit 2) before any port or store is opened or
anything is written (the hash key file is read, to check it). This module
imports only the core, the trust policy (the reporter options build a
trust.policy.ReporterPolicy) and the options, so the command line can show defaults
without loading the server.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from extproc import options
from extproc.core import layout
from extproc.core.bundle import MAX_BUNDLE_BYTES
from extproc.core.checkpoint import validate_origin_prefix
from extproc.core.cosignature import WitnessPolicy
from extproc.core.receipt import DEFAULT_HEADER, validate_header_name
from extproc.core.redact import (
    DEFAULT_CLEAR_HEADERS,
    DEFAULT_CLEAR_PARAMS,
    DEFAULT_URL_HEADERS,
    MAX_VALUE_BYTES,
    QUERY_MODES,
    RedactionPolicy,
    check_header_name,
)
from extproc.core.witness import parse_witness
from extproc.errors import ConfigError
from extproc.options import FLOAT, INT, LOG_ID, PATH, Convert, int_at_least, option
from extproc.trust.policy import DESTINATION_CHECKS as DESTINATION_CHECKS  # option choices
from extproc.trust.policy import ReporterPolicy
from extproc.trust.sources import XFCC_MODES as XFCC_MODES  # option choices
from extproc.trust.sources import parse_networks

# Choices of an option: the first is its default.
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


# Option groups of `serve --help`, in order, with what each says above its options.
GROUPS = {
    "log and store": None,
    "listeners": None,
    "publication": None,
    "entries": None,
    "redaction (docs/FORMAT.md)": "Default-deny: a value is stored in clear only under a name "
    "on the allow-list; every other value is stored as its keyed hash (--hash-key) or "
    "[redacted]. Names stay visible.",
    "reporters": "Who may write entries (docs/THREATS.md). One of --tls-cert/--tls-key/"
    "--client-ca, --trust-xfcc-from or a unix: listener is required; without them serve "
    "refuses to start unless --allow-unauthenticated (development only: every entry is then "
    "marked unauthenticated).",
    "limits": "Cost per caller, bounded before any work.",
}
_STORE, _LISTEN, _PUBLISH, _ENTRIES, _REDACT, _REPORTERS, _LIMITS = GROUPS


def _writer_store(text: str) -> str:
    """serve's --store: its syntax (the writer creates a local store directory)."""
    from extproc.store import check_store_url  # pure: the URL grammar, no client

    return check_store_url(text)


def default_log_id() -> str:
    """The pod name in Kubernetes (HOSTNAME), sanitised to the log id alphabet."""
    name = os.environ.get("HOSTNAME") or socket.gethostname() or "default"
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in name)[:128]
    return cleaned.strip(".") or "default"


def _header_set(text: str) -> frozenset[str] | None:
    """--response-headers: comma-separated names, or '*' (None: all)."""
    if text.strip() == "*":
        return None
    return frozenset(h.strip().lower() for h in text.split(",") if h.strip())


def _text_or_none(text: str) -> str | None:
    return text or None


@dataclass
class ServeConfig:
    """Every setting of `serve`. A field that is an option (extproc/options.py)
    declares its flag, EXTPROC_AUDIT_* form, help and converter here, once;
    the redaction policy is derived from its options, and validate() checks
    the whole."""

    store: str = option(
        group=_STORE,
        convert=Convert(_writer_store, "a store URL"),
        metavar="URL",
        help="s3://bucket/prefix (endpoint from AWS_ENDPOINT_URL) or a directory (required)",
    )
    key: Path = option(
        group=_STORE, convert=PATH, metavar="FILE", help="signing key file from keygen (required)"
    )
    log_id: str = option(
        "default",
        group=_STORE,
        convert=LOG_ID,
        metavar="ID",
        cli_default=default_log_id,
        help="this writer's log id, one per process (default: the host name)",
    )
    wal_dir: Path = option(
        WAL_DIR,
        group=_STORE,
        convert=PATH,
        metavar="DIR",
        help="write-ahead log directory; the WAL lives in <wal-dir>/<log-id>/",
    )
    mode: str = option(
        MODES[0],
        group=_STORE,
        choices=MODES,
        help="enforce: ext_proc holds each request until its entry is durable; observe: "
        "nothing waits (the access-log service is served in both)",
    )
    origin_prefix: str = option(
        ORIGIN_PREFIX,
        group=_STORE,
        convert=options.ORIGIN_PREFIX,
        metavar="PREFIX",
        help="checkpoint origin is <origin prefix>/<log id>",
    )
    listen: str = option(
        LISTEN,
        group=_LISTEN,
        metavar="ADDR",
        help="ext_proc, access-log service and gRPC health: HOST:PORT or unix:PATH",
    )
    metrics_listen: str = option(
        METRICS_LISTEN, group=_LISTEN, metavar="ADDR", help="Prometheus metrics address, or off"
    )
    health_listen: str = option(
        "off",
        group=_LISTEN,
        metavar="ADDR",
        help="plaintext gRPC health only, e.g. 127.0.0.1:50052, for probes of a TLS or "
        "unix-socket listener",
    )
    proof_listen: str = option(
        "off",
        group=_LISTEN,
        metavar="ADDR",
        help="live proof API address, e.g. 127.0.0.1:50052; serves reads of the log, "
        "so keep it off the mesh",
    )
    workers: int = option(
        1,
        group=_LISTEN,
        convert=int_at_least(1),
        metavar="N",
        help="writer processes sharing the listen port, each with its own log id "
        "<log-id>-w<i> and metrics port +i",
    )
    bundle_max_entries: int = option(
        BUNDLE_MAX_ENTRIES,
        group=_PUBLISH,
        convert=INT,
        metavar="N",
        help="seal a bundle at this many entries",
    )
    bundle_max_bytes: int = option(
        BUNDLE_MAX_BYTES,
        group=_PUBLISH,
        convert=INT,
        metavar="BYTES",
        help="seal a bundle at this many bytes",
    )
    bundle_max_age: float = option(
        BUNDLE_MAX_AGE,
        group=_PUBLISH,
        convert=FLOAT,
        metavar="SECONDS",
        help="seal a bundle once its oldest entry is this many seconds old",
    )
    gzip: bool = option(False, group=_PUBLISH, kind="flag", help="write bundles as .jsonl.gz")
    retention_days: int | None = option(
        None,
        group=_PUBLISH,
        convert=INT,
        metavar="DAYS",
        help="Object Lock retention per object (default: the bucket's default rule)",
    )
    retention_mode: str = option(
        RETENTION_MODES[0], group=_PUBLISH, choices=RETENTION_MODES, help="with --retention-days"
    )
    allow_no_object_lock: bool = option(
        False,
        group=_PUBLISH,
        kind="flag",
        help="development only: accept a bucket without Object Lock",
    )
    max_backlog_bytes: int = option(
        MAX_BACKLOG_BYTES,
        group=_PUBLISH,
        convert=INT,
        metavar="BYTES",
        help="deny (enforce) or drop (observe) past this many unpublished bytes",
    )
    drain_timeout: float = option(
        DRAIN_TIMEOUT,
        group=_PUBLISH,
        convert=FLOAT,
        metavar="SECONDS",
        help="seconds to drain streams and publish on SIGTERM",
    )
    drain_delay: float = option(
        DRAIN_DELAY,
        group=_PUBLISH,
        convert=FLOAT,
        metavar="SECONDS",
        help="on SIGTERM, seconds the server reports NOT_SERVING but still takes new streams, "
        "so callers' proxies drop its endpoint first (SIGINT: none)",
    )
    # grpc.aio leaks native memory per stream (docs/PERFORMANCE.md).
    max_rss_mb: int = option(
        0,
        group=_PUBLISH,
        convert=INT,
        metavar="MB",
        help="above this resident memory, drain as on SIGTERM and exit 0, for the orchestrator "
        "to restart a fresh process (gRPC's native memory grows per stream); 0: never",
    )
    access_log_grace: float = option(
        ACCESS_LOG_GRACE,
        group=_PUBLISH,
        convert=FLOAT,
        metavar="SECONDS",
        help="on SIGTERM, seconds Envoy gets to flush its access logs before their streams "
        "end (at least Envoy's buffer_flush_interval: 0.2 s in envoy/*.yaml, 1 s from istiod)",
    )
    heartbeat_interval: float = option(
        HEARTBEAT_INTERVAL,
        group=_PUBLISH,
        convert=FLOAT,
        metavar="SECONDS",
        help="an idle writer logs a heartbeat entry this often (seconds), so auditors can "
        "tell 'no traffic' from 'writer down'; 0 disables",
    )
    self_audit_interval: float = option(
        SELF_AUDIT_INTERVAL,
        group=_PUBLISH,
        convert=FLOAT,
        metavar="SECONDS",
        help="verify the published log (what is new since the last run) on start and this "
        "often, writing again from the WAL what the store lost; 0 disables",
    )
    self_audit_fail_closed: bool = option(
        False,
        group=_PUBLISH,
        kind="flag",
        help="report NOT_SERVING on the health service while the self-audit finds a problem "
        "the WAL cannot repair",
    )
    witnesses: tuple[str, ...] = option(
        (),
        group=_PUBLISH,
        kind="list",
        name="witness",
        metavar="NAME+KEY+URL",
        help="a C2SP tlog-witness to cosign each checkpoint: its verifier key (type 0x04) and "
        "its submission URL, e.g. w1.example+1a2b3c4d+BAbc...+https://w1.example/witness; "
        "cosigned checkpoints go to cosigned/<size> (docs/FORMAT.md); a witness down never "
        "blocks publication (repeatable)",
    )
    witness_quorum: int | None = option(
        None,
        group=_PUBLISH,
        convert=INT,
        metavar="K",
        help="how many --witness cosignatures a checkpoint needs to count as witnessed "
        "(extproc_audit_witnessed_size; default: all of them)",
    )
    response_headers: frozenset[str] | None = option(  # None: all
        RESPONSE_HEADERS,
        group=_ENTRIES,
        convert=Convert(_header_set, "header names"),
        metavar="NAMES",
        cli_default=lambda: ", ".join(sorted(RESPONSE_HEADERS)),
        help="ext_proc response headers to record, comma-separated, or '*' for all",
    )
    # Wait for response headers and log a `response` entry (two-phase filter
    # config, no access-log service); receipts imply it.
    ext_proc_responses: bool = option(
        False,
        group=_ENTRIES,
        kind="flag",
        help="wait for the response-headers phase of each ext_proc stream and log a response "
        "entry from it (a two-phase filter config without the access-log service); default: "
        "end the stream after the request entry, the outcome arrives by the access-log service",
    )
    receipts: bool = option(
        False,
        group=_ENTRIES,
        kind="flag",
        help="enforce mode: answer each audited request with a receipt header naming "
        "its log and entry seq (needs the ext_proc response phase)",
    )
    receipt_header: str = option(
        RECEIPT_HEADER, group=_ENTRIES, metavar="NAME", help="name of the receipt header"
    )
    hash_key: Path | None = option(
        None,
        group=_REDACT,
        convert=PATH,
        metavar="FILE",
        help="store values that are not allowed as HMAC-SHA-256 under this key "
        "(hmac-sha256:<key id>:<digest>; `hash-keygen` creates one, `hash-value` computes "
        "the stored form of a candidate) instead of [redacted]",
    )
    hmac_key_file: Path | None = option(
        None,
        group=_REDACT,
        convert=PATH,
        metavar="FILE",
        help="the same as --hash-key (its earlier name)",
    )
    clear_headers: tuple[str, ...] = option(
        (),
        group=_REDACT,
        kind="list",
        name="clear_header",
        metavar="NAME",
        help="also store this header's value in clear (repeatable; widens the allow-list)",
    )
    clear_params: tuple[str, ...] = option(
        (),
        group=_REDACT,
        kind="list",
        name="clear_param",
        metavar="NAME",
        help="also store this query parameter's value in clear (repeatable; widens the allow-list)",
    )
    hash_path_templates: tuple[str, ...] = option(
        (),
        group=_REDACT,
        kind="list",
        name="hash_path_template",
        metavar="TEMPLATE",
        help="hash the path segments this route template names, e.g. '/reset/{token}' "
        "({name} is one segment; repeatable)",
    )
    redact_headers: tuple[str, ...] = option(
        (),
        group=_REDACT,
        kind="list",
        name="redact_header",
        metavar="NAME",
        help="hash this header's value even if it is on the allow-list (repeatable)",
    )
    redact_url_headers: tuple[str, ...] = option(
        (),
        group=_REDACT,
        kind="list",
        name="redact_url_header",
        metavar="NAME",
        help="store this header as a URL, like the request path (host and path in clear, "
        "parameters as the allow-list says) instead of hashing it whole (repeatable; "
        "location, referer, origin, content-location, ... always)",
    )
    redact_query_params: tuple[str, ...] = option(
        (),
        group=_REDACT,
        kind="list",
        name="redact_query_param",
        metavar="NAME",
        help="hash this query parameter's value even if it is on the allow-list (repeatable)",
    )
    query_mode: str = option(
        QUERY_MODES[0],
        group=_REDACT,
        choices=QUERY_MODES,
        help="query strings: sensitive (values of allowed parameters in clear, others "
        "hashed; default), all (every value hashed), keep (query and fragment as sent), "
        "drop (not stored)",
    )
    max_value_bytes: int = option(
        MAX_VALUE_BYTES,
        group=_REDACT,
        convert=INT,
        metavar="BYTES",
        help="truncate header values longer than this",
    )
    # Who may report (trust/policy.py, docs/THREATS.md).
    tls_cert: Path | None = option(
        None, group=_REPORTERS, convert=PATH, metavar="FILE", help="server certificate (PEM): mTLS"
    )
    tls_key: Path | None = option(
        None, group=_REPORTERS, convert=PATH, metavar="FILE", help="its private key (PEM)"
    )
    client_ca: Path | None = option(
        None,
        group=_REPORTERS,
        convert=PATH,
        metavar="FILE",
        help="CA bundle (PEM) that signs reporters' client certificates; a certificate is then "
        "required, and the reporter is its SPIFFE id (URI SAN), else its subject",
    )
    trust_xfcc_from: tuple[str, ...] = option(
        (),
        group=_REPORTERS,
        kind="list",
        metavar="CIDR",
        help="behind the server's own sidecar (Istio: 127.0.0.6/32 and ::6/128): connections "
        "from here carry the reporter in the x-forwarded-client-cert element the proxy added "
        "(repeatable)",
    )
    xfcc_by: str | None = option(
        None,
        group=_REPORTERS,
        convert=Convert(_text_or_none, "text"),
        metavar="GLOB",
        help="with --trust-xfcc-from: the element's By= (the server's own identity) must match",
    )
    xfcc_mode: str = option(
        XFCC_MODES[0],
        group=_REPORTERS,
        choices=XFCC_MODES,
        help="with --trust-xfcc-from: what the own sidecar does with x-forwarded-client-cert "
        "(its forward_client_cert_details): SANITIZE_SET (default, as the shipped StatefulSet "
        "pins it) leaves exactly its own element, APPEND_FORWARD appends it to the caller's; "
        "any other header is refused",
    )
    allow_unauthenticated: bool = option(  # a plaintext listener without XFCC trust
        False,
        group=_REPORTERS,
        kind="flag",
        help="development only: a plaintext listener without --trust-xfcc-from takes anyone's "
        "entries, each marked reporter.auth unauthenticated (verify counts them)",
    )
    allow_reporters: tuple[str, ...] = option(
        (),
        group=_REPORTERS,
        kind="list",
        name="allow_reporter",
        metavar="GLOB",
        help="admit only reporters whose id matches (fnmatch, repeatable); anyone else gets "
        "PERMISSION_DENIED before anything is logged",
    )
    reporter_is_destination: str = option(
        DESTINATION_CHECKS[0],
        group=_REPORTERS,
        choices=DESTINATION_CHECKS,
        help="per-pod proxies: the reporter must be the identity the request was served as "
        "(Envoy's local certificate); record a mismatch in the entry, or refuse it",
    )
    max_message_bytes: int = option(
        MAX_MESSAGE_BYTES,
        group=_LIMITS,
        convert=INT,
        metavar="BYTES",
        help="largest gRPC message accepted; Envoy sends at most ~64 KiB of headers by default "
        "(max_request_headers_kb 60) and access-log batches of its buffer size",
    )
    max_headers: int = option(
        MAX_HEADERS,
        group=_LIMITS,
        convert=INT,
        metavar="N",
        help="headers looked at per request or response; more are counted, not stored "
        "(Envoy's own default limit is 100)",
    )
    max_header_bytes: int = option(
        MAX_HEADER_BYTES,
        group=_LIMITS,
        convert=INT,
        metavar="BYTES",
        help="header bytes looked at per request or response",
    )
    max_streams_per_connection: int = option(
        MAX_STREAMS_PER_CONNECTION,
        group=_LIMITS,
        convert=INT,
        metavar="N",
        help="concurrent gRPC streams per connection",
    )
    max_connection_age: float = option(
        MAX_CONNECTION_AGE,
        group=_LIMITS,
        convert=FLOAT,
        metavar="SECONDS",
        help="seconds before a connection is asked to move new streams elsewhere; 0: never",
    )
    stream_idle_timeout: float = option(
        STREAM_IDLE_TIMEOUT,
        group=_LIMITS,
        convert=FLOAT,
        metavar="SECONDS",
        help="end an ext_proc stream silent this many seconds (with a response phase, the "
        "longest wait for response headers); 0: never",
    )
    max_access_log_entries: int = option(
        MAX_ACCESS_LOG_ENTRIES,
        group=_LIMITS,
        convert=INT,
        metavar="N",
        help="entries per access-log message; a larger one is refused whole (RESOURCE_EXHAUSTED) "
        "before any entry is built (Envoy's 64 KiB buffer holds ~220)",
    )
    max_access_log_rate: float = option(
        MAX_ACCESS_LOG_RATE,
        group=_LIMITS,
        convert=FLOAT,
        metavar="N",
        help="access-log entries per second per stream (one second's worth may come at once); "
        "a message past it is refused whole",
    )
    max_reporter_access_log_rate: float = option(
        MAX_REPORTER_ACCESS_LOG_RATE,
        group=_LIMITS,
        convert=FLOAT,
        metavar="N",
        help="access-log entries per second per reporter, all its streams together",
    )
    # Not options: set for `--workers` (several processes share the port), and
    # the access-log outcome window.
    reuse_port: bool = False
    outcome_window: float = OUTCOME_WINDOW
    # Derived from the redaction options by validate().
    redaction: RedactionPolicy = field(init=False)

    def __post_init__(self) -> None:
        self.validate()

    def replace(self, **changes: object) -> ServeConfig:
        """A copy with some settings changed, checked again."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def unix_socket(self) -> str | None:
        return self.listen[len("unix:") :] if self.listen.startswith("unix:") else None

    def validate(self) -> None:
        """Raise ConfigError, naming the option, for any setting serve cannot run with;
        derive the redaction policy from its options (checked first)."""
        self.redaction = self._redaction_policy()
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
            ("--workers", self.workers, 1),
        ]
        for flag, value, least in at_least:
            if not value >= least:  # also refuses NaN
                raise ConfigError(f"{flag} must be at least {least:g}, not {value:g}")
        if self.bundle_max_bytes > MAX_BUNDLE_BYTES:  # readers refuse larger bundles
            raise ConfigError(
                f"--bundle-max-bytes must be at most {MAX_BUNDLE_BYTES} (the format's bundle "
                f"bound, docs/FORMAT.md), not {self.bundle_max_bytes}"
            )
        if not self.bundle_max_age > 0:
            raise ConfigError(f"--bundle-max-age must be positive, not {self.bundle_max_age:g}")
        if self.receipts:
            validate_header_name(self.receipt_header)
            if self.mode != "enforce":
                raise ConfigError(
                    "--receipts needs --mode enforce (envoy ignores replies in observe mode)"
                )
        self._validate_reporters()
        self.witness_policy()
        if self.workers > 1 and (self.listen.endswith(":0") or self.unix_socket is not None):
            raise ConfigError("--workers needs a fixed TCP --listen port (workers share it)")

    def witness_policy(self) -> tuple[WitnessPolicy, tuple[str, ...]] | None:
        """The witnesses' k-of-n policy and their URLs (None without --witness)."""
        if not self.witnesses:
            if self.witness_quorum is not None:
                raise ConfigError("--witness-quorum needs --witness")
            return None
        try:
            parsed = [parse_witness(text) for text in self.witnesses]
            policy = WitnessPolicy.of((key for key, _ in parsed), self.witness_quorum)
        except ConfigError as e:
            raise ConfigError(f"--witness: {e}") from None
        return policy, tuple(url for _, url in parsed)

    def _redaction_policy(self) -> RedactionPolicy:
        """The default allow-lists, widened and narrowed as the redaction options say."""
        from extproc.hashkey import load_hash_key

        key_files = {Path(f) for f in (self.hash_key, self.hmac_key_file) if f}
        if len(key_files) > 1:
            raise ConfigError("--hash-key and --hmac-key-file name different files: give one")
        hash_key = None
        if key_files:
            flag = "--hash-key" if self.hash_key else "--hmac-key-file"
            try:
                hash_key = load_hash_key(key_files.pop())
            except ConfigError as e:
                raise ConfigError(f"{flag}: {e}") from None

        def headers(name: str) -> frozenset[str]:
            flag = options.flag_of(ServeConfig, name)
            return frozenset(check_header_name(v, flag) for v in getattr(self, name) if v.strip())

        def names(name: str) -> frozenset[str]:
            return frozenset(v.strip().lower() for v in getattr(self, name) if v.strip())

        return RedactionPolicy(
            clear_headers=DEFAULT_CLEAR_HEADERS | headers("clear_headers"),
            clear_params=DEFAULT_CLEAR_PARAMS | names("clear_params"),
            redact_headers=headers("redact_headers"),
            redact_query_params=names("redact_query_params"),
            url_headers=DEFAULT_URL_HEADERS | headers("redact_url_headers"),
            path_templates=tuple(self.hash_path_templates),
            query_mode=self.query_mode,
            hmac_key=hash_key,
            max_value_bytes=self.max_value_bytes,
        )

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
