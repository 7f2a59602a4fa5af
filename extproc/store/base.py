"""The ObjectStore interface: write once, read, list, and report retention."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from extproc.core.bundle import MAX_BUNDLE_BYTES, stored_bound

#: What a read takes by default: the largest object the format has (a gzip
#: bundle at the format's bound). Callers that know the kind pass less.
DEFAULT_READ_LIMIT = stored_bound(MAX_BUNDLE_BYTES)


@dataclass(frozen=True)
class Retention:
    mode: str  # COMPLIANCE | GOVERNANCE
    until: datetime


class Confirmation(enum.Enum):
    """What confirm() found: the object as written, no object, or other bytes."""

    CONFIRMED = "confirmed"
    MISSING = "missing"
    DIFFERENT = "different"


CONFIRMED, MISSING, DIFFERENT = Confirmation.CONFIRMED, Confirmation.MISSING, Confirmation.DIFFERENT


def confirmation(stored: bytes | None, sha256: bytes) -> Confirmation:
    """confirm() for stores that read the object back."""
    if stored is None:
        return MISSING
    return CONFIRMED if hashlib.sha256(stored).digest() == sha256 else DIFFERENT


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

    def put_replace(self, key: str, data: bytes, retention: Retention | None) -> None:
        """Write `key` whether or not it exists: for the one key a log rewrites,
        the tlog-tiles `checkpoint` (a new version on a versioned store, where
        Object Lock keeps every earlier one). Atomic: a reader sees the old
        bytes or the new ones."""
        ...

    def get(self, key: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        """Read `key`; raise ObjectNotFoundError if absent, ObjectTooLargeError
        if it holds more than `limit` bytes (checked before reading where the
        store says the size, and while reading: never more than `limit` + 1
        bytes are read), ForeignObjectError if it is not an object at all (a
        local store: anything but a regular file)."""
        ...

    def confirm(self, key: str, sha256: bytes) -> Confirmation:
        """Does the store hold exactly the bytes with this SHA-256 at `key`?

        A write counts only once confirmed: a store can answer a put with 200
        and keep nothing (measured). S3: HEAD with the stored checksum.
        """
        ...

    def list(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        """Every object under `prefix` (with keys after `start_after`), in key order."""
        ...

    def retention(self, key: str) -> Retention | None:
        """The Object Lock retention of `key` (None: none)."""
        ...

    def default_retention(self) -> RetentionPolicy | None:
        """The retention the store gives every new object by default (S3: the
        bucket's Object Lock rule); None if it has none."""
        ...

    def versioned(self) -> VersionedStore | None:
        """This store as a VersionedStore if it keeps every version of a key
        (S3 with versioning, as Object Lock needs), else None."""
        ...


@dataclass(frozen=True)
class ObjectVersion:
    """One version of a key in a versioned store (S3 with versioning, as Object Lock needs).

    A write-once log has exactly one version per key; a second version or a
    delete marker is someone writing over or hiding a published object.
    """

    key: str
    version_id: str
    last_modified: datetime | None
    size: int = 0
    etag: str = ""
    delete_marker: bool = False
    is_latest: bool = False


@dataclass(frozen=True)
class ObjectLockInfo:
    """What HEAD says about one object version: its retention and when it was written."""

    retention: Retention | None
    last_modified: datetime | None


class VersionedStore(ObjectStore, Protocol):
    """A store that keeps every version of a key (S3); the auditor reads the oldest.

    Obtained from `ObjectStore.versioned()`, never by looking at attributes.
    """

    def versions(self, prefix: str, start_after: str = "") -> Iterator[ObjectVersion]:
        """Every version and delete marker under `prefix` (keys after
        `start_after`), oldest first per key."""
        ...

    def get_version(self, key: str, version_id: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        """Read one version of `key` (errors and `limit` as `get`)."""
        ...

    def lock_info(self, key: str, version_id: str | None = None) -> ObjectLockInfo:
        """Retention and write time of one version (the current one if None)."""
        ...
