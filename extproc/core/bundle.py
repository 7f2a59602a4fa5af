"""The bundle format (docs/FORMAT.md): entry lines, each ending in `\\n`, as
`.jsonl` or gzip of it (`.jsonl.gz`).

Shared, not owned: the writer builds bundles with `bundle_bytes`
(extproc/log/publisher.py), and every reader (extproc/audit/reader.py,
core/verify.py) takes them apart with `bundle_lines` and `split_lines`.

A bundle is bounded by the format, not by the writer's settings (which a
reader does not know): its lines take at most `MAX_BUNDLE_BYTES`
(`serve --bundle-max-bytes` is capped there). Readers refuse bigger ones
before reading (the listed size) and while reading (decompression is
streamed and stops one byte past the bound), so a gzip bomb costs at most
the bound in memory, never what it expands to.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence

from extproc.errors import VerificationError

# Fixed so that a retried put is byte-identical (and mtime=0 below).
GZIP_LEVEL = 6
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib: a gzip header and trailer (RFC 1952)
#: The largest bundle the format allows (its newline-terminated lines, decompressed).
MAX_BUNDLE_BYTES = 64 << 20


def stored_bound(lines_bound: int) -> int:
    """The largest gzip object whose lines fit in `lines_bound` bytes: deflate
    adds at most 5 bytes per 16 KiB stored block of incompressible input, plus
    the gzip header and trailer (RFC 1951 3.2.4, RFC 1952)."""
    return lines_bound + lines_bound // 1024 + 64


def bundle_bytes(lines: Sequence[bytes], *, compress: bool) -> bytes:
    """A bundle object holding these entry lines (each without its newline)."""
    data = b"\n".join(lines) + b"\n"
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0) if compress else data


def bundle_lines(data: bytes, *, compressed: bool, limit: int = MAX_BUNDLE_BYTES) -> bytes:
    """The newline-terminated lines of a bundle object, decompressed if needed.

    Raises VerificationError if they take more than `limit` bytes (a bundle
    no writer of this format produces: a decompression bomb, or a reader
    bound set below the writer's) or the gzip is broken. Decompression
    stops one byte past `limit`: memory is bounded by it, not by the input.
    """
    if not compressed:
        if len(data) > limit:
            raise VerificationError(_over(limit))
        return data
    parts: list[bytes] = []
    got = 0
    rest = data
    while True:  # one gzip member after another (RFC 1952 2.2), as gzip.decompress
        member = zlib.decompressobj(wbits=_GZIP_WBITS)
        try:
            part = member.decompress(rest, limit + 1 - got)
        except zlib.error as e:
            raise VerificationError(f"bundle is not valid gzip: {e}") from e
        got += len(part)
        if got > limit:
            raise VerificationError(_over(limit))
        parts.append(part)
        if not member.eof:
            raise VerificationError("bundle is not valid gzip: it ends inside a member")
        rest = member.unused_data
        if not rest.strip(b"\0"):  # the end, or zero padding after the last member
            return b"".join(parts)


def _over(limit: int) -> str:
    return (
        f"bundle holds more than {limit} bytes of lines, over the reader's bound "
        "(--max-bundle-bytes): not read further"
    )


def split_lines(data: bytes) -> list[bytes]:
    """The entry lines of `bundle_lines` output, without their newlines.

    Only `\\n` ends an entry (entries are JSON: a raw CR or any other line
    break inside one stays part of it). The final newline ends the last
    line; a bundle without one still yields its last line, which the
    verifier reports.
    """
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines
