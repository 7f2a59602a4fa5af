"""verify --tiles: a log checked from its C2SP tlog-tiles (docs/FORMAT.md, "Tiles").

What a standard tlog-tiles client checks, and our entries' own chain:

1. `checkpoint`: a signed note by a trusted key, naming this log (and, on a
   versioned store, every earlier version of it: each signed, its size never
   below the one before, its root the tree's at its size).
2. Every entry bundle: its entries are at their positions (`seq`) and
   chained (`prev`), and their leaf hashes are exactly the level-0 tile.
3. Every hash tile above: the roots of the full tiles below it.
4. The root from the tiles is the checkpoint's.

The entry bundles are checked in parallel over tiles (`processes` worker
processes, each reading and hashing its own run of tiles from the store
URL), the levels above and the root in this process: they are 1/256 of the
work. Everything else `verify` checks of our own layout (claims, epochs,
writer records, retention, foreign objects) stays with plain `verify`.

Every read has the format's bound (core.tiles). Read side: nothing of the
writer is imported (tests/test_boundaries.py).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from extproc.audit.reader import LogReader
from extproc.audit.tiles import TiledTree
from extproc.core import layout
from extproc.core.checkpoint import Checkpoint, open_checkpoint
from extproc.core.findings import WARNING, Finding, LogReport
from extproc.core.keyring import Keyring
from extproc.core.layout import ENTRIES_LEVEL, TILE_WIDTH, TileName
from extproc.core.merkle import CompactRange, root_of
from extproc.core.note import MAX_NOTE_BYTES, Verifier
from extproc.core.state import LogState
from extproc.core.tiles import (
    MAX_ENTRY_BUNDLE_BYTES,
    MAX_TILE_BYTES,
    TileBuilder,
    check_entry_tile,
    entry_bundle_entries,
    level_roots,
    tile_limit,
    tiles_at,
)
from extproc.errors import ObjectNotFoundError, StorageError, VerificationError
from extproc.store.base import ObjectStore

CHUNK_TILES = 64  # entry bundles a worker checks per task (16,384 entries)
MIN_PARALLEL_TILES = 2 * CHUNK_TILES  # below this, one process does it all


@dataclass(frozen=True)
class _Chunk:
    """What a worker found in entry bundles [first, end)."""

    first: int
    roots: list[bytes]  # one level-1 hash per full tile
    problems: list[str]
    first_prev: str
    last_leaf: str


def _read(store: ObjectStore, key: str, limit: int) -> bytes | str:
    """The object's bytes, or why there are none (a problem for the report)."""
    try:
        return store.get(key, limit)
    except ObjectNotFoundError:
        return f"{key}: missing"
    except VerificationError as e:  # over its bound, not a file
        return f"{key}: {e}"


def _check_run(store: ObjectStore, log_id: str, first: int, end: int, width: int) -> _Chunk:
    """Entry bundles [first, end) of `width` entries and their level-0 tiles."""
    roots: list[bytes] = []
    problems: list[str] = []
    first_prev, last_leaf = "", ""
    for index in range(first, end):
        bundle = _read(
            store, _key(store, log_id, ENTRIES_LEVEL, index, width), MAX_ENTRY_BUNDLE_BYTES
        )
        tile = _read(store, _key(store, log_id, 0, index, width), MAX_TILE_BYTES)
        if isinstance(bundle, str) or isinstance(tile, str):
            problems += [x for x in (bundle, tile) if isinstance(x, str)]
            roots.append(b"")
            last_leaf = ""
            continue
        got = check_entry_tile(index, width, bundle, tile)
        problems += got.problems
        if index == first:
            first_prev = got.first_prev
        elif got.leaves and got.first_prev != last_leaf:
            problems.append(_broken_between(index))
        last_leaf = got.leaves[-32:].hex()
        roots.append(_tile_root(got.leaves) if width == TILE_WIDTH else got.leaves)
    return _Chunk(first, roots, problems, first_prev, last_leaf)


def _tile_root(leaves: bytes) -> bytes:
    return root_of([leaves[i : i + 32] for i in range(0, len(leaves), 32)]) if leaves else b""


def _broken_between(index: int) -> str:
    return (
        f"{TileName(ENTRIES_LEVEL, index).path()}: entry {index * TILE_WIDTH}: prev hash "
        "mismatch (hash chain broken between entry bundles)"
    )


def _key(store: ObjectStore, log_id: str, level: int, index: int, width: int) -> str:
    return layout.tile_key(store.prefix, log_id, TileName(level, index, width))


_WORKER_STORE: dict[str, ObjectStore] = {}


def _worker(task: tuple[str, str, str, int, int]) -> _Chunk:
    """A worker process: its own store handle (opened once per process) by URL."""
    from extproc.store import open_store

    url, prefix, log_id, first, end = task
    store = _WORKER_STORE.get(url)
    if store is None:
        store = _WORKER_STORE[url] = open_store(url)
        store.prefix = prefix
    return _check_run(store, log_id, first, end, TILE_WIDTH)


def _chunks(store: ObjectStore, log_id: str, full: int, processes: int) -> Iterator[_Chunk]:
    """The full entry bundles [0, full), checked in order (over `processes` workers
    where the store can be opened again by URL: S3 and local directories)."""
    tasks = [
        (store.url, store.prefix, log_id, a, min(a + CHUNK_TILES, full))
        for a in range(0, full, CHUNK_TILES)
    ]
    reopenable = store.url.startswith("s3://") or Path(store.url).is_dir()
    if processes <= 1 or full < MIN_PARALLEL_TILES or not reopenable:
        for _, _, _, a, b in tasks:
            yield _check_run(store, log_id, a, b, TILE_WIDTH)
        return
    # spawn, not fork: the caller may run threads (verify checks logs in parallel).
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        yield from pool.imap(_worker, tasks)


def _checkpoint(
    store: ObjectStore, log_id: str, keyring: Keyring, origin_prefix: str | None
) -> tuple[Checkpoint | None, str, list[Finding]]:
    key = layout.latest_checkpoint_key(store.prefix, log_id)
    data = _read(store, key, MAX_NOTE_BYTES)
    if isinstance(data, str):
        why = "not published in tlog-tiles layout (serve --no-tiles, or not yet)"
        return None, "", [Finding(log_id, key, f"no checkpoint: {why}")]
    try:
        cp = open_checkpoint(data, keyring)
    except VerificationError as e:
        return None, "", [Finding(log_id, key, f"checkpoint does not verify: {e}")]
    wanted = layout.origin_for(origin_prefix, log_id) if origin_prefix else None
    if (wanted and cp.origin != wanted) or not cp.origin.endswith(f"/{log_id}"):
        return None, "", [Finding(log_id, key, f"checkpoint names another log ({cp.origin})")]
    return cp, data.decode(), []


def verify_tiles(
    store: ObjectStore,
    log_id: str,
    keyring: Keyring,
    origin_prefix: str | None = None,
    *,
    processes: int | None = None,
    prior: LogState | None = None,
) -> LogReport:
    """Check one log from its tlog-tiles (module docstring); findings in the
    report. With `prior` (the state a run verified, `verify --tiles --state`),
    only what lies past its size is read: the tiles of its size are checked
    against its frontier, then extended with the new entries."""
    report = LogReport(log_id)
    cp, note, report.findings = _checkpoint(store, log_id, keyring, origin_prefix)
    if cp is None:
        return report
    report.latest, report.latest_note, report.checkpoints = cp, note, 1
    report.bundles = -(-cp.size // TILE_WIDTH)  # entry bundles
    report.entries = cp.size
    key = layout.latest_checkpoint_key(store.prefix, log_id)
    if prior is not None and prior.size:
        problems, tree, last_leaf = _check_from(store, log_id, cp, prior)
        report.resumed_from, report.rehashed = prior.size, cp.size - prior.size
    else:
        problems, tree, last_leaf = _check_all(store, log_id, cp, processes)
        report.rehashed = cp.size
    report.findings += [Finding(log_id, "", p) for p in problems]
    if problems:
        report.findings.append(Finding(log_id, "", "the tiles do not verify: root not checked"))
        return report
    if tree is None or tree.root() != cp.root_hash:
        report.findings.append(
            Finding(log_id, key, "root hash from the tiles is not the checkpoint's")
        )
        return report
    report.frontier = (tree, last_leaf)
    history, report.checkpoints = _check_history(store, log_id, keyring, cp, prior)
    report.findings += history
    return report


def _check_all(
    store: ObjectStore, log_id: str, cp: Checkpoint, processes: int | None
) -> tuple[list[str], CompactRange | None, str]:
    """Every tile, from seq 0: problems, the tree from the tiles, the last leaf (hex)."""
    size, full = cp.size, cp.size // TILE_WIDTH
    level1: list[bytes] = []
    problems: list[str] = []
    last_leaf = ""  # the first entry's prev is ""
    for chunk in _chunks(store, log_id, full, processes or os.cpu_count() or 1):
        problems += chunk.problems
        if chunk.first_prev != last_leaf:
            problems.append(_broken_between(chunk.first))
        level1 += chunk.roots
        last_leaf = chunk.last_leaf
    partials: dict[TileName, bytes] = {}
    if width := size % TILE_WIDTH:
        tail = _check_run(store, log_id, full, full + 1, width)
        problems += tail.problems
        if tail.first_prev != last_leaf:
            problems.append(_broken_between(full))
        last_leaf = tail.last_leaf
        bundle = _read(
            store, _key(store, log_id, ENTRIES_LEVEL, full, width), MAX_ENTRY_BUNDLE_BYTES
        )
        if isinstance(bundle, bytes) and tail.roots and tail.roots[0]:
            partials[TileName(ENTRIES_LEVEL, full, width)] = bundle
            partials[TileName(0, full, width)] = tail.roots[0]
    problems += _check_levels(store, log_id, level1, partials)
    if problems:
        return problems, None, last_leaf
    try:
        return [], TileBuilder.resume(size, partials).compact_range(), last_leaf
    except VerificationError as e:
        return [str(e)], None, last_leaf


def _check_from(
    store: ObjectStore, log_id: str, cp: Checkpoint, prior: LogState
) -> tuple[list[str], CompactRange | None, str]:
    """The tiles past a verified size: the partial tiles of that size give its
    frontier (and their entries its leaves), then every entry since extends
    them (checked against its level-0 tile, seq and prev) and every tile the
    extension completes, and the partial tiles of the new size, must be the
    stored ones. Reads O(new entries / 256 + log n) objects."""
    if cp.origin != prior.origin:
        return [f"checkpoint origin {cp.origin} is not the verified {prior.origin}"], None, ""
    if cp.size < prior.size:
        return [f"rollback: tree size {cp.size} below the verified size {prior.size}"], None, ""
    start = prior.size
    partials: dict[TileName, bytes] = {}
    for tile in tiles_at(start):
        stored = _read(store, layout.tile_key(store.prefix, log_id, tile), tile_limit(tile))
        if isinstance(stored, str):
            return [f"{stored} (a tile of the verified size)"], None, ""
        partials[tile] = stored
    try:
        builder = TileBuilder.resume(start, partials)
    except VerificationError as e:
        return [f"tiles of the verified size {start}: {e}"], None, ""
    if builder.compact_range().hashes != prior.frontier:
        return [f"tiles of the verified size {start} are not the verified tree"], None, ""
    problems: list[str] = []
    expected: dict[TileName, bytes] = {}
    last_leaf = prior.last_leaf
    old_partial = partials.get(TileName(ENTRIES_LEVEL, start // TILE_WIDTH, start % TILE_WIDTH))
    old_entries = entry_bundle_entries(old_partial, start % TILE_WIDTH) if old_partial else []
    for index in range(start // TILE_WIDTH, -(-cp.size // TILE_WIDTH)):
        width = min(TILE_WIDTH, cp.size - index * TILE_WIDTH)
        bundle = _read(
            store, _key(store, log_id, ENTRIES_LEVEL, index, width), MAX_ENTRY_BUNDLE_BYTES
        )
        level0 = _read(store, _key(store, log_id, 0, index, width), MAX_TILE_BYTES)
        if isinstance(bundle, str) or isinstance(level0, str):
            problems += [x for x in (bundle, level0) if isinstance(x, str)]
            break
        checked = check_entry_tile(index, width, bundle, level0)
        problems += checked.problems
        if checked.problems:
            break
        entries = entry_bundle_entries(bundle, width)
        first = index == start // TILE_WIDTH
        skip = start - index * TILE_WIDTH if first else 0
        if first and entries[:skip] != old_entries:
            path = TileName(ENTRIES_LEVEL, index, width).path()
            problems.append(f"{path}: not the entries verified before")
        if skip == 0 and checked.first_prev != last_leaf:
            problems.append(_broken_between(index))
        joined = checked.leaves
        leaves = [joined[i : i + 32] for i in range(0, len(joined), 32)]
        expected.update(builder.extend(zip(entries[skip:], leaves[skip:], strict=True)))
        last_leaf = leaves[-1].hex()
    expected.update(p for p in builder.partials() if p[0] not in set(tiles_at(start)))
    for tile, data in expected.items():
        if tile.level == ENTRIES_LEVEL:
            continue  # their leaves were checked against the level-0 tiles, compared here
        stored = _read(store, layout.tile_key(store.prefix, log_id, tile), MAX_TILE_BYTES)
        if isinstance(stored, str):
            problems.append(stored)
        elif stored != data:
            problems.append(f"{tile.path()}: not the roots of the tiles below it")
    return problems, builder.compact_range() if not problems else None, last_leaf


def _check_levels(
    store: ObjectStore, log_id: str, hashes: list[bytes], partials: dict[TileName, bytes]
) -> list[str]:
    """Level 1 and up: each full tile is the roots of the full tiles below; the
    partial tile of each level goes to `partials` (for the root)."""
    problems: list[str] = []
    level = 1
    while hashes:
        full, width = divmod(len(hashes), TILE_WIDTH)
        for index in range(full + (1 if width else 0)):
            w = TILE_WIDTH if index < full else width
            want = b"".join(hashes[index * TILE_WIDTH : index * TILE_WIDTH + w])
            key = _key(store, log_id, level, index, w)
            got = _read(store, key, MAX_TILE_BYTES)
            if isinstance(got, str):
                problems.append(got)
            elif got != want:
                path = TileName(level, index, w).path()
                problems.append(f"{path}: not the roots of the tiles below it")
            if index == full:
                partials[TileName(level, index, w)] = want
        hashes = level_roots(hashes)
        level += 1
    return problems


def _check_history(
    store: ObjectStore,
    log_id: str,
    keyring: Keyring,
    latest: Checkpoint,
    prior: LogState | None = None,
) -> tuple[list[Finding], int]:
    """Every version of `checkpoint` (a versioned store keeps them): signed,
    never smaller than the one before, its root the tree's at its size. With
    `prior`, only the versions written since it was verified (and their roots
    from its size on): one read per new version."""
    since = prior.size if prior is not None else 0
    after = _parse_time(prior.verified_at) if prior is not None else None
    versioned = store.versioned()
    if versioned is None:
        return [], 1
    key = layout.latest_checkpoint_key(store.prefix, log_id)
    tree = TiledTree(store.get, store.prefix, log_id, latest.size)
    findings: list[Finding] = []
    previous = 0
    try:
        versions = [v for v in versioned.versions(key) if v.key == key and not v.delete_marker]
        if after is not None:
            versions = [v for v in versions if v.last_modified is None or v.last_modified > after]
        for version in versions:
            what = f"version {version.version_id}"
            try:
                cp = open_checkpoint(
                    versioned.get_version(key, version.version_id, MAX_NOTE_BYTES), keyring
                )
            except (VerificationError, ObjectNotFoundError) as e:
                findings.append(Finding(log_id, key, f"{what} does not verify: {e}"))
                continue
            if cp.size < previous:
                findings.append(
                    Finding(log_id, key, f"{what}: tree size {cp.size} after {previous} (rollback)")
                )
            elif cp.size > latest.size or (
                cp.size >= max(since, 1) and tree.range_root(0, cp.size) != cp.root_hash
            ):
                findings.append(
                    Finding(log_id, key, f"{what}: root of size {cp.size} is not this tree's")
                )
            previous = max(previous, cp.size)
    except (StorageError, VerificationError) as e:
        findings.append(Finding(log_id, key, f"versions not readable: {e}"))
        return findings, 1
    return findings, len(versions)


def check_latest(
    reader: LogReader, trusted: Keyring | Verifier, valid: list[Checkpoint]
) -> list[Finding]:
    """Plain verify's look at the tlog-tiles `checkpoint` (its current version,
    one read): signed by a trusted key for this log, and the checkpoint of
    record at its size (`checkpoints/<size>`, in `valid`) has the same root.
    A version no trusted key signed is a warning (standard clients refuse it
    until the writer's next checkpoint); another root at a size is an error."""
    key = reader.objects.latest
    if not key:
        return []
    log_id = reader.log_id
    try:
        cp = open_checkpoint(reader.store.get(key, MAX_NOTE_BYTES), trusted)
    except ObjectNotFoundError:
        return []
    except VerificationError as e:
        why = f"not a checkpoint of a trusted key ({e}): standard clients refuse the log"
        return [Finding(log_id, key, why, WARNING)]
    if not cp.origin.endswith(f"/{log_id}"):
        return [Finding(log_id, key, f"checkpoint names another log ({cp.origin})")]
    roots = {c.size: c.root_hash for c in valid}
    if cp.size in roots and roots[cp.size] != cp.root_hash:
        return [Finding(log_id, key, f"another root than the checkpoint of size {cp.size}")]
    if valid and cp.size > max(roots):
        return [Finding(log_id, key, f"signed tree size {cp.size} has no checkpoint of record")]
    return []


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
