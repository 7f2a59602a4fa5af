"""Audit entry encoding (docs/FORMAT.md).

An entry is one JSON object on one line: sorted keys, compact separators,
UTF-8, no trailing newline in the hashed bytes. The stored bytes are what is
hashed; a verifier never re-serialises them.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import orjson

from extproc.core.fields import (
    AUTHORITY,
    EVENT,
    HEADERS,
    KIND,
    KIND_WRITER,
    PATH,
    PREV,
    QUERY,
    REQ,
    RESP,
    SEQ,
    TRUNC,
    WRITER,
    V,
    dotted,
)
from extproc.errors import ConfigError, VerificationError

FORMAT_VERSION = 1
MAX_ENTRY_BYTES = 64 * 1024 - 1  # DESIGN.md: entries stay under 64 KiB
# Room left for v/seq/prev/ts and the truncation notes when shrinking.
_SHRINK_TARGET = MAX_ENTRY_BYTES - 2048
DROPPED = "[dropped: entry size limit]"

# orjson sorts keys and writes compact JSON; it rejects NaN and non-str keys,
# which keeps the encoding deterministic.
_OPTIONS = orjson.OPT_SORT_KEYS


def encode(fields: dict[str, Any]) -> bytes:
    """Deterministic bytes of an entry (fields must already hold v, seq, prev)."""
    return orjson.dumps(fields, option=_OPTIONS)


def fit(fields: dict[str, Any]) -> dict[str, Any]:
    """Shrink an entry in place until it encodes under the size limit.

    Largest header values go first; each removal is named in `trunc`, so the
    entry says what it lost. The target leaves room for v/seq/prev/ts. One
    pass: each value is encoded once and the savings are added up, so the
    cost is linear in the entry, whatever the number of headers.
    """
    size = len(encode(fields))
    if size <= _SHRINK_TARGET:
        return fields
    if TRUNC not in fields:
        fields[TRUNC] = []
        size += len(encode({TRUNC: []})) - 1  # `,"trunc":[]` in place of a brace
    trunc: list[str] = fields[TRUNC]
    candidates: list[tuple[int, str, dict[str, Any], str]] = []
    for section in (REQ, RESP):
        headers = fields.get(section, {}).get(HEADERS, {})
        for name, value in headers.items():
            candidates.append((_encoded_size(value), dotted(section, HEADERS, name), headers, name))
    candidates.sort(key=lambda c: c[0], reverse=True)
    dropped_size = _encoded_size(DROPPED)
    for value_size, path, headers, name in candidates:
        if size <= _SHRINK_TARGET:
            break
        headers[name] = DROPPED
        trunc.append(path)
        size += dropped_size - value_size + _encoded_size(path) + (1 if len(trunc) > 1 else 0)
    if len(encode(fields)) <= _SHRINK_TARGET:
        return fields
    # Still too big: header names or request line fields. Drop all headers.
    for section in (REQ, RESP):
        if HEADERS in fields.get(section, {}):
            fields[section][HEADERS] = {}
            # One note for the whole map: per-header notes repeat every (maybe huge) name.
            per_header = dotted(section, HEADERS, "")
            trunc[:] = [path for path in trunc if not path.startswith(per_header)]
            trunc.append(dotted(section, HEADERS))
    for name in (PATH, QUERY, AUTHORITY):
        req = fields.get(REQ, {})
        if isinstance(req.get(name), str) and len(req[name]) > 1024:
            req[name] = req[name][:1024]
            trunc.append(dotted(REQ, name))
    return fields


def _encoded_size(value: Any) -> int:
    return len(orjson.dumps(value, option=_OPTIONS))


def writer_event(event: str, writer: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fields of a `writer` entry: the log records its own start and clean stop,
    so an auditor can tell "no traffic" from "writer down" and a clean shutdown
    always ends with a new entry under a final checkpoint. `details`: the
    event's own fields (docs/FORMAT.md, `writer`)."""
    return {KIND: KIND_WRITER, EVENT: event, WRITER: writer, **(details or {})}


def parse(line: bytes) -> dict[str, Any]:
    """Decode one stored entry line, checking only the chain fields."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise VerificationError(f"entry is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise VerificationError("entry is not a JSON object")
    if obj.get(V) != FORMAT_VERSION:
        raise VerificationError(f"entry format version {obj.get(V)!r} is not {FORMAT_VERSION}")
    if not isinstance(obj.get(SEQ), int) or not isinstance(obj.get(PREV), str):
        raise VerificationError("entry lacks an integer seq or a string prev")
    return obj


def parse_time(value: str) -> datetime:
    """A time bound given by a user (--since/--until): RFC 3339 with a zone, or
    YYYY-MM-DD (UTC midnight). Returned in UTC."""
    text = value.strip()
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError as e:
        raise ConfigError(f"time {value!r} is not RFC 3339 or YYYY-MM-DD") from e
    if moment.tzinfo is None:
        raise ConfigError(f"time {value!r} has no time zone: add Z or an offset")
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 pushed past the range by its offset
        raise ConfigError(f"time {value!r} is out of range in UTC") from None


def ts_text(moment: datetime) -> str:
    """`moment` in the entries' `ts` form (fixed width, so bounds compare as strings)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
