"""The Makefile's lanes run the commands the docs and CI give (docs lane: a
Makefile cannot drift from them unnoticed).

`make -n TARGET` prints a recipe with its variables filled in. Each command
passes the lane's static checks (tests/doclane.py: scripts exist and take the
options given, the files named exist), and each is the command its source
gives: README's test command, the lint lines of .ci/run, the quick runs of
docs/PERFORMANCE.md. The tools come from .venv/bin/ when there is a .venv
(nothing to activate: `python scripts/bench.py` failed without it), else
from PATH.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import doclane
from tests.doclane import ROOT

pytestmark = pytest.mark.docs

LANES = ("test-fast", "test", "lint", "bench")
MAKE = shutil.which("make") or "make"


def _recipe(target: str, workdir: Path, *, venv: bool) -> list[str]:
    """The commands `make TARGET` runs in a copy of the Makefile, with or
    without a .venv beside it."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "Makefile", workdir / "Makefile")
    if venv:
        (workdir / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
        (workdir / ".venv" / "bin" / "python").touch()
    run = subprocess.run(
        [MAKE, "--no-print-directory", "-n", target],
        cwd=workdir, capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return [line for line in run.stdout.splitlines() if line.strip()]


def _shell_commands(doc: Path) -> list[list[str]]:
    """The words of every command in the doc's shell blocks, comments dropped."""
    return [
        words
        for block in doclane.read_blocks(doc)
        if block.lang in doclane.SHELL
        for command in doclane.commands(block.text, block.doc, block.line, block.lang)
        for words in doclane.simple_commands(command.text)
    ]


@pytest.mark.parametrize("target", LANES)
def test_every_lane_runs_commands_that_exist(target: str, tmp_path: Path) -> None:
    commands = _recipe(target, tmp_path, venv=True)
    assert commands, f"make {target} runs nothing"
    assert all(c.startswith(".venv/bin/") for c in commands), commands
    problems = [f"{c}: {p}" for c in commands for p in doclane.check_command(c)]
    assert not problems, "\n".join(problems)


def test_without_a_venv_the_lanes_take_the_tools_from_path(tmp_path: Path) -> None:
    with_venv = [c for t in LANES for c in _recipe(t, tmp_path / "venv", venv=True)]
    without = [c for t in LANES for c in _recipe(t, tmp_path / "path", venv=False)]
    expected = [re.sub(r"^\.venv/bin/", "", c).replace("python ", "python3 ", 1) for c in with_venv]
    assert without == expected


def test_each_lane_is_the_command_its_source_gives(tmp_path: Path) -> None:
    def recipe(target: str) -> list[str]:
        return _recipe(target, tmp_path, venv=True)

    readme = re.search(r"the test command `([^`]+)`", (ROOT / "README.md").read_text())
    assert readme is not None, "README.md no longer names its test command"
    assert recipe("test") == [readme.group(1)]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert ci[-1] == readme.group(1), "the test command is no longer .ci/run's last line"
    missing = [c for c in recipe("lint") if c not in ci]
    assert not missing, f"not what .ci/run checks: {missing}"
    assert recipe("test-fast") == [f"{readme.group(1)} tests/unit"]
    assert (ROOT / "tests" / "unit").is_dir()
    documented = _shell_commands(ROOT / "docs" / "PERFORMANCE.md")
    for command in recipe("bench"):
        assert "--quick" in command, command
        assert shlex.split(command) in documented, f"docs/PERFORMANCE.md does not run {command}"


def test_make_in_the_docs_names_targets_of_the_makefile() -> None:
    assert set(LANES) <= doclane.make_targets()
    assert doclane.check_command("make test-fast") == []
    assert doclane.check_command("make test-slow") == [
        "make: the Makefile has no target 'test-slow'"
    ]
