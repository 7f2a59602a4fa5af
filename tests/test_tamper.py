"""`verify` against an adversary with write access to the bucket.

One real log is produced once (Envoy + audit server), then each attack is
applied to a fresh copy, on the local store and on moto's S3 server, and the
real CLI must exit 1 naming what is wrong.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from extproc.core import layout
from extproc.core.checkpoint import Checkpoint, sign_checkpoint
from extproc.core.note import Signer, verify_note
from extproc.keys import load_signer
from tests.conftest import MotoServer, run_cli, stack_factory

pytestmark = [pytest.mark.envoy]


@dataclass
class Pristine:
    root: Path  # local store directory holding one verified log
    vkey: str
    log_id: str
    signer: Signer

    def keys(self, kind: str) -> list[str]:
        folder = "entries" if kind == "bundle" else "checkpoints"
        base = self.root / "logs" / self.log_id / folder
        return sorted(f"logs/{self.log_id}/{folder}/{p.name}" for p in base.iterdir())


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pristine]:
    base = tmp_path_factory.mktemp("pristine")
    with stack_factory(base) as make:
        stack = make(extra_args=["--bundle-max-entries", "10"]).start()
        result = stack.send(30, concurrency=2)
        assert len(result.request_ids) == 30
        assert stack.stop_server() == 0, stack.server_log()
        signer = load_signer(stack.key_path)
        root = Path(stack.store_url)
        pristine = Pristine(root, signer.verifier().to_text(), stack.log_id, signer)
        assert len(pristine.keys("bundle")) >= 4
        yield pristine


class Bucket:
    """The tampering surface: what an attacker with write access can do."""

    def __init__(self, read: Callable[[str], bytes], write: Callable[[str, bytes], None],
                 delete: Callable[[str], None]) -> None:  # fmt: skip
        self.read, self.write, self.delete = read, write, delete


def _bundle_with(b: Bucket, p: Pristine, needle: bytes) -> str:
    """A bundle holding request entries (the first may hold only the writer's start)."""
    return next(k for k in p.keys("bundle") if needle in b.read(k))


def _flip_byte(b: Bucket, p: Pristine) -> str:
    key = _bundle_with(b, p, b'"path":"/')
    data = bytearray(b.read(key))
    at = data.index(b'"path":"/') + len('"path":"/')
    data[at] = ord("X") if data[at] != ord("X") else ord("Y")
    b.write(key, bytes(data))
    return "root hash does not match"


def _delete_bundle(b: Bucket, p: Pristine) -> str:
    b.delete(p.keys("bundle")[1])
    return "are missing"


def _resign_checkpoint(b: Bucket, p: Pristine) -> str:
    key = p.keys("checkpoint")[-1]
    text = verify_note(b.read(key), p.signer.verifier())
    b.write(key, sign_checkpoint(Checkpoint.from_text(text), Signer.generate(p.signer.name)))
    return "checkpoint does not verify"


def _swap_bundles(b: Bucket, p: Pristine) -> str:
    first, second = p.keys("bundle")[1:3]
    a, c = b.read(first), b.read(second)
    b.write(first, c)
    b.write(second, a)
    return "seq field says"


def _drop_entry(b: Bucket, p: Pristine) -> str:
    key = p.keys("bundle")[2]
    lines = b.read(key).splitlines(keepends=True)
    b.write(key, b"".join(lines[:3] + lines[4:]))
    return "entries, its name says"


def _forge_entry(b: Bucket, p: Pristine) -> str:
    key = _bundle_with(b, p, b'"method":"GET"')
    data = b.read(key).replace(b'"method":"GET"', b'"method":"PUT"', 1)
    b.write(key, data)
    return "root hash does not match"


def _stray_object(b: Bucket, p: Pristine) -> str:
    b.write(f"logs/{p.log_id}/entries/notes.txt", b"nothing to see")
    return "not part of the log layout"


def _checkpoint_renamed(b: Bucket, p: Pristine) -> str:
    # An old, validly signed checkpoint presented under a larger size.
    old = p.keys("checkpoint")[0]
    b.write(layout.checkpoint_key("", p.log_id, 10**6), b.read(old))
    return "its name says"


ATTACKS = {
    "bundle_byte_changed": _flip_byte,
    "bundle_deleted": _delete_bundle,
    "checkpoint_signed_by_another_key": _resign_checkpoint,
    "bundles_swapped": _swap_bundles,
    "entry_removed_from_bundle": _drop_entry,
    "entry_rewritten": _forge_entry,
    "foreign_object_under_log": _stray_object,
    "checkpoint_replayed_under_other_size": _checkpoint_renamed,
}


def _local_bucket(root: Path) -> Bucket:
    def write(key: str, data: bytes) -> None:
        path = root / key
        if path.exists():
            path.chmod(0o644)  # the local store leaves files read-only; an attacker does not care
        path.write_bytes(data)

    return Bucket(lambda k: (root / k).read_bytes(), write, lambda k: (root / k).unlink())


def test_pristine_log_verifies(pristine: Pristine) -> None:
    result = run_cli("verify", str(pristine.root), "--vkey", pristine.vkey)
    assert result.returncode == 0, result.stdout
    assert "VALID" in result.stdout


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_tampering_detected_local(attack: Any, pristine: Pristine, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(pristine.root, root)
    expected = attack(_local_bucket(root), pristine)
    result = run_cli("verify", str(root), "--vkey", pristine.vkey)
    assert result.returncode == 1, result.stdout
    assert expected in result.stdout
    assert "INVALID" in result.stdout


@pytest.mark.s3
@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_tampering_detected_s3(attack: Any, pristine: Pristine, moto: MotoServer) -> None:
    bucket = moto.new_bucket()
    s3 = moto.s3()
    for path in sorted(pristine.root.rglob("*")):
        if path.is_file():
            key = "audit/" + path.relative_to(pristine.root).as_posix()
            s3.put_object(
                Bucket=bucket, Key=key, Body=path.read_bytes(), ChecksumAlgorithm="SHA256"
            )
    url = f"s3://{bucket}/audit"
    assert run_cli("verify", url, "--vkey", pristine.vkey).returncode == 0
    # moto does not enforce Object Lock, so it stands in for a bucket whose
    # lock was bypassed (GOVERNANCE bypass, or a misconfigured bucket).
    b = Bucket(
        lambda k: s3.get_object(Bucket=bucket, Key="audit/" + k)["Body"].read(),
        lambda k, d: s3.put_object(Bucket=bucket, Key="audit/" + k, Body=d,
                                   ChecksumAlgorithm="SHA256"),
        lambda k: s3.delete_object(Bucket=bucket, Key="audit/" + k),
    )  # fmt: skip
    expected = attack(b, pristine)
    result = run_cli("verify", url, "--vkey", pristine.vkey)
    assert result.returncode == 1, result.stdout
    assert expected in result.stdout


@pytest.mark.s3
def test_object_without_retention_is_a_finding(pristine: Pristine, moto: MotoServer) -> None:
    bucket = moto.new_bucket(lock=False)
    s3 = moto.s3()
    for path in sorted(pristine.root.rglob("*")):
        if path.is_file():
            s3.put_object(Bucket=bucket, Key=path.relative_to(pristine.root).as_posix(),
                          Body=path.read_bytes())  # fmt: skip
    result = run_cli("verify", f"s3://{bucket}", "--vkey", pristine.vkey)
    assert result.returncode == 1
    assert "no Object Lock retention" in result.stdout


def test_verify_with_wrong_key_is_invalid(pristine: Pristine) -> None:
    other = Signer.generate(pristine.signer.name).verifier().to_text()
    result = run_cli("verify", str(pristine.root), "--vkey", other)
    assert result.returncode == 1
    assert "no valid signed checkpoint" in result.stdout


def test_empty_store_does_not_verify(tmp_path: Path, pristine: Pristine) -> None:
    result = run_cli("verify", str(tmp_path), "--vkey", pristine.vkey)
    assert result.returncode == 1
    assert "no logs found" in result.stdout


def test_deep_verification_parses_every_entry(pristine: Pristine, tmp_path: Path) -> None:
    assert run_cli("verify", str(pristine.root), "--vkey", pristine.vkey, "--deep").returncode == 0
    root = tmp_path / "store"
    shutil.copytree(pristine.root, root)
    _forge_entry(_local_bucket(root), pristine)
    result = run_cli("verify", str(root), "--vkey", pristine.vkey, "--deep")
    assert result.returncode == 1
    assert "root hash does not match" in result.stdout
