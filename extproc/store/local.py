"""A local directory store for development: files written once, then read-only.

There is no retention on a local disk, so `verify` reports retention as not
applicable here; use S3 with Object Lock for anything that must hold up.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from extproc.errors import ObjectExistsError, ObjectNotFoundError, StorageError
from extproc.store.base import (
    Confirmation,
    ObjectInfo,
    Retention,
    RetentionPolicy,
    VersionedStore,
    confirmation,
)


class LocalStore:
    supports_retention = False

    def __init__(self, root: Path, prefix: str = "") -> None:
        self.root = root
        self.prefix = prefix
        self.url = str(root)

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"refusing key outside the store: {key}")
        return self.root / key

    def check_writable(self, *, require_lock: bool) -> RetentionPolicy | None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create store directory {self.root}: {e.strerror}") from e
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"store directory {self.root} is not writable")
        return None

    def put_once(self, key: str, data: bytes, retention: Retention | None) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                Path(tmp).chmod(0o444)
                # link() fails if the name exists: an atomic create-once.
                os.link(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    Path(tmp).unlink()
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except FileExistsError:
            raise ObjectExistsError(key) from None
        except OSError as e:
            raise StorageError(f"cannot write {path}: {e.strerror}") from e

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ObjectNotFoundError(key) from None
        except OSError as e:
            raise StorageError(f"cannot read {path}: {e.strerror}") from e

    def confirm(self, key: str, sha256: bytes) -> Confirmation:
        try:
            stored: bytes | None = self.get(key)
        except ObjectNotFoundError:
            stored = None
        return confirmation(stored, sha256)

    def list(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.exists():
            return
        found = []
        for dirpath, _, filenames in os.walk(base):
            for name in filenames:
                if name.startswith(".tmp-"):
                    continue
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix) and key > start_after:
                    found.append(ObjectInfo(key, path.stat().st_size))
        yield from sorted(found, key=lambda o: o.key)

    def retention(self, key: str) -> Retention | None:
        return None

    def default_retention(self) -> RetentionPolicy | None:
        return None

    def versioned(self) -> VersionedStore | None:
        return None  # a directory keeps one version: a rewrite leaves no trace
