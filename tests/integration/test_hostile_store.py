"""A store that holds hostile objects: every read is budgeted, foreign objects of
any name or count cost the writer O(1) each and never turn a log INVALID.

The security review's attacks 3 and 4: a decompression bomb under a log's
`entries/` (1 MB that expands to 1 GiB made `verify`, `search` and the
self-audit peak at 2.1 GB), a FIFO or a symlink to /dev/zero in a local store
(a hang, memory exhausted), 400 planted claims (publication stopped for more
than 120 s) and objects with names off the layout (the log INVALID for good).

Logs are written by the real writer; the store is our in-memory one, wrapped
to count its calls (the O(1) claims are counted, not timed), or a real local
directory for what only a file system can hold.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extproc.audit.reader import LogReader
from extproc.audit.search import Filters, StoreSearch
from extproc.audit.verify import AuditOptions, audit_store, verify_log, verify_store
from extproc.core import layout
from extproc.core.bundle import bundle_bytes
from extproc.core.findings import ERROR, WARNING, LogReport, all_ok
from extproc.core.note import Signer
from extproc.errors import ForeignObjectError, ObjectTooLargeError
from extproc.log.foreign import MAX_RECORDED_NAMES
from extproc.log.selfaudit import OK, SelfAudit
from extproc.store.base import (
    DEFAULT_READ_LIMIT,
    ObjectInfo,
    ObjectStore,
    Retention,
    RetentionPolicy,
)
from extproc.store.local import LocalStore
from extproc.store.memory import MemoryStore
from extproc.store.s3 import S3Store, _read_capped
from tests.attacks import (
    OFF_LAYOUT,
    PLANTED_CLAIMS,
    gzip_bomb,
    plant_claims,
    plant_non_files,
    plant_off_layout,
)
from tests.budget import MIB, within_budget
from tests.conftest import MotoServer, run_cli
from tests.helpers import read_entries, run, write_log
from tests.publishing import LOG_ID, PREFIX, open_writer, published


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """1 GiB of zeros as gzip: about 1 MB."""
    return gzip_bomb()


class CountingStore(MemoryStore):
    """The in-memory store, counting every call by kind and every key read."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__(prefix)
        self.calls: Counter[str] = Counter()
        self.read_keys: list[str] = []

    def put_once(self, key: str, data: bytes, retention: Retention | None) -> None:
        self.calls["put"] += 1
        super().put_once(key, data, retention)

    def get(self, key: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        self.calls["get"] += 1
        self.read_keys.append(key)
        return super().get(key, limit)

    def confirm(self, key: str, sha256: bytes) -> Any:
        self.calls["confirm"] += 1
        return super().confirm(key, sha256)

    def list(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        self.calls["list"] += 1
        return super().list(prefix, start_after)


def _log(tmp_path: Path, signer: Signer, store: MemoryStore, **config: Any) -> None:
    """24 entries in bundles of 8, published by the real writer."""
    entries = [{"kind": "request", "rid": f"r{i}"} for i in range(24)]
    config.setdefault("retention", RetentionPolicy("COMPLIANCE", 7))
    write_log(store, signer, tmp_path / "wal", LOG_ID, entries, bundle_max_entries=8, **config)


def _findings(report: LogReport, severity: str) -> list[str]:
    return [str(f) for f in report.findings if f.severity == severity]


# --- attack 3: decompression bombs and objects that are not files -------------------------


def test_unclaimed_gzip_bomb_is_reported_and_never_read(
    tmp_path: Path, signer: Signer, bomb: bytes
) -> None:
    store = CountingStore()
    _log(tmp_path, signer, store, gzip=True)
    planted = layout.bundle_key("", LOG_ID, 8, 30, gzip=True)  # no claim names it
    store.put_once(planted, bomb, None)
    store.read_keys.clear()
    with within_budget(memory=64 * MIB, cpu=30.0):
        reports, general = verify_store(store, signer.verifier())
        search = StoreSearch(store, Filters(request_id="r3"), verifier=signer.verifier())
        matches = list(search.matches())
    assert all_ok(reports, general) and len(matches) == 1
    assert planted not in store.read_keys  # the body of an unclaimed bundle is never read
    (warning,) = [f for f in reports[0].findings if f.key == planted]
    assert warning.severity == WARNING and "foreign object" in warning.message


def test_writer_restart_and_self_audit_never_read_a_planted_bomb(
    tmp_path: Path, signer: Signer, bomb: bytes
) -> None:
    # ~10 MB of these put the writer into a crash loop: its start-up self-audit
    # decompressed every bundle listed.
    store = CountingStore(PREFIX)
    planted = [layout.bundle_key(PREFIX, LOG_ID, 0, 40 + i, gzip=True) for i in range(10)]

    async def first_run() -> None:
        w = open_writer(tmp_path / "wal", store, signer, gzip=True)
        await w.publisher.reconcile()
        await w.append(5)
        await w.publisher.publish()
        w.crash()

    async def restart() -> None:
        w = open_writer(tmp_path / "wal", store, signer, gzip=True)
        await w.publisher.reconcile()
        outcome = await SelfAudit(w.publisher, w.wal, interval=3600).audit_once()
        assert outcome.result == OK, outcome.problems
        w.crash()

    run(first_run)
    for key in planted:
        store.put_once(key, bomb, None)
    store.read_keys.clear()
    with within_budget(memory=64 * MIB, cpu=30.0):
        run(restart)
    assert not set(planted) & set(store.read_keys)


def test_gzip_bomb_at_a_claimed_key_is_cut_at_the_bound_detected(
    tmp_path: Path, signer: Signer, bomb: bytes
) -> None:
    # The attacker replaced the log's own bundle (a store without versions):
    # it is read, decompression stops one byte past the bound, the rest of the
    # log is verified as far as it can be.
    store = MemoryStore()
    _log(tmp_path, signer, store, gzip=True)
    store.overwrite(layout.bundle_key("", LOG_ID, 8, 15, gzip=True), bomb)
    reader = LogReader.open(store, LOG_ID, max_bundle_bytes=4 * MIB)
    with within_budget(memory=16 * MIB, cpu=30.0):
        report = verify_log(reader, signer.verifier())
    errors = _findings(report, ERROR)
    assert any("over the reader's bound" in e for e in errors), errors
    assert report.entries == 8  # the bundle before it verified
    assert report.bundles == 3


@pytest.mark.parametrize("log_gzip", [False, True], ids=["log-jsonl", "log-gzip"])
def test_second_encoding_of_a_claimed_range_is_foreign_whichever_sorts_first(
    tmp_path: Path, signer: Signer, bomb: bytes, log_gzip: bool
) -> None:
    """A claim names a range, not its encoding: a `.jsonl.gz` bomb (or a `.jsonl`
    of made-up entries, which sorts first) next to the log's bundle is read within
    its bound, found not to be what the claim says, and reported as foreign."""
    store = MemoryStore()
    _log(tmp_path, signer, store, gzip=log_gzip)
    planted = layout.bundle_key("", LOG_ID, 8, 15, gzip=not log_gzip)
    fake = bundle_bytes([b'{"v":1}'] * 8, compress=False)
    store.put_once(planted, fake if log_gzip else bomb, None)
    reader = LogReader.open(store, LOG_ID, max_bundle_bytes=4 * MIB)
    with within_budget(memory=16 * MIB, cpu=30.0):
        report = verify_log(reader, signer.verifier())
    assert report.ok, [str(f) for f in report.findings]
    assert report.entries == 24
    (finding,) = [f for f in report.findings if f.key == planted]
    assert finding.severity == WARNING and "a second bundle for the range claimed at 8" in (
        finding.message
    )


def test_bundle_over_the_readers_bound_by_its_listed_size_is_not_read(
    tmp_path: Path, signer: Signer
) -> None:
    store = CountingStore()
    _log(tmp_path, signer, store)
    key = layout.bundle_key("", LOG_ID, 16, 23)
    store.overwrite(key, store.objects[key] + b"x" * (70 * 1024))
    store.read_keys.clear()
    reader = LogReader.open(store, LOG_ID, max_bundle_bytes=64 * 1024)
    report = verify_log(reader, signer.verifier())
    assert key not in store.read_keys
    assert any(f.key == key and "over the bound" in f.message for f in report.findings)


@pytest.mark.parametrize("kind", ["memory", "local", pytest.param("moto", marks=pytest.mark.s3)])
def test_reads_are_capped_even_when_the_listing_lies(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    store: ObjectStore
    if kind == "moto":
        server: MotoServer = request.getfixturevalue("moto")
        store = S3Store(server.new_bucket(lock=False), client=server.s3())
    else:
        store = MemoryStore() if kind == "memory" else LocalStore(tmp_path / "s")
    store.put_once("logs/a/checkpoints/x", b"y" * 5000, None)
    with pytest.raises(ObjectTooLargeError, match="over the bound of 4096"):
        store.get("logs/a/checkpoints/x", 4096)
    assert store.get("logs/a/checkpoints/x", 5000) == b"y" * 5000
    # The reader checks the listed size first; a listing that says less is not believed.
    reader = LogReader(store, "a", LogReader.open(store, "a").objects)
    reader.objects.sizes["logs/a/checkpoints/x"] = 10
    with pytest.raises(ObjectTooLargeError):
        reader.read("logs/a/checkpoints/x", 4096)


class EndlessBody:
    """An S3 response body that never ends (what a proxy or a broken store can send)."""

    def __init__(self) -> None:
        self.read_bytes = 0
        self.closed = False

    def read(self, amt: int) -> bytes:
        self.read_bytes += amt
        return bytes(amt)

    def close(self) -> None:
        self.closed = True


def test_s3_read_stops_one_byte_past_the_bound_whatever_content_length_says() -> None:
    body = EndlessBody()
    with pytest.raises(ObjectTooLargeError):
        _read_capped("logs/a/claims/x", {"Body": body, "ContentLength": 10}, 4096)
    assert body.read_bytes == 4097 and body.closed
    with pytest.raises(ObjectTooLargeError, match="holds 5000 bytes"):
        _read_capped("logs/a/claims/x", {"Body": EndlessBody(), "ContentLength": 5000}, 4096)


def test_fifo_and_symlinks_in_a_local_store_are_foreign_objects_detected(
    tmp_path: Path, signer: Signer
) -> None:
    root = tmp_path / "store"
    store = LocalStore(root)
    entries = [{"kind": "request", "rid": f"r{i}"} for i in range(12)]
    write_log(store, signer, tmp_path / "wal", LOG_ID, entries, bundle_max_entries=4)
    planted = plant_non_files(root, root / "logs" / LOG_ID)
    for key in planted:
        if "checkpoints" in key or "entries/0" in key:
            with pytest.raises(ForeignObjectError):
                store.get(key)
    # The real command: it must end (a FIFO read would hang, /dev/zero never ends).
    result = run_cli("verify", str(root), "--vkey", signer.verifier().to_text())
    assert result.returncode == 0, result.stdout + result.stderr
    for key, what in planted.items():
        line = next(x for x in result.stdout.splitlines() if key in x)
        assert line.lstrip().startswith("warning") and what in line, line
    # The name's bytes (not UTF-8) and its escape sequence, escaped.
    assert "entries/\\udcff\\udcfe\\x1b[2J" in result.stdout and "\x1b" not in result.stdout


def test_log_bundle_replaced_by_a_fifo_is_an_error_not_a_hang(
    tmp_path: Path, signer: Signer
) -> None:
    root = tmp_path / "store"
    entries = [{"kind": "request", "rid": f"r{i}"} for i in range(12)]
    write_log(LocalStore(root), signer, tmp_path / "wal", LOG_ID, entries, bundle_max_entries=4)
    bundle = root / layout.bundle_key("", LOG_ID, 4, 7)
    bundle.unlink()
    os.mkfifo(bundle)
    result = run_cli("verify", str(root), "--vkey", signer.verifier().to_text())
    assert result.returncode == 1
    assert "a FIFO, not a file" in result.stdout


def test_writer_steps_over_a_fifo_at_its_next_key(tmp_path: Path, signer: Signer) -> None:
    root = tmp_path / "store"
    store = LocalStore(root, PREFIX)

    async def scenario() -> None:
        w = open_writer(tmp_path / "wal", store, signer, bundle_max_entries=5, retention=None)
        await w.publisher.reconcile()
        await w.append(5)
        await w.publisher.publish()
        fifo = root / layout.claim_key(PREFIX, LOG_ID, 5)
        os.mkfifo(fifo)
        await w.append(5)
        await w.publisher.publish(final=True)
        assert w.publisher.epoch == 2 and w.log.published.size == 11
        w.crash()

    run(scenario, timeout=20)
    records = [e for e in read_entries(store, LOG_ID) if e.get("event") == "foreign"]
    assert [r["object"] for r in records] == [
        layout.relative(PREFIX, layout.claim_key(PREFIX, LOG_ID, 5))
    ]


# --- attack 4: planted objects of any name or count ---------------------------------------


def _publish_with_planted_claims(tmp_path: Path, signer: Signer, planted: int) -> CountingStore:
    """Five entries published; then `planted` claims at the next position, epochs
    1..planted, and five more entries published in one call."""
    store = CountingStore(PREFIX)

    async def scenario() -> None:
        w = open_writer(tmp_path / f"wal{planted}", store, signer, bundle_max_entries=100)
        await w.publisher.reconcile()
        await w.append(5)
        await w.publisher.publish()
        plant_claims(store, LOG_ID, w.log.published.size, planted)
        store.calls.clear()
        await w.append(5)
        await w.publisher.publish(final=True)  # one call: no back-off, whatever was planted
        assert w.publisher.fenced is None
        assert w.log.published.size == w.log.durable_size == 11  # with the writer's record
        assert w.publisher.epoch == planted + 1
        w.crash()

    run(scenario)
    return store


def test_planted_claims_cost_o1_each_and_never_stop_publication(
    tmp_path: Path, signer: Signer
) -> None:
    one = _publish_with_planted_claims(tmp_path, signer, 1)
    many = _publish_with_planted_claims(tmp_path, signer, PLANTED_CLAIMS)
    # The same store calls for 400 planted claims as for one: a collision, one
    # listing, one jump to an epoch above them all.
    assert many.calls == one.calls, (many.calls, one.calls)
    assert many.calls["get"] <= 2 and many.calls["put"] <= 4
    (record,) = [e for e in read_entries(many, LOG_ID) if e.get("event") == "foreign"]
    assert record["count"] == 400 and len(record["objects"]) == MAX_RECORDED_NAMES
    reports, general = verify_store(many, signer.verifier())
    assert all_ok(reports, general)
    warnings = _findings(reports[0], WARNING)
    assert sum("recorded by the writer in entry 10," in w for w in warnings) == MAX_RECORDED_NAMES
    assert any("counted 400 foreign objects" in w for w in warnings)


def test_publication_goes_on_in_the_run_loop_after_400_planted_claims(
    tmp_path: Path, signer: Signer
) -> None:
    store = MemoryStore(PREFIX)

    async def scenario() -> None:
        w = open_writer(tmp_path / "wal", store, signer, max_age=0.05, retry_max_delay=30.0)
        await w.publisher.reconcile()
        task = asyncio.create_task(w.publisher.run())
        await w.append(3)
        await published(w, 3)
        plant_claims(store, LOG_ID, 3, PLANTED_CLAIMS)
        await w.append(3)
        await published(w, 7)  # within eventually()'s 10 s; it used to take > 120 s
        w.publisher.stop()
        await task
        w.crash()

    run(scenario)


def test_objects_off_the_layout_are_recorded_once_and_verify_with_warnings(
    tmp_path: Path, signer: Signer
) -> None:
    store = CountingStore()
    _log(tmp_path, signer, store)
    keys = plant_off_layout(store, LOG_ID)
    store.read_keys.clear()
    _log(tmp_path, signer, store)  # the writer starts again: it lists, reads none of them
    assert not set(keys) & set(store.read_keys)
    (record,) = [e for e in read_entries(store, LOG_ID) if e.get("event") == "foreign"]
    assert record["count"] == len(OFF_LAYOUT)
    assert all(len(name) < 300 for name in record["objects"])  # the 1000-char name is cut
    reports, general = verify_store(store, signer.verifier())
    assert all_ok(reports, general), [str(f) for f in reports[0].findings]
    flagged = {f.key: f for f in reports[0].findings}
    assert all(flagged[key].severity == WARNING for key in keys)
    assert "recorded by the writer" in flagged[keys[0]].message
    assert "counted 6 foreign objects" in flagged[keys[2]].message  # cut: counted, not named


def test_many_foreign_objects_are_summarised_not_listed_one_by_one(
    tmp_path: Path, signer: Signer
) -> None:
    store = MemoryStore()
    _log(tmp_path, signer, store)
    for i in range(500):
        store.put_once(f"logs/{LOG_ID}/junk/{i:04d}", b"", None)
    (report,) = verify_store(store, signer.verifier())[0]
    assert report.ok
    assert len(report.findings) < 110
    assert any("400 more foreign objects" in f.message for f in report.findings)


def test_stray_keys_under_logs_are_warnings(tmp_path: Path, signer: Signer) -> None:
    store = MemoryStore()
    _log(tmp_path, signer, store)
    store.put_once("logs/bad id!/x", b"", None)
    result = audit_store(store, signer.verifier(), AuditOptions())
    assert result.ok
    assert [f.severity for f in result.general] == [WARNING]


def test_planted_bundles_at_every_length_are_stepped_over(tmp_path: Path, signer: Signer) -> None:
    """Bundle keys name a range: the writer cuts the next free one, one set
    lookup per length, and waits for an entry more only if all are taken."""
    store = MemoryStore(PREFIX)

    async def scenario() -> None:
        w = open_writer(tmp_path / "wal", store, signer, bundle_max_entries=4, max_age=3600)
        await w.publisher.reconcile()
        await w.append(4)
        await w.publisher.publish()
        for last in range(4, 4 + 6):  # every range from 4 the writer could cut, and two more
            store.put_once(layout.bundle_key(PREFIX, LOG_ID, 4, last), b"x", None)
        await w.append(8)
        await w.publisher.publish(final=True)
        assert w.log.published.size == w.log.durable_size
        w.crash()

    run(scenario)
    reports, general = verify_store(store, signer.verifier(), "audit.example/mesh")
    assert all_ok(reports, general)
    assert reports[0].entries == 4 + 8 + 1  # with the writer's record
