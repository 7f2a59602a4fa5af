"""The log in C2SP tlog-tiles layout, written beside ours (docs/FORMAT.md, "Tiles").

At each checkpoint the publisher hands over the entries it covers; this
writes the tiles they complete (hash tiles and entry bundles, each once,
through log/writeonce.py: an identical object already there counts as
written, as tessera does), the partial tiles of the new size, and then the
log's `checkpoint` object, the one key it rewrites (each version is kept
under Object Lock). The signed `checkpoints/<size>` of our layout stays the
checkpoint of record; `checkpoint` follows it, then (serve --witness) the
same note with the witnesses' cosignatures if it is still the latest there.

A tile key holding something else (a planted object: the spec fixes every
tile's name, so there is no other key to go to) is recorded as a foreign
object and publication goes on: standard clients will refuse the log from
that tile on, and `verify` says so, but the mesh is not stopped.

State is O(log n): the partial tile of each level (core.tiles.TileBuilder).
A restart takes it back from the partial tiles of the published size, checked
against the published tree; where they are missing (a log published before
tiles existed) it is rebuilt once from the log's bundles, writing every tile.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from extproc import metrics
from extproc.audit.reader import LogReader
from extproc.core import layout
from extproc.core.bundle import split_lines
from extproc.core.checkpoint import Checkpoint
from extproc.core.layout import TileName
from extproc.core.merkle import CompactRange, leaf_hash
from extproc.core.note import parse_note
from extproc.core.tiles import TileBuilder, tile_limit, tiles_at
from extproc.errors import (
    ForeignObjectError,
    ObjectNotFoundError,
    StorageError,
    VerificationError,
)
from extproc.log.writeonce import WriteOnce, same_bytes
from extproc.store.base import CONFIRMED, ObjectStore, RetentionPolicy

log = logging.getLogger(__name__)

LATEST_ATTEMPTS = 3  # puts of `checkpoint` per checkpoint; the next checkpoint tries again
TILE_PUTS_IN_FLIGHT = 8  # tile puts at once (and the publisher's store threads with tiles)


class TileWriter:
    """The tlog-tiles objects of one log."""

    def __init__(
        self,
        store: ObjectStore,
        writes: WriteOnce,
        log_id: str,
        retention: RetentionPolicy | None,
    ) -> None:
        self._store = store
        self._writes = writes
        self._log_id = log_id
        self._retention = retention
        self._builder: TileBuilder | None = None  # None until restored (or if it cannot be)
        # Full tiles completed and not yet confirmed in the store, in order.
        self._unwritten: dict[TileName, bytes] = {}
        # `checkpoint`: the largest tree size tried there, and the log's own note
        # last confirmed there (None while a write is unconfirmed); both under
        # the lock, held by the thread that writes it (a cancelled caller's
        # write still ends before the next one starts).
        self._latest_lock = threading.Lock()
        self._latest_size = 0
        self._latest_base: bytes | None = None

    @property
    def size(self) -> int | None:
        """The tree size the tiles are built to (None: tiles are off for this log)."""
        return self._builder.size if self._builder is not None else None

    def _key(self, tile: TileName) -> str:
        return layout.tile_key(self._store.prefix, self._log_id, tile)

    # --- startup ------------------------------------------------------------------------

    async def restore(self, reader: LogReader, tree: CompactRange) -> list[str]:
        """Take the state back at the published tree: from the partial tiles of
        its size, or, where they are missing or are not that tree, rebuilt from
        the log's bundles (a log from before tiles; every tile is written).
        Returns the keys found holding foreign objects."""
        if tree.size == 0:
            self._builder = TileBuilder()
            return []
        listed = {tile: key for key, tile in reader.objects.tiles}
        partials: dict[TileName, bytes] = {}
        try:
            for tile in tiles_at(tree.size):
                if tile not in listed:
                    raise VerificationError(f"{tile.path()} missing")
                partials[tile] = await self._writes.io(reader.read, listed[tile], tile_limit(tile))
            builder = TileBuilder.resume(tree.size, partials)
            if builder.compact_range().hashes != tree.hashes:
                raise VerificationError("its partial tiles are not the published tree")
        except (VerificationError, ObjectNotFoundError) as e:
            log.warning(
                "log %s: no tiles at the published size %d (%s): building them from the "
                "log's bundles",
                self._log_id,
                tree.size,
                e,
            )
            return await self._rebuild(reader, tree)
        self._builder = builder
        return []

    async def _rebuild(self, reader: LogReader, tree: CompactRange) -> list[str]:
        """Build and write the tiles of the published tree from the log's bundles:
        a first pass checks that they are that tree (else tiles stay off: the
        self-audit reports and repairs the bundles), a second writes the tiles
        as they complete, so memory stays O(log n) whatever the log's size."""
        check = TileBuilder()
        try:
            await self._writes.io(_extend_from_bundles, check, reader, tree.size)
        except (VerificationError, ObjectNotFoundError) as e:
            problem = f"cannot build its tiles from its bundles: {e}"
        else:
            same = check.size == tree.size and check.compact_range().hashes == tree.hashes
            problem = "" if same else f"its bundles up to {tree.size} are not the published tree"
        if problem:
            log.error("log %s: %s: no tiles until the self-audit repairs it", self._log_id, problem)
            return []
        self._builder = builder = TileBuilder()
        found: list[str] = []
        for key, name in reader.bundles_in_effect():
            if builder.size >= tree.size:
                break
            entries = await self._writes.io(_bundle_entries, reader, key, name, builder, tree.size)
            self._unwritten.update(builder.extend(entries))
            found += await self._write_unwritten()
        found += await self._write_unwritten(builder.partials())  # the published size's
        log.info("log %s: tiles written up to size %d", self._log_id, tree.size)
        return found

    # --- at each checkpoint -------------------------------------------------------------

    async def write(self, entries: Iterable[tuple[bytes, bytes]]) -> list[str]:
        """Add the next (entry, leaf hash) pairs; write every tile completed and
        the partial tiles at the new size. Returns the keys found holding
        foreign objects (each once: then they are known and skipped)."""
        if self._builder is None:
            return []
        served = set(tiles_at(self._builder.size))  # partial tiles already written
        self._unwritten.update(self._builder.extend(entries))
        partials = [p for p in self._builder.partials() if p[0] not in served]
        return await self._write_unwritten(partials)

    async def _write_unwritten(self, partials: Sequence[tuple[TileName, bytes]] = ()) -> list[str]:
        """Put the full tiles not yet confirmed, then `partials`, TILE_PUTS_IN_FLIGHT
        at a time (a round at 20,000 entries/s completes ~80 tiles: one at a
        time, S3's latency would hold publication back); the keys found holding
        foreign objects. A tile whose put failed otherwise stays unwritten."""
        slots = asyncio.Semaphore(TILE_PUTS_IN_FLIGHT)

        async def put(tile: TileName, data: bytes) -> str | None:
            key = self._key(tile)
            if key in self._writes.foreign:
                return None
            async with slots:
                try:
                    await self._writes.put(key, data, "tile", same_bytes(data), tile_limit(tile))
                except ForeignObjectError:
                    return key
            return None

        todo = [*self._unwritten.items(), *partials]
        results = await asyncio.gather(*(put(t, d) for t, d in todo), return_exceptions=True)
        found: list[str] = []
        for (tile, _), result in zip(todo, results, strict=True):
            if isinstance(result, BaseException):
                continue
            self._unwritten.pop(tile, None)
            if result is not None:
                found.append(result)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise failed[0]
        return found

    async def publish_latest(self, note: bytes, size: int) -> bool:
        """Put the signed checkpoint of tree `size` at `checkpoint` (a new version
        of it), and confirm it. A failure is logged and counted, never stops
        publication: the next checkpoint writes it again."""
        if self._builder is None:
            return False
        return await self._writes.io(self._put_latest, note, size, note)

    async def publish_cosigned(self, signed: bytes, cosigned: bytes) -> bool:
        """Put `cosigned` (the note `signed` with cosignature lines appended) at
        `checkpoint`, if `signed` is still the latest checkpoint written there;
        else it is dropped (a newer one is out: the witnesses get it in turn).
        Its own thread, not the publisher's pool: the last witness round runs
        after the publisher closed it."""
        if self._builder is None or not cosigned.startswith(signed) or cosigned == signed:
            return False
        size = Checkpoint.from_text(parse_note(signed)[0]).size
        return await asyncio.to_thread(self._put_latest, cosigned, size, signed)

    def _put_latest(self, note: bytes, size: int, base: bytes) -> bool:
        """Write `note` (of tree `size`, `base` the log's own signed note of it)
        at `checkpoint`, in a thread. One writer at a time, whoever calls (the
        publisher, the witness client), and never a size below one already
        tried, nor cosignatures on a note that is no longer the latest: each
        version of `checkpoint` is kept, and a smaller size after a larger one
        reads as a rollback (audit/tilecheck.py)."""
        key = layout.latest_checkpoint_key(self._store.prefix, self._log_id)
        sha256 = hashlib.sha256(note).digest()
        with self._latest_lock:
            if size < self._latest_size or (note != base and base != self._latest_base):
                log.info("log %s: %s of tree size %d not written: a newer one is out",
                         self._log_id, key, size)  # fmt: skip
                return False
            self._latest_size, self._latest_base = size, None  # until confirmed
            for attempt in range(1, LATEST_ATTEMPTS + 1):
                try:
                    retention = None
                    if self._retention is not None:
                        retention = self._retention.until(datetime.now(UTC))
                    self._store.put_replace(key, note, retention)
                    if self._store.confirm(key, sha256) is CONFIRMED:
                        metrics.OBJECTS_WRITTEN.labels("latest").inc()
                        metrics.OBJECTS_CONFIRMED.labels("latest").inc()
                        self._latest_base = base
                        return True
                    error = StorageError(f"{key}: not confirmed after the put")
                except StorageError as e:
                    error = e
                metrics.PUBLISH_ERRORS.inc()
                log.warning(
                    "log %s: writing %s failed (attempt %d of %d): %s",
                    self._log_id,
                    key,
                    attempt,
                    LATEST_ATTEMPTS,
                    error,
                )
            return False


def _bundle_entries(
    reader: LogReader, key: str, name: layout.BundleName, builder: TileBuilder, size: int
) -> list[tuple[bytes, bytes]]:
    """A bundle's (entry, leaf hash) pairs that come next in `builder`, up to `size`."""
    lines = split_lines(reader.bundle_data(key, name))[: size - builder.size]
    return [(line, leaf_hash(line)) for line in lines]


def _extend_from_bundles(builder: TileBuilder, reader: LogReader, size: int) -> None:
    """Extend `builder` with the log's entries up to `size`, from its bundles."""
    for key, name in reader.bundles_in_effect():
        if builder.size >= size:
            return
        builder.extend(_bundle_entries(reader, key, name, builder, size))
