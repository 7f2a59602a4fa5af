"""The appender: sequencing, durability before acknowledgement, group commit,
back-pressure, and what a failed disk write or sync does to the chain.

Async scenarios run under asyncio.run() inside plain test functions. The disk
is a real WAL; slow or failing disks are fakes of our own interfaces: WAL
subclasses that fail `write` (a full disk) and a FakeSyncer in place of the
syncer thread, which reports each sync done or failed when the test says so.
tests/integration/test_syncer.py runs the real syncer thread.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from extproc.core import entry
from extproc.core.merkle import CompactRange, leaf_hash
from extproc.errors import BackpressureError, DurabilityError, LogRefusedError, StorageError
from extproc.log.appender import AuditLog
from extproc.log.syncer import Syncer
from extproc.log.wal import WAL, TreeState
from tests.helpers import run

T = TypeVar("T")
FIXED_TIME = 1_700_000_000.25
SYNC_FAILED = "fdatasync failed: Input/output error"


class CountingWAL(WAL):
    """A real WAL that records each batch written to the page cache."""

    def __init__(self, directory: Path, **kwargs: Any) -> None:
        super().__init__(directory, **kwargs)
        self.batches: list[tuple[int, int]] = []  # (first seq, entries)

    def write(self, lines: list[bytes], first_seq: int) -> int:
        undo = super().write(lines, first_seq)
        self.batches.append((first_seq, len(lines)))
        return undo


class FailingWAL(CountingWAL):
    """Fails chosen writes (by call number) the way WAL.write reports them.

    StorageError: the write failed (disk full) and was cut off. A bare
    OSError: cutting it off failed too, the segment may end in half a batch.
    """

    def __init__(
        self, directory: Path, fail_calls: set[int], error: type[Exception] = StorageError
    ) -> None:
        super().__init__(directory)
        self.fail_calls = fail_calls
        self.error = error
        self.calls = 0

    def write(self, lines: list[bytes], first_seq: int) -> int:
        self.calls += 1
        if self.calls in self.fail_calls:
            raise self.error("injected WAL write failure: No space left on device")
        return super().write(lines, first_seq)


class UncuttableWAL(CountingWAL):
    """A failed batch cannot be cut off: truncate fails."""

    def undo(self, size: int) -> None:
        raise OSError(errno.EIO, "injected: truncate failed")


class FakeSyncer(Syncer):
    """Stands in for the syncer thread: same interface, no thread.

    Each sync is recorded. Unless `held`, it is done on the next loop turn
    (failed if its call number is in `fail_calls`); a held sync stays in
    flight until the test calls finish(). A successful finish really
    fdatasyncs the fd it was given.
    """

    def __init__(
        self, on_done: Callable[[str | None], None], *, held: bool, fail_calls: set[int]
    ) -> None:
        super().__init__("", on_done)
        self.held = held
        self.fail_calls = fail_calls
        self.requests: list[tuple[int, int]] = []  # (fd, generation)
        self.closed = False

    def sync(self, fd: int, generation: int) -> None:
        assert not self.in_flight, "a second sync while one is in flight"
        assert not self.closed
        self.in_flight = True
        self.requests.append((fd, generation))
        if not self.held:
            failed = len(self.requests) in self.fail_calls
            asyncio.get_running_loop().call_soon(self.finish, SYNC_FAILED if failed else None)

    def finish(self, error: str | None = None) -> None:
        """Report the sync in flight: durable (None) or failed (the reason)."""
        assert self.in_flight, "no sync in flight"
        self.in_flight = False
        if error is None:
            os.fdatasync(self.requests[-1][0])
        self._on_done(error)

    def close(self) -> None:
        self.closed = True


def open_log(wal: WAL, **kwargs: Any) -> AuditLog:
    """An audit log with the real syncer thread."""
    return AuditLog(wal, wal.recover(), wall_clock=lambda: FIXED_TIME, **kwargs)


def open_faked_log(
    wal: WAL, *, held: bool = False, fail_calls: frozenset[int] = frozenset(), **kwargs: Any
) -> tuple[AuditLog, FakeSyncer]:
    """An audit log whose syncs the test controls (call inside the event loop)."""
    made: list[FakeSyncer] = []

    def fake(directory: str, on_done: Callable[[str | None], None]) -> FakeSyncer:
        made.append(FakeSyncer(on_done, held=held, fail_calls=set(fail_calls)))
        return made[0]

    log = open_log(wal, syncer=fake, **kwargs)
    return log, made[0]


def request(i: int) -> dict[str, Any]:
    return {"kind": "request", "req": {"method": "GET", "path": f"/r/{i}"}}


def paths(lines: list[bytes]) -> list[str]:
    return [entry.parse(line)["req"]["path"] for line in lines]


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


def segment_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("segment-*"))


# --- sequencing -------------------------------------------------------------------------


def test_appends_are_sequenced_and_hash_chained(tmp_path: Path) -> None:
    async def scenario() -> list[int]:
        log = open_log(WAL(tmp_path))
        seqs = await asyncio.gather(*(log.append(request(i)) for i in range(50)))
        log.close()
        return list(seqs)

    assert run(scenario, timeout=20) == list(range(50))
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


def test_unsynced_wal_still_acknowledges_in_order(tmp_path: Path) -> None:
    # sync=False (benchmarks only): no syncer thread, same sequencing.
    async def scenario() -> list[int]:
        log = open_log(WAL(tmp_path, sync=False))
        seqs = await asyncio.gather(*(log.append(request(i)) for i in range(20)))
        assert log.durable_size == 20
        assert log._syncer._thread is None
        log.close()
        return list(seqs)

    assert run(scenario, timeout=20) == list(range(20))
    assert_chain(recovered_lines(tmp_path))


# --- durable before acknowledged ------------------------------------------------------------


def test_append_returns_only_after_sync_is_reported(tmp_path: Path) -> None:
    wal = CountingWAL(tmp_path)

    async def scenario() -> None:
        log, syncer = open_faked_log(wal, held=True)  # the disk is slow
        task = asyncio.create_task(log.append(request(0)))
        await asyncio.sleep(0.05)
        # Written to the page cache, and the segment handed to the syncer ...
        assert wal.batches == [(0, 1)]
        assert syncer.requests == [(wal.fileno(), wal.generation)]
        # ... but not acknowledged, nor offered to the publisher.
        assert not task.done(), "acknowledged before the sync was reported done"
        assert (log.durable_size, log.waiting) == (0, 0)
        syncer.finish()
        seq = await task
        assert log.durable_size > seq
        assert [d.line for d in log.durable_from(log.published.size)] == recovered_lines_open()
        log.close()

    def recovered_lines_open() -> list[bytes]:
        return b"".join(p.read_bytes() for p in sorted(tmp_path.glob("segment-*"))).splitlines()

    run(scenario, timeout=20)
    assert len(recovered_lines(tmp_path)) == 1


def test_flush_waits_for_every_sequenced_entry(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = open_log(WAL(tmp_path))
        for i in range(10):
            log.append_nowait(request(i))
        assert log.size == 10
        await log.flush()
        assert log.durable_size == 10
        assert [d.line for d in log.durable_from(log.published.size)] == recovered_lines_open(log)
        log.close()

    def recovered_lines_open(log: AuditLog) -> list[bytes]:
        return b"".join(p.read_bytes() for p in sorted(tmp_path.glob("segment-*"))).splitlines()

    run(scenario, timeout=20)


# --- group commit -------------------------------------------------------------------------


def test_concurrent_appends_are_group_committed(tmp_path: Path) -> None:
    wal = CountingWAL(tmp_path)

    async def scenario() -> None:
        log, syncer = open_faked_log(wal, held=True)
        first = asyncio.create_task(log.append(request(0)))
        await asyncio.sleep(0)
        # While entry 0 is being synced, 99 more requests arrive ...
        rest = [asyncio.create_task(log.append(request(i))) for i in range(1, 100)]
        await asyncio.sleep(0.01)
        # ... and wait: one batch in the page cache and one sync at a time.
        assert wal.batches == [(0, 1)]
        assert len(syncer.requests) == 1
        syncer.finish()
        assert wal.batches == [(0, 1), (1, 99)]  # the next batch starts at once
        assert len(syncer.requests) == 2
        await asyncio.sleep(0.01)
        assert first.done() and not any(t.done() for t in rest)
        syncer.finish()
        assert await asyncio.gather(first, *rest) == list(range(100))
        log.close()

    run(scenario, timeout=20)
    assert_chain(recovered_lines(tmp_path))


class CountingSyncer(Syncer):
    """The real syncer thread, counting the syncs asked of it."""

    syncs = 0

    def sync(self, fd: int, generation: int) -> None:
        self.syncs += 1
        super().sync(fd, generation)


def test_unheld_concurrent_appends_need_fewer_syncs_than_entries(tmp_path: Path) -> None:
    wal = CountingWAL(tmp_path)

    async def scenario() -> int:
        log = open_log(wal, syncer=CountingSyncer)
        syncer = log._syncer
        assert isinstance(syncer, CountingSyncer)
        await asyncio.gather(*(log.append(request(i)) for i in range(200)))
        log.close()
        return syncer.syncs

    syncs = run(scenario, timeout=20)
    assert sum(n for _, n in wal.batches) == 200
    assert syncs == len(wal.batches) < 200


def test_cancelled_waiter_does_not_block_the_others(tmp_path: Path) -> None:
    wal = CountingWAL(tmp_path)

    async def scenario() -> None:
        log, syncer = open_faked_log(wal, held=True)
        tasks = [asyncio.create_task(log.append(request(i))) for i in range(5)]
        await asyncio.sleep(0)
        tasks[2].cancel()  # the client went away mid-commit
        await asyncio.sleep(0)
        syncer.finish()
        syncer.held = False
        syncer.finish()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[2], asyncio.CancelledError)
        assert [r for i, r in enumerate(results) if i != 2] == [0, 1, 3, 4]
        assert log.durable_size == 5  # the entry is durable even if nobody waits for it
        log.close()

    run(scenario, timeout=20)


def test_publisher_is_woken_by_news_not_by_every_sync(tmp_path: Path) -> None:
    # news: the first entry to publish (its age starts) or a full bundle.
    async def scenario() -> None:
        log = open_log(WAL(tmp_path))
        log.wake_when_waiting(3)
        woken = []
        for i in range(5):
            log.durable_event.clear()
            await log.append(request(i))
            woken.append(log.durable_event.is_set())
        assert woken == [True, False, True, False, False]
        taken = log.entries(0, 5)
        log.mark_published(state_of([d.leaf for d in taken]))
        log.durable_event.clear()
        await log.append(request(5))
        assert log.durable_event.is_set()
        log.close()

    run(scenario, timeout=20)


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
        taken = log.entries(0, accepted)
        log.mark_published(state_of([d.leaf for d in taken]))
        assert log.backlog_bytes == 0
        assert await log.append(request(99)) == accepted
        log.close()

    run(scenario, timeout=20)
    assert_chain(recovered_lines(tmp_path))


def test_backlog_bound_counts_entries_waiting_for_disk(tmp_path: Path) -> None:
    async def scenario() -> None:
        log, syncer = open_faked_log(WAL(tmp_path), held=True, max_backlog_bytes=1000)
        log.append_nowait(request(0))
        with pytest.raises(BackpressureError, match="backlog"):
            for i in range(1, 100):
                log.append_nowait(request(i))
        assert log.size < 20
        syncer.held = False
        syncer.finish()
        await log.flush()
        assert log.durable_size == log.size
        log.close()

    run(scenario, timeout=20)


def test_flood_of_reserved_entries_is_refused_before_any_is_built(tmp_path: Path) -> None:
    # Each batch entry counts against the backlog before it is built (the
    # access-log path): a flood becomes refusals, not memory.
    built: list[int] = []

    def entries(n: int) -> Any:
        for i in range(n):
            built.append(i)
            yield request(i)

    async def scenario() -> None:
        log, _ = open_faked_log(WAL(tmp_path), max_backlog_bytes=64 * 1024)
        with pytest.raises(BackpressureError, match="with 500000 entries more"):
            log.reserve(500_000)
        assert log.reserved == 0 and log.backlog_bytes == 0 and not built
        log.reserve(40)
        assert log.reserved == 40 and log.backlog_bytes > 0  # the estimate counts
        with pytest.raises(BackpressureError):  # the reservation leaves no room for more
            log.reserve(100)
        log.append_batch_nowait(entries(30), reserved=30)
        log.release(10)
        assert log.reserved == 0 and log.size == 30 == len(built)
        await log.flush()
        # The estimate is gone: what counts is the real size of each line.
        assert log.backlog_bytes == sum(len(d.line) for d in log.entries(0, 30))
        log.close()

    run(scenario, timeout=20)


def test_batch_entry_that_fails_to_build_keeps_those_before_it_durable(tmp_path: Path) -> None:
    def entries() -> Any:
        yield request(0)
        yield request(1)
        raise RuntimeError("capture failed")

    async def scenario() -> None:
        log, _ = open_faked_log(WAL(tmp_path))
        log.reserve(3)
        with pytest.raises(RuntimeError, match="capture failed"):
            log.append_batch_nowait(entries(), reserved=3)
        assert log.reserved == 0 and log.size == 2
        await log.flush()  # the two before it were sent to disk without another append
        assert log.durable_size == 2
        log.close()

    run(scenario, timeout=20)
    assert paths(recovered_lines(tmp_path)) == ["/r/0", "/r/1"]


# --- a failed sync or write -------------------------------------------------------------------


def test_failed_sync_denies_batch_and_everything_behind_it(tmp_path: Path) -> None:
    wal = CountingWAL(tmp_path)

    async def scenario() -> None:
        log, syncer = open_faked_log(wal, held=True)
        durable = asyncio.create_task(log.append(request(0)))
        await asyncio.sleep(0)
        syncer.finish()
        assert await durable == 0
        durable_bytes = segment_bytes(tmp_path)
        generation = wal.generation
        failing = asyncio.create_task(log.append(request(1)))
        await asyncio.sleep(0)
        assert segment_bytes(tmp_path) > durable_bytes  # in the page cache, being synced
        # Entries sequenced behind the failing batch chain from it: they go too.
        behind = [asyncio.create_task(log.append(request(i))) for i in range(2, 5)]
        await asyncio.sleep(0)
        assert log.size == 5
        syncer.finish(SYNC_FAILED)
        results = await asyncio.gather(failing, *behind, return_exceptions=True)
        assert all(isinstance(r, DurabilityError) for r in results), results
        assert all("Input/output error" in str(r) for r in results), results
        assert segment_bytes(tmp_path) == durable_bytes  # WAL.undo cut the batch off
        assert log.refusal is None  # the WAL is consistent again: the log goes on
        assert (log.size, log.durable_size) == (1, 1)
        # Later appends reuse the freed seqs and chain to the last durable entry.
        syncer.held = False
        assert await asyncio.gather(*(log.append(request(i)) for i in range(5, 8))) == [1, 2, 3]
        # The segment was reopened after the cut: the syncer got the new fd.
        assert syncer.requests[-1] == (wal.fileno(), wal.generation)
        assert wal.generation > generation
        log.close()

    run(scenario, timeout=20)
    lines = recovered_lines(tmp_path)
    assert len(lines) == 4
    assert_chain(lines)
    assert paths(lines) == ["/r/0", "/r/5", "/r/6", "/r/7"]


def test_failed_write_is_denied_at_once(tmp_path: Path) -> None:
    # The disk is full when an idle log writes: append_nowait itself says no.
    wal = FailingWAL(tmp_path, fail_calls={2})

    async def scenario() -> None:
        log = open_log(wal)
        assert await log.append(request(0)) == 0
        with pytest.raises(DurabilityError, match="No space left"):
            log.append_nowait(request(1))
        assert (log.size, log.durable_size) == (1, 1)
        assert log.refusal is None
        assert await log.append(request(2)) == 1
        log.close()

    run(scenario, timeout=20)
    lines = recovered_lines(tmp_path)
    assert_chain(lines)
    assert paths(lines) == ["/r/0", "/r/2"]


def test_failed_write_of_queued_batch_denies_it(tmp_path: Path) -> None:
    # Entries queued behind a sync are written when it is done; the disk is
    # full by then.
    wal = FailingWAL(tmp_path, fail_calls={3})

    async def scenario() -> None:
        log, syncer = open_faked_log(wal, held=True)
        durable = asyncio.create_task(log.append(request(0)))
        await asyncio.sleep(0)
        syncer.finish()
        assert await durable == 0
        syncing = asyncio.create_task(log.append(request(1)))
        await asyncio.sleep(0)
        queued = [asyncio.create_task(log.append(request(i))) for i in range(2, 5)]
        await asyncio.sleep(0)
        syncer.finish()  # entry 1 is durable; the write of 2..4 fails
        assert await syncing == 1
        results = await asyncio.gather(*queued, return_exceptions=True)
        assert all(isinstance(r, DurabilityError) for r in results), results
        assert not syncer.in_flight
        assert log.refusal is None
        assert (log.size, log.durable_size) == (2, 2)
        syncer.held = False
        assert await asyncio.gather(*(log.append(request(i)) for i in range(5, 8))) == [2, 3, 4]
        log.close()

    run(scenario, timeout=20)
    assert wal.batches == [(0, 1), (1, 1), (2, 1), (3, 2)]
    lines = recovered_lines(tmp_path)
    assert_chain(lines)
    assert paths(lines) == ["/r/0", "/r/1", "/r/5", "/r/6", "/r/7"]


@pytest.mark.parametrize("failure", ["write", "sync"])
def test_failed_first_batch_restarts_chain_from_published_state(
    tmp_path: Path, failure: str
) -> None:
    # After a restart with everything published, the last durable leaf comes
    # from published.json, not from the (empty) unpublished queue.
    async def first_session() -> None:
        log = open_log(WAL(tmp_path))
        for i in range(3):
            await log.append(request(i))
        log.close()

    run(first_session, timeout=20)
    wal = WAL(tmp_path)
    state = state_of(wal.recover().leaves)
    wal.save_published(state)
    wal.close()

    async def second_session() -> None:
        if failure == "write":
            log = open_log(FailingWAL(tmp_path, fail_calls={1}))
        else:
            log, _ = open_faked_log(WAL(tmp_path), fail_calls=frozenset({1}))
        assert not log.waiting
        with pytest.raises(DurabilityError):
            await log.append(request(3))
        assert await log.append(request(4)) == 3
        log.close()

    run(second_session, timeout=20)
    wal = WAL(tmp_path)
    recovered = wal.recover()
    wal.close()
    assert recovered.size == 4
    assert_chain(recovered.lines, start=3, prev=state.last_leaf.hex())
    assert paths(recovered.lines) == ["/r/4"]


@pytest.mark.parametrize("when", ["idle", "queued"])
def test_uncut_failed_write_refuses_the_log(tmp_path: Path, when: str) -> None:
    # A bare OSError from WAL.write means it could not cut a failed write
    # off: the segment may hold half a batch, so nothing may be chained after it.
    # idle: append_nowait writes; queued: the write follows a finished sync.
    wal = FailingWAL(tmp_path, fail_calls={2}, error=OSError)

    async def scenario() -> None:
        log, syncer = open_faked_log(wal, held=when == "queued")
        first = asyncio.create_task(log.append(request(0)))
        await asyncio.sleep(0)
        failing = asyncio.create_task(log.append(request(1)))
        await asyncio.sleep(0)
        if when == "queued":
            syncer.finish()
        assert await first == 0
        with pytest.raises(DurabilityError):
            await failing
        assert log.refusal is not None
        with pytest.raises(LogRefusedError, match="WAL cannot be written"):
            await log.append(request(2))
        assert (log.size, log.durable_size) == (1, 1)
        assert not syncer.in_flight
        log.close()

    run(scenario, timeout=20)
    assert len(recovered_lines(tmp_path)) == 1


def test_uncut_failed_sync_refuses_the_log(tmp_path: Path) -> None:
    wal = UncuttableWAL(tmp_path)

    async def scenario() -> None:
        log, syncer = open_faked_log(wal, held=True)
        durable = asyncio.create_task(log.append(request(0)))
        await asyncio.sleep(0)
        syncer.finish()
        await durable
        failing = asyncio.create_task(log.append(request(1)))
        queued = asyncio.create_task(log.append(request(2)))
        await asyncio.sleep(0)
        syncer.finish(SYNC_FAILED)
        results = await asyncio.gather(failing, queued, return_exceptions=True)
        assert all(isinstance(r, DurabilityError) for r in results), results
        assert log.refusal is not None
        with pytest.raises(LogRefusedError, match="WAL cannot be cut back"):
            await log.append(request(3))
        assert (log.size, log.durable_size) == (1, 1)
        log.close()

    run(scenario, timeout=20)
    # Never acknowledged, entry 1 may still be in the file; nothing follows it.
    lines = recovered_lines(tmp_path)
    assert_chain(lines)
    assert paths(lines) in (["/r/0"], ["/r/0", "/r/1"])


# --- refusal ------------------------------------------------------------------------------


@pytest.mark.parametrize("use_nowait", [False, True], ids=["append", "append_nowait"])
def test_refused_log_denies_every_append(tmp_path: Path, use_nowait: bool) -> None:
    async def scenario() -> None:
        log = open_log(WAL(tmp_path))
        await log.append(request(0))
        log.refuse("log fenced: another writer")
        log.refuse("a later reason does not replace the first")
        assert log.refusal == "log fenced: another writer"
        with pytest.raises(LogRefusedError, match="another writer"):
            if use_nowait:
                log.append_nowait(request(1))
            else:
                await log.append(request(1))
        assert log.size == 1
        log.close()

    run(scenario, timeout=20)
    assert len(recovered_lines(tmp_path)) == 1
