"""The fault scenarios that tests/integration/test_faults.py and
scripts/fault_table.py share, one function each, returning what it measured:
a store fault under load (run_fault), SIGTERM and kill -9 during an outage
(run_sigterm, run_kill9), a full disk under the WAL (run_full_disk), on a
stack whose server reaches S3 only through tests/faultproxy.py's FaultProxy.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from extproc import processes
from tests.conftest import AuditStack, S3Server
from tests.faultproxy import (
    FaultyS3Stack,
    Load,
    refusals_after,
    verdict_line,
)
from tests.helpers import read_lines

# --- the scenarios: one function each, measured ----------------------------------------


@dataclass(frozen=True)
class Fault:
    """A fault row: `fault` on `fraction` of object PUTs for `seconds`, then healed."""

    name: str
    fault: str
    fraction: float = 1.0
    extra_args: tuple[str, ...] = ()


FAULT_ROWS = {
    "slowdown": Fault("503 SlowDown on 50% of PUTs", "slowdown", 0.5),
    "error": Fault("500 on every PUT", "error"),
    "delay": Fault("2-5 s delay on every PUT", "delay"),
    "reset": Fault("connection closed mid-response, 30%", "reset", 0.3),
    "blackhole": Fault("200 returned, object never stored, 30% of PUTs", "blackhole", 0.3),
    "backlog": Fault(
        "backlog bound 200 KB + 500 outage", "error", extra_args=("--max-backlog-bytes", "200000")
    ),
}


@dataclass
class Measured:
    """What one scenario measured (None where it does not apply or never happened)."""

    acknowledged: int = 0
    sent: int = 0
    statuses: dict[int | None, int] = field(default_factory=dict)  # None: no HTTP answer
    # Envoy's ext_proc failures (message_timeouts, streams_failed, ...): a 504
    # is a reply the server did not send within the filter's message timeout.
    envoy_ext_proc: dict[str, int] = field(default_factory=dict)
    lost: set[str] = field(default_factory=set)
    refused_during: int = 0
    refused_after_heal: int = 0
    last_refusal_after_heal: float | None = None
    first_success_after_heal: float | None = None
    catch_up: float | None = None  # seconds from heal to a checkpoint over everything durable
    max_retry_wait: float | None = None
    faulted: dict[str, int] = field(default_factory=dict)
    repaired: int = 0
    alive_after: bool = False
    exit_status: int | None = None  # the clean stop (SIGTERM) at the end
    exit_seconds: float | None = None
    # SIGTERM during the outage (run_sigterm): status, seconds to exit, the reason logged.
    drain_status: int | None = None
    drain_seconds: float | None = None
    drain_reason: str = ""
    verify_status: int | None = None
    verify_verdict: str = ""
    verify_output: str = ""
    gaps: list[str] = field(default_factory=list)
    writer_events: list[str] = field(default_factory=list)  # published `writer` entries, in order
    notes: list[str] = field(default_factory=list)


_EXT_PROC_ROUTINE = {
    "streams_started",
    "stream_msgs_sent",
    "stream_msgs_received",
    "streams_closed",
    "server_half_closed",
    "immediate_responses_sent",
}


def _finish(run: FaultyS3Stack, load: Load, result: Measured) -> None:
    """Everything acknowledged in the bucket, a clean stop, the independent verifier."""
    outcomes = load.snapshot()
    acknowledged = {o.rid for o in outcomes if o.acknowledged}
    result.sent = len(outcomes)
    for o in outcomes:
        result.statuses[o.status] = result.statuses.get(o.status, 0) + 1
    result.acknowledged = len(acknowledged)
    # Before the clean stop: caught up means in the bucket, without the final publication.
    result.lost = acknowledged - run.published_request_ids()
    result.faulted = dict(run.proxy.counts.faulted)
    if run.stack.envoy is not None:
        for name, value in processes.envoy_stats(run.stack.admin_port, "http.").items():
            short = name.rpartition("ext_proc.")[2]
            if "ext_proc." in name and value and short not in _EXT_PROC_ROUTINE:
                result.envoy_ext_proc[short] = result.envoy_ext_proc.get(short, 0) + value
    result.repaired = int(run.metrics().get("extproc_audit_objects_repaired_total", 0))
    waits = run.retry_waits()
    result.max_retry_wait = max(waits) if waits else None
    result.exit_status, result.exit_seconds = run.stop_server()
    entries = run.published_entries()
    result.writer_events = [str(e.get("event")) for e in entries if e.get("kind") == "writer"]
    verify = run.verify()
    result.verify_status = verify.returncode
    result.verify_verdict = verdict_line(verify)
    result.verify_output = verify.stdout + verify.stderr
    result.gaps = [line.strip() for line in verify.stdout.splitlines() if "gap:" in line]


def run_fault(
    make: Callable[..., AuditStack],
    s3: S3Server,
    row: Fault,
    *,
    seconds: float,
    rate: float = 60.0,
    warmup: float = 1.0,
    after: float = 3.0,
) -> Measured:
    """Load through Envoy; `row`'s fault for `seconds`; heal; keep the load for
    `after` seconds; wait until everything is published; check it all."""
    result = Measured()
    with FaultyS3Stack(make, s3, extra_args=row.extra_args) as run:
        run.start()
        with run.load(rate) as load:
            time.sleep(warmup)
            cut = time.monotonic()
            run.proxy.set(row.fault, row.fraction)
            time.sleep(seconds)
            run.proxy.set("none")
            healed = time.monotonic()
            durable_at_heal = run.sizes()[0]
            result.catch_up = run.wait_published(durable_at_heal)
            time.sleep(max(0.0, after - (time.monotonic() - healed)))
        outcomes = load.snapshot()
        result.refused_during = sum(
            1 for o in outcomes if cut <= o.start < healed and o.status == 503
        )
        (
            result.refused_after_heal,
            result.last_refusal_after_heal,
            result.first_success_after_heal,
        ) = refusals_after(outcomes, healed)
        result.alive_after = run.alive()
        if run.wait_caught_up() is None:
            result.notes.append("not caught up 60 s after the load stopped")
        _finish(run, load, result)
    return result


def run_sigterm(
    make: Callable[..., AuditStack],
    s3: S3Server,
    *,
    seconds: float,
    drain_timeout: float = 6.0,
    rate: float = 60.0,
) -> Measured:
    """SIGTERM while every PUT fails: how long the drain takes, its exit status
    and reason; then a restart on the same WAL after the store heals."""
    result = Measured()
    with FaultyS3Stack(make, s3, extra_args=("--drain-timeout", str(drain_timeout))) as run:
        run.start()
        with run.load(rate) as load:
            time.sleep(1.0)
            run.proxy.set("error")
            time.sleep(seconds)
        log_before = len(run.server_log())
        result.drain_status, result.drain_seconds = run.stop_server()
        shutdown_log = run.server_log()[log_before:]
        reason = re.search(r"final publication incomplete \((.*)\): \d+ entries stay", shutdown_log)
        result.drain_reason = reason.group(1) if reason else ""
        result.faulted = dict(run.proxy.counts.faulted)
        run.proxy.set("none")
        run.start_server()  # same WAL: what the drain could not publish goes now
        result.catch_up = run.wait_caught_up()  # here: from the restart
        if result.catch_up is None:
            result.notes.append("restart did not publish within 60 s")
        result.alive_after = run.alive()
        _finish(run, load, result)
    return result


def run_kill9(
    make: Callable[..., AuditStack], s3: S3Server, *, seconds: float, rate: float = 60.0
) -> Measured:
    """kill -9 during a 500 outage, under load; the store heals; restart, same WAL."""
    result = Measured()
    with FaultyS3Stack(make, s3) as run:
        run.start()
        with run.load(rate) as load:
            time.sleep(1.0)
            run.proxy.set("error")
            time.sleep(seconds)
            run.stop_server(signal.SIGKILL)
            time.sleep(1.0)  # refused (no ext_proc server) while it is down
        run.proxy.set("none")
        run.start_server()
        with run.load(rate) as load2:
            time.sleep(2.0)
        load.outcomes.extend(load2.snapshot())
        result.catch_up = run.wait_caught_up()  # here: from the end of the load after restart
        if result.catch_up is None:
            result.notes.append("restart did not publish within 60 s")
        result.alive_after = run.alive()
        _finish(run, load, result)
    return result


# --- a full disk under the WAL ------------------------------------------------------


class VolumeUnavailable(Exception):
    """A small file system could not be mounted here (not root, no loop devices)."""


VOLUME_KINDS = ("tmpfs", "ext4")
VOLUME_BYTES = 3 << 20


@contextmanager
def small_volume(path: Path, kind: str, size_kib: int = VOLUME_BYTES >> 10) -> Iterator[Path]:
    """A file system of `size_kib` mounted at `path` for the duration: tmpfs, or
    ext4 on a loop device (block allocation, delayed allocation, fdatasync on a
    real file system driver). Unmounted on exit, lazily if still busy."""
    path.mkdir(parents=True, exist_ok=True)
    if kind == "tmpfs":
        command = ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", str(path)]
    elif kind == "ext4":
        image = path.with_name(path.name + ".img")
        with image.open("wb") as f:
            f.truncate(size_kib * 1024)
        mkfs = subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", str(image)],
            capture_output=True,
            text=True,
            check=False,
        )
        if mkfs.returncode:
            raise VolumeUnavailable(f"mkfs.ext4 failed: {mkfs.stderr.strip()}")
        command = ["mount", "-o", "loop", str(image), str(path)]
    else:
        raise ValueError(f"unknown volume kind {kind!r}")
    try:
        mount = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as e:
        raise VolumeUnavailable(f"{command[0]}: {e}") from e
    if mount.returncode:
        raise VolumeUnavailable(f"{' '.join(command)}: {mount.stderr.strip()}")
    try:
        yield path
    finally:
        umount = subprocess.run(["umount", str(path)], capture_output=True, check=False)
        if umount.returncode:  # a helper process still closing its files
            time.sleep(1.0)
            if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@dataclass
class DiskMeasured(Measured):
    volume: str = ""
    seconds_to_full: float | None = None
    denied_while_full: int = 0
    full_seconds: float = 0.0
    used_full: int = 0
    used_after: int = 0
    error_lines_while_full: int = 0
    denial_lines_while_full: int = 0
    recovered_after: float | None = None  # seconds from heal to the first 2xx
    # Once recovered, load goes on until more entries than the free space
    # were written: `later` requests, `ok_after_recovery` of them acknowledged.
    ok_after_recovery: int = 0
    later: int = 0
    later_bytes: int = 0  # bytes of the entries logged in that time
    wal_files: dict[str, int] = field(default_factory=dict)  # name: bytes, after catching up


_ERROR_LINE = re.compile(r"^\S+ \S+ ERROR ", re.MULTILINE)


def run_full_disk(
    make: Callable[..., AuditStack],
    s3: S3Server,
    *,
    kind: str,
    base: Path,
    rate: float = 150.0,
    full_for: float = 4.0,
    recover_within: float = 45.0,
) -> DiskMeasured:
    """The WAL on a 3 MiB volume, S3 cut (500 on every PUT) so nothing is
    published; load through Envoy until the disk is full and for `full_for`
    seconds more; then S3 heals and the same server must recover, no restart.

    The volume is mounted under `base`. Raises VolumeUnavailable when it
    cannot be mounted."""
    result = DiskMeasured(volume=kind)
    # Unmounted after `run` has killed the processes that hold it open.
    with (
        small_volume(base / f"wal-{kind}", kind) as volume,
        FaultyS3Stack(make, s3, extra_args=("--wal-dir", str(volume))) as run,
    ):
        run.start()
        warm = run.load(20.0, 2).start()
        time.sleep(1.0)
        warm.stop()
        run.wait_caught_up()
        run.proxy.set("error")
        cut = time.monotonic()
        with run.load(rate, 6) as load:
            full_at = None
            while time.monotonic() - cut < 90:
                if any(o.status == 503 and o.start >= cut for o in load.snapshot()):
                    full_at = time.monotonic()
                    break
                time.sleep(0.1)
            if full_at is None:
                raise AssertionError(f"the {kind} volume never filled: {load.snapshot()[-1:]}")
            result.seconds_to_full = full_at - cut
            log_at_full = len(run.server_log())
            time.sleep(full_for)
            result.full_seconds = time.monotonic() - full_at
            result.used_full = used_bytes(volume)
            full_log = run.server_log()[log_at_full:]
            result.error_lines_while_full = len(_ERROR_LINE.findall(full_log))
            result.denial_lines_while_full = len(
                re.findall(r"WAL commit failed|denying request", full_log)
            )
            result.denied_while_full = sum(
                1 for o in load.snapshot() if o.start >= full_at and o.status == 503
            )
            result.alive_after = run.alive()
            run.proxy.set("none")
            healed = time.monotonic()
            while time.monotonic() - healed < recover_within:
                if any(o.acknowledged and o.start >= healed for o in load.snapshot()):
                    break
                time.sleep(0.1)
            time.sleep(2.0)  # the load goes on: recovered for good, or not
        outcomes = load.snapshot()
        (
            result.refused_after_heal,
            result.last_refusal_after_heal,
            result.first_success_after_heal,
        ) = refusals_after(outcomes, healed)
        result.recovered_after = result.first_success_after_heal
        result.catch_up = run.wait_caught_up(within=30.0)
        result.used_after = used_bytes(volume)
        result.wal_files = {p.name: p.stat().st_size for p in sorted(volume.glob("*/*"))}
        load.outcomes = [*outcomes, *warm.snapshot()]
        if result.recovered_after is not None:
            # Recovered for good: more entries than the free space left (were
            # published segments kept, the disk would fill again) go through
            # without a refusal. Entries are ~750 bytes (counted exactly below).
            first_later, target = run.sizes()[0], free_bytes(volume) * 1.2
            with run.load(rate, 6) as later:
                started = time.monotonic()
                while time.monotonic() - started < 60:
                    if (run.sizes()[0] - first_later) * 750 > target:
                        break
                    if any(o.status == 503 for o in later.snapshot()):
                        time.sleep(1.0)  # refused again: measured, no need to go on
                        break
                    time.sleep(0.25)
            # Refused again: the disk is full again and may stay so; wait less.
            refused_again = any(o.status == 503 for o in later.snapshot())
            run.wait_caught_up(within=5.0 if refused_again else 30.0)
            lines = read_lines(run.store(), run.stack.log_id)
            result.later_bytes = sum(len(line) + 1 for line in lines[first_later:])
            result.later = len(later.outcomes)
            result.ok_after_recovery = sum(1 for o in later.outcomes if o.acknowledged)
            load.outcomes += later.snapshot()
        result.alive_after = result.alive_after and run.alive()
        if result.ok_after_recovery < result.later or result.recovered_after is None:
            patience = 5.0  # not recovered for good: publication may be stuck
        else:
            patience = 30.0
        if run.wait_caught_up(within=patience) is None:
            result.notes.append(f"not caught up {patience:g} s after the load stopped")
        _finish(run, load, result)
    return result
