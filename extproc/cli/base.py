"""What every command shares: the parser, environment values, typed
converters, and the one-line error with its exit code.

Exit codes (every command): 0 success; 1 verification found the log invalid;
2 usage, configuration or infrastructure error.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from extproc.errors import AuditError, ConfigError, VerificationError
from extproc.options import Convert, env_name

EXIT_OK, EXIT_INVALID, EXIT_ERROR = 0, 1, 2

Command = Callable[[argparse.Namespace], int]


class FromEnv(str):
    """A default read from the environment, so that a bad value names its variable."""

    variable = ""


# Variables whose values argparse converted (typed options not given on the
# command line): a later check of the converted value can still name them.
_CONVERTED_FROM_ENV: set[str] = set()


def env_default(option: str, default: object = None) -> object:
    """EXTPROC_AUDIT_<OPTION> if set (as a string argparse converts with the
    option's type: a bad value is a usage error naming the variable), else `default`."""
    name = env_name(option)
    value = os.environ.get(name)
    if value is None:
        return default
    text = FromEnv(value)
    text.variable = name
    return text


def typed(convert: Convert[Any]) -> Callable[[str], object]:
    """An argparse type that says which variable a bad value came from."""

    def parse(text: str) -> object:
        if isinstance(text, FromEnv):
            _CONVERTED_FROM_ENV.add(text.variable)
        try:
            return convert.parse(text)
        except ConfigError as e:  # a check that explains itself
            where = f"{text.variable}={text!r}: " if isinstance(text, FromEnv) else ""
            raise argparse.ArgumentTypeError(f"{where}{e}") from None
        except ValueError:
            where = f"{text.variable}=" if isinstance(text, FromEnv) else ""
            raise argparse.ArgumentTypeError(f"{where}{text!r} is not {convert.what}") from None

    return parse


_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True,
             "0": False, "false": False, "no": False, "off": False, "": False}  # fmt: skip


def env_flag(args: argparse.Namespace, name: str) -> bool:
    """A store_true option: a set flag wins; otherwise EXTPROC_AUDIT_<NAME> as a boolean."""
    if getattr(args, name) is True:
        return True
    variable = env_name(name)
    value = os.environ.get(variable)
    if value is None:
        return False
    if value.strip().lower() not in _BOOLEANS:
        raise ConfigError(f"{variable}={value!r} is not a boolean (1/0, true/false, yes/no)")
    return _BOOLEANS[value.strip().lower()]


def env_list(args: argparse.Namespace, name: str) -> list[str]:
    """A repeatable option, or its environment form: comma-separated values."""
    given: list[str] | None = getattr(args, name)
    if given:
        return given
    text = os.environ.get(env_name(name), "")
    return [v.strip() for v in text.split(",") if v.strip()]


def naming_env_source(error: ConfigError, args: argparse.Namespace) -> ConfigError:
    """A check of an option set in the environment (ServeConfig's "--OPTION ..."
    errors) also names the variable it came from."""
    match = re.match(r"--([a-z][a-z0-9-]*)", str(error))
    if match is None:
        return error
    dest = match.group(1).replace("-", "_")
    variable = env_name(dest)
    value = getattr(args, dest, None)
    from_env = (
        variable in _CONVERTED_FROM_ENV
        or isinstance(value, FromEnv)
        or (value in (None, []) and variable in os.environ)  # env_list options
    )
    if not from_env or variable not in os.environ:
        return error
    return ConfigError(f"{error} (set by {variable}={os.environ[variable]!r})")


class HelpFormatter(argparse.HelpFormatter):
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
        if isinstance(default, FromEnv):
            return f"{text} (default: %(default)s, from {default.variable})"
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with the one-line error every command uses (exit 2, no usage dump)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"extproc-audit: error: {message} (see {self.prog} --help)\n")


if TYPE_CHECKING:
    from typing import TypeAlias

    Subparsers: TypeAlias = argparse._SubParsersAction[Parser]
else:
    Subparsers = argparse._SubParsersAction


def one_line(error: Exception) -> str:
    """An error message as one escaped line: it may quote bucket or file content."""
    from extproc.core.display import escape

    return escape(str(error))


def run(
    parser: argparse.ArgumentParser, commands: Mapping[str, Command], argv: Sequence[str] | None
) -> int:
    """Parse, run the command, and map what it raises to one line and an exit code."""
    _CONVERTED_FROM_ENV.clear()
    try:
        args = parser.parse_args(argv)
    except ConfigError as e:  # a type converter that checks more than syntax
        print(f"extproc-audit: error: {one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # boto and grpc are chatty at INFO/DEBUG and may print request details.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return commands[args.command](args)
    except VerificationError as e:
        print(f"extproc-audit: invalid: {one_line(e)}", file=sys.stderr)
        return EXIT_INVALID
    except AuditError as e:
        if isinstance(e, ConfigError) and args.command == "serve":  # reads the environment
            e = naming_env_source(e, args)
        print(f"extproc-audit: error: {one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("extproc-audit: interrupted", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except OSError as e:  # a file or socket the command needs (named by the OS)
        print(f"extproc-audit: error: {one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:
        # A bug, not the user's doing: one line, and the traceback with -v.
        if args.verbose:
            raise
        print(
            f"extproc-audit: error: unexpected {type(e).__name__}: {one_line(e)} "
            "(run with -v for the traceback, and please report it)",
            file=sys.stderr,
        )
        return EXIT_ERROR
