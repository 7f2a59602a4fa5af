"""The project attacks itself (issue 16, item 6): the parsers of the formats an
auditor is handed, fuzzed.

Signed notes and checkpoints (from the store or a proof file), tlog-proof and
consistency files, keyrings, the auditor's state file and receipt headers.
Each input runs under tests/budget.py: only our own errors, a bounded memory
peak and CPU time. Inputs are garbage, and valid documents mutated (bits
flipped, spans cut, duplicated or replaced), which reach deeper than garbage.
Where a to_/from_ pair exists, generated valid documents round-trip exactly;
any single bit flip of a signed note or a proof file fails verification.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from extproc.core import layout
from extproc.core.checkpoint import (
    MAX_EPOCH,
    Checkpoint,
    make_extensions,
    open_checkpoint,
    sign_checkpoint,
)
from extproc.core.keyring import Keyring, TrustedKey, parse_keyring_lines
from extproc.core.merkle import CompactRange, consistency_proof, inclusion_proof, leaf_hash
from extproc.core.note import Signer, Verifier, key_id, parse_note, sign_note, verify_note
from extproc.core.receipt import Receipt
from extproc.core.state import AuditState, LogState, RetentionRecord
from extproc.core.tlogproof import ConsistencyProof, TlogProof, verify_proof
from extproc.errors import AuditError, VerificationError
from tests.budget import FUZZ, KIB, MIB, Budget, within_budget
from tests.helpers import make_entries

SIGNER = Signer.generate("fuzz.example/log")
VERIFIER = SIGNER.verifier()
RING = Keyring.of(VERIFIER)
ORIGIN = "fuzz.example/log/pod-a"
ENTRIES = make_entries(40)
LEAVES = [leaf_hash(e) for e in ENTRIES]
# Per input: far above the real cost, far below harm.
BUDGET: Budget = {"memory": 2 * MIB, "cpu": 1.0}


def _tree(leaves: list[bytes]) -> CompactRange:
    tree = CompactRange()
    tree.extend(leaves)
    return tree


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8 % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """`valid` with a few random edits: a bit flipped, a span cut, duplicated or
    replaced by random bytes."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            data += draw(st.binary(min_size=1, max_size=16))
            continue
        at = draw(st.integers(0, len(data) - 1))
        end = draw(st.integers(at, min(len(data), at + 64)))
        kind = draw(st.sampled_from(["flip", "cut", "dup", "replace"]))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at:end]
        elif kind == "dup":
            data[at:at] = data[at:end]
        else:
            data[at:end] = draw(st.binary(max_size=32))
    return bytes(data)


garbage_text = st.text(max_size=2048)


def _decoded(data: bytes) -> str:
    return data.decode("utf-8", "replace")


# --- signed notes -----------------------------------------------------------------------

NOTE = sign_note(f"{ORIGIN}\n5\n{base64.b64encode(bytes(32)).decode()}\ntime 1\n", SIGNER).encode()


@FUZZ
@given(st.one_of(st.binary(max_size=4096), garbage_text, mutated(NOTE)))
def test_signed_note_parsers_fuzz(data: bytes | str) -> None:
    for check in (parse_note, lambda d: verify_note(d, VERIFIER), RING.verify_note):
        with within_budget(**BUDGET):
            check(data)


def test_oversized_note_refused_before_it_is_read() -> None:
    for huge in (b"x" * (2 * MIB), "x" * (2 * MIB)):
        with within_budget(memory=64 * KIB, cpu=0.1):
            parse_note(huge)


note_lines = st.lists(
    st.text(st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=40),
    min_size=1,
    max_size=6,
)


@FUZZ
@given(note_lines, st.integers(0, 1 << 20))
def test_any_single_bit_flip_of_a_signed_note_fails_verification(
    lines: list[str], bit: int
) -> None:
    note = sign_note("\n".join(lines) + "\n", SIGNER).encode()
    flipped = _flip(note, bit % (len(note) * 8))
    with within_budget(**BUDGET, allowed=()):
        try:
            verify_note(flipped, VERIFIER)
        except VerificationError:
            return
    raise AssertionError(f"a flipped note still verifies: {flipped!r}")


def test_non_canonical_base64_signature_is_refused() -> None:
    """`...AQ=` and `...AS=` decode alike: a second text of one signature would
    let a flipped bit verify. Found by the bit-flip fuzzer."""
    _, (sig,) = parse_note(NOTE)
    encoded = base64.b64encode(sig.key_id + sig.signature).decode()
    last = encoded.rstrip("=")[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    twin = alphabet[alphabet.index(last) ^ 1]  # the bits past the data (68 bytes: 4 spare)
    forged = NOTE.replace(encoded.encode(), (encoded.rstrip("=")[:-1] + twin + "=").encode())
    assert base64.b64decode(forged.rsplit(b" ", 1)[1]) == base64.b64decode(encoded)
    with within_budget(**BUDGET, allowed=(VerificationError,)):
        verify_note(forged, VERIFIER)
        raise AssertionError("non-canonical signature accepted")


# --- key strings --------------------------------------------------------------------------

key_names = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="+"),
    min_size=1,
    max_size=30,
)


@st.composite
def verifier_texts(draw: st.DrawFn) -> str:
    """Key strings with a matching key id, so the key bytes themselves are reached."""
    name = draw(key_names)
    kind = draw(st.sampled_from([1, 1, 1, 2, 0]))
    raw = draw(st.binary(min_size=0, max_size=40) | st.binary(min_size=32, max_size=32))
    kid = key_id(name, raw).hex() if draw(st.booleans()) else draw(st.text("0123456789abcdef"))
    return f"{name}+{kid}+{base64.b64encode(bytes([kind]) + raw).decode()}"


@FUZZ
@given(
    st.one_of(garbage_text, verifier_texts(), mutated(VERIFIER.to_text().encode()).map(_decoded))
)
def test_verifier_key_parser_fuzz(text: str) -> None:
    with within_budget(**BUDGET):
        parsed = Verifier.from_text(text)
        assert Verifier.from_text(parsed.to_text()).to_text() == parsed.to_text()


@FUZZ
@given(st.one_of(garbage_text, mutated(SIGNER.to_text().encode()).map(_decoded)))
def test_signer_key_parser_fuzz(text: str) -> None:
    with within_budget(**BUDGET):
        parsed = Signer.from_text(text)
        assert Signer.from_text(parsed.to_text()).to_text() == parsed.to_text()


@FUZZ
@given(key_names, st.binary(min_size=32, max_size=32))
def test_key_strings_round_trip(name: str, seed: bytes) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    signer = Signer(name, Ed25519PrivateKey.from_private_bytes(seed))
    assert Signer.from_text(signer.to_text()).to_text() == signer.to_text()
    verifier = Verifier.from_text(signer.verifier().to_text())
    assert verifier.to_text() == signer.verifier().to_text()


# --- checkpoints --------------------------------------------------------------------------

CHECKPOINT = sign_checkpoint(Checkpoint(ORIGIN, 9, _tree(LEAVES[:9]).root(), ("time 1",)), SIGNER)


@FUZZ
@given(st.one_of(garbage_text, mutated(CHECKPOINT).map(_decoded)))
def test_checkpoint_body_parser_fuzz(text: str) -> None:
    with within_budget(**BUDGET):
        cp = Checkpoint.from_text(text)
        assert cp.epoch >= 1 and cp.writer != ""  # every reader of extension lines
        assert cp.timestamp_ms is None or cp.timestamp_ms >= 0
        assert cp.final in (True, False)
        assert Checkpoint.from_text(cp.to_text()) == cp


@FUZZ
@given(st.one_of(st.binary(max_size=2048), mutated(CHECKPOINT)))
def test_signed_checkpoint_fuzz(data: bytes) -> None:
    with within_budget(**BUDGET):
        open_checkpoint(data, VERIFIER)
    with within_budget(**BUDGET):
        open_checkpoint(data, RING)


@FUZZ
@given(
    st.integers(0, (1 << 64) - 1),
    st.binary(min_size=32, max_size=32),
    st.integers(0, 253_402_300_799_999),
    st.text("0123456789abcdef", min_size=1, max_size=64),
    st.booleans(),
    st.integers(1, MAX_EPOCH),
)
def test_our_checkpoints_round_trip_signed(
    size: int, root: bytes, time_ms: int, writer: str, final: bool, epoch: int
) -> None:
    cp = Checkpoint(ORIGIN, size, root, make_extensions(time_ms, writer, final=final, epoch=epoch))
    opened = open_checkpoint(sign_checkpoint(cp, SIGNER), VERIFIER)
    assert opened == cp
    assert (opened.timestamp_ms, opened.writer, opened.final, opened.epoch) == (
        time_ms,
        writer,
        final,
        epoch,
    )


# --- tlog-proof and consistency files --------------------------------------------------------


def _proof(size: int, index: int) -> TlogProof:
    cp = Checkpoint(ORIGIN, size, _tree(LEAVES[:size]).root(), ("time 1",))
    hashes = tuple(inclusion_proof(LEAVES[:size], index))
    return TlogProof(index, hashes, sign_checkpoint(cp, SIGNER), ENTRIES[index])


PROOF = _proof(27, 11).to_text().encode()


def _consistency(old: int, new: int) -> ConsistencyProof:
    cp = Checkpoint(ORIGIN, new, _tree(LEAVES[:new]).root(), ("time 1",))
    hashes = tuple(consistency_proof(LEAVES[:new], old))
    return ConsistencyProof(old, hashes, sign_checkpoint(cp, SIGNER))


CONSISTENCY = _consistency(27, 40).to_text().encode()


@FUZZ
@given(st.one_of(garbage_text, mutated(PROOF).map(_decoded)), mutated(CONSISTENCY).map(_decoded))
def test_proof_files_fuzz(text: str, consistency_text: str) -> None:
    consistency = None
    with within_budget(**BUDGET):
        consistency = ConsistencyProof.from_text(consistency_text)
    with within_budget(**BUDGET):
        proof = TlogProof.from_text(text)
        verify_proof(proof, RING, now_ms=0, state=AuditState(), consistency=consistency)


@FUZZ
@given(st.integers(0, len(PROOF) * 8 - 1))
def test_any_single_bit_flip_of_a_proof_file_fails_check(bit: int) -> None:
    flipped = _flip(PROOF, bit)
    with within_budget(**BUDGET, allowed=()):
        try:
            verify_proof(TlogProof.from_text(flipped.decode("utf-8")), VERIFIER)
        except (AuditError, UnicodeDecodeError):
            return
    raise AssertionError(f"a flipped proof still checks: {flipped!r}")


sizes = st.integers(1, len(ENTRIES)).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n)))


@FUZZ
@given(sizes)
def test_consistency_proofs_round_trip_and_verify(old_new: tuple[int, int]) -> None:
    old, new = old_new
    proof = _consistency(old, new)
    text = proof.to_text()
    assert ConsistencyProof.from_text(text) == proof
    assert ConsistencyProof.from_text(text).to_text() == text


# --- keyrings -----------------------------------------------------------------------------

globs = st.text("abcdefghijklmnopqrstuvwxyz0123456789.-_*?", min_size=1, max_size=12)
times_ms = st.integers(-62_135_596_800_000, 253_402_300_799_999)  # years 1 to 9999


@st.composite
def trusted_keys(draw: st.DrawFn) -> TrustedKey:
    seed = draw(st.binary(min_size=32, max_size=32))
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    name = draw(key_names.filter(lambda n: not n.startswith("#")))  # '#' starts a comment
    signer = Signer(name, Ed25519PrivateKey.from_private_bytes(seed))
    logs = tuple(draw(st.lists(globs, min_size=1, max_size=3))) if draw(st.booleans()) else ("*",)
    start = draw(st.none() | times_ms)
    end = draw(st.none() | times_ms)
    if start is not None and end is not None:
        start, end = sorted((start, end))
        if start == end:
            start = None
    return TrustedKey(signer.verifier(), logs, start, end)


@FUZZ
@given(st.lists(trusted_keys(), min_size=1, max_size=4, unique_by=lambda k: k.label))
def test_keyring_text_round_trip(keys: list[TrustedKey]) -> None:
    ring = Keyring(keys)
    again = Keyring.from_text(ring.to_text())
    assert list(again) == list(ring)
    assert again.to_text() == ring.to_text()


KEYRING_TEXT = (
    f"# keys\n{VERIFIER.to_text()} logs=shop.*,bank.* from=2026-01-01 "
    "until=2027-01-01T00:00:00.5+02:00\n"
).encode()


@FUZZ
@given(st.one_of(garbage_text, mutated(KEYRING_TEXT).map(_decoded)))
def test_keyring_parser_fuzz(text: str) -> None:
    with within_budget(**BUDGET):
        keys = parse_keyring_lines(text, "fuzz")
        for key in keys:
            key.covers("shop.web-1")
            key.window_problem(None)


# --- the auditor's state file -------------------------------------------------------------


@st.composite
def log_states(draw: st.DrawFn) -> LogState:
    size = draw(st.integers(0, len(LEAVES)))
    tree = _tree(LEAVES[:size])
    note = CHECKPOINT.decode()
    objects = draw(st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=3))
    last = LEAVES[size - 1].hex() if size else ""
    return LogState(ORIGIN, size, tree.root(), note, tree.hashes, last, "2026-12-06Z", objects)


@FUZZ
@given(
    st.dictionaries(st.text(min_size=1, max_size=10), log_states(), max_size=3),
    st.none() | st.tuples(st.sampled_from(["COMPLIANCE", "GOVERNANCE"]), st.integers(0, 3650)),
)
def test_state_file_round_trip(
    logs: dict[str, LogState], retention: tuple[str, int] | None
) -> None:
    record = None if retention is None else RetentionRecord(*retention, "2026-12-06T00:00:00Z")
    state = AuditState(logs, record)
    data = state.to_bytes()
    assert AuditState.from_bytes(data) == state
    assert AuditState.from_bytes(data).to_bytes() == data


STATE = AuditState({"pod-a": LogState(ORIGIN, 27, _tree(LEAVES[:27]).root(),
                    CHECKPOINT.decode(), _tree(LEAVES[:27]).hashes,
                    LEAVES[26].hex(), "2026-12-06Z", {"k": "1:v"})}).to_bytes()  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=2048),
        mutated(STATE),
        json_values.map(lambda v: json.dumps({"version": 1, "logs": {"a": v}}).encode()),
        json_values.map(lambda v: json.dumps({"version": 1, "logs": v, "retention": v}).encode()),
    )
)
def test_state_file_parser_fuzz(data: bytes) -> None:
    with within_budget(**BUDGET):
        AuditState.from_bytes(data)


def test_deeply_nested_state_file_is_our_error() -> None:
    for nested in (b"[" * 100_000, b'{"version": 1, "logs": ' + b"[" * 100_000):
        with within_budget(memory=8 * MIB, cpu=2.0):
            AuditState.from_bytes(nested)
            raise AssertionError("nested garbage accepted")


# --- receipts -----------------------------------------------------------------------------

RECEIPT = b'log="pod-a", seq=12, x=?1'


@FUZZ
@given(st.one_of(garbage_text, mutated(RECEIPT).map(_decoded)))
def test_receipt_header_parser_fuzz(text: str) -> None:
    with within_budget(**BUDGET):
        receipt = Receipt.from_text(text)
        assert Receipt.from_text(receipt.to_text()) == receipt


@FUZZ
@given(
    st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True).filter(layout._is_log_id),
    st.integers(0, 10**15 - 1),
)
def test_receipts_round_trip(log_id: str, seq: int) -> None:
    receipt = Receipt(log_id, seq)
    assert Receipt.from_text(receipt.to_text()) == receipt


def test_time_lines_past_year_9999_are_not_times() -> None:
    cp = Checkpoint(ORIGIN, 1, LEAVES[0], ("time 9999999999999999",))
    assert cp.timestamp_ms is None
    assert datetime.fromtimestamp(253_402_300_799.999, UTC).year == 9999
