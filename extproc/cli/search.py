"""search: entries matching every filter given, verified as they are read."""

from __future__ import annotations

import argparse
import os
import sys

from extproc.cli.base import EXIT_INVALID, EXIT_OK, Subparsers, typed
from extproc.cli.readers import add_bundle_bound, add_key_options, keyring, reader_store
from extproc.errors import ConfigError
from extproc.options import ORIGIN_PREFIX, int_at_least


def add_search(sub: Subparsers) -> None:
    p = sub.add_parser(
        "search",
        help="print matching entries, verifying the log as it is read",
        description="Stream entries matching every filter given (docs/SEARCH.md). "
        "Exit 1 if the logs read do not verify, 2 on a usage or storage error.",
    )
    p.add_argument("url", type=reader_store, help="s3://bucket/prefix or a directory")
    add_key_options(p, required=False, what="trusted key")
    p.add_argument("--no-verify", action="store_true", help="do not verify (no hashing)")
    p.add_argument(
        "--origin-prefix",
        type=typed(ORIGIN_PREFIX),
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
        type=typed(int_at_least(1)),
        default=4,
        metavar="N",
        help="bundles fetched ahead (S3 latency)",
    )
    add_bundle_bound(p)


def run_search(args: argparse.Namespace) -> int:
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
    verifier = None if args.no_verify else keyring(args)
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
