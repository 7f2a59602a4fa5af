"""The publisher: bundles and signed checkpoints that an auditor can verify,
when bundles are due, the final checkpoint, retention, and a log that never
silently continues under another key.

Stores are our own MemoryStore and the LocalStore (and real S3); every
published result is checked with the auditor's own verify_store, not by
re-reading our assumptions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from extproc.audit.verify import verify_store
from extproc.core import layout
from extproc.core.checkpoint import open_checkpoint
from extproc.core.findings import all_ok
from extproc.core.keyring import Keyring, TrustedKey
from extproc.core.note import Signer
from extproc.log.wal import TreeState
from extproc.store.base import ObjectStore
from extproc.store.memory import MemoryStore
from tests.helpers import read_entries, run
from tests.publishing import (
    LOG_ID,
    PREFIX,
    WRITER,
    assert_contiguous,
    bundle_ranges,
    checkpoint_sizes,
    latest_checkpoint,
    open_writer,
    published,
    verify,
)

# --- what gets published verifies ---------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["jsonl", "gzip"])
def test_published_bundles_and_checkpoints_verify(
    tmp_path: Path, store: ObjectStore, signer: Signer, compress: bool
) -> None:
    async def scenario() -> None:
        w = open_writer(tmp_path / "wal", store, signer, bundle_max_entries=10, gzip=compress)
        await w.publisher.reconcile()
        await w.append(25)
        await w.publisher.publish()
        assert bundle_ranges(store) == [(0, 9), (10, 19), (20, 24)]
        assert checkpoint_sizes(store) == [25]
        assert (w.log.published.size, w.log.waiting) == (25, 0)
        report = verify(store, signer)
        assert (report.entries, report.bundles, report.checkpoints) == (25, 3, 1)

        await w.append(7)
        await w.publisher.publish()
        assert checkpoint_sizes(store) == [25, 32]
        report = verify(store, signer)
        assert (report.entries, report.bundles, report.checkpoints) == (32, 4, 2)
        assert report.latest is not None and report.latest.size == 32
        assert report.latest.writer == WRITER
        w.crash()

    run(scenario)
    keys = [o.key for o in store.list(PREFIX)]
    assert all(k.endswith(".jsonl.gz") == compress for k in keys if "/entries/" in k)
    if store.supports_retention:
        for key in keys:
            retention = store.retention(key)
            assert retention is not None and retention.mode == "COMPLIANCE", key
    assert [e["n"] for e in read_entries(store, LOG_ID)] == list(range(32))


def test_bundle_byte_bound_splits_bundles(tmp_path: Path, signer: Signer) -> None:
    store = MemoryStore(PREFIX)

    async def scenario() -> None:
        w = open_writer(tmp_path / "wal", store, signer, bundle_max_bytes=600)
        await w.publisher.reconcile()
        await w.append(20)
        await w.publisher.publish()
        w.crash()

    run(scenario)
    ranges = bundle_ranges(store)
    assert len(ranges) > 1
    assert_contiguous(ranges, 20)
    for first, last in ranges:
        key = layout.bundle_key(PREFIX, LOG_ID, first, last)
        assert len(store.get(key)) <= 600 or first == last
    verify(store, signer)


# --- when bundles are due -------------------------------------------------------------------


DUE_CASES = [
    # (max_age, bundle_max_entries, entries appended, due_in check)
    pytest.param(3600.0, 10, 0, lambda d: d is None, id="nothing-waiting"),
    pytest.param(0.0, 10, 1, lambda d: d == 0.0, id="age-reached"),
    pytest.param(3600.0, 10, 3, lambda d: 3500 < d <= 3600, id="age-not-reached"),
    pytest.param(3600.0, 10, 10, lambda d: d == 0.0, id="count-reached"),
]


@pytest.mark.parametrize(("max_age", "max_entries", "count", "check"), DUE_CASES)
def test_due_in_follows_age_and_count(
    tmp_path: Path,
    signer: Signer,
    max_age: float,
    max_entries: int,
    count: int,
    check: Callable[[float | None], bool],
) -> None:
    async def scenario() -> None:
        w = open_writer(
            tmp_path / "wal",
            MemoryStore(),
            signer,
            max_age=max_age,
            bundle_max_entries=max_entries,
        )
        await w.publisher.reconcile()
        await w.append(count)
        due = w.publisher.due_in()
        assert check(due), due
        w.crash()

    run(scenario)


def test_publish_seals_only_due_bundles_until_final(tmp_path: Path, signer: Signer) -> None:
    store = MemoryStore(PREFIX)

    async def scenario() -> None:
        w = open_writer(tmp_path / "wal", store, signer, max_age=3600, bundle_max_entries=10)
        await w.publisher.reconcile()
        await w.append(5)
        await w.publisher.publish()
        assert store.objects == {}  # neither old enough nor enough entries
        await w.append(20)
        await w.publisher.publish()
        assert bundle_ranges(store) == [(0, 9), (10, 19)]
        assert checkpoint_sizes(store) == [20]
        assert w.publisher.due_in() is not None  # 20..24 still wait for their age
        await w.publisher.close()
        # 20..24 and the writer's stop entry (25).
        assert bundle_ranges(store) == [(0, 9), (10, 19), (20, 25)]
        assert checkpoint_sizes(store) == [20, 26]
        w.crash()

    run(scenario)
    verify(store, signer)


def test_age_trigger_publishes_from_run_loop(tmp_path: Path, signer: Signer) -> None:
    store = MemoryStore(PREFIX)

    async def scenario() -> None:
        w = open_writer(tmp_path / "wal", store, signer, max_age=0.05, bundle_max_entries=1000)
        task = asyncio.create_task(w.publisher.run())
        await w.append(3)
        started = time.monotonic()
        await published(w, 3)
        assert time.monotonic() - started >= 0.03  # waited for the age, roughly
        await w.append(4)
        await published(w, 7)
        w.publisher.stop()
        await task
        assert w.publisher.fenced is None
        w.crash()

    run(scenario)
    sizes = checkpoint_sizes(store)
    assert (sizes[0], sizes[-1]) == (3, 7)
    verify(store, signer)


# --- final checkpoint ------------------------------------------------------------------------


def test_final_checkpoint_carries_final_line(tmp_path: Path, signer: Signer) -> None:
    store = MemoryStore(PREFIX)

    async def scenario() -> None:
        w = open_writer(tmp_path / "wal", store, signer, max_age=3600, bundle_max_entries=4)
        task = asyncio.create_task(w.publisher.run())
        await w.append(4)  # a full bundle: published at once
        await published(w, 4)
        await w.append(3)  # acknowledged, not due yet at shutdown
        w.publisher.stop()
        await task
        await w.publisher.close()
        assert w.log.published.size == 8  # 7 entries and the writer's stop entry
        w.crash()

    run(scenario)
    sizes = checkpoint_sizes(store)
    assert sizes[-1] == 8
    for size in sizes:
        cp = open_checkpoint(
            store.get(layout.checkpoint_key(PREFIX, LOG_ID, size)), signer.verifier()
        )
        assert cp.final == (size == 8)
        assert ("final" in cp.extensions) == (size == 8)
    verify(store, signer)


def test_shutdown_after_idle_still_marks_final(tmp_path: Path, signer: Signer) -> None:
    store = MemoryStore(PREFIX)

    async def scenario() -> None:
        w = open_writer(tmp_path / "wal", store, signer)
        await w.publisher.reconcile()
        await w.append(3)
        await w.publisher.publish()  # the run loop got there before SIGTERM
        await w.publisher.close()
        w.crash()

    run(scenario)
    assert latest_checkpoint(store, signer).final


# --- retention -------------------------------------------------------------------------------


def test_every_object_is_written_with_retention(tmp_path: Path, signer: Signer) -> None:
    store = MemoryStore(PREFIX)
    before = datetime.now(UTC)

    async def scenario() -> None:
        w = open_writer(tmp_path / "wal", store, signer, bundle_max_entries=4, gzip=True)
        await w.publisher.reconcile()
        await w.append(10)
        await w.publisher.close()
        w.crash()

    run(scenario)
    after = datetime.now(UTC)
    assert (
        len(store.objects) == 7
    )  # 11 entries (with the stop entry): 3 claims, 3 bundles, 1 checkpoint
    assert set(store.retentions) == set(store.objects)
    for retention in store.retentions.values():
        assert retention.mode == "COMPLIANCE"
        assert before + timedelta(days=7) <= retention.until <= after + timedelta(days=7)


def test_objects_without_retention_are_flagged(tmp_path: Path, signer: Signer) -> None:
    store = MemoryStore(PREFIX)

    async def scenario() -> None:
        w = open_writer(tmp_path / "wal", store, signer, retention=None)
        await w.publisher.reconcile()
        await w.append(3)
        await w.publisher.close()
        w.crash()

    run(scenario)
    assert store.retentions == {}
    reports, general = verify_store(store, signer.verifier())
    assert not all_ok(reports, general)
    assert all("retention" in f.message for f in reports[0].findings)


# --- key rotation: a log never silently continues under another key --------------------------


def _session(tmp_path: Path, store: ObjectStore, signer: Signer, count: int) -> None:
    async def scenario() -> None:
        w = open_writer(tmp_path / "wal", store, signer)
        await w.publisher.reconcile()
        await w.append(count)
        await w.publisher.close()
        w.crash()

    run(scenario)


def _label(signer: Signer) -> str:
    return f"{signer.name}+{signer.key_id.hex()}"


def test_key_rotation_starts_an_epoch_recorded_in_the_log(tmp_path: Path, signer: Signer) -> None:
    store = MemoryStore(PREFIX)
    new = Signer.generate("test-audit-2027")
    _session(tmp_path, store, signer, 3)
    time.sleep(0.01)
    switch_ms = int(time.time() * 1000)
    time.sleep(0.01)
    _session(tmp_path, store, new, 2)

    (rotate,) = [e for e in read_entries(store, LOG_ID) if e.get("event") == "rotate"]
    assert (rotate["old_key"], rotate["new_key"], rotate["epoch"]) == (
        _label(signer),
        _label(new),
        2,
    )
    assert latest_checkpoint(store, new).epoch == 2
    # Both keys, each in its window: valid, and the report names both.
    ring = Keyring(
        [
            TrustedKey(signer.verifier(), not_after_ms=switch_ms),
            TrustedKey(new.verifier(), not_before_ms=switch_ms),
        ]
    )
    reports, general = verify_store(store, ring)
    assert all_ok(reports, general), [str(f) for r in reports for f in r.findings]
    assert reports[0].keys == [_label(signer), _label(new)]
    # The old key alone vouches for what it signed, and no more: the new key's
    # objects are foreign (a warning naming that key), the log ends where it left it.
    reports, general = verify_store(store, signer.verifier())
    assert all_ok(reports, general), [str(f) for r in reports for f in r.findings]
    assert reports[0].entries == 3 + 1  # 3 entries and the stop record
    assert any(
        f.severity == "warning" and f"signed by key {_label(new)}" in f.message
        for f in reports[0].findings
    )


def test_retired_key_signing_after_its_end_date_is_a_finding(
    tmp_path: Path, signer: Signer
) -> None:
    store = MemoryStore(PREFIX)
    new = Signer.generate("test-audit-2027")
    _session(tmp_path, store, signer, 3)
    time.sleep(0.01)
    switch_ms = int(time.time() * 1000)
    time.sleep(0.01)
    _session(tmp_path, store, new, 2)
    _session(tmp_path, store, signer, 2)  # the old key, leaked, signs again
    ring = Keyring(
        [
            TrustedKey(signer.verifier(), not_after_ms=switch_ms),
            TrustedKey(new.verifier(), not_before_ms=switch_ms),
        ]
    )
    reports, general = verify_store(store, ring)
    assert not all_ok(reports, general)
    assert any("after its end date" in f.message for f in reports[0].findings)


def test_rotation_is_noticed_from_the_store_when_the_wal_predates_key_records(
    tmp_path: Path, signer: Signer
) -> None:
    store = MemoryStore(PREFIX)
    _session(tmp_path, store, signer, 3)
    state_file = tmp_path / "wal" / "published.json"
    state = TreeState.from_bytes(state_file.read_bytes())
    state_file.write_bytes(TreeState(state.size, state.range_hashes, state.last_leaf).to_bytes())
    new = Signer.generate("test-audit-2027")
    _session(tmp_path, store, new, 1)
    (rotate,) = [e for e in read_entries(store, LOG_ID) if e.get("event") == "rotate"]
    assert rotate["old_key"] == _label(signer)


def test_same_key_restart_is_not_a_rotation(tmp_path: Path, signer: Signer) -> None:
    store = MemoryStore(PREFIX)
    _session(tmp_path, store, signer, 3)
    _session(tmp_path, store, signer, 3)
    assert not [e for e in read_entries(store, LOG_ID) if e.get("event") == "rotate"]
    assert latest_checkpoint(store, signer).epoch == 1
