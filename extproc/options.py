"""Settings declared once: text converters and the option a setting carries.

A setting of `serve` is a ServeConfig field (extproc/config.py) whose
metadata is an Option: its help, group, converter, metavar, choices and
whether it is a flag or repeatable. The command line (extproc/cli/serve.py)
generates the parser and builds the ServeConfig from these declarations, so
a flag name, its EXTPROC_AUDIT_* form and its default are written once.

Pure: no argparse, no I/O. A converter raises ValueError for text that is not
what it takes (the command line says "'x' is not <what>") or ConfigError for a
check that explains itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, overload

from extproc.core import layout
from extproc.core.checkpoint import validate_origin_prefix
from extproc.errors import ConfigError

T = TypeVar("T")
N = TypeVar("N", int, float)
ENV_PREFIX = "EXTPROC_AUDIT_"
OPTION = "option"  # the key of a field's metadata that holds its Option
Kind = Literal["value", "flag", "list"]


@dataclass(frozen=True)
class Convert(Generic[T]):
    """Text to a value, and what the text must be (for the error line)."""

    parse: Callable[[str], T]
    what: str


def _at_least(least: float, convert: Callable[[str], N]) -> Callable[[str], N]:
    def parse(text: str) -> N:
        value = convert(text)
        if not value >= least:  # also refuses NaN
            raise ValueError(text)
        return value

    return parse


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


INT: Convert[int] = Convert(int, "an integer")
FLOAT: Convert[float] = Convert(float, "a number")
PATH: Convert[Path] = Convert(_non_empty_path, "a path")
NON_NEGATIVE: Convert[float] = Convert(_at_least(0.0, float), "a number >= 0")
POSITIVE: Convert[float] = Convert(_above(0.0), "a number > 0")


LOG_ID: Convert[str] = Convert(layout.validate_log_id, "a log id")
ORIGIN_PREFIX: Convert[str] = Convert(
    lambda text: validate_origin_prefix(text, "origin prefix"), "an origin prefix"
)


def int_at_least(least: int) -> Convert[int]:
    """An integer of at least `least`."""
    return Convert(_at_least(least, int), f"an integer >= {least}")


def one_of(choices: Sequence[str]) -> Convert[str]:
    """One of `choices`, exactly."""

    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(text)
        return str(text)

    return Convert(parse, "one of " + ", ".join(choices))


@dataclass(frozen=True)
class Option:
    """How one setting is given: `--NAME VALUE` or EXTPROC_AUDIT_NAME.

    kind: "value" (converted by `convert`, or the text as given), "flag" (no
    value; its environment form a boolean) or "list" (repeatable; its
    environment form comma-separated). `default` is what the parser shows and
    uses when neither form is given; `cli_default`, when set, computes it
    instead (the host name for --log-id, a list as its text).
    """

    help: str
    group: str
    default: object = None
    name: str = ""  # the option's name, `_` for `-`: set from the field unless it differs
    convert: Convert[Any] | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    kind: Kind = "value"
    required: bool = False
    cli_default: Callable[[], object] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return env_name(self.name)

    def shown_default(self) -> object:
        """The default the parser takes (and --help shows)."""
        return self.cli_default() if self.cli_default is not None else self.default


def env_name(name: str) -> str:
    """The environment form of an option: --log-id is EXTPROC_AUDIT_LOG_ID."""
    return ENV_PREFIX + name.upper().replace("-", "_")


@overload
def option(
    *,
    help: str,
    group: str,
    convert: Convert[Any] | None = ...,
    metavar: str | None = ...,
    name: str = ...,
) -> Any: ...


@overload
def option(
    default: T,
    *,
    help: str,
    group: str,
    convert: Convert[Any] | None = ...,
    metavar: str | None = ...,
    choices: tuple[str, ...] | None = ...,
    kind: Kind = ...,
    name: str = ...,
    cli_default: Callable[[], object] | None = ...,
) -> T: ...


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    group: str,
    convert: Convert[Any] | None = None,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
    kind: Kind = "value",
    name: str = "",
    cli_default: Callable[[], object] | None = None,
) -> Any:
    """A dataclass field that is also a command-line option (no default: required).

    choices imply their converter; a flag defaults to False, a list to ().
    """
    required = default is dataclasses.MISSING
    declared = Option(
        help=help,
        group=group,
        default=None if required or kind != "value" else default,
        name=name,
        convert=one_of(choices) if choices is not None and convert is None else convert,
        metavar=metavar,
        choices=choices,
        kind=kind,
        required=required,
        cli_default=cli_default,
    )
    return dataclasses.field(default=default, metadata={OPTION: declared})


def options_of(cls: type) -> Iterator[tuple[str, Option]]:
    """(field name, Option) of each field of dataclass `cls` that is an option, in order;
    each Option named (its field's name unless it says otherwise)."""
    for f in dataclasses.fields(cls):
        declared = f.metadata.get(OPTION)
        if isinstance(declared, Option):
            yield f.name, declared if declared.name else dataclasses.replace(declared, name=f.name)


def flag_of(cls: type, field_name: str) -> str:
    """The command-line flag of a field, for an error line that names it."""
    return next(o.flag for name, o in options_of(cls) if name == field_name)
