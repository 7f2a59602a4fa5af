"""The syncer thread: batches become durable through it, and what a failed or
slow fdatasync, a segment switch and the end of the log do.

Every test runs the real thread against a real WAL directory. Which segment
the thread will fdatasync is read from /proc/self/fd (it holds a duplicate).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from extproc.core import entry
from extproc.core.merkle import leaf_hash
from extproc.errors import DurabilityError
from extproc.log.appender import AuditLog, SyncerFactory
from extproc.log.syncer import THREAD_NAME, Syncer
from extproc.log.wal import WAL
from tests.helpers import run


def open_log(directory: Path, syncer: SyncerFactory = Syncer, **wal_options: Any) -> AuditLog:
    wal = WAL(directory, **wal_options)
    return AuditLog(wal, wal.recover(), syncer=syncer)


def request(i: int) -> dict[str, Any]:
    return {"kind": "request", "req": {"method": "GET", "path": f"/r/{i}"}}


def the_syncer(log: AuditLog) -> Syncer:
    syncer = log._syncer
    assert isinstance(syncer, Syncer)
    return syncer


def synced_segment(syncer: Syncer) -> str:
    """The name of the WAL segment the thread holds open."""
    assert syncer.synced_fd >= 0, "the thread holds no segment"
    return Path(f"/proc/self/fd/{syncer.synced_fd}").readlink().name


def syncer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def open_fds() -> set[str]:
    return {p.name for p in Path("/proc/self/fd").iterdir()}


def recovered_lines(directory: Path) -> list[bytes]:
    wal = WAL(directory)
    try:
        return wal.recover().lines
    finally:
        wal.close()


def assert_chain(lines: list[bytes]) -> None:
    prev = ""
    for seq, line in enumerate(lines):
        fields = entry.parse(line)
        assert (fields["seq"], fields["prev"]) == (seq, prev)
        prev = leaf_hash(line).hex()


def paths(lines: list[bytes]) -> list[str]:
    return [entry.parse(line)["req"]["path"] for line in lines]


def segment_names(directory: Path) -> set[str]:
    return {p.name for p in directory.glob("segment-*")}


# --- durable through the thread ---------------------------------------------------------


def test_batches_become_durable_through_the_thread(tmp_path: Path) -> None:
    async def scenario() -> None:
        with contextlib.closing(open_log(tmp_path)) as log:
            syncer = the_syncer(log)
            assert syncer._thread is None  # started by the first sync, not before
            seqs = await asyncio.gather(*(log.append(request(i)) for i in range(100)))
            assert list(seqs) == list(range(100))
            assert syncer._thread is not None and syncer._thread.is_alive()
            assert {synced_segment(syncer)} == segment_names(tmp_path)

    run(scenario)
    lines = recovered_lines(tmp_path)
    assert len(lines) == 100
    assert_chain(lines)


def test_thread_reports_a_failed_fdatasync(tmp_path: Path) -> None:
    # fdatasync of a pipe fails (EINVAL): the error comes back, the thread stays.
    async def scenario() -> None:
        results: list[str | None] = []
        reported = asyncio.Event()

        def on_done(error: str | None) -> None:
            results.append(error)
            reported.set()

        syncer = Syncer(str(tmp_path), on_done)
        read_end, write_end = os.pipe()
        try:
            with (tmp_path / "segment").open("wb") as f:
                f.write(b"x\n")
                for fd, generation in ((read_end, 1), (f.fileno(), 2), (f.fileno(), 2)):
                    reported.clear()
                    syncer.sync(fd, generation)
                    assert syncer.in_flight
                    await reported.wait()
                    assert not syncer.in_flight
            assert results == ["fdatasync failed: Invalid argument", None, None]
            assert syncer._thread is not None and syncer._thread.is_alive()
        finally:
            syncer.close()
            os.close(read_end)
            os.close(write_end)

    run(scenario)


def test_syncer_that_cannot_start_fails_the_batch_not_the_log(tmp_path: Path) -> None:
    # As a process out of file descriptors would: the batch is denied, and the
    # log is not left waiting for an answer that never comes.
    async def scenario() -> None:
        later = tmp_path / "later"  # the syncer opens its directory when it starts

        def syncer(_directory: str, on_done: Callable[[str | None], None]) -> Syncer:
            return Syncer(str(later), on_done)

        with contextlib.closing(open_log(tmp_path / "wal", syncer)) as log:
            with pytest.raises(DurabilityError, match="syncer unavailable"):
                await log.append(request(0))
            assert (log.size, log.durable_size, log.refusal) == (0, 0, None)
            later.mkdir()  # the next batch starts the thread
            assert await log.append(request(1)) == 0

    run(scenario)
    assert paths(recovered_lines(tmp_path / "wal")) == ["/r/1"]


def test_a_slow_fdatasync_never_stalls_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The design's point: the disk wait is the thread's, the loop keeps serving.
    # While one commit's fdatasync takes 0.5 s, a timer on the loop keeps
    # ticking and the entries behind it wait, unacknowledged, for the next commit.
    real_fdatasync = os.fdatasync
    slow = threading.Event()

    def fdatasync(fd: int) -> None:
        if slow.is_set():
            time.sleep(0.5)  # releases the GIL, as the real call does in the kernel
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)  # the module calls os.fdatasync

    async def scenario() -> None:
        with contextlib.closing(open_log(tmp_path)) as log:
            assert await log.append(request(0)) == 0
            slow.set()
            first = asyncio.create_task(log.append(request(1)))
            await asyncio.sleep(0)
            behind = asyncio.create_task(log.append(request(2)))
            ticks = 0
            started = time.monotonic()
            while not first.done():
                await asyncio.sleep(0.01)
                ticks += 1
                assert log.durable_size <= 1 or first.done()
            slow.clear()
            assert time.monotonic() - started >= 0.45
            assert ticks >= 20, f"the loop ticked only {ticks} times in a 0.5 s fdatasync"
            assert not behind.done() or log.durable_size == 3
            assert (await first, await behind) == (1, 2)

    run(scenario)
    assert paths(recovered_lines(tmp_path)) == ["/r/0", "/r/1", "/r/2"]


# --- segment switch ------------------------------------------------------------------------


def test_segment_switch_hands_the_new_segment_to_the_thread(tmp_path: Path) -> None:
    # A thread still syncing the old segment would acknowledge entries whose
    # segment was never synced.
    async def scenario() -> None:
        with contextlib.closing(open_log(tmp_path, segment_bytes=600)) as log:
            syncer = the_syncer(log)
            for i in range(30):
                await log.append(request(i))
                assert synced_segment(syncer) == max(segment_names(tmp_path)), f"after entry {i}"
            assert len(segment_names(tmp_path)) > 5

    run(scenario)
    lines = recovered_lines(tmp_path)
    assert len(lines) == 30
    assert_chain(lines)


def test_segment_fd_is_the_threads_own(tmp_path: Path) -> None:
    # The thread syncs a duplicate: the WAL closing or rotating its own fd
    # between commits cannot make the thread fdatasync a reused descriptor.
    async def scenario() -> None:
        with contextlib.closing(open_log(tmp_path)) as log:
            await log.append(request(0))
            syncer = the_syncer(log)
            assert syncer.synced_fd != log._wal.fileno()
            assert os.path.samestat(os.fstat(syncer.synced_fd), os.fstat(log._wal.fileno()))

    run(scenario)


# --- nothing left behind --------------------------------------------------------------------


def test_no_thread_or_fd_left_after_close(tmp_path: Path) -> None:
    before_threads = len(syncer_threads())
    wal_dir = tmp_path / "wal"

    async def scenario() -> None:
        log = open_log(wal_dir, segment_bytes=600)
        before = open_fds()
        for i in range(10):  # several segments, each fd duplicated once
            await log.append(request(i))
        assert len(syncer_threads()) == before_threads + 1
        log.close()
        assert the_syncer(log)._thread is None
        assert len(syncer_threads()) == before_threads
        left = open_fds() - before
        assert not left, f"fds left open: {left}"

    run(scenario)


def test_no_thread_started_for_a_log_that_never_synced(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = open_log(tmp_path)
        log.close()
        assert the_syncer(log)._thread is None

    before = len(syncer_threads())
    run(scenario)
    assert len(syncer_threads()) == before


def test_a_thread_that_ended_is_replaced_by_the_next_sync(tmp_path: Path) -> None:
    # Not a path the thread takes (it answers every OSError), but if it ever
    # ended, the batch in flight is denied and the next one starts a new thread.
    async def scenario() -> None:
        with contextlib.closing(open_log(tmp_path)) as log:
            assert await log.append(request(0)) == 0
            syncer = the_syncer(log)
            old = syncer._thread
            assert old is not None
            syncer._requests.put(-1)  # _STOP, as if the thread had ended by itself
            old.join(5)
            await asyncio.sleep(0.05)  # the loop reads the pipe's end
            assert syncer._thread is None
            assert await log.append(request(1)) == 1
            assert syncer._thread is not None and syncer._thread is not old

    run(scenario)
    assert paths(recovered_lines(tmp_path)) == ["/r/0", "/r/1"]


def test_a_thread_that_cannot_start_fails_the_batch_and_leaks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process at its thread limit: the batch is denied with a reason, no fd
    # is left open, and the next batch starts the thread once it can.
    real_start = threading.Thread.start
    refuse = True

    def start(self: threading.Thread) -> None:
        if refuse and self.name == THREAD_NAME:
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)

    async def scenario() -> None:
        nonlocal refuse
        with contextlib.closing(open_log(tmp_path)) as log:
            before = open_fds()
            with pytest.raises(DurabilityError, match=r"syncer unavailable.*cannot start a thread"):
                await log.append(request(0))
            assert open_fds() == before
            assert (log.size, log.durable_size, log.refusal) == (0, 0, None)
            refuse = False
            assert await log.append(request(1)) == 0

    run(scenario)
    assert paths(recovered_lines(tmp_path)) == ["/r/1"]
