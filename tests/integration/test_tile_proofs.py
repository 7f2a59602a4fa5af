"""Proofs from tiles (audit/tiles.py, audit/prove.py): the same RFC 9162 proofs
as from the leaves, from O(log n) tiles, never trusted: a tampered tile gives
a proof from the entries instead, never a wrong one."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.audit.prove import Prover
from extproc.audit.tiles import TiledTree
from extproc.core import layout
from extproc.core.merkle import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_of,
    verify_inclusion,
)
from extproc.core.note import Signer
from extproc.core.tiles import TileBuilder
from extproc.errors import ObjectNotFoundError, VerificationError
from extproc.store.base import DEFAULT_READ_LIMIT
from extproc.store.memory import MemoryStore
from tests.helpers import read_lines, write_log

LOG = "web"


def _tiled(size: int) -> tuple[TiledTree, list[bytes], list[str]]:
    """A tree of `size` entries in tiles in a dict, and the keys it read."""
    lines = [b'{"seq":%d}' % i for i in range(size)]
    builder = TileBuilder()
    tiles = dict(builder.extend((line, leaf_hash(line)) for line in lines))
    tiles.update(builder.partials())
    objects = {layout.tile_key("", LOG, t): d for t, d in tiles.items()}
    read: list[str] = []

    def get(key: str, limit: int) -> bytes:
        read.append(key)
        if key not in objects:
            raise ObjectNotFoundError(key)
        assert len(objects[key]) <= limit
        return objects[key]

    return TiledTree(get, "", LOG, size), [leaf_hash(x) for x in lines], read


@pytest.mark.parametrize("size", [1, 2, 255, 256, 257, 511, 65536, 65536 + 257, 70000])
def test_tile_proofs_are_the_leaves_proofs(size: int) -> None:
    tree, leaves, _ = _tiled(size)
    assert tree.root() == root_of(leaves)
    for index in {i for i in (0, 1, size // 3, size // 2, size - 2, size - 1) if 0 <= i < size}:
        assert tree.inclusion_proof(index) == inclusion_proof(leaves, index), index
    for old in {1, size // 2, size - 1, size} - {0}:
        assert tree.consistency_proof(old) == consistency_proof(leaves, old), old
        assert tree.range_root(0, old) == root_of(leaves[:old])


def test_an_inclusion_proof_reads_log_n_tiles() -> None:
    tree, leaves, read = _tiled(70000)  # three levels: 274 + 2 + 1 hash tiles
    assert tree.entry(12345) == b'{"seq":12345}'
    proof = tree.inclusion_proof(12345)
    verify_inclusion(leaves[12345], 12345, 70000, proof, root_of(leaves))
    assert len(set(read)) <= 2 * 3 + 1  # two tiles a level at most, and the entry bundle


def _log(tmp_path: Path, signer: Signer, *, tiles: bool = True) -> MemoryStore:
    store = MemoryStore("audit")
    batches = [[{"kind": "request", "rid": f"r{i}-{j}"} for j in range(150)] for i in range(4)]
    write_log(store, signer, tmp_path / "wal", LOG, *batches, tiles=tiles)
    return store


class ReadingStore(MemoryStore):
    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store.prefix)
        self.objects = dict(store.objects)
        self.read: list[str] = []

    def get(self, key: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        self.read.append(key)
        return super().get(key, limit)


def test_prove_by_seq_reads_tiles_not_bundles(tmp_path: Path, signer: Signer) -> None:
    store = ReadingStore(_log(tmp_path, signer))
    lines = read_lines(store, LOG)
    store.read.clear()
    proof = Prover(store, LOG, signer.verifier()).inclusion(seq=300)
    assert proof.entry == lines[300]
    assert proof.hashes == tuple(inclusion_proof([leaf_hash(x) for x in lines], 300))
    assert not [k for k in store.read if "/entries/" in k and "/tile/" not in k], store.read
    assert any("/tile/" in k for k in store.read)


def test_consistency_from_tiles_is_the_leaves_proof(tmp_path: Path, signer: Signer) -> None:
    store = ReadingStore(_log(tmp_path, signer))
    leaves = [leaf_hash(x) for x in read_lines(store, LOG)]
    store.read.clear()
    proof = Prover(store, LOG, signer.verifier()).consistency(150)
    assert (proof.second, proof.hashes) == (600, tuple(consistency_proof(leaves, 150)))
    assert proof.first_note is not None and proof.second_note is not None
    assert not [k for k in store.read if "/entries/" in k and "/tile/" not in k], store.read


@pytest.mark.parametrize("target", ["tile/0/001", "tile/entries/001", "tile/1/000.p/2"])
def test_tampered_tile_never_gives_a_wrong_proof(
    tmp_path: Path, signer: Signer, target: str
) -> None:
    store = _log(tmp_path, signer)
    key = f"audit/logs/{LOG}/{target}"
    data = bytearray(store.objects[key])
    data[7] ^= 1
    store.overwrite(key, bytes(data))
    lines = read_lines(store, LOG)
    proof = Prover(store, LOG, signer.verifier()).inclusion(seq=300)
    assert proof.entry == lines[300]  # from the bundles: the tiles' answer did not verify
    verify_inclusion(leaf_hash(lines[300]), 300, proof.checkpoint.size, proof.hashes,
                     proof.checkpoint.root_hash)  # fmt: skip


def test_tile_tree_refuses_what_it_cannot_answer() -> None:
    tree, _, _ = _tiled(300)
    with pytest.raises(VerificationError, match="outside"):
        tree.entry(300)
    with pytest.raises(VerificationError, match="not in the tiles"):
        tree.subtree(512, 8)
