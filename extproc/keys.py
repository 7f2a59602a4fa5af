"""Key files: the signing key (one line, the note signer key string) and the
hash key (core/redact.py), both mode 0600 and read under the same checks."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from extproc.core.note import Signer
from extproc.errors import ConfigError


def write_secret_file(path: Path, data: bytes, what: str) -> None:
    """Create `path` with `data`, mode 0600; never overwrites (a key is not replaced
    by accident). `what` names the file in errors ("signing key", "hash key")."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise ConfigError(f"{path} already exists; refusing to overwrite a {what}") from e
    except OSError as e:
        raise ConfigError(f"cannot create {what} file {path}: {e.strerror}") from e
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)


def write_signer(path: Path, signer: Signer) -> None:
    write_secret_file(path, (signer.to_text() + "\n").encode(), "signing key")


_MAX_KEY_FILE_BYTES = 4096  # one key string (~100 bytes) and a newline


def read_secret_file(path: Path, what: str, create_with: str) -> bytes:
    """The bytes of key file `path`; ConfigError (exit 2) naming the file, never its
    content, if it is not a small regular file only its owner can touch
    (check_key_mode). `create_with` names the command that makes one."""
    try:
        # O_NONBLOCK: a FIFO put in the key's place must not hang the start.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise ConfigError(f"{what} {path} not found (create one with `{create_with}`)") from e
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from e
    try:
        st = os.fstat(fd)  # the file opened, not whatever the name points at later
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what} {path} is not a regular file")
        if st.st_size > _MAX_KEY_FILE_BYTES:
            raise ConfigError(f"{what} {path} is larger than {_MAX_KEY_FILE_BYTES} bytes")
        check_key_mode(path, st.st_mode, st.st_uid, what)
        return os.read(fd, _MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)


def load_signer(path: Path) -> Signer:
    """The signer in key file `path` (read_secret_file's checks)."""
    data = read_secret_file(path, "signing key", "keygen")
    try:
        return Signer.from_text(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"signing key {path} is not UTF-8 text") from None
    except ConfigError as e:
        raise ConfigError(f"signing key {path}: {e}") from None


def check_key_mode(
    path: Path, mode: int, owner: int, what: str = "signing key", *, uid: int | None = None
) -> None:
    """Refuse a key anyone but its owner could read or change.

    Others: no access at all. Group: never write; read only when the file
    belongs to another user, which is how Kubernetes mounts a Secret for a
    non-root container (root:<fsGroup>, defaultMode 0440) and what the
    process cannot chmod anyway. A key file of our own is 0600 or 0400, like
    ssh's private keys. docs/DEPLOYMENT.md, "Signing key". `uid`: the user
    that reads it (default: this process; a manifest's check names another).
    """
    reader = os.getuid() if uid is None else uid
    loose = stat.S_IMODE(mode)
    if mode & stat.S_IRWXO:
        why = "readable or writable by others"
    elif mode & stat.S_IWGRP:
        why = "writable by its group"
    elif mode & (stat.S_IRGRP | stat.S_IXGRP) and owner == reader:
        why = "readable by its group"
    else:
        return
    raise ConfigError(f"{what} {path} is {why} (mode {loose:04o}): chmod 600 {path}")


def ensure_signer(path: Path, name: str) -> tuple[Signer, bool]:
    """The signer at `path`, created with `name` if the file does not exist yet.

    For containers that generate their key into a volume on first start and
    must keep it across restarts: an existing key is loaded, never replaced.
    Returns (signer, created).
    """
    if path.exists():
        return load_signer(path), False
    signer = Signer.generate(name)
    try:
        write_signer(path, signer)
    except ConfigError:
        if path.exists():  # lost a race with another first start: use its key
            return load_signer(path), False
        raise
    return signer, True


def write_verifier_key(path: Path, signer: Signer) -> None:
    """Write the public verifier key string (world-readable: it is public)."""
    if not path.name or path.is_dir():
        raise ConfigError(f"cannot write verifier key {path}: it is a directory")
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(signer.verifier().to_text() + "\n")
        tmp.chmod(0o644)
        tmp.replace(path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ConfigError(f"cannot write verifier key {path}: {e.strerror}") from e
