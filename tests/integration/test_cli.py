"""The command line as users script it: names, flags, exit codes, messages."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from extproc.core.note import Signer, Verifier
from extproc.keys import load_signer
from tests.conftest import MotoServer, run_cli

VKEY = Signer.generate("cli-test").verifier().to_text()


def test_keygen_writes_private_key_0600_and_prints_verifier_key(tmp_path: Path) -> None:
    out = tmp_path / "k" / "signing.key"
    result = run_cli("keygen", "--name", "audit.example.com", "--out", str(out))
    assert result.returncode == 0, result.stderr
    vkey = result.stdout.strip()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert Verifier.from_text(vkey) == load_signer(out).verifier()
    assert vkey.startswith("audit.example.com+")
    assert "PRIVATE" not in result.stdout + result.stderr  # key material never printed


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "signing.key"
    assert run_cli("keygen", "--name", "a", "--out", str(out)).returncode == 0
    again = run_cli("keygen", "--name", "a", "--out", str(out))
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr


@pytest.mark.s3
def test_init_bucket_is_idempotent_and_sets_lock(moto: MotoServer) -> None:
    bucket = "init-bucket-test"
    args = ("init-bucket", f"s3://{bucket}", "--retention-days", "3", "--mode", "COMPLIANCE")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    # What it applies is said before it is done.
    assert first.stdout.splitlines()[0] == (
        f"bucket {bucket}: applying Object Lock with default retention COMPLIANCE 3 days "
        "(every object written is locked for 3 days; nobody, the account's root user "
        "included, can delete or shorten it)"
    )
    assert "created" in first.stdout
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    rule = moto.s3().get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    assert rule["ObjectLockEnabled"] == "Enabled"
    retention = rule["Rule"]["DefaultRetention"]
    assert (retention["Mode"], retention["Days"]) == ("COMPLIANCE", 3)


@pytest.mark.s3
def test_init_bucket_rejects_bucket_without_object_lock(moto: MotoServer) -> None:
    bucket = moto.new_bucket(lock=False)
    result = run_cli(
        "init-bucket", f"s3://{bucket}", "--retention-days", "1", "--mode", "GOVERNANCE"
    )
    assert result.returncode == 2
    assert "exists without Object Lock" in result.stderr


@pytest.mark.s3
def test_serve_refuses_bucket_without_object_lock(moto: MotoServer, tmp_path: Path) -> None:
    bucket = moto.new_bucket(lock=False)
    assert run_cli("keygen", "--name", "k", "--out", str(tmp_path / "k")).returncode == 0
    result = run_cli(
        "serve", "--store", f"s3://{bucket}", "--key", str(tmp_path / "k"),
        "--listen", "127.0.0.1:0", "--wal-dir", str(tmp_path / "wal"), "--metrics-listen", "off",
        "--allow-unauthenticated",
    )  # fmt: skip
    assert result.returncode == 2
    assert "has no Object Lock" in result.stderr
    assert "--allow-no-object-lock" in result.stderr


def test_serve_options_come_from_the_environment(tmp_path: Path) -> None:
    result = run_cli(
        "serve",
        env={
            "EXTPROC_AUDIT_STORE": str(tmp_path),
            "EXTPROC_AUDIT_KEY": "/nonexistent",
            "EXTPROC_AUDIT_ALLOW_UNAUTHENTICATED": "1",
        },
    )
    assert result.returncode == 2
    assert "signing key /nonexistent not found" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--key", "k"], "--store is required"),
        (
            ["serve", "--store", "x", "--key", "missing.key", "--allow-unauthenticated"],
            "missing.key not found",
        ),
        (["verify", ".", "--vkey", "not-a-key"], "verifier key must look like"),
        (["verify", "ftp://x", "--vkey", VKEY], "unsupported store URL"),
        (["init-bucket", "some/dir"], "needs an s3://BUCKET URL"),
    ],
    ids=["serve_without_store", "serve_missing_key", "bad_vkey", "bad_url", "init_not_s3"],
)
def test_usage_errors_exit_2_with_a_message(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_invalid_log_id_is_rejected(tmp_path: Path) -> None:
    assert run_cli("keygen", "--name", "k", "--out", str(tmp_path / "k")).returncode == 0
    result = run_cli("serve", "--store", str(tmp_path / "s"), "--key", str(tmp_path / "k"),
                     "--log-id", "bad/id", "--metrics-listen", "off")  # fmt: skip
    assert result.returncode == 2
    assert "invalid log id" in result.stderr


@pytest.mark.s3
def test_verify_missing_bucket_is_an_infrastructure_error(moto: MotoServer) -> None:
    result = run_cli("verify", "s3://no-such-audit-bucket/x", "--vkey", VKEY)
    assert result.returncode == 2
    assert "bucket no-such-audit-bucket does not exist" in result.stderr


@pytest.mark.s3
def test_write_once_put_collides_on_s3(moto: MotoServer) -> None:
    from extproc.errors import ObjectExistsError, ObjectNotFoundError
    from extproc.store.s3 import S3Store

    store = S3Store(moto.new_bucket(), "p")
    store.put_once("p/a", b"first", None)
    with pytest.raises(ObjectExistsError):
        store.put_once("p/a", b"second", None)
    assert store.get("p/a") == b"first"
    with pytest.raises(ObjectNotFoundError):
        store.get("p/missing")
