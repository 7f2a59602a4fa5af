#!/usr/bin/env python3
"""The project attacks itself: the attack families of docs/THREATS.md, run against
live servers behind real Envoy, on loopback only.

Each attack sends, plants or hands over the same bytes its tests use (one
definition of each input: tests/attacks.py, tests/tampering.py, the topology of
tests/topology.py) and asserts the outcome from the real artefacts: gRPC
statuses, the server's log lines and /metrics, WAL files, published objects,
and the output and exit status of `verify`, `search` and `check-proof`. Where an
attack has a budget (memory, latency, event-loop stall, seconds until
publication goes on) the table shows what was measured against what bound.

The worlds, each set up once and attacked in turn:

  cli       the command line alone: a default `serve`, mistyped store URLs, a
            newline in --origin-prefix, a world-readable key
  direct    `serve` with native mTLS and --reporter-is-destination refuse; the
            attacker holds an allowed reporter's certificate (a compromised Envoy)
  append    `serve --xfcc-mode APPEND_FORWARD` behind its own sidecar (real
            Envoy) in Istio's default APPEND_FORWARD: the review's XFCC attack
  mesh      the shipped topology: `serve` behind its own sidecar (SANITIZE_SET,
            and a second one left at APPEND_FORWARD), a reporting Envoy with an
            allowed certificate in front of an upstream app, a hash key, both
            captures, the self-audit every second; honest traffic flows while
            the mesh is attacked; the store is attacked while the writer publishes
  load      the same shipped topology again, for the attack that is a load
            (1,000 requests/s): its 20,000 requests would swell the log the
            mesh world's other attacks measure
  pristine  a clean log written through Envoy, then attacked by whoever holds
            write access to the bucket or a signing key
  witness   `serve --witness` with two witnesses, quorum 1: a real witness
            server (w1) and one down (w2); no Envoy (heartbeats make the
            checkpoints)

    .venv/bin/python scripts/attack.py --quick           # CI (test_attack.py): ~45 s
    .venv/bin/python scripts/attack.py --json out.json   # the run in docs/THREATS.md: ~1.5 min
    .venv/bin/python scripts/attack.py --only als-500k,secrets
    .venv/bin/python scripts/attack.py --only unauthenticated-default-serve \\
        --weaken unauthenticated                         # must print FAILED, exit 1

--weaken switches a defence off (a serve option that widens what the server
takes), to show that an attack would see the hole: its row must read FAILED.
The exit status is 0 only if every attack run held.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this tree's extproc and tests/

# The attacks, one module per family or two: importing one registers its attacks,
# and a world runs its attacks in the order registered (mesh: forging, stalling,
# then the store's; pristine: keys, then tampering; witness: its own).
import attack_forging  # noqa: F401
import attack_keys  # noqa: F401
import attack_stalling  # noqa: F401
import attack_store  # noqa: F401
import attack_witness  # noqa: F401
from attack_lab import ATTACKS, FAMILIES, ROOT, WEAKENINGS, WORLDS, Attack, Findings, Lab, Row

from extproc import processes
from tests.conftest import stack_factory
from tests.pki import TestCA

# --- running -------------------------------------------------------------------------------


def run_world(lab: Lab, name: str, attacks: list[Attack]) -> list[Row]:
    """Set up one world, run its attacks in turn, tear it down, then run the checks
    that need the stopped server's published log."""
    findings = {a.id: Findings(timed=not lab.quick) for a in attacks}
    seconds = dict.fromkeys(findings, 0.0)
    world_problem = ""
    try:
        with WORLDS[name](lab) as world:
            for a in attacks:
                print(f"  {a.id}...", flush=True)
                started = time.monotonic()
                findings[a.id].guarded(partial(a.run, world, findings[a.id]))
                seconds[a.id] += time.monotonic() - started
    except Exception as e:
        world_problem = f"{name} world: {type(e).__name__}: {e}"
    for a in attacks:
        started = time.monotonic()
        for check in findings[a.id].later:
            findings[a.id].guarded(check)
        seconds[a.id] += time.monotonic() - started
        if world_problem:
            findings[a.id].problems.append(world_problem)
    return [_row(a, findings[a.id], seconds[a.id]) for a in attacks]


def _row(a: Attack, f: Findings, seconds: float) -> Row:
    return Row(
        a.id,
        a.family,
        a.title,
        not f.problems,
        "; ".join(f.budget),
        f.problems,
        round(seconds, 1),
        a.tests,
    )


def selected(only: str | None) -> list[Attack]:
    if not only:
        return list(ATTACKS)
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    chosen = [a for a in ATTACKS if any(fnmatch.fnmatch(a.id, p) for p in patterns)]
    if not chosen:
        raise SystemExit(f"no attack matches {only!r}: {', '.join(a.id for a in ATTACKS)}")
    return chosen


def run_all(lab: Lab, attacks: list[Attack]) -> list[Row]:
    rows: list[Row] = []
    for name in WORLDS:
        mine = [a for a in attacks if a.world == name]
        if mine:
            print(f"{name}:", flush=True)
            rows += run_world(lab, name, mine)
    order = {a.id: i for i, a in enumerate(ATTACKS)}
    return sorted(rows, key=lambda r: (FAMILIES.index(r.family), order[r.id]))


def print_table(rows: list[Row]) -> None:
    width = max(len(r.id) for r in rows)
    print(f"\n{'family':<38} {'attack':<{width}}  result  budget")
    print("-" * (58 + width))
    for r in rows:
        print(f"{r.family:<38} {r.id:<{width}}  {'held' if r.held else 'FAILED':<6}  {r.budget}")
        for problem in r.problems:
            print(f"{'':<38} {'':<{width}}          ! {problem}")


def machine(envoy: str | None) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    binary = envoy or processes.envoy_binary()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return {
        "git_head": git("rev-parse", "HEAD"),
        "uncommitted": git("status", "--porcelain", "extproc", "tests", "scripts").splitlines(),
        "nproc": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "envoy": version.stdout.split("version:")[-1].strip(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter load phases (CI)")
    parser.add_argument("--only", metavar="IDS", help="comma-separated attack ids (globs)")
    parser.add_argument(
        "--weaken",
        action="append",
        default=[],
        choices=sorted(WEAKENINGS),
        help="switch this defence off (its attack must then FAIL)",
    )
    parser.add_argument(
        "--envoy",
        metavar="BINARY",
        help="run every Envoy (the reporter, the server's sidecars) with this build, "
        "e.g. .mesh-lane/venv/bin/envoy, the oldest of the supported range "
        "(default: the venv's envoy)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows and the machine here")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the servers' logs, WALs and stores here (default: "
        "a temporary directory, removed at the end)",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the attacks and their tests (Markdown)"
    )
    args = parser.parse_args(argv)
    if args.list:
        print("| family | attack.py row | attack | tests |\n|---|---|---|---|")
        for a in sorted(ATTACKS, key=lambda a: FAMILIES.index(a.family)):
            print(f"| {a.family} | `{a.id}` | {a.title} | {a.tests} |")
        return 0
    # The servers and commands this script starts run this tree's code too.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.getenv("PYTHONPATH")]))
    facts = machine(args.envoy)
    started = time.monotonic()
    with contextlib.ExitStack() as cleanup:
        if args.workdir is None:
            work = Path(
                cleanup.enter_context(tempfile.TemporaryDirectory(prefix="extproc-attack-"))
            )
        else:
            work = args.workdir.resolve()
            work.mkdir(parents=True, exist_ok=False)
        make = cleanup.enter_context(stack_factory(work))
        if args.envoy:  # every stack's Envoy, in every world
            make = partial(make, envoy_bin=args.envoy)
        lab = Lab(work, args.quick, set(args.weaken), make, TestCA(work / "pki"), args.envoy)
        rows = run_all(lab, selected(args.only))
    elapsed = time.monotonic() - started
    print_table(rows)
    held = sum(r.held for r in rows)
    print(
        f"\n{held} of {len(rows)} attacks held in {elapsed:.0f} s "
        f"({'--quick' if args.quick else 'full run'}, {facts['nproc']} cores)"
    )
    if args.json:
        report = {"command": [sys.executable, *sys.argv], "quick": args.quick,
                  "weakened": sorted(args.weaken), "seconds": round(elapsed, 1),
                  "machine": facts, "rows": [asdict(r) for r in rows]}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if held == len(rows) else 1


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
