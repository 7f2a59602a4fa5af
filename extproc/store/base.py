"""The ObjectStore interface: write once, read, list, and report retention."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol


@dataclass(frozen=True)
class Retention:
    mode: str  # COMPLIANCE | GOVERNANCE
    until: datetime


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each new object is locked: mode and a number of days."""

    mode: str
    days: int

    def until(self, now: datetime) -> Retention:
        return Retention(self.mode, now + timedelta(days=self.days))


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class ObjectStore(Protocol):
    """Blocking calls: the server runs them in a thread, never on the event loop.

    Keys are full keys inside the store (prefix included); `prefix` is the
    part of the URL under which this deployment's logs live.
    """

    url: str
    prefix: str
    #: True if the store keeps Object Lock retention (S3); False for local/dev stores.
    supports_retention: bool

    def check_writable(self, *, require_lock: bool) -> RetentionPolicy | None:
        """Fail clearly if this store cannot hold an audit log; return its default retention."""
        ...

    def put_once(self, key: str, data: bytes, retention: Retention | None) -> None:
        """Create `key`; raise ObjectExistsError if anything is already there."""
        ...

    def get(self, key: str) -> bytes:
        """Read `key`; raise ObjectNotFoundError if absent."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under `prefix`, in key order."""
        ...

    def retention(self, key: str) -> Retention | None:
        """The Object Lock retention of `key` (None: none)."""
        ...
