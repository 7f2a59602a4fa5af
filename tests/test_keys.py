"""Signing key files: created 0600, never overwritten, loose modes reported."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from extproc.core.note import Signer
from extproc.errors import ConfigError
from extproc.keys import load_signer, write_signer


def test_key_written_owner_only_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    signer = Signer.generate("audit.example")
    write_signer(path, signer)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_signer(path).verifier().to_text() == signer.verifier().to_text()


def test_existing_key_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    write_signer(path, Signer.generate("a"))
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        write_signer(path, Signer.generate("b"))
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("mode", "warned"),
    [(0o600, None), (0o640, "readable"), (0o644, "readable"), (0o620, "writable")],
)
def test_loose_key_mode_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int, warned: str | None
) -> None:
    path = tmp_path / "signing.key"
    write_signer(path, Signer.generate("a"))
    path.chmod(mode)
    with caplog.at_level(logging.WARNING, logger="extproc.keys"):
        load_signer(path)
    messages = " ".join(r.getMessage() for r in caplog.records)
    if warned is None:
        assert messages == ""
    else:
        assert f"{warned} by group or others" in messages
        assert "PRIVATE" not in messages  # the key itself never reaches a log line
