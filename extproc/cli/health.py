"""health: ask a server's gRPC health service (the container health check)."""

from __future__ import annotations

import argparse

from extproc.cli.base import EXIT_INVALID, EXIT_OK, Subparsers, typed
from extproc.options import POSITIVE


def _address(text: str) -> str:
    """health's --addr: HOST:PORT or unix:PATH, checked like serve's --listen."""
    from extproc.config import check_address

    check_address(text, "--addr", unix=True)
    return text


def add_health(sub: Subparsers) -> None:
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
        type=typed(POSITIVE),
        default=2.0,
        metavar="SECONDS",
        help="how long to wait for the answer",
    )


def run_health(args: argparse.Namespace) -> int:
    from extproc.health import check_health

    status = check_health(args.addr, args.service, args.timeout)
    print(status.to_text())
    # Docker HEALTHCHECK: 1 means unhealthy and 2 is reserved, so never 2 here.
    return EXIT_OK if status.serving else EXIT_INVALID
