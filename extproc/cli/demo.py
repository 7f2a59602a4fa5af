"""demo: Envoy, the audit server and an app, run locally; the log verified."""

from __future__ import annotations

import argparse
from pathlib import Path

from extproc.cli.base import Subparsers, typed
from extproc.errors import ConfigError
from extproc.options import int_at_least


def _demo_store(text: str) -> str:
    from extproc.store import check_store_url

    if text.startswith("memory://"):
        raise ConfigError(
            "the demo's store must outlive its server: give s3://bucket/prefix or a directory"
        )
    return check_store_url(text)


def add_demo(sub: Subparsers) -> None:
    p = sub.add_parser(
        "demo",
        help="run Envoy + audit server + app locally and verify the log",
        description="Start a real Envoy, the audit server and a small app; send requests "
        "through Envoy; stop the server (final checkpoint); verify the log and print how to "
        "verify it yourself. Runs again in the same --workdir append to the same log.",
    )
    p.add_argument(
        "--requests", type=typed(int_at_least(1)), default=300, metavar="N", help="requests to send"
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
        "--concurrency",
        type=typed(int_at_least(1)),
        default=8,
        metavar="N",
        help="client connections",
    )


def run_demo(args: argparse.Namespace) -> int:
    from extproc.demo import run_demo

    return run_demo(
        requests=args.requests,
        store_url=args.store,
        workdir=args.workdir,
        mode=args.mode,
        concurrency=args.concurrency,
    )
