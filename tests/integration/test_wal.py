"""The WAL: what a crash, a torn write, disk damage or a second writer does to it.

Entries are real chained entry lines (entry.encode with seq, prev and leaf
hashes), so recovery checks the same chain the auditor will.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from extproc.core import entry
from extproc.core.merkle import CompactRange, leaf_hash
from extproc.errors import StorageError, WALCorruptionError
from extproc.log.wal import STATE_FILE, WAL, TreeState

SMALL_SEGMENT = 300  # bytes: a few entries per segment, so tests cross segment files


def make_line(seq: int, prev: bytes, **extra: object) -> bytes:
    fields: dict[str, object] = {
        "v": entry.FORMAT_VERSION,
        "seq": seq,
        "prev": prev.hex(),
        "ts": "2025-01-01T00:00:00.000000Z",
        "kind": "request",
        "req": {"method": "GET", "path": f"/item/{seq}"},
        **extra,
    }
    return entry.encode(fields)


def chain(count: int, start: int = 0, prev: bytes = b"") -> tuple[list[bytes], list[bytes]]:
    """`count` entry lines from seq `start`, each chained to the previous leaf hash."""
    lines, leaves = [], []
    for seq in range(start, start + count):
        line = make_line(seq, prev)
        prev = leaf_hash(line)
        lines.append(line)
        leaves.append(prev)
    return lines, leaves


def write_durably(wal: WAL, lines: list[bytes], first: int) -> None:
    """One batch made durable in this thread (the appender leaves the fdatasync
    to its syncer process; a new segment's directory entry is the syncer's too)."""
    wal.write(lines, first)
    os.fdatasync(wal.fileno())


def write_all(wal: WAL, lines: list[bytes], batch: int = 3, start: int = 0) -> None:
    for i in range(0, len(lines), batch):
        write_durably(wal, lines[i : i + batch], start + i)


def state_at(leaves: list[bytes], size: int) -> TreeState:
    tree = CompactRange()
    tree.extend(leaves[:size])
    return TreeState(size, tree.hashes, leaves[size - 1] if size else b"")


@pytest.fixture
def wal_dir(tmp_path: Path) -> Path:
    return tmp_path / "wal"


def written_wal(wal_dir: Path, count: int = 20) -> tuple[list[bytes], list[bytes]]:
    """A closed WAL holding `count` chained entries across several segments."""
    lines, leaves = chain(count)
    wal = WAL(wal_dir, segment_bytes=SMALL_SEGMENT)
    write_all(wal, lines)
    wal.close()
    return lines, leaves


def segment_paths(wal_dir: Path) -> list[Path]:
    return sorted(wal_dir.glob("segment-*.wal"))


def recover(wal_dir: Path) -> tuple[WAL, list[bytes]]:
    wal = WAL(wal_dir, segment_bytes=SMALL_SEGMENT)
    return wal, wal.recover().lines


# --- round trips -----------------------------------------------------------------------


def test_tree_state_round_trips() -> None:
    _, leaves = chain(7)
    state = state_at(leaves, 7)
    assert TreeState.from_bytes(state.to_bytes()) == state
    assert TreeState.from_bytes(TreeState().to_bytes()) == TreeState()


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"[]", b'{"size": 3}', b'{"size": 3, "range": [], "last": ""}'],
    ids=["empty", "bad-json", "not-object", "missing-fields", "range-does-not-fit-size"],
)
def test_unreadable_published_state_is_corruption(wal_dir: Path, data: bytes) -> None:
    written_wal(wal_dir)
    (wal_dir / STATE_FILE).write_bytes(data)
    wal = WAL(wal_dir)
    with pytest.raises(WALCorruptionError, match=STATE_FILE):
        wal.recover()
    wal.close()


def test_entries_survive_restart_across_segments(wal_dir: Path) -> None:
    lines, leaves = written_wal(wal_dir, 20)
    assert len(segment_paths(wal_dir)) >= 3
    wal = WAL(wal_dir, segment_bytes=SMALL_SEGMENT)
    recovered = wal.recover()
    assert recovered.lines == lines
    assert recovered.leaves == leaves
    assert recovered.size == 20
    assert recovered.last_leaf == leaves[-1]
    # Appending after the restart continues the chain; the next recovery sees it all.
    more, _ = chain(5, 20, leaves[-1])
    write_all(wal, more, batch=2, start=20)
    wal.close()
    wal, got = recover(wal_dir)
    assert got == lines + more
    wal.close()
    for path in segment_paths(wal_dir):
        assert path.read_bytes().endswith(b"\n")


def test_empty_wal_recovers_empty(wal_dir: Path) -> None:
    wal = WAL(wal_dir)
    recovered = wal.recover()
    assert (recovered.size, recovered.lines, recovered.last_leaf) == (0, [], b"")
    wal.close()


# --- crash during a write: the unacknowledged tail goes ----------------------------------


def _next_line(lines: list[bytes], leaves: list[bytes]) -> bytes:
    return make_line(len(lines), leaves[-1]) + b"\n"


TORN_TAILS = {
    "half-written-line": lambda nxt: nxt[: len(nxt) // 2],
    "line-without-newline": lambda nxt: nxt[:-1],
    "nul-bytes": lambda nxt: b"\x00" * 4096,
    "nul-bytes-with-newline": lambda nxt: b"\x00" * 100 + b"\n",
    "garbage-then-torn-line": lambda nxt: b"\xff\xfe garbage\n" + nxt[:10],
}


@pytest.mark.parametrize("tail", TORN_TAILS.values(), ids=TORN_TAILS.keys())
def test_torn_tail_is_cut_on_recovery(wal_dir: Path, tail: Callable[[bytes], bytes]) -> None:
    lines, leaves = written_wal(wal_dir, 20)
    last = segment_paths(wal_dir)[-1]
    clean = last.read_bytes()
    last.write_bytes(clean + tail(_next_line(lines, leaves)))

    wal, got = recover(wal_dir)
    assert got == lines
    assert last.read_bytes() == clean  # the tail is gone from disk, not just skipped
    # The log goes on from the last good entry and stays readable.
    more, _ = chain(3, 20, leaves[-1])
    write_durably(wal, more, 20)
    wal.close()
    wal, got = recover(wal_dir)
    assert got == lines + more
    wal.close()


def test_torn_first_line_of_new_segment_is_cut(wal_dir: Path) -> None:
    lines, leaves = written_wal(wal_dir, 20)
    # A crash right after a new segment file was created and half written.
    torn = wal_dir / f"segment-{20:020d}.wal"
    torn.write_bytes(_next_line(lines, leaves)[:7])
    wal, got = recover(wal_dir)
    assert got == lines
    more, _ = chain(2, 20, leaves[-1])
    write_durably(wal, more, 20)
    wal.close()
    wal, got = recover(wal_dir)
    assert got == lines + more
    wal.close()


# --- damage followed by good data: never guessed away -----------------------------------


def _damage_line(data: bytes, index: int, how: str) -> bytes:
    line_list = data.split(b"\n")
    line = line_list[index]
    if how == "nul":
        line_list[index] = b"\x00" * len(line)
    elif how == "bit-flip":
        line_list[index] = line[:5] + bytes([line[5] ^ 0x01]) + line[6:]
    elif how == "edited-field":  # still valid JSON, same seq: its leaf hash changes
        line_list[index] = line.replace(b'"GET"', b'"PUT"')
    elif how == "deleted":
        del line_list[index]
    else:  # duplicated
        line_list.insert(index, line)
    return b"\n".join(line_list)


@pytest.mark.parametrize("how", ["nul", "bit-flip", "edited-field", "deleted", "duplicated"])
def test_damage_before_valid_lines_is_corruption(wal_dir: Path, how: str) -> None:
    written_wal(wal_dir, 21)
    last = segment_paths(wal_dir)[-1]
    data = last.read_bytes()
    assert data.count(b"\n") == 3
    last.write_bytes(_damage_line(data, 0, how))
    wal = WAL(wal_dir)
    with pytest.raises(WALCorruptionError):
        wal.recover()
    wal.close()
    # Nothing was cut off: the evidence stays on disk for inspection.
    assert last.read_bytes() == _damage_line(data, 0, how)


TAMPERED_LAST_LINES = {
    "line-before-last-deleted": lambda data: _damage_line(data, data.count(b"\n") - 2, "deleted"),
    "last-line-duplicated": lambda data: data + data.split(b"\n")[-2] + b"\n",
    "last-line-wrong-seq": lambda data: data + make_line(99, b"") + b"\n",
    "last-line-rechained": lambda data: data + make_line(21, leaf_hash(b"forged")) + b"\n",
}


@pytest.mark.parametrize("tamper", TAMPERED_LAST_LINES.values(), ids=TAMPERED_LAST_LINES.keys())
def test_complete_entry_that_does_not_fit_at_tail_is_corruption(
    wal_dir: Path, tamper: Callable[[bytes], bytes]
) -> None:
    # A crash tears a line or leaves garbage; it never writes a whole, well-formed
    # entry with the wrong seq or prev. Cutting such a line would silently drop
    # acknowledged entries, so recovery stops instead.
    written_wal(wal_dir, 21)
    last = segment_paths(wal_dir)[-1]
    damaged = tamper(last.read_bytes())
    last.write_bytes(damaged)
    wal = WAL(wal_dir)
    with pytest.raises(WALCorruptionError):
        wal.recover()
    wal.close()
    assert last.read_bytes() == damaged


@pytest.mark.parametrize("how", ["nul", "bit-flip", "edited-field"])
def test_damage_in_older_segment_is_corruption(wal_dir: Path, how: str) -> None:
    written_wal(wal_dir, 20)
    first = segment_paths(wal_dir)[0]
    data = first.read_bytes()
    # Even its very last line: only the newest segment may have a torn tail.
    last_index = data.count(b"\n") - 1
    first.write_bytes(_damage_line(data, last_index, how))
    wal = WAL(wal_dir)
    with pytest.raises(WALCorruptionError):
        wal.recover()
    wal.close()


def test_prev_chain_break_is_corruption(wal_dir: Path) -> None:
    lines, _ = chain(10)
    # Entry 5 is re-chained to a forged predecessor; 6.. chain to the forged 5.
    forged, _ = chain(5, 5, leaf_hash(b"forged"))
    wal = WAL(wal_dir)
    write_durably(wal, lines[:5] + forged, 0)
    wal.close()
    wal = WAL(wal_dir)
    with pytest.raises(WALCorruptionError, match="entry 5 prev hash does not chain"):
        wal.recover()
    wal.close()


def test_prev_chain_break_across_segments_is_corruption(wal_dir: Path) -> None:
    lines, _ = chain(6)
    forged, _ = chain(6, 6, leaf_hash(b"another log"))
    wal = WAL(wal_dir, segment_bytes=1)  # one batch per segment
    write_durably(wal, lines, 0)
    write_durably(wal, forged, 6)
    wal.close()
    assert len(segment_paths(wal_dir)) == 2
    wal = WAL(wal_dir)
    with pytest.raises(WALCorruptionError, match="prev hash does not chain"):
        wal.recover()
    wal.close()


# --- missing pieces ---------------------------------------------------------------------


def test_missing_middle_segment_is_corruption(wal_dir: Path) -> None:
    written_wal(wal_dir, 20)
    segments = segment_paths(wal_dir)
    segments[1].unlink()
    wal = WAL(wal_dir)
    with pytest.raises(WALCorruptionError, match="expected"):
        wal.recover()
    wal.close()


def test_missing_first_segment_is_corruption(wal_dir: Path) -> None:
    written_wal(wal_dir, 20)
    segment_paths(wal_dir)[0].unlink()
    wal = WAL(wal_dir)
    with pytest.raises(WALCorruptionError, match="missing"):
        wal.recover()
    wal.close()


def test_all_segments_gone_after_publication_is_corruption(wal_dir: Path) -> None:
    _, leaves = written_wal(wal_dir, 20)
    (wal_dir / STATE_FILE).write_bytes(state_at(leaves, 10).to_bytes())
    for path in segment_paths(wal_dir):
        path.unlink()
    wal = WAL(wal_dir)
    with pytest.raises(WALCorruptionError, match="no segment"):
        wal.recover()
    wal.close()


def test_published_beyond_wal_is_corruption(wal_dir: Path) -> None:
    _, leaves = written_wal(wal_dir, 20)
    _, extra_leaves = chain(5, 20, leaves[-1])
    (wal_dir / STATE_FILE).write_bytes(state_at(leaves + extra_leaves, 25).to_bytes())
    wal = WAL(wal_dir)
    with pytest.raises(WALCorruptionError, match="25 were published"):
        wal.recover()
    wal.close()


def test_entries_after_published_state_must_chain_to_it(wal_dir: Path) -> None:
    _, leaves = written_wal(wal_dir, 20)
    state = state_at(leaves, 10)
    forged_state = TreeState(state.size, state.range_hashes, leaf_hash(b"not entry 9"))
    (wal_dir / STATE_FILE).write_bytes(forged_state.to_bytes())
    wal = WAL(wal_dir)
    with pytest.raises(WALCorruptionError, match="entry 10 prev hash does not chain"):
        wal.recover()
    wal.close()


# --- publication and pruning --------------------------------------------------------------


@pytest.mark.parametrize("published", [1, 7, 12, 19, 20])
def test_pruned_wal_recovers_from_published_state(wal_dir: Path, published: int) -> None:
    lines, leaves = chain(20)
    wal = WAL(wal_dir, segment_bytes=SMALL_SEGMENT)
    write_all(wal, lines)
    before = [int(p.name[8:28]) for p in segment_paths(wal_dir)]
    wal.save_published(state_at(leaves, published))
    after = [int(p.name[8:28]) for p in segment_paths(wal_dir)]
    # Only segments wholly below the published size go; the newest always stays.
    assert after == [
        f for i, f in enumerate(before) if i + 1 >= len(before) or before[i + 1] > published
    ]
    assert after[0] <= published
    # The writer keeps going in the same process after pruning.
    more, more_leaves = chain(4, 20, leaves[-1])
    write_all(wal, more, batch=2, start=20)
    wal.close()

    wal = WAL(wal_dir, segment_bytes=SMALL_SEGMENT)
    recovered = wal.recover()
    assert recovered.published == state_at(leaves, published)
    assert recovered.lines == (lines + more)[published:]
    assert recovered.leaves == (leaves + more_leaves)[published:]
    assert recovered.size == 24
    assert recovered.last_leaf == more_leaves[-1]
    wal.close()


def test_fully_published_wal_recovers_last_leaf(wal_dir: Path) -> None:
    lines, leaves = chain(20)
    wal = WAL(wal_dir, segment_bytes=SMALL_SEGMENT)
    write_all(wal, lines)
    wal.save_published(state_at(leaves, 20))
    wal.close()
    wal = WAL(wal_dir, segment_bytes=SMALL_SEGMENT)
    recovered = wal.recover()
    assert (recovered.size, recovered.lines, recovered.last_leaf) == (20, [], leaves[-1])
    wal.close()


def test_save_published_is_atomic_replace(wal_dir: Path) -> None:
    _, leaves = written_wal(wal_dir, 20)
    wal = WAL(wal_dir, segment_bytes=SMALL_SEGMENT)
    wal.save_published(state_at(leaves, 5))
    wal.save_published(state_at(leaves, 15))
    assert not (wal_dir / (STATE_FILE + ".tmp")).exists()
    assert TreeState.from_bytes((wal_dir / STATE_FILE).read_bytes()) == state_at(leaves, 15)
    wal.close()


# --- one writer per WAL directory -------------------------------------------------------


def test_second_writer_in_same_process_is_refused(wal_dir: Path) -> None:
    wal = WAL(wal_dir)
    with pytest.raises(StorageError, match="locked"):
        WAL(wal_dir)
    wal.close()
    WAL(wal_dir).close()  # the lock goes with its holder


def test_second_writer_process_is_refused(wal_dir: Path) -> None:
    wal = WAL(wal_dir)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from extproc.errors import StorageError\n"
        "from extproc.log.wal import WAL\n"
        "try:\n"
        "    WAL(Path(sys.argv[1]))\n"
        "except StorageError:\n"
        "    sys.exit(3)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(wal_dir)], capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 3, result.stderr
    wal.close()


def test_unusable_wal_directory_is_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(StorageError, match="cannot open WAL"):
        WAL(blocker / "wal")


# --- disk full --------------------------------------------------------------------------

_DISK_FULL_SCRIPT = """
import json, resource, signal, sys
from pathlib import Path
from extproc.errors import StorageError
from extproc.log.wal import WAL
from tests.integration.test_wal import chain, write_durably

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
wal = WAL(Path(sys.argv[1]), segment_bytes=1 << 20)
lines, _ = chain(60)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (4000, hard))  # the disk fills up
durable, errors = 0, []
for first in range(0, 60, 3):
    try:
        write_durably(wal, lines[first : first + 3], first)
    except StorageError as e:
        errors.append(type(e).__name__)
        break
    durable = first + 3
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space is freed
write_durably(wal, lines[durable:], durable)  # the log goes on from the last durable entry
wal.close()
wal = WAL(Path(sys.argv[1]))
print(json.dumps({"errors": errors, "durable": durable, "ok": wal.recover().lines == lines}))
"""


def test_disk_full_batch_is_cut_and_log_continues(wal_dir: Path) -> None:
    # RLIMIT_FSIZE makes writes past a size fail like a full disk, in a child
    # process so the limit cannot touch the test runner.
    result = subprocess.run(
        [sys.executable, "-c", _DISK_FULL_SCRIPT, str(wal_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["errors"] == ["StorageError"]
    assert 0 < outcome["durable"] < 60
    assert outcome["ok"]
