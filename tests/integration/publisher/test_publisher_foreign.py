"""The publisher and objects it did not write: a second writer on the same
log id, objects planted at the next key, and a store this WAL did not
write (reconcile refuses or records them and goes on).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from extproc.audit.verify import verify_store
from extproc.core import entry, layout
from extproc.core.bundle import bundle_bytes
from extproc.core.checkpoint import Checkpoint, make_extensions, sign_checkpoint
from extproc.core.claim import Claim
from extproc.core.findings import LogReport, all_ok
from extproc.core.merkle import leaf_hash, root_of
from extproc.core.note import Signer
from extproc.errors import ForkError, LogRefusedError
from extproc.store.base import ObjectStore
from extproc.store.memory import MemoryStore
from tests.helpers import eventually, read_entries, run
from tests.publishing import (
    LOG_ID,
    ORIGIN,
    PREFIX,
    RETENTION,
    Writer,
    bundle_ranges,
    checkpoint_sizes,
    latest_checkpoint,
    open_writer,
    published,
)

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
