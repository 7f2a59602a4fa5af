"""Witness cosignatures (c2sp.org/tlog-cosignature) and the k-of-n witness policy.

Cosignatures are checked independently of extproc.core.cosignature (raw
`cryptography` Ed25519, hashlib, struct: the spec's message and key id
written out here), against known answers from transparency-dev/formats
(key ids of published witness keys), and against forgeries that must all be
detected. Parsers of untrusted text are fuzzed within tests/budget.py.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from extproc.core.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from extproc.core.cosignature import (
    Cosignature,
    Cosigner,
    WitnessKey,
    WitnessPolicy,
    add_signatures,
    cosigner_key_id,
    witness_answer,
)
from extproc.core.keyring import SignedBy, TrustedKey
from extproc.core.note import Signer, parse_note
from extproc.errors import ConfigError, VerificationError
from tests.budget import FUZZ, KIB, within_budget

EM_DASH = "\u2014"
LOG = Signer(
    "example.com/log", Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32)
)  # fixed seeds: failures reproduce
CHECKPOINT = Checkpoint("example.com/log/pod-a", 42, bytes(32), ("time 1700000000000",))
NOTE = sign_checkpoint(CHECKPOINT, LOG)
BODY = CHECKPOINT.to_text()


def cosigner(name: str, n: int) -> Cosigner:
    return Cosigner(name, Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


W1, W2, W3 = cosigner("w1.example", 1), cosigner("w2.example", 2), cosigner("w3.example", 3)


def policy(quorum: int | None = None, *signers: Cosigner) -> WitnessPolicy:
    return WitnessPolicy.of((s.witness_key() for s in signers or (W1, W2, W3)), quorum)


# Known answers: published witness keys parsed by transparency-dev/formats
# (note/note_cosigv1_test.go, TestCoSigV1NewVerifier): the key id must match.
KNOWN_KEYS = [
    # A native cosignature/v1 (0x04) key: printed back as given.
    (
        "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2",
        "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2",
    ),
    # A note (0x01) key of the same Ed25519 key: taken as its 0x04 key.
    (
        "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6",
        "TEST+fdd2dbc7+BAcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6",
    ),
]


@pytest.mark.parametrize(("vkey", "as_cosigner"), KNOWN_KEYS)
def test_known_witness_keys_parse(vkey: str, as_cosigner: str) -> None:
    key = WitnessKey.from_text(vkey)
    assert key.to_text() == as_cosigner
    raw = base64.b64decode(vkey.split("+", 2)[2])[1:]
    independent = hashlib.sha256(key.name.encode() + b"\n\x04" + raw).digest()[:4]
    assert key.key_id == independent == cosigner_key_id(key.name, raw)


def test_cosignature_matches_the_spec_independently() -> None:
    line = W1.cosign(BODY, 1_700_000_123)
    assert line.startswith(f"{EM_DASH} w1.example ") and line.endswith("\n")
    raw = base64.b64decode(line.split(" ")[2])
    public = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32).public_key()
    public_raw = public.public_bytes_raw()
    assert raw[:4] == hashlib.sha256(b"w1.example\n\x04" + public_raw).digest()[:4]
    assert struct.unpack(">Q", raw[4:12]) == (1_700_000_123,)
    assert len(raw) == 4 + 8 + 64
    message = b"cosignature/v1\ntime 1700000123\n" + BODY.encode()
    public.verify(raw[12:], message)  # raises if not the spec's message


def test_witness_keys_round_trip() -> None:
    for signer in (W1, W2, Cosigner.generate("w.example/x")):
        vkey = signer.witness_key().to_text()
        assert WitnessKey.from_text(vkey) == signer.witness_key()
        assert Cosigner.from_text(signer.to_text()).witness_key() == signer.witness_key()
        assert "PRIVATE" not in repr(signer)


def test_policy_counts_a_quorum_and_its_time() -> None:
    note = add_signatures(NOTE, [W2.cosign(BODY, 300), W1.cosign(BODY, 100)])
    text, found = policy(2).check(note)
    assert text == BODY
    assert [(c.witness.name, c.timestamp) for c in found] == [
        ("w1.example", 100),
        ("w2.example", 300),
    ]
    # The k-th earliest: one witness alone cannot move the quorum's time earlier.
    two, one = policy(2).quorum_evidence(found), policy(1).quorum_evidence(found)
    assert two is not None and two.ms == 300_999 and "2 of [w1.example" in two.source
    assert one is not None and one.ms == 100_999
    assert policy(3).quorum_evidence(found) is None


def test_quorum_not_met_refused() -> None:
    note = add_signatures(NOTE, [W1.cosign(BODY, 100)])
    with pytest.raises(VerificationError, match="1 of the 2 needed"):
        policy(2).check(note)
    with pytest.raises(VerificationError, match="0 of the 3 needed"):
        policy().check(NOTE)


def test_one_witness_counts_once() -> None:
    note = add_signatures(NOTE, [W1.cosign(BODY, 500), W1.cosign(BODY, 100)])
    with pytest.raises(VerificationError, match="1 of the 2 needed"):
        policy(2).check(note)
    _, found = policy(1).check(note)
    assert [c.timestamp for c in found] == [100]  # its earliest


def test_unknown_cosigners_are_skipped() -> None:
    stranger = cosigner("stranger.example", 7)
    note = add_signatures(NOTE, [stranger.cosign(BODY, 1), W1.cosign(BODY, 2)])
    _, found = policy(1).check(note)
    assert [c.witness.name for c in found] == ["w1.example"]


def _flip_signature_bit(line: str) -> str:
    raw = bytearray(base64.b64decode(line.split(" ")[2]))
    raw[-1] ^= 1
    return f"{EM_DASH} w1.example {base64.b64encode(bytes(raw)).decode()}\n"


def _change_timestamp(line: str) -> str:
    raw = bytearray(base64.b64decode(line.split(" ")[2]))
    raw[11] ^= 1  # the last byte of the timestamp: backdated by one second
    return f"{EM_DASH} w1.example {base64.b64encode(bytes(raw)).decode()}\n"


def _truncated(line: str) -> str:
    raw = base64.b64decode(line.split(" ")[2])[:40]
    return f"{EM_DASH} w1.example {base64.b64encode(raw).decode()}\n"


FORGERIES: list[tuple[str, Callable[[], str]]] = [
    ("another_checkpoint", lambda: W1.cosign(BODY.replace("42", "43"), 100)),
    ("bit_flipped", lambda: _flip_signature_bit(W1.cosign(BODY, 100))),
    ("timestamp_changed", lambda: _change_timestamp(W1.cosign(BODY, 100))),
    ("truncated", lambda: _truncated(W1.cosign(BODY, 100))),
    # The witness's name and key id, another key: a forger without the key.
    (
        "other_key_same_id",
        lambda: (
            f"{EM_DASH} w1.example "
            + base64.b64encode(
                W1.key_id
                + base64.b64decode(cosigner("w1.example", 8).cosign(BODY, 100).split(" ")[2])[4:]
            ).decode()
            + "\n"
        ),
    ),
    # A log-style (0x01 message) signature under the witness key id.
    (
        "plain_note_signature",
        lambda: (
            f"{EM_DASH} w1.example "
            + base64.b64encode(
                W1.key_id
                + Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32).sign(BODY.encode())
            ).decode()
            + "\n"
        ),
    ),
]


@pytest.mark.parametrize("make", [f for _, f in FORGERIES], ids=[n for n, _ in FORGERIES])
def test_forged_cosignature_detected(make: Callable[[], str]) -> None:
    note = add_signatures(NOTE, [make(), W2.cosign(BODY, 100)])
    with pytest.raises(VerificationError, match=r"invalid cosignature by witness w1\.example"):
        policy(1).check(note)


def test_cosignature_covers_extension_lines() -> None:
    line = W1.cosign(BODY, 100)
    other = CHECKPOINT.to_text().replace("time 1700000000000", "time 1700000000001")
    _, signatures = parse_note(add_signatures(NOTE, [line]))
    assert W1.witness_key().verify(BODY, signatures[-1]) == 100
    assert W1.witness_key().verify(other, signatures[-1]) is None


BAD_KEYS = [
    ("w.example+00000000+" + base64.b64encode(b"\x04" + bytes(32)).decode(), "does not match"),
    ("w.example+zz+" + base64.b64encode(b"\x04" + bytes(32)).decode(), "8 hex digits"),
    ("w.example+12345678+" + base64.b64encode(b"\x06" + bytes(32)).decode(), "type 0x04"),
    ("w.example+12345678+" + base64.b64encode(b"\x04" + bytes(31)).decode(), "type 0x04"),
    ("w.example+12345678+!!!", "base64"),
    ("w.example+12345678", "must look like"),
    ("w example+12345678+AA==", "invalid key name"),
]


@pytest.mark.parametrize(("vkey", "why"), BAD_KEYS)
def test_malformed_witness_key_refused(vkey: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        WitnessKey.from_text(vkey)


def test_log_signing_key_is_not_a_witness_signing_key() -> None:
    with pytest.raises(ConfigError, match="type 0x04"):
        Cosigner.from_text(LOG.to_text())


@pytest.mark.parametrize(
    ("quorum", "why"), [(0, "must be 1 to 3"), (4, "must be 1 to 3"), (-1, "must be 1 to 3")]
)
def test_impossible_quorum_refused(quorum: int, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        policy(quorum)


def test_witness_listed_twice_refused() -> None:
    with pytest.raises(ConfigError, match="listed twice"):
        policy(1, W1, W1)


def test_policy_describes_itself_as_a_group() -> None:
    assert policy(2).describe() == "2 of [w1.example, w2.example, w3.example]"


def test_retired_key_cosigned_after_its_end_refused() -> None:
    key = TrustedKey(LOG.verifier(), not_after_ms=200_000)
    assert key.cosigned_after_end(SignedBy(199_999, "q")) is None
    assert key.cosigned_after_end(SignedBy(200_000, "q")) is None
    problem = key.cosigned_after_end(SignedBy(200_001, "a quorum"))
    assert problem is not None and "backdated" in problem
    assert TrustedKey(LOG.verifier()).cosigned_after_end(SignedBy(1 << 50, "q")) is None


def test_timestamp_beyond_the_spec_refused() -> None:
    with pytest.raises(ConfigError, match="out of range"):
        W1.cosign(BODY, 1 << 63)


def test_found_cosignatures_expose_an_upper_bound() -> None:
    assert Cosignature(W1.witness_key(), 5).latest_ms == 5999


# --- fuzz: untrusted text ------------------------------------------------------

MEMORY, CPU = 256 * KIB, 0.5
VALID = add_signatures(NOTE, [W1.cosign(BODY, 100), W2.cosign(BODY, 200)])


@FUZZ
@given(st.text(max_size=300))
def test_witness_key_parser_fuzz(text: str) -> None:
    with within_budget(memory=MEMORY, cpu=CPU):
        WitnessKey.from_text(text)
    with within_budget(memory=MEMORY, cpu=CPU):
        Cosigner.from_text("PRIVATE+KEY+" + text)


@FUZZ
@given(st.binary(max_size=4 * KIB))
def test_cosigned_note_garbage_fuzz(raw: bytes) -> None:
    with within_budget(memory=MEMORY, cpu=CPU):
        policy(1).check(raw)


@FUZZ
@given(st.integers(0, len(VALID) * 8 - 1))
def test_any_bit_flip_of_a_cosigned_note_fails(bit: int) -> None:
    mutated = bytearray(VALID)
    mutated[bit // 8] ^= 1 << (bit % 8)
    # What verify checks: the log's signature and a quorum of both witnesses.
    with within_budget(memory=MEMORY, cpu=CPU, allowed=()), pytest.raises(VerificationError):
        open_checkpoint(bytes(mutated), LOG.verifier())
        policy(2, W1, W2).check(bytes(mutated))


# --- a witness's answer (c2sp.org/tlog-witness 200 body) ------------------------------

STRANGER = cosigner("stranger.example", 7)


def test_witness_answer_keeps_the_witness_lines_only() -> None:
    answer = STRANGER.cosign(BODY, 1) + W1.cosign(BODY, 2)
    assert witness_answer(answer, W1.witness_key(), BODY) == [W1.cosign(BODY, 2)]


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("", "no cosignature by witness"),
        (STRANGER.cosign(BODY, 1), "no cosignature by witness"),
        (W1.cosign(BODY, 2).rstrip("\n"), "each ending in a newline"),
        (_flip_signature_bit(W1.cosign(BODY, 2)), "invalid cosignature"),
        (W1.cosign(BODY.replace("42", "41"), 2), "invalid cosignature"),
        ("not a signature line\n", "bad signature line"),
        (W1.cosign(BODY, 2) * 101, "each ending in a newline"),
    ],
    ids=["empty", "others_only", "no_newline", "bit_flip", "other_checkpoint", "garbage", "many"],
)
def test_bad_witness_answer_refused(answer: str, why: str) -> None:
    with pytest.raises(VerificationError, match=why):
        witness_answer(answer, W1.witness_key(), BODY)


@FUZZ
@given(st.text(max_size=4 * KIB))
def test_witness_answer_fuzz(answer: str) -> None:
    with within_budget(memory=MEMORY, cpu=CPU):
        witness_answer(answer, W1.witness_key(), BODY)
