"""extproc-audit command line.

Exit codes (every command): 0 success; 1 verification found the log invalid;
2 usage, configuration or infrastructure error.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from extproc import __version__
from extproc.errors import AuditError, ConfigError, ForkError, VerificationError

EXIT_OK, EXIT_INVALID, EXIT_ERROR = 0, 1, 2
ENV_PREFIX = "EXTPROC_AUDIT_"


def _env(option: str, default: str | None = None) -> str | None:
    """Every serve option can come from EXTPROC_AUDIT_<OPTION> (dashes as underscores)."""
    return os.environ.get(ENV_PREFIX + option.upper().replace("-", "_"), default)


def _env_flag(option: str) -> bool:
    return (_env(option) or "").lower() in ("1", "true", "yes", "on")


def _default_log_id() -> str:
    """The pod name in Kubernetes (HOSTNAME), sanitised to the log id alphabet."""
    name = os.environ.get("HOSTNAME") or socket.gethostname() or "default"
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in name)[:128]
    return cleaned.strip(".") or "default"


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from extproc.core.redact import QUERY_MODES
    from extproc.server.capture import DEFAULT_RESPONSE_HEADERS

    p = sub.add_parser(
        "serve",
        help="run the ext_proc audit server",
        description="Run the ext_proc gRPC audit server. Every option can also be set "
        f"from the environment as {ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}STORE).",
    )
    p.add_argument(
        "--store",
        default=_env("store"),
        help="s3://bucket/prefix (endpoint from AWS_ENDPOINT_URL) or a directory",
    )
    p.add_argument("--key", type=Path, default=_env("key"), help="signing key file (keygen)")
    p.add_argument(
        "--listen",
        default=_env("listen", "0.0.0.0:50051"),
        help="gRPC listen address (default %(default)s)",
    )
    p.add_argument(
        "--log-id",
        default=_env("log_id", _default_log_id()),
        help="this writer's log id, one per process (default: hostname, %(default)s)",
    )
    p.add_argument(
        "--wal-dir",
        type=Path,
        default=Path(_env("wal_dir", "extproc-wal") or ""),
        help="write-ahead log directory (default %(default)s)",
    )
    p.add_argument(
        "--mode",
        choices=("enforce", "observe"),
        default=_env("mode", "enforce"),
        help="enforce: forward only once logged (default); observe: never block",
    )
    p.add_argument(
        "--origin-prefix",
        default=_env("origin_prefix", "extproc-audit"),
        help="checkpoint origin is <origin prefix>/<log id> (default %(default)s)",
    )
    p.add_argument(
        "--metrics-listen",
        default=_env("metrics_listen", "0.0.0.0:9464"),
        help="Prometheus metrics address, or 'off' (default %(default)s)",
    )
    p.add_argument(
        "--bundle-max-entries",
        type=int,
        default=int(_env("bundle_max_entries", "10000") or 0),
        help="seal a bundle at this many entries (default %(default)s)",
    )
    p.add_argument(
        "--bundle-max-bytes",
        type=int,
        default=int(_env("bundle_max_bytes", str(16 << 20)) or 0),
        help="seal a bundle at this many bytes (default %(default)s)",
    )
    p.add_argument(
        "--bundle-max-age",
        type=float,
        default=float(_env("bundle_max_age", "0.5") or 0),
        help="seal a bundle once its oldest entry is this many seconds old (default %(default)s)",
    )
    p.add_argument(
        "--gzip", action="store_true", default=_env_flag("gzip"), help="write bundles as .jsonl.gz"
    )
    p.add_argument(
        "--retention-days",
        type=int,
        default=int(v) if (v := _env("retention_days")) else None,
        help="Object Lock retention per object (default: the bucket's default rule)",
    )
    p.add_argument(
        "--retention-mode",
        choices=("COMPLIANCE", "GOVERNANCE"),
        default=_env("retention_mode", "COMPLIANCE"),
    )
    p.add_argument(
        "--allow-no-object-lock",
        action="store_true",
        default=_env_flag("allow_no_object_lock"),
        help="development only: accept a bucket without Object Lock",
    )
    p.add_argument(
        "--max-backlog-bytes",
        type=int,
        default=int(_env("max_backlog_bytes", str(128 << 20)) or 0),
        help="deny (enforce) or drop (observe) past this many unpublished bytes",
    )
    p.add_argument(
        "--response-headers",
        default=_env("response_headers", ",".join(sorted(DEFAULT_RESPONSE_HEADERS))),
        help="response headers to record, comma-separated, or '*' for all (default %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=int(_env("workers", "1") or 1),
        help="writer processes sharing the listen port, each with its own log id "
        "<log-id>-w<i> and metrics port +i (default %(default)s)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=float(_env("drain_timeout", "20") or 0),
        help="seconds to drain streams and publish on SIGTERM (default %(default)s)",
    )
    p.add_argument(
        "--redact-header",
        action="append",
        default=None,
        metavar="NAME",
        help="also redact this header (repeatable; env: comma-separated)",
    )
    p.add_argument(
        "--redact-query-param",
        action="append",
        default=None,
        metavar="NAME",
        help="also redact this query parameter's value (repeatable)",
    )
    p.add_argument(
        "--query-mode",
        choices=QUERY_MODES,
        default=_env("query_mode", "sensitive"),
        help="query strings: redact sensitive params (default), all values, keep, drop",
    )
    p.add_argument(
        "--hmac-key-file",
        type=Path,
        default=_env("hmac_key_file"),
        help="replace secrets by HMAC-SHA256 under this key instead of [redacted]",
    )
    p.add_argument(
        "--max-value-bytes",
        type=int,
        default=int(_env("max_value_bytes", "2048") or 0),
        help="truncate header values longer than this (default %(default)s)",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="extproc-audit",
        description="Immutable, verifiable audit log for Envoy/Istio meshes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("keygen", help="create an Ed25519 signing key; print its verifier key")
    p.add_argument("--name", required=True, help="key name (no spaces or '+')")
    p.add_argument("--out", type=Path, required=True, help="key file to create (mode 0600)")

    p = sub.add_parser("init-bucket", help="create an S3 bucket with Object Lock")
    p.add_argument("url", help="s3://BUCKET")
    p.add_argument("--retention-days", type=int, default=365)
    p.add_argument("--mode", choices=("COMPLIANCE", "GOVERNANCE"), default="COMPLIANCE")

    _add_serve(sub)

    p = sub.add_parser("verify", help="verify every log under a store URL")
    p.add_argument("url", help="s3://bucket/prefix or a directory")
    p.add_argument("--vkey", required=True, help="verifier key string, or @FILE holding it")
    p.add_argument(
        "--origin-prefix",
        default=None,
        help="require checkpoint origins to be <origin prefix>/<log id>",
    )
    p.add_argument("--parallel", type=int, default=8, help="logs verified at once")
    p.add_argument(
        "--deep",
        action="store_true",
        help="parse every entry as JSON (default: only where the quick chain check needs it)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print findings and summary only")

    p = sub.add_parser("demo", help="run Envoy + audit server + app locally and verify the log")
    p.add_argument("--requests", type=int, default=300, help="requests to send (default 300)")
    p.add_argument(
        "--store",
        default=None,
        help="s3://bucket/prefix (AWS_ENDPOINT_URL) instead of a local directory",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("extproc-demo"),
        help="where the demo keeps its key, WAL and local store (default %(default)s)",
    )
    p.add_argument("--mode", choices=("enforce", "observe"), default="enforce")
    p.add_argument("--concurrency", type=int, default=8, help="client connections")
    return parser


def _read_vkey(value: str) -> str:
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read verifier key file {value[1:]}: {e.strerror}") from e
    return value


def _cmd_keygen(args: argparse.Namespace) -> int:
    from extproc.core.note import Signer
    from extproc.keys import write_signer

    signer = Signer.generate(args.name)
    write_signer(args.out, signer)
    print(signer.verifier().to_text())
    print(f"signing key written to {args.out} (mode 0600); keep it secret", file=sys.stderr)
    return EXIT_OK


def _cmd_init_bucket(args: argparse.Namespace) -> int:
    from extproc.store.s3 import S3Store

    if not args.url.startswith("s3://"):
        raise ConfigError("init-bucket needs an s3://BUCKET URL")
    bucket = args.url[len("s3://") :].split("/", 1)[0]
    if args.retention_days < 1:
        raise ConfigError("--retention-days must be at least 1")
    created = S3Store(bucket).create_locked_bucket(args.mode, args.retention_days)
    state = "created" if created else "already exists; Object Lock confirmed"
    print(f"bucket {bucket} {state}: default retention {args.mode} {args.retention_days} days")
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from extproc.core.redact import (
        DEFAULT_REDACT_HEADERS,
        DEFAULT_REDACT_QUERY_PARAMS,
        RedactionPolicy,
    )
    from extproc.server.app import ServeConfig, serve

    if not args.store:
        raise ConfigError("--store is required (or EXTPROC_AUDIT_STORE)")
    if not args.key:
        raise ConfigError("--key is required (or EXTPROC_AUDIT_KEY)")
    headers = args.redact_header or (_env("redact_header") or "").split(",")
    params = args.redact_query_param or (_env("redact_query_param") or "").split(",")
    hmac_key = None
    if args.hmac_key_file:
        try:
            hmac_key = Path(args.hmac_key_file).read_bytes().strip()
        except OSError as e:
            raise ConfigError(f"cannot read HMAC key file: {e.strerror}") from e
        if len(hmac_key) < 16:
            raise ConfigError("HMAC key file must hold at least 16 bytes")
    if args.max_value_bytes < 64:
        raise ConfigError("--max-value-bytes must be at least 64")
    policy = RedactionPolicy(
        redact_headers=DEFAULT_REDACT_HEADERS | {h.strip().lower() for h in headers if h.strip()},
        redact_query_params=DEFAULT_REDACT_QUERY_PARAMS
        | {q.strip().lower() for q in params if q.strip()},
        query_mode=args.query_mode,
        hmac_key=hmac_key,
        max_value_bytes=args.max_value_bytes,
    )
    response_headers = None
    if args.response_headers.strip() != "*":
        response_headers = frozenset(
            h.strip().lower() for h in args.response_headers.split(",") if h.strip()
        )
    config = ServeConfig(
        store=args.store,
        key=Path(args.key),
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
        redaction=policy,
        response_headers=response_headers,
    )
    if config.bundle_max_entries < 1 or config.bundle_max_age <= 0:
        raise ConfigError("--bundle-max-entries and --bundle-max-age must be positive")
    if args.workers > 1:
        from extproc.server.workers import run_workers

        if config.listen.endswith(":0"):
            raise ConfigError("--workers needs a fixed --listen port (workers share it)")
        return run_workers(config, args.workers)
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    return serve(config)


def _cmd_verify(args: argparse.Namespace) -> int:
    from extproc.auditor import all_ok, verify_store
    from extproc.core.note import Verifier
    from extproc.store import open_store

    verifier = Verifier.from_text(_read_vkey(args.vkey))
    store = open_store(args.url)
    reports, general = verify_store(
        store, verifier, args.origin_prefix, parallel=args.parallel, deep=args.deep
    )
    for finding in general:
        print(finding)
    for report in reports:
        latest = report.latest
        signed = f"signed size {latest.size}" if latest else "no valid checkpoint"
        status = "OK" if report.ok else "INVALID"
        if not args.quiet or not report.ok:
            print(
                f"log {report.log_id}: {status}: {report.entries} entries in "
                f"{report.bundles} bundles, {report.checkpoints} checkpoints, {signed}"
            )
        for finding in report.findings:
            print(f"  {finding}")
    if not reports:
        print(f"no logs found under {store.url}: nothing verifies")
    ok = all_ok(reports, general)
    entries = sum(r.entries for r in reports)
    retention = "checked" if store.supports_retention else "not applicable (local store)"
    print(
        f"{'VALID' if ok else 'INVALID'}: {len(reports)} logs, {entries} entries, "
        f"Object Lock retention {retention}"
    )
    return EXIT_OK if ok else EXIT_INVALID


def _cmd_demo(args: argparse.Namespace) -> int:
    from extproc.demo import run_demo

    return run_demo(
        requests=args.requests,
        store_url=args.store,
        workdir=args.workdir,
        mode=args.mode,
        concurrency=args.concurrency,
    )


COMMANDS = {
    "keygen": _cmd_keygen,
    "init-bucket": _cmd_init_bucket,
    "serve": _cmd_serve,
    "verify": _cmd_verify,
    "demo": _cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # boto and grpc are chatty at INFO/DEBUG and may print request details.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except ForkError as e:  # a writer's refusal to fork is an operational error
        print(f"extproc-audit: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except VerificationError as e:
        print(f"extproc-audit: invalid: {e}", file=sys.stderr)
        return EXIT_INVALID
    except AuditError as e:
        print(f"extproc-audit: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR
