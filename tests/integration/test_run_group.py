"""tests/helpers.run_group: a script's own children never outlive it in a test run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import run_group


def gone(pid: int) -> bool:
    """Exited, or a zombie left for init to reap."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_output_and_exit_status_as_subprocess_run_gives_them() -> None:
    result = run_group(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=30)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_a_timeout_ends_the_scripts_children_too(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {pid_file}; wait"
    with pytest.raises(subprocess.TimeoutExpired):
        run_group(["sh", "-c", script], timeout=1)
    assert gone(int(pid_file.read_text()))


def test_children_left_behind_by_a_finished_script_are_ended(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    result = run_group(["sh", "-c", f"sleep 300 & echo $! > {pid_file}"], timeout=30)
    assert result.returncode == 0
    assert gone(int(pid_file.read_text()))
