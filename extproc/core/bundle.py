"""The bundle format (docs/FORMAT.md): entry lines, each ending in `\\n`, as
`.jsonl` or gzip of it (`.jsonl.gz`).

Shared, not owned: the writer builds bundles with `bundle_bytes`
(extproc/log/publisher.py), and every reader (extproc/reader.py,
core/verify.py) takes them apart with `bundle_lines` and `split_lines`.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence

from extproc.errors import VerificationError

# Fixed so that a retried put is byte-identical (and mtime=0 below).
GZIP_LEVEL = 6


def bundle_bytes(lines: Sequence[bytes], *, compress: bool) -> bytes:
    """A bundle object holding these entry lines (each without its newline)."""
    data = b"\n".join(lines) + b"\n"
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0) if compress else data


def bundle_lines(data: bytes, *, compressed: bool) -> bytes:
    """The newline-terminated lines of a bundle object, decompressed if needed."""
    if compressed:
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise VerificationError(f"bundle is not valid gzip: {e}") from e
    return data


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
