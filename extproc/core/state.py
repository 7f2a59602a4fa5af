"""The auditor's state file: the last verified checkpoint of each log.

Trust on first use, then incremental: a run that finds a log valid records its
latest checkpoint and the Merkle frontier (the compact range: one hash per set
bit of the tree size) at that size. The next run resumes the tree from the
frontier, re-hashes only entries from that size on, and so checks that the new
checkpoint extends the old one. Pure: bytes in, bytes out; the auditor does the
file I/O (atomic replace) and reads the clock.

Format (JSON, UTF-8, sorted keys):

    {"version": 1,
     "retention": {"mode": "COMPLIANCE", "days": N, "recorded_at": "<RFC 3339 UTC>"},
     "logs": {"<log id>": {
        "origin": "...", "size": N, "root": "<base64>",
        "checkpoint": "<the signed note, as published>",
        "frontier": ["<base64>", ...], "last_leaf": "<hex>",
        "verified_at": "<RFC 3339 UTC>",
        "objects": {"<key>": "<size>:<version id>", ...}}}}
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

from extproc.core import b64
from extproc.core.merkle import CompactRange
from extproc.errors import ConfigError

STATE_VERSION = 1
_LAST_LEAF_RE = re.compile(r"(?:[0-9a-f]{64})?")  # "" at size 0


@dataclass(frozen=True)
class LogState:
    """One log as last verified: what a later run must be consistent with."""

    origin: str
    size: int
    root_hash: bytes
    checkpoint: str  # the signed note text, kept as evidence for a later fork/rollback
    frontier: tuple[bytes, ...]  # CompactRange hashes at `size`
    last_leaf: str  # hex leaf hash of entry size-1 ("" at size 0): the next prev
    verified_at: str
    # Objects wholly below `size`, key -> "<size>:<version id>": a later run
    # compares these instead of re-reading them.
    objects: dict[str, str] = field(default_factory=dict)

    def tree(self) -> CompactRange:
        return CompactRange(self.size, self.frontier)

    def to_json(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "size": self.size,
            "root": base64.b64encode(self.root_hash).decode(),
            "checkpoint": self.checkpoint,
            "frontier": [base64.b64encode(h).decode() for h in self.frontier],
            "last_leaf": self.last_leaf,
            "verified_at": self.verified_at,
            "objects": dict(sorted(self.objects.items())),
        }

    @classmethod
    def from_json(cls, log_id: str, data: Any) -> LogState:
        try:
            state = cls(
                origin=_str(data["origin"]),
                size=_int(data["size"]),
                root_hash=b64.decode(_str(data["root"])),
                checkpoint=_str(data["checkpoint"]),
                frontier=tuple(b64.decode(_str(h)) for h in data["frontier"]),
                last_leaf=_last_leaf(data["last_leaf"]),
                verified_at=_str(data["verified_at"]),
                objects={_str(k): _str(v) for k, v in dict(data.get("objects", {})).items()},
            )
            tree = state.tree()
        except (KeyError, TypeError, ValueError, binascii.Error) as e:
            raise ConfigError(f"state file: log {log_id}: malformed record ({e})") from e
        if tree.root() != state.root_hash:
            raise ConfigError(f"state file: log {log_id}: frontier does not give the root")
        if (state.size == 0) != (state.last_leaf == ""):
            raise ConfigError(f"state file: log {log_id}: last leaf does not fit the size")
        return state


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
        raise TypeError("expected an integer from 0 to 2^64-1")  # RFC 9162: a uint64
    return value


def _last_leaf(value: Any) -> str:
    text = _str(value)
    if not _LAST_LEAF_RE.fullmatch(text):
        raise ValueError("last_leaf is not a hex leaf hash")
    return text


@dataclass(frozen=True)
class RetentionRecord:
    """The bucket's default Object Lock rule as the auditor first saw it: the
    bar a later run holds the bucket to (a rule lowered since is a finding)."""

    mode: str  # COMPLIANCE | GOVERNANCE
    days: int
    recorded_at: str

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "days": self.days, "recorded_at": self.recorded_at}

    @classmethod
    def from_json(cls, data: Any) -> RetentionRecord:
        try:
            record = cls(_str(data["mode"]), _int(data["days"]), _str(data["recorded_at"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"state file: malformed retention record ({e})") from e
        if record.mode not in ("COMPLIANCE", "GOVERNANCE"):
            raise ConfigError(f"state file: unknown retention mode {record.mode!r}")
        return record


@dataclass
class AuditState:
    """Every log's last verified state, keyed by log id, and the bucket's
    retention rule as recorded on first use (None: not recorded yet)."""

    logs: dict[str, LogState] = field(default_factory=dict)
    retention: RetentionRecord | None = None

    def by_origin(self, origin: str) -> LogState | None:
        """The log whose verified checkpoint has this origin (check-proof --state)."""
        return next((s for s in self.logs.values() if s.origin == origin), None)

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "version": STATE_VERSION,
            "logs": {log_id: s.to_json() for log_id, s in sorted(self.logs.items())},
        }
        if self.retention is not None:
            doc["retention"] = self.retention.to_json()
        return (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> AuditState:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"state file is not JSON: {e}") from e
        except RecursionError:  # nested deeper than any state file is
            raise ConfigError("state file is nested too deeply to be one") from None
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
            raise ConfigError(f"state file: unsupported version (expected {STATE_VERSION})")
        logs = doc.get("logs")
        if not isinstance(logs, dict):
            raise ConfigError("state file: 'logs' must be an object")
        retention = doc.get("retention")
        return cls(
            {str(k): LogState.from_json(str(k), v) for k, v in logs.items()},
            None if retention is None else RetentionRecord.from_json(retention),
        )
