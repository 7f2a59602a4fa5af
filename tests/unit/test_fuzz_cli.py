"""The project attacks itself (issue 16, item 6): command-line and environment values.

Every option of `serve` that takes a value, on the command line and in its
EXTPROC_AUDIT_* form, and the value options of the reader commands, get
garbage and near-valid values through `extproc.cli.main(argv)` in-process.
A bad value is a usage error: exit 2 and one printable line on stderr, never
a traceback or the "unexpected" bug path, within a memory and CPU budget.
`serve` stops after its settings are checked (`cli.serve_config`): nothing is
bound or started. The reader commands run for real on an empty store.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc import cli
from extproc.cli.base import run
from extproc.config import ServeConfig
from extproc.core.note import Signer
from extproc.options import options_of
from tests.budget import FUZZ, MIB, Budget, within_budget

VKEY = Signer.generate("fuzz-cli").verifier().to_text()
# One whole command: parser, config, a store listing.
BUDGET: Budget = {"memory": 16 * MIB, "cpu": 2.0}


def _value_options(command: str) -> list[argparse.Action]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [
        a
        for a in sub.choices[command]._actions
        if a.option_strings and a.nargs != 0 and a.dest not in ("help", "vkey", "keyring")
    ]


SERVE_OPTIONS = _value_options("serve")
SERVE_FLAGS = [o.name for _, o in options_of(ServeConfig) if o.kind == "flag"]

# Values near the edges of what converters take, and plain garbage.
EDGES = [
    "", " ", "-1", "0", "1", "nan", "inf", "-inf", "1e999", "0x10", "1_000", "٣", "²",
    "9" * 5000, "1.5", "  7 ", "off", "unix:", "unix:/", "[::1]:1", ":99999", "a:b:c",
    "s3:/b/x", "s3://", "file://x", "http://x", "*", ",", ",,", "a\nb", "\x1b[2K", "\u202e",
    "2026-02-30", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "true", "yes",
]  # fmt: skip
values = st.one_of(
    st.sampled_from(EDGES),
    st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=40),
)


def _checked_only(args: argparse.Namespace) -> int:
    """serve, stopped once its settings are checked."""
    cli.serve_config(args)
    return 0


def _run(argv: list[str], parser: argparse.ArgumentParser | None = None) -> tuple[int, str]:
    """main(argv) in-process: its exit status and stderr. `parser`: main's
    parser built once (its environment defaults are read when it is built),
    so that a fuzz example costs the parse and the command, not the build."""
    err = io.StringIO()
    with (
        mock.patch.dict(cli.COMMANDS, serve=_checked_only),
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.TextIOWrapper(io.BytesIO())),  # search writes .buffer
    ):
        try:
            code = cli.main(argv) if parser is None else run(parser, cli.COMMANDS, argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 2
    return code, err.getvalue()


def _assert_usage_outcome(code: int, err: str) -> None:
    assert code in (0, 1, 2), (code, err)
    assert "Traceback" not in err and "unexpected" not in err, err
    if code == 2:
        assert err.count("\n") == 1 and err[:-1].isprintable(), repr(err)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("fuzz-cli")
    (base / "store").mkdir()
    _run(["verify", str(base / "store"), "--vkey", VKEY])  # imports done outside the budget
    return base


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    """main's parser, for the command-line fuzz tests (the environment does not change)."""
    return cli.build_parser()


@FUZZ
@given(st.sampled_from(SERVE_OPTIONS), values)
def test_serve_option_value_fuzz(
    workdir: Path, parser: argparse.ArgumentParser, option: argparse.Action, value: str
) -> None:
    # --allow-unauthenticated: so that the value fuzzed is what is checked last.
    base = ["serve", "--store", str(workdir / "s"), "--key", str(workdir / "k")]
    base.append("--allow-unauthenticated")
    with within_budget(**BUDGET, allowed=()):
        code, err = _run([*base, f"{option.option_strings[-1]}={value}"], parser)
    _assert_usage_outcome(code, err)


@FUZZ
@given(st.sampled_from([*(a.dest for a in SERVE_OPTIONS), *SERVE_FLAGS]), values)
def test_serve_environment_value_fuzz(workdir: Path, dest: str, value: str) -> None:
    variable = cli.env_name(dest)
    base = {
        "EXTPROC_AUDIT_STORE": str(workdir / "s"),
        "EXTPROC_AUDIT_KEY": str(workdir / "k"),
        "EXTPROC_AUDIT_ALLOW_UNAUTHENTICATED": "1",
    }
    with (
        mock.patch.dict(os.environ, {**base, variable: value}),
        within_budget(**BUDGET, allowed=()),
    ):
        code, err = _run(["serve"])
    _assert_usage_outcome(code, err)
    if code == 2:  # a bad value names where it came from
        assert variable in err or f"--{dest.replace('_', '-')}" in err, err


READERS = {
    "verify": lambda d: ["verify", str(d / "store"), "--vkey", VKEY],
    "search": lambda d: ["search", str(d / "store"), "--no-verify"],
}
READER_OPTIONS = [(command, action) for command in READERS for action in _value_options(command)]


@FUZZ
@given(st.sampled_from(READER_OPTIONS), values)
def test_reader_option_value_fuzz(
    workdir: Path,
    parser: argparse.ArgumentParser,
    command_option: tuple[str, argparse.Action],
    value: str,
) -> None:
    command, option = command_option
    argv = [*READERS[command](workdir), f"{option.option_strings[-1]}={value}"]
    with within_budget(**BUDGET, allowed=()):
        code, err = _run(argv, parser)
    _assert_usage_outcome(code, err)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["verify", "{store}", "--vkey", VKEY, "--since=0001-01-01T00:00:00+01:00"],
            "out of range",
        ),
        (["serve", "--store", "{store}", "--key", "k", "--max-headers=nan"], "not an integer"),
        (["serve", "--store", "{store}", "--key", "k", "--origin-prefix=a\nb"], "origin prefix"),
    ],
    ids=["time-overflow", "nan-integer", "newline-origin"],
)
def test_edge_values_are_usage_errors(workdir: Path, argv: list[str], message: str) -> None:
    code, err = _run([a.replace("{store}", str(workdir / "store")) for a in argv])
    assert code == 2 and message in err, err
    _assert_usage_outcome(code, err)
