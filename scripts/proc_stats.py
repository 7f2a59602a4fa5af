"""CPU and memory of processes and of the whole machine, from /proc: what the
benchmarks (scripts/bench.py, scripts/bench_hostile.py) measure."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes and their reaped children."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += sum(int(v) for v in fields[11:15]) / tick  # utime stime cutime cstime
    return total


def descendants(pid: int) -> list[int]:
    """Child processes, recursively (workers)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    found = [int(p) for p in text.split()]
    return found + [d for child in found for d in descendants(child)]


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        if m := re.search(r"VmRSS:\s+(\d+) kB", status):
            total += int(m.group(1))
    return total / 1024


def machine_cpu() -> tuple[float, float]:
    """(user+nice+system, steal) seconds of the whole machine since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, steal = (int(fields[i]) for i in (0, 1, 2, 7))
    return (user + nice + system) / tick, steal / tick


class Background:
    """CPU the machine spent outside this benchmark's processes (other tenants,
    other test runs) while a case ran: the noise figure of that case."""

    def __init__(self, extra_pids: list[int]) -> None:
        self.extra_pids = extra_pids  # long-lived helpers of ours (moto)

    def __enter__(self) -> Background:
        self._start = self._sample()
        return self

    def _sample(self) -> tuple[float, float, float, float]:
        busy, steal = machine_cpu()
        t = os.times()  # this process and its reaped children (Envoy, servers, wrk, hey)
        ours = t.user + t.system + t.children_user + t.children_system
        return busy, steal, ours + cpu_seconds(self.extra_pids), time.monotonic()

    def __exit__(self, *exc: object) -> None:
        busy, steal, ours, now = self._sample()
        self.other_s = max(0.0, (busy - self._start[0]) - (ours - self._start[2]))
        self.steal_s = steal - self._start[1]
        self.wall_s = now - self._start[3]
