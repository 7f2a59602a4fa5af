"""Receipts: the response header that names a request's entry in the log.

With `serve --receipts` every response whose request was audited carries

    x-audit-receipt: log="<log id>", seq=<seq of the request entry>

an RFC 9651 (Structured Field Values) Dictionary, so any structured-field
parser reads it. With the log id and seq a client can later ask for an
inclusion proof of its own request (`extproc-audit prove --log ID --seq N`).
The receipt holds nothing secret and proves nothing by itself: it is an
index, checked by the proof (docs/FORMAT.md, "Receipts").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from extproc.core import layout
from extproc.errors import ConfigError

DEFAULT_HEADER = "x-audit-receipt"
_MAX_SEQ = 10**15 - 1  # RFC 9651 3.3.1: an sf-integer has at most 15 digits
_SEQ_RE = re.compile(r"0|[1-9][0-9]{0,14}")
_LOG_RE = re.compile(r'"([A-Za-z0-9._-]{1,128})"')
_KEY_RE = re.compile(r"[a-z*][a-z0-9_.*-]*")  # RFC 9651 3.1.2 key
# What Envoy accepts as a header name set by ext_proc: lower case, no
# pseudo-header, no x-envoy-* (Envoy drops those mutations silently).
_HEADER_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")


def header_prefix(log_id: str) -> bytes:
    """The constant part of every receipt of one log; the seq follows it."""
    return f'log="{layout.validate_log_id(log_id)}", seq='.encode("ascii")


@dataclass(frozen=True)
class Receipt:
    log_id: str
    seq: int

    def to_text(self) -> str:
        if not 0 <= self.seq <= _MAX_SEQ:
            raise ConfigError(f"receipt seq {self.seq} out of range")
        return header_prefix(self.log_id).decode("ascii") + str(self.seq)

    @classmethod
    def from_text(cls, text: str) -> Receipt:
        """Parse a receipt header value; members other than log and seq are ignored.

        Follows RFC 9651 4.2.2 for the members we read: a repeated key keeps
        its last value, optional spaces and tabs around commas.
        """
        members: dict[str, str] = {}
        for member in text.split(","):
            key, sep, value = member.strip(" \t").partition("=")
            if not _KEY_RE.fullmatch(key):
                raise ConfigError(f"malformed receipt member {member.strip()[:40]!r}")
            members[key] = value if sep else "?1"  # a bare key is boolean true
        if "log" not in members or "seq" not in members:
            raise ConfigError("receipt needs log and seq")
        log = _LOG_RE.fullmatch(members["log"])
        if log is None:
            raise ConfigError("receipt log must be a quoted log id")
        if not _SEQ_RE.fullmatch(members["seq"]):
            raise ConfigError("receipt seq must be a non-negative integer of up to 15 digits")
        return cls(layout.validate_log_id(log.group(1)), int(members["seq"]))


def validate_header_name(name: str) -> str:
    """A header name Envoy lets ext_proc set on a response."""
    if not _HEADER_NAME_RE.fullmatch(name) or name.startswith("x-envoy-"):
        raise ConfigError(
            f"invalid receipt header {name!r}: lower-case letters, digits and dashes, not x-envoy-*"
        )
    return name
