"""Quick byte scans of stored entry lines: the one place that looks for entry
fields in bytes instead of parsing them.

Verifying, searching and proving read millions of entries, and most of them
do not hold what is looked for; a substring search costs a fraction of a JSON
parse. Every pattern is built here from a field name (core/fields.py) and
the writers' encoding (core.entry.encode: orjson, sorted keys, compact
separators, so a member with a scalar value is `"name":` and the value as
orjson writes it alone; tests/unit/test_scan.py holds this against the encoder).

A scan only skips lines or confirms what a parse would: a line it returns
may hold the bytes inside another value, so the caller parses it and
decides. The patterns are computed once, at import or per search, never per
line.
"""

from __future__ import annotations

from binascii import hexlify
from collections.abc import Iterator, Sequence

import orjson

from extproc.core.fields import PREV, SEQ, TS

_TS_LEN = len("2026-11-26T16:34:36.572195Z")  # FORMAT.md: RFC 3339 UTC, microseconds


def key(name: str) -> bytes:
    """`"name":` as the encoder writes a member's start, whatever its value."""
    return orjson.dumps(name) + b":"


def member(name: str, value: str | int | bool | None) -> bytes:
    """`"name":<value>` exactly as the encoder writes a member with this scalar value."""
    return key(name) + orjson.dumps(value)


_PREV_AT = key(PREV) + b'"'  # the chain field: a hex string
_SEQ_AT = b"," + key(SEQ)  # never the first key: `kind` sorts before it
_SEQ_IS = _SEQ_AT + b"%d,"  # and never the last: `ts` and `v` sort after it
_TS_AT = key(TS) + b'"'


def lines_holding(
    lines: Sequence[bytes], needles: Sequence[bytes], data: bytes | None = None
) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of each line that holds one of `needles` (patterns from
    `member` or `key`). `data`: the lines' bytes as one (a bundle's), searched
    once first: most bundles hold none of them."""
    if data is not None and not any(needle in data for needle in needles):
        return
    if len(needles) == 1:
        needle = needles[0]
        for offset, line in enumerate(lines):
            if needle in line:
                yield offset, line
        return
    for offset, line in enumerate(lines):
        if any(needle in line for needle in needles):
            yield offset, line


def top_level_ts(line: bytes) -> bytes | None:
    """The top-level `ts` value without parsing (None: not found as written).

    Keys are sorted, and only `v`, `version` and `writer` (plain values) sort
    after `ts`, so the last `"ts":"` is the top-level one (an escaped quote
    cannot form it)."""
    at = line.rfind(_TS_AT)
    if at < 0:
        return None
    start = at + len(_TS_AT)
    end = start + _TS_LEN
    return line[start:end] if line[end : end + 1] == b'"' else None


def chain_mismatches(
    lines: list[bytes], first: int, prev0: bytes, leaves: list[bytes]
) -> list[int]:
    """Offsets of the lines whose top-level `prev` and `seq` a quick check cannot confirm.

    Line i must hold `"prev":"<hex leaf hash of line i-1>"` (`prev0` for the
    first line) and `"seq":<first + i>`. In the writers' encoding (sorted keys,
    compact), every top-level key before "prev" holds a plain string, so the
    first `"prev":"` follows no `{` or `[` but the opening one: it is the
    top-level key (inside a JSON string a quote is escaped, so `"prev":"`
    cannot start inside a value). The keys after "seq" are `src` (fixed
    string fields), `ts` and `v`, so the last `,"seq":` is the top-level one.
    A line that does not fit (another key order, a nested object first, a
    wrong value) is returned for the full parse, which decides. A false
    confirmation needs a writer that put a nested `"seq":<n>` after the
    top-level one: a writer bug, not a change after signing (that breaks the
    root). `verify --deep` parses every entry instead.
    """
    hexes = hexlify(b"".join(leaves))  # one C call instead of a .hex() per leaf
    bad = []
    value_at = len(_PREV_AT)
    # Line heads before "prev" repeat (kind, dst, node): check each distinct one once.
    clean_heads: set[bytes] = set()
    for i, line in enumerate(lines):
        prev = hexes[64 * i - 64 : 64 * i] if i else prev0
        at = line.find(_PREV_AT)
        if at < 0:
            bad.append(i)
            continue
        head = line[:at]
        if head not in clean_heads:
            if head[:1] != b"{" or head.find(b"{", 1) >= 0 or head.find(b"[") >= 0:
                bad.append(i)
                continue
            if len(clean_heads) < 1024:
                clean_heads.add(head)
        end = at + value_at + len(prev)
        if (
            not line.startswith(prev, at + value_at)
            or line[end : end + 1] != b'"'
            or not line.startswith(_SEQ_IS % (first + i), line.rfind(_SEQ_AT))
        ):
            bad.append(i)
    return bad
