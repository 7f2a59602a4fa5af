"""The publisher: bundles and signed checkpoints that an auditor can verify, and
what store outages, crashes between steps and a second writer do to them.

Stores are our own MemoryStore (and subclasses of it that fail on purpose) and
the LocalStore; every published result is checked with the auditor's own
verify_store, not by re-reading our assumptions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from extproc.audit.verify import verify_store
from extproc.core import entry, layout
from extproc.core.bundle import bundle_bytes
from extproc.core.checkpoint import Checkpoint, make_extensions, open_checkpoint, sign_checkpoint
from extproc.core.claim import Claim
from extproc.core.findings import LogReport, all_ok
from extproc.core.keyring import Keyring, TrustedKey
from extproc.core.merkle import leaf_hash, root_of
from extproc.core.note import Signer
from extproc.errors import ForkError, LogRefusedError, StorageError
from extproc.log.appender import AuditLog
from extproc.log.publisher import Publisher, PublisherConfig
from extproc.log.wal import WAL, TreeState
from extproc.store.base import DEFAULT_READ_LIMIT, ObjectStore, Retention, RetentionPolicy
from extproc.store.local import LocalStore
from extproc.store.memory import MemoryStore
from extproc.store.s3 import S3Store
from tests.conftest import S3Server
from tests.helpers import eventually, read_entries, run

T = TypeVar("T")
LOG_ID = "pod-a.worker-0"
ORIGIN = layout.origin_for("audit.example/mesh", LOG_ID)
PREFIX = "audit/prod"
WRITER = "0123abcd"
RETENTION = RetentionPolicy("COMPLIANCE", 7)


class Crash(Exception):
    """Raised where the test kills the writer: nothing after it runs."""


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer.generate("test-audit")


@pytest.fixture(
    params=[
        "memory",
        "local",
        pytest.param("moto", marks=pytest.mark.s3),
        pytest.param("localstack", marks=[pytest.mark.s3, pytest.mark.strict_s3]),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The publisher's store: in memory, on disk, and real S3 (moto, and
    LocalStack, which enforces Object Lock and If-None-Match as AWS does)."""
    if request.param == "memory":
        return MemoryStore(PREFIX)
    if request.param == "local":
        return LocalStore(tmp_path / "store", PREFIX)
    server: S3Server = request.getfixturevalue(request.param)
    bucket = server.new_bucket(days=RETENTION.days)
    return S3Store(bucket, PREFIX, client=server.s3())


@dataclass
class Writer:
    """One writer process: its WAL, audit log and publisher."""

    wal: WAL
    log: AuditLog
    publisher: Publisher

    async def append(self, count: int) -> list[int]:
        start = self.log.size
        return list(
            await asyncio.gather(
                *(self.log.append({"kind": "request", "n": start + i}) for i in range(count))
            )
        )

    def crash(self) -> None:
        """The process dies: the WAL lock and files are all that is left."""
        self.log.close()


def open_writer(
    wal_dir: Path,
    store: ObjectStore,
    signer: Signer,
    *,
    wal: WAL | None = None,
    on_fenced: Callable[[str], None] | None = None,
    **config: Any,
) -> Writer:
    """Call from inside the event loop (the audit log needs one)."""
    wal = wal or WAL(wal_dir)
    audit_log = AuditLog(wal, wal.recover())
    settings: dict[str, Any] = {"max_age": 0.0, "retry_max_delay": 0.001, "retention": RETENTION}
    settings.update(config)
    cfg = PublisherConfig(LOG_ID, ORIGIN, **settings)
    publisher = Publisher(audit_log, wal, store, signer, cfg, writer_id=WRITER, on_fenced=on_fenced)
    return Writer(wal, audit_log, publisher)


async def published(w: Writer, size: int) -> None:
    """Wait for the run loop to publish a checkpoint covering `size` entries."""
    await eventually(lambda: w.log.published.size >= size)
    assert w.log.published.size == size


def verify(store: ObjectStore, signer: Signer) -> LogReport:
    reports, general = verify_store(store, signer.verifier(), "audit.example/mesh")
    findings = [str(f) for f in general] + [str(f) for r in reports for f in r.findings]
    assert all_ok(reports, general), findings
    assert [r.log_id for r in reports] == [LOG_ID]
    return reports[0]


def bundle_ranges(store: ObjectStore) -> list[tuple[int, int]]:
    ranges = []
    for obj in store.list(layout.log_prefix(store.prefix, LOG_ID)):
        name = layout.parse_key(store.prefix, obj.key)
        assert name is not None and name.kind in ("bundle", "checkpoint", "claim"), obj.key
        if name.bundle is not None:
            ranges.append((name.bundle.first, name.bundle.last))
    return ranges


def checkpoint_sizes(store: ObjectStore) -> list[int]:
    prefix = layout.log_prefix(store.prefix, LOG_ID) + "checkpoints/"
    return [int(o.key.rsplit("/", 1)[1]) for o in store.list(prefix)]


def latest_checkpoint(store: ObjectStore, signer: Signer) -> Checkpoint:
    size = checkpoint_sizes(store)[-1]
    data = store.get(layout.checkpoint_key(store.prefix, LOG_ID, size))
    return open_checkpoint(data, signer.verifier())


def assert_contiguous(ranges: list[tuple[int, int]], size: int) -> None:
    expected = 0
    for first, last in ranges:
        assert first == expected, ranges
        expected = last + 1
    assert expected == size


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


# --- a second writer on the same log id -----------------------------------------------------


def plant(store: ObjectStore, key: str, data: bytes) -> None:
    """An object written by someone else, retained by the bucket's default rule."""
    store.put_once(key, data, RETENTION.until(datetime.now(UTC)))


def other_writer_bundle(first: int, count: int) -> bytes:
    lines = [
        entry.encode({"v": 1, "seq": first + i, "prev": "", "kind": "request", "n": -1})
        for i in range(count)
    ]
    return bundle_bytes(lines, compress=False)


def verify_with_warnings(store: ObjectStore, signer: Signer) -> LogReport:
    """Valid, and every warning returned for the test to look at."""
    reports, general = verify_store(store, signer.verifier(), "audit.example/mesh")
    errors = [str(f) for r in reports for f in r.findings if f.severity == "error"]
    assert all_ok(reports, general), errors + [str(f) for f in general]
    (report,) = reports
    return report


def foreign_records(store: ObjectStore) -> list[dict[str, Any]]:
    return [e for e in read_entries(store, LOG_ID) if e.get("event") == "foreign"]


def recorded_objects(store: ObjectStore) -> list[str]:
    """Every object name the writer's `foreign` entries hold, in log order."""
    names: list[str] = []
    for record in foreign_records(store):
        names += [record["object"]] if "object" in record else record["objects"]
    return names


def test_foreign_bundle_at_next_key_starts_a_new_epoch(
    tmp_path: Path, signer: Signer, store: ObjectStore
) -> None:
    # An object planted where the writer must write next cannot be removed under
    # Object Lock: it must not stop the log (it used to fence it for good). On
    # S3 the refusal is the store's own (If-None-Match: PreconditionFailed).
    planted = layout.bundle_key(PREFIX, LOG_ID, 5, 9)

    async def scenario() -> None:
        # Bundles are cut by count only, so ours would be 5..9: exactly the planted key.
        w = open_writer(tmp_path / "wal", store, signer, bundle_max_entries=5, max_age=3600)
        await w.append(5)
        task = asyncio.create_task(w.publisher.run())
        await published(w, 5)
        plant(store, planted, other_writer_bundle(5, 5))
        await w.append(5)
        await eventually(lambda: w.publisher.epoch == 2)
        assert w.publisher.fenced is None
        await w.log.append({"kind": "request"})  # the log still takes entries
        w.publisher.stop()
        await task
        await w.publisher.close()
        assert w.log.published.size == w.log.durable_size
        w.crash()

    run(scenario)
    assert store.get(planted) == other_writer_bundle(5, 5)  # untouched
    (record,) = foreign_records(store)
    assert record["object"] == layout.relative(PREFIX, planted) and record["epoch"] == 2
    assert record["object"] == f"logs/{LOG_ID}/entries/{5:020d}-{9:020d}.jsonl"
    assert store.get(layout.claim_key(PREFIX, LOG_ID, 5, epoch=2))  # the new epoch's claim
    assert latest_checkpoint(store, signer).epoch == 2
    report = verify_with_warnings(store, signer)
    warnings = [f.message for f in report.findings if f.key == planted]
    assert warnings and "recorded by the writer in entry" in warnings[0]
    # 10 requests, the writer's record, one more request and the stop entry; the
    # planted bundle's 5 lines are not read.
    assert report.entries == 13


def _planted_claim(signer: Signer, w: Writer, *, signed: bool) -> bytes:
    theirs = other_writer_bundle(5, 3)
    claim = Claim(5, 7, leaf_hash(theirs.splitlines()[-1]).hex(), "other", 1, ORIGIN)
    return (claim.sign(signer) if signed else claim).to_bytes()


def test_second_writer_claim_signed_by_the_log_key_fences_the_log(
    tmp_path: Path, signer: Signer
) -> None:
    """Another process with this log's key and log id cut 5..7 where we cut 5..9:
    the claim at 5 collides, and only stopping avoids a fork."""
    store = MemoryStore(PREFIX)
    fenced_reasons: list[str] = []

    async def scenario() -> None:
        w = open_writer(
            tmp_path / "wal",
            store,
            signer,
            bundle_max_entries=5,
            max_age=3600,
            on_fenced=fenced_reasons.append,
        )
        await w.publisher.reconcile()
        await w.append(5)
        await w.publisher.publish()
        plant(store, layout.claim_key(PREFIX, LOG_ID, 5), _planted_claim(signer, w, signed=True))
        plant(store, layout.bundle_key(PREFIX, LOG_ID, 5, 7), other_writer_bundle(5, 3))
        await w.append(5)
        with pytest.raises(ForkError, match="another writer"):
            await w.publisher.publish()
        task = asyncio.create_task(w.publisher.run())
        await asyncio.wait_for(task, 10)  # run() returns once fenced
        assert w.publisher.fenced is not None and fenced_reasons == [w.publisher.fenced]
        with pytest.raises(LogRefusedError, match="fenced"):
            await w.log.append({"kind": "request"})
        with pytest.raises(ForkError):
            await w.publisher.close()
        w.crash()

    run(scenario)
    # The writer stopped before writing anything over the other writer's range...
    assert checkpoint_sizes(store) == [5]
    assert bundle_ranges(store) == [(0, 4), (5, 7)]
    # ...and the auditor names the intruder's bundle.
    reports, general = verify_store(store, signer.verifier())
    assert not all_ok(reports, general)


def test_planted_unsigned_claim_at_next_key_starts_a_new_epoch(
    tmp_path: Path, signer: Signer
) -> None:
    store = MemoryStore(PREFIX)
    planted = layout.claim_key(PREFIX, LOG_ID, 5)

    async def scenario() -> None:
        w = open_writer(tmp_path / "wal", store, signer, bundle_max_entries=5, max_age=3600)
        await w.publisher.reconcile()
        await w.append(5)
        await w.publisher.publish()
        plant(store, planted, _planted_claim(signer, w, signed=False))
        plant(store, layout.bundle_key(PREFIX, LOG_ID, 5, 7), other_writer_bundle(5, 3))
        await w.append(5)
        await w.publisher.publish(final=True)
        assert (w.publisher.epoch, w.publisher.fenced) == (2, None)
        assert w.log.published.size == 11  # 10 entries and the writer's one record of both
        w.crash()

    run(scenario)
    bundle = layout.bundle_key(PREFIX, LOG_ID, 5, 7)
    (record,) = foreign_records(store)
    assert record["count"] == 2
    assert record["objects"] == [layout.relative(PREFIX, k) for k in (planted, bundle)]
    report = verify_with_warnings(store, signer)
    flagged = {f.key: f.severity for f in report.findings}
    assert flagged[planted] == flagged[bundle] == "warning"  # both recorded by the writer
    assert report.entries == 11


def _checkpoint_by(signer: Signer, size: int, root: bytes, origin: str = ORIGIN) -> bytes:
    cp = Checkpoint(origin, size, root, make_extensions(1, "ffff"))
    return sign_checkpoint(cp, signer)


FORKED_CHECKPOINTS = {
    "same-key-other-root": lambda signer, root: _checkpoint_by(signer, 4, b"\x01" * 32),
    "same-key-other-origin": lambda signer, root: _checkpoint_by(signer, 4, root, "x/" + LOG_ID),
}
FOREIGN_CHECKPOINTS = {
    "other-key": lambda signer, root: _checkpoint_by(Signer.generate("intruder"), 4, root),
    "not-a-checkpoint": lambda signer, root: b"garbage",
}


@pytest.mark.parametrize("clash", FORKED_CHECKPOINTS.values(), ids=FORKED_CHECKPOINTS.keys())
def test_different_checkpoint_by_the_log_key_at_next_key_is_a_fork(
    tmp_path: Path,
    signer: Signer,
    clash: Callable[[Signer, bytes], bytes],
) -> None:
    store = MemoryStore(PREFIX)

    async def scenario() -> None:
        w = open_writer(tmp_path / "wal", store, signer)
        await w.publisher.reconcile()
        await w.append(4)
        root = root_of([d.leaf for d in w.log.durable_from(w.log.published.size)])
        plant(store, layout.checkpoint_key(PREFIX, LOG_ID, 4), clash(signer, root))
        with pytest.raises(ForkError, match="another writer"):
            await w.publisher.publish()
        assert w.log.published.size == 0
        w.crash()

    run(scenario)


@pytest.mark.parametrize("clash", FOREIGN_CHECKPOINTS.values(), ids=FOREIGN_CHECKPOINTS.keys())
def test_foreign_checkpoint_at_next_key_is_stepped_over(
    tmp_path: Path,
    signer: Signer,
    clash: Callable[[Signer, bytes], bytes],
) -> None:
    store = MemoryStore(PREFIX)
    planted = layout.checkpoint_key(PREFIX, LOG_ID, 4)

    async def scenario() -> None:
        w = open_writer(tmp_path / "wal", store, signer)
        await w.publisher.reconcile()
        await w.append(4)
        root = root_of([d.leaf for d in w.log.durable_from(w.log.published.size)])
        plant(store, planted, clash(signer, root))
        await w.publisher.publish()
        # The writer's record of the plant is entry 4; the tree is signed at 5 instead.
        assert w.log.published.size == 5 and w.publisher.epoch == 2
        w.crash()

    run(scenario)
    assert checkpoint_sizes(store) == [4, 5]
    report = verify_with_warnings(store, signer)
    assert [f.severity for f in report.findings if f.key == planted] == ["warning"]


def test_own_earlier_checkpoint_at_next_key_is_accepted(tmp_path: Path, signer: Signer) -> None:
    # Same tree signed earlier (a put whose reply was lost): only the time differs.
    store = MemoryStore(PREFIX)

    async def scenario() -> None:
        w = open_writer(tmp_path / "wal", store, signer)
        await w.publisher.reconcile()
        await w.append(4)
        root = root_of([d.leaf for d in w.log.durable_from(w.log.published.size)])
        earlier = _checkpoint_by(signer, 4, root)
        plant(store, layout.checkpoint_key(PREFIX, LOG_ID, 4), earlier)
        await w.publisher.publish()
        assert w.log.published.size == 4
        assert store.get(layout.checkpoint_key(PREFIX, LOG_ID, 4)) == earlier
        w.crash()

    run(scenario)


def test_planted_object_at_every_next_key_never_stops_the_log(
    tmp_path: Path, signer: Signer
) -> None:
    """Claims planted for the next epochs too: each costs the attacker an object and
    the writer an entry, and publication goes on."""
    store = MemoryStore(PREFIX)

    async def scenario() -> None:
        w = open_writer(tmp_path / "wal", store, signer, bundle_max_entries=100)
        await w.publisher.reconcile()
        await w.append(3)
        junk = b'{"bundle":"x"}'
        for epoch in (1, 2, 3, 4):
            plant(store, layout.claim_key(PREFIX, LOG_ID, 0, epoch), junk)
        await w.publisher.publish(final=True)
        assert w.publisher.epoch == 5 and w.publisher.fenced is None
        assert w.log.published.size == w.log.durable_size
        w.crash()

    run(scenario)
    recorded = set(recorded_objects(store))
    assert recorded == {
        layout.relative(PREFIX, layout.claim_key(PREFIX, LOG_ID, 0, e)) for e in (1, 2, 3, 4)
    }
    assert store.get(layout.claim_key(PREFIX, LOG_ID, 0, 5))
    verify_with_warnings(store, signer)


# --- reconcile refuses a store this WAL did not write ----------------------------------------


def _store_ahead(store: MemoryStore, signer: Signer, w: Writer) -> None:
    leaves = [d.leaf for d in w.log.durable_from(w.log.published.size)]
    plant(
        store,
        layout.checkpoint_key(PREFIX, LOG_ID, 50),
        _checkpoint_by(signer, 50, root_of(leaves)),
    )


def _store_wiped(store: MemoryStore, signer: Signer, w: Writer) -> None:
    store.objects.clear()
    store.retentions.clear()


def _bundle_of_another_log(store: MemoryStore, signer: Signer, w: Writer) -> None:
    plant(store, layout.bundle_key(PREFIX, LOG_ID, 5, 9), other_writer_bundle(5, 5))


def _bundle_with_different_entries(store: MemoryStore, signer: Signer, w: Writer) -> None:
    plant(store, layout.bundle_key(PREFIX, LOG_ID, 5, 7), other_writer_bundle(5, 3))


def _bundle_past_a_gap(store: MemoryStore, signer: Signer, w: Writer) -> None:
    plant(store, layout.bundle_key(PREFIX, LOG_ID, 7, 8), other_writer_bundle(7, 2))


def _checkpoint_of_another_key(store: MemoryStore, signer: Signer, w: Writer) -> None:
    leaves = [d.leaf for d in w.log.entries(w.log.published.size, 2)]
    data = _checkpoint_by(Signer.generate("intruder"), 7, root_of(leaves))
    plant(store, layout.checkpoint_key(PREFIX, LOG_ID, 7), data)


def _checkpoint_of_other_entries(store: MemoryStore, signer: Signer, w: Writer) -> None:
    data = _checkpoint_by(signer, 7, b"\x02" * 32)
    plant(store, layout.checkpoint_key(PREFIX, LOG_ID, 7), data)


STORE_MISMATCHES = {
    "checkpoint-beyond-wal-size": (_store_ahead, "holds 8 entries"),
    "store-lost-the-published-checkpoint": (_store_wiped, "published up to size 5"),
    "checkpoint-of-other-entries": (_checkpoint_of_other_entries, "root differs"),
}
# Not signed by this log's key and not this WAL's entries: recorded, then stepped over.
FOREIGN_AT_STARTUP = {
    "bundle-not-in-this-wal": _bundle_of_another_log,
    "bundle-with-different-entries": _bundle_with_different_entries,
    "bundle-past-a-gap": _bundle_past_a_gap,
    "checkpoint-of-another-key": _checkpoint_of_another_key,
}


@pytest.mark.parametrize(("tamper", "message"), STORE_MISMATCHES.values(), ids=STORE_MISMATCHES)
def test_reconcile_refuses_store_this_wal_did_not_write(
    tmp_path: Path,
    signer: Signer,
    tamper: Callable[[MemoryStore, Signer, Writer], None],
    message: str,
) -> None:
    store = MemoryStore(PREFIX)

    async def first_run() -> None:
        w = open_writer(tmp_path / "wal", store, signer)
        await w.publisher.reconcile()
        await w.append(5)
        await w.publisher.publish()
        await w.append(3)  # durable, not published
        w.crash()

    async def restart() -> None:
        w = open_writer(tmp_path / "wal", store, signer)
        assert (w.log.published.size, w.log.durable_size) == (5, 8)
        tamper(store, signer, w)
        with pytest.raises(ForkError, match=message):
            await w.publisher.reconcile()
        w.crash()
        # run() turns the same finding into fencing: no appends, no publication.
        w = open_writer(tmp_path / "wal", store, signer)
        objects = dict(store.objects)
        await w.publisher.run()
        assert w.publisher.fenced is not None
        with pytest.raises(LogRefusedError):
            w.log.append_nowait({"kind": "request"})
        assert store.objects == objects
        w.crash()

    run(first_run)
    run(restart)


@pytest.mark.parametrize("plant_it", FOREIGN_AT_STARTUP.values(), ids=FOREIGN_AT_STARTUP)
def test_reconcile_records_foreign_objects_and_goes_on(
    tmp_path: Path,
    signer: Signer,
    plant_it: Callable[[MemoryStore, Signer, Writer], None],
) -> None:
    store = MemoryStore(PREFIX)

    async def first_run() -> None:
        w = open_writer(tmp_path / "wal", store, signer)
        await w.publisher.reconcile()
        await w.append(5)
        await w.publisher.publish()
        await w.append(3)  # durable, not published
        w.crash()

    async def restart() -> None:
        w = open_writer(tmp_path / "wal", store, signer)
        plant_it(store, signer, w)
        await w.publisher.reconcile()
        assert w.publisher.fenced is None
        await w.publisher.close()
        assert w.log.published.size == w.log.durable_size
        w.crash()

    run(first_run)
    before = dict(store.objects)
    run(restart)
    assert all(store.objects[k] == v for k, v in before.items())
    assert len(foreign_records(store)) == 1
    verify_with_warnings(store, signer)


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
