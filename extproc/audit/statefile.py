"""The `verify --state` file on disk: read it, and replace it atomically.

The format (what a run verified: each log's tree, frontier and objects, and
the bucket's retention rule) is core/state.py's; this is only the file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from extproc.core.state import AuditState
from extproc.errors import StorageError


def load_state(path: Path) -> AuditState:
    """Read a state file; a missing file is an empty state (trust on first use)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return AuditState()
    except OSError as e:
        raise StorageError(f"cannot read state file {path}: {e.strerror}") from e
    return AuditState.from_bytes(data)


def save_state(path: Path, state: AuditState) -> None:
    """Replace the state file atomically (temp file, fsync, rename)."""
    directory = path.parent if str(path.parent) else Path()
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(state.to_bytes())
                f.flush()
                os.fsync(f.fileno())
            Path(tmp).replace(path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                Path(tmp).unlink()
    except OSError as e:
        raise StorageError(f"cannot write state file {path}: {e.strerror}") from e
