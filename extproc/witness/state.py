"""The witness's record of each log: the latest tree it cosigned, one file per origin.

    <state dir>/<sha256(origin) hex>.json   {"origin": ..., "root": <base64>, "size": n}

Each record is replaced atomically (a temporary file, fsync, rename, fsync of
the directory) before the cosignature it allows is sent: a witness that
crashes never cosigns a tree older than one it already cosigned. One process
holds the directory (flock): two witnesses on one state would each roll the
other back.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path

from extproc.core import b64
from extproc.core.merkle import HASH_SIZE
from extproc.core.witness import DEFAULT_MAX_LOGS, Latest
from extproc.errors import ConfigError, StorageError

_MAX_RECORD_BYTES = 4096  # an origin line, a size and a hash


class WitnessState:
    """Records by origin, cached in memory once read. Not thread-safe: the server
    calls it under its one lock."""

    def __init__(self, directory: Path, max_logs: int = DEFAULT_MAX_LOGS) -> None:
        self.directory = directory
        self.max_logs = max_logs
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock_fd = os.open(
                directory / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except OSError as e:
            raise ConfigError(f"cannot open witness state {directory}: {e.strerror}") from e
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self._lock_fd)
            raise ConfigError(f"witness state {directory} is in use by another process") from e
        self._cache: dict[str, Latest | None] = {}
        self._count = sum(1 for _ in directory.glob("*.json"))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def _path(self, origin: str) -> Path:
        return self.directory / (hashlib.sha256(origin.encode()).hexdigest() + ".json")

    def get(self, origin: str) -> Latest | None:
        """The latest tree cosigned for `origin` (None: never); StorageError if its
        record cannot be read back as written."""
        if origin in self._cache:
            return self._cache[origin]
        path = self._path(origin)
        try:
            with path.open("rb") as f:
                raw = f.read(_MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            self._cache[origin] = None
            return None
        except OSError as e:
            raise StorageError(f"cannot read witness record {path}: {e.strerror}") from e
        latest = _parse_record(raw, origin, path)
        self._cache[origin] = latest
        return latest

    def put(self, origin: str, latest: Latest) -> None:
        """Replace the record atomically and durably; StorageError if it could not."""
        new = self.get(origin) is None
        if new and self._count >= self.max_logs:
            raise StorageError(f"witness state holds {self._count} logs, its bound")
        record = {
            "origin": origin,
            "root": base64.b64encode(latest.root_hash).decode(),
            "size": latest.size,
        }
        data = json.dumps(record, sort_keys=True).encode() + b"\n"
        path = self._path(origin)
        tmp = path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            tmp.replace(path)
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            self._cache.pop(origin, None)  # read it back next time: what is on disk counts
            raise StorageError(f"cannot write witness record {path}: {e.strerror}") from e
        self._cache[origin] = latest
        self._count += new


def _parse_record(raw: bytes, origin: str, path: Path) -> Latest:
    try:
        if len(raw) > _MAX_RECORD_BYTES:
            raise ValueError("too large")
        record = json.loads(raw)
        size, root = record["size"], b64.decode(record["root"])
        if record["origin"] != origin or type(size) is not int or size < 0:
            raise ValueError("not this origin's record")
        if len(root) != HASH_SIZE:
            raise ValueError("root is not 32 bytes")
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise StorageError(f"witness record {path} is damaged: {e}") from e
    return Latest(size, root)
