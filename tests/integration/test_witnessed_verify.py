"""verify and check-proof with witnesses (--witness, --witness-quorum): a split view and a
backdated retired key are caught by what witnesses cosigned.

The log is published by the real writer into an in-memory store; the
`cosigned/<size>` objects are written here as the writer's witness client
writes them (the checkpoint note with cosignature lines appended), or forged.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from extproc.audit.verify import AuditOptions, audit_store
from extproc.core import layout
from extproc.core.cosignature import Cosigner, WitnessPolicy, add_signatures
from extproc.core.keyring import Keyring, TrustedKey
from extproc.core.note import Signer, parse_note
from extproc.core.tlogproof import verify_proof
from extproc.errors import VerificationError
from extproc.store.memory import MemoryStore
from tests import helpers
from tests.attacks import inclusion, signed_checkpoint
from tests.helpers import make_entries
from tests.witnesses import Forger, fixed_cosigner, fixed_signer

LOG_ID = "pod-a"
SIGNER = fixed_signer("mesh-audit", 60)
W1, W2 = fixed_cosigner("w1.example", 61), fixed_cosigner("w2.example", 62)
FORGER = Forger(W1, 63)  # W1's name and key id, another key
NOW_S = int(time.time())
DAY_S = 86_400


def policy(quorum: int | None = None) -> WitnessPolicy:
    return WitnessPolicy.of([W1.witness_key(), W2.witness_key()], quorum)


def published(tmp_path: Path, signed_at: float | None = None) -> tuple[MemoryStore, int, bytes]:
    """A log of 3 checkpoints; the store, the latest size and its note."""
    store = MemoryStore()
    batches = [[{"kind": "request", "rid": f"r{b}{i}"} for i in range(4)] for b in range(3)]
    helpers.write_log(store, SIGNER, tmp_path / "wal", LOG_ID, *batches, signed_at=signed_at)
    sizes = [
        int(o.key.rsplit("/", 1)[1]) for o in store.list(layout.checkpoints_prefix("", LOG_ID))
    ]
    latest = max(sizes)
    return store, latest, store.get(layout.checkpoint_key("", LOG_ID, latest))


def cosign(
    store: MemoryStore, size: int, note: bytes, *lines_of: tuple[Cosigner | Forger, int]
) -> None:
    text, _ = parse_note(note)
    lines = [c.cosign(text, at) for c, at in lines_of]
    store.put_once(layout.cosigned_key("", LOG_ID, size), add_signatures(note, lines), None)


def findings(store: MemoryStore, keys: Keyring, witnesses: WitnessPolicy | None) -> list[str]:
    result = audit_store(store, keys, AuditOptions(witnesses=witnesses))
    # The in-memory store keeps no Object Lock retention: not what these tests hold.
    return [
        str(f)
        for r in result.reports
        for f in r.findings
        if f.severity == "error" and "Object Lock retention" not in f.message
    ]


def test_latest_checkpoint_without_cosignatures_is_a_finding(tmp_path: Path) -> None:
    store, _, _ = published(tmp_path)
    keys = Keyring.of(SIGNER.verifier())
    assert findings(store, keys, None) == []
    (problem,) = findings(store, keys, policy(1))
    assert "0 of the 1 needed" in problem and "cannot be ruled out" in problem


def test_quorum_of_two_fails_with_one_then_passes_with_both(tmp_path: Path) -> None:
    store, size, note = published(tmp_path)
    keys = Keyring.of(SIGNER.verifier())
    cosign(store, size, note, (W1, NOW_S))
    assert findings(store, keys, policy(1)) == []
    (problem,) = findings(store, keys, policy(2))
    assert "1 of the 2 needed" in problem and "w1.example" in problem
    both = MemoryStore()
    for obj in store.list(""):
        if "/cosigned/" not in obj.key:
            both.put_once(obj.key, store.get(obj.key), None)
    cosign(both, size, note, (W1, NOW_S), (W2, NOW_S))
    assert findings(both, keys, policy(2)) == []


def test_forged_cosignature_detected(tmp_path: Path) -> None:
    store, size, note = published(tmp_path)
    cosign(store, size, note, (FORGER, NOW_S), (W2, NOW_S))
    problems = findings(store, Keyring.of(SIGNER.verifier()), policy(1))
    assert any("invalid cosignature by witness w1.example" in p for p in problems), problems


def test_cosignature_of_an_older_checkpoint_does_not_cover_the_latest(tmp_path: Path) -> None:
    store, size, _ = published(tmp_path)
    older = min(
        int(o.key.rsplit("/", 1)[1]) for o in store.list(layout.checkpoints_prefix("", LOG_ID))
    )
    cosign(store, older, store.get(layout.checkpoint_key("", LOG_ID, older)), (W1, NOW_S))
    (problem,) = findings(store, Keyring.of(SIGNER.verifier()), policy(1))
    assert (
        f"tree size {size}" in problem and f"the largest cosigned by a quorum is {older}" in problem
    )


def test_planted_cosigned_object_is_foreign_not_a_cosignature(tmp_path: Path) -> None:
    store, size, _ = published(tmp_path)
    planted = signed_checkpoint(
        fixed_signer("mesh-audit", 99), "x/pod-a", make_entries(size), time_ms=None
    )
    text, _ = parse_note(planted)
    store.put_once(
        layout.cosigned_key("", LOG_ID, size),
        add_signatures(planted, [W1.cosign(text, NOW_S)]),
        None,
    )
    problems = findings(store, Keyring.of(SIGNER.verifier()), policy(1))
    assert len(problems) == 1 and "0 of the 1 needed" in problems[0], problems
    result = audit_store(store, Keyring.of(SIGNER.verifier()), AuditOptions())
    warnings = [str(f) for r in result.reports for f in r.findings]
    assert any("cosigned checkpoint does not verify" in w for w in warnings), warnings


def test_retired_key_checkpoint_cosigned_after_its_end_refused(tmp_path: Path) -> None:
    """The backdating attack: whoever holds a retired key signs a checkpoint whose time
    line is inside the key's window. Witnesses cosign it only now, after the end."""
    store, size, note = published(tmp_path, signed_at=NOW_S - 3 * DAY_S)
    end_ms = (NOW_S - DAY_S) * 1000
    keys = Keyring([TrustedKey(SIGNER.verifier(), not_after_ms=end_ms)])
    cosign(store, size, note, (W1, NOW_S), (W2, NOW_S - 2 * DAY_S))
    # One witness cosigned before the end: not a quorum of two.
    problems = findings(store, keys, policy(2))
    assert any("backdated" in p for p in problems), problems
    # With a quorum of one, the earliest cosignature was inside the window.
    assert findings(store, keys, policy(1)) == []


# --- check-proof -------------------------------------------------------------------

ENTRIES = make_entries(9)
ORIGIN = layout.origin_for(helpers.ORIGIN_PREFIX, LOG_ID)


def proof_note(signer: Signer, *lines_of: tuple[Cosigner | Forger, int]) -> bytes:
    note = signed_checkpoint(signer, ORIGIN, ENTRIES, time_ms=None)
    text, _ = parse_note(note)
    return add_signatures(note, [c.cosign(text, at) for c, at in lines_of])


@pytest.mark.parametrize(
    ("cosigned", "quorum", "retired_days_ago", "error"),
    [
        ((), 1, None, "0 of the 1 needed"),
        (((W1, NOW_S),), 2, None, "1 of the 2 needed"),
        (((W1, NOW_S), (W2, NOW_S)), 2, None, None),
        (((FORGER, NOW_S),), 1, None, "invalid cosignature"),
        # Retired yesterday: cosigned two days ago counts, cosigned now is backdating.
        (((W1, NOW_S - 2 * DAY_S),), 1, 1, None),
        (((W1, NOW_S),), 1, 1, "backdated"),
    ],
    ids=["none", "one_of_two", "both", "forged", "retired_cosigned_in_time", "retired_backdated"],
)
def test_check_proof_requires_a_quorum(
    cosigned: tuple[tuple[Cosigner | Forger, int], ...],
    quorum: int,
    retired_days_ago: int | None,
    error: str | None,
) -> None:
    end = None if retired_days_ago is None else (NOW_S - retired_days_ago * DAY_S) * 1000
    keys = Keyring([TrustedKey(SIGNER.verifier(), not_after_ms=end)])
    proof = inclusion(ENTRIES, 4, proof_note(SIGNER, *cosigned))

    def verify() -> int:
        return verify_proof(proof, keys, now_ms=NOW_S * 1000, witnesses=policy(quorum)).size

    if error is None:
        assert verify() == len(ENTRIES)
    else:
        with pytest.raises(VerificationError, match=error):
            verify()
