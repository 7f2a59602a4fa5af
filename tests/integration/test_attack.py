"""The project attacks itself: `scripts/attack.py --quick` in CI.

The script runs the attack families of docs/THREATS.md against live servers
behind real Envoy (loopback only) and prints a row per attack. Here it runs as
a child process: every attack must hold, every family it claims must be a
section of docs/THREATS.md and appear in the run, and docs/THREATS.md must name
every attack. A hole the script finds and nobody has closed yet is listed in
KNOWN_HOLES: it must keep reading FAILED until it is closed. The script must
also be able to report a hole: with a defence switched off (`--weaken`), the
attack on it reads FAILED and the exit status is 1.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import attack  # noqa: F401  # scripts/attack.py: importing it registers every attack
import pytest
from attack_lab import ATTACKS, FAMILIES

from tests.helpers import run_group

ROOT = Path(__file__).resolve().parents[2]
THREATS = ROOT / "docs" / "THREATS.md"
# The attacks issue 16 lists (1-9 and the minor ones of 10), and the older
# families a live server can be attacked with: each must be a row of the script.
REQUIRED = {
    "forged-xfcc-sidecar-review", "forged-xfcc-sidecar", "als-500k", "store-bomb",
    "planted-claims", "secrets", "unauthenticated-default-serve", "claims-stored-as-claimed",
    "destination-refused", "outcome-conflict", "retired-key-backdated", "mistyped-store-url",
    "second-writer-other-key", "origin-prefix-newline", "forged-status", "world-readable-key",
    "object-names-in-server-log", "forged-stream-mtls", "forged-xfcc-direct", "many-headers",
    "stream-flood", "hostile-streams", "tamper-published", "rollback-fork", "terminal-escapes",
    "sidecar-reset-limit",
}  # fmt: skip
# Holes the script finds that are not closed yet: each must read FAILED (so
# that fixing one makes this test name it, to be removed here), and is in the
# table of docs/THREATS.md with what it found. Every other attack must hold.
KNOWN_HOLES: set[str] = set()


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    report = tmp_path / "attack.json"
    result = run_group(
        [sys.executable, str(ROOT / "scripts" / "attack.py"), *args, "--json", str(report)],
        timeout=280,
    )
    return result, json.loads(report.read_text()) if report.exists() else {}


def _sections() -> set[str]:
    return set(re.findall(r"^## (.+)$", THREATS.read_text(), flags=re.MULTILINE))


def test_script_claims_only_families_of_threats_md_and_every_attack_the_issue_lists() -> None:
    assert set(FAMILIES) <= _sections()
    ids = [a.id for a in ATTACKS]
    assert len(ids) == len(set(ids))
    assert set(ids) >= REQUIRED, REQUIRED - set(ids)
    assert {a.family for a in ATTACKS} == set(FAMILIES)


def test_threats_md_names_every_attack_of_the_script() -> None:
    section = THREATS.read_text().split("## The project attacks itself", 1)[1]
    missing = [a.id for a in ATTACKS if f"`{a.id}`" not in section]
    assert not missing, f"docs/THREATS.md does not list {missing}"


@pytest.mark.envoy
@pytest.mark.slow
def test_every_attack_of_the_quick_run_holds(tmp_path: Path) -> None:
    result, report = _run(tmp_path, "--quick")
    assert report, result.stdout[-4000:] + result.stderr[-2000:]
    rows = {r["id"]: r for r in report["rows"]}
    assert set(rows) == {a.id for a in ATTACKS}
    # Every family the script claims appears in the run, and every attack held
    # but the known holes, which must still be found.
    assert {r["family"] for r in rows.values()} == set(FAMILIES)
    failed = {i for i, r in rows.items() if not r["held"]}
    assert failed == KNOWN_HOLES, {i: rows[i]["problems"] for i in failed ^ KNOWN_HOLES}
    assert all(not r["problems"] for i, r in rows.items() if i not in KNOWN_HOLES)
    assert result.returncode == (1 if KNOWN_HOLES else 0), result.stderr[-2000:]
    for i, r in rows.items():
        assert r["budget"], r  # each says what it measured
        line = next(x for x in result.stdout.splitlines() if f" {i} " in x)
        assert ("FAILED" in line) == (i in KNOWN_HOLES), line


@pytest.mark.envoy
@pytest.mark.slow
def test_a_defence_switched_off_is_reported_as_failed(tmp_path: Path) -> None:
    """The mutation check: a default serve told to take unauthenticated reporters
    (--weaken unauthenticated: `serve --allow-unauthenticated`) takes the hand-made
    request, and the attack says so."""
    result, report = _run(
        tmp_path, "--only", "unauthenticated-default-serve", "--weaken", "unauthenticated"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    (row,) = report["rows"]
    assert not row["held"]
    assert any("took a hand-made ProcessingRequest" in p for p in row["problems"]), row
    assert "forged entries logged 1" in row["budget"]
    line = next(x for x in result.stdout.splitlines() if " unauthenticated-default-serve " in x)
    assert "FAILED" in line
