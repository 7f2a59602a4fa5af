"""Signing key files: created 0600, never overwritten, refused when others can read them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from extproc import cli
from extproc.core.note import Signer
from extproc.errors import ConfigError
from extproc.keys import check_key_mode, load_signer, write_signer


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


# (mode, owned by us) -> refused with this reason, or None: loaded.
KEY_MODES = {
    "0600, ours": (0o600, True, None),
    "0400, ours": (0o400, True, None),
    "0640, ours": (0o640, True, "readable by its group"),
    "0644, ours": (0o644, True, "readable or writable by others"),
    "0604, ours": (0o604, True, "readable or writable by others"),
    "0620, ours": (0o620, True, "writable by its group"),
    "0602, ours": (0o602, True, "readable or writable by others"),
    # A Kubernetes Secret: root:<fsGroup>, defaultMode 0440, for a non-root server.
    "0440, another owner": (0o440, False, None),
    "0460, another owner": (0o460, False, "writable by its group"),
    "0444, another owner": (0o444, False, "readable or writable by others"),
}


@pytest.mark.parametrize(("mode", "ours", "refused"), KEY_MODES.values(), ids=KEY_MODES.keys())
def test_key_open_to_others_is_refused(mode: int, ours: bool, refused: str | None) -> None:
    path = Path("/keys/signing.key")
    owner = os.getuid() if ours else os.getuid() + 1
    if refused is None:
        check_key_mode(path, mode, owner)
        return
    with pytest.raises(ConfigError) as info:
        check_key_mode(path, mode, owner)
    assert str(info.value) == (
        f"signing key {path} is {refused} (mode {mode:04o}): chmod 600 {path}"
    )


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o620], ids=oct)
def test_world_or_group_readable_key_file_is_not_loaded(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "signing.key"
    write_signer(path, Signer.generate("a"))
    path.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        load_signer(path)
    assert "PRIVATE" not in str(info.value)  # the key itself never reaches a message


def test_world_readable_key_stops_serve_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "signing.key"
    write_signer(path, Signer.generate("a"))
    path.chmod(0o644)
    argv = ["serve", "--store", str(tmp_path / "s"), "--key", str(path), "--allow-unauthenticated"]
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        f"extproc-audit: error: signing key {path} is readable or writable by others "
        f"(mode 0644): chmod 600 {path}\n"
    )


def test_key_that_is_not_a_regular_file_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "signing.key"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_signer(fifo)  # a FIFO with no writer: a plain open() would block here
    zero = tmp_path / "zero.key"
    zero.symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_signer(zero)


def test_oversized_key_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    path.write_bytes(b"x" * (1 << 20))
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="larger than 4096 bytes"):
        load_signer(path)
