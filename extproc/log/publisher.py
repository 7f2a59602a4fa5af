"""The publisher: seals durable entries into bundles and signs checkpoints.

Every object is written once. A write that finds an object already there is
accepted only if the object is what this writer would have written (its own
earlier attempt); anything else means another writer on the same log id, and
publishing stops for good (fenced) instead of forking the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any, TypeVar

from extproc import metrics
from extproc.core import entry, layout
from extproc.core.checkpoint import Checkpoint, make_extensions, open_checkpoint, sign_checkpoint
from extproc.core.claim import Claim
from extproc.core.merkle import CompactRange
from extproc.core.note import Signer
from extproc.errors import (
    BackpressureError,
    ForkError,
    ObjectExistsError,
    ObjectNotFoundError,
    StorageError,
    VerificationError,
)
from extproc.log.appender import AuditLog, Durable
from extproc.log.wal import WAL, TreeState
from extproc.store.base import ObjectStore, RetentionPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class PublisherConfig:
    log_id: str
    origin: str
    bundle_max_entries: int = 10_000
    bundle_max_bytes: int = 16 << 20
    max_age: float = 0.5  # seconds an entry may wait before its bundle is sealed
    gzip: bool = False
    retention: RetentionPolicy | None = None
    retry_max_delay: float = 30.0


def bundle_bytes(lines: list[bytes], *, compress: bool) -> bytes:
    data = b"\n".join(lines) + b"\n"
    # mtime=0 keeps the bytes deterministic, so a retried put is byte-identical.
    return gzip.compress(data, compresslevel=6, mtime=0) if compress else data


def bundle_lines(data: bytes, *, compressed: bool) -> bytes:
    """The newline-terminated lines of a bundle object, decompressed if needed."""
    if compressed:
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise VerificationError(f"bundle is not valid gzip: {e}") from e
    return data


class Publisher:
    def __init__(
        self,
        audit_log: AuditLog,
        wal: WAL,
        store: ObjectStore,
        signer: Signer,
        config: PublisherConfig,
        *,
        writer_id: str,
        wall_clock: Callable[[], float] = time.time,
        on_fenced: Callable[[str], None] | None = None,
    ) -> None:
        self.log = audit_log
        self.wal = wal
        self.store = store
        self.signer = signer
        self.config = config
        self.writer_id = writer_id
        self._wall_clock = wall_clock
        self._on_fenced = on_fenced
        self.tree: CompactRange = audit_log.published.compact_range()
        self.last_leaf = audit_log.published.last_leaf
        self.fenced: str | None = None
        self.reconciled = False
        self.checkpoints_written = 0
        self._prefix = store.prefix
        self._stopping = False
        audit_log.wake_threshold = config.bundle_max_entries
        # Store and state-file calls block: a small pool of our own, not the
        # loop's default executor, keeps the thread (and malloc arena) count
        # flat over days of uptime.
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="publish")

    def _io(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # --- where things are -------------------------------------------------------------

    @property
    def bundled(self) -> int:
        """Entries already in bundles in the store (tree.size)."""
        return self.tree.size

    def _unbundled(self) -> list[Durable]:
        """Durable entries not yet in a bundle, oldest first (one bundle's worth at most)."""
        offset = self.bundled - self.log.published.size
        out: list[Durable] = []
        size = 0
        for d in islice(self.log.unpublished, offset, None):
            if out and (
                len(out) >= self.config.bundle_max_entries
                or size + len(d.line) + 1 > self.config.bundle_max_bytes
            ):
                break
            out.append(d)
            size += len(d.line) + 1
        return out

    # --- startup ------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Line up the WAL with what the store already holds for this log.

        Covers a crash between a put and the WAL state update, and refuses to
        go on (ForkError) if the store holds something this WAL did not write.
        """
        cfg = self.config
        objects = await self._io(
            lambda: list(self.store.list(layout.log_prefix(self._prefix, cfg.log_id)))
        )
        checkpoints: list[int] = []
        bundles: list[layout.BundleName] = []
        for obj in objects:
            name = layout.parse_key(self._prefix, obj.key)
            if name and name.kind == "checkpoint" and name.size is not None:
                checkpoints.append(name.size)
            elif name and name.kind == "bundle" and name.bundle is not None:
                bundles.append(name.bundle)
        published, wal_size = self.log.published.size, self.log.durable_size
        latest = max(checkpoints, default=0)
        if latest > wal_size:
            raise ForkError(
                f"log {cfg.log_id}: the store has a checkpoint at size {latest} but this WAL "
                f"holds {wal_size} entries: another writer uses this log id, or this is "
                "not the WAL that wrote it"
            )
        if latest < published:
            raise ForkError(
                f"log {cfg.log_id}: this WAL published up to size {published} but the "
                f"store's newest checkpoint is {latest}: wrong store or prefix, or "
                "published objects were removed"
            )
        if latest > published:
            await self._adopt_checkpoint(latest)
        for bundle in sorted(bundles, key=lambda b: b.first):
            if bundle.last < self.bundled:
                continue
            await self._adopt_bundle(bundle)
        self.reconciled = True
        log.info(
            "log %s: resuming at size %d (%d published, %d to publish)",
            cfg.log_id,
            wal_size,
            self.log.published.size,
            wal_size - self.log.published.size,
        )

    async def _adopt_checkpoint(self, size: int) -> None:
        """A checkpoint this writer put before a crash: check it, then record it."""
        key = layout.checkpoint_key(self._prefix, self.config.log_id, size)
        data = await self._io(self.store.get, key)
        try:
            cp = open_checkpoint(data, self.signer.verifier())
        except VerificationError as e:
            raise ForkError(f"{key}: not a checkpoint of this writer's key: {e}") from e
        pending = list(islice(self.log.unpublished, 0, size - self.bundled))
        for d in pending:
            self.tree.append(d.leaf)
        if cp.root_hash != self.tree.root() or cp.origin != self.config.origin:
            raise ForkError(f"{key}: root or origin differs from this WAL's log at size {size}")
        self.last_leaf = pending[-1].leaf if pending else self.last_leaf
        await self._record_published(len(pending))

    async def _adopt_bundle(self, bundle: layout.BundleName) -> None:
        key = layout.bundle_key(
            self._prefix, self.config.log_id, bundle.first, bundle.last, gzip=bundle.gzip
        )
        offset = bundle.first - self.log.published.size
        count = bundle.last - bundle.first + 1
        if bundle.first != self.bundled or offset + count > len(self.log.unpublished):
            raise ForkError(f"{key}: bundle does not continue this WAL's log at {self.bundled}")
        entries = list(islice(self.log.unpublished, offset, offset + count))
        data = await self._io(self.store.get, key)
        if bundle_lines(data, compressed=bundle.gzip) != bundle_bytes(
            [d.line for d in entries], compress=False
        ):
            raise ForkError(f"{key}: bundle content differs from this WAL's entries")
        self.tree.extend(d.leaf for d in entries)
        self.last_leaf = entries[-1].leaf

    # --- publishing -------------------------------------------------------------------

    def due_in(self) -> float | None:
        """Seconds until the next bundle is due; 0 if now; None if nothing waits."""
        waiting = len(self.log.unpublished) - (self.bundled - self.log.published.size)
        if waiting <= 0:
            # Bundled but not yet under a checkpoint (adopted at startup, or the
            # last checkpoint failed): the checkpoint is due now.
            return 0.0 if self.bundled > self.log.published.size else None
        if waiting >= self.config.bundle_max_entries:
            return 0.0
        oldest = self.log.unpublished[self.bundled - self.log.published.size]
        return max(0.0, oldest.appended_at + self.config.max_age - time.monotonic())

    async def publish(self, *, final: bool = False) -> None:
        """Bundle every durable entry due (all of them if final), then sign a checkpoint."""
        while (batch := self._unbundled()) and (final or self.due_in() == 0.0):
            batch = await self._claim(batch)
            first, last = self.bundled, self.bundled + len(batch) - 1
            key = layout.bundle_key(
                self._prefix, self.config.log_id, first, last, gzip=self.config.gzip
            )
            data = bundle_bytes([d.line for d in batch], compress=self.config.gzip)
            await self._put(key, data, "bundle", data.__eq__)
            self.tree.extend(d.leaf for d in batch)
            self.last_leaf = batch[-1].leaf
        if self.tree.size > self.log.published.size:
            await self._checkpoint(final=final)

    async def _claim(self, batch: list[Durable]) -> list[Durable]:
        """Claim the position of the next bundle; return the entries it must hold.

        A claim already there is ours if it describes entries of this WAL (a
        crash between claim and bundle): then exactly that range is written.
        Anything else is another writer on this log id: ForkError.
        """
        first = self.bundled
        claim = Claim(first, first + len(batch) - 1, batch[-1].leaf.hex(), self.writer_id)
        key = layout.claim_key(self._prefix, self.config.log_id, first)
        adopted: list[list[Durable]] = []

        def ours(existing: bytes) -> bool:
            try:
                theirs = Claim.from_bytes(existing)
            except VerificationError:
                return False
            offset = first - self.log.published.size
            count = theirs.last - first + 1
            entries = list(islice(self.log.unpublished, offset, offset + count))
            if len(entries) != count or not theirs.matches(first, theirs.last, entries[-1].leaf):
                return False
            adopted.append(entries)
            return True

        await self._put(key, claim.to_bytes(), "claim", ours)
        return adopted[0] if adopted else batch

    async def _checkpoint(self, *, final: bool) -> None:
        size, root = self.tree.size, self.tree.root()
        cp = Checkpoint(
            self.config.origin,
            size,
            root,
            make_extensions(int(self._wall_clock() * 1000), self.writer_id, final=final),
        )
        data = sign_checkpoint(cp, self.signer)
        key = layout.checkpoint_key(self._prefix, self.config.log_id, size)
        await self._put(key, data, "checkpoint", lambda existing: self._same_tree(existing, cp))
        self.checkpoints_written += 1
        await self._record_published(size - self.log.published.size)

    def _same_tree(self, existing: bytes, ours: Checkpoint) -> bool:
        try:
            theirs = open_checkpoint(existing, self.signer.verifier())
        except VerificationError:
            return False
        return (theirs.origin, theirs.size, theirs.root_hash) == (
            ours.origin,
            ours.size,
            ours.root_hash,
        )

    async def _record_published(self, count: int) -> None:
        state = TreeState(self.tree.size, self.tree.hashes, self.last_leaf)
        await self._io(self.wal.save_published, state)
        self.log.mark_published(state, count)

    async def _put(self, key: str, data: bytes, kind: str, same: Callable[[bytes], bool]) -> None:
        """Write once, retrying store errors with capped exponential backoff."""
        attempt = 0
        while True:
            try:
                retention = None
                if self.config.retention is not None:
                    retention = self.config.retention.until(datetime.now(UTC))
                await self._io(self.store.put_once, key, data, retention)
            except ObjectExistsError:
                # Our own earlier attempt (a timeout that did succeed) or a fork.
                try:
                    existing = await self._io(self.store.get, key)
                except ObjectNotFoundError:
                    existing = None
                except StorageError as e:
                    # Cannot read it back to compare now: retry the write later.
                    attempt += 1
                    await self._backoff(key, attempt, e)
                    continue
                if existing is not None and same(existing):
                    log.info("%s already written by an earlier attempt of ours", key)
                    return
                raise ForkError(
                    f"{key}: another writer's object is where log {self.config.log_id} "
                    "must write; stopping publication (a log id belongs to one writer)"
                ) from None
            except StorageError as e:
                attempt += 1
                await self._backoff(key, attempt, e)
                continue
            metrics.OBJECTS_WRITTEN.labels(kind).inc()
            return

    async def _backoff(self, what: str, attempt: int, error: StorageError) -> None:
        metrics.PUBLISH_ERRORS.inc()
        delay = min(self.config.retry_max_delay, 0.2 * 2 ** min(attempt, 20))
        delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not crypto
        log.warning(
            "publish %s failed (attempt %d), retrying in %.1fs: %s", what, attempt, delay, error
        )
        await asyncio.sleep(delay)

    # --- lifecycle ----------------------------------------------------------------------

    def _fence(self, reason: str) -> None:
        self.fenced = reason
        metrics.FENCED.set(1)
        log.critical("PUBLISHING STOPPED: %s", reason)
        self.log.refuse(f"log fenced: {reason}")
        if self._on_fenced is not None:
            self._on_fenced(reason)

    async def run(self) -> None:
        """Reconcile, then publish whenever a bundle is due, until cancelled."""
        try:
            attempt = 0
            while not self.reconciled:
                try:
                    await self.reconcile()
                except StorageError as e:
                    attempt += 1
                    delay = min(self.config.retry_max_delay, 0.2 * 2 ** min(attempt, 20))
                    log.warning("store not reachable at startup, retrying in %.1fs: %s", delay, e)
                    await asyncio.sleep(delay)
            event = self.log.durable_event
            attempt = 0
            while not self._stopping:
                due = self.due_in()
                if due is None or due > 0:
                    event.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(event.wait(), due)
                    continue
                try:
                    await self.publish()
                except StorageError as e:
                    # The local WAL state could not be saved: the objects are
                    # written once, so trying the publication again is safe.
                    attempt += 1
                    await self._backoff(f"log {self.config.log_id}", attempt, e)
                else:
                    attempt = 0
        except ForkError as e:
            self._fence(str(e))

    def stop(self) -> None:
        """Let run() return once the publication under way (if any) is done."""
        self._stopping = True
        self.log.durable_event.set()

    async def close(self) -> None:
        """Record the clean stop in the log, publish everything under a final checkpoint."""
        if self.fenced is not None:
            raise ForkError(self.fenced)
        if not self.reconciled:
            await self.reconcile()
        with contextlib.suppress(BackpressureError):  # a refusing log still publishes
            await self.log.append(entry.writer_event("stop", self.writer_id))
        try:
            await self.publish(final=True)
        except ForkError as e:
            self._fence(str(e))
            raise
        finally:
            self._pool.shutdown(wait=False)
