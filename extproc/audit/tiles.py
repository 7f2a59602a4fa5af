"""Reading a log's tree from its C2SP tlog-tiles (docs/FORMAT.md, "Tiles").

`TiledTree` answers what a proof needs, the root of any node of the tree of
a given size, from the hash tiles: O(log n) tiles per proof (at most two per
tile level), each read once, bounded by the format (8,192 bytes a tile) and
cached. Nothing read here is trusted: the caller checks every proof it builds
against a signed root (core.merkle.verify_*), so a wrong tile makes the proof
fail, never pass; the prover then falls back to the entries themselves.

Read side: nothing of the writer is imported (tests/test_boundaries.py).
"""

from __future__ import annotations

from collections.abc import Callable

from extproc.core import layout
from extproc.core.layout import ENTRIES_LEVEL, TILE_WIDTH, TileName
from extproc.core.merkle import (
    consistency_ranges,
    inclusion_ranges,
    node_hash,
    root_of,
)
from extproc.core.tiles import (
    MAX_ENTRY_BUNDLE_BYTES,
    MAX_TILE_BYTES,
    TILE_HEIGHT,
    entry_bundle_entries,
    level_width,
    tile_hashes,
)
from extproc.errors import VerificationError

Read = Callable[[str, int], bytes]  # key, byte bound -> the object's bytes


class TiledTree:
    """The tree of `size` leaves of one log, as its tiles publish it."""

    def __init__(self, read: Read, prefix: str, log_id: str, size: int) -> None:
        self._read = read
        self._prefix = prefix
        self._log_id = log_id
        self.size = size
        self._tiles: dict[tuple[int, int], list[bytes]] = {}
        self.tiles_read = 0

    def _width(self, level: int, index: int) -> int:
        """The width tile `index` of `level` has in a tree of this size (0: none)."""
        n = level_width(self.size, max(level, 0))
        return max(0, min(TILE_WIDTH, n - index * TILE_WIDTH))

    def _tile(self, level: int, index: int) -> list[bytes]:
        got = self._tiles.get((level, index))
        if got is None:
            width = self._width(level, index)
            if width == 0:
                raise VerificationError(f"tile {level}/{index} is beyond tree size {self.size}")
            tile = TileName(level, index, width)
            key = layout.tile_key(self._prefix, self._log_id, tile)
            got = tile_hashes(self._read(key, MAX_TILE_BYTES), width)
            self._tiles[(level, index)] = got
            self.tiles_read += 1
        return got

    def subtree(self, lo: int, height: int) -> bytes:
        """The root of the perfect subtree of 2**height leaves starting at `lo`
        (a multiple of its size), from the tile at level height // 8."""
        level, rest = divmod(height, TILE_HEIGHT)
        first = lo >> (TILE_HEIGHT * level)  # its first hash at that level
        hashes = self._tile(level, first // TILE_WIDTH)
        start = first % TILE_WIDTH
        part = hashes[start : start + (1 << rest)]
        if len(part) != 1 << rest:
            raise VerificationError(f"subtree at {lo} of height {height} is not in the tiles")
        return part[0] if rest == 0 else root_of(part)

    def range_root(self, lo: int, hi: int) -> bytes:
        """MTH of leaves [lo, hi) for a node of the tree: its perfect subtrees,
        largest first, folded right to left (core.merkle.CompactRange.root)."""
        roots: list[bytes] = []
        while lo < hi:
            k = 1 << ((hi - lo).bit_length() - 1)
            if lo:
                k = min(k, lo & -lo)
            roots.append(self.subtree(lo, k.bit_length() - 1))
            lo += k
        if not roots:
            raise VerificationError("empty range has no root")
        root = roots[-1]
        for h in reversed(roots[:-1]):
            root = node_hash(h, root)
        return root

    def root(self) -> bytes:
        return self.range_root(0, self.size)

    def inclusion_proof(self, index: int) -> list[bytes]:
        """PATH(index, D[size]) of RFC 9162, from the tiles."""
        if not 0 <= index < self.size:
            raise VerificationError(f"entry {index} is outside tree size {self.size}")
        return [self.range_root(lo, hi) for lo, hi in inclusion_ranges(index, self.size)]

    def consistency_proof(self, old_size: int) -> list[bytes]:
        """PROOF(old_size, D[size]) of RFC 9162, from the tiles."""
        return [self.range_root(lo, hi) for lo, hi in consistency_ranges(old_size, self.size)]

    def entry(self, index: int) -> bytes:
        """Entry `index` as stored, from its entry bundle."""
        if not 0 <= index < self.size:
            raise VerificationError(f"entry {index} is outside tree size {self.size}")
        bundle = index // TILE_WIDTH
        width = self._width(ENTRIES_LEVEL, bundle)
        tile = TileName(ENTRIES_LEVEL, bundle, width)
        key = layout.tile_key(self._prefix, self._log_id, tile)
        self.tiles_read += 1
        return entry_bundle_entries(self._read(key, MAX_ENTRY_BUNDLE_BYTES), width)[
            index % TILE_WIDTH
        ]
