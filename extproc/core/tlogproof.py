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
under the signed root. Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from extproc.core import entry as entry_format
from extproc.core.checkpoint import Checkpoint, open_checkpoint, open_signed_checkpoint
from extproc.core.keyring import Keyring
from extproc.core.merkle import HASH_SIZE, leaf_hash, verify_inclusion
from extproc.core.note import Verifier
from extproc.errors import ConfigError, VerificationError

HEADER = "c2sp.org/tlog-proof@v1"  # c2sp.org/tlog-proof: first line
FILE_SUFFIX = ".tlog-proof"  # c2sp.org/tlog-proof: SHOULD use this extension
_INDEX_RE = re.compile(r"index (0|[1-9][0-9]{0,19})")
_MAX_PROOF_HASHES = 64  # a tree of at most 2^64 leaves has paths of at most 64 hashes


class ProofFormatError(ConfigError):
    """The proof file is not a well-formed tlog-proof (unreadable input, not tampering)."""


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
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
        hashes = tuple(_b64(line, f"proof hash {i}") for i, line in enumerate(rest[1:]))
        if any(len(h) != HASH_SIZE for h in hashes):
            raise ProofFormatError("malformed proof: a proof hash is not 32 bytes")
        if len(hashes) > _MAX_PROOF_HASHES:
            raise ProofFormatError("malformed proof: too many proof hashes")
        return cls(index, hashes, note.encode("utf-8"), extra)


def verify_proof(
    proof: TlogProof,
    verifier: Verifier | Keyring,
    entry: bytes | None = None,
    *,
    origin: str | None = None,
) -> Checkpoint:
    """Check that `entry` (default: the proof's extra data) is leaf `proof.index`
    of the tree the checkpoint signed by `verifier` commits to.

    Also checks the entry's own `seq` field equals the index (an entry proven
    at another position is not the entry it claims to be) and, if given, the
    checkpoint's origin. Returns the checkpoint; raises VerificationError.
    """
    data = proof.extra if entry is None else entry
    if data is None:
        raise ProofFormatError("proof holds no entry (no extra line): pass the entry bytes")
    if entry is not None and proof.extra is not None and entry != proof.extra:
        raise VerificationError("entry differs from the entry inside the proof")
    if isinstance(verifier, Keyring):
        checkpoint, key = open_signed_checkpoint(proof.checkpoint, verifier)
        log_id = checkpoint.origin.rsplit("/", 1)[-1]
        if not key.covers(log_id):
            raise VerificationError(
                f"checkpoint signed by key {key.label}, not trusted for {log_id}"
            )
        if problem := key.window_problem((checkpoint.timestamp_ms,)):
            raise VerificationError(f"checkpoint {problem}")
    else:
        checkpoint = open_checkpoint(proof.checkpoint, verifier)
    if origin is not None and checkpoint.origin != origin:
        raise VerificationError(f"checkpoint origin {checkpoint.origin!r} is not {origin!r}")
    fields = entry_format.parse(data)
    if fields["seq"] != proof.index:
        raise VerificationError(f"entry says seq {fields['seq']}, proof index is {proof.index}")
    # The stored bytes are hashed as they are: never re-serialised.
    verify_inclusion(
        leaf_hash(data), proof.index, checkpoint.size, proof.hashes, checkpoint.root_hash
    )
    return checkpoint
