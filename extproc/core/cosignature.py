"""Witness cosignatures (c2sp.org/tlog-cosignature, Ed25519 cosignature/v1) and k-of-n policy.

A cosignature is one more signature line on a checkpoint's signed note:

    — <witness name> base64(key id (4) || timestamp (uint64, big-endian, 8) || Ed25519 sig (64))

    key id   = SHA-256(<name> || "\\n" || 0x04 || 32-byte Ed25519 public key)[:4]
    message  = "cosignature/v1\\n" "time <timestamp>\\n" <the whole checkpoint body>

The timestamp is POSIX seconds when the witness cosigned: time from outside
the log's signer, so a quorum of cosignatures bounds when a checkpoint
existed (keyring.SignedBy). Witness keys are note verifier keys of type 0x04:

    verifier key:  <name>+<8 hex key id>+<base64(0x04 || 32-byte public key)>
    signer key:    PRIVATE+KEY+<name>+<8 hex key id>+<base64(0x04 || 32-byte seed)>

(transparency-dev/formats reads both; a type 0x01 verifier key of the same
Ed25519 key is also taken, as there, and means the same 0x04 key.)

The policy is one witness group as tessera and Rekor v2 express it: "k of
[witnesses]". A cosignature counts once per witness (its earliest); one that
names a trusted witness key and does not verify is a forgery, an error.

Pure: no I/O, no clock (timestamps are passed in).
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from extproc.core.display import escape
from extproc.core.keyring import SignedBy
from extproc.core.note import (
    ALG_ED25519,
    MAX_SIGNATURES,
    NoteSignature,
    check_key_name,
    decode_key_data,
    parse_note,
    parse_signature_line,
    signature_line,
)
from extproc.errors import ConfigError, VerificationError

ALG_COSIGNATURE_V1 = 0x04  # c2sp.org/signed-note: type 0x04 is an Ed25519 cosignature/v1 key
HEADER = "cosignature/v1\n"  # c2sp.org/tlog-cosignature: the signed message's first line
MAX_TIMESTAMP = (1 << 63) - 1  # c2sp.org/tlog-cosignature: MUST NOT exceed 2^63 - 1
_SIGNATURE_BYTES = 8 + 64  # timestamp || Ed25519 signature
_PRIVATE_KEY_PREFIX = "PRIVATE+KEY+"
_MAX_ANSWER_CHARS = 64 * 1024  # a witness's answer: a few signature lines
_KEY_ID_RE = re.compile(r"[0-9a-fA-F]{8}")


def cosigner_key_id(name: str, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || 0x04 || public key)[:4] (c2sp.org/tlog-cosignature)."""
    return hashlib.sha256(
        name.encode() + b"\n" + bytes([ALG_COSIGNATURE_V1]) + public_key
    ).digest()[:4]


def signed_message(body: str, timestamp: int) -> bytes:
    """What a witness signs for `body` (the checkpoint note's text) at `timestamp`."""
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ConfigError(f"cosignature timestamp {timestamp} out of range")
    return f"{HEADER}time {timestamp}\n{body}".encode()


def _split_key(text: str, what: str) -> tuple[str, str, bytes]:
    parts = text.split("+", 2)  # base64 key data may contain "+"
    if len(parts) != 3:
        raise ConfigError(f"{what} must look like <name>+<keyid>+<base64 key>")
    name, hex_id, encoded = parts
    check_key_name(name)
    if not _KEY_ID_RE.fullmatch(hex_id):
        raise ConfigError(f"{what} id must be 8 hex digits")
    data = decode_key_data(encoded, what)
    if len(data) != 33 or data[0] not in (ALG_COSIGNATURE_V1, ALG_ED25519):
        raise ConfigError(f"{what} is not an Ed25519 cosignature/v1 (type 0x04) key")
    return name, hex_id.lower(), data


@dataclass(frozen=True)
class WitnessKey:
    """A witness's verifier key: checks its cosignatures."""

    name: str
    key_id: bytes
    public_key: Ed25519PublicKey

    @classmethod
    def from_text(cls, vkey: str) -> WitnessKey:
        """Parse `<name>+<hex key id>+<base64(0x04 || public key)>`."""
        name, hex_id, data = _split_key(vkey.strip(), "witness key")
        raw = data[1:]
        # A 0x01 key's id is the note key id (note.key_id); the cosigner's differs.
        expected = (
            hashlib.sha256(name.encode() + b"\n" + data).digest()[:4]
            if data[0] == ALG_ED25519
            else cosigner_key_id(name, raw)
        )
        if bytes.fromhex(hex_id) != expected:
            raise ConfigError("witness key id does not match its name and key")
        return cls(name, cosigner_key_id(name, raw), Ed25519PublicKey.from_public_bytes(raw))

    def to_text(self) -> str:
        raw = self.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        encoded = base64.b64encode(bytes([ALG_COSIGNATURE_V1]) + raw).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    @property
    def label(self) -> str:
        return f"{self.name}+{self.key_id.hex()}"

    def matches(self, sig: NoteSignature) -> bool:
        """Does the signature line name this key (name and key id)?"""
        return sig.name == self.name and sig.key_id == self.key_id

    def verify(self, body: str, sig: NoteSignature) -> int | None:
        """The timestamp of a valid cosignature by this key on `body`; None if invalid."""
        if not self.matches(sig) or len(sig.signature) != _SIGNATURE_BYTES:
            return None
        (timestamp,) = struct.unpack(">Q", sig.signature[:8])
        if timestamp > MAX_TIMESTAMP:
            return None
        try:
            self.public_key.verify(sig.signature[8:], signed_message(body, timestamp))
        except InvalidSignature:
            return None
        return int(timestamp)


class Cosigner:
    """A witness's Ed25519 signing key (held in memory)."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        check_key_name(name)
        self.name = name
        self._private_key = private_key
        raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = cosigner_key_id(name, raw)

    @classmethod
    def generate(cls, name: str) -> Cosigner:
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_text(cls, skey: str) -> Cosigner:
        """Parse `PRIVATE+KEY+<name>+<hex key id>+<base64(0x04 || seed)>`."""
        text = skey.strip()
        if not text.startswith(_PRIVATE_KEY_PREFIX):
            raise ConfigError("witness signing key must start with PRIVATE+KEY+")
        name, hex_id, data = _split_key(text[len(_PRIVATE_KEY_PREFIX) :], "witness signing key")
        if data[0] != ALG_COSIGNATURE_V1:
            raise ConfigError("witness signing key is not a cosignature/v1 (type 0x04) key")
        cosigner = cls(name, Ed25519PrivateKey.from_private_bytes(data[1:]))
        if cosigner.key_id.hex() != hex_id:
            raise ConfigError("witness signing key id does not match its name and key")
        return cosigner

    def to_text(self) -> str:
        seed = self._private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        encoded = base64.b64encode(bytes([ALG_COSIGNATURE_V1]) + seed).decode()
        return f"{_PRIVATE_KEY_PREFIX}{self.name}+{self.key_id.hex()}+{encoded}"

    def witness_key(self) -> WitnessKey:
        return WitnessKey(self.name, self.key_id, self._private_key.public_key())

    def cosign(self, body: str, timestamp: int) -> str:
        """The cosignature line (with its newline) on checkpoint note text `body`."""
        sig = self._private_key.sign(signed_message(body, timestamp))
        return signature_line(self.name, self.key_id, struct.pack(">Q", timestamp) + sig)

    def __repr__(self) -> str:  # never print key material
        return f"Cosigner(name={self.name!r}, key_id={self.key_id.hex()})"


@dataclass(frozen=True)
class Cosignature:
    """A verified cosignature: which witness, and when it says it cosigned (POSIX seconds)."""

    witness: WitnessKey
    timestamp: int

    @property
    def latest_ms(self) -> int:
        """The latest millisecond the cosignature's second holds (an upper bound)."""
        return self.timestamp * 1000 + 999


def witness_answer(answer: str, witness: WitnessKey, body: str) -> list[str]:
    """The cosignature lines (with newlines) by `witness` on `body` in a witness's 200
    answer (c2sp.org/tlog-witness: signature lines; others' are skipped). VerificationError
    if a line is malformed, one by its key does not verify, or there is none by it."""
    if len(answer) > _MAX_ANSWER_CHARS:
        raise VerificationError("witness answer too large")
    lines = answer.split("\n")
    if lines[-1] != "" or len(lines) > MAX_SIGNATURES + 1:
        raise VerificationError("witness answer is not signature lines, each ending in a newline")
    found = []
    for raw in lines[:-1]:
        sig = parse_signature_line(raw)
        if not witness.matches(sig):
            continue
        if witness.verify(body, sig) is None:
            raise VerificationError(f"invalid cosignature by witness {witness.label}")
        found.append(raw + "\n")
    if not found:
        raise VerificationError(f"no cosignature by witness {witness.label} in its answer")
    return found


def add_signatures(note: bytes, lines: Iterable[str]) -> bytes:
    """`note` with signature `lines` appended (each `— name base64\\n`); the result
    must parse as a note (at most MAX_SIGNATURES signatures), else VerificationError."""
    combined = note + "".join(lines).encode()
    _, signatures = parse_note(combined)
    if len(signatures) > MAX_SIGNATURES:  # parse_note bounds it; say so here too
        raise VerificationError("too many signatures on one note")
    return combined


@dataclass(frozen=True)
class WitnessPolicy:
    """k of n witnesses (`quorum` of `witnesses`) must cosign a checkpoint."""

    witnesses: tuple[WitnessKey, ...]
    quorum: int

    def __post_init__(self) -> None:
        if not self.witnesses:
            raise ConfigError("a witness policy needs at least one witness")
        names = [w.name for w in self.witnesses]
        if len(set(names)) != len(names):
            raise ConfigError("a witness is listed twice (names must differ)")
        if not 1 <= self.quorum <= len(self.witnesses):
            raise ConfigError(
                f"witness quorum {self.quorum} must be 1 to {len(self.witnesses)} "
                "(the number of witnesses)"
            )

    @classmethod
    def of(cls, witnesses: Iterable[WitnessKey], quorum: int | None = None) -> WitnessPolicy:
        """The policy; `quorum` None means all of them."""
        listed = tuple(witnesses)
        return cls(listed, len(listed) if quorum is None else quorum)

    def describe(self) -> str:
        """As tessera and Rekor v2 write a witness group: `k of [names]`."""
        return f"{self.quorum} of [{', '.join(w.name for w in self.witnesses)}]"

    def cosignatures(self, body: str, signatures: Iterable[NoteSignature]) -> list[Cosignature]:
        """The valid cosignatures on `body`, one per witness (its earliest).

        Signatures by other keys are skipped (c2sp.org/signed-note); one that
        names a witness key of the policy and does not verify is a forgery:
        VerificationError.
        """
        found: dict[str, Cosignature] = {}
        for sig in signatures:
            for witness in self.witnesses:
                if not witness.matches(sig):
                    continue
                timestamp = witness.verify(body, sig)
                if timestamp is None:
                    raise VerificationError(
                        f"invalid cosignature by witness {witness.label} (forged, or on "
                        "another checkpoint)"
                    )
                seen = found.get(witness.name)
                if seen is None or timestamp < seen.timestamp:
                    found[witness.name] = Cosignature(witness, timestamp)
        return sorted(found.values(), key=lambda c: (c.timestamp, c.witness.name))

    def quorum_evidence(self, cosignatures: list[Cosignature]) -> SignedBy | None:
        """When a quorum had cosigned: the k-th earliest cosignature (so k-1 witnesses
        cannot move it earlier), as outside time for the keyring; None without a quorum."""
        if len(cosignatures) < self.quorum:
            return None
        kth = sorted(cosignatures, key=lambda c: c.timestamp)[self.quorum - 1]
        return SignedBy(kth.latest_ms, f"a quorum of witnesses ({self.describe()})")

    def check(self, note: str | bytes) -> tuple[str, list[Cosignature]]:
        """The note text and its valid cosignatures; VerificationError if a forged
        one is on it or fewer than the quorum cosigned."""
        text, signatures = parse_note(note)
        found = self.cosignatures(text, signatures)
        if len(found) < self.quorum:
            raise VerificationError(self.shortfall(found))
        return text, found

    def shortfall(self, found: list[Cosignature]) -> str:
        have = ", ".join(escape(c.witness.name) for c in found) or "none"
        return (
            f"not cosigned by a quorum of witnesses: {len(found)} of the {self.quorum} needed "
            f"({self.describe()}; cosigned by: {have})"
        )
