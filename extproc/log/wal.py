"""Write-ahead log: append-only segment files plus a small published-state file.

Layout of a WAL directory (one per log id):

    LOCK                          flock'd by the one writer process
    segment-<first seq:020d>.wal  entry lines, "\\n"-terminated, in seq order
    published.json                tree state at the last published checkpoint
    audited.json                  the self-audit's verified state (core.state format)
    reserve                       1 MiB held back for the bookkeeping of a full disk

Segments are kept until their entries are published and, with the
self-audit on, verified in the store: until then they are what a gap found
in the store is repaired from.

A line is acknowledged only after the write and fsync that contain it
returned. On recovery a torn or garbled tail (never acknowledged) is cut off;
damage followed by valid lines is corruption and stops the start.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson

from extproc.core import entry
from extproc.core.fields import PREV, SEQ
from extproc.core.merkle import CompactRange, leaf_hash
from extproc.errors import StorageError, VerificationError, WALCorruptionError

log = logging.getLogger(__name__)

SEGMENT_PREFIX = "segment-"
SEGMENT_SUFFIX = ".wal"
STATE_FILE = "published.json"
AUDITED_FILE = "audited.json"
# Space held back for the bookkeeping that frees space: on a full disk, saving
# published.json (which lets covered segments go) must not need free space.
RESERVE_FILE = "reserve"
RESERVE_BYTES = 1 << 20
LOCK_FILE = "LOCK"
# A segment goes only once a newer one exists and the published size reaches
# it, so the WAL's volume must hold several: on one that holds less than two,
# the first segment never goes and a full disk stays full. Segments are at most
# this fraction of the volume (64 MiB on any volume of 512 MiB or more).
SEGMENTS_PER_VOLUME = 8
MIN_SEGMENT_BYTES = 64 << 10
NL = b"\n"


@dataclass
class TreeState:
    """The tree at a size: its compact range and the last leaf hash (next prev),
    plus who signed it: the writer's epoch and the verifier key of the checkpoint."""

    size: int = 0
    range_hashes: tuple[bytes, ...] = ()
    last_leaf: bytes = b""
    epoch: int = 1
    key: str = ""  # verifier key string of the key that signed the checkpoint at `size`

    def compact_range(self) -> CompactRange:
        return CompactRange(self.size, self.range_hashes)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "size": self.size,
                "range": [h.hex() for h in self.range_hashes],
                "last": self.last_leaf.hex(),
                "epoch": self.epoch,
                "key": self.key,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> TreeState:
        try:
            obj = orjson.loads(data)
            state = cls(
                int(obj["size"]),
                tuple(bytes.fromhex(h) for h in obj["range"]),
                bytes.fromhex(obj["last"]),
                # Written before epochs and key rotation existed: epoch 1, key unknown.
                int(obj.get("epoch", 1)),
                str(obj.get("key", "")),
            )
            state.compact_range()  # validates hash count against size
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise WALCorruptionError(f"{STATE_FILE} is unreadable: {e}") from e
        return state


@dataclass
class Recovered:
    published: TreeState
    # Entries after the published size, in seq order, with their leaf hashes.
    lines: list[bytes] = field(default_factory=list)
    leaves: list[bytes] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.published.size + len(self.lines)

    @property
    def last_leaf(self) -> bytes:
        return self.leaves[-1] if self.leaves else self.published.last_leaf


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(f: IO[bytes], data: bytes) -> None:
    # Segments are unbuffered: a failed write leaves nothing in a buffer that a
    # later truncate or close would flush back into the file.
    view = memoryview(data)
    while view:
        written = f.write(view)
        if not written:
            raise OSError("write made no progress")
        view = view[written:]


def _replace_file(path: Path, data: bytes) -> None:
    """Replace a small file atomically and durably (temp file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        _fsync_dir(path.parent)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _segment_size(directory: Path, wanted: int) -> int:
    """`wanted`, or less on a volume that would not hold SEGMENTS_PER_VOLUME of them."""
    st = os.statvfs(directory)
    fits = st.f_blocks * st.f_frsize // SEGMENTS_PER_VOLUME
    return max(min(wanted, MIN_SEGMENT_BYTES), min(wanted, fits))


def _segment_name(first_seq: int) -> str:
    return f"{SEGMENT_PREFIX}{first_seq:020d}{SEGMENT_SUFFIX}"


class WAL:
    """One log's WAL directory.

    `write` and `undo` run on the event loop thread (page-cache copies and a
    rare truncate); everything else blocks on the disk and runs at startup or
    in a worker thread.

    Only one batch write runs at a time (the appender guarantees it), so the
    class needs no locking of its own.
    """

    def __init__(
        self, directory: Path, *, segment_bytes: int = 64 << 20, sync: bool = True
    ) -> None:
        self.dir = directory
        self.segment_bytes = segment_bytes
        # sync=False only for benchmarks measuring the cost of fdatasync itself.
        self.sync_enabled = sync
        # Bumped whenever a segment file is (re)opened: the syncer needs the new fd.
        self.generation = 0
        self._file: IO[bytes] | None = None
        self._file_size = 0
        self._lock_fd: int | None = None
        # With the self-audit on: entries below this size are verified in the
        # store, and only those segments may go (None: prune at the published size).
        self.audited_size: int | None = None
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.segment_bytes = _segment_size(self.dir, segment_bytes)
            self._lock_fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._keep_reserve()
        except BlockingIOError as e:
            self.close()
            raise StorageError(
                f"WAL {self.dir} is locked by another process: one writer per log"
            ) from e
        except OSError as e:
            self.close()
            raise StorageError(f"cannot open WAL {self.dir}: {e.strerror}") from e

    # --- recovery -----------------------------------------------------------------

    def segments(self) -> list[tuple[int, Path]]:
        found = []
        for p in self.dir.iterdir():
            name = p.name
            if name.startswith(SEGMENT_PREFIX) and name.endswith(SEGMENT_SUFFIX):
                digits = name[len(SEGMENT_PREFIX) : -len(SEGMENT_SUFFIX)]
                if len(digits) == 20 and digits.isdigit():
                    found.append((int(digits), p))
        return sorted(found)

    def recover(self) -> Recovered:
        """Read the WAL back: published state plus every entry after it."""
        state_path = self.dir / STATE_FILE
        published = TreeState()
        if state_path.exists():
            published = TreeState.from_bytes(state_path.read_bytes())
        recovered = Recovered(published)
        segments = self.segments()
        if not segments:
            if published.size:
                raise WALCorruptionError(
                    f"WAL {self.dir}: {STATE_FILE} says {published.size} entries were "
                    "published but no segment is left"
                )
            return recovered
        if segments[0][0] > published.size:
            raise WALCorruptionError(
                f"WAL {self.dir}: entries {published.size}..{segments[0][0] - 1} are missing "
                f"(oldest segment starts at {segments[0][0]})"
            )
        expected_seq = segments[0][0]
        prev = b""
        for index, (first, path) in enumerate(segments):
            if first != expected_seq:
                raise WALCorruptionError(
                    f"WAL {self.dir}: segment {path.name} starts at {first}, "
                    f"expected {expected_seq}"
                )
            is_last = index == len(segments) - 1
            expected_seq, prev = self._replay(path, first, prev, recovered, is_last)
        if expected_seq < published.size:
            raise WALCorruptionError(
                f"WAL {self.dir}: holds entries up to {expected_seq}, "
                f"but {published.size} were published"
            )
        return recovered

    def _replay(
        self, path: Path, seq: int, prev: bytes, out: Recovered, is_last: bool
    ) -> tuple[int, bytes]:
        data = path.read_bytes()
        pos = 0
        published = out.published
        while pos < len(data):
            end = data.find(b"\n", pos)
            line = data[pos:end] if end >= 0 else data[pos:]
            problem = None
            whole_entry = False
            if end < 0:
                problem = "torn last line"
            else:
                try:
                    fields = entry.parse(line)
                except VerificationError as e:
                    problem = str(e)
                else:
                    whole_entry = True
                    expected_prev = prev if prev or seq == 0 else None
                    if seq == published.size and published.size:
                        expected_prev = published.last_leaf
                    if fields[SEQ] != seq:
                        problem = f"seq {fields[SEQ]} where {seq} was expected"
                    elif expected_prev is not None and fields[PREV] != expected_prev.hex():
                        problem = f"entry {seq} prev hash does not chain"
            if problem is not None:
                # A crash tears or garbles the tail; it never leaves a whole entry
                # that does not chain. Cutting one would drop acknowledged entries.
                if is_last and not whole_entry and not self._valid_line_after(data, pos):
                    log.warning(
                        "WAL %s: cutting unacknowledged tail at entry %d (%s)",
                        path.name,
                        seq,
                        problem,
                    )
                    self._truncate(path, pos)
                    return seq, prev
                raise WALCorruptionError(f"WAL {path}: entry {seq}: {problem}")
            leaf = leaf_hash(line)
            if seq >= published.size:
                out.lines.append(line)
                out.leaves.append(leaf)
            prev = leaf
            seq += 1
            pos = end + 1
        return seq, prev

    @staticmethod
    def _valid_line_after(data: bytes, pos: int) -> bool:
        """Is there a complete, parseable entry after the damaged one at `pos`?"""
        end = data.find(b"\n", pos)
        while end >= 0:
            start, end = end + 1, data.find(b"\n", end + 1)
            if end < 0:
                return False
            try:
                entry.parse(data[start:end])
            except VerificationError:
                continue
            return True
        return False

    @staticmethod
    def _truncate(path: Path, size: int) -> None:
        with path.open("r+b") as f:
            f.truncate(size)
            os.fsync(f.fileno())

    # --- appending ------------------------------------------------------------------

    def write(self, lines: list[bytes], first_seq: int) -> int:
        """Append entry lines to the page cache, no fsync; return the undo offset.

        The group commit calls this on the event loop thread (a memory copy)
        and leaves the disk wait to the syncer thread. On error the partial
        write is cut off and StorageError raised.
        """
        if self._file is None or self._file_size >= self.segment_bytes:
            try:
                self._open_segment(first_seq)
            except OSError as e:
                raise StorageError(f"cannot open a WAL segment in {self.dir}: {e.strerror}") from e
        f = self._file
        assert f is not None
        start = self._file_size
        data = b"\n".join(lines) + b"\n"
        try:
            _write_all(f, data)
        except OSError as e:
            self.undo(start)
            raise StorageError(f"WAL write failed in {self.dir}: {e.strerror or e}") from e
        self._file_size = start + len(data)
        return start

    def fileno(self) -> int:
        """The current segment's file descriptor (valid after a write)."""
        assert self._file is not None
        return self._file.fileno()

    def undo(self, size: int) -> None:
        """Cut the current segment back to `size` (a write or its sync failed)."""
        self._undo(size)
        self._file_size = size

    def _undo(self, size: int) -> None:
        """Cut a failed batch off so the file ends at the last durable entry."""
        f = self._file
        self._file = None  # reopen on the next batch, whatever happens here
        if f is None:
            return
        try:
            f.truncate(size)
            os.fsync(f.fileno())
        except OSError:
            log.exception("WAL %s: could not cut off a failed write", self.dir)
            raise
        finally:
            with contextlib.suppress(OSError):
                f.close()

    def _open_segment(self, first_seq: int) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        segments = self.segments()
        if segments:
            # The newest segment ends right before first_seq: keep filling it
            # (after a restart, or after a failed write cut it back) until full.
            newest = segments[-1][1]
            size = newest.stat().st_size
            if size < self.segment_bytes:
                self._file = newest.open("ab", buffering=0)
                self._file_size = size
                self.generation += 1
                return
        path = self.dir / _segment_name(first_seq)
        try:
            self._file = path.open("xb", buffering=0)
        except FileExistsError as e:
            raise WALCorruptionError(f"WAL segment {path} already exists") from e
        self._file_size = 0
        self.generation += 1

    # --- publication ------------------------------------------------------------------

    def save_published(self, state: TreeState) -> None:
        """Record the published tree state atomically, then drop covered segments.

        On a full disk the reserve file is given up to make room, so that the
        segments the new state covers can go; it is taken back afterwards.
        """
        try:
            self._write_state(state)
        except OSError as e:
            if e.errno != errno.ENOSPC or not self._release_reserve():
                raise StorageError(f"cannot write {STATE_FILE} in {self.dir}: {e.strerror}") from e
            try:
                self._write_state(state)
            except OSError as again:
                raise StorageError(
                    f"cannot write {STATE_FILE} in {self.dir}: {again.strerror}"
                ) from again
            log.warning("WAL %s: disk full; the space reserve let publication go on", self.dir)
            # Space first: segments kept for the self-audit go too (what they
            # could repair is then only reported).
            self._prune(state.size)
        else:
            self._prune(self._prunable(state.size))
        self._keep_reserve()

    def _prunable(self, published_size: int) -> int:
        if self.audited_size is None or self._short_of_space():
            return published_size
        return min(published_size, self.audited_size)

    def _short_of_space(self) -> bool:
        """Less than two segments free: segments kept only for the self-audit go
        now, before appends fail on a full disk (what they could repair is then
        only reported)."""
        st = os.statvfs(self.dir)
        return st.f_bavail * st.f_frsize < 2 * self.segment_bytes + RESERVE_BYTES

    def load_audited(self) -> bytes | None:
        """The self-audit's saved state, if any."""
        try:
            return (self.dir / AUDITED_FILE).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageError(f"cannot read {AUDITED_FILE} in {self.dir}: {e.strerror}") from e

    def save_audited(self, data: bytes, size: int, published_size: int) -> None:
        """Record the self-audit's verified state; segments below it may go."""
        try:
            _replace_file(self.dir / AUDITED_FILE, data)
        except OSError as e:
            raise StorageError(f"cannot write {AUDITED_FILE} in {self.dir}: {e.strerror}") from e
        self.audited_size = size
        self._prune(self._prunable(published_size))

    def read_lines(self, first: int, count: int) -> list[bytes]:
        """Entry lines first..first+count-1 from the segments still on disk
        (fewer, or none, where they are gone). For repairs: reads whole segments."""
        out: list[bytes] = []
        segments = self.segments()
        for index, (start, path) in enumerate(segments):
            end = segments[index + 1][0] if index + 1 < len(segments) else None
            if end is not None and end <= first + len(out):
                continue
            if start > first + len(out):
                break  # a hole: what follows would not be contiguous
            try:
                data = path.read_bytes()
            except OSError as e:
                raise StorageError(f"cannot read WAL segment {path}: {e.strerror}") from e
            lines = data.split(NL)[:-1]  # the last piece is empty or a torn tail
            skip = first + len(out) - start
            out.extend(lines[skip : skip + count - len(out)])
            if len(out) == count:
                break
        return out

    def _write_state(self, state: TreeState) -> None:
        _replace_file(self.dir / STATE_FILE, state.to_bytes())

    def _release_reserve(self) -> bool:
        try:
            (self.dir / RESERVE_FILE).unlink()
        except FileNotFoundError:
            return False
        return True

    def _keep_reserve(self) -> None:
        """Make sure the reserve exists (best effort: the disk may still be full)."""
        path = self.dir / RESERVE_FILE
        if path.exists():
            return
        tmp = self.dir / (RESERVE_FILE + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
            tmp.replace(path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _prune(self, published_size: int) -> None:
        segments = self.segments()
        # A segment can go once the next one starts at or below the published size.
        for (_, path), (next_first, _) in itertools.pairwise(segments):
            if next_first <= published_size:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
