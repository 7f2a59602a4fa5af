"""serve: the audit server. Its parser and its ServeConfig are generated from
the declarations of the ServeConfig fields (extproc/config.py)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from extproc.cli.base import Subparsers, env_default, env_flag, env_list, typed
from extproc.options import ENV_PREFIX, Option, options_of

if TYPE_CHECKING:
    from extproc.config import ServeConfig


def add_serve(sub: Subparsers) -> None:
    from extproc.config import GROUPS, ServeConfig

    p = sub.add_parser(
        "serve",
        help="run the audit server (ext_proc and the access-log service)",
        description="Run the gRPC audit server: Envoy's ext_proc (blocking, enforce mode) and "
        "its access-log service (ALS) on one port. Every option can also be set in the "
        f"environment as {ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}STORE, {ENV_PREFIX}LOG_ID; "
        "repeatable options comma-separated; flags 1/0).",
        usage="%(prog)s --store URL --key FILE [options]",
    )
    groups = {name: p.add_argument_group(name, text) for name, text in GROUPS.items()}
    for _, declared in options_of(ServeConfig):
        groups[declared.group].add_argument(declared.flag, **_argument(declared))


def _argument(declared: Option) -> dict[str, Any]:
    """add_argument's keywords for a declared option. Flags and lists take
    their environment form when the config is built (serve_config)."""
    if declared.kind == "flag":
        return {"action": "store_true", "default": None, "help": declared.help}
    if declared.kind == "list":
        return {
            "action": "append",
            "default": None,
            "metavar": declared.metavar,
            "help": declared.help,
        }
    return {
        "metavar": declared.metavar,
        "choices": declared.choices,
        "type": typed(declared.convert) if declared.convert is not None else None,
        "default": env_default(declared.name, declared.shown_default()),
        "help": declared.help,
    }


def run_serve(args: argparse.Namespace) -> int:
    config = serve_config(args)
    if config.workers > 1:
        from extproc.server.workers import run_workers

        return run_workers(config, config.workers)
    from extproc.server.app import exit_after_serving, serve

    status = serve(config)
    exit_after_serving(status)
    return status


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """serve's parsed options and their environment forms as a checked ServeConfig
    (ConfigError for a bad one), before anything is opened or started."""
    from extproc.config import ServeConfig

    values: dict[str, object] = {}
    for name, declared in options_of(ServeConfig):
        if declared.kind == "flag":
            values[name] = env_flag(args, declared.name)
        elif declared.kind == "list":
            values[name] = tuple(env_list(args, declared.name))
        else:
            value = getattr(args, declared.name)
            # A required option not given: ServeConfig.validate() says so.
            values[name] = "" if value is None and declared.required else value
    return ServeConfig(**values)  # type: ignore[arg-type]
