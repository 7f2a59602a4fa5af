"""The load generators of scripts/bench.py and scripts/bench_hostile.py: wrk
(saturation) and hey (a fixed rate), from Debian, installed if missing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

FIXED_RATE = 1000  # req/s of the latency runs (hey)


def ensure_tools(tools: tuple[str, ...] = ("wrk", "hey")) -> None:
    """Install the load generators missing, from Debian's packages."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not missing:
        return
    print(f"installing {', '.join(missing)} from Debian's packages...", flush=True)
    apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "apt-get"]
    subprocess.run([*apt, "update", "-qq"], check=True)
    subprocess.run([*apt, "install", "-y", "-qq", *missing], check=True)


@dataclass
class Load:
    requests: int = 0
    ok: int = 0  # 2xx
    rps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(port: int, seconds: float, connections: int = 16) -> Load:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds:.0f}s",
            "--latency",
            f"http://127.0.0.1:{port}/bench",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    load = Load()
    if m := re.search(r"(\d+) requests in", out):
        load.requests = int(m.group(1))
    non_2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = sum(int(g) for g in errors.groups()) if errors else 0
    load.ok = max(0, load.requests - non_2xx - failed)
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        load.rps = float(m.group(1))
    for pct, attr in (("50", "p50_ms"), ("99", "p99_ms")):
        if m := re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)\b", out):
            setattr(load, attr, _ms(m.group(1), m.group(2)))
    return load


def run_hey(port: int, seconds: float, rate: int = FIXED_RATE, workers: int = 10) -> Load:
    out = subprocess.run(
        [
            "hey",
            "-z",
            f"{seconds:.0f}s",
            "-c",
            str(workers),
            "-q",
            str(rate // workers),
            f"http://127.0.0.1:{port}/bench",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    load = Load()
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    errors = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s+Get", out, re.M))
    load.requests = sum(codes.values()) + errors
    load.ok = sum(n for c, n in codes.items() if 200 <= c < 300)
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        load.rps = float(m.group(1))
    for pct, attr in (("50", "p50_ms"), ("99", "p99_ms")):
        if m := re.search(rf"{pct}% in ([\d.]+) secs", out):
            setattr(load, attr, float(m.group(1)) * 1000)
    return load
