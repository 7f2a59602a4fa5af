"""A retired key signs the past (issue 16, attack 8): time from outside, not from the signer.

The keyring says key OLD signed until RETIRED. Whoever holds OLD after that
(it leaked, or an insider kept it) can write any `time` line, or none, into a
checkpoint. So a checkpoint by OLD counts only with evidence the signer does
not control: the auditor's clock, the store's write time (S3), or consistency
with a checkpoint the auditor already trusts (verify's state file, or a newer
checkpoint by a key in its window). docs/THREATS.md, "Retired keys".
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from extproc import cli
from extproc.audit.statefile import load_state
from extproc.audit.verify import AuditOptions, audit_store
from extproc.core import layout
from extproc.core.keyring import Keyring, TrustedKey
from extproc.core.merkle import CompactRange, consistency_proof, leaf_hash
from extproc.core.note import Signer
from extproc.core.state import AuditState, LogState
from extproc.core.tlogproof import ConsistencyProof, TlogProof, verify_proof
from extproc.errors import VerificationError
from extproc.store.local import LocalStore
from extproc.store.memory import MemoryStore
from tests import helpers
from tests.attacks import backdated_proof, inclusion, signed_checkpoint
from tests.helpers import make_entries

OLD = Signer.generate("mesh-audit")
NEW = Signer.generate("mesh-audit-2027")
LOG_ID = "pod-a"
ORIGIN = layout.origin_for("extproc-audit", LOG_ID)
DAY_MS = 86_400_000
NOW_MS = int(time.time() * 1000)
RETIRED_MS = NOW_MS - DAY_MS  # OLD's end date, NEW's start: yesterday
SIZES = (5, 9)  # the honest log's two checkpoints, both signed before RETIRED
RING = Keyring(
    [
        TrustedKey(OLD.verifier(), not_after_ms=RETIRED_MS),
        TrustedKey(NEW.verifier(), not_before_ms=RETIRED_MS),
    ]
)
ENTRIES = make_entries(12)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _checkpoint(size: int, *, time_ms: int | None, signer: Signer = OLD) -> bytes:
    return signed_checkpoint(signer, ORIGIN, ENTRIES[:size], time_ms=time_ms)


def _proof(size: int, index: int, note: bytes) -> TlogProof:
    return inclusion(ENTRIES[:size], index, note)


def _state(size: int) -> AuditState:
    """The auditor's state after a run that trusted the log at `size`."""
    leaves = [leaf_hash(e) for e in ENTRIES[:size]]
    tree = CompactRange()
    tree.extend(leaves)
    note = _checkpoint(size, time_ms=RETIRED_MS - DAY_MS).decode()
    log = LogState(ORIGIN, size, tree.root(), note, tree.hashes, leaves[-1].hex(), "then")
    return AuditState({LOG_ID: log})


def _consistency(old: int, new: int, signer: Signer, time_ms: int) -> ConsistencyProof:
    hashes = consistency_proof([leaf_hash(e) for e in ENTRIES[:new]], old)
    return ConsistencyProof(old, tuple(hashes), _checkpoint(new, time_ms=time_ms, signer=signer))


# --- check-proof, the pure check -------------------------------------------------------

# (time line of OLD's checkpoint, what else the auditor holds) -> refused?
OLD_CHECKPOINT_CASES = {
    "backdated time line alone": (RETIRED_MS - DAY_MS, {}, True),
    "time line left out": (None, {}, True),
    "backdated, state trusts the same checkpoint": (RETIRED_MS - DAY_MS, {"state": 9}, False),
    "no time line, state trusts the same checkpoint": (None, {"state": 9}, False),
    "state trusts a larger tree, no consistency proof": (None, {"state": 11}, True),
    "state trusts a larger tree it is consistent with": (None, {"state": 11, "to": 11}, False),
    "consistent with a newer checkpoint by the new key": (None, {"to": 11, "by": NEW}, False),
    "consistent with a newer one by the retired key": (None, {"to": 11, "by": OLD}, True),
    "the clock before the end date": (None, {"now": RETIRED_MS - 1}, False),
}


@pytest.mark.parametrize(
    ("time_ms", "held", "refused"), OLD_CHECKPOINT_CASES.values(), ids=OLD_CHECKPOINT_CASES.keys()
)
def test_retired_key_checkpoint_needs_evidence_from_outside_the_signer(
    time_ms: int | None, held: dict[str, Any], refused: bool
) -> None:
    proof = _proof(9, 3, _checkpoint(9, time_ms=time_ms))
    state = _state(held["state"]) if isinstance(held.get("state"), int) else None
    consistency = None
    if isinstance(to := held.get("to"), int):
        by = held.get("by", NEW)
        assert isinstance(by, Signer)
        consistency = _consistency(9, to, by, NOW_MS - 1000)
    now = held.get("now", NOW_MS)
    assert isinstance(now, int)
    if refused:
        with pytest.raises(VerificationError, match="retired"):
            verify_proof(proof, RING, now_ms=now, state=state, consistency=consistency)
    else:
        cp = verify_proof(proof, RING, now_ms=now, state=state, consistency=consistency)
        assert cp.size == 9


def test_made_up_entry_under_retired_key_refused_even_beside_a_trusted_state() -> None:
    """The attacker's own tree at the trusted size is a fork, not a match."""
    proof = backdated_proof(OLD, ORIGIN, RETIRED_MS - DAY_MS, entries=9)
    assert proof.extra is not None and b'"made-up"' in proof.extra
    with pytest.raises(VerificationError, match="fork"):
        verify_proof(proof, RING, now_ms=NOW_MS, state=_state(9))
    with pytest.raises(VerificationError, match="retired"):
        verify_proof(proof, RING, now_ms=NOW_MS, state=_state(5))  # the state is older


def test_consistency_proof_that_does_not_hold_is_refused() -> None:
    proof = _proof(9, 3, _checkpoint(9, time_ms=None))
    good = _consistency(9, 11, NEW, NOW_MS - 1000)
    broken = dataclasses.replace(good, hashes=(bytes(32), *good.hashes[1:]))
    with pytest.raises(VerificationError, match="consistency proof"):
        verify_proof(proof, RING, now_ms=NOW_MS, consistency=broken)


def test_consistency_proof_text_round_trip() -> None:
    proof = _consistency(5, 11, NEW, NOW_MS)
    text = proof.to_text()
    assert text.startswith("old 5\n") and "\n\nextproc-audit/pod-a\n11\n" in text
    assert ConsistencyProof.from_text(text) == proof
    assert ConsistencyProof.from_text(text).to_text() == text


# --- the real commands: verify, prove, check-proof --------------------------------------


@pytest.fixture
def retired_log(tmp_path: Path) -> Path:
    """A log on a local store (no write times), signed by OLD before its end date."""
    batches = [
        [{"kind": "request", "rid": f"req-{seq}"} for seq in range(start, end)]
        for start, end in itertools.pairwise((0, *SIZES))
    ]
    signed_at = (RETIRED_MS - DAY_MS) / 1000
    helpers.write_log(
        LocalStore(tmp_path / "store"), OLD, tmp_path / "wal", LOG_ID, *batches, signed_at=signed_at
    )
    ring = tmp_path / "audit.keyring"
    ring.write_text(
        f"{OLD.verifier().to_text()} until={_iso(RETIRED_MS)}\n"
        f"{NEW.verifier().to_text()} from={_iso(RETIRED_MS)}\n"
    )
    return tmp_path


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_retired_key_log_needs_the_state_in_verify_and_check_proof(
    retired_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, ring, state = (
        str(retired_log / "store"),
        str(retired_log / "audit.keyring"),
        retired_log / "s",
    )
    # Today the time lines are the signer's word only: no outside time, no state.
    code, out = _cli(capsys, "verify", store, "--keyring", ring)
    assert code == 1 and "retired" in out and "time line is no evidence" in out, out
    # The auditor's earlier run, while OLD was in use, recorded the log.
    code, out = _cli(
        capsys, "verify", store, "--vkey", OLD.verifier().to_text(), "--state", str(state)
    )
    assert code == 0, out
    assert load_state(state).logs[LOG_ID].size == SIZES[-1]
    code, out = _cli(capsys, "verify", store, "--keyring", ring, "--state", str(state))
    assert code == 0, out

    newest = retired_log / "newest.tlog-proof"
    assert _cli(capsys, "prove", store, "--log", LOG_ID, "--seq", "2", "--out", str(newest))[0] == 0
    code, out = _cli(capsys, "check-proof", str(newest), "--keyring", ring)
    assert code == 1 and "retired" in out, out
    code, out = _cli(capsys, "check-proof", str(newest), "--keyring", ring, "--state", str(state))
    assert code == 0 and f"signed tree size {SIZES[-1]}" in out, out

    # An older checkpoint: consistent with the state's, shown by a consistency proof.
    older = retired_log / "older.tlog-proof"
    args = ("--log", LOG_ID, "--tree-size", str(SIZES[0]))
    assert _cli(capsys, "prove", store, *args, "--seq", "2", "--out", str(older))[0] == 0
    code, out = _cli(capsys, "check-proof", str(older), "--keyring", ring, "--state", str(state))
    assert code == 1 and "retired" in out, out
    link = retired_log / "link.tlog-consistency"
    code, out = _cli(
        capsys,
        "prove",
        store,
        "--log",
        LOG_ID,
        "--consistency-from",
        str(SIZES[0]),
        "--out",
        str(link),
    )
    assert code == 0 and f"consistent with signed tree size {SIZES[-1]}" in out, out
    code, out = _cli(
        capsys,
        "check-proof",
        str(older),
        "--keyring",
        ring,
        "--state",
        str(state),
        "--consistency",
        str(link),
    )
    assert code == 0, out


def test_verify_takes_the_store_write_time_not_the_time_line() -> None:
    """A versioned store (S3) says when it wrote each object: before the end date,
    the checkpoints count; a checkpoint planted today with a backdated time line
    does not."""
    store = MemoryStore(versioned=True)  # write times from 2026-01-01, a second each
    epoch_ms = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
    ring = Keyring([TrustedKey(OLD.verifier(), not_after_ms=epoch_ms + DAY_MS)])
    note = _checkpoint(9, time_ms=None)
    store.put_once(layout.checkpoint_key("", LOG_ID, 9), note, None)
    options = AuditOptions(now_ms=NOW_MS)
    result = audit_store(store, ring, options)
    findings = [str(f) for r in result.reports for f in r.findings]
    assert not any("retired" in f for f in findings), findings
    # The same checkpoint written after the end date: only its time line says otherwise.
    late = Keyring([TrustedKey(OLD.verifier(), not_after_ms=epoch_ms - DAY_MS)])
    result = audit_store(store, late, options)
    findings = [str(f) for r in result.reports for f in r.findings]
    assert any("retired" in f and "the store's write time says" in f for f in findings), findings
