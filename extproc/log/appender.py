"""The appender: assigns seq and prev, encodes, and group-commits to the WAL.

Everything here runs on the event loop thread. A batch is written into the
page cache inline and made durable by the syncer thread (fdatasync),
one batch at a time: entries that arrive while a batch is being synced form
the next batch (group commit). The hot path is encode + one SHA-256 + a list
append; no lock, no per-request hand-off (one to the syncer per commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice, repeat
from typing import Any, NamedTuple

from extproc import metrics
from extproc.core import entry
from extproc.core.fields import PREV, SEQ, TS, V
from extproc.core.merkle import leaf_hash
from extproc.errors import (
    AuditError,
    BackpressureError,
    DurabilityError,
    LogClosedError,
    LogRefusedError,
    LogUnavailableError,
    StorageError,
)
from extproc.log.syncer import Syncer
from extproc.log.wal import WAL, Recovered, TreeState
from extproc.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

# The size of an access entry before it is built (reserve()): about a real
# Envoy entry's line (~750 bytes; an empty one ~430), then the running mean.
BATCH_ENTRY_ESTIMATE = 512
MIN_ENTRY_ESTIMATE = 256


class _UtcTimestamp:
    """RFC 3339 UTC with microseconds, the `ts` field of every entry.

    strftime runs once per second, not per entry: it was the hot path's
    single most expensive call.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, now: float) -> str:
        # Rounded as datetime.fromtimestamp rounds, so both give the same text.
        frac, whole = math.modf(now)
        second, micro = int(whole), round(frac * 1_000_000)
        if micro >= 1_000_000:
            second, micro = second + 1, micro - 1_000_000
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{micro:06d}Z"


utc_timestamp = _UtcTimestamp()


class Durable(NamedTuple):
    """An entry that is on disk and waits to be published.

    A named tuple: one is built per entry on the hot path, at a third of the
    cost of a frozen dataclass (docs/PERFORMANCE.md)."""

    line: bytes
    leaf: bytes
    appended_at: float  # monotonic, for the publisher's age trigger


class _Batch:
    """Entries sequenced together, written to the WAL and fsync'd in one group
    commit (the next batch collects while this one is synced)."""

    __slots__ = ("bytes", "first", "leaves", "lines", "started", "undo")

    def __init__(self, first: int) -> None:
        self.first = first  # seq of lines[0]
        self.lines: list[bytes] = []
        self.leaves: list[bytes] = []
        self.bytes = 0
        self.undo = 0  # WAL offset that cuts this batch off again
        self.started = 0.0  # perf_counter when written


SyncerFactory = Callable[[str, Callable[[str | None], None]], Syncer]


class AuditLog:
    """Sequences entries, group-commits them to the WAL, and holds the durable
    ones until the publisher has them under a checkpoint.

    The publisher reads durable entries by seq (entries(), durable_from()) and
    hands back what a checkpoint covers (mark_published()); it never sees how
    they are kept.
    """

    def __init__(
        self,
        wal: WAL,
        recovered: Recovered,
        *,
        max_backlog_bytes: int = 128 << 20,
        wall_clock: Callable[[], float] = time.time,
        syncer: SyncerFactory = Syncer,
    ) -> None:
        """`syncer` builds the fdatasync syncer from the WAL directory and the callback it
        reports to (tests pass a fake)."""
        self._wal = wal
        self._wall_clock = wall_clock
        self.max_backlog_bytes = max_backlog_bytes
        self.published = recovered.published
        # Durable, not yet published entries: what the publisher takes from.
        now = time.monotonic()
        self._unpublished: deque[Durable] = deque(
            Durable(line, leaf, now)
            for line, leaf in zip(recovered.lines, recovered.leaves, strict=True)
        )
        self._unpublished_bytes = sum(len(d.line) for d in self._unpublished)
        self.durable_size = recovered.size
        self._size = recovered.size  # next seq to assign
        self._prev = recovered.last_leaf.hex()
        self._pending = _Batch(self._size)  # sequenced, collecting
        self._in_flight: _Batch | None = None  # written, being synced
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._syncer = syncer(str(wal.dir), self._sync_done)
        self._refusal: str | None = None  # set when the log must refuse appends
        self._last_error = ""
        self.last_wal_denial = -math.inf  # monotonic time a WAL write last failed a batch
        self._denials = RateLimitedLog(log)  # a full disk fails every batch
        self.durable_event = asyncio.Event()
        self._wake_at = 1  # see wake_when_waiting()
        # Batch entries admitted (reserve()) and not built yet, counted in the
        # backlog at the estimated size of one.
        self._reserved = 0
        self._entry_estimate = BATCH_ENTRY_ESTIMATE
        metrics.LOG_SIZE.set(self.durable_size)

    # --- appending ------------------------------------------------------------

    @property
    def size(self) -> int:
        """Entries sequenced (durable or on their way to disk)."""
        return self._size

    def refuse(self, reason: str) -> None:
        """Stop taking entries for good (fork detected, WAL broken)."""
        if self._refusal is None:
            self._refusal = reason
            log.critical("audit log refuses new entries: %s", reason)

    @property
    def refusal(self) -> str | None:
        return self._refusal

    def append_nowait(self, fields: dict[str, Any], *, own: bool = False) -> int:
        """Sequence an entry; it becomes durable with the next group commit.

        Raises LogUnavailableError (which subclass says why) when the log cannot
        take it. `fields` is
        completed in place with v, seq, prev and ts. `own`: the writer's own
        record (a foreign object, a key rotation), taken even past the backlog
        bound, since publication may need it to get going again.
        """
        if self._refusal is not None:
            raise LogRefusedError(self._refusal)
        if not own and self.backlog_bytes > self.max_backlog_bytes:
            metrics.BACKPRESSURE.labels("backlog").inc()
            raise BackpressureError(
                f"backlog over its bound ({self.max_backlog_bytes} bytes not yet published)"
            )
        seq = self._size
        fields[V] = entry.FORMAT_VERSION
        fields[SEQ] = seq
        fields[PREV] = self._prev
        fields[TS] = utc_timestamp(self._wall_clock())
        line = entry.encode(fields)
        if len(line) > entry.MAX_ENTRY_BYTES:  # rare: shrink, say so in `trunc`
            line = entry.encode(entry.fit(fields))
        leaf = leaf_hash(line)
        self._prev = leaf.hex()
        self._size = seq + 1
        batch = self._pending
        batch.lines.append(line)
        batch.leaves.append(leaf)
        batch.bytes += len(line)
        if self._in_flight is None:
            self._start_flush()
            if seq >= self._size:  # the write failed at once and was rolled back
                raise DurabilityError(self._last_error)
        return seq

    def reserve(self, count: int) -> None:
        """Admit `count` batch entries before any of them is built: each counts
        against the backlog bound at the estimated size of one (the mean of the
        batch entries so far) until append_batch_nowait(reserved=...) replaces
        the estimate with its real size; release() what is not appended.

        Raises LogUnavailableError, reserving nothing, when they would not fit:
        a flood of entries becomes counted refusals, not memory.
        """
        if self._refusal is not None:
            raise LogRefusedError(self._refusal)
        if self.backlog_bytes + count * self._entry_estimate > self.max_backlog_bytes:
            metrics.BACKPRESSURE.labels("backlog").inc()
            raise BackpressureError(
                f"backlog over its bound ({self.max_backlog_bytes} bytes not yet published, "
                f"with {count} entries more)"
            )
        self._reserved += count

    def release(self, count: int) -> None:
        """Give back the reservation of `count` entries that will not be appended."""
        self._reserved -= count

    @property
    def reserved(self) -> int:
        """Batch entries admitted by reserve() and not appended or released yet."""
        return self._reserved

    def append_batch_nowait(self, batch: Iterable[dict[str, Any]], *, reserved: int = 0) -> int:
        """Sequence a batch of entries in one call (the access-log path); each
        becomes durable with the next group commit. Returns the seq of the first.

        All or nothing: raises LogUnavailableError, with nothing appended (and
        `batch` not iterated), when the log cannot take them. Without a
        reservation the backlog bound is checked once per batch, so a batch may
        pass it by its own size; `reserved`: the batch holds that many entries
        admitted by reserve(), whose reservation it uses up (appended or not).
        Each dict is completed in place with v, seq, prev and ts; the entries of a
        batch are sequenced at one instant and share their `ts`. `batch` may be
        a generator: each entry is encoded as it comes, so only one entry's
        fields need to be alive at a time.
        """
        if self._refusal is not None:
            self._reserved -= reserved
            raise LogRefusedError(self._refusal)
        if not reserved and self.backlog_bytes > self.max_backlog_bytes:
            metrics.BACKPRESSURE.labels("backlog").inc()
            raise BackpressureError(
                f"backlog over its bound ({self.max_backlog_bytes} bytes not yet published)"
            )
        first = seq = self._size
        prev = self._prev
        ts = utc_timestamp(self._wall_clock())
        version, encode, max_bytes = entry.FORMAT_VERSION, entry.encode, entry.MAX_ENTRY_BYTES
        lines, leaves = self._pending.lines, self._pending.leaves
        added = 0
        try:
            for fields in batch:
                fields[V] = version
                fields[SEQ] = seq
                fields[PREV] = prev
                fields[TS] = ts
                line = encode(fields)
                if len(line) > max_bytes:  # rare: shrink, say so in `trunc`
                    line = encode(entry.fit(fields))
                leaf = leaf_hash(line)
                prev = leaf.hex()
                lines.append(line)
                leaves.append(leaf)
                added += len(line)
                seq += 1
        finally:
            # Whatever was sequenced stays consistent and goes to disk, even if an
            # entry failed to build or encode.
            self._prev, self._size = prev, seq
            self._pending.bytes += added
            self._reserved -= reserved
            if seq > first:
                # Correct the estimate: a running mean of the real sizes.
                self._entry_estimate = max(
                    MIN_ENTRY_ESTIMATE, (3 * self._entry_estimate + added // (seq - first)) // 4
                )
                if self._in_flight is None:
                    self._start_flush()
        if first >= self._size and seq > first:  # the write failed at once and was rolled back
            raise DurabilityError(self._last_error)
        return first

    async def append(self, fields: dict[str, Any], *, own: bool = False) -> int:
        """Sequence an entry and return its seq once it is durable (fsync'd)."""
        seq = self.append_nowait(fields, own=own)
        await self.wait_durable(seq)
        return seq

    async def wait_durable(self, seq: int) -> None:
        if seq < self.durable_size:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, future))
        await future

    # --- group commit -------------------------------------------------------------

    def _start_flush(self) -> None:
        batch = self._pending
        self._pending = _Batch(self._size)
        batch.started = time.perf_counter()
        try:
            batch.undo = self._wal.write(batch.lines, batch.first)
        except AuditError as e:
            self._deny_from(batch.first, e)
            return
        except OSError as e:
            # The WAL could not cut the failed write off: the segment may end
            # in half a batch, so nothing may be chained after it.
            self.refuse(f"WAL cannot be written: {e}")
            self._deny_from(batch.first, StorageError(f"failed write not cut off: {e}"))
            return
        self._in_flight = batch
        if self._wal.sync_enabled:
            self._syncer.sync(self._wal.fileno(), self._wal.generation)
        else:
            asyncio.get_running_loop().call_soon(self._sync_done, None)

    def _sync_done(self, error: str | None) -> None:
        batch = self._in_flight
        assert batch is not None
        self._in_flight = None
        if error is None:
            metrics.WAL_COMMIT_SECONDS.observe(time.perf_counter() - batch.started)
            metrics.WAL_BATCH_ENTRIES.observe(len(batch.lines))
            # Durable(line, leaf, now) for each, built in C (map over tuple.__new__).
            self._unpublished.extend(
                map(
                    tuple.__new__,
                    repeat(Durable),
                    zip(batch.lines, batch.leaves, repeat(time.monotonic())),
                )
            )
            self._unpublished_bytes += batch.bytes
            before = self.durable_size - self.published.size
            self.durable_size = batch.first + len(batch.lines)
            after = self.durable_size - self.published.size
            # Wake the publisher only when there is news for it: the first
            # entry to publish (age trigger starts) or a full bundle (count).
            if before == 0 or before < self._wake_at <= after:
                self.durable_event.set()
            metrics.LOG_SIZE.set(self.durable_size)
            self._wake_waiters(self.durable_size, None)
            if self._pending.lines:
                self._start_flush()
            return
        try:
            self._wal.undo(batch.undo)
        except OSError as e:
            self.refuse(f"WAL cannot be cut back after a failed sync: {e}")
        self._deny_from(batch.first, DurabilityError(error))

    def _deny_from(self, first: int, error: AuditError) -> None:
        """The batch at `first` is not on disk (the WAL cut it off).

        Everything sequenced after it chains from it, so it all goes too: its
        requests are denied, none were forwarded. The log continues from the
        last durable entry.
        """
        denied = self._size - first
        metrics.BACKPRESSURE.labels("wal").inc(denied)
        self._denials.error("WAL commit failed, denying %d entries: %s", denied, error)
        self._size = first
        self._pending = _Batch(first)
        self._prev = self._last_durable_leaf()
        self._last_error = f"WAL commit failed: {error}"
        self.last_wal_denial = time.monotonic()
        self._wake_waiters(None, DurabilityError(self._last_error))

    def _last_durable_leaf(self) -> str:
        if self._unpublished:
            return self._unpublished[-1].leaf.hex()
        return self.published.last_leaf.hex()

    def _wake_waiters(self, durable: int | None, error: BaseException | None) -> None:
        waiters = self._waiters
        while waiters and (durable is None or waiters[0][0] < durable):
            _, future = waiters.popleft()
            if future.done():  # the request was cancelled meanwhile
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    async def flush(self) -> None:
        """Wait until everything sequenced so far is durable (or failed)."""
        if self._size > self.durable_size:
            with contextlib.suppress(LogUnavailableError):  # failed batches are denied, not lost
                await self.wait_durable(self._size - 1)

    # --- publication hand-off -------------------------------------------------------

    def wake_when_waiting(self, count: int) -> None:
        """Set durable_event when `count` entries wait (the publisher's bundle
        size), as well as when the first one does (its age trigger starts)."""
        self._wake_at = max(1, count)

    @property
    def waiting(self) -> int:
        """Durable entries not yet under a published checkpoint."""
        return self.durable_size - self.published.size

    def durable_from(self, first: int) -> Iterator[Durable]:
        """Durable, unpublished entries from seq `first` on (none before the
        published size). Iterate before the next await: the log moves on."""
        offset = first - self.published.size
        if offset < 0:
            return iter(())
        return islice(self._unpublished, offset, None)

    def entries(self, first: int, count: int) -> list[Durable]:
        """Durable, unpublished entries first..first+count-1 (fewer if the WAL
        has fewer)."""
        return list(islice(self.durable_from(first), max(0, count)))

    def mark_published(self, state: TreeState) -> None:
        """A checkpoint at `state.size` covers the entries up to it: drop them."""
        if not self.published.size <= state.size <= self.durable_size:
            raise AuditError(
                f"published size {state.size} outside {self.published.size}..{self.durable_size}"
            )
        for _ in range(state.size - self.published.size):
            self._unpublished_bytes -= len(self._unpublished.popleft().line)
        self.published = state
        metrics.PUBLISHED_SIZE.set(state.size)

    def refusing(self, within: float) -> bool:
        """Are requests being refused for want of publication: the backlog over
        its bound, or a WAL write failed (a full disk) in the last `within` s?"""
        return (
            self.backlog_bytes > self.max_backlog_bytes
            or time.monotonic() - self.last_wal_denial < within
        )

    @property
    def backlog_bytes(self) -> int:
        """Bytes not yet published: durable, being synced, sequenced, and the
        estimated size of the batch entries reserved and not built yet."""
        in_flight = self._in_flight.bytes if self._in_flight is not None else 0
        reserved = self._reserved * self._entry_estimate
        return self._unpublished_bytes + in_flight + self._pending.bytes + reserved

    def close(self) -> None:
        # Anyone still waiting (error paths only: the server flushes first) is
        # told the entry is not durable rather than left hanging.
        self._wake_waiters(None, LogClosedError("audit log closed"))
        self._syncer.close()
        self._wal.close()
