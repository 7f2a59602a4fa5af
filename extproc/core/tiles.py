"""C2SP tlog-tiles (https://c2sp.org/tlog-tiles): hash tiles and entry bundles.

The same RFC 9162 tree as core.merkle, cut into tiles of height 8: the tile
at level L, number N, holds the hashes MTH(D[(N*256+i)*256**L :
(N*256+i+1)*256**L]) for i = 0..255; level 0 holds leaf hashes. A tree of
size s has at level L `s // 256**L` hashes; the last `(s // 256**L) % 256` of
them are a partial tile (`.p/<W>`), never hashed into the level above.

An entry bundle holds the entries of one level-0 tile, each as a big-endian
uint16 length and the entry bytes: the exact stored line (without its
newline) whose leaf hash is SHA-256(0x00 || line). MAX_ENTRY_BYTES (65,535)
is what a uint16 holds.

Pure: the writer (log/tiles.py) and the readers (audit/) share these.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from extproc.core import entry, scan
from extproc.core.fields import PREV, SEQ
from extproc.core.layout import ENTRIES_LEVEL, TILE_WIDTH, TileName
from extproc.core.merkle import HASH_SIZE, LEAF_PREFIX, CompactRange, root_of
from extproc.errors import VerificationError

TILE_HEIGHT = 8  # c2sp.org/tlog-tiles: 256 hashes per full tile
MAX_TILE_BYTES = TILE_WIDTH * HASH_SIZE  # 8,192: a full hash tile
MAX_ENTRY_BUNDLE_BYTES = TILE_WIDTH * (2 + 0xFFFF)  # 256 entries of at most 65,535 bytes
_LEN = 2  # bytes of an entry's length prefix (big-endian uint16)
_LEAF_BASE = hashlib.sha256(LEAF_PREFIX)  # copied per entry: SHA-256(0x00 || entry)


def tile_limit(tile: TileName) -> int:
    """The most bytes a tile of this kind may hold (the format's bound)."""
    return MAX_ENTRY_BUNDLE_BYTES if tile.level == ENTRIES_LEVEL else MAX_TILE_BYTES


def tile_hashes(data: bytes, width: int = TILE_WIDTH) -> list[bytes]:
    """The hashes of a hash tile of `width` hashes (VerificationError if its size
    is not exactly that)."""
    if len(data) != width * HASH_SIZE:
        raise VerificationError(
            f"hash tile of width {width} holds {len(data)} bytes, not {width * HASH_SIZE}"
        )
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


def entry_bundle_bytes(entries: Sequence[bytes]) -> bytes:
    """An entry bundle: each entry as a big-endian uint16 length, then its bytes."""
    out = bytearray()
    for e in entries:
        if len(e) > 0xFFFF:
            raise ValueError(f"entry of {len(e)} bytes does not fit a tlog-tiles entry bundle")
        out += len(e).to_bytes(_LEN, "big")
        out += e
    return bytes(out)


def entry_bundle_entries(data: bytes, width: int = TILE_WIDTH) -> list[bytes]:
    """The entries of an entry bundle that must hold exactly `width` of them
    (VerificationError if it holds another number, or ends inside an entry)."""
    return _split(data, width, None)


def _split(data: bytes, width: int, leaves: list[bytes] | None) -> list[bytes]:
    """entry_bundle_entries; with `leaves`, each entry's leaf hash appended to it
    in the same pass (the verifier's hot loop: one pass, no second list walk)."""
    entries: list[bytes] = []
    base = _LEAF_BASE
    pos, end = 0, len(data)
    while pos < end:
        if len(entries) == width:
            raise VerificationError(f"entry bundle holds more than {width} entries")
        if end - pos < _LEN:
            raise VerificationError("entry bundle ends inside a length prefix")
        n = data[pos] << 8 | data[pos + 1]
        pos += _LEN
        if end - pos < n:
            raise VerificationError(f"entry bundle ends inside entry {len(entries)}")
        e = data[pos : pos + n]
        entries.append(e)
        if leaves is not None:
            h = base.copy()
            h.update(e)
            leaves.append(h.digest())
        pos += n
    if len(entries) != width:
        raise VerificationError(f"entry bundle holds {len(entries)} entries, not {width}")
    return entries


def level_width(size: int, level: int) -> int:
    """The number of hashes a tree of `size` has at tile level `level` (its
    level-`level` tiles hold them; level 0: one per leaf)."""
    return size >> (TILE_HEIGHT * level)


def tiles_at(size: int) -> list[TileName]:
    """The partial tiles a tree of `size` has (none where a level's width is a
    multiple of 256), lowest level first, entry bundle first of all."""
    out: list[TileName] = []
    if size % TILE_WIDTH:
        out.append(TileName(ENTRIES_LEVEL, size // TILE_WIDTH, size % TILE_WIDTH))
    level = 0
    while (n := level_width(size, level)) > 0:
        if n % TILE_WIDTH:
            out.append(TileName(level, n // TILE_WIDTH, n % TILE_WIDTH))
        level += 1
    return out


def new_tiles(old_size: int, new_size: int) -> list[TileName]:
    """The tiles a tree of `new_size` serves that one of `old_size` did not: the
    full tiles completed in between and the partial tiles of `new_size` (as
    golang.org/x/mod/sumdb/tlog NewTiles, plus the entry bundles)."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"tree size {new_size} does not extend {old_size}")
    out: list[TileName] = []
    for level in (ENTRIES_LEVEL, *range(64)):
        lo = level_width(old_size, max(level, 0))
        hi = level_width(new_size, max(level, 0))
        if hi == 0:
            break
        out += [TileName(level, n) for n in range(lo // TILE_WIDTH, hi // TILE_WIDTH)]
        if hi % TILE_WIDTH and hi != lo:
            out.append(TileName(level, hi // TILE_WIDTH, hi % TILE_WIDTH))
    return out


class TileBuilder:
    """The tiles of a growing tree, from its entries in order.

    Holds only the partial tile of each level (at most 255 hashes each) and
    the entries of the partial entry bundle: memory O(log n), one pass.
    `extend` returns the full tiles it completed; `partials` the partial tiles
    at the current size.
    """

    def __init__(self) -> None:
        self.size = 0
        self._levels: list[list[bytes]] = []  # level -> hashes of its partial tile
        self._entries: list[bytes] = []  # entries of the partial entry bundle

    @classmethod
    def resume(cls, size: int, partials: dict[TileName, bytes]) -> TileBuilder:
        """The builder at `size` from the partial tiles a tree of that size serves
        (tiles_at(size): each one's bytes as stored). VerificationError if one is
        missing or malformed; the caller checks `compact_range()` against the
        tree it trusts."""
        builder = cls()
        builder.size = size
        for tile in tiles_at(size):
            data = partials.get(tile)
            if data is None:
                raise VerificationError(f"{tile.path()} missing")
            if tile.level == ENTRIES_LEVEL:
                builder._entries = entry_bundle_entries(data, tile.width)
            else:
                while len(builder._levels) <= tile.level:
                    builder._levels.append([])
                builder._levels[tile.level] = tile_hashes(data, tile.width)
        top = 0
        while level_width(size, top) > 0:
            top += 1
        while len(builder._levels) < top:
            builder._levels.append([])
        return builder

    def extend(self, entries: Iterable[tuple[bytes, bytes]]) -> list[tuple[TileName, bytes]]:
        """Append (entry bytes, leaf hash) pairs; return the full tiles (entry
        bundles and hash tiles) completed, each once."""
        done: list[tuple[TileName, bytes]] = []
        for line, leaf in entries:
            self._entries.append(line)
            if len(self._entries) == TILE_WIDTH:
                index = self.size // TILE_WIDTH
                done.append((TileName(ENTRIES_LEVEL, index), entry_bundle_bytes(self._entries)))
                self._entries = []
            self._push(0, leaf, done)
            self.size += 1
        return done

    def _push(self, level: int, h: bytes, done: list[tuple[TileName, bytes]]) -> None:
        while True:
            if len(self._levels) == level:
                self._levels.append([])
            hashes = self._levels[level]
            hashes.append(h)
            if len(hashes) < TILE_WIDTH:
                return
            done.append((TileName(level, self._full_index(level)), b"".join(hashes)))
            self._levels[level] = []
            h = root_of(hashes)
            level += 1

    def _full_index(self, level: int) -> int:
        """The number of the level-`level` tile completed by the leaf being added."""
        return (self.size + 1) // (TILE_WIDTH << (TILE_HEIGHT * level)) - 1

    def partials(self) -> list[tuple[TileName, bytes]]:
        """The partial tiles at the current size, as tiles_at(size) names them."""
        out: list[tuple[TileName, bytes]] = []
        if self._entries:
            tile = TileName(ENTRIES_LEVEL, self.size // TILE_WIDTH, len(self._entries))
            out.append((tile, entry_bundle_bytes(self._entries)))
        for level, hashes in enumerate(self._levels):
            if hashes:
                index = level_width(self.size, level) // TILE_WIDTH
                out.append((TileName(level, index, len(hashes)), b"".join(hashes)))
        return out

    def compact_range(self) -> CompactRange:
        """The tree's compact range (core.merkle), from the partial tiles: each
        level's partial hashes folded as a tree of their own, top level first."""
        hashes: list[bytes] = []
        for level in reversed(self._levels):
            part = CompactRange()
            part.extend(level)
            hashes += part.hashes
        return CompactRange(self.size, hashes)


@dataclass(frozen=True)
class EntryTileCheck:
    """What one entry bundle and its level-0 tile say (check_entry_tile)."""

    leaves: bytes  # the leaf hashes of the entries, concatenated (b"": unreadable)
    problems: tuple[str, ...]
    first_prev: str  # the first entry's `prev`: the previous entry's leaf hash, in hex


def check_entry_tile(index: int, width: int, bundle: bytes, tile: bytes) -> EntryTileCheck:
    """Check entry bundle `index` (`width` entries) against its level-0 tile: the
    tile holds the leaf hashes of exactly these entries, and each entry is the
    one at its position (`seq`) chained to the one before (`prev`; the first
    one's is returned for the caller to join with the previous bundle's last
    leaf). The quick chain check (core.scan) confirms most entries; the rest
    are parsed."""
    name = TileName(ENTRIES_LEVEL, index, width).path()
    leaves: list[bytes] = []
    try:
        entries = _split(bundle, width, leaves)
    except VerificationError as e:
        return EntryTileCheck(b"", (f"{name}: {e}",), "")
    joined = b"".join(leaves)
    problems = []
    if joined != tile:
        what = TileName(0, index, width).path()
        problems.append(f"{what}: not the leaf hashes of the entries in {name}")
    first = index * TILE_WIDTH
    try:
        first_prev = str(entry.parse(entries[0])[PREV])
    except VerificationError as e:
        return EntryTileCheck(joined, (*problems, f"{name}: entry {first}: {e}"), "")
    for i in scan.chain_mismatches(entries, first, first_prev.encode(), leaves):
        try:
            fields = entry.parse(entries[i])
        except VerificationError as e:
            problems.append(f"{name}: entry {first + i}: {e}")
            continue
        if fields[SEQ] != first + i:
            problems.append(f"{name}: entry {first + i}: seq field says {fields[SEQ]}")
        if fields[PREV] != (leaves[i - 1].hex() if i else first_prev):
            problems.append(f"{name}: entry {first + i}: prev hash mismatch (hash chain broken)")
    return EntryTileCheck(joined, tuple(problems), first_prev)


def level_roots(hashes: Sequence[bytes]) -> list[bytes]:
    """The hashes of the level above: the root of each full group of 256."""
    full = len(hashes) // TILE_WIDTH
    return [root_of(hashes[i * TILE_WIDTH : (i + 1) * TILE_WIDTH]) for i in range(full)]
