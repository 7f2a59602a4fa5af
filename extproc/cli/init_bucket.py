"""init-bucket: an S3 bucket with Object Lock and a stated default retention."""

from __future__ import annotations

import argparse

from extproc.cli.base import EXIT_OK, Subparsers, typed
from extproc.errors import ConfigError
from extproc.options import int_at_least


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


def add_init_bucket(sub: Subparsers) -> None:
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
        type=typed(int_at_least(1)),
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


def run_init_bucket(args: argparse.Namespace) -> int:
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
