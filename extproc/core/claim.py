"""Bundle claims: the write-once object that makes a second writer collide.

    {"bundle":"<first:020d>-<last:020d>","sha256":"<hex>","writer":"<hex id>"}\\n

stored at logs/<log id>/claims/<first:020d> before the bundle itself.
`sha256` is over the bundle's uncompressed lines, so a claim and its bundle
can be checked against each other whether the bundle is gzipped or not.
"""

from __future__ import annotations

import hashlib
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
    sha256: str
    writer: str = ""

    @classmethod
    def for_lines(cls, first: int, lines_data: bytes, count: int, writer: str) -> Claim:
        return cls(first, first + count - 1, hashlib.sha256(lines_data).hexdigest(), writer)

    def matches(self, first: int, lines_data: bytes) -> bool:
        """Does this claim describe exactly these bundle lines starting at `first`?"""
        return first == self.first and hashlib.sha256(lines_data).hexdigest() == self.sha256

    def to_bytes(self) -> bytes:
        bundle = f"{self.first:020d}-{self.last:020d}"
        fields = {"bundle": bundle, "sha256": self.sha256, "writer": self.writer}
        return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS) + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Claim:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise VerificationError(f"claim is not valid JSON: {e}") from e
        if not isinstance(obj, dict):
            raise VerificationError("claim is not a JSON object")
        bundle, digest, writer = obj.get("bundle"), obj.get("sha256"), obj.get("writer", "")
        if not isinstance(bundle, str) or not (m := _RANGE_RE.fullmatch(bundle)):
            raise VerificationError("claim does not name a bundle range")
        if not isinstance(digest, str) or not _HEX64_RE.fullmatch(digest):
            raise VerificationError("claim has no sha256")
        first, last = int(m.group(1)), int(m.group(2))
        if last < first:
            raise VerificationError("claim names an empty range")
        return cls(first, last, digest, writer if isinstance(writer, str) else "")
