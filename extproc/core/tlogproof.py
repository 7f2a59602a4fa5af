"""C2SP transparency log proofs (c2sp.org/tlog-proof@v1): format and verification.

    c2sp.org/tlog-proof@v1
    extra <base64 entry bytes>
    index <decimal>
    <base64 hash>            one per line, leaf's sibling first (RFC 9162 PATH)

    <signed checkpoint note, verbatim>

The spec's optional `extra` line carries "additional data necessary to
reconstruct the record hash"; this project puts the audit entry's exact stored
bytes there, so one file proves one entry offline. The extra data is not
trusted: the verifier recomputes the leaf hash from it and checks inclusion
under the signed root.

A checkpoint signed by a key past its keyring `until` counts only with
evidence from outside the signer (core/keyring.py): the auditor's clock,
a trusted checkpoint of the same size in the auditor's state file, or a
consistency proof to a newer checkpoint that is trusted (in the state, or
signed by a key in its window by the clock). The consistency proof travels
in its own file, in the body format of c2sp.org/tlog-witness add-checkpoint
(the tlog-proof format has no room for one):

    old <tree size of the proof's checkpoint>
    <base64 hash>            RFC 9162 2.1.4 consistency proof, at most 63 lines

    <the newer signed checkpoint note, verbatim>

Pure: no I/O, no clock (the time is passed in).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from extproc.core import b64
from extproc.core import entry as entry_format
from extproc.core.checkpoint import Checkpoint, open_checkpoint, open_signed_checkpoint
from extproc.core.cosignature import WitnessPolicy
from extproc.core.fields import SEQ
from extproc.core.keyring import Keyring, clock
from extproc.core.merkle import HASH_SIZE, leaf_hash, verify_consistency, verify_inclusion
from extproc.core.note import Verifier
from extproc.core.state import AuditState, LogState
from extproc.errors import ConfigError, VerificationError

HEADER = "c2sp.org/tlog-proof@v1"  # c2sp.org/tlog-proof: first line
FILE_SUFFIX = ".tlog-proof"  # c2sp.org/tlog-proof: SHOULD use this extension
CONSISTENCY_SUFFIX = ".tlog-consistency"  # ours: a tlog-witness add-checkpoint body
_INDEX_RE = re.compile(r"index (0|[1-9][0-9]{0,19})")
_OLD_RE = re.compile(r"old (0|[1-9][0-9]{0,19})")  # c2sp.org/tlog-witness: old size line
_MAX_PROOF_HASHES = 64  # a tree of at most 2^64 leaves has paths of at most 64 hashes
_MAX_CONSISTENCY_HASHES = 63  # c2sp.org/tlog-witness: MUST NOT send more than 63
_MAX_PROOF_CHARS = 1 << 20  # a proof is a few KiB; refuse anything far larger unread


class ProofFormatError(ConfigError):
    """The proof file is not a well-formed tlog-proof (unreadable input, not tampering)."""


def _b64(text: str, what: str) -> bytes:
    try:
        return b64.decode(text)
    except (binascii.Error, ValueError) as e:
        raise ProofFormatError(f"malformed proof: {what} is not base64") from e


@dataclass(frozen=True)
class TlogProof:
    """One entry's inclusion proof under a signed checkpoint."""

    index: int
    hashes: tuple[bytes, ...]
    checkpoint: bytes  # the signed note, verbatim as published
    extra: bytes | None = None  # the entry's stored bytes (this project's use of `extra`)

    def to_text(self) -> str:
        lines = [HEADER]
        if self.extra is not None:
            lines.append("extra " + base64.b64encode(self.extra).decode())
        lines.append(f"index {self.index}")
        lines.extend(base64.b64encode(h).decode() for h in self.hashes)
        return "\n".join(lines) + "\n\n" + self.checkpoint.decode("utf-8")

    @classmethod
    def from_text(cls, text: str) -> TlogProof:
        """Parse a proof; raises ProofFormatError on anything malformed.

        The checkpoint is kept as bytes, not parsed: `verify` checks it.
        """
        if len(text) > _MAX_PROOF_CHARS:
            raise ProofFormatError("malformed proof: larger than 1 MiB")
        if text.partition("\n")[0] != HEADER:
            raise ProofFormatError(f"not a tlog proof: first line must be {HEADER!r}")
        head, sep, note = text.partition("\n\n")
        if not sep or not note:
            raise ProofFormatError("malformed proof: no empty line before the checkpoint")
        lines = head.split("\n")
        rest = lines[1:]
        extra = None
        if rest and rest[0].startswith("extra "):
            extra = _b64(rest[0][len("extra ") :], "extra data")
            rest = rest[1:]
        if not rest or not (m := _INDEX_RE.fullmatch(rest[0])):
            raise ProofFormatError("malformed proof: missing or bad 'index <decimal>' line")
        index = int(m.group(1))
        if index >= 1 << 64:
            raise ProofFormatError("malformed proof: index does not fit in 64 bits")
        hashes = _hash_lines(rest[1:], _MAX_PROOF_HASHES)
        return cls(index, hashes, note.encode("utf-8"), extra)


def _hash_lines(lines: list[str], most: int) -> tuple[bytes, ...]:
    """Proof hash lines, one base64 SHA-256 each (counted before they are decoded)."""
    if len(lines) > most:
        raise ProofFormatError("malformed proof: too many proof hashes")
    hashes = tuple(_b64(line, f"proof hash {i}") for i, line in enumerate(lines))
    if any(len(h) != HASH_SIZE for h in hashes):
        raise ProofFormatError("malformed proof: a proof hash is not 32 bytes")
    return hashes


@dataclass(frozen=True)
class ConsistencyProof:
    """RFC 9162 consistency from tree size `old_size` to a newer signed checkpoint."""

    old_size: int
    hashes: tuple[bytes, ...]
    checkpoint: bytes  # the newer checkpoint's signed note, verbatim

    def to_text(self) -> str:
        lines = [f"old {self.old_size}", *(base64.b64encode(h).decode() for h in self.hashes)]
        return "\n".join(lines) + "\n\n" + self.checkpoint.decode("utf-8")

    @classmethod
    def from_text(cls, text: str) -> ConsistencyProof:
        """Parse one; raises ProofFormatError on anything malformed."""
        if len(text) > _MAX_PROOF_CHARS:
            raise ProofFormatError("malformed consistency proof: larger than 1 MiB")
        head, sep, note = text.partition("\n\n")
        lines = head.split("\n")
        if not (m := _OLD_RE.fullmatch(lines[0])):
            raise ProofFormatError("not a consistency proof: first line must be 'old <size>'")
        if not sep or not note:
            raise ProofFormatError("malformed consistency proof: no empty line before checkpoint")
        return cls(int(m.group(1)), _hash_lines(lines[1:], _MAX_CONSISTENCY_HASHES), note.encode())


def verify_proof(
    proof: TlogProof,
    verifier: Verifier | Keyring,
    entry: bytes | None = None,
    *,
    origin: str | None = None,
    now_ms: int | None = None,
    state: AuditState | None = None,
    consistency: ConsistencyProof | None = None,
    witnesses: WitnessPolicy | None = None,
) -> Checkpoint:
    """Check that `entry` (default: the proof's extra data) is leaf `proof.index`
    of the tree the checkpoint signed by `verifier` commits to.

    Also checks the entry's own `seq` field equals the index (an entry proven
    at another position is not the entry it claims to be) and, if given, the
    checkpoint's origin. With a keyring, the key must cover the log and be
    trusted at the time it signed (module docstring): `now_ms` is the
    auditor's clock, `state` the auditor's trusted checkpoints, `consistency`
    a proof from the checkpoint to a newer one. With `witnesses`, the
    checkpoint must carry a quorum of their cosignatures, whose time counts as
    outside time for the key (a retired key's checkpoint: cosigned by its end
    date). Returns the checkpoint; raises VerificationError.
    """
    data = proof.extra if entry is None else entry
    if data is None:
        raise ProofFormatError("proof holds no entry (no extra line): pass the entry bytes")
    if entry is not None and proof.extra is not None and entry != proof.extra:
        raise VerificationError("entry differs from the entry inside the proof")
    if isinstance(verifier, Keyring):
        checkpoint = open_trusted_checkpoint(
            proof.checkpoint,
            verifier,
            now_ms=now_ms,
            state=state,
            consistency=consistency,
            witnesses=witnesses,
        )
    else:
        checkpoint = open_checkpoint(proof.checkpoint, verifier)
        if witnesses is not None:
            witnesses.check(proof.checkpoint)
    if origin is not None and checkpoint.origin != origin:
        raise VerificationError(f"checkpoint origin {checkpoint.origin!r} is not {origin!r}")
    fields = entry_format.parse(data)
    if fields[SEQ] != proof.index:
        raise VerificationError(f"entry says seq {fields[SEQ]}, proof index is {proof.index}")
    # The stored bytes are hashed as they are: never re-serialised.
    verify_inclusion(
        leaf_hash(data), proof.index, checkpoint.size, proof.hashes, checkpoint.root_hash
    )
    return checkpoint


def open_trusted_checkpoint(
    note: bytes,
    keyring: Keyring,
    *,
    now_ms: int | None = None,
    state: AuditState | None = None,
    consistency: ConsistencyProof | None = None,
    witnesses: WitnessPolicy | None = None,
) -> Checkpoint:
    """The checkpoint of `note` if a key on the keyring signed it, covers its
    log, is trusted at the time it signed, and (with `witnesses`) carries a
    quorum of cosignatures, made by the key's end date; raises VerificationError.

    A key past its end date needs evidence from outside the signer: the
    auditor's clock before that date, or a trusted checkpoint this one is
    consistent with (`vouched_by`). A contradiction with a trusted checkpoint
    (another root at the same size, a consistency proof that fails) is an
    error whatever the key.
    """
    checkpoint, key = open_signed_checkpoint(note, keyring)
    log_id = checkpoint.origin.rsplit("/", 1)[-1]
    if not key.covers(log_id):
        raise VerificationError(f"checkpoint signed by key {key.label}, not trusted for {log_id}")
    outside = clock(now_ms)
    if witnesses is not None:
        _, cosignatures = witnesses.check(note)
        quorum = witnesses.quorum_evidence(cosignatures)
        if quorum is None:  # check() refuses a note without a quorum; said twice
            raise VerificationError(witnesses.shortfall(cosignatures))
        if problem := key.cosigned_after_end(quorum):
            raise VerificationError(f"checkpoint {problem}")
        outside.append(quorum)
    vouched_by = _vouched_by(checkpoint, keyring, now_ms, state, consistency)
    if problem := key.window_problem(checkpoint.timestamp_ms, outside, vouched_by=vouched_by):
        raise VerificationError(f"checkpoint {problem}")
    return checkpoint


def _in_state(trusted: LogState | None, checkpoint: Checkpoint) -> str | None:
    """Names the state's checkpoint if it is `checkpoint`'s tree (None: another size);
    another root at the same size is a fork."""
    if trusted is None or trusted.size != checkpoint.size:
        return None
    if trusted.root_hash != checkpoint.root_hash:
        raise VerificationError(
            f"fork: checkpoint of tree size {checkpoint.size} has another root than the "
            "one in the state file: two versions of the log are signed"
        )
    return f"the checkpoint of size {trusted.size} in the state file"


def _vouched_by(
    checkpoint: Checkpoint,
    keyring: Keyring,
    now_ms: int | None,
    state: AuditState | None,
    consistency: ConsistencyProof | None,
) -> str | None:
    """The trusted checkpoint `checkpoint` is consistent with (None: none)."""
    trusted = state.by_origin(checkpoint.origin) if state is not None else None
    if same := _in_state(trusted, checkpoint):
        return same
    if consistency is None:
        return None
    if consistency.old_size != checkpoint.size:
        raise ProofFormatError(
            f"the consistency proof starts at tree size {consistency.old_size}, "
            f"the proof's checkpoint has size {checkpoint.size}"
        )
    newer, newer_key = open_signed_checkpoint(consistency.checkpoint, keyring)
    if newer.origin != checkpoint.origin:
        raise VerificationError(
            f"the consistency proof ends in log {newer.origin!r}, not {checkpoint.origin!r}"
        )
    verify_consistency(
        checkpoint.size, newer.size, checkpoint.root_hash, newer.root_hash, consistency.hashes
    )
    if same := _in_state(trusted, newer):
        return same
    # Not in the state: trusted on its own signature, by a key that covers the
    # log and is in its window by outside time (never vouched in turn).
    if newer_key.covers(checkpoint.origin.rsplit("/", 1)[-1]) and not newer_key.window_problem(
        newer.timestamp_ms, clock(now_ms)
    ):
        return f"the checkpoint of size {newer.size} signed by {newer_key.label}"
    return None
