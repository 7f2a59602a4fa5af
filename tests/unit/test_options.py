"""serve's settings declared once (extproc/options.py, extproc/config.py): the
parser is generated from the ServeConfig fields, so a flag, its EXTPROC_AUDIT_*
form and its default cannot drift apart; these tests hold that.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from unittest import mock

import pytest

from extproc import cli
from extproc.config import GROUPS, ServeConfig
from extproc.errors import ConfigError
from extproc.options import INT, Option, env_name, flag_of, one_of, options_of

ROOT = Path(__file__).resolve().parents[2]
DECLARED = dict(options_of(ServeConfig))


def _serve_actions() -> list[argparse.Action]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in sub.choices["serve"]._actions if a.option_strings and a.dest != "help"]


def _config(tmp_path: Path, *argv: str, env: dict[str, str] | None = None) -> ServeConfig:
    """serve's ServeConfig from a command line and an environment, as main() builds it."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("EXTPROC_AUDIT_")}
    with mock.patch.dict(os.environ, {**base, **(env or {})}, clear=True):
        args = cli.build_parser().parse_args(
            ["serve", "--store", str(tmp_path / "s"), "--key", str(tmp_path / "k"), *argv]
        )
        return cli.serve_config(args)


def test_every_serve_option_is_a_declared_config_field() -> None:
    flags = {a.option_strings[-1]: a for a in _serve_actions()}
    assert set(flags) == {o.flag for o in DECLARED.values()}
    for declared in DECLARED.values():
        assert declared.group in GROUPS, declared
        assert declared.env == "EXTPROC_AUDIT_" + declared.flag[2:].upper().replace("-", "_")
        assert flags[declared.flag].dest == declared.name


def test_command_line_defaults_are_the_config_defaults(tmp_path: Path) -> None:
    """No option given: the command line builds the config a direct
    ServeConfig(...) gets (the log id aside: the host name on the command line)."""
    built = _config(tmp_path, "--allow-unauthenticated", "--log-id", "x")
    direct = ServeConfig(
        str(tmp_path / "s"), tmp_path / "k", allow_unauthenticated=True, log_id="x"
    )
    assert built == direct
    assert built.redaction == direct.redaction


# Options with a default of their own (--log-id's is the host name).
WITH_DEFAULTS = [
    name
    for name, o in DECLARED.items()
    if o.kind == "value" and o.default is not None and name != "log_id"
]


@pytest.mark.parametrize("name", WITH_DEFAULTS)
def test_each_default_given_in_the_environment_changes_nothing(name: str, tmp_path: Path) -> None:
    declared = DECLARED[name]
    value = str(declared.shown_default())
    default = _config(tmp_path, "--allow-unauthenticated", "--log-id", "x")
    from_env = _config(
        tmp_path, "--allow-unauthenticated", "--log-id", "x", env={declared.env: value}
    )
    assert getattr(from_env, name) == getattr(default, name)


def test_a_flag_and_a_list_in_the_environment_reach_the_config(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        "--log-id",
        "x",
        env={
            "EXTPROC_AUDIT_ALLOW_UNAUTHENTICATED": "yes",
            "EXTPROC_AUDIT_GZIP": "1",
            "EXTPROC_AUDIT_CLEAR_HEADER": "x-a, X-B",
        },
    )
    assert config.allow_unauthenticated and config.gzip
    assert config.clear_headers == ("x-a", "X-B")
    assert {"x-a", "x-b"} <= config.redaction.clear_headers


def test_every_serve_option_is_in_the_readme_options_table() -> None:
    readme = (ROOT / "README.md").read_text()
    assert [o.flag for o in DECLARED.values() if f"`{o.flag}" not in readme] == []


def test_an_option_names_its_flag_and_environment_form() -> None:
    declared = Option(help="h", group="g", name="max_rss_mb", convert=INT)
    assert (declared.flag, declared.env) == ("--max-rss-mb", "EXTPROC_AUDIT_MAX_RSS_MB")
    assert env_name("log-id") == env_name("log_id") == "EXTPROC_AUDIT_LOG_ID"
    assert flag_of(ServeConfig, "allow_reporters") == "--allow-reporter"
    assert DECLARED["mode"].convert is not None  # choices imply their converter
    assert DECLARED["mode"].convert.parse("observe") == "observe"
    with pytest.raises(ValueError, match="bogus"):
        one_of(("a", "b")).parse("bogus")


def test_a_command_line_without_a_key_is_refused(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EXTPROC_AUDIT_")}
    with mock.patch.dict(os.environ, base, clear=True):
        args = cli.build_parser().parse_args(
            ["serve", "--store", str(tmp_path / "s"), "--allow-unauthenticated"]
        )
        with pytest.raises(ConfigError, match=r"--key is required \(or EXTPROC_AUDIT_KEY\)"):
            cli.serve_config(args)
