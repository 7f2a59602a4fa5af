"""The S3 store against real S3 APIs: moto always, LocalStack (the strict lane:
Object Lock enforced, see scripts/setup_localstack.sh), MinIO where Docker runs.

The same test body runs on each backend. moto enforces neither retention nor
checksums, so the strict runs are where a locked object is shown to survive a
delete, a shortened retention and a versioning suspension, and a corrupted
upload to be refused; where LocalStack cannot start, or no Docker engine
answers, that run is skipped with the reason, and the moto run still
exercises every call the compose demo's bucket-init job and server make.
"""

from __future__ import annotations

import base64
import hashlib
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from extproc.core import layout
from extproc.errors import ObjectExistsError
from extproc.store.base import Confirmation, Retention, RetentionPolicy
from extproc.store.s3 import S3Store
from tests.conftest import S3Server, run_cli

# Same tag as docker-compose.yml (tests/integration/test_deploy_compose.py checks the format).
MINIO_IMAGE = "minio/minio:RELEASE.2025-04-22T22-12-26Z"
MINIO_USER, MINIO_PASSWORD = "extproc-test", "extproc-test-password"


@dataclass
class S3Backend:
    name: str
    endpoint: str
    access_key: str
    secret_key: str
    enforces_retention: bool

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def _docker_unavailable() -> str | None:
    """Why MinIO cannot run here, or None if a Docker engine answers."""
    try:
        import docker  # type: ignore[import-untyped]  # testcontainers dependency

        docker.from_env().ping()
    except Exception as e:  # any failure means: no engine to use
        detail = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        return f"no reachable Docker engine for the MinIO container: {detail}"
    return None


@pytest.fixture(scope="module")
def minio() -> Iterator[S3Backend]:
    reason = _docker_unavailable()
    if reason:
        pytest.skip(reason)
    from testcontainers.core.container import DockerContainer

    container = (
        DockerContainer(MINIO_IMAGE)
        .with_env("MINIO_ROOT_USER", MINIO_USER)
        .with_env("MINIO_ROOT_PASSWORD", MINIO_PASSWORD)
        .with_command("server /data")
        .with_exposed_ports(9000)
    )
    with container:
        host = container.get_container_host_ip()
        endpoint = f"http://{host}:{container.get_exposed_port(9000)}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/minio/health/ready", timeout=2):  # noqa: S310
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield S3Backend("minio", endpoint, MINIO_USER, MINIO_PASSWORD, enforces_retention=True)


@pytest.fixture(
    params=[
        "moto",
        pytest.param("localstack", marks=pytest.mark.strict_s3),
        pytest.param("minio", marks=pytest.mark.docker),
    ]
)
def backend(request: pytest.FixtureRequest) -> S3Backend:
    if request.param in ("moto", "localstack"):
        server: S3Server = request.getfixturevalue(request.param)
        return S3Backend(
            request.param, server.endpoint, "testing", "testing", enforces_retention=server.strict
        )
    backend: S3Backend = request.getfixturevalue("minio")
    return backend


@pytest.mark.s3
def test_locked_bucket_write_once_read_list_retention(backend: S3Backend) -> None:
    bucket = f"audit-{uuid.uuid4().hex[:12]}"
    # The compose demo's bucket-init job, as a command.
    result = run_cli(
        "init-bucket", f"s3://{bucket}", "--retention-days", "1", "--mode", "COMPLIANCE",
        env=backend.env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "created" in result.stdout
    store = S3Store(bucket, "mesh", client=backend.client())
    assert store.create_locked_bucket("COMPLIANCE", 1) is False  # idempotent
    assert store.check_writable(require_lock=True) == RetentionPolicy("COMPLIANCE", 1)

    key = "mesh/logs/t/checkpoints/00000000000000000001"
    data = b"extproc-audit/t\n1\nAAAA\n"
    until = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    store.put_once(key, data, Retention("COMPLIANCE", until))
    assert store.get(key) == data
    assert [(o.key, o.size) for o in store.list("mesh/logs/t/")] == [(key, len(data))]
    retention = store.retention(key)
    assert retention is not None and retention.mode == "COMPLIANCE"
    assert abs((retention.until - until).total_seconds()) < 2

    # Listing from a size on (the self-audit's incremental runs).
    folder = "mesh/logs/t/checkpoints/"
    assert [o.key for o in store.list(folder, layout.start_after(folder, 1))] == [key]
    assert list(store.list(folder, layout.start_after(folder, 2))) == []
    if backend.name != "moto":  # moto 5.2 drops the first key after a KeyMarker it lacks
        assert [v.key for v in store.versions(folder, layout.start_after(folder, 1))] == [key]
        assert list(store.versions(folder, layout.start_after(folder, 2))) == []

    # What confirmed writes rest on: the store shows the SHA-256 it holds.
    assert store.confirm(key, hashlib.sha256(data).digest()) is Confirmation.CONFIRMED
    assert store.confirm(key, hashlib.sha256(b"other").digest()) is Confirmation.DIFFERENT
    assert store.confirm(key + "9", hashlib.sha256(data).digest()) is Confirmation.MISSING

    # Write once: a second writer with other bytes is refused, the first stays.
    with pytest.raises(ObjectExistsError):
        store.put_once(key, b"forged\n", Retention("COMPLIANCE", until))
    assert store.get(key) == data

    if backend.enforces_retention:
        # COMPLIANCE: not even the root user deletes a locked version.
        s3 = backend.client()
        version = s3.head_object(Bucket=bucket, Key=key)["VersionId"]
        with pytest.raises(ClientError):
            s3.delete_object(Bucket=bucket, Key=key, VersionId=version)
        assert s3.get_object(Bucket=bucket, Key=key, VersionId=version)["Body"].read() == data
        # Nor shortens its retention, even with the governance bypass.
        with pytest.raises(ClientError) as shortened:
            s3.put_object_retention(
                Bucket=bucket,
                Key=key,
                VersionId=version,
                Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until - timedelta(hours=12)},
                BypassGovernanceRetention=True,
            )
        assert _code(shortened.value) == "AccessDenied"
        after = store.retention(key)
        assert after is not None and after.mode == "COMPLIANCE"
        # Versioning, which Object Lock rests on, cannot be suspended.
        with pytest.raises(ClientError) as suspended:
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
        assert _code(suspended.value) == "InvalidBucketState"
        # A body that does not match the checksum sent with it is not stored.
        other = "mesh/logs/t/checkpoints/00000000000000000002"
        with pytest.raises(ClientError) as corrupted:
            s3.put_object(
                Bucket=bucket,
                Key=other,
                Body=b"the bytes that arrived",
                ChecksumSHA256=base64.b64encode(
                    hashlib.sha256(b"the bytes sent").digest()
                ).decode(),
            )
        assert _code(corrupted.value) in ("BadDigest", "InvalidRequest")
        assert list(store.list(other)) == []


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
