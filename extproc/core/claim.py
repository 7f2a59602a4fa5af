"""Bundle claims: the write-once object that makes a second writer collide.

    {"bundle":"<first:020d>-<last:020d>","last_leaf":"<hex>","writer":"<hex id>"}\\n

stored at logs/<log id>/claims/<first:020d> before the bundle itself.
`last_leaf` is the leaf hash of the bundle's last entry: through the `prev`
hash chain it pins every entry of the bundle (and before), so checking a
claim costs no hashing beyond what verification does anyway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from extproc.errors import VerificationError

_RANGE_RE = re.compile(r"([0-9]{20})-([0-9]{20})")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Claim:
    first: int
    last: int
    last_leaf: str  # hex leaf hash of entry `last`
    writer: str = ""

    def matches(self, first: int, last: int, last_leaf: bytes) -> bool:
        """Does this claim describe the bundle first..last ending in this leaf?"""
        return (first, last, last_leaf.hex()) == (self.first, self.last, self.last_leaf)

    def to_bytes(self) -> bytes:
        fields = {
            "bundle": f"{self.first:020d}-{self.last:020d}",
            "last_leaf": self.last_leaf,
            "writer": self.writer,
        }
        return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS) + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Claim:
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
        return cls(first, last, leaf, writer if isinstance(writer, str) else "")
