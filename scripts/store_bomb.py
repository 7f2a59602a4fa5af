"""A store holding gzip bombs (scripts/bench_hostile.py, section 4): verify and
search, as child processes, on a store with a bomb planted, at a claimed
range, and with a bundle replaced by a 1 GiB file; their peak RSS."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from extproc.audit.reader import list_logs
from extproc.core import layout
from extproc.store import open_store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the attack inputs
from tests.attacks import BOMB_EXPANDS_TO, gzip_bomb

BOMB_RSS_TARGET_MB = 300.0  # issue 16: verify on a store holding a gzip bomb


def child_peak(args: list[str]) -> dict[str, Any]:
    """Run `extproc-audit ARGS` as a child; its exit status, peak RSS and time."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "extproc", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "exit_status": proc.returncode,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "seconds": time.monotonic() - started,
    }


def store_bomb(store_url: str, vkey: str) -> dict[str, Any]:
    """verify and search on this run's store with a gzip bomb planted, then with
    one of the log's own bundles replaced by a 1 GiB file (`store_url` is a
    local directory; it is changed)."""
    store = open_store(store_url)
    logs, _ = list_logs(store)
    log_id = sorted(logs)[0]
    bundles = sorted(logs[log_id].bundles, key=lambda b: b[1].first)
    key, name = bundles[len(bundles) // 2]
    planted = layout.bundle_key(store.prefix, log_id, name.first, name.last + 1, gzip=True)
    bomb = gzip_bomb()
    store.put_once(planted, bomb, None)
    verify = ["verify", store_url, "--vkey", vkey]
    search = ["search", store_url, "--vkey", vkey, "--status", "5xx"]
    cases: list[dict[str, Any]] = [
        {"case": "unclaimed bomb", "command": "verify", **child_peak(verify)},
        {"case": "unclaimed bomb", "command": "search", **child_peak(search)},
    ]
    # The claim names a range, not its encoding: a .gz of the claimed range is read.
    store.put_once(
        layout.bundle_key(store.prefix, log_id, name.first, name.last, gzip=True), bomb, None
    )
    cases += [
        {"case": "bomb at a claimed range", "command": "verify", **child_peak(verify)},
        {"case": "bomb at a claimed range", "command": "search", **child_peak(search)},
    ]
    # A store without versions lets an attacker replace the log's own bundle:
    # 1 GiB, sparse on disk, at a key a claim names (refused by its size).
    path = Path(store_url) / key
    path.chmod(0o644)
    with path.open("r+b") as f:
        f.truncate(BOMB_EXPANDS_TO)
    cases += [
        {"case": "claimed 1 GiB bundle", "command": "verify", **child_peak(verify)},
        {"case": "claimed 1 GiB bundle", "command": "search", **child_peak(search)},
    ]
    return {"bomb_bytes": len(bomb), "expands_to": BOMB_EXPANDS_TO, "cases": cases}


def store_bomb_targets(result: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    peak = max(c["peak_rss_mb"] for c in result["cases"] if c["command"] == "verify")
    return {
        f"verify on a store holding a gzip bomb < {BOMB_RSS_TARGET_MB:.0f} MB RSS": (
            f"peak {peak:.0f} MB",
            peak < BOMB_RSS_TARGET_MB,
        )
    }


def print_store_bomb(result: dict[str, Any]) -> None:
    print(
        f"\n4. a store holding a gzip bomb ({result['bomb_bytes']:,} bytes expanding to "
        f"{result['expands_to']:,}): child processes"
    )
    head = f"{'case':<25}{'command':<9}{'exit':>5}{'peak RSS MB':>13}{'seconds':>9}"
    print(head)
    print("-" * len(head))
    for c in result["cases"]:
        print(
            f"{c['case']:<25}{c['command']:<9}{c['exit_status']:>5}{c['peak_rss_mb']:>13.0f}"
            f"{c['seconds']:>9.1f}"
        )
