#!/usr/bin/env python3
"""Where the audit server's time goes, from py-spy's collapsed stacks.

Reads the files `scripts/bench.py --profile DIR` writes (py-spy record --idle
--native --threads --format raw: one line per distinct stack, its sample
count last) and prints, per thread, how its samples split between waiting
and running, and for the event loop's thread a table of where the running
time went, by what the stack was doing (the deepest frame of ours decides;
grpc's own Cython/C frames and the syscalls they make are named apart).

    python scripts/profile_report.py prof/r0-H-saturation-wrk.txt
    python scripts/profile_report.py prof/r0-H-fixed-hey.txt --requests 5000 --rate 200

With --requests (requests served while recording) and --rate (py-spy's
samples per second, 200 as bench.py records), each row also shows its
microseconds of wall-clock time per request.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

# One record: process header, thread, frames, count. A command line may span
# lines (the fdatasync helper's `python -c` script before issue 20), hence DOTALL.
_RECORD = re.compile(r'process (\d+):"[^"]*";thread \(\d+\): ([^;\n]*)(.*?) (\d+)\n', re.S)

# Frames near the leaf that mean a thread is waiting, not running (grpc's
# poller waits in a bare futex `syscall`).
_WAITING = (
    "epoll_wait",
    "futex",
    "acquire_lock",
    "pthread_cond",
    "nanosleep",
    "select_poll",
    "syscall (libc",
)

# The event loop thread: (category, what a frame contains), deepest frame
# first; the first category whose pattern a frame of ours matches decides.
_OURS = (
    (
        "capture: headers, redaction (server/capture, builder, core/redact)",
        ("capture.py", "builder.py", "redact.py"),
    ),
    ("access log: messages to entries (server/access)", ("access.py",)),
    (
        "sequencing: seq, prev, encode, leaf hash (log/appender, core/entry)",
        ("appender.py", "entry.py", "merkle.py"),
    ),
    ("WAL: page-cache write (log/wal)", ("wal.py",)),
    ("WAL syncer: hand-off and answer (log/syncer)", ("syncer.py",)),
    ("publication (log/publisher, store)", ("publisher.py", "/store/", "checkpoint.py")),
    ("metrics (prometheus_client)", ("prometheus_client", "metrics.py")),
    (
        "servicer: stream bookkeeping (server/servicer, identify)",
        ("servicer.py", "identify.py", "ratelog.py"),
    ),
)
_GRPC_SYSCALLS = (
    ("grpc: sendmsg (replies to Envoy; loopback TCP does the receiver's work too)", "sendmsg"),
    ("grpc: eventfd/write (waking its poller thread)", "eventfd_write"),
    ("grpc: recvmsg (reading Envoy's frames)", "recvmsg"),
)


def records(text: str) -> list[tuple[str, list[str], int]]:
    """("<thread name> (<pid>)", frames root first, samples) of each stack."""
    out = []
    for pid, thread, stack, count in _RECORD.findall(text):
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if f]
        out.append((f"{thread.strip()} ({pid})", frames, int(count)))
    return out


def on_loop(thread: str, frames: list[str]) -> bool:
    """A stack of an event loop's thread (the server's, each worker's; not the
    WAL syncer's or the publisher's)."""
    return thread.startswith("MainThread") and any("BaseEventLoop" in f for f in frames)


def waiting(frames: list[str]) -> bool:
    near_leaf = " ".join(frames[-3:])
    return any(w in near_leaf for w in _WAITING)


def loop_category(frames: list[str]) -> str:
    """What the event loop's thread was doing in one stack."""
    if any("gc_collect" in f for f in frames):
        return "garbage collection"
    for index in range(len(frames) - 1, -1, -1):
        frame = frames[index]
        if "extproc/" in frame or "prometheus_client" in frame:
            if "servicer.py" in frame and any("cygrpc" in f for f in frames[index + 1 :]):
                return "grpc.aio: reads and the stream's end, called by the servicer"
            for name, patterns in _OURS:
                if any(p in frame for p in patterns):
                    return name
    near_leaf = " ".join(frames[-4:])
    if "EpollSelector.select" in near_leaf or "epoll_wait" in near_leaf:
        return "idle: the loop waits in epoll_wait"
    if "take_gil" in near_leaf or "pthread_cond" in near_leaf:
        return "waits for the GIL (another thread holds it)"
    if any("cygrpc" in f for f in frames):
        for name, syscall in _GRPC_SYSCALLS:
            if any(f.startswith(syscall) for f in frames):
                return name
        return "grpc.aio: Cython and core, other"
    return "asyncio: the loop itself"


def report(path: Path, requests: int | None, rate: float) -> None:
    stacks = records(path.read_text(errors="replace"))
    threads: Counter[str] = Counter()
    busy: Counter[str] = Counter()
    loop: Counter[str] = Counter()
    for thread, frames, count in stacks:
        threads[thread] += count
        if not waiting(frames):
            busy[thread] += count
        if on_loop(thread, frames):
            loop[loop_category(frames)] += count
    print(f"{path}: {sum(threads.values())} samples")
    print(f"  {'thread':<32}{'samples':>9}{'running':>9}")
    for thread, n in threads.most_common():
        print(f"  {thread:<32}{n:>9}{busy[thread] / n:>9.0%}")
    total = sum(loop.values())
    if not total:
        return
    per_request = requests is not None and requests > 0
    print(f"\n  the event loop's thread (MainThread, each process that has one), {total} samples:")
    print(f"  {'':<78}{'share':>7}" + (f"{'us/req':>8}" if per_request else ""))
    for name, n in loop.most_common():
        line = f"  {name:<78}{n / total:>7.1%}"
        if per_request:
            assert requests is not None
            line += f"{n / rate / requests * 1e6:>8.0f}"
        print(line)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("profiles", nargs="+", type=Path, help="py-spy raw output files")
    parser.add_argument("--requests", type=int, default=None, help="requests served meanwhile")
    parser.add_argument("--rate", type=float, default=200.0, help="py-spy samples per second")
    args = parser.parse_args()
    for path in args.profiles:
        report(path, args.requests, args.rate)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
