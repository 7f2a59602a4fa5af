"""extproc-audit command line: one module per command, the shared plumbing in
extproc/cli/base.py.

Exit codes (every command): 0 success; 1 verification found the log invalid;
2 usage, configuration or infrastructure error.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from extproc import __version__
from extproc.cli import demo, health, init_bucket, keys, prove, search, serve, verify, witness
from extproc.cli.base import EXIT_ERROR, EXIT_INVALID, EXIT_OK, Command, Parser, Subparsers, run
from extproc.cli.serve import serve_config
from extproc.options import env_name

__all__ = [
    "COMMANDS",
    "EXIT_ERROR",
    "EXIT_INVALID",
    "EXIT_OK",
    "build_parser",
    "env_name",
    "main",
    "serve_config",
]

# Each command: the function that adds its parser and the one that runs it,
# in the order `extproc-audit --help` lists them.
_TABLE: tuple[tuple[str, Callable[[Subparsers], None], Command], ...] = (
    ("keygen", keys.add_keygen, keys.run_keygen),
    ("hash-keygen", keys.add_hash_keygen, keys.run_hash_keygen),
    ("hash-value", keys.add_hash_value, keys.run_hash_value),
    ("health", health.add_health, health.run_health),
    ("init-bucket", init_bucket.add_init_bucket, init_bucket.run_init_bucket),
    ("serve", serve.add_serve, serve.run_serve),
    ("verify", verify.add_verify, verify.run_verify),
    ("demo", demo.add_demo, demo.run_demo),
    ("prove", prove.add_prove, prove.run_prove),
    ("check-proof", prove.add_check_proof, prove.run_check_proof),
    ("search", search.add_search, search.run_search),
    ("witness", witness.add_witness, witness.run_witness),
    ("witness-keygen", witness.add_witness_keygen, witness.run_witness_keygen),
)
# What main() runs for each command name (tests replace one).
COMMANDS: dict[str, Command] = {name: command for name, _, command in _TABLE}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
        parser_class=Parser,
        help="one of these; `extproc-audit COMMAND --help` for its options",
    )
    for _, add, _ in _TABLE:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code (0 ok, 1 invalid, 2 error)."""
    return run(build_parser(), COMMANDS, argv)
