"""A client not written here reads what the writer's witness client publishes.

golang.org/x/mod/sumdb/note (Debian's golang-golang-x-mod-dev, GOPATH mode)
opens a `cosigned/<size>` note: the log's signature with its standard
verifier, each cosignature with a cosignature/v1 verifier written in Go from
c2sp.org/tlog-cosignature (tests/go/cosigcheck). A flipped bit or a wrong
witness key fails there too. Skipped where no Go toolchain with x/mod is
installed (Debian: golang-go golang-golang-x-mod-dev, the packages the tlog-tiles
interop check of issue 19 needs too).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from extproc.core.cosignature import add_signatures
from extproc.core.note import parse_note
from tests.witnesses import ModelLog, fixed_cosigner

GO = shutil.which("go")
GOPATH = Path("/usr/share/gocode")  # Debian's golang-*-dev packages
PROGRAM = Path(__file__).resolve().parents[1] / "go" / "cosigcheck"
pytestmark = pytest.mark.skipif(
    GO is None or not (GOPATH / "src/golang.org/x/mod/sumdb/note").is_dir(),
    reason="no Go toolchain with golang.org/x/mod (Debian: golang-go golang-golang-x-mod-dev)",
)
W1, W2 = fixed_cosigner("w1.example", 91), fixed_cosigner("w2.example", 92)


def cosigcheck(tmp_path: Path, note: bytes, *vkeys: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "cosigned.note"
    path.write_bytes(note)
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(GOPATH), "CGO_ENABLED": "0",
           "GOCACHE": str(tmp_path / "gocache"), "GOTOOLCHAIN": "local"}  # fmt: skip
    assert GO is not None
    return subprocess.run(
        [GO, "run", ".", str(path), *vkeys],
        cwd=PROGRAM, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_go_note_client_verifies_the_log_signature_and_the_cosignatures(tmp_path: Path) -> None:
    log = ModelLog()
    note = log.note(9)
    text, _ = parse_note(note)
    cosigned = add_signatures(
        note, [W1.cosign(text, 1_800_000_001), W2.cosign(text, 1_800_000_002)]
    )
    vkeys = [
        log.signer.verifier().to_text(),
        W1.witness_key().to_text(),
        W2.witness_key().to_text(),
    ]
    result = cosigcheck(tmp_path, cosigned, *vkeys)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{log.signer.name} log",
        "w1.example 1800000001",
        "w2.example 1800000002",
    ]
    # Go agrees on what is not a cosignature: a flipped bit in one, or another key.
    flipped = bytearray(cosigned)
    flipped[-5] ^= 1
    assert cosigcheck(tmp_path, bytes(flipped), *vkeys).returncode == 1
    other = fixed_cosigner("w1.example", 99).witness_key().to_text()
    result = cosigcheck(tmp_path, cosigned, vkeys[0], other)
    assert result.returncode == 0 and "w1.example" not in result.stdout  # unknown: skipped
