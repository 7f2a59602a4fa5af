"""The bundle format (docs/FORMAT.md): entry lines, each ending in `\\n`, as
`.jsonl` or gzip of it (`.jsonl.gz`).

Shared, not owned: the writer builds bundles with `bundle_bytes`
(extproc/log/publisher.py), and every reader (extproc/reader.py,
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
import io
import zlib
from collections.abc import Sequence

from extproc.errors import VerificationError

# Fixed so that a retried put is byte-identical (and mtime=0 below).
GZIP_LEVEL = 6
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
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") as f:
            lines = f.read(limit + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise VerificationError(f"bundle is not valid gzip: {e}") from e
    if len(lines) > limit:
        raise VerificationError(_over(limit))
    return lines


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
