"""In-memory store for unit tests (a fake of our own interface, not of S3).

Built directly by tests (`MemoryStore(...)`); no store URL opens it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from extproc.errors import ObjectExistsError, ObjectNotFoundError, ObjectTooLargeError
from extproc.store.base import (
    DEFAULT_READ_LIMIT,
    Confirmation,
    ObjectInfo,
    ObjectLockInfo,
    ObjectVersion,
    Retention,
    RetentionPolicy,
    VersionedStore,
    confirmation,
)

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class MemoryStore:
    """`versioned=True` keeps every version like an S3 bucket with Object Lock,
    and gives the attacker's moves (`overwrite`, `delete`) to tamper tests."""

    supports_retention = True

    def __init__(self, prefix: str = "", *, versioned: bool = False) -> None:
        self.url = "memory://"
        self.prefix = prefix
        self.objects: dict[str, bytes] = {}
        self.retentions: dict[str, Retention] = {}
        self.default_rule: RetentionPolicy | None = None  # the bucket's rule, set by tests
        self._versioned = versioned
        # key -> [(version, bytes or None for a delete marker)], oldest first
        self.history: dict[str, list[tuple[ObjectVersion, bytes | None]]] = {}
        self._tick = 0

    def _record(self, key: str, data: bytes | None) -> None:
        if not self._versioned:
            return
        self._tick += 1
        # A deterministic clock: a version's time is its write order, in seconds.
        version = ObjectVersion(
            key,
            f"v{self._tick}",
            _EPOCH + timedelta(seconds=self._tick),
            len(data or b""),
            delete_marker=data is None,
        )
        self.history.setdefault(key, []).append((version, data))

    def check_writable(self, *, require_lock: bool) -> RetentionPolicy | None:
        return self.default_rule

    def put_once(self, key: str, data: bytes, retention: Retention | None) -> None:
        if key in self.objects:
            raise ObjectExistsError(key)
        self.objects[key] = bytes(data)
        if retention is not None:
            self.retentions[key] = retention
        self._record(key, bytes(data))

    def put_replace(self, key: str, data: bytes, retention: Retention | None) -> None:
        self.objects[key] = bytes(data)
        if retention is not None:
            self.retentions[key] = retention
        self._record(key, bytes(data))

    def overwrite(self, key: str, data: bytes) -> None:
        """An attacker's PutObject over a key: a new version (the old one stays if versioned)."""
        self.objects[key] = bytes(data)
        self._record(key, bytes(data))

    def delete(self, key: str) -> None:
        """An attacker's DeleteObject: a delete marker if versioned, else gone."""
        self.objects.pop(key, None)
        self._record(key, None)

    def get(self, key: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        try:
            data = self.objects[key]
        except KeyError:
            raise ObjectNotFoundError(key) from None
        return _capped(key, data, limit)

    def confirm(self, key: str, sha256: bytes) -> Confirmation:
        return confirmation(self.objects.get(key), sha256)

    def list(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        for key in sorted(self.objects):
            if key.startswith(prefix) and key > start_after:
                yield ObjectInfo(key, len(self.objects[key]))

    def retention(self, key: str) -> Retention | None:
        return self.retentions.get(key)

    def default_retention(self) -> RetentionPolicy | None:
        return self.default_rule

    def versioned(self) -> VersionedStore | None:
        return self if self._versioned else None

    def versions(self, prefix: str, start_after: str = "") -> Iterator[ObjectVersion]:
        for key in sorted(self.history):
            if key.startswith(prefix) and key > start_after:
                yield from (v for v, _ in self.history[key] if not v.delete_marker)
                yield from (v for v, _ in self.history[key] if v.delete_marker)

    def get_version(self, key: str, version_id: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        for version, data in self.history.get(key, []):
            if version.version_id == version_id and data is not None:
                return _capped(key, data, limit)
        raise ObjectNotFoundError(key)

    def lock_info(self, key: str, version_id: str | None = None) -> ObjectLockInfo:
        written = None
        for version, _ in self.history.get(key, []):
            if version_id is None or version.version_id == version_id:
                written = version.last_modified
        return ObjectLockInfo(self.retentions.get(key), written)


def _capped(key: str, data: bytes, limit: int) -> bytes:
    if len(data) > limit:
        raise ObjectTooLargeError(key, limit, len(data))
    return data
