"""extproc-audit command line.

Exit codes (every command): 0 success; 1 verification found the log invalid;
2 usage, configuration or infrastructure error.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import socket
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from extproc import __version__
from extproc.errors import AuditError, ConfigError, VerificationError

if TYPE_CHECKING:
    from extproc.audit.prove import Prover
    from extproc.config import ServeConfig
    from extproc.core.keyring import Keyring

EXIT_OK, EXIT_INVALID, EXIT_ERROR = 0, 1, 2
ENV_PREFIX = "EXTPROC_AUDIT_"


class _FromEnv(str):
    """A default read from the environment, so that a bad value names its variable."""

    variable = ""


# Variables whose values argparse converted (typed options not given on the
# command line): a later check of the converted value can still name them.
_CONVERTED_FROM_ENV: set[str] = set()


def _env_name(option: str) -> str:
    return ENV_PREFIX + option.upper().replace("-", "_")


def _env(option: str, default: object = None) -> object:
    """EXTPROC_AUDIT_<OPTION> if set (as a string argparse converts with the
    option's type: a bad value is a usage error naming the variable), else `default`."""
    name = _env_name(option)
    value = os.environ.get(name)
    if value is None:
        return default
    text = _FromEnv(value)
    text.variable = name
    return text


def _typed(convert: Callable[[str], object], what: str) -> Callable[[str], object]:
    """An argparse type that says which variable a bad value came from."""

    def parse(text: str) -> object:
        if isinstance(text, _FromEnv):
            _CONVERTED_FROM_ENV.add(text.variable)
        try:
            return convert(text)
        except ConfigError as e:  # a check that explains itself
            where = f"{text.variable}={text!r}: " if isinstance(text, _FromEnv) else ""
            raise argparse.ArgumentTypeError(f"{where}{e}") from None
        except ValueError:
            where = f"{text.variable}=" if isinstance(text, _FromEnv) else ""
            raise argparse.ArgumentTypeError(f"{where}{text!r} is not {what}") from None

    return parse


def _at_least(least: float, convert: Callable[[str], float] = float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = convert(text)
        if not value >= least:  # also refuses NaN
            raise ValueError(text)
        return value

    return parse


def _one_of(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(text)
        return str(text)

    return parse


def _choice(choices: Sequence[str]) -> Callable[[str], object]:
    """choices= that also checks a value from the environment, naming its variable."""
    return _typed(_one_of(choices), "one of " + ", ".join(choices))


_INT = _typed(int, "an integer")
_FLOAT = _typed(float, "a number")


def _int_at_least(least: int) -> Callable[[str], object]:
    return _typed(_at_least(least, int), f"an integer >= {least}")


def _add_bundle_bound(p: _Parser) -> None:
    """--max-bundle-bytes of the commands that read bundles."""
    from extproc.core.bundle import MAX_BUNDLE_BYTES

    p.add_argument(
        "--max-bundle-bytes",
        type=_int_at_least(64 * 1024),
        default=MAX_BUNDLE_BYTES,
        metavar="BYTES",
        help="refuse (as a finding) a bundle whose lines take more, stored or decompressed "
        f"(default {MAX_BUNDLE_BYTES}: the format's bound, serve's largest --bundle-max-bytes)",
    )


def _above(bound: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if not value > bound:  # also refuses NaN
            raise ValueError(text)
        return value

    return parse


def _non_empty_path(text: str) -> Path:
    # Path("") is ".": an empty EXTPROC_AUDIT_WAL_DIR would write the WAL here.
    if not text:
        raise ConfigError("an empty path")
    return Path(text)


_PATH = _typed(_non_empty_path, "a path")
_NON_NEGATIVE = _typed(_at_least(0.0), "a number >= 0")
_POSITIVE = _typed(_above(0.0), "a number > 0")


def _reader_store(text: str) -> str:
    """A store URL to read from: a local store path must exist (readers never
    create one; a mistyped path is not an empty log)."""
    from extproc.store import check_store_url

    return check_store_url(text, must_exist=True)


def _writer_store(text: str) -> str:
    """serve's --store: its syntax (the writer creates a local store directory)."""
    from extproc.store import check_store_url

    return check_store_url(text)


def _log_id(text: str) -> str:
    from extproc.core import layout

    return layout.validate_log_id(text)


def _origin_prefix(text: str) -> str:
    from extproc.core.checkpoint import validate_origin_prefix

    return validate_origin_prefix(text, "origin prefix")


def _demo_store(text: str) -> str:
    from extproc.store import check_store_url

    if text.startswith("memory://"):
        raise ConfigError(
            "the demo's store must outlive its server: give s3://bucket/prefix or a directory"
        )
    return check_store_url(text)


def _bucket_url(text: str) -> str:
    """init-bucket's s3://BUCKET: it sets up a whole bucket, so no prefix."""
    from extproc.store import parse_store_url

    parsed = parse_store_url(text)
    bucket, prefix = parsed.bucket, parsed.prefix
    if bucket is None:
        raise ConfigError(f"init-bucket needs an s3://BUCKET URL, not {text!r}")
    if prefix:
        raise ConfigError(
            f"init-bucket sets up a whole bucket: give s3://{bucket} without the prefix "
            f"{prefix!r} (serve, verify and search take s3://{bucket}/{prefix})"
        )
    return text


def _address(text: str) -> str:
    """health's --addr: HOST:PORT or unix:PATH, checked like serve's --listen."""
    from extproc.config import check_address

    check_address(text, "--addr", unix=True)
    return text


_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True,
             "0": False, "false": False, "no": False, "off": False, "": False}  # fmt: skip


def _env_flags(args: argparse.Namespace, names: Sequence[str]) -> None:
    """store_true options: a set flag wins; otherwise EXTPROC_AUDIT_<NAME> as a boolean."""
    for name in names:
        if getattr(args, name) is True:
            continue
        variable = _env_name(name)
        value = os.environ.get(variable)
        if value is None:
            setattr(args, name, False)
            continue
        if value.strip().lower() not in _BOOLEANS:
            raise ConfigError(f"{variable}={value!r} is not a boolean (1/0, true/false, yes/no)")
        setattr(args, name, _BOOLEANS[value.strip().lower()])


def _env_list(args: argparse.Namespace, name: str) -> list[str]:
    """A repeatable option, or its environment form: comma-separated values."""
    given: list[str] | None = getattr(args, name)
    if given:
        return given
    text = os.environ.get(_env_name(name), "")
    return [v.strip() for v in text.split(",") if v.strip()]


def _naming_env_source(error: ConfigError, args: argparse.Namespace) -> ConfigError:
    """serve: a check of an option set in the environment (ServeConfig's
    "--OPTION ..." errors) also names the variable it came from."""
    match = re.match(r"--([a-z][a-z0-9-]*)", str(error))
    if match is None:
        return error
    dest = match.group(1).replace("-", "_")
    variable = _env_name(dest)
    value = getattr(args, dest, None)
    from_env = (
        variable in _CONVERTED_FROM_ENV
        or isinstance(value, _FromEnv)
        or (value in (None, []) and variable in os.environ)  # _env_list options
    )
    if not from_env or variable not in os.environ:
        return error
    return ConfigError(f"{error} (set by {variable}={os.environ[variable]!r})")


def _default_log_id() -> str:
    """The pod name in Kubernetes (HOSTNAME), sanitised to the log id alphabet."""
    name = os.environ.get("HOSTNAME") or socket.gethostname() or "default"
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in name)[:128]
    return cleaned.strip(".") or "default"


_SERVE_FLAGS = (
    "gzip",
    "allow_no_object_lock",
    "receipts",
    "ext_proc_responses",
    "self_audit_fail_closed",
    "allow_unauthenticated",
)


def _add_serve(sub: argparse._SubParsersAction[_Parser]) -> None:
    from extproc import config as c
    from extproc.core.redact import QUERY_MODES

    p = sub.add_parser(
        "serve",
        help="run the audit server (ext_proc and the access-log service)",
        description="Run the gRPC audit server: Envoy's ext_proc (blocking, enforce mode) and "
        "its access-log service (ALS) on one port. Every option can also be set in the "
        f"environment as {ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}STORE, {ENV_PREFIX}LOG_ID; "
        "repeatable options comma-separated; flags 1/0).",
        usage="%(prog)s --store URL --key FILE [options]",
    )
    g = p.add_argument_group("log and store")
    g.add_argument(
        "--store",
        metavar="URL",
        type=_typed(_writer_store, "a store URL"),
        default=_env("store"),
        help="s3://bucket/prefix (endpoint from AWS_ENDPOINT_URL) or a directory (required)",
    )
    g.add_argument(
        "--key",
        metavar="FILE",
        type=_PATH,
        default=_env("key"),
        help="signing key file from keygen (required)",
    )
    g.add_argument(
        "--log-id",
        metavar="ID",
        type=_typed(_log_id, "a log id"),
        default=_env("log_id", _default_log_id()),
        help="this writer's log id, one per process (default: the host name)",
    )
    g.add_argument(
        "--wal-dir",
        metavar="DIR",
        type=_PATH,
        default=_env("wal_dir", c.WAL_DIR),
        help="write-ahead log directory; the WAL lives in <wal-dir>/<log-id>/",
    )
    g.add_argument(
        "--mode",
        choices=c.MODES,
        type=_choice(c.MODES),
        default=_env("mode", "enforce"),
        help="enforce: ext_proc holds each request until its entry is durable; observe: "
        "nothing waits (the access-log service is served in both)",
    )
    g.add_argument(
        "--origin-prefix",
        metavar="PREFIX",
        type=_typed(_origin_prefix, "an origin prefix"),
        default=_env("origin_prefix", c.ORIGIN_PREFIX),
        help="checkpoint origin is <origin prefix>/<log id>",
    )
    g = p.add_argument_group("listeners")
    g.add_argument(
        "--listen",
        metavar="ADDR",
        default=_env("listen", c.LISTEN),
        help="ext_proc, access-log service and gRPC health: HOST:PORT or unix:PATH",
    )
    g.add_argument(
        "--metrics-listen",
        metavar="ADDR",
        default=_env("metrics_listen", c.METRICS_LISTEN),
        help="Prometheus metrics address, or off",
    )
    g.add_argument(
        "--health-listen",
        metavar="ADDR",
        default=_env("health_listen", "off"),
        help="plaintext gRPC health only, e.g. 127.0.0.1:50052, for probes of a TLS or "
        "unix-socket listener",
    )
    g.add_argument(
        "--proof-listen",
        metavar="ADDR",
        default=_env("proof_listen", "off"),
        help="live proof API address, e.g. 127.0.0.1:50052; serves reads of the log, "
        "so keep it off the mesh",
    )
    g.add_argument(
        "--workers",
        metavar="N",
        type=_typed(_at_least(1, int), "an integer >= 1"),
        default=_env("workers", 1),
        help="writer processes sharing the listen port, each with its own log id "
        "<log-id>-w<i> and metrics port +i",
    )
    g = p.add_argument_group("publication")
    g.add_argument(
        "--bundle-max-entries",
        metavar="N",
        type=_INT,
        default=_env("bundle_max_entries", c.BUNDLE_MAX_ENTRIES),
        help="seal a bundle at this many entries",
    )
    g.add_argument(
        "--bundle-max-bytes",
        metavar="BYTES",
        type=_INT,
        default=_env("bundle_max_bytes", c.BUNDLE_MAX_BYTES),
        help="seal a bundle at this many bytes",
    )
    g.add_argument(
        "--bundle-max-age",
        metavar="SECONDS",
        type=_FLOAT,
        default=_env("bundle_max_age", c.BUNDLE_MAX_AGE),
        help="seal a bundle once its oldest entry is this many seconds old",
    )
    g.add_argument("--gzip", action="store_true", default=None, help="write bundles as .jsonl.gz")
    g.add_argument(
        "--retention-days",
        metavar="DAYS",
        type=_INT,
        default=_env("retention_days"),
        help="Object Lock retention per object (default: the bucket's default rule)",
    )
    g.add_argument(
        "--retention-mode",
        choices=c.RETENTION_MODES,
        type=_choice(c.RETENTION_MODES),
        default=_env("retention_mode", "COMPLIANCE"),
        help="with --retention-days",
    )
    g.add_argument(
        "--allow-no-object-lock",
        action="store_true",
        default=None,
        help="development only: accept a bucket without Object Lock",
    )
    g.add_argument(
        "--max-backlog-bytes",
        metavar="BYTES",
        type=_INT,
        default=_env("max_backlog_bytes", c.MAX_BACKLOG_BYTES),
        help="deny (enforce) or drop (observe) past this many unpublished bytes",
    )
    g.add_argument(
        "--drain-timeout",
        metavar="SECONDS",
        type=_FLOAT,
        default=_env("drain_timeout", c.DRAIN_TIMEOUT),
        help="seconds to drain streams and publish on SIGTERM",
    )
    g.add_argument(
        "--drain-delay",
        metavar="SECONDS",
        type=_FLOAT,
        default=_env("drain_delay", c.DRAIN_DELAY),
        help="on SIGTERM, seconds the server reports NOT_SERVING but still takes new streams, "
        "so callers' proxies drop its endpoint first (SIGINT: none)",
    )
    g.add_argument(
        "--max-rss-mb",
        metavar="MB",
        type=_INT,
        default=_env("max_rss_mb", 0),
        help="above this resident memory, drain as on SIGTERM and exit 0, for the orchestrator "
        "to restart a fresh process (gRPC's native memory grows per stream); 0: never",
    )
    g.add_argument(
        "--access-log-grace",
        metavar="SECONDS",
        type=_FLOAT,
        default=_env("access_log_grace", c.ACCESS_LOG_GRACE),
        help="on SIGTERM, seconds Envoy gets to flush its access logs before their streams "
        "end (at least Envoy's buffer_flush_interval: 0.2 s in envoy/*.yaml, 1 s from istiod)",
    )
    g.add_argument(
        "--heartbeat-interval",
        metavar="SECONDS",
        type=_FLOAT,
        default=_env("heartbeat_interval", c.HEARTBEAT_INTERVAL),
        help="an idle writer logs a heartbeat entry this often (seconds), so auditors can "
        "tell 'no traffic' from 'writer down'; 0 disables",
    )
    g.add_argument(
        "--self-audit-interval",
        metavar="SECONDS",
        type=_FLOAT,
        default=_env("self_audit_interval", c.SELF_AUDIT_INTERVAL),
        help="verify the published log (what is new since the last run) on start and this "
        "often, writing again from the WAL what the store lost; 0 disables",
    )
    g.add_argument(
        "--self-audit-fail-closed",
        action="store_true",
        default=None,
        help="report NOT_SERVING on the health service while the self-audit finds a problem "
        "the WAL cannot repair",
    )
    g = p.add_argument_group("entries")
    g.add_argument(
        "--response-headers",
        metavar="NAMES",
        default=_env("response_headers", ", ".join(sorted(c.RESPONSE_HEADERS))),
        help="ext_proc response headers to record, comma-separated, or '*' for all",
    )
    g.add_argument(
        "--ext-proc-responses",
        action="store_true",
        default=None,
        help="wait for the response-headers phase of each ext_proc stream and log a response "
        "entry from it (a two-phase filter config without the access-log service); default: "
        "end the stream after the request entry, the outcome arrives by the access-log service",
    )
    g.add_argument(
        "--receipts",
        action="store_true",
        default=None,
        help="enforce mode: answer each audited request with a receipt header naming "
        "its log and entry seq (needs the ext_proc response phase)",
    )
    g.add_argument(
        "--receipt-header",
        default=_env("receipt_header", c.RECEIPT_HEADER),
        metavar="NAME",
        help="name of the receipt header",
    )
    g = p.add_argument_group(
        "redaction (docs/FORMAT.md)",
        "Default-deny: a value is stored in clear only under a name on the allow-list; "
        "every other value is stored as its keyed hash (--hash-key) or [redacted]. Names "
        "stay visible.",
    )
    g.add_argument(
        "--hash-key",
        metavar="FILE",
        type=_PATH,
        default=_env("hash_key"),
        help="store values that are not allowed as HMAC-SHA-256 under this key "
        "(hmac-sha256:<key id>:<digest>; `hash-keygen` creates one, `hash-value` computes "
        "the stored form of a candidate) instead of [redacted]",
    )
    g.add_argument(
        "--hmac-key-file",
        metavar="FILE",
        type=_PATH,
        default=_env("hmac_key_file"),
        help="the same as --hash-key (its earlier name)",
    )
    g.add_argument(
        "--clear-header",
        action="append",
        default=None,
        metavar="NAME",
        help="also store this header's value in clear (repeatable; widens the allow-list)",
    )
    g.add_argument(
        "--clear-param",
        action="append",
        default=None,
        metavar="NAME",
        help="also store this query parameter's value in clear (repeatable; widens the allow-list)",
    )
    g.add_argument(
        "--hash-path-template",
        action="append",
        default=None,
        metavar="TEMPLATE",
        help="hash the path segments this route template names, e.g. '/reset/{token}' "
        "({name} is one segment; repeatable)",
    )
    g.add_argument(
        "--redact-header",
        action="append",
        default=None,
        metavar="NAME",
        help="hash this header's value even if it is on the allow-list (repeatable)",
    )
    g.add_argument(
        "--redact-url-header",
        action="append",
        default=None,
        metavar="NAME",
        help="store this header as a URL, like the request path (host and path in clear, "
        "parameters as the allow-list says) instead of hashing it whole (repeatable; "
        "location, referer, origin, content-location, ... always)",
    )
    g.add_argument(
        "--redact-query-param",
        action="append",
        default=None,
        metavar="NAME",
        help="hash this query parameter's value even if it is on the allow-list (repeatable)",
    )
    g.add_argument(
        "--query-mode",
        choices=QUERY_MODES,
        type=_choice(QUERY_MODES),
        default=_env("query_mode", "sensitive"),
        help="query strings: sensitive (values of allowed parameters in clear, others "
        "hashed; default), all (every value hashed), keep (query and fragment as sent), "
        "drop (not stored)",
    )
    g.add_argument(
        "--max-value-bytes",
        metavar="BYTES",
        type=_INT,
        default=_env("max_value_bytes", c.MAX_VALUE_BYTES),
        help="truncate header values longer than this",
    )
    _add_reporter_options(p)
    _add_limit_options(p)


def _add_reporter_options(p: argparse.ArgumentParser) -> None:
    from extproc import config as c

    g = p.add_argument_group(
        "reporters",
        "Who may write entries (docs/THREATS.md). One of --tls-cert/--tls-key/--client-ca, "
        "--trust-xfcc-from or a unix: listener is required; without them serve refuses to "
        "start unless --allow-unauthenticated (development only: every entry is then marked "
        "unauthenticated).",
    )
    g.add_argument(
        "--tls-cert",
        metavar="FILE",
        type=_PATH,
        default=_env("tls_cert"),
        help="server certificate (PEM): mTLS",
    )
    g.add_argument(
        "--tls-key",
        metavar="FILE",
        type=_PATH,
        default=_env("tls_key"),
        help="its private key (PEM)",
    )
    g.add_argument(
        "--client-ca",
        metavar="FILE",
        type=_PATH,
        default=_env("client_ca"),
        help="CA bundle (PEM) that signs reporters' client certificates; a certificate is then "
        "required, and the reporter is its SPIFFE id (URI SAN), else its subject",
    )
    g.add_argument(
        "--trust-xfcc-from",
        action="append",
        default=None,
        metavar="CIDR",
        help="behind the server's own sidecar (Istio: 127.0.0.6/32 and ::6/128): connections "
        "from here carry the reporter in the x-forwarded-client-cert element the proxy added "
        "(repeatable)",
    )
    g.add_argument(
        "--xfcc-by",
        default=_env("xfcc_by"),
        metavar="GLOB",
        help="with --trust-xfcc-from: the element's By= (the server's own identity) must match",
    )
    g.add_argument(
        "--xfcc-mode",
        choices=c.XFCC_MODES,
        type=_choice(c.XFCC_MODES),
        default=_env("xfcc_mode", c.XFCC_MODES[0]),
        help="with --trust-xfcc-from: what the own sidecar does with x-forwarded-client-cert "
        "(its forward_client_cert_details): SANITIZE_SET (default, as the shipped StatefulSet "
        "pins it) leaves exactly its own element, APPEND_FORWARD appends it to the caller's; "
        "any other header is refused",
    )
    g.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        default=None,
        help="development only: a plaintext listener without --trust-xfcc-from takes anyone's "
        "entries, each marked reporter.auth unauthenticated (verify counts them)",
    )
    g.add_argument(
        "--allow-reporter",
        action="append",
        default=None,
        metavar="GLOB",
        help="admit only reporters whose id matches (fnmatch, repeatable); anyone else gets "
        "PERMISSION_DENIED before anything is logged",
    )
    g.add_argument(
        "--reporter-is-destination",
        choices=c.DESTINATION_CHECKS,
        type=_choice(c.DESTINATION_CHECKS),
        default=_env("reporter_is_destination", "off"),
        help="per-pod proxies: the reporter must be the identity the request was served as "
        "(Envoy's local certificate); record a mismatch in the entry, or refuse it",
    )


def _add_limit_options(p: argparse.ArgumentParser) -> None:
    from extproc import config as c

    g = p.add_argument_group("limits", "Cost per caller, bounded before any work.")
    g.add_argument(
        "--max-message-bytes",
        metavar="BYTES",
        type=_INT,
        default=_env("max_message_bytes", c.MAX_MESSAGE_BYTES),
        help="largest gRPC message accepted; Envoy sends at most ~64 KiB of headers by default "
        "(max_request_headers_kb 60) and access-log batches of its buffer size",
    )
    g.add_argument(
        "--max-headers",
        metavar="N",
        type=_INT,
        default=_env("max_headers", c.MAX_HEADERS),
        help="headers looked at per request or response; more are counted, not stored "
        "(Envoy's own default limit is 100)",
    )
    g.add_argument(
        "--max-header-bytes",
        metavar="BYTES",
        type=_INT,
        default=_env("max_header_bytes", c.MAX_HEADER_BYTES),
        help="header bytes looked at per request or response",
    )
    g.add_argument(
        "--max-streams-per-connection",
        metavar="N",
        type=_INT,
        default=_env("max_streams_per_connection", c.MAX_STREAMS_PER_CONNECTION),
        help="concurrent gRPC streams per connection",
    )
    g.add_argument(
        "--max-connection-age",
        metavar="SECONDS",
        type=_FLOAT,
        default=_env("max_connection_age", c.MAX_CONNECTION_AGE),
        help="seconds before a connection is asked to move new streams elsewhere; 0: never",
    )
    g.add_argument(
        "--stream-idle-timeout",
        metavar="SECONDS",
        type=_FLOAT,
        default=_env("stream_idle_timeout", c.STREAM_IDLE_TIMEOUT),
        help="end an ext_proc stream silent this many seconds (with a response phase, the "
        "longest wait for response headers); 0: never",
    )
    g.add_argument(
        "--max-access-log-entries",
        metavar="N",
        type=_INT,
        default=_env("max_access_log_entries", c.MAX_ACCESS_LOG_ENTRIES),
        help="entries per access-log message; a larger one is refused whole (RESOURCE_EXHAUSTED) "
        "before any entry is built (Envoy's 64 KiB buffer holds ~220)",
    )
    g.add_argument(
        "--max-access-log-rate",
        metavar="N",
        type=_FLOAT,
        default=_env("max_access_log_rate", c.MAX_ACCESS_LOG_RATE),
        help="access-log entries per second per stream (one second's worth may come at once); "
        "a message past it is refused whole",
    )
    g.add_argument(
        "--max-reporter-access-log-rate",
        metavar="N",
        type=_FLOAT,
        default=_env("max_reporter_access_log_rate", c.MAX_REPORTER_ACCESS_LOG_RATE),
        help="access-log entries per second per reporter, all its streams together",
    )


class _HelpFormatter(argparse.HelpFormatter):
    """Each option's default in its help, where it has one and the help does not
    already say it; a default from the environment names its variable."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        # Never break an option name or a path at its hyphens.
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(
            " ".join(text.split()),
            width,
            initial_indent=indent,
            subsequent_indent=indent,
            break_on_hyphens=False,
        )

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or "(default" in text
            or "default:" in text
            or default is None
            or default is False
            or default == []
            or default is argparse.SUPPRESS
        ):
            return text
        if isinstance(default, _FromEnv):
            return f"{text} (default: %(default)s, from {default.variable})"
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error every command uses (exit 2, no usage dump)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"extproc-audit: error: {message} (see {self.prog} --help)\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="extproc-audit",
        description="Immutable, verifiable audit log for Envoy/Istio meshes. Exit codes: "
        "0 ok, 1 a log is invalid, 2 usage, configuration or infrastructure error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        parser_class=_Parser,
        help="one of these; `extproc-audit COMMAND --help` for its options",
    )

    p = sub.add_parser("keygen", help="create an Ed25519 signing key; print its verifier key")
    p.add_argument("--name", required=True, help="key name (no spaces or '+')")
    p.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="key file to create (mode 0600)"
    )
    p.add_argument(
        "--if-missing",
        action="store_true",
        help="keep an existing key file (first start of a container); print its verifier key",
    )
    p.add_argument(
        "--vkey-out",
        type=Path,
        metavar="FILE",
        help="also write the (public) verifier key here; if it cannot be written, no new "
        "signing key is left behind",
    )

    p = sub.add_parser(
        "hash-keygen",
        help="create the hash key for values stored as keyed hashes (serve --hash-key)",
        description="Create a hash key file (32 random bytes as hex, mode 0600) and print its "
        "key id. serve --hash-key stores every value that is not on the allow-list as "
        "hmac-sha256:<key id>:<digest> under it; an auditor holding it answers 'was this "
        "token used?' with hash-value. Keep it secret: with it, guesses can be tested.",
    )
    p.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="key file to create (mode 0600)"
    )
    p.add_argument(
        "--if-missing",
        action="store_true",
        help="keep an existing key file (first start of a container)",
    )

    p = sub.add_parser(
        "hash-value",
        help="print the stored form of a candidate value under a hash key",
        description="Print hmac-sha256:<key id>:<digest> for each value, as serve --hash-key "
        "stores it: search the log for it to tell whether a token was used. Values are "
        "read one a line from standard input unless given as arguments (an argument "
        "shows in ps and shell history). A value is hashed as it stood in the header or "
        "URL: percent-encoding included, without a credential's scheme (`Bearer `) or a "
        "cookie's name.",
    )
    p.add_argument(
        "--hash-key",
        type=Path,
        required=True,
        metavar="FILE",
        help="the deployment's hash key file (serve --hash-key)",
    )
    p.add_argument("value", nargs="*", help="values to hash (default: lines of standard input)")

    p = sub.add_parser(
        "health",
        help="gRPC health check of a server (exit 0 if SERVING, else 1)",
        description="Ask a server's gRPC health service (the container health check). Exit 0 "
        "if it answers SERVING, 1 for any other answer or none (Docker reserves 2), 2 for "
        "a malformed option.",
    )
    p.add_argument(
        "--addr",
        type=_address,
        default="127.0.0.1:50051",
        metavar="ADDR",
        help="the server's listener: HOST:PORT or unix:PATH",
    )
    p.add_argument("--service", default="", help="service name (default: the whole server)")
    p.add_argument(
        "--timeout",
        type=_POSITIVE,
        default=2.0,
        metavar="SECONDS",
        help="how long to wait for the answer",
    )

    p = sub.add_parser(
        "init-bucket",
        help="create an S3 bucket with Object Lock and a default retention",
        description="Create the bucket with Object Lock (or confirm an existing one has it) and "
        "set its default retention: every object written is then locked for that long. Object "
        "Lock cannot be switched off, and COMPLIANCE retention cannot be shortened or removed "
        "by anyone, the account's root user included, so the retention is stated, not "
        "defaulted: give --retention-days and --mode, or --yes for the documented default, "
        "COMPLIANCE 365 days. The endpoint comes from AWS_ENDPOINT_URL.",
    )
    p.add_argument("url", metavar="s3://BUCKET", type=_bucket_url, help="the bucket (no prefix)")
    p.add_argument(
        "--retention-days",
        type=_int_at_least(1),
        default=None,
        metavar="DAYS",
        help="default retention of every object written, in days",
    )
    p.add_argument(
        "--mode",
        choices=("COMPLIANCE", "GOVERNANCE"),
        default=None,
        help="COMPLIANCE: nobody can delete a locked object or shorten its retention; "
        "GOVERNANCE: principals with s3:BypassGovernanceRetention can",
    )
    p.add_argument(
        "--yes",
        action="store_true",
        help="accept the default for what is not given: COMPLIANCE, 365 days",
    )

    _add_serve(sub)

    p = sub.add_parser("verify", help="verify every log under a store URL")
    p.add_argument("url", type=_reader_store, help="s3://bucket/prefix or a directory")
    _add_key_options(p, required=True, what="trusted key")
    p.add_argument(
        "--origin-prefix",
        type=_typed(_origin_prefix, "an origin prefix"),
        default=None,
        help="require checkpoint origins to be <origin prefix>/<log id>",
    )
    p.add_argument(
        "--parallel", type=_int_at_least(1), default=8, metavar="N", help="logs verified at once"
    )
    p.add_argument(
        "--deep",
        action="store_true",
        help="parse every entry as JSON (default: only where the quick chain check needs it)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print findings and summary only")
    p.add_argument(
        "--state",
        type=Path,
        default=None,
        help="state file of the last verified checkpoint per log: trust on first use, then "
        "verify incrementally; rewritten only after a VALID run",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="with --state: re-read every object (still checked against the state)",
    )
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    p.add_argument(
        "--min-retention-days",
        type=_NON_NEGATIVE,
        default=None,
        metavar="DAYS",
        help="Object Lock retention each object must have from its write time "
        "(default: the rule recorded in --state on first use, else the bucket's "
        "current default retention, if readable)",
    )
    p.add_argument(
        "--accept-retention",
        action="store_true",
        help="with --state: record the bucket's current default retention rule as the "
        "bar (after a deliberate change; a lowered or removed rule is otherwise an error)",
    )
    p.add_argument(
        "--gap-threshold",
        type=_POSITIVE,
        default=300.0,
        metavar="SECONDS",
        help="seconds without a checkpoint from a running writer reported as a gap",
    )
    p.add_argument(
        "--since", default=None, help="report logs and gaps from this RFC 3339 time/date"
    )
    p.add_argument(
        "--until", default=None, help="report logs and gaps up to this RFC 3339 time/date"
    )
    p.add_argument(
        "--require-authenticated",
        action="store_true",
        help="an entry from an unauthenticated reporter (serve --allow-unauthenticated) is a "
        "finding: the log is INVALID (exit 1); without it they are counted",
    )
    _add_bundle_bound(p)

    p = sub.add_parser(
        "demo",
        help="run Envoy + audit server + app locally and verify the log",
        description="Start a real Envoy, the audit server and a small app; send requests "
        "through Envoy; stop the server (final checkpoint); verify the log and print how to "
        "verify it yourself. Runs again in the same --workdir append to the same log.",
    )
    p.add_argument(
        "--requests", type=_int_at_least(1), default=300, metavar="N", help="requests to send"
    )
    p.add_argument(
        "--store",
        type=_demo_store,
        default=None,
        metavar="URL",
        help="s3://bucket/prefix (endpoint from AWS_ENDPOINT_URL; a missing bucket is created "
        "with Object Lock, GOVERNANCE 1 day) or a directory (default: <workdir>/store); each "
        "store gets its own WAL in the workdir",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("extproc-demo"),
        metavar="DIR",
        help="where the demo keeps its key, WALs, logs and local store",
    )
    p.add_argument(
        "--mode",
        choices=("enforce", "observe"),
        default="enforce",
        help="enforce: each request waits for its entry (ext_proc) and its outcome follows by "
        "the access-log stream; observe: nothing waits, one access entry per request",
    )
    p.add_argument(
        "--concurrency", type=_int_at_least(1), default=8, metavar="N", help="client connections"
    )
    _add_prove(sub)
    _add_search(sub)
    return parser


def _add_key_options(p: argparse.ArgumentParser, *, required: bool, what: str) -> None:
    p.add_argument(
        "--vkey",
        action="append",
        default=None,
        help=f"{what}: a verifier key string, or @FILE holding one or a keyring; repeatable",
    )
    p.add_argument(
        "--keyring",
        type=Path,
        action="append",
        default=None,
        metavar="FILE",
        help="keyring file: one verifier key per line, each optionally scoped to "
        "logs=GLOB[,GLOB] and from=/until= times (docs/AUDITING.md, keys and rotation)"
        + ("" if required else "; repeatable"),
    )


def _keyring(args: argparse.Namespace) -> Keyring:
    """The keys given with --vkey and --keyring (at least one)."""
    keyring = _optional_keyring(args)
    if keyring is None:
        raise ConfigError("give the verifier key with --vkey or --keyring")
    return keyring


def _optional_keyring(args: argparse.Namespace) -> Keyring | None:
    """The keys given with --vkey and --keyring, None if none."""
    from extproc.core.keyring import Keyring, TrustedKey, parse_keyring_lines
    from extproc.core.note import Verifier

    keys: list[TrustedKey] = []
    files = [Path(v[1:]) for v in args.vkey or () if v.startswith("@")]
    files += args.keyring or []
    for path in files:
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read keyring {path}: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"keyring {path} is not UTF-8 text") from e
        if text.lstrip().startswith("PRIVATE+KEY+"):
            raise ConfigError(f"{path} holds a signing key, not the verifier key keygen prints")
        keys.extend(parse_keyring_lines(text, str(path)))
    for value in args.vkey or ():
        if value.startswith("@"):
            continue
        if value.startswith("PRIVATE+KEY+"):
            raise ConfigError("--vkey got a signing key: give the verifier key (keygen prints it)")
        keys.append(TrustedKey(Verifier.from_text(value)))
    return Keyring(keys) if keys else None


def _cmd_keygen(args: argparse.Namespace) -> int:
    from extproc.core.note import Signer
    from extproc.keys import ensure_signer, write_signer, write_verifier_key

    missing_dirs = _missing_parents(args.out)  # to remove again if keygen fails
    if args.if_missing:
        signer, created = ensure_signer(args.out, args.name)
    else:
        signer, created = Signer.generate(args.name), True
        write_signer(args.out, signer)
    if args.vkey_out:
        try:
            write_verifier_key(args.vkey_out, signer)
        except AuditError:
            if created:  # nothing left behind: a key whose verifier key nobody has
                args.out.unlink(missing_ok=True)
                for directory in missing_dirs:
                    with contextlib.suppress(OSError):
                        directory.rmdir()
            raise
    print(signer.verifier().to_text())
    if created:
        print(f"signing key written to {args.out} (mode 0600); keep it secret", file=sys.stderr)
    else:
        print(f"signing key {args.out} exists; kept", file=sys.stderr)
    return EXIT_OK


def _missing_parents(path: Path) -> list[Path]:
    """The directories above `path` that do not exist yet, deepest first."""
    missing = []
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    return missing


def _cmd_health(args: argparse.Namespace) -> int:
    from extproc.health import check_health

    status = check_health(args.addr, args.service, args.timeout)
    print(status.to_text())
    # Docker HEALTHCHECK: 1 means unhealthy and 2 is reserved, so never 2 here.
    return EXIT_OK if status.serving else EXIT_INVALID


def _cmd_init_bucket(args: argparse.Namespace) -> int:
    from extproc.store.s3 import S3Store

    bucket = _bucket_url(args.url)[len("s3://") :].strip("/")
    missing = [
        option
        for option, value in (("--retention-days", args.retention_days), ("--mode", args.mode))
        if value is None
    ]
    if missing and not args.yes:
        raise ConfigError(
            f"init-bucket needs {' and '.join(missing)}: every object written to the bucket is "
            "locked for that long, and COMPLIANCE retention cannot be shortened by anyone "
            "(e.g. --retention-days 365 --mode COMPLIANCE, or --yes for that default)"
        )
    days = args.retention_days if args.retention_days is not None else 365
    mode = args.mode or "COMPLIANCE"
    lock = (
        "nobody, the account's root user included, can delete or shorten it"
        if mode == "COMPLIANCE"
        else "only principals with s3:BypassGovernanceRetention can remove it"
    )
    store = S3Store(bucket)
    print(
        f"bucket {bucket}: applying Object Lock with default retention {mode} {days} days "
        f"(every object written is locked for {days} days; {lock})",
        flush=True,
    )
    created = store.create_locked_bucket(mode, days)
    state = "created" if created else "already existed with Object Lock; default retention set"
    print(f"bucket {bucket} {state}: default retention {mode} {days} days")
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    config = serve_config(args)
    if args.workers > 1:
        from extproc.server.workers import run_workers

        if config.listen.endswith(":0") or config.unix_socket is not None:
            raise ConfigError("--workers needs a fixed TCP --listen port (workers share it)")
        return run_workers(config, args.workers)
    from extproc.server.app import exit_after_serving, serve

    status = serve(config)
    exit_after_serving(status)
    return status


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """serve's parsed options and their environment forms as a checked ServeConfig
    (ConfigError for a bad one), before anything is opened or started."""
    from extproc.config import ServeConfig

    _env_flags(args, _SERVE_FLAGS)
    policy = _redaction_policy(args)
    response_headers = None
    if args.response_headers.strip() != "*":
        response_headers = frozenset(
            h.strip().lower() for h in args.response_headers.split(",") if h.strip()
        )
    return ServeConfig(
        store=args.store or "",
        key=Path(args.key or ""),
        listen=args.listen,
        log_id=args.log_id,
        wal_dir=Path(args.wal_dir),
        mode=args.mode,
        origin_prefix=args.origin_prefix,
        metrics_listen=args.metrics_listen,
        bundle_max_entries=args.bundle_max_entries,
        bundle_max_bytes=args.bundle_max_bytes,
        bundle_max_age=args.bundle_max_age,
        gzip=args.gzip,
        retention_days=args.retention_days,
        retention_mode=args.retention_mode,
        allow_no_object_lock=args.allow_no_object_lock,
        max_backlog_bytes=args.max_backlog_bytes,
        drain_timeout=args.drain_timeout,
        drain_delay=args.drain_delay,
        max_rss_mb=args.max_rss_mb,
        access_log_grace=args.access_log_grace,
        heartbeat_interval=args.heartbeat_interval,
        self_audit_interval=args.self_audit_interval,
        self_audit_fail_closed=args.self_audit_fail_closed,
        redaction=policy,
        response_headers=response_headers,
        proof_listen=args.proof_listen,
        receipt_header=args.receipt_header if args.receipts else None,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        client_ca=args.client_ca,
        trust_xfcc_from=tuple(_env_list(args, "trust_xfcc_from")),
        xfcc_by=args.xfcc_by or None,
        allow_reporters=tuple(_env_list(args, "allow_reporter")),
        reporter_is_destination=args.reporter_is_destination,
        xfcc_mode=args.xfcc_mode,
        allow_unauthenticated=args.allow_unauthenticated,
        health_listen=args.health_listen,
        max_message_bytes=args.max_message_bytes,
        max_headers=args.max_headers,
        max_header_bytes=args.max_header_bytes,
        max_streams_per_connection=args.max_streams_per_connection,
        max_connection_age=args.max_connection_age,
        stream_idle_timeout=args.stream_idle_timeout,
        ext_proc_responses=args.ext_proc_responses,
        max_access_log_entries=args.max_access_log_entries,
        max_access_log_rate=args.max_access_log_rate,
        max_reporter_access_log_rate=args.max_reporter_access_log_rate,
    )


def _redaction_policy(args: argparse.Namespace) -> Any:
    """serve's RedactionPolicy: the default allow-lists, widened and narrowed as told."""
    from extproc.core.redact import (
        DEFAULT_CLEAR_HEADERS,
        DEFAULT_CLEAR_PARAMS,
        DEFAULT_URL_HEADERS,
        RedactionPolicy,
        check_header_name,
    )
    from extproc.hashkey import load_hash_key

    key_files = {Path(f) for f in (args.hash_key, args.hmac_key_file) if f}
    if len(key_files) > 1:
        raise ConfigError("--hash-key and --hmac-key-file name different files: give one")
    hash_key = None
    if key_files:
        flag = "--hash-key" if args.hash_key else "--hmac-key-file"
        try:
            hash_key = load_hash_key(key_files.pop())
        except ConfigError as e:
            raise ConfigError(f"{flag}: {e}") from None

    def headers(option: str) -> frozenset[str]:
        flag = "--" + option.replace("_", "-")
        return frozenset(check_header_name(v, flag) for v in _env_list(args, option) if v.strip())

    def names(option: str) -> frozenset[str]:
        return frozenset(v.strip().lower() for v in _env_list(args, option) if v.strip())

    return RedactionPolicy(
        clear_headers=DEFAULT_CLEAR_HEADERS | headers("clear_header"),
        clear_params=DEFAULT_CLEAR_PARAMS | names("clear_param"),
        redact_headers=headers("redact_header"),
        redact_query_params=names("redact_query_param"),
        url_headers=DEFAULT_URL_HEADERS | headers("redact_url_header"),
        path_templates=tuple(_env_list(args, "hash_path_template")),
        query_mode=args.query_mode,
        hmac_key=hash_key,
        max_value_bytes=args.max_value_bytes,
    )


def _cmd_hash_keygen(args: argparse.Namespace) -> int:
    from extproc.core.redact import hash_key_id
    from extproc.hashkey import load_hash_key, write_hash_key

    if args.if_missing and args.out.exists():
        key = load_hash_key(args.out)
        print(f"hash key {args.out} exists; kept (key id {hash_key_id(key)})", file=sys.stderr)
    else:
        key = write_hash_key(args.out)
        print(
            f"hash key written to {args.out} (mode 0600; key id {hash_key_id(key)}); keep it "
            "secret: whoever holds it can test guesses against the stored hashes",
            file=sys.stderr,
        )
    print(hash_key_id(key))
    return EXIT_OK


def _cmd_hash_value(args: argparse.Namespace) -> int:
    from extproc.core.redact import stored_hash
    from extproc.hashkey import load_hash_key

    key = load_hash_key(args.hash_key)
    if args.value:
        values = [v.encode("utf-8", "surrogateescape") for v in args.value]
    else:  # one value a line: a value on the command line shows in ps and shell history
        values = [line.rstrip(b"\r\n") for line in sys.stdin.buffer]
    for value in values:
        print(stored_hash(key, value))
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    import contextlib
    import json

    from extproc.audit.report import parse_time_ms, print_log, result_to_json
    from extproc.audit.statefile import load_state, save_state
    from extproc.audit.verify import AuditOptions, audit_store
    from extproc.store import open_store

    verifier = _keyring(args)
    store = open_store(args.url)
    if args.accept_retention and not args.state:
        raise ConfigError("--accept-retention records the bucket's rule in --state: give --state")
    options = AuditOptions(
        origin_prefix=args.origin_prefix,
        deep=args.deep,
        parallel=args.parallel,
        state=load_state(args.state) if args.state else None,
        full=args.full,
        min_retention_days=args.min_retention_days,
        accept_retention=args.accept_retention,
        gap_threshold_s=args.gap_threshold,
        since_ms=parse_time_ms(args.since) if args.since else None,
        until_ms=parse_time_ms(args.until) if args.until else None,
        require_authenticated=args.require_authenticated,
        max_bundle_bytes=args.max_bundle_bytes,
    )
    with contextlib.ExitStack() as stack:
        if args.format == "text" and not args.quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            progress = stack.enter_context(Progress(console=Console(stderr=True), transient=True))
            task = progress.add_task("verifying entries", total=None)
            options.on_total = lambda total: progress.update(task, total=total)
            options.on_entries = lambda n: progress.advance(task, n)
        result = audit_store(store, verifier, options)
    if result.ok and args.state:
        save_state(args.state, result.state)
    if args.format == "json":
        doc = result_to_json(result, store.url)
        print(json.dumps(doc, indent=1))
        return EXIT_OK if result.ok else EXIT_INVALID
    from extproc.core.display import escape

    for finding in result.general:
        print(escape(str(finding)))
    for report in result.reports:
        print_log(report, quiet=args.quiet)
    if not result.logs:
        print(f"no logs found under {store.url}: nothing verifies")
    elif not result.reports:
        print("no log was active in the --since/--until window")
    entries = sum(r.entries for r in result.reports)
    unauthenticated = sum(r.unauthenticated for r in result.reports)
    unauth = f" ({unauthenticated} from unauthenticated reporters)" if unauthenticated else ""
    retention = "checked" if store.supports_retention else "not applicable (local store)"
    print(
        f"{'VALID' if result.ok else 'INVALID'}: {result.logs} logs, {entries} entries{unauth}, "
        f"Object Lock retention {retention}"
    )
    return EXIT_OK if result.ok else EXIT_INVALID


def _cmd_demo(args: argparse.Namespace) -> int:
    from extproc.demo import run_demo

    return run_demo(
        requests=args.requests,
        store_url=args.store,
        workdir=args.workdir,
        mode=args.mode,
        concurrency=args.concurrency,
    )


def _add_prove(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("prove", help="write an offline inclusion proof (c2sp tlog-proof)")
    p.add_argument("url", type=_reader_store, help="s3://bucket/prefix or a directory")
    p.add_argument("--log", required=True, metavar="ID", help="log id")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--seq", type=_int_at_least(0), metavar="N", help="entry index (seq)")
    which.add_argument(
        "--request-id",
        metavar="R",
        help="the request (or exchange) entry with this request id (rid); refused if several "
        "carry it (see --all)",
    )
    which.add_argument(
        "--consistency-from",
        type=_int_at_least(1),
        metavar="SIZE",
        help="instead of an inclusion proof, a consistency proof from the checkpoint of this "
        "tree size to the one of --tree-size (default: the newest), for check-proof "
        "--consistency",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="proof file to write ('-': stdout); with --all, a directory",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="with --request-id: one proof per entry carrying it, written to the --out "
        "directory as <log id>-<seq>.tlog-proof",
    )
    p.add_argument(
        "--tree-size",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="prove under the checkpoint of this tree size (default: the newest)",
    )
    _add_key_options(p, required=False, what="only use checkpoints signed by a key given")
    _add_bundle_bound(p)

    p = sub.add_parser("check-proof", help="verify a proof file offline")
    p.add_argument("file", type=Path, help="tlog-proof file ('-': stdin)")
    _add_key_options(p, required=True, what="trusted key")
    p.add_argument(
        "--entry", type=Path, default=None, metavar="FILE", help="entry bytes, if not in the proof"
    )
    p.add_argument("--origin", default=None, help="require this checkpoint origin")
    p.add_argument(
        "--state",
        type=Path,
        default=None,
        metavar="FILE",
        help="verify's state file (read only): its checkpoints are trusted, so a checkpoint "
        "consistent with one of them counts even if its key has retired since",
    )
    p.add_argument(
        "--consistency",
        type=Path,
        default=None,
        metavar="FILE",
        help="a consistency proof from the proof's checkpoint to a newer one (`prove "
        "--consistency-from`): the newer one, if trusted, vouches for the older",
    )


def _cmd_prove(args: argparse.Namespace) -> int:
    from extproc.audit.prove import EntryNotFoundError, Prover
    from extproc.core.display import escape
    from extproc.core.tlogproof import FILE_SUFFIX
    from extproc.store import open_store

    if args.all and args.request_id is None:
        raise ConfigError("--all needs --request-id (a seq names one entry)")
    if args.all and str(args.out) == "-":
        raise ConfigError("--all writes one proof file per entry: --out must be a directory")
    verifier = _optional_keyring(args)
    prover = Prover(
        open_store(args.url), args.log, verifier, max_bundle_bytes=args.max_bundle_bytes
    )
    if args.consistency_from is not None:
        return _write_consistency(prover, args)
    seq, expected = args.seq, None
    if args.request_id is not None:
        # Clients choose request ids, so several entries can carry one: never
        # pick one of them silently (docs/PROOFS.md).
        matches = prover.matches_by_request_id(args.request_id)
        rid = escape(args.request_id)
        if len(matches) > 1 and not args.all:
            for match in matches:
                print(match.describe(args.log), file=sys.stderr)
            raise ConfigError(
                f"{len(matches)} entries carry request id {rid}; prove one with --seq"
            )
        if args.all:
            try:
                args.out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"cannot create directory {args.out}: {e.strerror}") from e
            unproven = 0
            for match in matches:
                try:
                    inc = prover.inclusion(seq=match.seq, tree_size=args.tree_size)
                except EntryNotFoundError as e:  # not under a (valid) signed checkpoint
                    print(f"not proven: {match.describe(args.log)}: {e}", file=sys.stderr)
                    unproven += 1
                    continue
                if inc.entry != match.entry:
                    raise VerificationError(f"entry {match.seq} changed while it was read")
                path = args.out / f"{args.log}-{match.seq}{FILE_SUFFIX}"
                try:
                    path.write_text(inc.to_proof().to_text())
                except OSError as e:
                    raise ConfigError(f"cannot write {path}: {e.strerror}") from e
                reporter = match.reporter.describe() if match.reporter is not None else "-"
                print(
                    f"{escape(str(path))}: entry {inc.index} ({escape(match.kind)}, reporter "
                    f"{reporter}) of log {args.log} proven under signed tree size "
                    f"{inc.checkpoint.size} ({len(inc.hashes)} hashes)",
                    file=sys.stderr,
                )
            if unproven:
                raise EntryNotFoundError(
                    f"{unproven} of {len(matches)} entries with request id {rid} not proven"
                )
            return EXIT_OK
        seq, expected = matches[0].seq, matches[0].entry
    inclusion = prover.inclusion(seq=seq, tree_size=args.tree_size)
    if expected is not None and inclusion.entry != expected:
        raise VerificationError(f"entry {seq} changed while it was read")
    _write_out(args.out, inclusion.to_proof().to_text())
    print(
        f"entry {inclusion.index} of log {args.log} proven under signed tree size "
        f"{inclusion.checkpoint.size} ({len(inclusion.hashes)} hashes)",
        file=sys.stderr,
    )
    return EXIT_OK


def _write_consistency(prover: Prover, args: argparse.Namespace) -> int:
    """prove --consistency-from: a tlog-witness style body, old size to newer checkpoint."""
    from extproc.audit.prove import EntryNotFoundError
    from extproc.core.tlogproof import ConsistencyProof

    if args.all:
        raise ConfigError("--all goes with --request-id")
    proof = prover.consistency(args.consistency_from, args.tree_size)
    if proof.first_note is None or proof.second_note is None:
        missing = proof.first if proof.first_note is None else proof.second
        raise EntryNotFoundError(f"log {args.log} has no signed checkpoint of tree size {missing}")
    text = ConsistencyProof(proof.first, proof.hashes, proof.second_note).to_text()
    _write_out(args.out, text)
    print(
        f"log {args.log}: tree size {proof.first} proven consistent with signed tree size "
        f"{proof.second} ({len(proof.hashes)} hashes)",
        file=sys.stderr,
    )
    return EXIT_OK


def _write_out(out: Path, text: str) -> None:
    """Write a proof to a file, or to stdout for '-'."""
    if str(out) == "-":
        sys.stdout.write(text)
        return
    try:
        out.write_text(text)
    except OSError as e:
        raise ConfigError(f"cannot write {out}: {e.strerror}") from e


def _read_text(path: Path, what: str) -> str:
    """A small text file the user named ('-': stdin), read with a size bound."""
    limit = 1 << 20
    try:
        if str(path) == "-":
            raw = sys.stdin.buffer.read(limit + 1)
        else:
            with path.open("rb") as f:
                raw = f.read(limit + 1)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e
    if len(raw) > limit:
        raise ConfigError(f"{path}: {what} is larger than 1 MiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: {what} is not UTF-8 text") from e


def _cmd_check_proof(args: argparse.Namespace) -> int:
    import time

    from extproc.core.state import AuditState
    from extproc.core.tlogproof import ConsistencyProof, TlogProof, verify_proof

    verifier = _keyring(args)
    proof = TlogProof.from_text(_read_text(args.file, "proof"))
    try:
        entry = args.entry.read_bytes() if args.entry else None
    except OSError as e:
        raise ConfigError(f"cannot read {args.entry}: {e.strerror}") from e
    state = None
    if args.state is not None:
        # Read only, and never trust on first use: a missing state file is an error.
        try:
            state = AuditState.from_bytes(args.state.read_bytes())
        except OSError as e:
            raise ConfigError(f"cannot read state file {args.state}: {e.strerror}") from e
    consistency = None
    if args.consistency is not None:
        consistency = ConsistencyProof.from_text(_read_text(args.consistency, "consistency proof"))
    checkpoint = verify_proof(
        proof,
        verifier,
        entry,
        origin=args.origin,
        now_ms=int(time.time() * 1000),
        state=state,
        consistency=consistency,
    )
    print(
        f"OK: entry {proof.index} is in log {checkpoint.origin} "
        f"at signed tree size {checkpoint.size}"
    )
    return EXIT_OK


def _add_search(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "search",
        help="print matching entries, verifying the log as it is read",
        description="Stream entries matching every filter given (docs/SEARCH.md). "
        "Exit 1 if the logs read do not verify, 2 on a usage or storage error.",
    )
    p.add_argument("url", type=_reader_store, help="s3://bucket/prefix or a directory")
    _add_key_options(p, required=False, what="trusted key")
    p.add_argument("--no-verify", action="store_true", help="do not verify (no hashing)")
    p.add_argument(
        "--origin-prefix",
        type=_typed(_origin_prefix, "an origin prefix"),
        default=None,
        help="require this checkpoint origin prefix",
    )
    p.add_argument(
        "--log", action="append", default=[], metavar="ID", help="only this log (repeatable)"
    )
    p.add_argument("--since", default=None, help="entries with ts >= this (RFC 3339 or YYYY-MM-DD)")
    p.add_argument("--until", default=None, help="entries with ts < this (RFC 3339 or YYYY-MM-DD)")
    p.add_argument("--principal", default=None, help="glob on src.principal (fnmatch)")
    p.add_argument("--path", default=None, help="glob on req.path (fnmatch, no query)")
    p.add_argument("--status", default=None, help="resp.status: 500, 5xx, or a list: 404,5xx")
    p.add_argument("--request-id", default=None, metavar="RID", help="rid, exact")
    p.add_argument(
        "--join", action="store_true", help="with --status: also print each match's request entry"
    )
    p.add_argument(
        "--format",
        choices=("jsonl", "table"),
        default="jsonl",
        help="jsonl: each matching entry's bytes as stored; table: one line per match",
    )
    p.add_argument(
        "--prefetch",
        type=_int_at_least(1),
        default=4,
        metavar="N",
        help="bundles fetched ahead (S3 latency)",
    )
    _add_bundle_bound(p)


def _cmd_search(args: argparse.Namespace) -> int:
    from extproc.audit.report import table_header, table_row
    from extproc.audit.search import Filters, StoreSearch, parse_status, parse_time
    from extproc.core.display import escape
    from extproc.store import open_store

    if args.no_verify == bool(args.vkey or args.keyring):
        raise ConfigError("give --vkey or --keyring to verify as it reads, or --no-verify")
    if args.join and args.status is None:
        raise ConfigError("--join needs --status (without it requests match on their own)")
    filters = Filters(
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
        principal=args.principal,
        path=args.path,
        status=parse_status(args.status) if args.status else None,
        request_id=args.request_id,
        join=args.join,
    )
    if filters.since and filters.until and filters.since >= filters.until:
        raise ConfigError("--since must be before --until")
    verifier = None if args.no_verify else _keyring(args)
    search = StoreSearch(
        open_store(args.url),
        filters,
        verifier=verifier,
        origin_prefix=args.origin_prefix,
        log_ids=args.log,
        prefetch=args.prefetch,
        keep_requests=args.format == "table",
        max_bundle_bytes=args.max_bundle_bytes,
    )
    out = sys.stdout.buffer
    width = max((len(escape(i)) for i in search.select_logs()), default=3)
    try:
        if args.format == "table":
            out.write(table_header(width).encode() + b"\n")
        for match in search.matches():
            if args.format == "table":
                out.write(table_row(match, width).encode() + b"\n")
            else:
                out.write(match.line + b"\n")
        out.flush()
    except BrokenPipeError:  # `search ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    stats = search.stats
    counts = (
        f"{stats.matches} matches in {stats.entries_scanned} entries scanned, "
        f"{stats.bundles} bundles ({stats.bundles_skipped} outside the time window), "
        f"{stats.logs} logs"
    )
    if verifier is None:
        print(f"NOT VERIFIED (--no-verify): {counts}", file=sys.stderr)
        return EXIT_OK
    from extproc.core.findings import all_ok

    for finding in stats.general + [f for r in stats.reports for f in r.findings]:
        print(f"  {escape(str(finding))}", file=sys.stderr)  # keys come from the store
    ok = all_ok(stats.reports, stats.general)
    print(
        f"{'VALID' if ok else 'INVALID'}: {counts}; Object Lock retention not checked (run verify)",
        file=sys.stderr,
    )
    return EXIT_OK if ok else EXIT_INVALID


COMMANDS = {
    "search": _cmd_search,
    "prove": _cmd_prove,
    "check-proof": _cmd_check_proof,
    "keygen": _cmd_keygen,
    "hash-keygen": _cmd_hash_keygen,
    "hash-value": _cmd_hash_value,
    "health": _cmd_health,
    "init-bucket": _cmd_init_bucket,
    "serve": _cmd_serve,
    "verify": _cmd_verify,
    "demo": _cmd_demo,
}


def _one_line(error: Exception) -> str:
    """An error message as one escaped line: it may quote bucket or file content."""
    from extproc.core.display import escape

    return escape(str(error))


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    _CONVERTED_FROM_ENV.clear()
    try:
        args = parser.parse_args(argv)
    except ConfigError as e:  # a type converter that checks more than syntax
        print(f"extproc-audit: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # boto and grpc are chatty at INFO/DEBUG and may print request details.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except VerificationError as e:
        print(f"extproc-audit: invalid: {_one_line(e)}", file=sys.stderr)
        return EXIT_INVALID
    except AuditError as e:
        if isinstance(e, ConfigError) and args.command == "serve":
            e = _naming_env_source(e, args)
        print(f"extproc-audit: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("extproc-audit: interrupted", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except OSError as e:  # a file or socket the command needs (named by the OS)
        print(f"extproc-audit: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:
        # A bug, not the user's doing: one line, and the traceback with -v.
        if args.verbose:
            raise
        print(
            f"extproc-audit: error: unexpected {type(e).__name__}: {_one_line(e)} "
            "(run with -v for the traceback, and please report it)",
            file=sys.stderr,
        )
        return EXIT_ERROR
