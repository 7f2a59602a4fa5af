"""C2SP signed notes (c2sp.org/signed-note) with Ed25519 keys.

Key strings follow the Go `golang.org/x/mod/sumdb/note` formats, so keys made
here work with standard note tooling:

    verifier key:  <name>+<8 hex key id>+<base64(0x01 || 32-byte public key)>
    signer key:    PRIVATE+KEY+<name>+<8 hex key id>+<base64(0x01 || 32-byte seed)>
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from extproc.core import b64
from extproc.core.display import escape
from extproc.errors import ConfigError, VerificationError

ALG_ED25519 = 0x01  # c2sp.org/signed-note: signature type 0x01 is Ed25519
SIGNATURE_PREFIX = "\u2014 "  # "— ", em dash and space, starts every signature line
_PRIVATE_KEY_PREFIX = "PRIVATE+KEY+"
_MAX_NOTE_BYTES = 1 << 20
MAX_NOTE_BYTES = _MAX_NOTE_BYTES  # what a reader takes for a note (audit/reader.py)
_MAX_SIGNATURES = 100  # as golang.org/x/mod/sumdb/note
MAX_SIGNATURES = _MAX_SIGNATURES  # what a note may carry, cosignatures included
_KEY_ID_RE = re.compile(r"[0-9a-fA-F]{8}")


def key_id(name: str, public_key: bytes) -> bytes:
    """SHA-256(key name || 0x0A || 0x01 || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()[:4]


def check_key_name(name: str) -> None:
    if not name or "+" in name or any(c.isspace() for c in name) or not name.isprintable():
        raise ConfigError(f"invalid key name {name!r}: must be non-empty, without '+' or spaces")


def decode_key_data(text: str, what: str) -> bytes:
    try:
        return b64.decode(text)
    except (binascii.Error, ValueError) as e:
        raise ConfigError(f"{what}: invalid base64") from e


@dataclass(frozen=True)
class Verifier:
    name: str
    key_id: bytes
    public_key: Ed25519PublicKey

    @classmethod
    def from_text(cls, vkey: str) -> Verifier:
        """Parse `<name>+<hex key id>+<base64(0x01 || public key)>`."""
        parts = vkey.strip().split("+", 2)  # base64 key data may contain "+"
        if len(parts) != 3:
            raise ConfigError("verifier key must look like <name>+<keyid>+<base64 key>")
        name, hex_id, encoded = parts
        check_key_name(name)
        data = decode_key_data(encoded, "verifier key")
        if len(data) != 33 or data[0] != ALG_ED25519:
            raise ConfigError("verifier key is not an Ed25519 (type 0x01) key")
        if not _KEY_ID_RE.fullmatch(hex_id):
            raise ConfigError("verifier key id must be 8 hex digits")
        kid = bytes.fromhex(hex_id)
        if kid != key_id(name, data[1:]):
            raise ConfigError("verifier key id does not match its name and key")
        return cls(name, kid, Ed25519PublicKey.from_public_bytes(data[1:]))

    def to_text(self) -> str:
        raw = self.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        encoded = base64.b64encode(bytes([ALG_ED25519]) + raw).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class Signer:
    """An Ed25519 note signer held in memory (file keys today, KMS later)."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        check_key_name(name)
        self.name = name
        self._private_key = private_key
        raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = key_id(name, raw)

    @classmethod
    def generate(cls, name: str) -> Signer:
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_text(cls, skey: str) -> Signer:
        """Parse `PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>`."""
        text = skey.strip()
        if not text.startswith(_PRIVATE_KEY_PREFIX):
            raise ConfigError("signing key must start with PRIVATE+KEY+")
        parts = text[len(_PRIVATE_KEY_PREFIX) :].split("+", 2)
        if len(parts) != 3:
            raise ConfigError("signing key must look like PRIVATE+KEY+<name>+<keyid>+<base64>")
        name, hex_id, encoded = parts
        data = decode_key_data(encoded, "signing key")
        if len(data) != 33 or data[0] != ALG_ED25519:
            raise ConfigError("signing key is not an Ed25519 (type 0x01) key")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(data[1:]))
        if signer.key_id.hex() != hex_id.lower():
            raise ConfigError("signing key id does not match its name and key")
        return signer

    def to_text(self) -> str:
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        seed = self._private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        encoded = base64.b64encode(bytes([ALG_ED25519]) + seed).decode()
        return f"{_PRIVATE_KEY_PREFIX}{self.name}+{self.key_id.hex()}+{encoded}"

    def verifier(self) -> Verifier:
        return Verifier(self.name, self.key_id, self._private_key.public_key())

    def sign(self, message: bytes) -> bytes:
        return self._private_key.sign(message)

    def __repr__(self) -> str:  # never print key material
        return f"Signer(name={self.name!r}, key_id={self.key_id.hex()})"


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_id: bytes
    signature: bytes


def sign_note(text: str, signer: Signer) -> str:
    """Return the signed note: text, a blank line, one signature line."""
    _check_note_text(text)
    sig = signer.sign(text.encode())
    return f"{text}\n{signature_line(signer.name, signer.key_id, sig)}"


def _check_note_text(text: str) -> None:
    """ConfigError unless `text` may be signed (and is what parse_note returns)."""
    if not text.endswith("\n"):
        raise ConfigError("note text must end with a newline")
    if "\n\n" in text:
        raise ConfigError("note text must not contain a blank line")
    if any(c < " " and c != "\n" for c in text):
        raise ConfigError("note text must not contain control characters")


def parse_note(note: str | bytes) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into its text and signatures; checks syntax only."""
    if len(note) > _MAX_NOTE_BYTES:  # bytes, or characters: at least as many bytes
        raise VerificationError("signed note too large")
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError as e:
            raise VerificationError("signed note is not UTF-8") from e
    split = note.rfind("\n\n")
    if split < 0:
        raise VerificationError("malformed signed note: no signature block")
    text, block = note[: split + 1], note[split + 2 :]
    try:
        _check_note_text(text)
    except ConfigError as e:
        raise VerificationError(f"malformed signed note: {e}") from e
    if not block.endswith("\n"):
        raise VerificationError("malformed signed note: signature block must end with a newline")
    signatures = []
    lines = block[:-1].split("\n")
    if len(lines) > _MAX_SIGNATURES:
        raise VerificationError("malformed signed note: too many signatures")
    for line in lines:
        signatures.append(parse_signature_line(line))
    return text, signatures


def parse_signature_line(line: str) -> NoteSignature:
    """One signature line, `— <name> <base64(key id || signature)>`, without its newline."""
    if not line.startswith(SIGNATURE_PREFIX):
        raise VerificationError("malformed signed note: bad signature line")
    name, _, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
    try:
        raw = b64.decode(encoded)
    except (binascii.Error, ValueError) as e:
        raise VerificationError("malformed signed note: signature is not base64") from e
    if not name or len(raw) < 5:
        raise VerificationError("malformed signed note: signature too short")
    return NoteSignature(name, raw[:4], raw[4:])


def signature_line(name: str, key_id: bytes, signature: bytes) -> str:
    """The signature line (with its newline) parse_signature_line reads back."""
    return f"{SIGNATURE_PREFIX}{name} {base64.b64encode(key_id + signature).decode()}\n"


def verify_note(note: str | bytes, verifier: Verifier) -> str:
    """Return the note text if `verifier` signed it; raise VerificationError otherwise.

    Signatures by other keys are ignored (c2sp.org/signed-note: unknown keys
    are skipped), but a signature claiming our key that fails is an error.
    """
    text, signatures = parse_note(note)
    found = False
    for sig in signatures:
        if sig.name != verifier.name or sig.key_id != verifier.key_id:
            continue
        if not verifier.verify(text.encode(), sig.signature):
            raise VerificationError(f"invalid signature by key {verifier.name}")
        found = True
    if not found:
        # Names come from whoever wrote the note (a proof file, an object in the
        # store): escaped, since the message ends up on a terminal.
        names = ", ".join(sorted({escape(s.name) for s in signatures})) or "none"
        raise VerificationError(
            f"no signature by key {verifier.name}+{verifier.key_id.hex()} (signed by: {names})"
        )
    return text
