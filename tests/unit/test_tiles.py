"""C2SP tlog-tiles: tile paths, hash tiles and entry bundles (core/layout.py, core/tiles.py).

Known answers from the spec (c2sp.org/tlog-tiles): the index path of 1234067,
and the tiles of a tree of size 70,000. Every hash tile is checked against
the spec's definition computed straight from RFC 9162 (core.merkle.root_of).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.core.layout import (
    ENTRIES_LEVEL,
    TILE_WIDTH,
    TileName,
    latest_checkpoint_key,
    parse_key,
    tile_index_path,
    tile_key,
)
from extproc.core.merkle import leaf_hash, root_of
from extproc.core.tiles import (
    TileBuilder,
    entry_bundle_bytes,
    entry_bundle_entries,
    new_tiles,
    tile_hashes,
    tiles_at,
)
from extproc.errors import VerificationError
from tests.budget import FUZZ, within_budget


def _entries(n: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    lines = [b'{"seq":%d}' % i for i in range(start, start + n)]
    return [(line, leaf_hash(line)) for line in lines]


def _key(t: TileName) -> tuple[int, int, int]:
    return (t.level, t.index, t.width)


@pytest.mark.parametrize(
    ("index", "path"),
    [(0, "000"), (5, "005"), (999, "999"), (1000, "x001/000"), (1234067, "x001/x234/067")],
)
def test_tile_index_path_is_the_specs(index: int, path: str) -> None:
    assert tile_index_path(index) == path
    assert TileName(0, index).path() == f"tile/0/{path}"
    assert TileName(ENTRIES_LEVEL, index, 7).path() == f"tile/entries/{path}.p/7"


@pytest.mark.parametrize(
    "path",
    [
        "tile/0/x000/005",  # a leading zero group: not canonical
        "tile/0/5",  # not 3 digits
        "tile/0/x005",  # the last group has no x
        "tile/0/005.p/256",  # a full width written as partial
        "tile/0/005.p/0",  # empty tiles are never served
        "tile/0/005.p/07",  # leading zero in the width
        "tile/64/005",  # levels are 0..63
        "tile/01/005",  # leading zero in the level
        "tile/data/005",
        "tile/0/005/",
        "tile/0/",
    ],
)
def test_off_spec_tile_path_refused(path: str) -> None:
    assert TileName.from_path(path) is None


@given(
    st.integers(min_value=ENTRIES_LEVEL, max_value=63),
    st.integers(min_value=0, max_value=10**15),
    st.integers(min_value=1, max_value=TILE_WIDTH),
)
def test_tile_path_round_trips(level: int, index: int, width: int) -> None:
    tile = TileName(level, index, width)
    assert TileName.from_path(tile.path()) == tile


@FUZZ
@given(st.text(alphabet="tile/entrs0123456789x.p", max_size=60))
def test_tile_path_parser_fuzz(path: str) -> None:
    with within_budget(memory=1 << 20, cpu=0.2):
        tile = TileName.from_path(path)
        assert tile is None or tile.path() == path


def test_tile_keys_are_classified_not_foreign() -> None:
    tile = TileName(1, 1234067, 17)
    key = tile_key("pfx", "web", tile)
    assert key == "pfx/logs/web/tile/1/x001/x234/067.p/17"
    name = parse_key("pfx", key)
    assert name is not None and (name.kind, name.tile) == ("tile", tile)
    latest = parse_key("pfx", latest_checkpoint_key("pfx", "web"))
    assert latest is not None and latest.kind == "latest"
    off = parse_key("pfx", "pfx/logs/web/tile/0/x000/001")
    assert off is not None and off.kind == "unknown"


def test_tiles_of_size_70000_are_the_specs_example() -> None:
    # "a tree of size 70,000 will be represented by 273 full level 0 tiles, one
    # partial level 0 tile of width 112, one full level 1 tile, one partial
    # level 1 tile of width 17, and one partial level 2 tile of width 1"
    names = new_tiles(0, 70000)
    hashes = [t for t in names if t.level >= 0]
    assert sum(1 for t in hashes if t.level == 0 and not t.partial) == 273
    assert [t for t in hashes if t.partial] == [
        TileName(0, 273, 112),
        TileName(1, 1, 17),
        TileName(2, 0, 1),
    ]
    assert [t for t in hashes if t.level == 1 and not t.partial] == [TileName(1, 0)]
    assert tiles_at(256) == [TileName(1, 0, 1)]  # "a full level 0 tile and a partial level 1"


@pytest.mark.parametrize("size", [1, 255, 256, 257, 65535, 65536, 65536 + 256 * 3 + 7, 70000])
def test_builder_tiles_are_the_specs_definition(size: int) -> None:
    entries = _entries(size)
    leaves = [leaf for _, leaf in entries]
    builder = TileBuilder()
    tiles = dict(builder.extend(entries))
    tiles.update(builder.partials())
    assert sorted(tiles, key=_key) == sorted(new_tiles(0, size), key=_key)
    for tile, data in tiles.items():
        if tile.level == ENTRIES_LEVEL:
            first = tile.index * TILE_WIDTH
            want = [line for line, _ in entries[first : first + tile.width]]
            assert entry_bundle_entries(data, tile.width) == want
            continue
        span = TILE_WIDTH**tile.level  # leaves under one hash of the tile
        for i, h in enumerate(tile_hashes(data, tile.width)):
            lo = (tile.index * TILE_WIDTH + i) * span
            assert h == root_of(leaves[lo : lo + span]), (tile, i)
    assert builder.compact_range().root() == root_of(leaves)


@pytest.mark.parametrize(("old", "new"), [(0, 1), (100, 300), (255, 256), (70000, 140000)])
def test_builder_resumes_from_its_partial_tiles(old: int, new: int) -> None:
    first = TileBuilder()
    first.extend(_entries(old))
    resumed = TileBuilder.resume(old, dict(first.partials()))
    assert resumed.compact_range().hashes == first.compact_range().hashes
    more = _entries(new - old, old)
    done = resumed.extend(more)
    assert done == first.extend(more)
    assert resumed.partials() == first.partials()
    names = [t for t, _ in done] + [t for t, _ in resumed.partials()]
    assert sorted(names, key=_key) == sorted(new_tiles(old, new), key=_key)


def test_resume_without_a_partial_tile_refused() -> None:
    builder = TileBuilder()
    builder.extend(_entries(300))
    partials = dict(builder.partials())
    partials.pop(TileName(0, 1, 44))
    with pytest.raises(VerificationError, match="missing"):
        TileBuilder.resume(300, partials)


def test_entry_bundle_round_trips_and_holds_the_largest_entry() -> None:
    entries = [b"", b"a", b"x" * 0xFFFF]
    data = entry_bundle_bytes(entries)
    assert data[:2] == b"\x00\x00" and data[2:4] == b"\x00\x01"
    assert entry_bundle_entries(data, 3) == entries
    with pytest.raises(ValueError, match="does not fit"):
        entry_bundle_bytes([b"x" * 0x10000])


@pytest.mark.parametrize(
    ("data", "width", "why"),
    [
        (b"\x00\x05abc", 1, "ends inside entry"),
        (b"\x00", 1, "inside a length prefix"),
        (b"\x00\x01a\x00\x01b", 1, "more than 1"),
        (b"\x00\x01a", 2, "holds 1 entries, not 2"),
    ],
)
def test_malformed_entry_bundle_detected(data: bytes, width: int, why: str) -> None:
    with pytest.raises(VerificationError, match=why):
        entry_bundle_entries(data, width)


def test_hash_tile_of_wrong_size_detected() -> None:
    with pytest.raises(VerificationError, match="not 64"):
        tile_hashes(b"\x00" * 65, 2)


@FUZZ
@given(st.binary(max_size=4096), st.integers(min_value=1, max_value=TILE_WIDTH))
def test_entry_bundle_parser_fuzz(data: bytes, width: int) -> None:
    with within_budget(memory=1 << 20, cpu=0.2):
        try:
            entries = entry_bundle_entries(data, width)
        except VerificationError:
            return
        assert entry_bundle_bytes(entries) == data
