"""The publisher through store outages and crashes between the steps of a
publication: nothing acknowledged is lost, nothing is published twice.

Stores are our own MemoryStore and subclasses of it that fail on purpose;
every published result is checked with the auditor's own verify_store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extproc.core.note import Signer
from extproc.errors import StorageError
from extproc.log.wal import WAL, TreeState
from extproc.store.base import DEFAULT_READ_LIMIT, Retention
from extproc.store.memory import MemoryStore
from tests.helpers import eventually, read_entries, run
from tests.publishing import (
    LOG_ID,
    PREFIX,
    assert_contiguous,
    bundle_ranges,
    checkpoint_sizes,
    open_writer,
    published,
    verify,
)


class Crash(Exception):
    """Raised where the test kills the writer: nothing after it runs."""


# --- store outages -------------------------------------------------------------------------


class FlakyStore(MemoryStore):
    """Fails by plan: each put_once/get call pops the next fault, if any.

    "down": the call fails, nothing written. "lost-reply": the object is
    written but the caller sees an error (a timeout after success).
    """

    def __init__(self, puts: list[str], gets: list[str] | None = None) -> None:
        super().__init__(PREFIX)
        self.put_faults = list(puts)
        self.get_faults = list(gets or [])
        self.put_calls = 0

    def put_once(self, key: str, data: bytes, retention: Retention | None) -> None:
        self.put_calls += 1
        fault = self.put_faults.pop(0) if self.put_faults else None
        if fault == "down":
            raise StorageError(f"store unreachable writing {key}")
        if fault == "blackhole":
            return  # 200, nothing stored
        super().put_once(key, data, retention)
        if fault == "lost-reply":
            raise StorageError(f"timeout writing {key}")

    def get(self, key: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        if self.get_faults and self.get_faults.pop(0) == "down":
            raise StorageError(f"store unreachable reading {key}")
        return super().get(key, limit)


OUTAGES = {
    "down-for-first-puts": ([*["down"] * 5], []),
    "reply-lost-after-write": (["lost-reply", "lost-reply", "lost-reply"], []),
    "reply-lost-then-down": (["lost-reply", "down", "down", "lost-reply"], []),
    "reply-lost-then-read-fails": (["lost-reply"], ["down", "down"]),
    # A store that answers 200 and keeps nothing (measured with a fault proxy).
    "acknowledged-not-stored": (["blackhole", "blackhole", "blackhole", "blackhole"], []),
    "acknowledged-not-stored-then-down": (["blackhole", "down", "blackhole", "lost-reply"], []),
}


@pytest.mark.parametrize(("puts", "gets"), OUTAGES.values(), ids=OUTAGES.keys())
def test_store_outage_is_retried_without_loss_or_duplicates(
    tmp_path: Path, signer: Signer, puts: list[str], gets: list[str]
) -> None:
    store = FlakyStore(puts, gets)

    async def scenario() -> None:
        w = open_writer(tmp_path / "wal", store, signer, bundle_max_entries=5)
        await w.publisher.reconcile()
        await w.append(12)
        await w.publisher.publish()
        assert w.publisher.fenced is None
        assert w.log.published.size == 12
        w.crash()

    repaired_before = _repaired()
    run(scenario)
    assert store.put_faults == [] and store.get_faults == []
    # Every put the store did not keep was noticed and written again.
    assert _repaired() - repaired_before == puts.count("blackhole")
    assert bundle_ranges(store) == [(0, 4), (5, 9), (10, 11)]
    assert checkpoint_sizes(store) == [12]
    assert [e["n"] for e in read_entries(store, LOG_ID)] == list(range(12))
    verify(store, signer)


def _repaired() -> float:
    from extproc import metrics

    return sum(
        m.value
        for f in metrics.OBJECTS_REPAIRED.collect()
        for m in f.samples
        if m.name.endswith("_total")
    )


def test_store_unreachable_at_startup_is_retried(tmp_path: Path, signer: Signer) -> None:
    class DownAtFirst(MemoryStore):
        lists = 0

        def list(self, prefix: str, start_after: str = "") -> Iterator[Any]:
            self.lists += 1
            if self.lists <= 2:
                raise StorageError("store unreachable listing")
            return super().list(prefix, start_after)

    store = DownAtFirst(PREFIX)

    async def scenario() -> None:
        w = open_writer(tmp_path / "wal", store, signer, retry_max_delay=0.01)
        await w.append(3)
        task = asyncio.create_task(w.publisher.run())
        await published(w, 3)
        w.publisher.stop()
        await task
        w.crash()

    run(scenario)
    assert store.lists == 3
    verify(store, signer)


def test_wal_state_save_failure_does_not_stop_publication(tmp_path: Path, signer: Signer) -> None:
    # The local disk refuses published.json once (full, I/O error): the run
    # loop must retry, not die silently while the backlog fills up.
    class SaveFailsOnce(WAL):
        failed = False

        def save_published(self, state: TreeState) -> None:
            if not self.failed:
                self.failed = True
                raise StorageError("cannot write published.json: No space left on device")
            super().save_published(state)

    store = MemoryStore(PREFIX)

    async def scenario() -> None:
        wal = SaveFailsOnce(tmp_path / "wal")
        w = open_writer(tmp_path / "wal", store, signer, wal=wal, max_age=0.01)
        task = asyncio.create_task(w.publisher.run())
        await w.append(5)
        await eventually(lambda: w.log.published.size == 5 or task.done())
        assert not task.done(), task.exception()
        assert wal.failed and w.log.published.size == 5
        w.publisher.stop()
        await task
        w.crash()

    run(scenario)
    assert checkpoint_sizes(store) == [5]
    verify(store, signer)


# --- crashes between the steps of a publication ------------------------------------------


class CrashOnCheckpointPut(MemoryStore):
    def put_once(self, key: str, data: bytes, retention: Retention | None) -> None:
        if "/checkpoints/" in key:
            raise Crash(key)
        super().put_once(key, data, retention)


class CrashOnStateSave(WAL):
    def save_published(self, state: TreeState) -> None:
        raise Crash("before published.json")


def test_crash_after_bundle_put_before_checkpoint(tmp_path: Path, signer: Signer) -> None:
    store = CrashOnCheckpointPut(PREFIX)

    async def first_run() -> None:
        w = open_writer(tmp_path / "wal", store, signer, bundle_max_entries=10)
        await w.publisher.reconcile()
        await w.append(15)
        with pytest.raises(Crash):
            await w.publisher.publish()
        w.crash()

    async def restart() -> None:
        w = open_writer(tmp_path / "wal", MemoryStoreView(store), signer, bundle_max_entries=10)
        assert w.log.published.size == 0
        await w.publisher.reconcile()
        assert w.publisher.bundled == 15  # both bundles adopted, not rewritten
        await w.append(2)
        await w.publisher.close()
        assert w.log.published.size == 18  # 17 entries and the writer's stop entry
        w.crash()

    run(first_run)
    assert bundle_ranges(store) == [(0, 9), (10, 14)]
    assert checkpoint_sizes(store) == []
    run(restart)
    assert bundle_ranges(store) == [(0, 9), (10, 14), (15, 17)]
    assert checkpoint_sizes(store) == [18]
    report = verify(store, signer)
    assert report.entries == 18


def test_adopted_bundles_get_checkpoint_without_new_traffic(tmp_path: Path, signer: Signer) -> None:
    # After the restart nothing new arrives: the run loop alone must sign the
    # checkpoint over the adopted bundles, not wait for the next request.
    store = CrashOnCheckpointPut(PREFIX)

    async def first_run() -> None:
        w = open_writer(tmp_path / "wal", store, signer, bundle_max_entries=10)
        await w.publisher.reconcile()
        await w.append(15)
        with pytest.raises(Crash):
            await w.publisher.publish()
        w.crash()

    async def restart() -> None:
        w = open_writer(tmp_path / "wal", MemoryStoreView(store), signer, max_age=3600)
        task = asyncio.create_task(w.publisher.run())
        await published(w, 15)
        w.publisher.stop()
        await task
        w.crash()

    run(first_run)
    run(restart)
    assert bundle_ranges(store) == [(0, 9), (10, 14)]
    assert checkpoint_sizes(store) == [15]
    verify(store, signer)


class MemoryStoreView(MemoryStore):
    """The same objects as another MemoryStore, without its injected faults."""

    def __init__(self, other: MemoryStore) -> None:
        super().__init__(other.prefix)
        self.objects = other.objects
        self.retentions = other.retentions


def test_crash_after_checkpoint_put_before_wal_state_save(tmp_path: Path, signer: Signer) -> None:
    store = MemoryStore(PREFIX)

    async def first_run() -> None:
        wal = CrashOnStateSave(tmp_path / "wal")
        w = open_writer(tmp_path / "wal", store, signer, wal=wal, bundle_max_entries=4)
        await w.publisher.reconcile()
        await w.append(10)
        with pytest.raises(Crash):
            await w.publisher.publish()
        w.crash()

    async def restart() -> None:
        w = open_writer(tmp_path / "wal", store, signer, bundle_max_entries=4)
        assert w.log.published.size == 0  # the WAL never learnt of the checkpoint
        await w.publisher.reconcile()
        assert w.log.published.size == 10
        assert not w.log.waiting
        await w.append(3)
        await w.publisher.close()
        w.crash()

    run(first_run)
    assert checkpoint_sizes(store) == [10]
    run(restart)
    assert checkpoint_sizes(store) == [10, 14]  # 3 more entries and the stop entry
    assert_contiguous(bundle_ranges(store), 14)
    # The adopted state reached the WAL: a further restart needs no adoption.
    wal = WAL(tmp_path / "wal")
    assert wal.recover().published.size == 14
    wal.close()
    verify(store, signer)


def test_clean_restart_resumes_without_rewriting(tmp_path: Path, signer: Signer) -> None:
    store = MemoryStore(PREFIX)

    async def session(count: int) -> None:
        w = open_writer(tmp_path / "wal", store, signer, bundle_max_entries=4)
        await w.publisher.reconcile()
        await w.append(count)
        await w.publisher.close()
        w.crash()

    run(lambda: session(6))
    written = dict(store.objects)
    run(lambda: session(5))
    assert all(store.objects[k] == v for k, v in written.items())
    assert checkpoint_sizes(store) == [7, 13]  # each session ends with a stop entry
    assert verify(store, signer).entries == 13
