"""verify: every log under a store URL, and what it printed about each."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from extproc.cli.base import EXIT_INVALID, EXIT_OK, Subparsers, typed
from extproc.cli.readers import (
    add_bundle_bound,
    add_key_options,
    add_witness_options,
    keyring,
    reader_store,
    witness_policy,
)
from extproc.errors import ConfigError
from extproc.options import NON_NEGATIVE, ORIGIN_PREFIX, POSITIVE, int_at_least


def add_verify(sub: Subparsers) -> None:
    p = sub.add_parser("verify", help="verify every log under a store URL")
    p.add_argument("url", type=reader_store, help="s3://bucket/prefix or a directory")
    add_key_options(p, required=True, what="trusted key")
    add_witness_options(p)
    p.add_argument(
        "--origin-prefix",
        type=typed(ORIGIN_PREFIX),
        default=None,
        help="require checkpoint origins to be <origin prefix>/<log id>",
    )
    p.add_argument(
        "--parallel",
        type=typed(int_at_least(1)),
        default=8,
        metavar="N",
        help="logs verified at once",
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
        type=typed(NON_NEGATIVE),
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
        type=typed(POSITIVE),
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
    add_bundle_bound(p)


def run_verify(args: argparse.Namespace) -> int:
    import contextlib
    import json

    from extproc.audit.report import parse_time_ms, print_log, result_to_json
    from extproc.audit.statefile import load_state, save_state
    from extproc.audit.verify import AuditOptions, audit_store
    from extproc.store import open_store

    verifier = keyring(args)
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
        witnesses=witness_policy(args),
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
