"""The publisher: seals durable entries into bundles and signs checkpoints.

Every object is written once. A write that finds an object already there is
judged by who wrote it:

- ours: the same bytes (or, for a checkpoint, the same signed tree; for a
  claim, one that describes entries of this WAL): an earlier attempt whose
  reply was lost. Accepted.
- another writer of this log: signed by this log's key but different. Two
  writers on one log id would fork it, so publishing stops for good (fenced).
- foreign: anything not signed by this log's key (a planted object). It
  cannot be removed under Object Lock, so it must not stop the log: the
  writer records it in a signed `writer foreign` entry and continues in a new
  epoch, whose claims have keys of their own (docs/FORMAT.md, "Epochs").

Foreign objects cost O(1) each, whatever their number or names: on a
collision the writer lists what is ahead of it once (at most every
RELIST_AFTER seconds), records everything it found in one entry (a count and
a bounded sample of names), and moves to an epoch above every claim epoch it
saw, so that it never meets the same plants one round trip at a time
(what it knows of them: log/foreign.py). Every object is put by
log/writeonce.py: once, confirmed, retried with backoff.

A writer whose WAL has published nothing refuses a log id whose store already
holds checkpoints of its origin signed by another key (ForkError): that is a
second deployment of somebody's log, not a new log. A key change is made by
restarting the writer with its own WAL and the new key (a rotation, below).

A key rotation (the server starts with a key other than the one that signed
the last checkpoint) also starts a new epoch, recorded in a `writer rotate`
entry: a log never silently continues under another key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from extproc import metrics
from extproc.audit.reader import LogReader
from extproc.config import BUNDLE_MAX_AGE, BUNDLE_MAX_BYTES, BUNDLE_MAX_ENTRIES, RETRY_MAX_DELAY
from extproc.core import entry, layout
from extproc.core.bundle import MAX_BUNDLE_BYTES, bundle_bytes
from extproc.core.checkpoint import (
    Checkpoint,
    make_extensions,
    open_signed_checkpoint,
    sign_checkpoint,
)
from extproc.core.claim import MAX_CLAIM_BYTES, Claim
from extproc.core.display import escape
from extproc.core.fields import (
    EPOCH,
    EVENT_FOREIGN,
    EVENT_ROTATE,
    EVENT_STOP,
    NEW_KEY,
    OLD_KEY,
)
from extproc.core.keyring import Keyring
from extproc.core.merkle import CompactRange
from extproc.core.note import MAX_NOTE_BYTES, Signer, Verifier, parse_note
from extproc.core.verify import note_signer_label
from extproc.errors import (
    ConfigError,
    ForeignObjectError,
    ForkError,
    LogUnavailableError,
    ObjectNotFoundError,
    StorageError,
    VerificationError,
)
from extproc.log.appender import AuditLog, Durable
from extproc.log.foreign import ForeignKeys
from extproc.log.tilewriter import TILE_PUTS_IN_FLIGHT, TileWriter
from extproc.log.wal import WAL, TreeState
from extproc.log.writeonce import FOREIGN, FORK, OURS, WriteOnce, backoff_delay, same_bytes
from extproc.store.base import ObjectStore, RetentionPolicy

log = logging.getLogger(__name__)

# Foreign objects met in one publication round before backing off. Each
# collision lists what is ahead and steps over all of it, so this bounds only
# objects planted while the round runs.
MAX_FOREIGN_PER_ROUND = 8
# Objects beyond the published size read at startup to tell ours from foreign
# (each is one read); the rest are foreign without a read.
MAX_RECONCILE_READS = 64
# Other keys' checkpoints read to tell a log this WAL never wrote from plants.
MAX_OTHER_KEY_READS = 4


@dataclass(frozen=True)
class PublisherConfig:
    log_id: str
    origin: str
    bundle_max_entries: int = BUNDLE_MAX_ENTRIES
    bundle_max_bytes: int = BUNDLE_MAX_BYTES
    max_age: float = BUNDLE_MAX_AGE  # seconds an entry may wait before its bundle is sealed
    gzip: bool = False
    retention: RetentionPolicy | None = None
    retry_max_delay: float = RETRY_MAX_DELAY
    tiles: bool = False  # also publish the C2SP tlog-tiles layout (serve: on, --no-tiles)


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
        on_checkpoint: Callable[[Checkpoint, bytes, CompactRange, list[bytes]], None] | None = None,
    ) -> None:
        self.log = audit_log
        self.wal = wal
        self.store = store
        self.signer = signer
        self.config = config
        self.writer_id = writer_id
        self._wall_clock = wall_clock
        self._on_fenced = on_fenced
        # Each checkpoint published, with the tree at the previous one and the leaf
        # hashes since (the witnesses' consistency proofs, without reading the store).
        self._on_checkpoint = on_checkpoint
        self.tree: CompactRange = audit_log.published.compact_range()
        self.last_leaf = audit_log.published.last_leaf
        self.epoch = max(1, audit_log.published.epoch)
        self.fenced: str | None = None
        self.reconciled = False
        self.reconciled_event = asyncio.Event()  # set with `reconciled`
        self.checkpoints_written = 0
        self._prefix = store.prefix
        self._stopping = False
        self._stop_recorded = False
        self._key_text = signer.verifier().to_text()
        # Keys whose objects are this writer's own: the current one and the one
        # that signed the last published checkpoint (a rotation in progress).
        self._own_keys = self._own_keyring(audit_log.published.key)
        # Every put: once, confirmed; it knows the keys that hold foreign objects
        # and the keys confirmed since the last checkpoint (all ahead of it: a
        # listing ahead finds them, and they are not foreign).
        self._foreign = ForeignKeys(store.prefix, config.log_id)
        self._writes = WriteOnce(
            store,
            audit_log,
            self._foreign,
            log_id=config.log_id,
            retention=config.retention,
            retry_max_delay=config.retry_max_delay,
            threads=TILE_PUTS_IN_FLIGHT if config.tiles else 2,
        )
        # The same log in C2SP tlog-tiles layout, beside ours (log/tilewriter.py).
        self.tiles = TileWriter(store, self._writes, config.log_id, config.retention)
        metrics.EPOCH.set(self.epoch)
        audit_log.wake_when_waiting(config.bundle_max_entries)

    def _own_keyring(self, previous: str) -> Keyring:
        current = self.signer.verifier()
        verifiers = [current]
        if previous and previous != self._key_text:
            with contextlib.suppress(ConfigError):
                verifiers.append(Verifier.from_text(previous))
        return Keyring.of(*verifiers)

    @property
    def own_keys(self) -> Keyring:
        """The keys whose objects are this writer's own (current, and the previous one)."""
        return self._own_keys

    @property
    def last_error(self) -> str:
        """The latest store error, for the shutdown message."""
        return self._writes.last_error

    # --- where things are -------------------------------------------------------------

    @property
    def bundled(self) -> int:
        """Entries already in bundles in the store (tree.size)."""
        return self.tree.size

    def _unbundled(self) -> list[Durable]:
        """Durable entries not yet in a bundle, oldest first (one bundle's worth at most)."""
        out: list[Durable] = []
        size = 0
        for d in self.log.durable_from(self.bundled):
            if out and (
                len(out) >= self.config.bundle_max_entries
                or size + len(d.line) + 1 > self.config.bundle_max_bytes
            ):
                break
            out.append(d)
            size += len(d.line) + 1
        return out

    def _bundle_key(self, first: int, last: int) -> str:
        return layout.bundle_key(
            self._prefix, self.config.log_id, first, last, gzip=self.config.gzip
        )

    def _checkpoint_key(self, size: int) -> str:
        return layout.checkpoint_key(self._prefix, self.config.log_id, size)

    # --- startup ------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Line up the WAL with what the store already holds for this log.

        Covers a crash between a put and the WAL state update; records foreign
        objects ahead of the published size (and objects off the layout) in one
        entry; refuses to go on (ForkError) if the store holds something this
        writer's key signed that this WAL did not write, lost what this WAL
        published, or holds this log under another key while this WAL has
        published nothing of it. Detects a key rotation.
        """
        cfg = self.config
        # The store's view through the one reader: on S3 the original version
        # of each key is what counts (a later version is not ours).
        reader = await self._writes.io(LogReader.open, self.store, cfg.log_id)
        objects = reader.objects
        checkpoints = {size: key for key, size in objects.checkpoints}
        bundles = [(name, key, objects.sizes.get(key, 0)) for key, name in objects.bundles]
        claims: list[tuple[int, int, str]] = []
        for key, first in objects.claims:
            name = layout.parse_key(self._prefix, key)
            claims.append((first, name.epoch if name is not None else 1, key))
        published, wal_size = self.log.published.size, self.log.durable_size
        if not published:
            await self._refuse_other_keys_log(reader, checkpoints)
        if published and published not in checkpoints:
            if not checkpoints and not bundles:
                raise ForkError(
                    f"log {cfg.log_id}: this WAL published up to size {published} but the "
                    "store has nothing of this log: wrong store or prefix, or the bucket "
                    "was emptied"
                )
            # The store lost it (or acknowledged it without storing it, in an
            # older version): this WAL signed that tree; sign it again.
            log.error(
                "log %s: the checkpoint at the published size %d is missing from the store; "
                "writing it again",
                cfg.log_id,
                published,
            )
            checkpoints[published] = await self.checkpoint_again(
                published, self.log.published.compact_range().root()
            )
        found = list(objects.unknown)  # off the layout: foreign, never read
        reads = 0
        latest = published
        for size in sorted(s for s in checkpoints if s > published):
            key = checkpoints[size]
            if reads == MAX_RECONCILE_READS:
                found.append(key)
                continue
            reads += 1
            try:
                cp, _ = open_signed_checkpoint(
                    await self._writes.io(reader.read_checkpoint, key), self._own_keys
                )
            except VerificationError:
                found.append(key)
                continue
            if cp.origin != cfg.origin:
                raise ForkError(f"{key}: signed by this writer's key for another log ({cp.origin})")
            if size > wal_size:
                raise ForkError(
                    f"log {cfg.log_id}: the store has a checkpoint at size {size} but this WAL "
                    f"holds {wal_size} entries: another writer uses this log id, or this is "
                    "not the WAL that wrote it"
                )
            latest = size
        if latest > published:
            await self._adopt_checkpoint(latest)
        for first, epoch, key in sorted(claims):
            if first < self.bundled:
                continue
            if reads == MAX_RECONCILE_READS:
                found.append(key)
                continue
            reads += 1
            try:
                verdict, _ = self._judge_claim(await self._writes.io(reader.read_claim, key), first)
            except VerificationError:  # over its bound, not a file
                verdict = FOREIGN
            if verdict == FORK:
                raise ForkError(f"{key}: another writer's claim (signed by this log's key)")
            if verdict == OURS:
                self.epoch = max(self.epoch, epoch)
            else:
                found.append(key)
        for bundle, key, size in sorted(bundles, key=lambda b: (b[0].first, b[0].last)):
            if bundle.last < self.bundled:
                continue
            if reads == MAX_RECONCILE_READS:
                found.append(key)
                continue
            reads += 1
            if not await self._adopt_bundle(reader, bundle, key, size):
                found.append(key)
        if cfg.tiles:
            found += await self.tiles.restore(reader, self.log.published.compact_range())
        if found:
            self._foreign.know(found)
            await self._record_foreign(found)
        if published:
            await self._check_rotation(checkpoints[published])
        metrics.EPOCH.set(self.epoch)
        self.reconciled = True
        self.reconciled_event.set()
        log.info(
            "log %s: resuming at size %d (%d published, %d to publish), epoch %d",
            cfg.log_id,
            wal_size,
            self.log.published.size,
            wal_size - self.log.published.size,
            self.epoch,
        )

    async def _refuse_other_keys_log(self, reader: LogReader, checkpoints: dict[int, str]) -> None:
        """This WAL has published nothing: if the store already holds checkpoints of
        this log's origin signed by a key that is not this writer's, the log is
        somebody else's (another deployment, or this log before a key change
        without its WAL). Continuing would start a second history over it, so
        refuse (ForkError) with what to do. Reads the largest few checkpoints;
        anything that does not parse as this origin's is a foreign object."""
        for size in sorted(checkpoints, reverse=True)[:MAX_OTHER_KEY_READS]:
            key = checkpoints[size]
            try:
                data = await self._writes.io(reader.read_checkpoint, key)
            except (ObjectNotFoundError, VerificationError):  # gone, over its bound, not a file
                continue
            try:
                open_signed_checkpoint(data, self._own_keys)
            except VerificationError:
                pass
            else:
                return  # ours: the store is ahead of this WAL (refused below)
            try:
                cp = Checkpoint.from_text(parse_note(data)[0])
            except VerificationError:
                continue  # not a checkpoint at all: a foreign object
            if cp.origin != self.config.origin or cp.size != size:
                continue
            theirs = escape(note_signer_label(data)) or "unknown"
            raise ForkError(
                f"log {self.config.log_id} in {self.store.url} is already signed by key "
                f"{theirs} (checkpoint at size {size}), not by this server's key "
                f"{self.signer.name}+{self.signer.key_id.hex()}, and this WAL has published "
                "nothing of it: refusing to start a second history. Start with that log's "
                "key and WAL, or choose another --log-id (to move a log to a new key, restart "
                "its writer with its own WAL and the new key: docs/AUDITING.md, rotating a key)"
            )

    async def _adopt_checkpoint(self, size: int) -> None:
        """A checkpoint this writer put before a crash: check it, then record it."""
        key = self._checkpoint_key(size)
        data = await self._writes.io(self.store.get, key, MAX_NOTE_BYTES)
        cp, _ = open_signed_checkpoint(data, self._own_keys)
        pending = self.log.entries(self.bundled, size - self.bundled)
        for d in pending:
            self.tree.append(d.leaf)
        if cp.root_hash != self.tree.root():
            raise ForkError(f"{key}: root differs from this WAL's log at size {size}")
        self.last_leaf = pending[-1].leaf if pending else self.last_leaf
        self.epoch = max(self.epoch, cp.epoch)
        await self._record_published()

    async def _adopt_bundle(
        self, reader: LogReader, bundle: layout.BundleName, key: str, size: int
    ) -> bool:
        """A bundle this writer put before a crash (it continues the tree and holds
        exactly the WAL's entries): add it to the tree. False if it is not ours."""
        count = bundle.last - bundle.first + 1
        entries = self.log.entries(bundle.first, count)
        if bundle.first != self.bundled or len(entries) != count or bundle.gzip != self.config.gzip:
            return False
        expected = bundle_bytes([d.line for d in entries], compress=bundle.gzip)
        if size != len(expected):  # listed size: no read for an object that cannot match
            return False
        try:
            if await self._writes.io(reader.read, key, len(expected)) != expected:
                return False
        except VerificationError:  # grew past the listed size, not a file
            return False
        self.tree.extend(d.leaf for d in entries)
        self.last_leaf = entries[-1].leaf
        return True

    async def _check_rotation(self, checkpoint_key: str) -> None:
        """Start a new epoch, recorded in the log, if the signing key changed."""
        previous = self.log.published.key
        if previous:
            if previous == self._key_text:
                return
            old = previous.split("+", 2)
            old_label = f"{old[0]}+{old[1]}" if len(old) == 3 else previous
        else:
            # A WAL from before the key was recorded: ask the last checkpoint.
            data = await self._writes.io(self.store.get, checkpoint_key, MAX_NOTE_BYTES)
            try:
                open_signed_checkpoint(data, Keyring.of(self.signer.verifier()))
            except VerificationError:
                old_label = note_signer_label(data) or "unknown"
            else:
                return
        self.epoch += 1
        new_label = f"{self.signer.name}+{self.signer.key_id.hex()}"
        log.warning(
            "log %s continues under a new signing key in epoch %d: %s replaces %s; auditors "
            "need both keys in their keyring (docs/AUDITING.md, keys and rotation)",
            self.config.log_id,
            self.epoch,
            new_label,
            old_label,
        )
        await self._append_own(
            entry.writer_event(
                EVENT_ROTATE,
                self.writer_id,
                {OLD_KEY: old_label, NEW_KEY: new_label, EPOCH: self.epoch},
            )
        )

    # --- publishing -------------------------------------------------------------------

    def due_in(self) -> float | None:
        """Seconds until the next bundle is due; 0 if now; None if nothing waits."""
        waiting = self.log.durable_size - self.bundled
        if waiting <= 0:
            # Bundled but not yet under a checkpoint (adopted at startup, or the
            # last checkpoint failed): the checkpoint is due now.
            return 0.0 if self.bundled > self.log.published.size else None
        if waiting >= self.config.bundle_max_entries or self._blocked_checkpoint():
            return 0.0
        oldest = next(self.log.durable_from(self.bundled))
        return max(0.0, oldest.appended_at + self.config.max_age - time.monotonic())

    def _blocked_checkpoint(self) -> bool:
        """A foreign object holds the checkpoint key of the current tree size."""
        return self._checkpoint_key(self.tree.size) in self._foreign

    async def publish(self, *, final: bool = False) -> None:
        """Bundle every durable entry due (all of them if final), then sign a checkpoint.

        A foreign object at a key this writer must write is recorded and
        publication continues in a new epoch.
        """
        for _ in range(MAX_FOREIGN_PER_ROUND):
            try:
                await self._publish_due(final=final)
            except ForeignObjectError as e:
                await self._step_over(e.key)
            else:
                return
        raise StorageError(
            f"log {self.config.log_id}: {MAX_FOREIGN_PER_ROUND} foreign objects in a row "
            "at the keys it must write; backing off"
        )

    async def _publish_due(self, *, final: bool) -> None:
        while (batch := self._unbundled()) and (
            final or self._blocked_checkpoint() or self.due_in() == 0.0
        ):
            batch = self._avoid_foreign_bundle(batch)
            if not batch:
                break  # one more entry is needed to cut another range; it is on its way
            batch = await self._claim(batch)
            first, last = self.bundled, self.bundled + len(batch) - 1
            data = bundle_bytes([d.line for d in batch], compress=self.config.gzip)
            # The claim is ours, so nobody else may write this bundle: anything
            # already there that differs is foreign.
            await self._writes.put(self._bundle_key(first, last), data, "bundle", same_bytes(data))
            self.tree.extend(d.leaf for d in batch)
            self.last_leaf = batch[-1].leaf
        if self.tree.size > self.log.published.size and not self._blocked_checkpoint():
            await self._checkpoint(final=final)

    def _avoid_foreign_bundle(self, batch: list[Durable]) -> list[Durable]:
        """A range from the next position whose bundle key holds no known foreign
        object: the longest up to `batch`, preferring one whose checkpoint key (the
        tree size after it) is free too; else the shortest longer one within the
        format's bound, from the entries there are. [] if there is none yet (more
        entries will make one). One set lookup per length: O(1) per planted key."""
        first = self.bundled

        def free(n: int, *, checkpoint: bool) -> bool:
            if self._bundle_key(first, first + n - 1) in self._foreign:
                return False
            return not checkpoint or self._checkpoint_key(first + n) not in self._foreign

        if not self._foreign:
            return batch
        for checkpoint in (True, False):
            for n in range(len(batch), 0, -1):
                if free(n, checkpoint=checkpoint):
                    return batch[:n]
        longer: list[Durable] = []
        size = 0
        for d in self.log.durable_from(first):
            size += len(d.line) + 1
            if size > MAX_BUNDLE_BYTES:
                break
            longer.append(d)
            if len(longer) > len(batch) and free(len(longer), checkpoint=False):
                return longer
        return []

    async def _claim(self, batch: list[Durable]) -> list[Durable]:
        """Claim the position of the next bundle; return the entries it must hold.

        A claim already there is ours if it describes entries of this WAL (a
        crash between claim and bundle): then exactly that range is written.
        """
        first = self.bundled
        claim = Claim(
            first,
            first + len(batch) - 1,
            batch[-1].leaf.hex(),
            self.writer_id,
            self.epoch,
            self.config.origin,
        ).sign(self.signer)
        key = layout.claim_key(self._prefix, self.config.log_id, first, self.epoch)
        adopted: list[list[Durable]] = []

        def judge(existing: bytes) -> str:
            verdict, entries = self._judge_claim(existing, first)
            if verdict == OURS and entries:
                adopted.append(entries)
            return verdict

        await self._writes.put(key, claim.to_bytes(), "claim", judge, MAX_CLAIM_BYTES)
        return adopted[0] if adopted else batch

    def _judge_claim(self, existing: bytes, first: int) -> tuple[str, list[Durable]]:
        try:
            theirs = Claim.from_bytes(existing)
        except VerificationError:
            return FOREIGN, []
        entries = self.log.entries(first, theirs.last - first + 1)
        if (
            theirs.first == first
            and len(entries) == theirs.last - first + 1
            and theirs.matches(first, theirs.last, entries[-1].leaf)
        ):
            # It names the leaf hash of an entry not yet published: only this
            # WAL's writer can have written it.
            return OURS, entries
        try:
            theirs.verify(self._own_keys)
        except VerificationError:
            return FOREIGN, []
        return FORK, []

    async def _checkpoint(self, *, final: bool) -> None:
        size, root = self.tree.size, self.tree.root()
        signed_at = self._wall_clock()
        cp = Checkpoint(
            self.config.origin,
            size,
            root,
            make_extensions(int(signed_at * 1000), self.writer_id, final=final, epoch=self.epoch),
        )
        data = sign_checkpoint(cp, self.signer)
        key = self._checkpoint_key(size)
        if (tiled := self.tiles.size) is not None:  # the tiles first: the checkpoint needs them
            pending = self.log.entries(tiled, size - tiled)
            if found := await self.tiles.write((d.line, d.leaf) for d in pending):
                self._foreign.know(found)
                await self._record_foreign(found)
        await self._writes.put(
            key,
            data,
            "checkpoint",
            lambda existing: self._judge_checkpoint(existing, cp),
            MAX_NOTE_BYTES,
        )
        await self.tiles.publish_latest(data, size)
        self.checkpoints_written += 1
        metrics.LAST_CHECKPOINT.set(signed_at)
        previous, since = self.log.published, []
        if self._on_checkpoint is not None:  # the leaves go once published: take them now
            since = [d.leaf for d in self.log.entries(previous.size, size - previous.size)]
        await self._record_published()
        if self._on_checkpoint is not None:
            self._on_checkpoint(cp, data, previous.compact_range(), since)

    def _judge_checkpoint(self, existing: bytes, ours: Checkpoint) -> str:
        try:
            theirs, _ = open_signed_checkpoint(existing, self._own_keys)
        except VerificationError:
            return FOREIGN
        same = (theirs.origin, theirs.size, theirs.root_hash) == (
            ours.origin,
            ours.size,
            ours.root_hash,
        )
        return OURS if same else FORK

    async def _record_published(self) -> None:
        state = TreeState(
            self.tree.size, self.tree.hashes, self.last_leaf, self.epoch, self._key_text
        )
        await self._writes.io(self.wal.save_published, state)
        self.log.mark_published(state)
        self._writes.written.clear()  # everything written so far is under this checkpoint

    async def _step_over(self, key: str) -> None:
        """A foreign object at `key`, which this writer had to write. List what else
        is ahead of the writer (at most every RELIST_AFTER seconds), record what is
        new in one entry, and continue in an epoch above every claim epoch known
        to be taken: the plants ahead are stepped over at once, not met one round
        trip at a time."""
        found = [] if key in self._foreign else [key]
        if self._foreign.relist_due(time.monotonic()):
            ahead = await self._writes.io(self._keys_ahead)
            found += [k for k in ahead if k not in self._foreign and k != key]
        self._foreign.know(found)
        self.epoch = self._foreign.next_epoch(self.epoch, self.bundled)
        metrics.EPOCH.set(self.epoch)
        if found:
            await self._record_foreign(found)
        else:
            log.warning(
                "log %s: %s holds a foreign object already recorded; continuing in epoch %d",
                self.config.log_id,
                escape(key),
                self.epoch,
            )

    def _keys_ahead(self) -> list[str]:
        """Every key at or beyond the position being written that this writer did
        not write (one listing, from that position on; no object is read)."""
        reader = LogReader.open(self.store, self.config.log_id, self.bundled)
        objects = reader.objects
        keys = [k for k, name in objects.bundles if name.last >= self.bundled]
        keys += [k for k, first in objects.claims if first >= self.bundled]
        keys += [k for k, size in objects.checkpoints if size > self.bundled]
        keys += objects.unknown
        return [k for k in keys if k not in self._writes.written]

    async def _record_foreign(self, keys: list[str]) -> None:
        """Write the foreign objects into the log, under this writer's signature: one
        entry, naming the object (`object`), or, for several, how many (`count`)
        and a bounded sample of their names (`objects`)."""
        details, names = self._foreign.entry_fields(keys, self.epoch)
        shown = ", ".join(escape(n) for n in names[:3])
        log.error(
            "log %s: %d objects not written by this log's writer (foreign objects) at its "
            "keys: %s%s; recorded in the log (epoch %d)",
            self.config.log_id,
            len(keys),
            shown,
            ", ..." if len(keys) > 3 else "",
            self.epoch,
        )
        await self._append_own(entry.writer_event(EVENT_FOREIGN, self.writer_id, details))

    async def _append_own(self, fields: dict[str, Any]) -> None:
        try:
            await self.log.append(fields, own=True)
        except LogUnavailableError as e:
            raise StorageError(f"cannot record {fields.get('event')} in the log: {e}") from e

    # --- repairs (the self-audit, or a restart, found an object missing) ---------------

    async def claim_again(
        self, first: int, last: int, last_leaf: bytes, epoch: int | None = None
    ) -> str:
        """Claim first..last again; return its key. `epoch` (default: the current
        one): below the published size, the epoch of the checkpoints that cover
        the position, since a claim of a later epoch there would start a second
        history (core.verify, LogChecker._restarted_keys)."""
        epoch = self.epoch if epoch is None else epoch
        claim = Claim(first, last, last_leaf.hex(), self.writer_id, epoch, self.config.origin).sign(
            self.signer
        )
        key = layout.claim_key(self._prefix, self.config.log_id, first, epoch)
        data = claim.to_bytes()
        await self._writes.put(key, data, "claim", same_bytes(data), MAX_CLAIM_BYTES)
        metrics.OBJECTS_REPAIRED.labels("claim").inc()
        return key

    async def bundle_again(self, first: int, last: int, lines: list[bytes]) -> str:
        """Write the bundle of entries first..last (from the WAL) again; return its key."""
        key = self._bundle_key(first, last)
        data = bundle_bytes(lines, compress=self.config.gzip)
        await self._writes.put(key, data, "bundle", same_bytes(data))
        metrics.OBJECTS_REPAIRED.labels("bundle").inc()
        return key

    async def checkpoint_again(self, size: int, root: bytes) -> str:
        """Sign and write a checkpoint at a published size whose checkpoint is gone."""
        cp = Checkpoint(
            self.config.origin,
            size,
            root,
            make_extensions(int(self._wall_clock() * 1000), self.writer_id, epoch=self.epoch),
        )
        key = self._checkpoint_key(size)
        await self._writes.put(
            key,
            sign_checkpoint(cp, self.signer),
            "checkpoint",
            lambda existing: self._judge_checkpoint(existing, cp),
            MAX_NOTE_BYTES,
        )
        metrics.OBJECTS_REPAIRED.labels("checkpoint").inc()
        return key

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
                    delay = backoff_delay(attempt, self.config.retry_max_delay)
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
                before = (self.bundled, self.log.published.size)
                try:
                    await self.publish()
                except StorageError as e:
                    # The local WAL state could not be saved: the objects are
                    # written once, so trying the publication again is safe.
                    attempt += 1
                    await self._writes.backoff(f"log {self.config.log_id}", attempt, e)
                else:
                    attempt = 0
                    if (self.bundled, self.log.published.size) == before:
                        await asyncio.sleep(0.05)  # waiting for an entry; never spin
        except ForkError as e:
            self._fence(str(e))

    def stop(self) -> None:
        """Let run() return once the publication under way (if any) is done."""
        self._stopping = True
        self.log.durable_event.set()

    async def record_stop(self) -> None:
        """Append the `writer stop` entry, once: durable in the WAL, published by
        close(), or by the next start if the store stays down for the drain."""
        if self._stop_recorded:
            return
        self._stop_recorded = True
        with contextlib.suppress(LogUnavailableError):  # a refusing log still publishes
            await self.log.append(entry.writer_event(EVENT_STOP, self.writer_id))

    async def close(self) -> None:
        """Record the clean stop in the log, publish everything under a final checkpoint."""
        if self.fenced is not None:
            raise ForkError(self.fenced)
        if not self.reconciled:
            await self.reconcile()
        await self.record_stop()
        try:
            await self.publish(final=True)
        except ForkError as e:
            self._fence(str(e))
            raise
        finally:
            self._writes.close()
