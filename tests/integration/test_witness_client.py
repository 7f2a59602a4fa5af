"""The writer's witness client against real witnesses over HTTP on 127.0.0.1.

The answers the spec names, as the client meets them: a 409 with the
witness's size (sent again from it, with a proof), a witness that backs off
after failing and is asked again once its pause is over, a cosignature by a
key the client was not given (not written), and proofs from memory or, for
a witness further behind, from the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import REGISTRY

from extproc import metrics  # noqa: F401 (registers the witness metrics)
from extproc.core import layout
from extproc.core.checkpoint import Checkpoint
from extproc.core.cosignature import Cosigner, WitnessPolicy
from extproc.core.merkle import CompactRange, consistency_proof
from extproc.core.note import parse_note
from extproc.store.memory import MemoryStore
from extproc.witness.client import WitnessClient, backoff_delay
from tests.witnesses import ORIGIN, ModelLog, fixed_cosigner, post, running_witness

W1, W2 = fixed_cosigner("w1.example", 81), fixed_cosigner("w2.example", 82)
LOG_ID = ORIGIN.rsplit("/", 1)[1]


class ModelProofs:
    """Proofs from the model log (what StoreProofs reads from the store), counted."""

    def __init__(self, log: ModelLog) -> None:
        self.log = log
        self.asked: list[tuple[int, int]] = []

    def consistency(self, old_size: int, new_size: int) -> Sequence[bytes]:
        self.asked.append((old_size, new_size))
        return consistency_proof(self.log.leaves[:new_size], old_size)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client(
    log: ModelLog, urls: list[str], witnesses: list[Cosigner], clock: Clock | None = None
) -> tuple[WitnessClient, MemoryStore, ModelProofs]:
    store, proofs = MemoryStore(), ModelProofs(log)
    policy = WitnessPolicy.of(w.witness_key() for w in witnesses)
    made = WitnessClient(policy, urls, store, LOG_ID, proofs, timeout=5, clock=clock or Clock())
    return made, store, proofs


def publish(c: WitnessClient, log: ModelLog, old: int, size: int) -> tuple[Checkpoint, bytes]:
    """What the publisher hands over: the checkpoint, the tree before, the leaves since."""
    log.grow(size)
    before = CompactRange()
    before.extend(log.leaves[:old])
    c.submit(log.checkpoint(size), log.note(size), before, log.leaves[old:size])
    return log.checkpoint(size), log.note(size)


def counted(witness: str, result: str) -> float:
    labels = {"witness": witness, "result": result}
    value = REGISTRY.get_sample_value("extproc_audit_witness_requests_total", labels)
    return value or 0.0


def test_409_is_answered_from_the_witness_size_with_a_proof(tmp_path: Path) -> None:
    log = ModelLog()
    with running_witness(tmp_path, W1) as witness:
        assert post(witness.url, log.body(0, 5))[0] == 200  # cosigned 5 before this run
        c, store, proofs = client(log, [witness.url], [W1])
        checkpoint, note = publish(c, log, 9, 12)  # memory starts at 9: 5 is behind it
        lines = asyncio.run(c.cosign(checkpoint, note))
        assert len(lines) == 1 and proofs.asked == [(5, 12)]
        written = store.get(layout.cosigned_key("", LOG_ID, 12))
        assert written == note + lines[0].encode()
        _, found = c.policy.check(written)
        assert [x.witness.name for x in found] == ["w1.example"]
        assert c.witnessed_size == 12
        # The next checkpoint: the proof from 12 comes from memory, not the store.
        checkpoint, note = publish(c, log, 12, 20)
        assert len(asyncio.run(c.cosign(checkpoint, note))) == 1
        assert proofs.asked == [(5, 12)]


def test_a_witness_down_backs_off_and_is_asked_again_after_its_pause(tmp_path: Path) -> None:
    from extproc import processes

    log, clock = ModelLog(), Clock()
    dead = f"http://127.0.0.1:{processes.free_port()}"
    with running_witness(tmp_path, W1) as witness:
        c, store, _ = client(log, [witness.url, dead], [W1, W2], clock)
        before = counted("w2.example", "unreachable")
        checkpoint, note = publish(c, log, 0, 3)
        assert len(asyncio.run(c.cosign(checkpoint, note))) == 1  # w1's; w2 down
        assert counted("w2.example", "unreachable") == before + 1
        assert c.witnessed_size == 0  # a quorum of two: not witnessed
        checkpoint, note = publish(c, log, 3, 4)
        asyncio.run(c.cosign(checkpoint, note))
        assert counted("w2.example", "unreachable") == before + 1  # in its pause: not asked
        clock.now += 1.5
        checkpoint, note = publish(c, log, 4, 5)
        asyncio.run(c.cosign(checkpoint, note))
        assert counted("w2.example", "unreachable") == before + 2
        # Its pauses double: 2 s now.
        clock.now += 1.5
        checkpoint, note = publish(c, log, 5, 6)
        asyncio.run(c.cosign(checkpoint, note))
        assert counted("w2.example", "unreachable") == before + 2
        assert [o.key.rsplit("/", 1)[1] for o in store.list("")] == [
            f"{n:020d}" for n in (3, 4, 5, 6)
        ]


def test_cosignature_by_another_key_is_not_written(tmp_path: Path) -> None:
    log = ModelLog()
    impostor = fixed_cosigner("w1.example", 89)  # the client trusts W1's key, not this one
    with running_witness(tmp_path, impostor) as witness:
        c, store, _ = client(log, [witness.url], [W1])
        before = counted("w1.example", "bad_cosignature")
        checkpoint, note = publish(c, log, 0, 4)
        assert asyncio.run(c.cosign(checkpoint, note)) == []
        assert counted("w1.example", "bad_cosignature") == before + 1
        assert list(store.list("")) == []


def test_checkpoint_beyond_the_witness_is_a_conflict(tmp_path: Path) -> None:
    log, other = ModelLog(), ModelLog(tag="other")
    with running_witness(tmp_path, W1) as witness:
        assert post(witness.url, other.body(0, 50))[0] == 200  # another tree, larger
        c, store, _ = client(log, [witness.url], [W1])
        before = counted("w1.example", "conflict")
        checkpoint, note = publish(c, log, 0, 10)
        assert asyncio.run(c.cosign(checkpoint, note)) == []
        assert counted("w1.example", "conflict") == before + 1
        assert parse_note(note)[0]  # the log's own checkpoint is untouched
        assert list(store.list("")) == []


def test_back_off_doubles_to_its_bound_and_never_overflows() -> None:
    assert [backoff_delay(n, 300) for n in (1, 2, 3, 9, 10)] == [1, 2, 4, 256, 300]
    assert backoff_delay(10**6, 300) == 300  # a witness down for years
