"""Bundle claims: the write-once object that makes a second writer collide.

    {"bundle":"<first:020d>-<last:020d>","epoch":<n>,"key":"<key name>",
     "last_leaf":"<hex>","origin":"<origin>","sig":"<base64>","writer":"<hex id>"}\\n

stored at logs/<log id>/claims/<first:020d> (epoch 1) or
logs/<log id>/claims/<first:020d>.e<n> (epoch n >= 2) before the bundle itself.
`last_leaf` is the leaf hash of the bundle's last entry: through the `prev`
hash chain it pins every entry of the bundle (and before), so checking a
claim costs no hashing beyond what verification does anyway.

`sig` is the Ed25519 signature of the log's signing key over `signed_message()`
(base64 of the 4-byte key id and the 64-byte signature, as in a signed-note
line): it proves the claim was written by the log's writer, so an object
planted at a claim key is recognised as foreign instead of stopping the log.
Claims written before signatures existed carry neither `key` nor `sig`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

import orjson

from extproc.core.keyring import Keyring, TrustedKey
from extproc.core.note import Signer
from extproc.errors import VerificationError

_RANGE_RE = re.compile(r"([0-9]{20})-([0-9]{20})")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_SIGNED_PREFIX = b"extproc-audit claim v1\n"
MAX_CLAIM_BYTES = 4096


@dataclass(frozen=True)
class Claim:
    first: int
    last: int
    last_leaf: str  # hex leaf hash of entry `last`
    writer: str = ""
    epoch: int = 1
    origin: str = ""
    key_name: str = ""
    signature: bytes = b""  # key id (4 bytes) || Ed25519 signature (64 bytes)

    def matches(self, first: int, last: int, last_leaf: bytes) -> bool:
        """Does this claim describe the bundle first..last ending in this leaf?"""
        return (first, last, last_leaf.hex()) == (self.first, self.last, self.last_leaf)

    @property
    def bundle(self) -> str:
        return f"{self.first:020d}-{self.last:020d}"

    def signed_message(self) -> bytes:
        return (
            _SIGNED_PREFIX
            + (
                f"{self.origin}\n{self.bundle}\n{self.last_leaf}\n{self.writer}\n{self.epoch}\n"
            ).encode()
        )

    def sign(self, signer: Signer) -> Claim:
        unsigned = replace(self, key_name=signer.name, signature=b"")
        sig = signer.sign(unsigned.signed_message())
        return replace(unsigned, signature=signer.key_id + sig)

    @property
    def signed(self) -> bool:
        return bool(self.signature)

    def verify(self, keyring: Keyring) -> TrustedKey:
        """The trusted key that signed this claim; raises VerificationError."""
        if not self.signature:
            raise VerificationError("claim is not signed")
        if len(self.signature) != 68:
            raise VerificationError("claim signature has the wrong length")
        return keyring.verify_signature(
            self.key_name, self.signature[:4], self.signed_message(), self.signature[4:]
        )

    def to_bytes(self) -> bytes:
        fields: dict[str, object] = {
            "bundle": self.bundle,
            "last_leaf": self.last_leaf,
            "writer": self.writer,
        }
        if self.signature:
            fields.update(
                epoch=self.epoch,
                origin=self.origin,
                key=self.key_name,
                sig=base64.b64encode(self.signature).decode(),
            )
        return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS) + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Claim:
        if len(data) > MAX_CLAIM_BYTES:
            raise VerificationError("claim is too large")
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise VerificationError(f"claim is not valid JSON: {e}") from e
        if not isinstance(obj, dict):
            raise VerificationError("claim is not a JSON object")
        bundle, leaf, writer = obj.get("bundle"), obj.get("last_leaf"), obj.get("writer", "")
        if not isinstance(bundle, str) or not (m := _RANGE_RE.fullmatch(bundle)):
            raise VerificationError("claim does not name a bundle range")
        if not isinstance(leaf, str) or not _HEX64_RE.fullmatch(leaf):
            raise VerificationError("claim has no last_leaf hash")
        first, last = int(m.group(1)), int(m.group(2))
        if last < first:
            raise VerificationError("claim names an empty range")
        claim = cls(first, last, leaf, writer if isinstance(writer, str) else "")
        if "sig" not in obj:
            return claim
        epoch, origin, key, sig = obj.get("epoch"), obj.get("origin"), obj.get("key"), obj["sig"]
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            raise VerificationError("claim epoch is not a positive integer")
        if not isinstance(origin, str) or not isinstance(key, str) or not isinstance(sig, str):
            raise VerificationError("claim origin, key and sig must be strings")
        try:
            raw = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError) as e:
            raise VerificationError("claim signature is not base64") from e
        return replace(claim, epoch=epoch, origin=origin, key_name=key, signature=raw)


def claim_in_effect(candidates: Iterable[tuple[int, Claim, bool]]) -> tuple[int, Claim] | None:
    """Which of the claims at one position decides the bundle there.

    `candidates`: (epoch from the key, claim, signature verified by a trusted
    key). The verified claim of the highest epoch wins: the writer moved to it
    when it met a foreign object. Without any, an unsigned epoch-1 claim (a log
    written before claims were signed) decides.
    """
    best: tuple[int, Claim] | None = None
    legacy: tuple[int, Claim] | None = None
    for epoch, claim, trusted in candidates:
        if trusted and (best is None or epoch > best[0]):
            best = (epoch, claim)
        elif not claim.signed and epoch == 1 and legacy is None:
            legacy = (epoch, claim)
    return best or legacy
