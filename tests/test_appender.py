"""The appender: sequencing, durability before acknowledgement, group commit,
back-pressure, and what a failed disk write does to the chain.

Async scenarios run under asyncio.run() inside plain test functions. Slow or
failing disks are WAL subclasses (fakes of our own interface), gated by
threading events so every interleaving is deterministic.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from extproc.core import entry
from extproc.core.merkle import CompactRange, leaf_hash
from extproc.errors import BackpressureError, StorageError
from extproc.log.appender import AuditLog
from extproc.log.wal import WAL, TreeState

T = TypeVar("T")
FIXED_TIME = 1_700_000_000.25


class CountingWAL(WAL):
    """A real WAL that records each group commit and can hold one on 'disk'."""

    def __init__(self, directory: Path, **kwargs: Any) -> None:
        super().__init__(directory, **kwargs)
        self.batches: list[tuple[int, int]] = []  # (first seq, entries)
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()

    def write_batch(self, lines: list[bytes], first_seq: int) -> None:
        self.entered.set()
        assert self.hold.wait(10), "test never released the held batch"
        super().write_batch(lines, first_seq)
        self.batches.append((first_seq, len(lines)))


class FailingWAL(CountingWAL):
    """Fails chosen batches (by call number) the way the WAL reports it."""

    def __init__(self, directory: Path, fail_calls: set[int], error: type[Exception]) -> None:
        super().__init__(directory)
        self.fail_calls = fail_calls
        self.error = error
        self.calls = 0

    def write_batch(self, lines: list[bytes], first_seq: int) -> None:
        self.calls += 1
        if self.calls in self.fail_calls:
            self.entered.set()
            assert self.hold.wait(10)
            raise self.error("injected WAL write failure")
        super().write_batch(lines, first_seq)


def open_log(wal: WAL, **kwargs: Any) -> AuditLog:
    return AuditLog(wal, wal.recover(), wall_clock=lambda: FIXED_TIME, **kwargs)


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(scenario(), 20))


def request(i: int) -> dict[str, Any]:
    return {"kind": "request", "req": {"method": "GET", "path": f"/r/{i}"}}


def assert_chain(lines: list[bytes], start: int = 0, prev: str = "") -> None:
    for offset, line in enumerate(lines):
        fields = entry.parse(line)
        assert fields["seq"] == start + offset
        assert fields["prev"] == prev
        prev = leaf_hash(line).hex()


def state_of(leaves: list[bytes]) -> TreeState:
    tree = CompactRange()
    tree.extend(leaves)
    return TreeState(tree.size, tree.hashes, leaves[-1])


def recovered_lines(directory: Path) -> list[bytes]:
    wal = WAL(directory)
    try:
        return wal.recover().lines
    finally:
        wal.close()


# --- sequencing -------------------------------------------------------------------------


def test_appends_are_sequenced_and_hash_chained(tmp_path: Path) -> None:
    async def scenario() -> list[int]:
        log = open_log(WAL(tmp_path))
        seqs = await asyncio.gather(*(log.append(request(i)) for i in range(50)))
        log.close()
        return list(seqs)

    assert run(scenario) == list(range(50))
    lines = recovered_lines(tmp_path)
    assert len(lines) == 50
    assert_chain(lines)
    first = entry.parse(lines[0])
    assert first["v"] == entry.FORMAT_VERSION
    assert first["ts"] == "2023-11-14T22:13:20.250000Z"
    assert first["req"] == {"method": "GET", "path": "/r/0"}
    # The stored bytes are the deterministic encoding of what was appended.
    assert lines[0] == entry.encode(first)


def test_restarted_log_continues_sequence_and_chain(tmp_path: Path) -> None:
    async def session(count: int) -> None:
        log = open_log(WAL(tmp_path))
        for i in range(count):
            await log.append(request(i))
        log.close()

    run(lambda: session(7))
    run(lambda: session(5))
    lines = recovered_lines(tmp_path)
    assert len(lines) == 12
    assert_chain(lines)


# --- durable before acknowledged ------------------------------------------------------------


def test_append_returns_only_after_fsync(tmp_path: Path) -> None:
    wal = CountingWAL(tmp_path)
    wal.hold.clear()  # the disk is slow

    async def scenario() -> None:
        log = open_log(wal)
        task = asyncio.create_task(log.append(request(0)))
        await asyncio.get_running_loop().run_in_executor(None, wal.entered.wait, 5)
        await asyncio.sleep(0.05)
        assert not task.done(), "acknowledged before the WAL write returned"
        assert log.durable_size == 0
        wal.hold.set()
        seq = await task
        assert log.durable_size > seq
        assert wal.batches == [(0, 1)]
        log.close()

    run(scenario)
    assert len(recovered_lines(tmp_path)) == 1


def test_flush_waits_for_every_sequenced_entry(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = open_log(WAL(tmp_path))
        for i in range(10):
            log.append_nowait(request(i))
        assert log.size == 10
        await log.flush()
        assert log.durable_size == 10
        assert [d.line for d in log.unpublished] == recovered_lines_open(log)
        log.close()

    def recovered_lines_open(log: AuditLog) -> list[bytes]:
        return b"".join(p.read_bytes() for p in sorted(tmp_path.glob("segment-*"))).splitlines()

    run(scenario)


# --- group commit -------------------------------------------------------------------------


def test_concurrent_appends_are_group_committed(tmp_path: Path) -> None:
    wal = CountingWAL(tmp_path)
    wal.hold.clear()

    async def scenario() -> None:
        log = open_log(wal)
        first = asyncio.create_task(log.append(request(0)))
        await asyncio.get_running_loop().run_in_executor(None, wal.entered.wait, 5)
        # While entry 0 is on its way to disk, 99 more requests arrive.
        rest = [asyncio.create_task(log.append(request(i))) for i in range(1, 100)]
        await asyncio.sleep(0.01)
        wal.hold.set()
        assert await asyncio.gather(first, *rest) == list(range(100))
        log.close()

    run(scenario)
    assert wal.batches == [(0, 1), (1, 99)]
    assert_chain(recovered_lines(tmp_path))


def test_unheld_concurrent_appends_need_fewer_commits_than_entries(tmp_path: Path) -> None:
    wal = CountingWAL(tmp_path)

    async def scenario() -> None:
        log = open_log(wal)
        await asyncio.gather(*(log.append(request(i)) for i in range(200)))
        log.close()

    run(scenario)
    assert sum(n for _, n in wal.batches) == 200
    assert len(wal.batches) < 200


def test_cancelled_waiter_does_not_block_the_others(tmp_path: Path) -> None:
    wal = CountingWAL(tmp_path)
    wal.hold.clear()

    async def scenario() -> None:
        log = open_log(wal)
        tasks = [asyncio.create_task(log.append(request(i))) for i in range(5)]
        await asyncio.get_running_loop().run_in_executor(None, wal.entered.wait, 5)
        tasks[2].cancel()  # the client went away mid-commit
        await asyncio.sleep(0)
        wal.hold.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[2], asyncio.CancelledError)
        assert [r for i, r in enumerate(results) if i != 2] == [0, 1, 3, 4]
        assert log.durable_size == 5  # the entry is durable even if nobody waits for it
        log.close()

    run(scenario)


# --- back-pressure ------------------------------------------------------------------------


def test_backlog_over_bound_is_refused_until_published(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = open_log(WAL(tmp_path), max_backlog_bytes=2000)
        accepted = 0
        with pytest.raises(BackpressureError, match="backlog"):
            while True:
                await log.append(request(accepted))
                accepted += 1
        assert 0 < accepted < 30
        assert log.size == accepted  # the refused entry took no seq
        assert log.backlog_bytes > 2000
        # Publication frees the backlog: appends are taken again, chain intact.
        taken = log.take(accepted, 1 << 20)
        log.mark_published(state_of([d.leaf for d in taken]), len(taken))
        assert log.backlog_bytes == 0
        assert await log.append(request(99)) == accepted
        log.close()

    run(scenario)
    assert_chain(recovered_lines(tmp_path))


def test_backlog_bound_counts_entries_waiting_for_disk(tmp_path: Path) -> None:
    wal = CountingWAL(tmp_path)
    wal.hold.clear()

    async def scenario() -> None:
        log = open_log(wal, max_backlog_bytes=1000)
        log.append_nowait(request(0))
        await asyncio.get_running_loop().run_in_executor(None, wal.entered.wait, 5)
        with pytest.raises(BackpressureError):
            for i in range(1, 100):
                log.append_nowait(request(i))
        assert log.size < 20
        wal.hold.set()
        await log.flush()
        log.close()

    run(scenario)


# --- a failed disk write ---------------------------------------------------------------------


def test_failed_batch_is_denied_and_log_continues_from_last_durable(tmp_path: Path) -> None:
    wal = FailingWAL(tmp_path, fail_calls={2}, error=StorageError)

    async def scenario() -> None:
        log = open_log(wal)
        assert await log.append(request(0)) == 0
        wal.hold.clear()
        wal.entered.clear()
        failing = asyncio.create_task(log.append(request(1)))
        await asyncio.get_running_loop().run_in_executor(None, wal.entered.wait, 5)
        # Entries sequenced behind the failing batch chain from it: they go too.
        behind = [asyncio.create_task(log.append(request(i))) for i in range(2, 5)]
        await asyncio.sleep(0)
        wal.hold.set()
        results = await asyncio.gather(failing, *behind, return_exceptions=True)
        assert all(isinstance(r, BackpressureError) for r in results), results
        assert log.refusal is None  # the WAL cut the batch off: the log goes on
        assert (log.size, log.durable_size) == (1, 1)
        # Later appends reuse the freed seqs and chain to the last durable entry.
        assert await asyncio.gather(*(log.append(request(i)) for i in range(5, 8))) == [1, 2, 3]
        log.close()

    run(scenario)
    lines = recovered_lines(tmp_path)
    assert len(lines) == 4
    assert_chain(lines)
    assert [entry.parse(line)["req"]["path"] for line in lines] == ["/r/0", "/r/5", "/r/6", "/r/7"]


def test_failed_first_batch_restarts_chain_from_published_state(tmp_path: Path) -> None:
    # After a restart with everything published, the last durable leaf comes
    # from published.json, not from the (empty) unpublished queue.
    async def first_session() -> None:
        log = open_log(WAL(tmp_path))
        for i in range(3):
            await log.append(request(i))
        log.close()

    run(first_session)
    wal = WAL(tmp_path)
    state = state_of(wal.recover().leaves)
    wal.save_published(state)
    wal.close()

    wal = FailingWAL(tmp_path, fail_calls={1}, error=StorageError)

    async def second_session() -> None:
        log = open_log(wal)
        assert not log.unpublished
        with pytest.raises(BackpressureError):
            await log.append(request(3))
        assert await log.append(request(4)) == 3
        log.close()

    run(second_session)
    wal = WAL(tmp_path)
    recovered = wal.recover()
    wal.close()
    assert recovered.size == 4
    assert_chain(recovered.lines, start=3, prev=state.last_leaf.hex())


def test_unrecoverable_wal_error_refuses_the_log(tmp_path: Path) -> None:
    # A bare OSError means the WAL could not cut a failed write off: its file
    # may hold half a batch, so no further entry may be chained after it.
    wal = FailingWAL(tmp_path, fail_calls={2}, error=OSError)

    async def scenario() -> None:
        log = open_log(wal)
        await log.append(request(0))
        with pytest.raises(BackpressureError):
            await log.append(request(1))
        assert log.refusal is not None
        with pytest.raises(BackpressureError, match="WAL cannot be written"):
            await log.append(request(2))
        log.close()

    run(scenario)
    assert len(recovered_lines(tmp_path)) == 1


# --- refusal ------------------------------------------------------------------------------


@pytest.mark.parametrize("use_nowait", [False, True], ids=["append", "append_nowait"])
def test_refused_log_denies_every_append(tmp_path: Path, use_nowait: bool) -> None:
    async def scenario() -> None:
        log = open_log(WAL(tmp_path))
        await log.append(request(0))
        log.refuse("log fenced: another writer")
        log.refuse("a later reason does not replace the first")
        assert log.refusal == "log fenced: another writer"
        with pytest.raises(BackpressureError, match="another writer"):
            if use_nowait:
                log.append_nowait(request(1))
            else:
                await log.append(request(1))
        assert log.size == 1
        log.close()

    run(scenario)
    assert len(recovered_lines(tmp_path)) == 1
