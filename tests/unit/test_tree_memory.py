"""The witness client's consistency proofs from memory (extproc/witness/client.py: TreeMemory)
are the RFC 9162 proofs, for every old and new size it holds, across trims and gaps."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from extproc.core.merkle import CompactRange, consistency_proof, leaf_hash
from extproc.witness.client import TreeMemory
from tests.budget import FUZZ

LEAVES = [leaf_hash(b"e%d" % i) for i in range(300)]


def tree(size: int) -> CompactRange:
    t = CompactRange()
    t.extend(LEAVES[:size])
    return t


@FUZZ
@given(
    cuts=st.lists(st.integers(1, 40), min_size=1, max_size=8),
    start=st.integers(0, 50),
    data=st.data(),
)
def test_proofs_from_memory_are_the_rfc_proofs(
    cuts: list[int], start: int, data: st.DataObject
) -> None:
    memory = TreeMemory(max_leaves=10_000)
    size = start
    for cut in cuts:  # one publication per cut: the tree before it, the leaves since
        memory.add(tree(size), LEAVES[size : size + cut])
        size += cut
    forget = data.draw(st.integers(start, size))
    memory.forget_below(forget)
    old = data.draw(st.integers(forget, size))
    new = data.draw(st.integers(old, size))
    compute = memory.proof(old, new)
    assert compute is not None
    assert compute() == consistency_proof(LEAVES[:new], old)
    assert memory.proof(forget - 1, new) is None if forget > start else True
    assert memory.proof(old, size + 1) is None


def test_a_gap_starts_again_from_the_tree_given() -> None:
    memory = TreeMemory()
    memory.add(tree(0), LEAVES[:10])
    memory.add(tree(20), LEAVES[20:30])  # 10..19 never handed over
    assert memory.proof(5, 25) is None
    compute = memory.proof(20, 30)
    assert compute is not None and compute() == consistency_proof(LEAVES[:30], 20)


def test_memory_is_bounded() -> None:
    memory = TreeMemory(max_leaves=50)
    memory.add(tree(0), LEAVES[:200])
    assert memory.end == 200
    assert memory.proof(149, 200) is None
    compute = memory.proof(150, 200)
    assert compute is not None and compute() == consistency_proof(LEAVES[:200], 150)


def test_a_proof_being_computed_is_not_changed_by_later_publications() -> None:
    memory = TreeMemory(max_leaves=100)
    memory.add(tree(0), LEAVES[:40])
    compute = memory.proof(10, 40)
    assert compute is not None
    memory.add(tree(40), LEAVES[40:200])  # trims past the proof's old size
    memory.forget_below(190)
    assert compute() == consistency_proof(LEAVES[:40], 10)
