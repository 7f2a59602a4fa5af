"""Hash key files (serve --hash-key): 32 random bytes as hex on one line, mode 0600.

The key material is the file's bytes without surrounding whitespace (any
file of at least 16 bytes works, as --hmac-key-file always took), so the
server and an auditor's `hash-value` read a key the same way. The key is
never logged; only its id (core/redact.py hash_key_id) is shown.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from extproc.core.redact import check_hash_key
from extproc.errors import ConfigError
from extproc.keys import read_secret_file, write_secret_file


def write_hash_key(path: Path) -> bytes:
    """Create a new hash key file; never overwrites one. Returns the key."""
    key = secrets.token_hex(32).encode()
    write_secret_file(path, key + b"\n", "hash key")
    return key


def load_hash_key(path: Path) -> bytes:
    """The key in a hash key file, read under the signing key's checks (keys.py)."""
    key = read_secret_file(path, "hash key", "hash-keygen").strip()
    try:
        return check_hash_key(key)
    except ConfigError as e:
        raise ConfigError(f"hash key {path}: {e}") from None
