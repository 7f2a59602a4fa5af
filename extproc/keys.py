"""Signing key files: one line, the note signer key string, mode 0600."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from extproc.core.note import Signer
from extproc.errors import ConfigError

log = logging.getLogger(__name__)


def write_signer(path: Path, signer: Signer, *, overwrite: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o600)
    except FileExistsError as e:
        raise ConfigError(f"{path} already exists; refusing to overwrite a signing key") from e
    except OSError as e:
        raise ConfigError(f"cannot create key file {path}: {e.strerror}") from e
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(signer.to_text() + "\n")


def load_signer(path: Path) -> Signer:
    try:
        st = path.stat()
        text = path.read_text()
    except FileNotFoundError as e:
        raise ConfigError(f"signing key {path} not found (create one with `keygen`)") from e
    except OSError as e:
        raise ConfigError(f"cannot read signing key {path}: {e.strerror}") from e
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        log.warning("signing key %s is writable by group or others; chmod 600 it", path)
    elif st.st_uid == os.getuid() and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        # Only for our own files: a mounted Kubernetes Secret is root-owned and
        # group-readable (fsGroup) by design, and we could not chmod it anyway.
        log.warning("signing key %s is readable by group or others; chmod 600 it", path)
    try:
        return Signer.from_text(text)
    except ConfigError as e:
        raise ConfigError(f"signing key {path}: {e}") from None


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
