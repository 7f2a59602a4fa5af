"""Hash key files (serve --hash-key): 32 random bytes as hex on one line, mode 0600.

The key material is the file's bytes without surrounding whitespace (any
file of at least 16 bytes works, as --hmac-key-file always took), so the
server and an auditor's `hash-value` read a key the same way. The key is
never logged; only its id (core/redact.py hash_key_id) is shown.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from extproc.core.redact import check_hash_key
from extproc.errors import ConfigError

log = logging.getLogger(__name__)


def write_hash_key(path: Path) -> bytes:
    """Create a new hash key file; never overwrites one. Returns the key."""
    key = secrets.token_hex(32).encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise ConfigError(f"{path} already exists; refusing to overwrite a hash key") from e
    except OSError as e:
        raise ConfigError(f"cannot create hash key file {path}: {e.strerror}") from e
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(key + b"\n")
    return key


def load_hash_key(path: Path) -> bytes:
    """The key in a hash key file; ConfigError naming the file (never its content)."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"hash key {path} is not a regular file")
        if st.st_size > 4096:
            raise ConfigError(f"hash key {path} is over 4 KiB: not a key file")
        key = path.read_bytes().strip()
    except FileNotFoundError as e:
        raise ConfigError(f"hash key {path} not found (create one with `hash-keygen`)") from e
    except OSError as e:
        raise ConfigError(f"cannot read hash key {path}: {e.strerror}") from e
    if st.st_uid == os.getuid() and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        # Only for our own files: a mounted Kubernetes Secret is root-owned and
        # group-readable (fsGroup) by design.
        log.warning("hash key %s is readable by group or others; chmod 600 it", path)
    try:
        return check_hash_key(key)
    except ConfigError as e:
        raise ConfigError(f"hash key {path}: {e}") from None
