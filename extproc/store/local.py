"""A local directory store for development: files written once, then read-only.

There is no retention on a local disk, so `verify` reports retention as not
applicable here; use S3 with Object Lock for anything that must hold up.

Whoever can write the directory can put anything in it, not only files: a
FIFO (a read would hang), a symlink to /dev/zero (a read would never end) or
to a directory elsewhere. So only regular files are objects: every path is
opened one component at a time from the store root, without following
symbolic links (O_NOFOLLOW), a file is opened non-blocking and checked with
fstat after opening, and reads stop one byte past their bound. Anything else
at a key is a foreign object (ForeignObjectError); listings show it, never
follow it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from extproc.errors import (
    ForeignObjectError,
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    StorageError,
)
from extproc.store.base import (
    DEFAULT_READ_LIMIT,
    Confirmation,
    ObjectInfo,
    Retention,
    RetentionPolicy,
    VersionedStore,
    confirmation,
)

_TMP = ".tmp-"  # the writer's files before their atomic link: not objects
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CHUNK = 1 << 20


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


class LocalStore:
    supports_retention = False

    def __init__(self, root: Path, prefix: str = "") -> None:
        self.root = root
        self.prefix = prefix
        self.url = str(root)

    def _parts(self, key: str) -> list[str]:
        parts = key.split("/")
        if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise StorageError(f"refusing key outside the store: {key}")
        return parts

    def _open_dir(self, parts: Sequence[str], key: str, *, create: bool = False) -> int:
        """A descriptor of the directory root/parts, each component opened without
        following a symbolic link; ForeignObjectError if one is not a directory.
        (The root itself is the operator's: it may be a link.)"""
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, part in enumerate(parts):
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                try:
                    inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    where = "/".join(parts[: i + 1])
                    raise ForeignObjectError(
                        key, f"{where} on its path is not a directory (a symbolic link or a file)"
                    ) from None
                os.close(fd)
                fd = inner
        except BaseException:
            os.close(fd)
            raise
        return fd

    def check_writable(self, *, require_lock: bool) -> RetentionPolicy | None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create store directory {self.root}: {e.strerror}") from e
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"store directory {self.root} is not writable")
        return None

    def put_once(self, key: str, data: bytes, retention: Retention | None) -> None:
        self._put(key, data, once=True)

    def put_replace(self, key: str, data: bytes, retention: Retention | None) -> None:
        self._put(key, data, once=False)

    def _put(self, key: str, data: bytes, *, once: bool) -> None:
        parts = self._parts(key)
        try:
            dir_fd = self._open_dir(parts[:-1], key, create=True)
        except ForeignObjectError as e:
            raise StorageError(f"cannot write {key}: {e}") from e
        except OSError as e:
            raise StorageError(f"cannot write {self.root / key}: {e.strerror}") from e
        tmp = f"{_TMP}{secrets.token_hex(8)}"
        try:
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444, dir_fd=dir_fd
            )
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                if once:
                    # link() fails if the name exists (as anything): an atomic create-once.
                    os.link(tmp, parts[-1], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                else:
                    os.replace(tmp, parts[-1], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dir_fd)
            os.fsync(dir_fd)
        except FileExistsError:
            raise ObjectExistsError(key) from None
        except OSError as e:
            raise StorageError(f"cannot write {self.root / key}: {e.strerror}") from e
        finally:
            os.close(dir_fd)

    def get(self, key: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        parts = self._parts(key)
        try:
            fd = self._open_file(parts, key)
            try:
                return self._read(fd, key, limit)
            finally:
                os.close(fd)
        except FileNotFoundError:
            raise ObjectNotFoundError(key) from None
        except OSError as e:
            raise StorageError(f"cannot read {self.root / key}: {e.strerror}") from e

    def _open_file(self, parts: list[str], key: str) -> int:
        """The regular file at root/parts, opened for reading; ForeignObjectError
        for anything else (looked at before opening, and checked after)."""
        dir_fd = self._open_dir(parts[:-1], key)
        try:
            mode = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False).st_mode
            if not stat.S_ISREG(mode):
                raise ForeignObjectError(key, f"{_kind(mode)}, not a file")
            try:
                fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=dir_fd)
            except OSError as e:
                if e.errno != errno.ELOOP:
                    raise
                raise ForeignObjectError(key, "a symbolic link, not a file") from None
        finally:
            os.close(dir_fd)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # replaced between the look and the open
            os.close(fd)
            raise ForeignObjectError(key, f"{_kind(mode)}, not a file")
        return fd

    @staticmethod
    def _read(fd: int, key: str, limit: int) -> bytes:
        size = os.fstat(fd).st_size
        if size > limit:
            raise ObjectTooLargeError(key, limit, size)
        chunks: list[bytes] = []
        got = 0
        while got <= limit:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got > limit:  # grew after fstat
            raise ObjectTooLargeError(key, limit)
        return b"".join(chunks)

    def confirm(self, key: str, sha256: bytes) -> Confirmation:
        try:
            stored: bytes | None = self.get(key)
        except ObjectNotFoundError:
            stored = None
        return confirmation(stored, sha256)

    def list(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        """Every object under the directory `prefix` names. Anything that is not a
        directory or a regular file (a symbolic link, a FIFO, a device) is listed
        as an object of size 0, never followed: reading it is refused."""
        base = [p for p in prefix.rstrip("/").split("/") if p]
        try:
            dir_fd = self._open_dir(base, prefix)
        except (OSError, ForeignObjectError):
            return  # absent, or not a directory: a listing of the parent shows it
        found = []
        try:
            for dirpath, dirnames, filenames, dfd in os.fwalk(".", dir_fd=dir_fd):
                folder = [*base, *[p for p in dirpath.split("/") if p != "."]]
                for name in filenames + dirnames:
                    try:
                        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    regular = stat.S_ISREG(st.st_mode)
                    if stat.S_ISDIR(st.st_mode) or (regular and name.startswith(_TMP)):
                        continue
                    key = "/".join([*folder, name])
                    if key.startswith(prefix) and key > start_after:
                        found.append(ObjectInfo(key, st.st_size if regular else 0))
        finally:
            os.close(dir_fd)
        yield from sorted(found, key=lambda o: o.key)

    def retention(self, key: str) -> Retention | None:
        return None

    def default_retention(self) -> RetentionPolicy | None:
        return None

    def versioned(self) -> VersionedStore | None:
        return None  # a directory keeps one version: a rewrite leaves no trace
