"""C2SP tlog-proof files: the text format, and what verification rejects.

Proof hashes are compared with the RFC 9162 reference in tests/unit/test_merkle.py
(PATH and MTH transcribed from the RFC, nothing shared with extproc.core.merkle).
"""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.core.checkpoint import Checkpoint, sign_checkpoint
from extproc.core.merkle import inclusion_proof, leaf_hash
from extproc.core.note import Signer
from extproc.core.tlogproof import HEADER, ProofFormatError, TlogProof, verify_proof
from extproc.errors import VerificationError
from tests.conftest import run_cli
from tests.helpers import make_entries
from tests.unit.test_merkle import ref_mth, ref_path

ORIGIN = "audit.example/mesh/pod-a"
SIGNER = Signer.generate("test-audit")
VERIFIER = SIGNER.verifier()
PROPERTY = settings(max_examples=150, deadline=None)


ENTRIES = make_entries(70)


def make_proof(size: int, index: int, signer: Signer = SIGNER) -> TlogProof:
    entries = ENTRIES[:size]
    cp = Checkpoint(ORIGIN, size, ref_mth(entries), ("time 1",))
    hashes = inclusion_proof([leaf_hash(e) for e in entries], index)
    return TlogProof(index, tuple(hashes), sign_checkpoint(cp, signer), entries[index])


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8 % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


proofs = st.integers(1, len(ENTRIES)).flatmap(
    lambda size: st.tuples(st.just(size), st.integers(0, size - 1))
)


# --- format -----------------------------------------------------------------------------


def test_text_layout_follows_the_spec() -> None:
    proof = make_proof(5, 2)
    lines = proof.to_text().split("\n")
    assert lines[0] == HEADER == "c2sp.org/tlog-proof@v1"
    assert lines[1] == "extra " + base64.b64encode(ENTRIES[2]).decode()
    assert lines[2] == "index 2"
    assert [base64.b64decode(x) for x in lines[3:6]] == ref_path(2, ENTRIES[:5])
    assert lines[6] == ""  # then the checkpoint, verbatim
    assert proof.to_text().endswith("\n\n" + proof.checkpoint.decode())


@PROPERTY
@given(proofs, st.booleans())
def test_round_trip(size_index: tuple[int, int], with_entry: bool) -> None:
    proof = make_proof(*size_index)
    if not with_entry:
        proof = dataclasses.replace(proof, extra=None)
    text = proof.to_text()
    assert TlogProof.from_text(text) == proof
    assert TlogProof.from_text(text).to_text() == text


def test_single_entry_tree_has_no_hash_lines() -> None:
    proof = make_proof(1, 0)
    assert proof.hashes == ()
    assert "\nindex 0\n\n" in proof.to_text()
    verify_proof(TlogProof.from_text(proof.to_text()), VERIFIER)


GOOD = make_proof(6, 3).to_text()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(GOOD.replace(HEADER, "c2sp.org/tlog-proof@v2"), id="wrong-header"),
        pytest.param(GOOD.replace("index 3", "index 03"), id="leading-zero-index"),
        pytest.param(GOOD.replace("index 3", "index -3"), id="negative-index"),
        pytest.param(GOOD.replace("index 3", "idx 3"), id="no-index-line"),
        pytest.param(GOOD.replace("index 3\n", "index 3\nnot-base64!\n"), id="bad-hash-base64"),
        pytest.param(GOOD.replace("index 3\n", "index 3\nAAAA\n"), id="short-hash"),
        pytest.param(GOOD.replace("extra ", "extra !"), id="bad-extra-base64"),
        pytest.param(GOOD.split("\n\n", 1)[0], id="no-checkpoint"),
        pytest.param("", id="empty"),
        pytest.param(
            GOOD.replace("index 3", "index 99999999999999999999"), id="index-over-64-bits"
        ),
    ],
)
def test_malformed_proof_rejected_as_format_error(text: str) -> None:
    with pytest.raises(ProofFormatError):
        TlogProof.from_text(text)


# --- verification ----------------------------------------------------------------------------


@PROPERTY
@given(proofs)
def test_every_proof_verifies_and_matches_rfc_path(size_index: tuple[int, int]) -> None:
    size, index = size_index
    proof = TlogProof.from_text(make_proof(size, index).to_text())
    assert list(proof.hashes) == ref_path(index, ENTRIES[:size])
    cp = verify_proof(proof, VERIFIER, origin=ORIGIN)
    assert (cp.size, cp.root_hash) == (size, ref_mth(ENTRIES[:size]))


@PROPERTY
@given(proofs, st.integers(0, 1 << 20), st.sampled_from(["entry", "hash", "checkpoint"]))
def test_any_bit_flip_rejected(size_index: tuple[int, int], bit: int, where: str) -> None:
    proof = make_proof(*size_index)
    if where == "hash" and not proof.hashes:
        where = "entry"
    if where == "entry":
        assert proof.extra is not None
        tampered = dataclasses.replace(proof, extra=flip(proof.extra, bit))
    elif where == "hash":
        i = bit % len(proof.hashes)
        hashes = list(proof.hashes)
        hashes[i] = flip(hashes[i], bit // len(proof.hashes))
        tampered = dataclasses.replace(proof, hashes=tuple(hashes))
    else:
        tampered = dataclasses.replace(proof, checkpoint=flip(proof.checkpoint, bit))
    with pytest.raises(VerificationError):
        # The object, not its text: a flipped checkpoint byte may not be UTF-8.
        verify_proof(tampered, VERIFIER)


@PROPERTY
@given(proofs, st.integers(0, 200))
def test_other_index_rejected(size_index: tuple[int, int], other: int) -> None:
    proof = make_proof(*size_index)
    if other == proof.index:
        other += 1
    with pytest.raises(VerificationError):
        verify_proof(dataclasses.replace(proof, index=other), VERIFIER)


def test_checkpoint_signed_by_other_key_rejected() -> None:
    proof = make_proof(9, 4, Signer.generate("test-audit"))  # same name, other key
    with pytest.raises(VerificationError, match="no signature by key"):
        verify_proof(proof, VERIFIER)


def test_removed_hash_rejected() -> None:
    proof = make_proof(9, 4)
    with pytest.raises(VerificationError, match="too short"):
        verify_proof(dataclasses.replace(proof, hashes=proof.hashes[:-1]), VERIFIER)


def test_entry_with_lying_seq_rejected() -> None:
    """A log whose entry 3 says seq 5: proven at 3, it is not entry 5 of anything."""
    entries = list(ENTRIES[:6])
    entries[3] = entries[3].replace(b'"seq":3', b'"seq":5')
    cp = Checkpoint(ORIGIN, 6, ref_mth(entries))
    hashes = tuple(inclusion_proof([leaf_hash(e) for e in entries], 3))
    proof = TlogProof(3, hashes, sign_checkpoint(cp, SIGNER), entries[3])
    with pytest.raises(VerificationError, match="seq 5"):
        verify_proof(proof, VERIFIER)


def test_other_origin_rejected() -> None:
    with pytest.raises(VerificationError, match="origin"):
        verify_proof(make_proof(4, 1), VERIFIER, origin="audit.example/mesh/pod-b")


def test_entry_outside_the_proof() -> None:
    proof = dataclasses.replace(make_proof(8, 6), extra=None)
    with pytest.raises(ProofFormatError, match="no entry"):
        verify_proof(proof, VERIFIER)
    verify_proof(proof, VERIFIER, ENTRIES[6])
    with pytest.raises(VerificationError):
        verify_proof(proof, VERIFIER, ENTRIES[5])


def test_entry_differing_from_the_proofs_own_rejected() -> None:
    with pytest.raises(VerificationError, match="differs"):
        verify_proof(make_proof(8, 6), VERIFIER, ENTRIES[6] + b" ")


def test_check_proof_escapes_forged_signature_names(tmp_path: Path) -> None:
    """A handed-over proof chooses its signature names; the error quoting them
    must not let an ANSI erase and a carriage return turn it into an "OK" line."""
    proof = make_proof(9, 4)
    text = proof.checkpoint.decode().partition("\n\n")[0]
    name = "\x1b[2K\x1b[1A\rOK:\u202eentry-4-is-in-the-log"
    sig = base64.b64encode(bytes(68)).decode()
    forged = dataclasses.replace(proof, checkpoint=f"{text}\n\n— {name} {sig}\n".encode())
    with pytest.raises(VerificationError) as info:
        verify_proof(forged, VERIFIER)
    assert "(signed by: \\x1b[2K\\x1b[1A\\rOK:\\u202eentry-4-is-in-the-log)" in str(info.value)
    path = tmp_path / "forged.tlog-proof"
    path.write_text(forged.to_text())
    r = run_cli("check-proof", str(path), "--vkey", VERIFIER.to_text())
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr[:-1].isprintable()  # one line, no controls
