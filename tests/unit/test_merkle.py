"""RFC 9162 section 2.1 Merkle trees: roots, compact ranges, inclusion and consistency proofs.

extproc.core.merkle is checked three ways:
- known answers from transparency-dev/merkle (tests/vectors/merkle_rfc6962.json);
- a naive reference written below straight from the RFC's recursive
  definitions (entry bytes, list slicing, recursion; nothing shared with the
  module under test), compared on every tree size up to 2000 by Hypothesis;
- tampering: every proof the module makes verifies, and any flipped bit,
  other leaf index or other tree size is rejected with VerificationError.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.core.merkle import (
    EMPTY_ROOT,
    CompactRange,
    compact_range_nodes,
    consistency_proof,
    consistency_ranges,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from extproc.errors import VerificationError

# --- Reference: RFC 9162 section 2.1, transcribed literally -------------------


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    """The largest power of two smaller than n (RFC 9162 2.1.1: k < n <= 2k), n > 1."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over entry bytes, RFC 9162 2.1.1."""
    n = len(d)
    if n == 0:
        return _sha256(b"")
    if n == 1:
        return _sha256(b"\x00" + d[0])
    k = _k(n)
    return _sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:]))


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]), RFC 9162 2.1.3.1, for 0 <= m < n."""
    n = len(d)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true), RFC 9162 2.1.4.1, for 0 < m <= n."""
    return ref_subproof(m, d, True)


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_compact_range(d: Sequence[bytes]) -> list[bytes]:
    """Roots of the perfect subtrees covering D[n], largest (leftmost) first."""
    hashes, start = [], 0
    for bit in reversed(range(len(d).bit_length())):
        if len(d) >> bit & 1:
            hashes.append(ref_mth(d[start : start + (1 << bit)]))
            start += 1 << bit
    return hashes


# --- Test data ------------------------------------------------------------------

MAX_SIZE = 2000
# Entry bytes derived from the index: distinct, cheap, reproducible.
ENTRIES = tuple(f"entry {i}".encode() for i in range(MAX_SIZE + 1))
LEAVES = tuple(leaf_hash(e) for e in ENTRIES)


@functools.cache
def ref_root(size: int) -> bytes:
    return ref_mth(ENTRIES[:size])


def flip(data: bytes, bit: int) -> bytes:
    """`data` with one bit inverted (bit 0 is the top bit of the first byte)."""
    out = bytearray(data)
    out[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(out)


def flipped_at(proof: Sequence[bytes], element: int, bit: int) -> list[bytes]:
    out = list(proof)
    out[element] = flip(out[element], bit)
    return out


# Hypothesis: proofs for trees up to 2000 leaves cost a few ms each.
PROPERTY = settings(max_examples=200, deadline=None)
sizes = st.integers(min_value=0, max_value=MAX_SIZE)
bits = st.integers(min_value=0, max_value=255)


# --- Known answers (transparency-dev/merkle) -------------------------------------

VECTORS = Path(__file__).parents[1] / "vectors" / "merkle_rfc6962.json"


@dataclass(frozen=True)
class InclusionVector:
    leaf_index: int
    tree_size: int
    proof: list[bytes]


@dataclass(frozen=True)
class ConsistencyVector:
    old_size: int
    new_size: int
    proof: list[bytes]


@dataclass(frozen=True)
class MerkleVectors:
    empty_root: bytes
    leaf_inputs: list[bytes]
    leaf_hashes: list[bytes]
    roots: list[bytes]  # indexed by tree size, from 0
    compact_ranges: list[list[bytes]]  # indexed by tree size, from 0
    inclusion: list[InclusionVector]
    consistency: list[ConsistencyVector]


def load_merkle_vectors(path: Path = VECTORS) -> MerkleVectors:
    raw = json.loads(path.read_text())
    assert raw["source"]["repository"], "vectors must name their source"

    def hexes(items: list[str]) -> list[bytes]:
        return [bytes.fromhex(h) for h in items]

    roots = sorted(raw["roots"], key=lambda r: r["tree_size"])
    assert [r["tree_size"] for r in roots] == list(range(len(roots)))
    compact = sorted(raw["compact_ranges"], key=lambda r: r["tree_size"])
    assert [c["tree_size"] for c in compact] == list(range(len(compact)))
    return MerkleVectors(
        empty_root=bytes.fromhex(raw["empty_root"]),
        leaf_inputs=hexes(raw["leaf_inputs"]),
        leaf_hashes=hexes(raw["leaf_hashes"]),
        roots=hexes([r["root"] for r in roots]),
        compact_ranges=[hexes(c["hashes"]) for c in compact],
        inclusion=[
            InclusionVector(v["leaf_index"], v["tree_size"], hexes(v["proof"]))
            for v in raw["inclusion_proofs"]
        ],
        consistency=[
            ConsistencyVector(v["old_size"], v["new_size"], hexes(v["proof"]))
            for v in raw["consistency_proofs"]
        ],
    )


KAT = load_merkle_vectors()
KAT_LEAVES = [leaf_hash(d) for d in KAT.leaf_inputs]


def test_vectors_file_is_complete() -> None:
    assert len(KAT.leaf_inputs) == 8
    assert len(KAT.roots) == len(KAT.compact_ranges) == 9
    assert KAT.inclusion and KAT.consistency


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert EMPTY_ROOT == KAT.empty_root == KAT.roots[0] == _sha256(b"") == ref_mth([])
    assert root_of([]) == CompactRange().root() == EMPTY_ROOT


@pytest.mark.parametrize("i", range(8), ids=lambda i: f"leaf{i}")
def test_known_leaf_hash(i: int) -> None:
    assert leaf_hash(KAT.leaf_inputs[i]) == KAT.leaf_hashes[i]
    assert ref_mth([KAT.leaf_inputs[i]]) == KAT.leaf_hashes[i]


def test_node_hash_is_domain_separated() -> None:
    a, b = KAT.leaf_hashes[0], KAT.leaf_hashes[1]
    assert node_hash(a, b) == _sha256(b"\x01" + a + b) == KAT.roots[2]
    assert node_hash(a, b) != node_hash(b, a)


@pytest.mark.parametrize("size", range(9), ids=lambda n: f"size{n}")
def test_known_root(size: int) -> None:
    want = KAT.roots[size]
    assert ref_mth(KAT.leaf_inputs[:size]) == want  # the reference itself is right
    assert root_of(KAT_LEAVES[:size]) == want
    cr = CompactRange()
    cr.extend(KAT_LEAVES[:size])
    assert cr.root() == want


@pytest.mark.parametrize("size", range(9), ids=lambda n: f"size{n}")
def test_known_compact_range(size: int) -> None:
    want = KAT.compact_ranges[size]
    cr = CompactRange()
    cr.extend(KAT_LEAVES[:size])
    assert list(cr.hashes) == want == ref_compact_range(KAT.leaf_inputs[:size])
    # A writer resuming from the stored hashes computes the same roots.
    resumed = CompactRange(size, want)
    assert resumed.root() == KAT.roots[size]
    resumed.extend(KAT_LEAVES[size:])
    assert resumed.root() == KAT.roots[8]


def _inclusion_corruptions(
    leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes
) -> list[tuple[str, tuple[bytes, int, int, list[bytes], bytes]]]:
    """transparency-dev/merkle proof/verify_test.go corruptInclusionProof, as a table."""
    some_hash = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
    probes = [
        ("index-1", (leaf, index - 1, size, proof, root)),
        ("index+1", (leaf, index + 1, size, proof, root)),
        ("index^2", (leaf, index ^ 2, size, proof, root)),
        ("size*2", (leaf, index, size * 2, proof, root)),
        ("size/2", (leaf, index, size // 2, proof, root)),
        ("wrong-leaf", (b"WrongLeaf", index, size, proof, root)),
        ("empty-root", (leaf, index, size, proof, EMPTY_ROOT)),
        ("random-root", (leaf, index, size, proof, some_hash)),
        ("trailing-garbage", (leaf, index, size, [*proof, b""], root)),
        ("trailing-root", (leaf, index, size, [*proof, root], root)),
        ("preceding-garbage", (leaf, index, size, [b"", *proof], root)),
        ("preceding-root", (leaf, index, size, [root, *proof], root)),
    ]
    if proof:
        probes.append(("removed-component", (leaf, index, size, proof[:-1], root)))
    if len(proof) > 1:
        inserted = [proof[0], some_hash, *proof[1:]]
        probes.append(("inserted-component", (leaf, index, size, inserted, root)))
    return probes


@pytest.mark.parametrize("v", KAT.inclusion, ids=lambda v: f"leaf{v.leaf_index}-of-{v.tree_size}")
def test_known_inclusion_proof(v: InclusionVector) -> None:
    leaves = KAT_LEAVES[: v.tree_size]
    root = KAT.roots[v.tree_size]
    assert inclusion_proof(leaves, v.leaf_index) == v.proof
    assert ref_path(v.leaf_index, KAT.leaf_inputs[: v.tree_size]) == v.proof
    verify_inclusion(KAT_LEAVES[v.leaf_index], v.leaf_index, v.tree_size, v.proof, root)


@pytest.mark.parametrize("v", KAT.inclusion, ids=lambda v: f"leaf{v.leaf_index}-of-{v.tree_size}")
def test_known_inclusion_proof_tampering_rejected(v: InclusionVector) -> None:
    leaf, root = KAT_LEAVES[v.leaf_index], KAT.roots[v.tree_size]
    for name, args in _inclusion_corruptions(leaf, v.leaf_index, v.tree_size, v.proof, root):
        with pytest.raises(VerificationError):
            verify_inclusion(*args)
            pytest.fail(f"accepted: {name}")
    for element in range(len(v.proof)):
        for bit in range(256):
            with pytest.raises(VerificationError):
                verify_inclusion(
                    leaf, v.leaf_index, v.tree_size, flipped_at(v.proof, element, bit), root
                )
    for bit in range(256):
        with pytest.raises(VerificationError):
            verify_inclusion(leaf, v.leaf_index, v.tree_size, v.proof, flip(root, bit))
        with pytest.raises(VerificationError):
            verify_inclusion(flip(leaf, bit), v.leaf_index, v.tree_size, v.proof, root)


def _consistency_corruptions(
    m: int, n: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> list[tuple[str, tuple[int, int, bytes, bytes, list[bytes]]]]:
    """transparency-dev/merkle proof/verify_test.go corruptConsistencyProof, as a table."""
    return [
        ("old-1", (m - 1, n, old_root, new_root, proof)),
        ("old+1", (m + 1, n, old_root, new_root, proof)),
        ("old^2", (m ^ 2, n, old_root, new_root, proof)),
        ("new*2", (m, n * 2, old_root, new_root, proof)),
        ("new/2", (m, n // 2, old_root, new_root, proof)),
        ("wrong-old-root", (m, n, b"WrongRoot", new_root, proof)),
        ("wrong-new-root", (m, n, old_root, b"WrongRoot", proof)),
        ("swapped-roots", (m, n, new_root, old_root, proof)),
        ("empty-proof", (m, n, old_root, new_root, [])),
        ("trailing-garbage", (m, n, old_root, new_root, [*proof, b""])),
        ("trailing-old-root", (m, n, old_root, new_root, [*proof, old_root])),
        ("trailing-new-root", (m, n, old_root, new_root, [*proof, new_root])),
        ("preceding-garbage", (m, n, old_root, new_root, [b"", *proof])),
        ("preceding-old-root", (m, n, old_root, new_root, [old_root, *proof])),
        ("preceding-new-root", (m, n, old_root, new_root, [new_root, *proof])),
        ("preceding-proof0", (m, n, old_root, new_root, [proof[0], *proof])),
        ("truncated", (m, n, old_root, new_root, proof[:-1])),
    ]


@pytest.mark.parametrize("v", KAT.consistency, ids=lambda v: f"size{v.old_size}-to-{v.new_size}")
def test_known_consistency_proof(v: ConsistencyVector) -> None:
    leaves = KAT_LEAVES[: v.new_size]
    assert consistency_proof(leaves, v.old_size) == v.proof
    assert ref_proof(v.old_size, KAT.leaf_inputs[: v.new_size]) == v.proof
    verify_consistency(
        v.old_size, v.new_size, KAT.roots[v.old_size], KAT.roots[v.new_size], v.proof
    )


@pytest.mark.parametrize(
    "v",
    [v for v in KAT.consistency if v.proof],
    ids=lambda v: f"size{v.old_size}-to-{v.new_size}",
)
def test_known_consistency_proof_tampering_rejected(v: ConsistencyVector) -> None:
    m, n, proof = v.old_size, v.new_size, v.proof
    old_root, new_root = KAT.roots[m], KAT.roots[n]
    for name, args in _consistency_corruptions(m, n, old_root, new_root, proof):
        with pytest.raises(VerificationError):
            verify_consistency(*args)
            pytest.fail(f"accepted: {name}")
    for element in range(len(proof)):
        for bit in range(256):
            with pytest.raises(VerificationError):
                verify_consistency(m, n, old_root, new_root, flipped_at(proof, element, bit))
    for bit in range(256):
        with pytest.raises(VerificationError):
            verify_consistency(m, n, flip(old_root, bit), new_root, proof)
        with pytest.raises(VerificationError):
            verify_consistency(m, n, old_root, flip(new_root, bit), proof)


# --- Properties against the reference, tree sizes 0..2000 -----------------------


def test_leaf_hash_is_rfc_leaf_hash() -> None:
    assert all(leaf == _sha256(b"\x00" + e) for leaf, e in zip(LEAVES, ENTRIES, strict=True))


@PROPERTY
@given(size=sizes, data=st.data())
def test_root_equals_rfc_mth(size: int, data: st.DataObject) -> None:
    want = ref_root(size)
    assert root_of(LEAVES[:size]) == want
    cr = CompactRange()
    for leaf in LEAVES[:size]:
        cr.append(leaf)
    assert cr.size == size
    assert cr.root() == want
    assert list(cr.hashes) == ref_compact_range(ENTRIES[:size])
    # Resuming from a stored compact range of any smaller size ends at the same root.
    mid = data.draw(st.integers(0, size), label="resume at")
    resumed = CompactRange()
    resumed.extend(LEAVES[:mid])
    resumed = CompactRange(mid, resumed.hashes)
    resumed.extend(LEAVES[mid:size])
    assert resumed.size == size
    assert resumed.hashes == cr.hashes
    assert resumed.root() == want


@PROPERTY
@given(data=st.data())
def test_inclusion_proof_is_rfc_path_and_verifies(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, MAX_SIZE), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = inclusion_proof(LEAVES[:size], index)
    assert proof == ref_path(index, ENTRIES[:size])
    verify_inclusion(LEAVES[index], index, size, proof, ref_root(size))


@PROPERTY
@given(data=st.data())
def test_inclusion_proof_bit_flip_rejected(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, MAX_SIZE), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = inclusion_proof(LEAVES[:size], index)
    root, leaf = ref_root(size), LEAVES[index]
    bit = data.draw(bits, label="bit")
    with pytest.raises(VerificationError):
        verify_inclusion(leaf, index, size, proof, flip(root, bit))
    with pytest.raises(VerificationError):
        verify_inclusion(flip(leaf, bit), index, size, proof, root)
    if proof:
        element = data.draw(st.integers(0, len(proof) - 1), label="element")
        with pytest.raises(VerificationError):
            verify_inclusion(leaf, index, size, flipped_at(proof, element, bit), root)


@PROPERTY
@given(data=st.data())
def test_inclusion_proof_for_other_index_rejected(data: st.DataObject) -> None:
    size = data.draw(st.integers(2, MAX_SIZE), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    other = data.draw(st.integers(-1, size).filter(lambda j: j != index), label="other")
    proof = inclusion_proof(LEAVES[:size], index)
    with pytest.raises(VerificationError):
        verify_inclusion(LEAVES[index], other, size, proof, ref_root(size))


@PROPERTY
@given(data=st.data())
def test_inclusion_proof_for_other_tree_size_rejected(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, MAX_SIZE), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    other = data.draw(st.integers(0, MAX_SIZE).filter(lambda n: n != size), label="other")
    proof = inclusion_proof(LEAVES[:size], index)
    # Presented against another checkpoint (its own size and root).
    with pytest.raises(VerificationError):
        verify_inclusion(LEAVES[index], index, other, proof, ref_root(other))
    # Same root, size doubled or halved: the path length cannot match.
    for wrong in (size * 2, size // 2):
        with pytest.raises(VerificationError):
            verify_inclusion(LEAVES[index], index, wrong, proof, ref_root(size))


@PROPERTY
@given(data=st.data())
def test_consistency_proof_is_rfc_proof_and_verifies(data: st.DataObject) -> None:
    new_size = data.draw(sizes, label="new size")
    old_size = data.draw(st.integers(0, new_size), label="old size")
    proof = consistency_proof(LEAVES[:new_size], old_size)
    if old_size == 0:
        assert proof == []  # RFC 9162 defines PROOF only for 0 < m; nothing to prove
    else:
        assert proof == ref_proof(old_size, ENTRIES[:new_size])
    verify_consistency(old_size, new_size, ref_root(old_size), ref_root(new_size), proof)


@PROPERTY
@given(data=st.data())
def test_consistency_proof_bit_flip_rejected(data: st.DataObject) -> None:
    new_size = data.draw(st.integers(1, MAX_SIZE), label="new size")
    old_size = data.draw(st.integers(1, new_size), label="old size")
    proof = consistency_proof(LEAVES[:new_size], old_size)
    old_root, new_root = ref_root(old_size), ref_root(new_size)
    bit = data.draw(bits, label="bit")
    with pytest.raises(VerificationError):
        verify_consistency(old_size, new_size, flip(old_root, bit), new_root, proof)
    with pytest.raises(VerificationError):
        verify_consistency(old_size, new_size, old_root, flip(new_root, bit), proof)
    if proof:
        element = data.draw(st.integers(0, len(proof) - 1), label="element")
        with pytest.raises(VerificationError):
            verify_consistency(
                old_size, new_size, old_root, new_root, flipped_at(proof, element, bit)
            )


@PROPERTY
@given(data=st.data())
def test_consistency_proof_for_other_sizes_rejected(data: st.DataObject) -> None:
    new_size = data.draw(st.integers(2, MAX_SIZE), label="new size")
    old_size = data.draw(st.integers(1, new_size - 1), label="old size")
    proof = consistency_proof(LEAVES[:new_size], old_size)
    # Presented for other checkpoints (each with its own size and root).
    other_old = data.draw(st.integers(0, new_size).filter(lambda m: m != old_size))
    with pytest.raises(VerificationError):
        verify_consistency(other_old, new_size, ref_root(other_old), ref_root(new_size), proof)
    other_new = data.draw(st.integers(old_size, MAX_SIZE).filter(lambda n: n != new_size))
    with pytest.raises(VerificationError):
        verify_consistency(old_size, other_new, ref_root(old_size), ref_root(other_new), proof)


def test_small_trees_exhaustively_match_reference() -> None:
    """Every (index, size) and (old, new) pair up to 64 leaves, no sampling."""
    for n in range(1, 65):
        entries, leaves, root = ENTRIES[:n], LEAVES[:n], ref_root(n)
        for i in range(n):
            proof = inclusion_proof(leaves, i)
            assert proof == ref_path(i, entries), (i, n)
            verify_inclusion(leaves[i], i, n, proof, root)
        for m in range(1, n + 1):
            proof = consistency_proof(leaves, m)
            assert proof == ref_proof(m, entries), (m, n)
            verify_consistency(m, n, ref_root(m), root, proof)


# --- Edge cases -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "count"),
    [(0, 1), (1, 0), (1, 2), (2, 2), (3, 1), (3, 3), (4, 2), (7, 2), (8, 0), (-1, 0), (-1, 1)],
    ids=lambda x: str(x),
)
def test_compact_range_with_wrong_hash_count_rejected(size: int, count: int) -> None:
    with pytest.raises(ValueError, match="compact range"):
        CompactRange(size, [EMPTY_ROOT] * count)


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_compact_range_with_wrong_hash_length_rejected(length: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        CompactRange(3, [EMPTY_ROOT, b"\x00" * length])


def test_compact_range_copy_is_independent() -> None:
    cr = CompactRange()
    cr.extend(LEAVES[:5])
    snapshot = cr.copy()
    cr.extend(LEAVES[5:9])
    assert (snapshot.size, snapshot.root()) == (5, ref_root(5))
    assert (cr.size, cr.root()) == (9, ref_root(9))
    snapshot.append(LEAVES[5])
    assert (cr.size, cr.root()) == (9, ref_root(9))
    assert snapshot.root() == ref_root(6)


@pytest.mark.parametrize(
    ("size", "index"), [(0, 0), (1, 1), (5, 5), (5, -1), (5, 100)], ids=lambda x: str(x)
)
def test_inclusion_proof_index_out_of_range_rejected(size: int, index: int) -> None:
    with pytest.raises(ValueError, match="outside tree"):
        inclusion_proof(LEAVES[:size], index)


@pytest.mark.parametrize(
    ("index", "size"), [(0, 0), (1, 1), (5, 5), (-1, 5), (9, 5)], ids=lambda x: str(x)
)
def test_verify_inclusion_index_out_of_range_rejected(index: int, size: int) -> None:
    with pytest.raises(VerificationError, match="outside tree"):
        verify_inclusion(LEAVES[0], index, size, [], ref_root(max(size, 0)))


@pytest.mark.parametrize(("size", "old"), [(5, 6), (5, -1), (0, 1)], ids=lambda x: str(x))
def test_consistency_proof_bad_old_size_rejected(size: int, old: int) -> None:
    with pytest.raises(ValueError, match="consistent"):
        consistency_proof(LEAVES[:size], old)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 8, 1000])
def test_consistency_from_empty_tree(n: int) -> None:
    assert consistency_proof(LEAVES[:n], 0) == []
    verify_consistency(0, n, EMPTY_ROOT, ref_root(n), [])
    with pytest.raises(VerificationError):
        verify_consistency(0, n, EMPTY_ROOT, ref_root(n), [EMPTY_ROOT])


@pytest.mark.parametrize("n", [0, 1, 2, 7, 8, 1000])
def test_consistency_with_same_size(n: int) -> None:
    root = ref_root(n)
    assert consistency_proof(LEAVES[:n], n) == []
    verify_consistency(n, n, root, root, [])
    with pytest.raises(VerificationError, match="two different roots"):
        verify_consistency(n, n, root, flip(root, 0), [])
    with pytest.raises(VerificationError, match="must be empty"):
        verify_consistency(n, n, root, root, [root])


@pytest.mark.parametrize(("old", "new"), [(2, 1), (1, 0), (9, 8)], ids=lambda x: str(x))
def test_consistency_rollback_rejected(old: int, new: int) -> None:
    with pytest.raises(VerificationError, match="larger than"):
        verify_consistency(old, new, ref_root(old), ref_root(new), [])


@pytest.mark.parametrize(("old", "new"), [(1, 2), (3, 8), (4, 8), (7, 9)], ids=lambda x: str(x))
def test_consistency_empty_proof_between_different_sizes_rejected(old: int, new: int) -> None:
    with pytest.raises(VerificationError, match="empty consistency proof"):
        verify_consistency(old, new, ref_root(old), ref_root(new), [])


def test_single_leaf_tree_root_is_leaf_hash() -> None:
    verify_inclusion(LEAVES[0], 0, 1, [], LEAVES[0])
    with pytest.raises(VerificationError, match="too long"):
        verify_inclusion(LEAVES[0], 0, 1, [LEAVES[1]], LEAVES[0])


@given(st.integers(1, 300), st.data())
def test_consistency_proof_from_compact_range_and_new_leaves(n: int, data: st.DataObject) -> None:
    # What verify --state does: old-side proof nodes come from the old tree's
    # compact range, new-side ones from the new leaves only.
    m = data.draw(st.integers(1, n))
    leaves = [leaf_hash(b"%d" % i) for i in range(n)]
    old = CompactRange()
    old.extend(leaves[:m])
    nodes = compact_range_nodes(old)
    proof = []
    for lo, hi in consistency_ranges(m, n):
        assert hi <= m or lo >= m
        proof.append(nodes[(lo, hi)] if hi <= m else root_of(leaves[lo:hi]))
    assert proof == consistency_proof(leaves, m)
    verify_consistency(m, n, old.root(), root_of(leaves), proof)
