"""In-memory store for unit tests (a fake of our own interface, not of S3)."""

from __future__ import annotations

from collections.abc import Iterator

from extproc.errors import ObjectExistsError, ObjectNotFoundError
from extproc.store.base import ObjectInfo, Retention, RetentionPolicy


class MemoryStore:
    supports_retention = True

    def __init__(self, prefix: str = "") -> None:
        self.url = "memory://"
        self.prefix = prefix
        self.objects: dict[str, bytes] = {}
        self.retentions: dict[str, Retention] = {}

    def check_writable(self, *, require_lock: bool) -> RetentionPolicy | None:
        return None

    def put_once(self, key: str, data: bytes, retention: Retention | None) -> None:
        if key in self.objects:
            raise ObjectExistsError(key)
        self.objects[key] = bytes(data)
        if retention is not None:
            self.retentions[key] = retention

    def get(self, key: str) -> bytes:
        try:
            return self.objects[key]
        except KeyError:
            raise ObjectNotFoundError(key) from None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        for key in sorted(self.objects):
            if key.startswith(prefix):
                yield ObjectInfo(key, len(self.objects[key]))

    def retention(self, key: str) -> Retention | None:
        return self.retentions.get(key)
